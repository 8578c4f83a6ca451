"""GLBs that remember how they were made: the workflow and prompt in ``asset.extras`` (ExportMesh,
as core SaveGLB stores them), the CLI's settings and the pack's version, and each object's phrase,
source box and pose in its node's ``extras``."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace

import pytest
import torch

from comboverse_ops import __version__
from comboverse_ops.meshio.glb import scene_to_glb_bytes, write_glb
from comboverse_ops.types.layout import Layout, layout_meta
from conftest import ROOT
from test_export import assert_no_issues, glb_json, make_scene, validate_glb

# What the frontend puts into a prompt's extra_pnginfo: the graph (heavily trimmed here).
WORKFLOW = {"last_node_id": 2, "nodes": [{"id": 1, "type": "ComboVerseExportMesh", "widgets_values": ["x"]}],
            "links": [], "version": 0.4}
PROMPT = {"1": {"class_type": "ComboVerseExportMesh", "inputs": {"filename_prefix": "x", "scene": ["2", 0]}}}


def scene_with_layout():
    scene = make_scene("mixed")
    layout = Layout(torch.tensor([[10.0, 20.0, 60.0, 90.0], [50.0, 5.0, 120.0, 40.0], [0.0, 0.0, 30.0, 30.0]]),
                    (100, 128), ("a wooden chair", "a painting", ""))
    return replace(scene, meta=layout_meta(layout))


def test_version_is_the_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"]


def test_each_object_node_carries_its_phrase_box_and_pose(tmp_path):
    scene = scene_with_layout()
    gltf = glb_json(scene_to_glb_bytes(scene))
    nodes = {n["name"]: n for n in gltf["nodes"]}
    for obj, phrase, box in zip(scene.objects, scene.meta["phrases"], scene.meta["boxes"]):
        extras = nodes[obj.name]["extras"]
        assert extras["phrase"] == phrase and extras["box_xyxy"] == box
        assert extras["image_size"] == [128, 100]  # width, height
        pose = extras["pose"]
        assert pose["scale"] == pytest.approx(float(obj.pose.scale))
        assert pose["rotation_vector"] == pytest.approx(obj.pose.rotation.tolist())
        assert pose["translation"] == pytest.approx(obj.pose.translation.tolist())
        assert nodes[obj.name]["translation"] == pytest.approx(pose["translation"])  # same pose as the TRS


def test_asset_extras_hold_what_the_caller_gives_and_the_version(tmp_path):
    extras = {"prompt": json.dumps(PROMPT), "workflow": json.dumps(WORKFLOW),
              "comboverse": {"command": "run", "settings": {"seed": 3}}}
    path = write_glb(scene_with_layout(), tmp_path / "scene.glb", extras)
    asset = glb_json(path.read_bytes())["asset"]
    assert asset["version"] == "2.0"
    assert json.loads(asset["extras"]["workflow"]) == WORKFLOW
    assert json.loads(asset["extras"]["prompt"]) == PROMPT
    assert asset["extras"]["comboverse"] == {"version": __version__, "command": "run", "settings": {"seed": 3}}
    assert_no_issues(validate_glb(path))  # extras anywhere are still valid glTF


def test_a_scene_without_layout_still_records_poses_and_version():
    gltf = glb_json(scene_to_glb_bytes(make_scene("colored")))
    assert gltf["asset"]["extras"] == {"comboverse": {"version": __version__}}
    assert set(gltf["nodes"][0]["extras"]) == {"pose"}


def test_extras_json_cannot_hold_are_refused_by_name():
    with pytest.raises(ValueError, match="'seed'.*JSON"):
        scene_to_glb_bytes(make_scene("colored"), {"seed": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="'ratio'.*JSON"):
        scene_to_glb_bytes(make_scene("colored"), {"ratio": float("nan")})


def test_export_mesh_node_embeds_the_hidden_prompt_and_workflow(pack, output_dir):
    node = pack.NODE_CLASS_MAPPINGS["ComboVerseExportMesh"]
    # ComfyUI fills hidden inputs by these names; SaveGLB declares the same.
    assert node.INPUT_TYPES()["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    result = node().export(scene=scene_with_layout(), filename_prefix="comboverse/remember", prompt=PROMPT,
                           extra_pnginfo={"workflow": WORKFLOW})
    path = output_dir / result["result"][1]
    gltf = glb_json(path.read_bytes())
    extras = gltf["asset"]["extras"]
    # What the frontend reads when the file is dropped on the canvas: JSON text, as SaveGLB writes it.
    assert isinstance(extras["workflow"], str) and json.loads(extras["workflow"]) == WORKFLOW
    assert json.loads(extras["prompt"]) == PROMPT
    assert extras["comboverse"]["version"] == __version__
    assert [n["extras"]["phrase"] for n in gltf["nodes"]] == ["a wooden chair", "a painting", ""]
    assert_no_issues(validate_glb(path))


def test_export_mesh_node_without_hidden_inputs_writes_no_workflow(pack, output_dir):
    result = pack.NODE_CLASS_MAPPINGS["ComboVerseExportMesh"]().export(scene=make_scene("colored"),
                                                                       filename_prefix="plain")
    extras = glb_json((output_dir / result["result"][1]).read_bytes())["asset"]["extras"]
    assert set(extras) == {"comboverse"}


def test_disable_metadata_leaves_the_workflow_out(pack, monkeypatch):
    """ComfyUI's --disable-metadata (comfy.cli_args.args) is honoured, as SaveGLB honours it."""
    import sys
    import types

    comfy, cli_args = types.ModuleType("comfy"), types.ModuleType("comfy.cli_args")
    cli_args.args = types.SimpleNamespace(disable_metadata=True)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.cli_args", cli_args)
    host = sys.modules[pack.__name__ + ".nodes.host"]
    assert host.workflow_metadata(PROMPT, {"workflow": WORKFLOW}) == {}
    cli_args.args.disable_metadata = False
    assert json.loads(host.workflow_metadata(PROMPT, {"workflow": WORKFLOW})["workflow"]) == WORKFLOW


"""`comboverse run-workflow`: a shared API-format workflow runs headless through the node classes
and gives what the node classes give when called one by one; core nodes it cannot run are named
before anything runs.

Tiny models in the real file formats under the names the workflows' notes give (the same folders
as tests/test_as_installed.py), and small widget values (64 px crops, 32^3 marching cubes, three
refinement steps) so every workflow takes seconds: tests/test_as_installed.py runs them at their
shipped values.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from test_as_installed import _models_and_inputs

API_DIR = ROOT / "workflows" / "api"
RUNNABLE = ("external_3d", "full_pipeline", "layout_from_meshes", "layout_only")  # only the pack's nodes + LoadImage
SMALL = {
    "ComboVerseProceduralScene": {"image_size": 96},
    "ComboVerseSegment": {"crop_size": 64},
    "ComboVerseInpaint": {"steps": 2, "resolution": 64, "crop_size": 64},
    "ComboVerseLift3D": {"resolution": 32, "max_faces": 400},
    "ComboVerseMeshesFromFile": {"max_faces": 400},
    "ComboVerseSSDSRefine": {"steps": 3, "resolution": 32, "views_per_step": 1, "ssds_resolution": 64},
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_workflow")
    model_files, env = _models_and_inputs(root)
    return root, model_files, env


def _small_workflow(name: str, model_files: dict, boxes: list, folder: Path) -> Path:
    """workflows/api/<name>.json with the tiny models' widgets and small values, as a user would edit it.
    Segment gets the picture's boxes: a random tiny SAM proposes nothing (tests/as_installed.py)."""
    prompt = json.loads((API_DIR / f"{name}.json").read_text())
    for node in prompt.values():
        for values in (model_files, SMALL):
            node["inputs"].update({k: v for k, v in values.get(node["class_type"], {}).items() if k in node["inputs"]})
        if node["class_type"] == "ComboVerseSegment" and "masks" not in node["inputs"]:
            node["inputs"]["boxes_text"] = json.dumps(boxes[:node["inputs"]["auto_objects"]])
    path = folder / f"{name}.json"
    path.write_text(json.dumps(prompt, indent=1))
    return path


def _comfyui_load_image(path: Path):
    """Core LoadImage as ComfyUI 0.3.64 reads an 8-bit picture (nodes.py LoadImage.load_image)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        rgb = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]
        if "A" in im.getbands():
            mask = 1.0 - torch.from_numpy(np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0)[None]
        else:
            mask = torch.zeros(1, 64, 64)
    return rgb, mask


def _node_by_node(pack, prompt: dict, input_dir: Path) -> dict:
    """The workflow run the plain way, independent of the runner under test: call each node class
    once all of its links can be resolved, under inference mode as ComfyUI does."""
    import torch

    done = {}
    while len(done) < len(prompt):
        for key, node in prompt.items():
            links = [v for v in node["inputs"].values() if isinstance(v, list)]
            if key in done or any(v[0] not in done for v in links):
                continue
            kind = node["class_type"]
            kwargs = {n: done[v[0]][v[1]] if isinstance(v, list) else v for n, v in node["inputs"].items()}
            if kind == "LoadImage":
                done[key] = _comfyui_load_image(input_dir / kwargs["image"])
            elif kind in ("PreviewImage", "Preview3D"):
                done[key] = ()
            else:
                cls = pack.NODE_CLASS_MAPPINGS[kind]
                hidden = cls.INPUT_TYPES().get("hidden", {})
                kwargs.update({n: {"PROMPT": prompt, "UNIQUE_ID": key}.get(h) for n, h in hidden.items()})
                with torch.inference_mode():
                    out = getattr(cls(), cls.FUNCTION)(**kwargs)
                done[key] = out["result"] if isinstance(out, dict) else out
    return done


def test_every_workflow_with_only_pack_nodes_runs_and_equals_the_node_classes_run_by_hand(
        folders, pack, tmp_path, monkeypatch, capsys, one_thread):
    import trimesh

    from comboverse_ops.app.cli import main

    root, model_files, env = folders
    models, inputs = Path(env["COMBOVERSE_MODELS_DIR"]), Path(env["COMBOVERSE_INPUT_DIR"])
    shipped = sorted(p.stem for p in API_DIR.glob("*.json"))
    # every shipped workflow is either run here or needs core nodes (the named-error test below)
    assert set(RUNNABLE) | {"external_inpainting"} == set(shipped), shipped
    for name in RUNNABLE:
        workflow = _small_workflow(name, model_files, env["boxes"], tmp_path)
        cli_out = tmp_path / name / "cli"
        capsys.readouterr()
        assert main(["run-workflow", str(workflow), "--models", str(models), "--input", str(inputs),
                     "--out", str(cli_out)]) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        prompt = json.loads(workflow.read_text())
        [export] = [k for k, n in prompt.items() if n["class_type"] == "ComboVerseExportMesh"]
        prefix = prompt[export]["inputs"]["filename_prefix"]
        [glb] = sorted(cli_out.rglob("*.glb"))
        assert glb == cli_out / f"{prefix}_00001_.glb"  # where ExportMesh says, under --out
        assert f"wrote {glb}" in printed

        by_hand_out = tmp_path / name / "by_hand"
        for variable, folder in (("COMBOVERSE_MODELS_DIR", models), ("COMBOVERSE_INPUT_DIR", inputs),
                                 ("COMBOVERSE_OUTPUT_DIR", by_hand_out)):
            monkeypatch.setenv(variable, str(folder))
        results = _node_by_node(pack, prompt, inputs)
        reference = by_hand_out / results[export][1]
        # The same asset, byte for byte: meshes, poses, names and the workflow stored in the file.
        assert glb.read_bytes() == reference.read_bytes(), name
        scene = trimesh.load(glb, force="scene")
        assert scene.graph.nodes_geometry and all(len(g.faces) for g in scene.geometry.values()), name


def test_core_nodes_it_cannot_run_are_named_before_anything_runs(folders, tmp_path):
    """The shipped external-inpainting workflow (ComfyUI's own SD chain) and a hand-made one with
    SaveGLB: one line naming every such node by id and class type, exit status 2, nothing written."""
    root, model_files, env = folders
    inpainting = _small_workflow("external_inpainting", model_files, env["boxes"], tmp_path)
    save_glb = json.loads((API_DIR / "layout_only.json").read_text())
    save_glb["9"] = {"class_type": "SaveGLB", "inputs": {"mesh": ["5", 0], "filename_prefix": "mesh/ComfyUI"}}
    (tmp_path / "save_glb.json").write_text(json.dumps(save_glb))
    for workflow, named in ((inpainting, ["node 6 (CheckpointLoaderSimple)", "node 7 (CLIPTextEncode)",
                                          "node 8 (CLIPTextEncode)", "node 9 (InpaintModelConditioning)",
                                          "node 10 (KSampler)", "node 11 (VAEDecode)"]),
                            (tmp_path / "save_glb.json", ["node 9 (SaveGLB)"])):
        out = tmp_path / "out"
        run = subprocess.run([sys.executable, "-m", "comboverse_ops.app.cli", "run-workflow", str(workflow),
                              "--models", env["COMBOVERSE_MODELS_DIR"], "--input", env["COMBOVERSE_INPUT_DIR"],
                              "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 2, run.stderr[-3000:]
        err = run.stderr.strip()
        assert err.startswith("comboverse: error: workflow: ") and len(err.splitlines()) == 1, err
        for n in named:
            assert n in err, (n, err)
        assert "(ComboVerse" not in err and "(LoadImage)" not in err, err  # only the nodes at fault
        assert not run.stdout and not out.exists()  # no node ran, nothing was written


def test_a_core_only_install_says_where_the_node_classes_are(tmp_path):
    """`pip install .` installs comboverse_ops alone: run-workflow says how to reach the node classes."""
    import shutil

    shutil.copytree(ROOT / "comboverse_ops", tmp_path / "site" / "comboverse_ops",
                    ignore=shutil.ignore_patterns("__pycache__", "assets"))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from comboverse_ops.app.cli import main; "
            "sys.exit(main(['run-workflow', sys.argv[2]]))")
    run = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path / "site"),
                          str(API_DIR / "layout_only.json")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "node classes" in run.stderr and "python -m comboverse_ops.app.cli run-workflow" in run.stderr \
        and "pip install -e" in run.stderr, run.stderr


def test_a_graph_file_a_missing_model_and_a_missing_input_are_named_before_anything_runs(folders, tmp_path, capsys):
    from comboverse_ops.app.cli import main

    root, model_files, env = folders
    folders_args = ["--models", env["COMBOVERSE_MODELS_DIR"], "--input", env["COMBOVERSE_INPUT_DIR"]]
    broken = json.loads(_small_workflow("layout_from_meshes", model_files, env["boxes"], tmp_path).read_text())
    broken["3"]["inputs"]["sam_name"] = "sam_vit_l_0b3195.pth"  # not in models/sams
    del broken["6"]["inputs"]["fov_deg"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    cases = ((ROOT / "workflows" / "layout_only.json", ["graph (UI-format) workflow", "Export (API)"]),
             (tmp_path / "broken.json", ["node 3 (ComboVerseLoadSAM)", "'sam_vit_l_0b3195.pth' is not in the models/sams",
                                         "node 6 (ComboVerseInitPose): required input(s) ['fov_deg']"]))
    for workflow, named in cases:
        out = tmp_path / "out"
        capsys.readouterr()
        assert main(["run-workflow", str(workflow), *folders_args, "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("comboverse: error: workflow: ") and len(captured.err.splitlines()) == 1
        for n in named:
            assert n in captured.err, (n, captured.err)
        assert not captured.out and not out.exists()

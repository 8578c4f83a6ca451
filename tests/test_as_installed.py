"""The pack as users install it: a plain copy of the folder in custom_nodes, only requirements.txt
installed, ``comboverse_ops`` not importable as a top-level package (ComfyUI-Manager's install).

CI installs the pack editable (the README's test command), which makes ``comboverse_ops``
importable from anywhere and hid an absolute import that broke ComboVerse ProceduralScene, and
with it the layout_only workflow, in a real ComfyUI. Here tests/as_installed.py runs in a fresh
interpreter that takes the editable install away again, loads the copied folder the way ComfyUI
does, and runs every API workflow of workflows/api/ through the node classes at its shipped
widget values, plus one graph for the nodes no shipped workflow uses, so that every node runs.

Tiny models in the real file formats stand in for the released files, under the names the
workflows' notes give; only model-file widgets change (the tiny SD's architecture folder in
``config_dir``, one tiny SAM for every SAM size), and Segment in automatic mode gets the
picture's boxes instead of proposals (a random tiny SAM proposes nothing; as_installed.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from tiny_models import save_tiny_depth_anything, save_tiny_owlv2, save_tiny_sam, save_tiny_sd, save_tiny_triposr

API_DIR = ROOT / "workflows" / "api"
PACK = "ComfyUI-ComboVerse"  # the folder name of the README's install command
# What a clone carries that a user's copy would not need; everything else is copied.
NOT_COPIED = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.egg-info", "build", ".node",
                                    "node_modules")
TRIPOSR_ISO = 25.0  # Lift3D's shipped density_threshold (TripoSR's iso level)


def _pack_copy(root: Path) -> Path:
    folder = root / "custom_nodes" / PACK
    shutil.copytree(ROOT, folder, ignore=NOT_COPIED)
    return folder


def _mesh_file(path: Path, kind: str, color) -> None:
    import trimesh

    from comboverse_ops.synthetic.primitives import make_primitive

    mesh = make_primitive(kind, color, target_faces=300)
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False).export(path)


def _models_and_inputs(root: Path) -> tuple[dict, dict]:
    """ComfyUI-like models/ and input/ folders under the names the workflows use. Returns the
    model-file widget values to set, and the picture's boxes with the environment for the process."""
    models, inputs = root / "models", root / "input"
    save_tiny_sam(models / "sams" / "sam_vit_h_4b8939.pth")
    save_tiny_sam(models / "sams" / "sam_tiny.pth")
    # SD's own latent factor of 8 (vae_levels 4): at the workflows' 512 px a factor-2 tiny VAE
    # gives 256 x 256 latents, and their self-attention alone takes many minutes on a CPU.
    _, inpaint_cfg, _, _ = save_tiny_sd(models / "checkpoints", "sd2", inpainting=True,
                                        name="512-inpainting-ema.safetensors", vae_levels=4)
    _, guidance_cfg, _, _ = save_tiny_sd(models / "checkpoints", "sd2", inpainting=False,
                                         name="v2-1_512-ema-pruned.safetensors", vae_levels=4)
    save_tiny_triposr(models / "triposr", iso_level=TRIPOSR_ISO)
    save_tiny_depth_anything(models / "depth_anything" / "tiny")
    save_tiny_owlv2(models / "detectors" / "owlv2-tiny")
    # The picture the shipped workflows load (3 objects, partly hiding each other), copied into
    # input/ as the README tells users; its boxes (for Segment in automatic mode) are the ones
    # full_pipeline's ComboVerse Boxes ships.
    inputs.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "workflows" / "comboverse_example.png", inputs / "comboverse_example.png")
    graph = json.loads((ROOT / "workflows" / "full_pipeline.json").read_text())
    [drawn] = [json.loads(n["widgets_values"][0]) for n in graph["nodes"] if n["type"] == "ComboVerseBoxes"]
    for i, (name, kind, color) in enumerate((("table", "box", (0.6, 0.4, 0.2)), ("lamp", "cone", (0.9, 0.9, 0.3)),
                                             ("object_0", "box", (0.8, 0.1, 0.1)),
                                             ("object_1", "sphere", (0.1, 0.8, 0.1)),
                                             ("object_2", "cylinder", (0.1, 0.1, 0.8)))):
        _mesh_file(inputs / "3d" / f"{name}.glb", kind, color)
    model_files = {
        "ComboVerseLoadSAM": {"sam_name": "sam_tiny.pth"},  # one tiny SAM for every SAM size the notes name
        "ComboVerseLoadInpaintModel": {"config_dir": str(inpaint_cfg)},
        "ComboVerseLoadGuidanceModel": {"config_dir": str(guidance_cfg)},
    }
    env = {"boxes": [[b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]] for b in drawn],
           "COMBOVERSE_MODELS_DIR": str(models),
           "COMBOVERSE_INPUT_DIR": str(inputs), "COMBOVERSE_OUTPUT_DIR": str(root / "output")}
    return model_files, env


# The nodes no shipped workflow uses, in one graph: ExportMesh's core MESH back through Meshes From
# MESH, InitPose with Depth Anything's map, and the box sources (Boxes, Detect) feeding Segment.
EXTRA_NODES = {
    "1": {"class_type": "ComboVerseProceduralScene", "inputs": {"seed": 3, "objects": 2, "image_size": 96}},
    "2": {"class_type": "ComboVerseSegment", "inputs": {
        "image": ["1", 1], "masks": ["1", 2], "negative_points": True, "auto_objects": 3, "crop_size": 64,
        "foreground_ratio": 0.85, "background": "grey", "boxes_text": "", "points": "", "phrases": ""}},
    "3": {"class_type": "ComboVerseExportMesh", "inputs": {"scene": ["1", 0], "filename_prefix": "extra/truth"}},
    "4": {"class_type": "ComboVerseMeshesFromMESH", "inputs": {
        "mesh": ["3", 0], "front_axis": "+Z", "up_axis": "+Y", "max_faces": 50000, "name": "object"}},
    "5": {"class_type": "ComboVerseLoadDepthModel", "inputs": {"model_folder": "tiny"}},
    "6": {"class_type": "ComboVerseDepth", "inputs": {"depth_model": ["5", 0], "image": ["1", 1]}},
    "7": {"class_type": "ComboVerseMeshesFromMESH", "inputs": {
        "mesh": ["3", 0], "front_axis": "+Z", "up_axis": "+Y", "max_faces": 50000, "name": "object",
        "meshes": ["4", 0]}},
    "8": {"class_type": "ComboVerseInitPose", "inputs": {
        "meshes": ["7", 0], "layout": ["2", 2], "reference_image": ["1", 1], "fov_deg": 40.0,
        "elevation_deg": -15.0, "depth_kind": "disparity", "depth_map": ["6", 0]}},
    "9": {"class_type": "ComboVerseExportMesh", "inputs": {"scene": ["8", 0], "filename_prefix": "extra/depth"}},
    "10": {"class_type": "ComboVerseBoxes", "inputs": {"image": ["1", 1], "boxes": json.dumps([
        {"x": 4, "y": 8, "width": 40, "height": 40, "label": "a red box"},
        {"x": 50, "y": 30, "width": 40, "height": 50, "label": "a green sphere"}])}},
    "11": {"class_type": "ComboVerseLoadDetector", "inputs": {"model_folder": "owlv2-tiny"}},
    "12": {"class_type": "ComboVerseDetect", "inputs": {
        "detector": ["11", 0], "image": ["1", 1], "phrases": "a red box\na green sphere", "threshold": 0.0}},
    "13": {"class_type": "ComboVerseSegment", "inputs": {
        "image": ["1", 1], "masks": ["1", 2], "boxes": ["10", 0], "negative_points": True, "auto_objects": 2,
        "crop_size": 64, "foreground_ratio": 0.85, "background": "grey", "boxes_text": "", "points": "",
        "phrases": ["10", 1]}},
    "14": {"class_type": "ComboVerseSegment", "inputs": {
        "image": ["1", 1], "masks": ["1", 2], "boxes": ["12", 0], "negative_points": True, "auto_objects": 2,
        "crop_size": 64, "foreground_ratio": 0.85, "background": "grey", "boxes_text": "", "points": "",
        "phrases": ""}},
}


def run_as_installed(root: Path, groups: list[list[Path]], model_files: dict, env: dict, pack: Path,
                     timeout: float = 3000, threads: list[int] | None = None
                     ) -> list[tuple[subprocess.CompletedProcess, dict | None]]:
    """Run each group of workflows in its own isolated process, the groups side by side (one
    thread each unless ``threads`` says otherwise: a 2-core CI machine runs two at once). Returns
    (process, report) per group."""
    env = dict(env)
    boxes = env.pop("boxes")
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ.update(env, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    running = []
    for i, workflows in enumerate(groups):
        spec = {"pack": str(pack), "runner": str(ROOT / "tests" / "workflow_runner.py"),
                "workflows": [str(w) for w in workflows], "model_files": model_files, "boxes": boxes,
                "threads": threads[i] if threads else 1}
        (root / f"spec{i}.json").write_text(json.dumps(spec))
        report = root / f"report{i}.json"
        report.unlink(missing_ok=True)
        command = [sys.executable, "-I", str(ROOT / "tests" / "as_installed.py"), str(root / f"spec{i}.json"),
                   str(report)]
        proc = subprocess.Popen(command, cwd=root, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        running.append((proc, report))
    results = []
    for proc, report in running:
        out, err = proc.communicate(timeout=timeout)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        results.append((done, json.loads(report.read_text()) if report.is_file() else None))
    return results


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("as_installed")
    pack = _pack_copy(root)
    model_files, env = _models_and_inputs(root)
    (root / "extra.json").write_text(json.dumps(EXTRA_NODES))
    return root, pack, model_files, env


def test_every_workflow_and_every_node_runs_from_a_plain_copy_of_the_folder(installed, pack):
    import trimesh

    root, copy, model_files, env = installed
    workflows = [copy / "workflows" / "api" / w.name for w in sorted(API_DIR.glob("*.json"))]
    assert len(workflows) == 5
    heavy = [w for w in workflows if w.stem in ("full_pipeline", "external_inpainting")]  # SD, TripoSR at 256^3
    assert len(heavy) == 2
    rest = [w for w in workflows if w not in heavy] + [root / "extra.json"]
    # full_pipeline (SSDS for 200 steps) takes about three times the other group: it gets a second
    # thread, which it has to itself once the other group is done (results do not depend on it).
    runs = run_as_installed(root, [[heavy[0]] + rest[::2], [heavy[1]] + rest[1::2]], model_files, env, copy,
                            threads=[1, 2])
    report = {"workflows": {}, "nodes_run": []}
    for result, part in runs:
        assert result.returncode == 0 and part, result.stdout[-3000:] + result.stderr[-6000:]
        assert "-" in part["pack_module"] and not part["comboverse_ops_importable"]
        # every module the pack and its nodes imported comes with requirements.txt (or ComfyUI's torch)
        assert not part["imported_outside_requirements"], part["imported_outside_requirements"]
        report["workflows"].update(part["workflows"])
        report["nodes_run"] += part["nodes_run"]
    assert len(report["workflows"]) == 6
    changed = {tuple(c) for w in report["workflows"].values() for c in w["changed"]}
    expected = {(k, n) for k, v in model_files.items() for n in v} | {("ComboVerseSegment", "boxes_text")}
    assert changed == expected, changed  # nothing else changed, and no entry is stale
    missing = set(pack.NODE_CLASS_MAPPINGS) - set(report["nodes_run"])
    assert not missing, f"never ran as installed: {sorted(missing)}; use them in a workflow or in EXTRA_NODES"
    for name, run in report["workflows"].items():
        assert run["glbs"], name
        for glb in run["glbs"]:
            scene = trimesh.load(root / "output" / glb, force="scene")
            assert scene.graph.nodes_geometry and all(len(g.faces) for g in scene.geometry.values()), (name, glb)


def test_the_check_fails_on_an_absolute_import_of_the_pack(installed, tmp_path):
    """The check sees what ComfyUI sees: with the absolute import main once had in
    comboverse_ops/synthetic/procedural.py, the layout-only workflow fails here even though the editable
    install (or this test process) can import comboverse_ops."""
    root, copy, model_files, env = installed
    broken = tmp_path / "custom_nodes" / PACK
    shutil.copytree(copy, broken)
    source = broken / "comboverse_ops" / "synthetic" / "procedural.py"
    text = source.read_text()
    assert "from ..render import render_scene" in text
    source.write_text(text.replace("from ..render import", "from comboverse_ops.render import"))
    layout_only = broken / "workflows" / "api" / "layout_only.json"
    [(result, _)] = run_as_installed(tmp_path, [[layout_only]], model_files, env, broken, timeout=1200)
    assert result.returncode != 0
    assert "No module named 'comboverse_ops'" in result.stderr, result.stderr[-3000:]



def test_the_pack_imports_its_own_modules_only_relatively():
    """Every import in the pack, however deep in a function: the run above only sees the paths the
    workflows take, this sees them all."""
    import ast

    own = {"comboverse_ops", "nodes"}
    found = []
    for path in [ROOT / "__init__.py", *sorted((ROOT / "nodes").rglob("*.py")),
                 *sorted((ROOT / "comboverse_ops").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in own]
    assert not found, "absolute imports of the pack's own modules (ComfyUI loads the pack as a folder, so only " \
                      f"relative imports work): {found}"

"""The box editor in ComfyUI's real frontend, in headless Chromium (opt-in, like the other
real-ComfyUI tests): two boxes drawn with the mouse on the loaded picture (one resized by its
corner, one moved, a third drawn and deleted with the Delete key), two phrases typed, the prompt
queued; the GLB has two nodes named after the phrases, Segment's masks show in the editor, and
dropping the GLB on the canvas brings the workflow back (tools/box_editor_check.mjs).

Needs ``COMFYUI_DIR`` (a ComfyUI checkout whose requirements the running Python has),
``PLAYWRIGHT_CORE_DIR`` (a node_modules folder with playwright-core), node and Debian's
chromium. ``COMBOVERSE_SCREENSHOTS=1`` also rewrites docs/screenshots/box_editor.jpg.

Also here: a GLB written by ExportMesh inside ComfyUI holds the workflow in ``asset.extras``
when the prompt comes with one, as the frontend sends it.
"""

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT
from test_comfyui_real import COMFYUI_DIR, server  # noqa: F401  (server: a fixture)
from test_export import glb_json

pytestmark = pytest.mark.skipif(not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file(),
                                reason="set COMFYUI_DIR to a ComfyUI checkout to run the pack inside it")

PLAYWRIGHT_CORE_DIR = os.environ.get("PLAYWRIGHT_CORE_DIR")
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def example(server) -> dict:
    """The two-object picture these tests (and tools/box_editor_check.mjs) load as input/example.png,
    with its true boxes and phrases."""
    from comboverse_ops.meshio.atomic import save_png_atomic
    from tiny_models import occluded_pair

    proc, obs = occluded_pair()
    save_png_atomic(server["base"] / "input" / "example.png", obs.image)
    return {"boxes": obs.boxes.round().tolist(), "phrases": list(proc.phrases)}


def _boxes_prompt(example) -> dict:
    """Load Image -> ComboVerse Boxes (the boxes as the editor writes them) -> Segment -> Lift3D ->
    InitPose -> ExportMesh, with the tiny models; small sizes keep it fast on a CPU."""
    drawn = [{"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0, "label": phrase}
             for (x0, y0, x1, y1), phrase in zip(example["boxes"], example["phrases"])]
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "ComboVerseLoadSAM", "inputs": {"sam_name": "sam_vit_h_4b8939.pth"}},
        "3": {"class_type": "ComboVerseBoxes", "inputs": {"image": ["1", 0], "boxes": json.dumps(drawn)}},
        "4": {"class_type": "ComboVerseSegment", "inputs": {
            "negative_points": True, "auto_objects": 3, "crop_size": 64, "foreground_ratio": 0.85,
            "background": "grey", "boxes_text": "", "points": "", "phrases": "", "image": ["1", 0],
            "sam": ["2", 0], "boxes": ["3", 0]}},
        "5": {"class_type": "ComboVerseLoadLift3DModel", "inputs": {"ckpt_name": "model.ckpt", "precision": "auto"}},
        "6": {"class_type": "ComboVerseLift3D", "inputs": {
            "resolution": 32, "density_threshold": 0.5, "max_faces": 400, "foreground_ratio": 0.85,
            "vertex_colors": True, "query_chunk": 262144, "lift3d_model": ["5", 0], "images": ["4", 0],
            "masks": ["4", 1]}},
        "7": {"class_type": "ComboVerseInitPose", "inputs": {
            "fov_deg": 40, "elevation_deg": -15, "depth_kind": "disparity", "meshes": ["6", 0], "layout": ["4", 2],
            "reference_image": ["1", 0]}},
        "8": {"class_type": "ComboVerseExportMesh", "inputs": {"filename_prefix": "comboverse/remember",
                                                               "scene": ["7", 0]}},
    }


def test_boxes_node_and_glb_metadata_inside_comfyui(server, example):
    """Boxes -> Segment inside ComfyUI: named objects in the GLB, Segment's mask overlay as its UI
    output, and the workflow the frontend sends (extra_pnginfo) in the GLB's asset.extras."""
    prompt = _boxes_prompt(example)
    graph = {"nodes": [{"id": int(k), "type": v["class_type"]} for k, v in prompt.items()], "links": [],
             "version": 0.4}  # what matters: it comes back unchanged
    body = json.dumps({"prompt": prompt, "client_id": "comboverse-test",
                       "extra_data": {"extra_pnginfo": {"workflow": graph}}}).encode()
    request = urllib.request.Request(f"{server['url']}/prompt", data=body,
                                     headers={"Content-Type": "application/json"})
    prompt_id = json.load(urllib.request.urlopen(request, timeout=30))["prompt_id"]
    for _ in range(300):
        history = json.load(urllib.request.urlopen(f"{server['url']}/history/{prompt_id}", timeout=10))
        if prompt_id in history and (history[prompt_id]["status"].get("completed")
                                     or history[prompt_id]["status"]["status_str"] == "error"):
            break
        time.sleep(1)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1]
    overlay = entry["outputs"]["4"]["images"][0]
    assert overlay["type"] == "temp"
    assert (server["base"] / "temp" / overlay["subfolder"] / overlay["filename"]).is_file()
    shown = entry["outputs"]["8"]["3d"][0]
    gltf = glb_json((server["base"] / "output" / shown["subfolder"] / shown["filename"]).read_bytes())
    assert [n["extras"]["phrase"] for n in gltf["nodes"]] == example["phrases"]
    assert json.loads(gltf["asset"]["extras"]["workflow"]) == graph
    stored = json.loads(gltf["asset"]["extras"]["prompt"])  # ComfyUI adds is_changed to some nodes
    assert {k: (v["class_type"], v["inputs"]) for k, v in stored.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}


@pytest.mark.skipif(not PLAYWRIGHT_CORE_DIR or not CHROMIUM or not shutil.which("node"),
                    reason="set PLAYWRIGHT_CORE_DIR and install node and chromium (tools/box_editor_check.mjs)")
def test_boxes_drawn_in_the_real_frontend_become_named_objects_in_the_glb(server, example, tmp_path):
    shot = ROOT / "docs" / "screenshots" / "box_editor.jpg" if os.environ.get("COMBOVERSE_SCREENSHOTS") \
        else tmp_path / "box_editor.jpg"
    result = subprocess.run(["node", str(ROOT / "tools" / "box_editor_check.mjs"), "--url", server["url"],
                             "--playwright", PLAYWRIGHT_CORE_DIR, "--chromium", CHROMIUM,
                             "--output", str(server["base"] / "output"), "--screenshot", str(shot)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert [n["extras"]["phrase"] for n in report["glb"]["nodes"]] == ["a pink cylinder", "a brown sphere"]
    assert shot.stat().st_size > 10_000

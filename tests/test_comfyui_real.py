"""The pack inside a real ComfyUI: started headless on the CPU, its nodes listed, its workflows in
the template browser, the core-node table of tests/test_workflows.py checked against the real
/object_info, and the API-format workflows run to a GLB (the full pipeline with tiny models in
the real file formats).

Needs a ComfyUI checkout named by ``COMFYUI_DIR`` and a Python with its requirements and the
pack's requirements.txt (``COMFYUI_PYTHON``, default this test's Python); skipped otherwise.
ComfyUI runs with a temporary ``--base-directory`` whose ``custom_nodes`` holds a plain copy of
the pack folder (as a user's clone) and whose ``models/`` and ``input/`` hold the tiny models
and the picture, so the checkout itself is left as it is. ComfyUI's interpreter starts isolated
(``-I``) and first drops anything that makes ``comboverse_ops`` importable without the folder
(an editable install of the pack: tests/as_installed.py), so the pack works only as ComfyUI
loads it, relative imports and all.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trimesh

from conftest import ROOT, load_pack

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
pytestmark = pytest.mark.skipif(not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file(),
                                reason="set COMFYUI_DIR to a ComfyUI checkout to run the pack inside it")

from test_as_installed import NOT_COPIED, PACK  # noqa: E402  (the folder name of the README's install command)

# ComfyUI's main.py, started after tests/as_installed.py has made comboverse_ops unimportable.
BOOT = ("import importlib.util, os, runpy, sys\n"
        "spec = importlib.util.spec_from_file_location('as_installed', sys.argv[1])\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "module.forget_the_checkout()\n"
        "sys.argv = ['main.py'] + sys.argv[2:]; sys.path.insert(0, os.getcwd())\n"
        "runpy.run_path('main.py', run_name='__main__')\n")
WORKFLOWS = ROOT / "workflows"
CLIP_VOCAB = 49408  # ComfyUI's own CLIP tokenizer, which the pack's SD loaders use inside ComfyUI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    return json.load(urllib.request.urlopen(url, timeout=10))


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def _tiny_models(base: Path) -> dict:
    """Tiny models under the file names the workflows name, in ComfyUI's model folders, and the
    picture Load Image names. Returns what the test must set in the workflow to use them."""
    from tiny_models import save_tiny_sam, save_tiny_sd, save_tiny_triposr

    models, staging = base / "models", base / "tiny"
    save_tiny_sam(models / "sams" / "sam_vit_h_4b8939.pth")
    (models / "checkpoints").mkdir(parents=True)
    inpaint, inpaint_cfg, _, _ = save_tiny_sd(staging / "inpaint", "sd2", inpainting=True, text_vocab_size=CLIP_VOCAB)
    shutil.copy(inpaint, models / "checkpoints" / "512-inpainting-ema.safetensors")
    guidance, guidance_cfg, _, _ = save_tiny_sd(staging / "guidance", "sd2", inpainting=False,
                                                text_vocab_size=CLIP_VOCAB)
    shutil.copy(guidance, models / "checkpoints" / "v2-1_512-ema-pruned.safetensors")
    save_tiny_triposr(models / "triposr")
    # The picture the workflows load, copied into input/ as the README tells users (3 objects, the
    # cone partly hidden by the torus, so Inpaint really runs SD).
    shutil.copy(WORKFLOWS / "comboverse_example.png", base / "input" / "comboverse_example.png")
    return {"objects": 3,
            "inpaint_cfg": str(inpaint_cfg), "guidance_cfg": str(guidance_cfg)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    shutil.copytree(ROOT, base / "custom_nodes" / PACK, ignore=NOT_COPIED)
    (base / "input").mkdir()
    tiny = _tiny_models(base)
    port = _free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([COMFYUI_PYTHON, "-I", "-c", BOOT, str(ROOT / "tests" / "as_installed.py"),
                             "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base), "--disable-auto-launch",
                             "--database-url", "sqlite:///:memory:"],
                            cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            if proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited: {(base / 'server.log').read_text()[-3000:]}")
            try:
                _get(f"{url}/object_info/ComboVerseExportMesh")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        else:
            raise RuntimeError(f"ComfyUI did not come up: {(base / 'server.log').read_text()[-3000:]}")
        yield {"url": url, "base": base, **tiny}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _run_prompt(server, prompt: dict, timeout_s: int = 1500) -> dict:
    """Queue an API-format workflow through /prompt; return its history entry once it finished."""
    body = json.dumps({"prompt": prompt, "client_id": "comboverse-test"}).encode()
    request = urllib.request.Request(f"{server['url']}/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        prompt_id = json.load(urllib.request.urlopen(request, timeout=30))["prompt_id"]
    except urllib.error.HTTPError as e:  # validation errors come back as 400 with the reasons
        raise AssertionError(f"/prompt refused the workflow: {e.read().decode()[:3000]}") from None
    for _ in range(timeout_s):
        history = _get(f"{server['url']}/history/{prompt_id}")
        if prompt_id in history:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"the workflow did not finish within {timeout_s} s")
    entry = history[prompt_id]
    errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "success", errors
    return entry


def _glb_scene(server, entry: dict):
    shown = [item for out in entry["outputs"].values() for item in out.get("3d", [])]
    assert shown, entry["outputs"]
    glb = server["base"] / "output" / shown[0]["subfolder"] / shown[0]["filename"]
    return trimesh.load(glb, force="scene")


def test_object_info_lists_every_pack_node(server):
    info = _get(f"{server['url']}/object_info")
    expected = set(load_pack().NODE_CLASS_MAPPINGS)
    assert expected <= set(info), sorted(expected - set(info))
    for key in expected:
        assert info[key]["display_name"].startswith("ComboVerse ")
        assert info[key]["category"].startswith("ComboVerse/")


def test_template_browser_lists_the_workflows_and_serves_them_with_thumbnails(server):
    names = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert len(names) == 5
    listing = _get(f"{server['url']}/workflow_templates")
    assert sorted(listing.get(PACK, [])) == names, listing  # workflows/api/ is not listed
    for name in names:
        # What the frontend fetches: the workflow when picked, <name>.jpg as the card's picture.
        status, body = _fetch(f"{server['url']}/api/workflow_templates/{PACK}/{name}.json")
        assert status == 200 and json.loads(body) == json.loads((WORKFLOWS / f"{name}.json").read_text()), name
        status, body = _fetch(f"{server['url']}/api/workflow_templates/{PACK}/{name}.jpg")
        assert status == 200 and body == (WORKFLOWS / f"{name}.jpg").read_bytes(), name


def test_core_node_table_agrees_with_object_info(server):
    """tests/test_workflows.py checks the workflows against a table of the core nodes they use;
    here every table entry is held against what this ComfyUI declares: each real input is in the
    table with the same type, and anything the table accepts (options, ranges) the server accepts."""
    from test_workflows import CORE_NODES, FILES

    info = _get(f"{server['url']}/object_info")
    for key, table in CORE_NODES.items():
        if key == "Note":  # frontend-only
            assert key not in info
            continue
        live = info[key]
        declared = {s: table["inputs"].get(s, {}) for s in ("required", "optional")}
        for section in ("required", "optional"):
            for name, spec in live["input"].get(section, {}).items():
                where = f"{key}.{name}"
                assert name in declared[section], f"{where}: {section} in ComfyUI, not in the table's {section}"
                mine = declared[section][name]
                if isinstance(spec[0], list):  # a combo
                    assert mine[0] == FILES or isinstance(mine[0], list), where
                    if isinstance(mine[0], list):
                        assert set(mine[0]) <= set(spec[0]), f"{where}: {set(mine[0]) - set(spec[0])} not offered"
                    continue
                assert mine[0] == spec[0], f"{where}: {mine[0]} vs {spec[0]}"
                opts = spec[1] if len(spec) > 1 else {}
                for bound, outside in (("min", lambda a, b: a < b), ("max", lambda a, b: a > b)):
                    if bound in opts:
                        assert bound in mine[1] and not outside(mine[1][bound], opts[bound]), \
                            f"{where}: {bound} {mine[1].get(bound)} vs {opts[bound]}"
        live_optional = set(live["input"].get("optional", {}))
        for name in declared["required"]:
            assert name in live["input"]["required"], f"{key}.{name}: required in the table, not in ComfyUI"
        extra = set(declared["optional"]) - live_optional
        assert extra <= {"bg_image"}, f"{key}: optional inputs {extra} not in this ComfyUI"  # bg_image: newer
        assert list(zip(live["output_name"], live["output"])) == table["outputs"], key


def test_layout_only_api_workflow_runs_and_writes_a_glb(server):
    workflow = json.loads((WORKFLOWS / "api" / "layout_only.json").read_text())
    entry = _run_prompt(server, workflow)
    assert len(_glb_scene(server, entry).graph.nodes_geometry) == 3  # one node per object


# Settings that make the full pipeline take seconds on a CPU with tiny models (each name must
# exist in the workflow: a renamed widget fails here instead of being silently ignored).
FAST = {
    "ComboVerseSegment": {"crop_size": 64},
    "ComboVerseInpaint": {"steps": 2, "resolution": 64, "crop_size": 64},
    # The tiny TripoSR's random density peaks near 1, far below TripoSR's iso level 25.
    "ComboVerseLift3D": {"resolution": 32, "density_threshold": 0.5, "max_faces": 400},
    "ComboVerseSSDSRefine": {"steps": 3, "resolution": 48, "views_per_step": 1, "ssds_resolution": 64},
}


def test_full_pipeline_api_workflow_runs_with_tiny_models(server):
    workflow = json.loads((WORKFLOWS / "api" / "full_pipeline.json").read_text())
    settings = {k: dict(v) for k, v in FAST.items()}
    # The objects' boxes and phrases are the ones shipped in ComboVerse Boxes (a random tiny SAM
    # proposes no objects, and none is needed), SSDSRefine's prompt is the shipped one; only the
    # config folders of the tiny models' architecture are set.
    assert all(n["inputs"]["prompt"].strip() for n in workflow.values() if n["class_type"] == "ComboVerseSSDSRefine")
    settings["ComboVerseLoadInpaintModel"] = {"config_dir": server["inpaint_cfg"]}
    settings["ComboVerseLoadGuidanceModel"] = {"config_dir": server["guidance_cfg"]}
    seen = set()
    for node in workflow.values():
        for name, value in settings.get(node["class_type"], {}).items():
            assert name in node["inputs"], f"{node['class_type']} has no input {name}"
            node["inputs"][name] = value
        seen.add(node["class_type"])
    assert set(settings) <= seen
    entry = _run_prompt(server, workflow)
    scene = _glb_scene(server, entry)
    assert all(len(g.faces) > 0 for g in scene.geometry.values())
    assert len(scene.graph.nodes_geometry) == server["objects"]  # one glTF node per object


PLAYWRIGHT_CORE_DIR = os.environ.get("PLAYWRIGHT_CORE_DIR")  # a node_modules folder holding playwright-core
CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(not PLAYWRIGHT_CORE_DIR or not CHROMIUM or not shutil.which("node"),
                    reason="set PLAYWRIGHT_CORE_DIR and install node and chromium to open the workflows in "
                           "ComfyUI's frontend (tools/workflow_screenshots.mjs says how)")
def test_frontend_loads_every_workflow_and_saves_and_converts_it_as_committed():
    """ComfyUI's own frontend in headless Chromium loads each workflow with no missing node, dialog
    or error, saves it as workflows/<name>.json and converts it to workflows/api/<name>.json."""
    result = subprocess.run(["node", str(ROOT / "tools" / "workflow_screenshots.mjs"), "--check",
                             "--comfyui", COMFYUI_DIR, "--python", COMFYUI_PYTHON, "--chromium", CHROMIUM,
                             "--playwright", PLAYWRIGHT_CORE_DIR],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]

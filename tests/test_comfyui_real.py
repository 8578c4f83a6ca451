"""The pack inside a real ComfyUI: started headless on the CPU, its nodes listed, a workflow run.

Needs a ComfyUI checkout (with its Python requirements installed) named by ``COMFYUI_DIR``;
skipped otherwise. ComfyUI runs with a temporary ``--base-directory`` whose ``custom_nodes``
holds a link to this repo, so the checkout itself is left as it is.
"""

import json
import os
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
pytestmark = pytest.mark.skipif(not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file(),
                                reason="set COMFYUI_DIR to a ComfyUI checkout to run the pack inside it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    return json.load(urllib.request.urlopen(url, timeout=10))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-ComboVerse").symlink_to(ROOT, target_is_directory=True)
    port = _free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
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
        yield url, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_object_info_lists_every_pack_node(server):
    url, _ = server
    info = _get(f"{url}/object_info")
    expected = set(load_pack().NODE_CLASS_MAPPINGS)
    assert expected <= set(info), sorted(expected - set(info))
    for key in expected:
        assert info[key]["display_name"].startswith("ComboVerse ")
        assert info[key]["category"].startswith("ComboVerse/")


def test_api_workflow_runs_and_writes_a_glb(server):
    url, base = server
    workflow = json.loads((ROOT / "workflows" / "layout_only_api.json").read_text())
    body = json.dumps({"prompt": workflow, "client_id": "comboverse-test"}).encode()
    request = urllib.request.Request(f"{url}/prompt", data=body, headers={"Content-Type": "application/json"})
    prompt_id = json.load(urllib.request.urlopen(request, timeout=30))["prompt_id"]
    for _ in range(300):
        history = _get(f"{url}/history/{prompt_id}")
        if prompt_id in history:
            break
        time.sleep(1)
    else:
        raise AssertionError("the workflow did not finish within 300 s")
    entry = history[prompt_id]
    errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "success", errors
    shown = [item for out in entry["outputs"].values() for item in out.get("3d", [])]
    assert shown, entry["outputs"]
    glb = base / "output" / shown[0]["subfolder"] / shown[0]["filename"]
    scene = trimesh.load(glb, force="scene")
    assert len(scene.graph.nodes_geometry) >= 2  # one node per object

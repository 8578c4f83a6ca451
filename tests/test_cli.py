import json

from comboverse_ops.app.cli import main
from comboverse_ops.meshio.meshes_in import load_mesh_file
from test_export import glb_json


def test_demo_writes_a_glb_renders_and_a_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "96", "--steps", "15", "--objects", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    meshes = load_mesh_file(out / "scene.glb")
    assert [m.name for m in meshes] == [o["name"] for o in report["objects"]]
    assert (out / "before_after.png").stat().st_size > 1000 and (out / "reference.png").exists()
    assert set(report["metrics"]["refined"]) >= {"translation_aligned", "novel_mask_iou_aligned", "rotation_deg"}
    assert report["losses"]["last"]["total"] < report["losses"]["first"]["total"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    settings = glb_json((out / "scene.glb").read_bytes())["asset"]["extras"]["comboverse"]["settings"]
    assert settings == {"seed": 0, "size": 96, "objects": 2, "steps": 15}  # the GLB says how it was made

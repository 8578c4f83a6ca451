"""`comboverse batch`: scenes across Ray workers, resumable, nothing lost, nothing done twice.

One local Ray (2 CPUs, loopback, no dashboard) is shared by the module. Most runs use procedural
scenes composed from their true masks and meshes (--stand-ins: no model files, a few seconds a
scene); one runs the real pipeline with the tests' tiny SAM and TripoSR in their real formats.
"""

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import ROOT  # noqa: F401  (puts the checkout on sys.path)

SMALL = ["--objects", "2", "--size", "64", "--steps", "3", "--device", "cpu", "--cpus-per-worker", "1",
         "--preview-size", "32"]


def _committed(out: Path) -> list[str]:
    return [json.loads(t)["id"] for t in (out / "batch_log.jsonl").read_text().splitlines()
            if json.loads(t)["event"] == "committed"]


def _summary(out: Path) -> list[dict]:
    return [json.loads(t) for t in (out / "summary.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# Without Ray: the manifest and the output folder


def test_manifest_lines_are_checked_one_by_one_and_duplicate_ids_stop_the_run(tmp_path):
    from comboverse_ops.app.batch import ManifestError, read_manifest

    m = tmp_path / "m.jsonl"
    m.write_text("\n".join([
        json.dumps({"image": "a/pic.png", "boxes": [[0, 0, 10, 10]]}),
        "{not json",
        json.dumps({"image": "b.png", "boxes": [[0, 0, 4, 4]], "settings": {"refine_steps": "many"}}),
        json.dumps({"image": "c.png", "boxs": [[0, 0, 4, 4]]}),
        "# a comment",
        json.dumps({"id": "d", "image": "d.png"}),
        json.dumps({"id": 7, "image": "e.png", "boxes": [[0, 0, 4, 4]]}),
        json.dumps({"id": "f", "image": "f.png", "phrases": ["a red cube", "a blue ball"]}),  # --detect boxes it
    ]) + "\n")
    entries = read_manifest(m)
    assert [e.id for e in entries] == ["pic", "line_2", "b", "c", "d", "line_7", "f"]
    assert entries[0].error is None and entries[0].image == tmp_path / "a" / "pic.png"
    assert "not JSON" in entries[1].error
    assert "refine_steps expected int, got 'many'" in entries[2].error
    assert "unknown key(s) ['boxs']" in entries[3].error
    assert 'no "boxes" and no "phrases"' in entries[4].error and "--detect DIR" in entries[4].error
    assert '"id": expected text' in entries[5].error
    assert entries[6].error is None
    # A scene with phrases only needs the run's detector: said before Ray or any model starts.
    from comboverse_ops.app.batch import run_batch

    with pytest.raises(ManifestError, match=r"\['f'\] give \"phrases\" but no \"boxes\"; pass --detect DIR"):
        run_batch(m, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    m.write_text(json.dumps({"image": "x/pic.png", "boxes": [[0, 0, 1, 1]]}) + "\n"
                 + json.dumps({"image": "y/pic.png", "boxes": [[0, 0, 1, 1]]}) + "\n")
    with pytest.raises(ManifestError, match=r"lines 1 and 2 both have the id 'pic'.*\"id\""):
        read_manifest(m)


def test_scene_hash_follows_the_line_and_the_settings_but_not_the_device(tmp_path):
    from dataclasses import replace

    from comboverse_ops.app.batch import read_manifest, scene_hash
    from comboverse_ops.app.pipeline import PipelineSettings, with_settings

    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"image": "p.png", "boxes": [[0, 0, 5, 5]], "settings": {"seed": 1}}) + "\n")
    e = read_manifest(m)[0]
    s = PipelineSettings()
    h = scene_hash(e, s, False)
    assert scene_hash(e, replace(s, device="cuda"), False) == h
    assert scene_hash(e, with_settings(s, {"refine.steps": 50}), False) != h
    assert scene_hash(e, s, True) != h
    assert e.settings(s).seed == 1


def test_a_scene_folder_is_committed_whole_and_replaces_a_stale_one(tmp_path):
    from comboverse_ops.app.batch import OutputFolder
    from comboverse_ops.app.batch.commit import BatchLocked as Locked

    with OutputFolder(tmp_path / "out") as out:
        out.commit("s1", {"scene.glb": b"old"}, {"hash": "h1"})
        assert out.is_done("s1", "h1") and not out.is_done("s1", "h2")
        with pytest.raises(ValueError, match="plain file names"):
            out.commit("s1", {"../escape": b"x"}, {"hash": "h2"})
        assert (out.scenes / "s1" / "scene.glb").read_bytes() == b"old"  # the failed commit changed nothing
        out.commit("s1", {"scene.glb": b"new", "report.json": b"{}"}, {"hash": "h2"})
        assert sorted(p.name for p in (out.scenes / "s1").iterdir()) == ["done.json", "report.json", "scene.glb"]
        assert out.is_done("s1", "h2") and not list(out.staging.iterdir())
        with pytest.raises(Locked, match="another comboverse batch"):
            OutputFolder(tmp_path / "out").__enter__()


def test_the_procedural_manifest_is_kept_when_asked_again_and_a_user_manifest_is_never_overwritten(tmp_path):
    from comboverse_ops.app.batch import ManifestError, read_manifest, write_procedural_manifest

    m = write_procedural_manifest(tmp_path / "m.jsonl", 2, objects=2, image_size=48, log=lambda *a: None)
    lines = [e.line for e in read_manifest(m)]
    assert [line["id"] for line in lines] == ["proc_00000", "proc_00001"]
    assert all(len(line["boxes"]) == 2 and len(line["phrases"]) == 2 and line["prompt"] for line in lines)
    assert (tmp_path / "procedural" / "proc_00001.png").is_file()
    before = m.read_bytes()
    write_procedural_manifest(m, 2, objects=2, image_size=48, log=lambda *a: None)
    assert m.read_bytes() == before
    with pytest.raises(ManifestError, match="is not the procedural manifest of these options"):
        write_procedural_manifest(m, 3, objects=2, image_size=48, log=lambda *a: None)


# ---------------------------------------------------------------------------------------------
# On a local Ray


@pytest.fixture(scope="module")
def ray_session():
    pytest.importorskip("ray")
    import ray

    from comboverse_ops.app.batch import BatchSettings, start_ray

    started = start_ray(BatchSettings(num_cpus=2, num_gpus=0))
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def four(ray_session, tmp_path_factory):
    """4 procedural scenes run once (shared by the tests that look at that run)."""
    from comboverse_ops.app.cli import main

    root = tmp_path_factory.mktemp("batch4")
    code = main(["batch", str(root / "m.jsonl"), "--out", str(root / "out"), "--procedural", "4", "--stand-ins"]
                + SMALL)
    return root, code


def test_four_scenes_give_four_glbs_and_a_summary_with_pose_errors(four):
    import trimesh

    root, code = four
    out = root / "out"
    assert code == 0
    rows = _summary(out)
    assert [r["id"] for r in rows] == [f"proc_{i:05d}" for i in range(4)]
    assert all(r["status"] == "done" and r["attempts"] == 1 and r["error"] is None for r in rows)
    for r in rows:
        folder = out / "scenes" / r["id"]
        assert len(trimesh.load(str(folder / "scene.glb"), force="scene").geometry) == 2
        assert (folder / "report.json").is_file() and (folder / "before_after.png").is_file()
        assert r["seconds_refine"] >= 0 and r["seconds_total"] >= r["seconds_refine"]
        assert r["loss_total"] is not None
        assert 0 <= r["pose_translation_aligned"] < 1 and 0 <= r["pose_rotation_deg"] <= 180
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"id", "status", "seconds_refine", "loss_total", "pose_rotation_deg", "error"} <= set(header)
    assert sorted(_committed(out)) == [r["id"] for r in rows]
    assert not list((out / ".staging").iterdir()) if (out / ".staging").exists() else True


def test_a_rerun_with_the_same_manifest_skips_every_finished_scene(four):
    from comboverse_ops.app.cli import main

    root, _ = four
    out = root / "out"
    glb_times = {p: p.stat().st_mtime_ns for p in out.glob("scenes/*/scene.glb")}
    assert main(["batch", str(root / "m.jsonl"), "--out", str(out), "--procedural", "4", "--stand-ins"]
                + SMALL) == 0
    assert all(r["status"] == "skipped" for r in _summary(out))
    assert len(_committed(out)) == 4  # nothing committed a second time
    assert {p: p.stat().st_mtime_ns for p in out.glob("scenes/*/scene.glb")} == glb_times


def test_a_worker_killed_mid_scene_loses_nothing_and_writes_each_scene_once(ray_session, tmp_path):
    from comboverse_ops.app.batch import BatchSettings, run_batch, write_procedural_manifest
    from comboverse_ops.app.pipeline import PipelineSettings, with_settings

    m = write_procedural_manifest(tmp_path / "m.jsonl", 4, objects=2, image_size=64, log=lambda *a: None)
    killed = []

    def on_event(event, **f):
        # The worker that just finished a scene is already running its next one: kill it there.
        if event == "committed" and not killed:
            pid = int(f["by"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    result = run_batch(m, tmp_path / "out", with_settings(PipelineSettings(), {"refine.steps": 3}),
                       BatchSettings(device="cpu", cpus_per_worker=1, stand_ins=True), on_event=on_event,
                       log=lambda *a: None)
    out = tmp_path / "out"
    events = [json.loads(t) for t in (out / "batch_log.jsonl").read_text().splitlines()]
    assert killed and any(e["event"] == "worker_lost" for e in events)
    assert any(e["event"] == "retry" for e in events)
    assert result.ok and result.done == 4
    assert sorted(_committed(out)) == [f"proc_{i:05d}" for i in range(4)]  # each exactly once
    assert len(list(out.glob("scenes/*/scene.glb"))) == 4
    assert max(r["attempts"] for r in result.rows) == 2


def test_the_real_pipeline_runs_in_the_workers_with_tiny_models_and_a_bad_scene_fails_alone(ray_session, tmp_path):
    from comboverse_ops.app.batch import write_procedural_manifest
    from comboverse_ops.app.cli import main
    from tiny_models import save_tiny_owlv2, save_tiny_sam, save_tiny_triposr

    models = tmp_path / "models"
    save_tiny_sam(models / "sams" / "sam_tiny.pth")
    save_tiny_triposr(models / "triposr")
    detector = save_tiny_owlv2(models / "detectors" / "owlv2-tiny")
    m = write_procedural_manifest(tmp_path / "m.jsonl", 2, objects=2, image_size=96, log=lambda *a: None)
    lines = m.read_text().splitlines()
    bad = json.loads(lines[0]) | {"id": "bad_boxes", "boxes": [[500, 500, 600, 600], [0, 0, 10, 10]]}
    named = {k: v for k, v in json.loads(lines[1]).items() if k not in ("boxes", "truth")} | {"id": "by_phrases"}
    m.write_text("\n".join(lines + [json.dumps(bad), json.dumps(named)]) + "\n")
    # The tiny TripoSR's random density peaks near 1 (tests/test_pipeline_cli.py): iso level 0.5.
    fast = ["--models", str(models), "--no-inpaint", "--mc-resolution", "24", "--density-threshold", "0.5",
            "--max-faces", "400", "--steps", "3", "--refine-resolution", "48", "--preview-size", "32",
            "--device", "cpu", "--cpus-per-worker", "1", "--detect", str(detector), "--detect-threshold", "0"]
    out = tmp_path / "out"
    assert main(["batch", str(m), "--out", str(out)] + fast) == 1
    rows = {r["id"]: r for r in _summary(out)}
    for sid in ("proc_00000", "proc_00001"):
        r = rows[sid]
        assert r["status"] == "done", r["error"]
        files = sorted(p.name for p in (out / "scenes" / sid).iterdir())
        assert files == ["done.json", "log.txt", "scene.glb", "scene_novel_1.png", "scene_novel_2.png",
                         "scene_reference.png", "scene_report.json"]
        report = json.loads((out / "scenes" / sid / "scene_report.json").read_text())
        assert report["image"] == f"procedural/{sid}.png" and report["files"]["glb"] == "scene.glb"
        assert {"seconds_segment", "seconds_lift3d", "seconds_refine", "loss_total", "pose_rotation_deg"} <= set(r)
    # Phrases only: the detector found one box per phrase, one GLB node per phrase.
    assert rows["by_phrases"]["status"] == "done", rows["by_phrases"]["error"]
    report = json.loads((out / "scenes" / "by_phrases" / "scene_report.json").read_text())
    assert [o["phrase"] for o in report["objects"]] == json.loads(lines[1])["phrases"]
    assert report["models"]["detect"]["kind"].startswith("owlv2")
    assert rows["bad_boxes"]["status"] == "failed" and rows["bad_boxes"]["attempts"] == 1
    assert "boxes" in rows["bad_boxes"]["error"]
    # Missing model files stop the run before any scene, naming the folder.
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty" / "sams")):
        main(["batch", str(m), "--out", str(tmp_path / "out2"), "--debug"] + fast[:1] + [str(tmp_path / "empty")]
             + fast[2:])


def test_a_bad_scene_is_reported_and_the_others_finish_with_stand_ins(ray_session, tmp_path):
    from comboverse_ops.app.batch import write_procedural_manifest
    from comboverse_ops.app.cli import main

    m = write_procedural_manifest(tmp_path / "m.jsonl", 2, objects=2, image_size=64, log=lambda *a: None)
    lines = m.read_text().splitlines()
    missing = {"id": "missing", "image": "nowhere.png", "boxes": [[0, 0, 10, 10]]}
    no_truth = json.loads(lines[0]) | {"id": "no_truth"}
    no_truth.pop("truth")
    m.write_text("\n".join(lines + [json.dumps(missing), json.dumps(no_truth), "[1, 2]"]) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(m), "--out", str(out), "--stand-ins"] + SMALL) == 1
    rows = {r["id"]: r for r in _summary(out)}
    assert rows["proc_00000"]["status"] == rows["proc_00001"]["status"] == "done"
    assert rows["missing"]["status"] == "failed" and "nowhere.png" in rows["missing"]["error"]
    assert rows["no_truth"]["status"] == "failed" and "only procedural scenes" in rows["no_truth"]["error"]
    assert rows["line_5"]["status"] == "failed" and "expected a JSON object" in rows["line_5"]["error"]
    assert sorted(p.parent.name for p in out.glob("scenes/*/scene.glb")) == ["proc_00000", "proc_00001"]


def _oom_once(marker: str) -> None:
    """Worker setup: the first scene of seed 1 anywhere raises CUDA's out-of-memory error."""
    import torch

    import comboverse_ops.app.cli as cli

    run_demo = cli.run_demo

    def flaky(out_dir, seed=0, **kw):
        if seed == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (test)")
        return run_demo(out_dir, seed=seed, **kw)

    cli.run_demo = flaky


def test_a_scene_out_of_device_memory_is_retried_on_another_worker(ray_session, tmp_path):
    import sys
    from functools import partial

    from comboverse_ops.app.batch import BatchSettings, run_batch, write_procedural_manifest
    from comboverse_ops.app.pipeline import PipelineSettings, with_settings

    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    m = write_procedural_manifest(tmp_path / "m.jsonl", 2, objects=2, image_size=48, log=lambda *a: None)
    result = run_batch(m, tmp_path / "out", with_settings(PipelineSettings(), {"refine.steps": 2}),
                       BatchSettings(device="cpu", cpus_per_worker=1, stand_ins=True),
                       setup=partial(_oom_once, str(tmp_path / "oom_happened")), log=lambda *a: None)
    rows = {r["id"]: r for r in result.rows}
    assert result.ok and rows["proc_00001"]["attempts"] == 2 and rows["proc_00000"]["attempts"] == 1
    events = [json.loads(t) for t in (tmp_path / "out" / "batch_log.jsonl").read_text().splitlines()]
    retry = [e for e in events if e["event"] == "retry"]
    assert len(retry) == 1 and "out of memory" in retry[0]["why"] and retry[0]["id"] == "proc_00001"

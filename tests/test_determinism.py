"""Same seed, same asset: bit-identical results whatever the thread count; outputs committed together."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import ROOT


def _demo_in_subprocess(out, threads: int) -> tuple[str, dict]:
    """``run_demo`` in a fresh process with ``threads`` torch threads; the GLB's hash and the report."""
    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        torch.set_num_threads({threads})
        from comboverse_ops.cli import run_demo
        run_demo({str(out)!r}, seed=3, size=128, objects=3, steps=6, log=lambda *a: None)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600)
    report = json.loads((out / "report.json").read_text())
    return hashlib.sha256((out / "scene.glb").read_bytes()).hexdigest(), report


def test_same_seed_gives_the_same_glb_and_report_with_1_and_2_threads(tmp_path):
    # A temporary that a killed earlier run left among the outputs goes away with the next run.
    (tmp_path / "two").mkdir()
    stale = tmp_path / "two" / ".scene.glb.k1ll3d_x.tmp"
    stale.write_bytes(b"half a file")
    one = _demo_in_subprocess(tmp_path / "one", 1)
    two = _demo_in_subprocess(tmp_path / "two", 2)
    assert one[0] == two[0]  # byte-identical GLB
    # The report is byte-identical but for the wall-clock seconds and the output folder's name.
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "files")}  # noqa: E731
    assert json.dumps(strip(one[1])) == json.dumps(strip(two[1]))
    assert not stale.exists()


def test_render_gradients_are_bit_identical_with_1_and_2_threads():
    from comboverse_ops.camera import Cameras
    from comboverse_ops.procedural import ProceduralSettings, make_procedural_scene
    from comboverse_ops.render import render_scene

    truth = make_procedural_scene(0, ProceduralSettings(min_objects=3, max_objects=3, image_size=128))
    cam = truth.scene.camera
    threads = torch.get_num_threads()

    def grads(n: int):
        torch.set_num_threads(n)
        poses = [p.detach().requires_grad_() for p in truth.scene.poses]
        out = render_scene(truth.scene.with_poses(poses), Cameras(cam.c2w, cam.fov_y_deg, 128, 128, cam.near, cam.far))
        (out.rgb.square().sum() + out.alpha.sum() + out.depth.sum()).backward()
        return torch.cat([t.grad.reshape(-1) for p in poses for t in p.parameters()])

    try:
        assert torch.equal(grads(1), grads(2))  # advanced indexing's backward differed here
    finally:
        torch.set_num_threads(threads)


def test_ordered_sum_does_not_depend_on_the_thread_count():
    from comboverse_ops.determinism import ordered_mean, ordered_sum

    x = torch.randn(300_001, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = ordered_sum(x)
        torch.set_num_threads(2)
        b = ordered_sum(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)
    assert abs(float(a) - float(x.double().sum())) < 1e-3
    assert float(ordered_mean(torch.ones(5, 7000))) == 1.0 and torch.isnan(ordered_mean(torch.ones(0)))


# ----------------------------------------------------------------------------------------------
# Outputs of one run appear together


def _kill_during_commit(files: dict, after_renames: int) -> int:
    """Run ``write_files_atomic(files)`` in a process that SIGKILLs itself after ``after_renames``
    renames; returns its exit status."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from comboverse_ops import atomic
        done, real = [0], os.replace
        def replace(a, b):
            if done[0] == {after_renames}:
                os.kill(os.getpid(), signal.SIGKILL)
            real(a, b)
            done[0] += 1
        atomic.os.replace = replace
        atomic.write_files_atomic({{k: v.encode() for k, v in {files!r}.items()}})
    """)
    return subprocess.run([sys.executable, "-c", code], timeout=120).returncode


@pytest.mark.parametrize("after_renames", [0, 1, 2])
def test_a_killed_commit_never_leaves_a_new_glb_beside_an_old_report(tmp_path, after_renames):
    from comboverse_ops.atomic import write_files_atomic

    glb, png, report = tmp_path / "scene.glb", tmp_path / "scene_reference.png", tmp_path / "scene_report.json"
    write_files_atomic({glb: b"old glb", png: b"old png", report: b"old report"})
    status = _kill_during_commit({str(glb): "new glb", str(png): "new png", str(report): "new report"},
                                 after_renames)
    assert status == -signal.SIGKILL
    assert report.exists() is False  # the old report went first: it cannot describe the new GLB
    assert glb.read_bytes() == (b"new glb" if after_renames >= 1 else b"old glb")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert len(left) == 3 - after_renames  # temporaries a SIGKILL left behind ...
    write_files_atomic({glb: b"next glb", png: b"next png", report: b"next report"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.glb", "scene_reference.png", "scene_report.json"]
    assert report.read_bytes() == b"next report"  # ... are gone after the next run


def test_a_cancel_while_writing_leaves_the_old_outputs_untouched(tmp_path, monkeypatch):
    from comboverse_ops import atomic

    glb, report = tmp_path / "scene.glb", tmp_path / "scene_report.json"
    atomic.write_files_atomic({glb: b"old glb", report: b"old report"})
    calls, fsync = [], os.fsync

    def cancel_on_second(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt  # ComfyUI's Cancel, or Ctrl-C, while the report is written
        fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", cancel_on_second)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_files_atomic({glb: b"new glb", report: b"new report"})
    assert glb.read_bytes() == b"old glb" and report.read_bytes() == b"old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.glb", "scene_report.json"]

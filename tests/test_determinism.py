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
        from comboverse_ops.app.cli import run_demo
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


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """Every network `comboverse run` uses, tiny, in the real file formats, and a picture."""
    from comboverse_ops.meshio.atomic import save_png_atomic
    from tiny_models import (occluded_pair, save_tiny_depth_anything, save_tiny_sam, save_tiny_sd,
                             save_tiny_triposr)

    root = tmp_path_factory.mktemp("networks")
    models = root / "models"
    save_tiny_sam(models / "sams" / "sam_tiny.pth")
    _, inpaint_cfg, _, _ = save_tiny_sd(models / "checkpoints", "sd2", inpainting=True)
    guidance, guidance_cfg, _, _ = save_tiny_sd(root / "guidance", "sd2", inpainting=False)
    save_tiny_triposr(models / "triposr")
    depth = save_tiny_depth_anything(models / "depth_anything" / "tiny")
    proc, obs = occluded_pair()
    image = save_png_atomic(root / "picture.png", obs.image)
    return ["run", str(image), "--boxes", json.dumps(obs.boxes.round().tolist()),
            "--phrases", json.dumps(list(proc.phrases)), "--prompt", proc.prompt, "--models", str(models),
            "--inpaint-config", str(inpaint_cfg), "--guidance", str(guidance), "--guidance-config",
            str(guidance_cfg), "--depth", str(depth), "--inpaint-steps", "2", "--inpaint-resolution", "64",
            "--mc-resolution", "24", "--density-threshold", "0.5", "--max-faces", "400", "--steps", "3",
            "--refine-resolution", "48", "--ssds-views", "1", "--ssds-resolution", "32", "--preview-size", "64",
            "--device", "cpu"]


def _run_in_subprocess(argv: list[str], out, threads: int) -> tuple[bytes, dict]:
    """``comboverse run`` in a fresh process (as a user starts it) with ``threads`` torch threads."""
    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        torch.set_num_threads({threads})
        from comboverse_ops.app.cli import main
        sys.exit(main({argv + ["--out", str(out)]!r}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR")}
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.with_name(out.stem + "_report.json").read_text())
    return out.read_bytes(), report


def test_run_with_every_network_gives_the_same_glb_and_report_with_1_and_2_threads(networks, tmp_path):
    """SAM, SD inpainting, TripoSR, Depth Anything and SD guidance: oneDNN's 1x1 convolutions,
    MKL's GEMM, bilinear resizing and channels-last group_norm followed the thread count here."""
    one = _run_in_subprocess(networks, tmp_path / "one" / "scene.glb", 1)
    two = _run_in_subprocess(networks, tmp_path / "two" / "scene.glb", 2)
    assert one[1]["models"]["depth"]["kind"].startswith("Depth Anything")  # every network ran
    assert any(o["inpainted"] for o in one[1]["objects"]) and "guidance_ssds" in one[1]["losses"]["final"]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "files", "settings")}  # noqa: E731
    assert json.dumps(strip(one[1])) == json.dumps(strip(two[1]))  # poses, losses, face counts
    assert hashlib.sha256(one[0]).hexdigest() == hashlib.sha256(two[0]).hexdigest()  # byte-identical GLB


def test_1x1_convolutions_of_loaded_models_give_the_same_bits_with_any_thread_count():
    from comboverse_ops.determinism import thread_invariant_convs

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(320, 640, 1), torch.nn.Conv2d(640, 64, 3, padding=1),
                              torch.nn.Conv2d(64, 32, 1, bias=False))
    x = torch.randn(2, 320, 16, 16)
    with torch.no_grad():
        stock = net(x)
        assert thread_invariant_convs(net) == 2 and thread_invariant_convs(net) == 0  # the 3x3 stays
        threads, outs = torch.get_num_threads(), []
        try:
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                outs.append(net(x))
        finally:
            torch.set_num_threads(threads)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    torch.testing.assert_close(outs[0], stock, rtol=1e-5, atol=1e-5)  # the same convolution
    assert set(net.state_dict()) == {"0.weight", "0.bias", "1.weight", "1.bias", "2.weight"}


def test_serial_bilinear_runs_only_plain_bilinear_resizes_in_one_thread(monkeypatch):
    import torch.nn.functional as F

    from comboverse_ops import determinism

    seen = []
    real = determinism.fixed_threads

    def spy(n=1):
        seen.append(n)
        return real(n)

    monkeypatch.setattr(determinism, "fixed_threads", spy)
    x = torch.rand(1, 3, 40, 40)
    with determinism.serial_bilinear():
        a = F.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False)
        F.interpolate(x, size=(20, 20), mode="bilinear", antialias=True)
        F.interpolate(x, size=(96, 96), mode="bicubic")
        (x @ x).sum()
    assert seen == [1]
    with real(1):
        assert torch.equal(a, F.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False))


def test_render_gradients_are_bit_identical_with_1_and_2_threads():
    from comboverse_ops.types.camera import Cameras
    from comboverse_ops.synthetic.procedural import ProceduralSettings, make_procedural_scene
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
        from comboverse_ops.meshio import atomic
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
    from comboverse_ops.meshio.atomic import write_files_atomic

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
    from comboverse_ops.meshio import atomic

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

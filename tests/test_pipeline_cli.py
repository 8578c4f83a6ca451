"""`comboverse run`: the whole pipeline headless, with tiny models in the real file formats.

Random tiny weights give meaningless geometry: these tests check the plumbing (every stage runs,
files are found where the README says, the outputs are written and well-formed), not quality.
The tiny TripoSR's random density peaks near 1, far below TripoSR's iso level 25, so the runs
pass ``--density-threshold 0.5`` (as tests/test_lift3d.py does); no result is faked.
"""

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from tiny_models import occluded_pair, save_tiny_depth_anything, save_tiny_sam, save_tiny_sd, save_tiny_triposr


FAST = ["--inpaint-steps", "2", "--inpaint-resolution", "64", "--mc-resolution", "24", "--density-threshold", "0.5",
        "--max-faces", "400", "--steps", "3", "--refine-resolution", "48", "--ssds-views", "1",
        "--ssds-resolution", "32", "--preview-size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A models folder as a user lays it out, a guidance model elsewhere, and a 96 px picture."""
    from comboverse_ops.meshio.atomic import save_png_atomic

    root = tmp_path_factory.mktemp("pipeline")
    models = root / "models"
    save_tiny_sam(models / "sams" / "sam_tiny.pth")
    # Single-file SD-2 inpainting in the original layout; its tokenizer/ lands next to it.
    _, inpaint_cfg, _, _ = save_tiny_sd(models / "checkpoints", "sd2", inpainting=True)
    guidance, guidance_cfg, _, _ = save_tiny_sd(root / "guidance", "sd2", inpainting=False)
    save_tiny_triposr(models / "triposr")
    proc, obs = occluded_pair()
    image = save_png_atomic(root / "picture.png", obs.image)
    return {"root": root, "models": models, "image": image, "boxes": json.dumps(obs.boxes.round().tolist()),
            "phrases": json.dumps(list(proc.phrases)), "prompt": proc.prompt, "inpaint_cfg": inpaint_cfg,
            "guidance": guidance, "guidance_cfg": guidance_cfg, "n": len(proc.phrases)}


def _glb_nodes(path: Path) -> list[str]:
    import trimesh

    scene = trimesh.load(str(path), force="scene")
    assert all(len(g.faces) > 0 for g in scene.geometry.values())
    return sorted(scene.graph.nodes_geometry)


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.size


def _spy(monkeypatch, module, name, calls):
    """Record what ``module.name`` returns (the pipeline imports it when a stage runs)."""
    real = getattr(module, name)

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((args, out))
        return out

    monkeypatch.setattr(module, name, spy)


def _resized(images, size):
    """``[B, H, W, 3]`` images resized as Lift3D resizes a framed crop (bilinear, antialiased)."""
    x = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), (size, size), mode="bilinear",
                                        align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1)


def test_run_writes_glb_previews_and_report_with_every_stage(setup, monkeypatch):
    from comboverse_ops.app.cli import main
    from comboverse_ops.decompose import inpaint, segment
    from comboverse_ops.lift3d import reconstruct

    seen = {"segment": [], "inpaint": [], "lift3d": []}
    _spy(monkeypatch, segment, "segment_image", seen["segment"])
    _spy(monkeypatch, inpaint, "inpaint_objects", seen["inpaint"])
    _spy(monkeypatch, reconstruct, "reconstruct_objects", seen["lift3d"])

    out = setup["root"] / "out" / "scene.glb"
    assert main(["run", str(setup["image"]), "--boxes", setup["boxes"], "--phrases", setup["phrases"],
                 "--prompt", setup["prompt"], "--models", str(setup["models"]), "--out", str(out),
                 "--inpaint-config", str(setup["inpaint_cfg"]), "--guidance", str(setup["guidance"]),
                 "--guidance-config", str(setup["guidance_cfg"])] + FAST) == 0
    report = json.loads((out.parent / "scene_report.json").read_text())
    names = [o["name"] for o in report["objects"]]
    assert len(names) == setup["n"] and _glb_nodes(out) == sorted(names)  # one glTF node per object
    for name in ("scene_reference.png", "scene_novel_1.png", "scene_novel_2.png"):
        assert _png_size(out.parent / name) == (64, 64)
    for stage in ("segment", "inpaint", "lift3d", "init_pose", "refine", "export", "total"):
        assert report["seconds"][stage] >= 0
    assert any(o["inpainted"] for o in report["objects"])  # SD inpainting really ran
    assert report["models"]["segment"]["file"].endswith("sam_tiny.pth")
    assert "inpainting" in report["models"]["inpaint"]["kind"]
    assert report["models"]["lift3d"]["file"].endswith("model.ckpt")
    assert "text-to-image" in report["models"]["guidance"]["kind"]
    final = report["losses"]["final"]
    assert {"ref_rgb", "ref_alpha", "guidance_ssds", "total"} <= set(final)
    assert all(v is not None for v in final.values())
    for o in report["objects"]:
        assert len(o["translation"]) == 3 and len(o["rotation"]) == 3 and o["scale"] > 0
    assert "same depth" in report["init_pose"]["depth"]
    assert not list(out.parent.glob("*.tmp*"))  # atomic writes leave nothing behind
    # Objects framed once: objects nothing hides would keep Segment's crops through Inpaint (both are hidden
    # here), and TripoSR sees every crop as Inpaint framed it, only resized to its 64 px.
    seg, inp = seen["segment"][0][1], seen["inpaint"][0][1]
    (_, crops, crop_masks, *_), (_, cond) = seen["lift3d"][0]
    assert torch.equal(crops, inp.crops) and torch.equal(crop_masks, inp.crop_masks)
    for i, occluded in enumerate(inp.windows.occluded):
        assert occluded or (torch.equal(crops[i], seg.crops[i]) and torch.equal(crop_masks[i], seg.crop_masks[i]))
    assert cond.shape == (setup["n"], 64, 64, 3) and float((cond - _resized(crops, 64)).abs().max()) < 1e-6


def test_run_without_inpainting_or_guidance_needs_no_checkpoints_and_takes_depth(setup, tmp_path, monkeypatch):
    from comboverse_ops.app.cli import main
    from comboverse_ops.decompose import segment
    from comboverse_ops.lift3d import reconstruct

    seen = {"segment": [], "lift3d": []}
    _spy(monkeypatch, segment, "segment_image", seen["segment"])
    _spy(monkeypatch, reconstruct, "reconstruct_objects", seen["lift3d"])

    models = tmp_path / "models"
    shutil.copytree(setup["models"] / "sams", models / "sams")
    shutil.copytree(setup["models"] / "triposr", models / "triposr")
    depth = save_tiny_depth_anything(models / "depth_anything" / "tiny")
    out = tmp_path / "plain.glb"
    main(["run", str(setup["image"]), "--boxes", setup["boxes"], "--models", str(models), "--out", str(out),
          "--no-inpaint", "--depth", str(depth)] + FAST)
    report = json.loads((tmp_path / "plain_report.json").read_text())
    assert report["models"]["depth"]["kind"].startswith("Depth Anything")
    assert report["init_pose"]["depth"].startswith("Depth Anything disparity")
    assert len(_glb_nodes(out)) == setup["n"]
    assert report["models"]["inpaint"]["kind"] == "skipped" and report["models"]["guidance"]["file"] is None
    assert "guidance_ssds" not in report["losses"]["final"]
    assert (tmp_path / "plain_novel_2.png").is_file()
    # Segment's crops reach TripoSR as Segment framed them, only resized to its 64 px.
    seg, ((_, crops, crop_masks, *_), (_, cond)) = seen["segment"][0][1], seen["lift3d"][0]
    assert torch.equal(crops, seg.crops) and torch.equal(crop_masks, seg.crop_masks)
    assert float((cond - _resized(crops, 64)).abs().max()) < 1e-6


@pytest.mark.parametrize("missing, folder", [("sams", "sams"), ("checkpoints", "checkpoints"),
                                             ("triposr", "triposr")])
def test_a_missing_model_is_a_clear_error_naming_its_folder(setup, tmp_path, capsys, missing, folder):
    from comboverse_ops.app.cli import main

    models = tmp_path / "models"
    for sub in ("sams", "checkpoints", "triposr"):
        if sub != missing:
            shutil.copytree(setup["models"] / sub, models / sub)
    out = tmp_path / "scene.glb"
    capsys.readouterr()
    assert main(["run", str(setup["image"]), "--boxes", setup["boxes"], "--models", str(models), "--out", str(out)]
                + FAST) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("comboverse: error: ") and len(err.splitlines()) == 1
    assert str(models / folder) in err
    assert " --" in err  # and says which flag gives the file instead
    assert not out.exists()


def test_a_missing_file_given_by_flag_names_the_flag(setup, tmp_path):
    from comboverse_ops.app.cli import main

    with pytest.raises(FileNotFoundError, match="--lift3d .*nope.ckpt does not exist.*triposr"):
        main(["run", str(setup["image"]), "--boxes", setup["boxes"], "--models", str(setup["models"]),
              "--lift3d", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "s.glb"), "--debug"] + FAST)


def test_the_pipeline_benchmark_runs_the_whole_pipeline_with_tiny_models():
    """benchmarks/pipeline.py --tiny: the models folder in the real formats, one run, the table."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--tiny", "--runs", "1",
                          "--depth", "none", "--no-guidance"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("total ") for line in lines), out.stdout[-2000:]
    for stage in ("segment", "inpaint", "lift3d", "init_pose", "refine", "export"):
        assert any(line.startswith(stage) for line in lines), stage
    # one object of the picture is partly hidden: it, and only it, is inpainted
    assert "inpainted: [True, False, False]" in out.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(),
                    reason="the nodes run on ComfyUI's device (CUDA here, fp16) and FAST runs the CLI on the CPU")
def test_the_full_pipeline_workflow_run_node_by_node_gives_the_cli_poses(setup, tmp_path, monkeypatch, pack,
                                                                         output_dir):
    """workflows/api/full_pipeline.json through the node classes, in workflow order, with the CLI's
    settings and models: the same poses as `comboverse run`."""
    import torch

    from comboverse_ops.app.cli import main
    from comboverse_ops.app.pipeline import load_image_hwc
    from conftest import ROOT, run_api_workflow

    # One models folder for both: the guidance checkpoint joins the others in checkpoints/.
    models = tmp_path / "models"
    shutil.copytree(setup["models"], models)
    guidance = models / "checkpoints" / "tiny-sd2-guidance.safetensors"
    shutil.copy(setup["guidance"], guidance)
    inpaint = next(p for p in (models / "checkpoints").glob("*.safetensors") if "inpainting" in p.name)

    out = tmp_path / "cli" / "scene.glb"
    argv = [str(setup["image"]), "--boxes", setup["boxes"], "--phrases", setup["phrases"],
            "--prompt", setup["prompt"], "--models", str(models), "--out", str(out),
            "--inpaint", str(inpaint), "--inpaint-config", str(setup["inpaint_cfg"]),
            "--guidance", str(guidance), "--guidance-config", str(setup["guidance_cfg"])] + FAST
    assert main(["run"] + argv) == 0
    cli = json.loads((out.parent / "scene_report.json").read_text())["objects"]

    monkeypatch.setenv("COMBOVERSE_MODELS_DIR", str(models))
    prompt = json.loads((ROOT / "workflows" / "api" / "full_pipeline.json").read_text())
    settings = {  # the CLI's inputs; its settings below
        "ComboVerseLoadSAM": {"sam_name": "sam_tiny.pth"},
        # the CLI's boxes and phrases, drawn in ComboVerse Boxes as a user would
        "ComboVerseBoxes": {"boxes": json.dumps([
            {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0, "label": phrase}
            for (x0, y0, x1, y1), phrase in zip(json.loads(setup["boxes"]), json.loads(setup["phrases"]))])},
        "ComboVerseLoadInpaintModel": {"ckpt_name": inpaint.name, "config_dir": str(setup["inpaint_cfg"])},
        "ComboVerseLoadGuidanceModel": {"ckpt_name": guidance.name, "config_dir": str(setup["guidance_cfg"])},
    }
    # Every settings widget of every stage node from the very settings objects the CLI ran with.
    from comboverse_ops.app.cli import run_settings

    stages = run_settings(argv).resolved()
    widgets = importlib.import_module(f"{pack.__name__}.nodes.widgets")
    for node in ("ComboVerseSegment", "ComboVerseInpaint", "ComboVerseLift3D", "ComboVerseInitPose",
                 "ComboVerseSSDSRefine"):
        values = widgets.widget_values(pack.NODE_CLASS_MAPPINGS[node].SETTINGS, stages)
        assert values, node
        settings[node] = settings.get(node, {}) | values
    assert settings["ComboVerseSSDSRefine"]["views_per_step"] == 1 and settings["ComboVerseLift3D"]["resolution"] == 24

    def load_image(image):  # core LoadImage: IMAGE [1, H, W, 3] in [0, 1], MASK from the alpha
        rgb = load_image_hwc(setup["image"])
        return rgb[None, ..., :3], torch.zeros(1, *rgb.shape[:2])

    results = run_api_workflow(pack, prompt, settings, core={"LoadImage": load_image})
    refine = next(k for k, n in prompt.items() if n["class_type"] == "ComboVerseSSDSRefine")
    scene = results[refine][0]
    assert len(scene.objects) == len(cli) == setup["n"]
    for obj, ref in zip(scene.objects, cli):
        for got, want in ((obj.pose.scale, [ref["scale"]]), (obj.pose.rotation, ref["rotation"]),
                          (obj.pose.translation, ref["translation"])):
            assert torch.allclose(got.detach().cpu().float(), torch.tensor(want), atol=1e-5), (obj.name, got, want)

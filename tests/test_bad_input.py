"""Bad input is named, early, in one line: pictures, boxes, checkpoints, meshes, output paths.

Every case here is one a user met (issue 11): each asserts the message a user now sees (the
README's troubleshooting table quotes them) and, for the CLI, that it comes before any model ran.
"""

import importlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import node_class, occluded_pair, save_tiny_depth_anything, save_tiny_sam, save_tiny_sd, \
    save_tiny_triposr


def _save(arr_or_image, path: Path, **kw) -> Path:
    img = arr_or_image if isinstance(arr_or_image, Image.Image) else Image.fromarray(arr_or_image)
    img.save(path, **kw)
    return path


# ----------------------------------------------------------------------------------------------
# Pictures


def test_16_bit_greyscale_png_keeps_its_levels_instead_of_turning_white(tmp_path):
    from comboverse_ops.types.images import load_image_hwc

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    path = _save(ramp, tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")  # really a 16-bit picture
    img = load_image_hwc(path)
    assert img.shape == (32, 64, 3)
    torch.testing.assert_close(img[0, :, 0], torch.from_numpy(ramp[0] / 65535.0).float(), atol=1e-6, rtol=0)
    assert 0.45 < float(img.mean()) < 0.55  # before: 1.0 almost everywhere (clipped at 255)


def test_paletted_greyscale_cmyk_and_rgba_pictures_load_as_rgb_or_rgba(tmp_path):
    from comboverse_ops.types.images import load_image_hwc

    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[:, :12] = (200, 30, 10)
    rgb[:, 12:] = (10, 40, 220)
    pal = Image.fromarray(rgb).quantize(2)
    torch.testing.assert_close(load_image_hwc(_save(pal, tmp_path / "pal.png")), torch.from_numpy(rgb / 255.0).float())
    # A palette with a transparent entry comes in as RGBA, alpha 0 there.
    rgba = load_image_hwc(_save(pal, tmp_path / "pal_t.png", transparency=pal.getpixel((0, 0))))
    assert rgba.shape[-1] == 4 and float(rgba[0, 0, 3]) == 0.0 and float(rgba[0, -1, 3]) == 1.0
    # Greyscale repeats into three channels; grey + alpha keeps alpha.
    grey = load_image_hwc(_save(rgb[..., 0], tmp_path / "grey.png"))
    assert grey.shape == (20, 24, 3) and torch.equal(grey[..., 0], grey[..., 2])
    la = load_image_hwc(_save(Image.fromarray(rgb[..., 0]).convert("LA"), tmp_path / "la.png"))
    assert la.shape == (20, 24, 4)
    # CMYK (print files): pure cyan is (0, 1, 1) in RGB.
    cmyk = Image.new("CMYK", (20, 20), (255, 0, 0, 0))
    torch.testing.assert_close(load_image_hwc(_save(cmyk, tmp_path / "cmyk.jpg", quality=100))[10, 10],
                               torch.tensor([0.0, 1.0, 1.0]), atol=0.02, rtol=0)
    # RGBA: alpha is kept as the 4th channel (Segment limits masks to opaque pixels).
    a = np.dstack([rgb, np.full((20, 24), 128, np.uint8)])
    assert torch.allclose(load_image_hwc(_save(a, tmp_path / "rgba.png"))[..., 3], torch.tensor(128 / 255))


def test_exif_rotated_picture_comes_out_upright(tmp_path):
    from comboverse_ops.types.images import load_image_hwc

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # white left half as stored
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    out = load_image_hwc(_save(img, tmp_path / "rotated.png", exif=exif))
    assert out.shape == (40, 20, 3)  # portrait as shown
    assert float(out[:20].mean()) == 1.0 and float(out[20:].mean()) == 0.0  # the left half is now on top


def test_tiny_nan_and_truncated_pictures_are_refused_by_name(tmp_path, pack):
    from comboverse_ops.types.images import load_image_hwc

    with pytest.raises(ValueError, match=r"is 1x1 pixels; expected at least 16 pixels on each side"):
        load_image_hwc(_save(np.zeros((1, 1, 3), np.uint8), tmp_path / "dot.png"))
    good = _save(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), tmp_path / "noise.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"cut\.png is damaged or truncated"):
        load_image_hwc(cut)
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.png is not a picture"):
        load_image_hwc(tmp_path / "text.png")
    # The Segment node refuses the same pictures before SAM runs (no SAM model is even given).
    segment = node_class(pack, "segment", "Segment")()
    args = dict(negative_points=True, auto_objects=1, crop_size=64, foreground_ratio=0.85, background="grey",
                boxes_text="[[0, 0, 1, 1]]")
    with pytest.raises(ValueError, match=r"Segment image: the picture is 1x1 pixels"):
        segment.segment(torch.rand(1, 1, 1, 3), **args)
    nan = torch.rand(1, 32, 32, 3)
    nan[0, 3, 4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"Segment image: 1 of the picture's 3072 values are NaN or infinite"):
        segment.segment(nan, **args)


# ----------------------------------------------------------------------------------------------
# Boxes


@pytest.mark.parametrize("text, message", [
    ('[["a", 1, 2, 3]]', r"--boxes: box 0 \['a', 1, 2, 3\]: x0 must be a number, got 'a'"),
    ("[[1, 2, NaN, 40]]", r"--boxes: box 0 \[1.0, 2.0, nan, 40.0\] has a NaN or infinite coordinate"),
    ('[{"x": 1, "y": null, "width": 5, "height": 5}]', r"box 0 .*: y must be a number, got None"),
])
def test_boxes_that_are_not_numbers_name_the_box(text, message):
    from comboverse_ops.types.layout import parse_boxes

    with pytest.raises(ValueError, match=message):
        parse_boxes(text, (64, 64), what="--boxes")


# ----------------------------------------------------------------------------------------------
# Checkpoints (cheap header checks, the loaders, and the CLI before any model runs)


@pytest.mark.parametrize("content, message", [
    (bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), "is not a valid checkpoint"),
    (b"", r"is empty \(0 bytes\), not a valid checkpoint"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n", "a Git LFS pointer"),
])
def test_random_empty_or_pointer_pth_says_not_a_valid_checkpoint(tmp_path, content, message):
    from comboverse_ops.models.sam import load_sam

    path = tmp_path / "sam_vit_b.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        load_sam(path, cache=None)
    assert "weights_only" not in str(err.value) and "convert" not in str(err.value)
    assert str(path) in str(err.value)


def test_truncated_triposr_ckpt_and_depth_safetensors_name_the_path(tmp_path):
    from comboverse_ops.decompose.depth import check_depth_folder
    from comboverse_ops.lift3d.checkpoint import load_triposr

    ckpt = save_tiny_triposr(tmp_path / "triposr")
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"TripoSR checkpoint: {ckpt} is not a valid checkpoint: .*truncated"):
        load_triposr(ckpt, cache=None)
    depth = tmp_path / "depth"
    save_tiny_depth_anything(depth)
    weights = depth / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 100])
    with pytest.raises(ValueError, match=rf"depth model: {weights} is truncated: its header describes \d+ bytes"):
        check_depth_folder(depth)


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """A models folder with tiny SAM and TripoSR, a 96 px picture and its boxes."""
    from comboverse_ops.meshio.atomic import save_png_atomic

    root = tmp_path_factory.mktemp("bad_input")
    models = root / "models"
    save_tiny_sam(models / "sams" / "sam_tiny.pth")
    save_tiny_triposr(models / "triposr")
    _, obs = occluded_pair()
    image = save_png_atomic(root / "picture.png", obs.image)
    return {"root": root, "models": models, "image": image, "boxes": json.dumps(obs.boxes.round().tolist())}


def _run_cli(args, capsys) -> tuple[int, str, str]:
    from comboverse_ops.app.cli import main

    capsys.readouterr()  # what building the models printed
    code = main(["run", "--device", "cpu", "--no-inpaint", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _broken_models(setup, tmp_path, name: str) -> Path:
    """A copy of the models folder whose file ``name`` (relative) is cut in half."""
    models = tmp_path / "models"
    shutil.copytree(setup["models"], models)
    f = models / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return models


@pytest.mark.parametrize("case", ["sam", "triposr", "depth", "out_dir", "out_readonly", "image", "boxes", "device"])
def test_cli_names_bad_input_in_one_line_before_any_model_runs(cli_setup, tmp_path, capsys, case):
    s = cli_setup
    image, boxes, models, out = str(s["image"]), s["boxes"], s["models"], tmp_path / "scene.glb"
    extra, expected = [], None
    if case == "sam":
        models = _broken_models(s, tmp_path, "sams/sam_tiny.pth")
        expected = rf"Segment \(SAM\): {models}/sams/sam_tiny.pth is not a valid checkpoint"
    elif case == "triposr":
        models = _broken_models(s, tmp_path, "triposr/model.ckpt")
        expected = rf"TripoSR checkpoint: {models}/triposr/model.ckpt is not a valid checkpoint"
    elif case == "depth":
        depth = tmp_path / "depth"
        save_tiny_depth_anything(depth)
        (depth / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
        extra, expected = ["--depth", str(depth)], rf"depth model: {depth}/model.safetensors is not a valid safetensors"
    elif case == "out_dir":
        out.mkdir()
        expected = rf"--out: {out} is a folder; expected a file name in it"
    elif case == "out_readonly":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux /proc as a place nobody can write")
        out, expected = Path("/proc/scene.glb"), r"--out: cannot write in the folder /proc"
    elif case == "image":
        image, expected = str(tmp_path / "missing.png"), rf"image: no file at {tmp_path}/missing.png"
    elif case == "boxes":
        boxes, expected = '[["a", 1, 2, 3]]', r"--boxes: box 0 \['a', 1, 2, 3\]: x0 must be a number, got 'a'"
    elif case == "device":
        extra, expected = ["--device", "gpu7"], r"--device: expected cpu, cuda, cuda:N or mps, got 'gpu7'"
    code, stdout, stderr = _run_cli([image, "--boxes", boxes, "--models", str(models), "--out", str(out), *extra],
                                    capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("comboverse: error: "), stderr
    assert re.search(expected, lines[0]), lines[0]
    assert "Segment:" not in stdout  # no stage started
    assert not out.is_file() or case == "out_dir"


def test_cli_finds_a_missing_clip_tokenizer_before_segment_runs(cli_setup, tmp_path, capsys, monkeypatch):
    from comboverse_ops.app.cli import main

    from comboverse_ops.models import clip_vocab

    ckpt, _, tok, _ = save_tiny_sd(tmp_path / "checkpoints", "sd2", inpainting=True)
    shutil.rmtree(tok)
    monkeypatch.setattr(clip_vocab, "packaged_bpe_file", lambda: None)  # as without open_clip_torch
    capsys.readouterr()
    code = main(["run", str(cli_setup["image"]), "--boxes", cli_setup["boxes"], "--models", str(cli_setup["models"]),
                 "--inpaint", str(ckpt), "--out", str(tmp_path / "scene.glb"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 2 and "Inpaint (SD inpainting): no CLIP tokenizer found" in err and "Segment:" not in out


def test_debug_shows_the_traceback_instead(cli_setup, tmp_path):
    from comboverse_ops.app.cli import main

    with pytest.raises(ValueError, match="x0 must be a number"):
        main(["run", str(cli_setup["image"]), "--boxes", '[["a", 1, 2, 3]]', "--out", str(tmp_path / "s.glb"),
              "--models", str(cli_setup["models"]), "--debug"])


def test_argparse_errors_are_one_line_with_status_2(capsys):
    from comboverse_ops.app.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0] == "comboverse: error: the following arguments are required: image (see: comboverse run --help)"


def test_run_without_boxes_or_a_detector_is_one_line_with_status_2(capsys):
    from comboverse_ops.app.cli import main

    assert main(["run", "picture.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("comboverse: error: --boxes: not given") and "--detect DIR" in err[0]


def test_run_help_shows_the_defaults_of_numeric_flags(capsys):
    from comboverse_ops.app.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--steps", "200"), ("--seed", "0"), ("--inpaint-steps", "30"), ("--fov", "40.0"),
                          ("--ssds-views", "4"), ("--max-faces", "50000"), ("--preview-size", "256")):
        assert re.search(rf"{flag} \S+ .*?\(default: {default}[;)]", text), flag



# ----------------------------------------------------------------------------------------------
# Meshes


def test_empty_mesh_into_init_pose_is_named(pack):
    from comboverse_ops.types.layout import Layout
    from comboverse_ops.types.mesh import Mesh
    from comboverse_ops.synthetic.primitives import make_primitive

    meshes = [make_primitive("sphere", (1, 0, 0), target_faces=100),
              Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long), name="nothing")]
    layout = Layout(torch.tensor([[4.0, 4, 20, 20], [30, 30, 60, 60]]), (64, 64), ("a ball", "a box"))
    init = node_class(pack, "combine", "InitPose")()
    with pytest.raises(ValueError, match=r"object 1 \(a box\): mesh 'nothing': mesh is empty \(0 vertices, 0 faces\)"):
        init.init(meshes, layout, torch.rand(1, 64, 64, 3), 40.0, -15.0, "disparity")


def test_bad_obj_and_truncated_glb_name_the_file(tmp_path):
    from comboverse_ops import Pose, Scene, SceneObject
    from comboverse_ops.meshio.glb import write_glb
    from comboverse_ops.meshio.meshes_in import mesh_from_file
    from comboverse_ops.synthetic.primitives import make_primitive

    obj = tmp_path / "bad.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 5\n")
    with pytest.raises(ValueError, match=r"bad\.obj'?: cannot be read \(a face refers to a vertex past the file's 3 "
                                         r"vertices"):
        mesh_from_file(obj)
    glb = write_glb(Scene([SceneObject("s", make_primitive("sphere", (1, 0, 0), target_faces=200),
                                       Pose.create(1.0, [0, 0, 0], [0, 0, 0]))]), tmp_path / "ok.glb")
    cut = tmp_path / "cut.glb"
    cut.write_bytes(glb.read_bytes()[: glb.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.glb'?: cannot be read \(.*damaged, truncated or not a mesh"):
        mesh_from_file(cut)


# ----------------------------------------------------------------------------------------------
# Loader nodes: ComfyUI validates every node before it runs any


def test_loader_nodes_refuse_damaged_files_when_comfyui_validates_the_prompt(tmp_path, monkeypatch, pack):
    models = tmp_path / "models"
    monkeypatch.setenv("COMBOVERSE_MODELS_DIR", str(models))
    save_tiny_sam(models / "sams" / "sam_vit_b_01ec64.pth")
    (models / "sams" / "broken.pth").write_bytes(b"\x00" * 64)
    ckpt = save_tiny_triposr(models / "triposr")
    load_sam = node_class(pack, "loaders", "LoadSAM")
    assert load_sam.VALIDATE_INPUTS(sam_name="sam_vit_b_01ec64.pth") is True
    msg = load_sam.VALIDATE_INPUTS(sam_name="broken.pth")
    assert msg.startswith("ComboVerse Load SAM: ") and "broken.pth is not a valid checkpoint" in msg
    load_lift = node_class(pack, "lift3d", "LoadLift3DModel")
    assert load_lift.VALIDATE_INPUTS(ckpt_name="model.ckpt") is True
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    assert "model.ckpt is not a valid checkpoint" in load_lift.VALIDATE_INPUTS(ckpt_name="model.ckpt")
    sd, _, tok, _ = save_tiny_sd(models / "checkpoints", "sd2", inpainting=True)
    shutil.rmtree(tok)
    # As without open_clip_torch: the nodes use the pack's own copy of the module (loaded as ComfyUI does).
    clip_vocab = importlib.import_module(f"{pack.__name__}.comboverse_ops.models.clip_vocab")
    monkeypatch.setattr(clip_vocab, "packaged_bpe_file", lambda: None)
    msg = node_class(pack, "loaders", "LoadInpaintModel").VALIDATE_INPUTS(ckpt_name=sd.name)
    assert msg.startswith("ComboVerse Load Inpaint Model: no CLIP tokenizer found")
    depth = models / "depth_anything" / "tiny"
    save_tiny_depth_anything(depth)
    (depth / "model.safetensors").write_bytes(b"")
    msg = node_class(pack, "depth", "LoadDepthModel").VALIDATE_INPUTS(model_folder="tiny")
    assert msg.startswith("ComboVerse Load Depth Model: ") and "model.safetensors is empty (0 bytes)" in msg

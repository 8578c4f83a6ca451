"""Depth stage: a tiny Depth Anything model saved with save_pretrained, loaded offline like a real one."""

import importlib
import json

import pytest
import torch

from comboverse_ops.decompose.depth import (
    DepthPreprocess,
    estimate_disparity,
    load_depth_model,
    preprocess_image_hwc,
)
from comboverse_ops.models.cache import ModelCache
from tiny_models import save_tiny_depth_anything

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_tiny_depth_anything(root / "depth_anything" / "tiny")
    other = root / "depth_anything" / "not_depth"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
    return root


def _image(h=40, w=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(h, w, 3, generator=g)
    img[:, : w // 2] *= 0.2  # a dark left half, so the picture has structure
    return img


def test_network_size_keeps_aspect_and_patch_multiple():
    pre = DepthPreprocess()
    assert pre.network_size(480, 640) == (518, 686)  # short side 518, 640 * 518 / 480 = 690.7 -> 49 * 14
    assert pre.network_size(1080, 720) == (784, 518)
    h, w = pre.network_size(7, 3000)
    assert h % 14 == 0 and w % 14 == 0 and h >= 14
    x = preprocess_image_hwc(torch.full((30, 20, 3), 0.485), DepthPreprocess(size=28))
    assert x.shape == (1, 3, 42, 28)
    assert x[0, 0].abs().max() < 1e-5  # the ImageNet mean maps to 0


def test_load_and_estimate(models_dir):
    folder = models_dir / "depth_anything" / "tiny"
    cache = ModelCache()
    model = load_depth_model(folder, device="cpu", dtype=torch.float32, cache=cache)
    assert load_depth_model(folder, device="cpu", dtype=torch.float32, cache=cache) is model  # cached by folder
    assert len(cache) == 1
    assert model.preprocess.size == 56 and model.dtype == torch.float32
    img = _image()
    d = estimate_disparity(model, img)
    assert d.shape == (40, 60) and d.dtype == torch.float32
    assert torch.isfinite(d).all() and float(d.min()) >= 0.0 and float(d.max()) <= 1.0
    assert float(d.max() - d.min()) > 0.5  # normalised, not flat
    assert torch.equal(d, estimate_disparity(model, img.clone()))  # deterministic
    # RGBA input: alpha ignored
    assert torch.allclose(estimate_disparity(model, torch.cat([img, torch.zeros(40, 60, 1)], -1)), d)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        estimate_disparity(model, img[None])


def test_load_errors(models_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*Depth-Anything-V2-Small-hf"):
        load_depth_model(tmp_path / "nope", cache=None)
    with pytest.raises(ValueError, match="'clip'.*expected 'depth_anything'"):
        load_depth_model(models_dir / "depth_anything" / "not_depth", cache=None)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no config.json \(found \['model.safetensors'\]\)"):
        load_depth_model(empty, cache=None)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    cfg = json.loads((models_dir / "depth_anything" / "tiny" / "config.json").read_text())
    (no_weights / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match=r"has no model.safetensors \(or pytorch_model.bin\)"):
        load_depth_model(no_weights, cache=None)
    metric = tmp_path / "metric"
    metric.mkdir()
    (metric / "config.json").write_text(json.dumps({**cfg, "depth_estimation_type": "metric"}))
    with pytest.raises(ValueError, match="'metric'.*expected a 'relative' one"):
        load_depth_model(metric, cache=None)


def test_nodes(pack, models_dir, monkeypatch):
    monkeypatch.setenv("COMBOVERSE_MODELS_DIR", str(models_dir))
    nodes = importlib.import_module(pack.__name__ + ".nodes.depth")
    assert nodes.LoadDepthModel.CATEGORY == "ComboVerse/loaders"  # with the other loaders
    assert nodes.Depth.CATEGORY == "ComboVerse/stage1"
    for cls in (nodes.LoadDepthModel, nodes.Depth):
        assert cls.DESCRIPTION
        for group in cls.INPUT_TYPES().values():
            assert all("tooltip" in opts for _, opts in group.values())
    choices = nodes.LoadDepthModel.INPUT_TYPES()["required"]["model_folder"][0]
    assert choices == ["not_depth", "tiny"]
    (model,) = nodes.LoadDepthModel().load("tiny")
    assert nodes.LoadDepthModel().load("tiny")[0] is model  # one load, shared
    images = torch.stack([_image(), _image(seed=1)])
    before = images.clone()
    (disp,) = nodes.Depth().estimate(model, images)
    assert disp.shape == (2, 40, 60, 3) and disp.dtype == torch.float32
    assert float(disp.min()) >= 0 and float(disp.max()) <= 1
    assert torch.equal(disp[..., 0], disp[..., 2])  # grey
    assert torch.equal(disp[0, ..., 0], estimate_disparity(model, images[0]))
    assert torch.equal(images, before)  # inputs are not mutated
    with pytest.raises(ValueError, match="ComboVerse Load Depth Model.*'clip'"):
        nodes.LoadDepthModel().load("not_depth")
    with pytest.raises(FileNotFoundError, match="ComboVerse Load Depth Model.*missing.*depth_anything"):
        nodes.LoadDepthModel().load("missing")


def test_disparity_feeds_init_pose(pack, models_dir):
    """The node's output is InitPose's disparity map: the object that is brighter on it starts nearer."""
    from comboverse_ops.types.camera import project_points
    from comboverse_ops.compose.init_pose import (
        InitSettings,
        depth_from_image,
        init_poses,
        reference_camera,
    )
    from comboverse_ops.types.layout import Layout
    from comboverse_ops.synthetic.primitives import box

    nodes = importlib.import_module(pack.__name__ + ".nodes.depth")
    model = load_depth_model(models_dir / "depth_anything" / "tiny", cache=None)
    (disp,) = nodes.Depth().estimate(model, _image()[None])
    d = depth_from_image(disp, (40, 60))
    boxes = torch.tensor([[5.0, 10.0, 25.0, 30.0], [35.0, 10.0, 55.0, 30.0]])
    masks = torch.zeros(2, 40, 60)
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    means = [float(d[m > 0].mean()) for m in masks]
    assert min(means) > 0 and means[0] != means[1]
    camera = reference_camera(40, 60)
    poses = init_poses([box(), box()], Layout(boxes, (40, 60), masks=masks), camera, d,
                       InitSettings(depth_kind="disparity"))
    view_depths = [float(project_points(p.translation.reshape(1, 3), camera)[1].reshape(-1)[0]) for p in poses]
    nearer = 0 if means[0] > means[1] else 1
    assert view_depths[nearer] < view_depths[1 - nearer]

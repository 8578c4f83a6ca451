"""Segment: SAM checkpoints, prompts, mask clean-up, re-centred crops, layouts, bad input."""

import numpy as np
import pytest
import torch

from tiny_models import SAM_TINY, node_class, save_tiny_sam

import segment_anything  # noqa: F401,E402  (declared dependencies: fail loudly, never skip)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


@pytest.fixture(scope="module")
def sam_path(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("sams") / "tiny_sam.pth")


@pytest.fixture(scope="module")
def scene():
    from comboverse_ops.synthetic.procedural import ProceduralSettings, make_procedural_scene

    # Seed 3 at 128 px: three objects, two of them partly hidden.
    proc = make_procedural_scene(3, ProceduralSettings(min_objects=3, max_objects=3, image_size=128))
    return proc, proc.observe()


def _iou(a, b):
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum()) / max(1.0, float((a | b).sum()))


# ----------------------------------------------------------------------------------------------
# Checkpoints


def test_official_architectures_are_told_apart_by_their_weight_shapes():
    from comboverse_ops.models.sam import SAM_ARCHITECTURES, SamArchitecture, build_sam
    from comboverse_ops.models.sam import sam_architecture_from_state_dict as detect

    def shapes(arch):  # tensors of the right shapes, no memory
        return {k: torch.empty(v.shape, device="meta") for k, v in build_sam(arch, device="meta").state_dict().items()}

    for name, arch in SAM_ARCHITECTURES.items():
        assert detect(shapes(arch)).name == name
    tiny = SamArchitecture(**SAM_TINY)
    assert detect(shapes(tiny)) == tiny  # every dimension inferred


def test_the_loader_node_loads_a_pth_once_and_refuses_other_files(pack, sam_path, tmp_path):
    load = node_class(pack, "loaders", "LoadSAM")().load
    (sam,) = load(str(sam_path))
    (again,) = load(str(sam_path))
    assert sam is again and sam.arch.image_size == 128 and not sam.sam.training
    assert sam.sam.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    with pytest.raises(FileNotFoundError, match="models/sams"):
        load("sam_vit_h_4b8939.pth")
    torch.save({"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(2)}, tmp_path / "sam2.pt")
    with pytest.raises(ValueError, match="SAM 2"):
        load(str(tmp_path / "sam2.pt"))
    torch.save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, tmp_path / "sd.ckpt")
    with pytest.raises(ValueError, match="not a SAM"):
        load(str(tmp_path / "sd.ckpt"))
    state = torch.load(sam_path)
    state["image_encoder.neck.0.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="do not fit"):
        load(str(tmp_path / "broken.pth"))


# ----------------------------------------------------------------------------------------------
# Prompts and masks


def test_negative_points_sit_at_the_other_boxes_centres_but_not_at_a_supporting_box():
    from comboverse_ops.decompose.segment import SegmentSettings, object_prompts

    boxes = torch.tensor([[10.0, 10, 30, 30], [25, 5, 55, 35], [0, 0, 100, 100]])
    none = [torch.zeros(0, 2)] * 3
    box, coords, labels = object_prompts(0, boxes, none, SegmentSettings())
    assert torch.equal(box, boxes[0])
    # Box 2 contains box 0 (a table under a cup): its centre may lie on object 0, so it is no negative.
    assert coords.tolist() == [[40.0, 20.0]] and labels.tolist() == [0]
    _, coords, labels = object_prompts(2, boxes, none, SegmentSettings())
    assert coords.tolist() == [[20.0, 20.0], [40.0, 20.0]] and labels.tolist() == [0, 0]
    _, coords, _ = object_prompts(0, boxes, none, SegmentSettings(negative_points=False))
    assert coords.numel() == 0
    # Without boxes, each object is a click; the other clicks are its negatives.
    clicks = [torch.tensor([[5.0, 6]]), torch.tensor([[50.0, 60]])]
    box, coords, labels = object_prompts(1, None, clicks, SegmentSettings())
    assert box is None and coords.tolist() == [[50.0, 60.0], [5.0, 6.0]] and labels.tolist() == [1, 0]


def test_points_go_to_the_smallest_box_that_holds_them():
    from comboverse_ops.decompose.segment import assign_points

    boxes = torch.tensor([[0.0, 0, 100, 100], [10, 10, 30, 30]])
    per = assign_points(torch.tensor([[20.0, 20], [80, 80]]), boxes)
    assert per[0].tolist() == [[80.0, 80.0]] and per[1].tolist() == [[20.0, 20.0]]
    with pytest.raises(ValueError, match="point 0 .* none of the 2 boxes"):
        assign_points(torch.tensor([[150.0, 20]]), boxes)


class StubPredictor:
    """Stands in for SamPredictor: three candidate masks with known scores; records the prompts."""

    def __init__(self, candidates, scores):
        self.candidates, self.scores, self.calls = candidates, scores, []

    def predict(self, **kw):
        self.calls.append(kw)
        return self.candidates, np.asarray(self.scores, dtype=np.float32), None


def test_the_best_scoring_candidate_is_kept_then_cleaned_and_clipped_to_its_box():
    from comboverse_ops.decompose.segment import SegmentSettings, sam_masks

    h = w = 40
    blob = np.zeros((h, w), bool)
    blob[10:30, 10:30] = True
    blob[18:20, 18:20] = False  # a pinhole: filled
    blob[0:2, 0:2] = True  # a stray island: removed
    blob[10:30, 30:36] = True  # spill beyond the box: clipped
    cands = np.stack([np.zeros((h, w), bool), blob, np.ones((h, w), bool)])
    stub = StubPredictor(cands, [0.2, 0.9, 0.5])
    boxes = torch.tensor([[10.0, 10, 30, 30], [30, 0, 40, 10]])
    masks, scores = sam_masks(None, torch.zeros(h, w, 3), boxes, [torch.zeros(0, 2), torch.zeros(0, 2)],
                              SegmentSettings(), predictor=stub)
    assert scores.tolist() == pytest.approx([0.9, 0.9])
    want = torch.zeros(h, w, dtype=torch.bool)
    want[10:30, 10:31] = True  # the box plus its 1 px margin
    assert torch.equal(masks[0], want)
    first = stub.calls[0]
    assert first["multimask_output"] is True
    # SAM's coordinates are pixel indices: the box's corner pixels, negatives at pixel centres - 0.5.
    assert first["box"].tolist() == [10.0, 10.0, 29.0, 29.0]
    assert first["point_coords"].tolist() == [[34.5, 4.5]] and first["point_labels"].tolist() == [0]


def test_clean_up_keeps_large_parts_and_real_holes():
    from comboverse_ops.decompose.segment import SegmentSettings, clean_mask

    m = torch.zeros(60, 60, dtype=torch.bool)
    m[5:55, 5:25] = True
    m[5:55, 35:55] = True  # split by an occluder into two large parts: both stay
    m[20:40, 40:50] = False  # a large hole (torus-like): stays
    out = clean_mask(m, None, SegmentSettings())
    assert torch.equal(out, m)


# ----------------------------------------------------------------------------------------------
# The node


def test_segment_with_sam_gives_crops_masks_and_a_layout(pack, sam_path, scene):
    proc, obs = scene
    (sam,) = node_class(pack, "loaders", "LoadSAM")().load(str(sam_path))
    boxes = [{"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0} for x0, y0, x1, y1 in obs.boxes.tolist()]
    image = obs.image[None].clone()
    crops, crop_masks, layout, masks = node_class(pack, "segment", "Segment")().segment(
        image=image, negative_points=True, auto_objects=3, crop_size=128, foreground_ratio=0.85, background="white",
        sam=sam, boxes=[boxes], phrases="\n".join(proc.phrases))
    assert crops.shape == (3, 128, 128, 3) and crops.dtype == torch.float32
    assert crop_masks.shape == (3, 128, 128) and masks.shape == (3, 128, 128)
    assert 0 <= float(crops.min()) and float(crops.max()) <= 1 and 0 <= float(crop_masks.min())
    assert float(crop_masks.max()) <= 1 and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(layout.boxes, obs.boxes) and layout.phrases == proc.phrases
    assert torch.equal(layout.masks, masks) and layout.image_size == (128, 128)
    for i, (x0, y0, x1, y1) in enumerate(obs.boxes.long().tolist()):
        outside = masks[i].clone()
        outside[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = 0
        assert outside.sum() == 0  # clipped to the box (1 px margin)
    assert torch.equal(image, obs.image[None])  # inputs are never changed


def test_true_masks_instead_of_sam_survive_the_round_trip_through_the_crops(pack, scene):
    from comboverse_ops.decompose.crops import RecenterSettings, paste_mask
    from comboverse_ops.decompose.segment import segment_image

    proc, obs = scene
    seg = segment_image(obs.image, None, masks=obs.masks, phrases=list(proc.phrases),
                        recenter=RecenterSettings(size=256))
    assert torch.equal(seg.layout.masks, obs.masks) and torch.equal(seg.layout.boxes, obs.boxes)
    for i in range(3):
        back = paste_mask(seg.crop_masks[i], seg.transforms[i])
        assert _iou(back, obs.masks[i]) >= 0.98
        # The object is centred and its longer side is 85% of the crop.
        ys, xs = torch.nonzero(seg.crop_masks[i] > 0.5, as_tuple=True)
        assert abs((xs.min() + xs.max() + 1) / 2 - 128) <= 2 and abs((ys.min() + ys.max() + 1) / 2 - 128) <= 2
        assert abs(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1 - 0.85 * 256) <= 4
        # The crop shows the object's own pixels where its mask is (no other object bleeding in).
        src = obs.image[obs.masks[i] > 0.5].mean(0)
        assert torch.allclose(seg.crops[i][seg.crop_masks[i] > 0.99].mean(0), src, atol=0.03)
    # The node gives the same from the same masks.
    crops, crop_masks, layout, masks = node_class(pack, "segment", "Segment")().segment(
        image=obs.image[None], negative_points=True, auto_objects=3, crop_size=256, foreground_ratio=0.85,
        background="grey", masks=obs.masks)
    assert torch.equal(masks, obs.masks) and torch.allclose(crop_masks, seg.crop_masks)
    corner = crops[:, 0, 0]
    assert torch.allclose(corner, torch.full_like(corner, 0.5))  # grey canvas


def test_automatic_mode_takes_the_most_prominent_distinct_objects_left_to_right(monkeypatch, sam_path):
    import segment_anything

    from comboverse_ops.models.sam import load_sam
    from comboverse_ops.decompose.segment import SegmentSettings, segment_image

    h = w = 64

    def rect(x0, y0, x1, y1):
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        return m

    proposals = [
        (rect(0, 0, 64, 64), 0.99),  # the whole picture: background
        (rect(40, 10, 60, 40), 0.95),  # big object on the right
        (rect(42, 12, 50, 20), 0.99),  # a part of it
        (rect(5, 30, 25, 50), 0.9),  # object on the left
        (rect(30, 50, 33, 53), 0.99),  # a speck
    ]

    class FakeGenerator:
        def __init__(self, model, **kw):
            self.kw = kw

        def generate(self, image):
            assert image.shape == (h, w, 3) and image.dtype == np.uint8
            return [{"segmentation": m, "predicted_iou": s} for m, s in proposals]

    monkeypatch.setattr(segment_anything, "SamAutomaticMaskGenerator", FakeGenerator)
    seg = segment_image(torch.rand(h, w, 3), load_sam(sam_path), settings=SegmentSettings(auto_objects=2))
    assert seg.layout.boxes.tolist() == [[5.0, 30.0, 25.0, 50.0], [40.0, 10.0, 60.0, 40.0]]
    assert len(seg.layout) == 2 and seg.crops.shape[0] == 2


# ----------------------------------------------------------------------------------------------
# Bad input


def _segment(pack, image, **kw):
    args = dict(negative_points=True, auto_objects=3, crop_size=64, foreground_ratio=0.85, background="grey")
    args.update(kw)
    return node_class(pack, "segment", "Segment")().segment(image=image, **args)


def test_bad_boxes_batches_masks_and_missing_models_are_clear_errors(pack, scene):
    _, obs = scene
    img = obs.image[None]
    with pytest.raises(ValueError, match="box 0 .* outside the 128x128 image"):
        _segment(pack, img, boxes_text="[[200, 200, 250, 250]]", masks=obs.masks)
    with pytest.raises(ValueError, match="zero or negative area"):
        _segment(pack, img, boxes=[{"x": 10, "y": 10, "width": 0, "height": 20}], masks=obs.masks[:1])
    with pytest.raises(ValueError, match="one image"):
        _segment(pack, img.repeat(2, 1, 1, 1), masks=obs.masks)
    with pytest.raises(ValueError, match="64x64 empty mask"):
        _segment(pack, img, masks=torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="mask 1 is empty.*invert"):
        _segment(pack, img, masks=torch.stack([obs.masks[0], torch.zeros(128, 128)]))
    with pytest.raises(ValueError, match="ComboVerse Load SAM"):
        _segment(pack, img, boxes_text="[[10, 10, 50, 50]]")
    with pytest.raises(ValueError, match="2 phrases for 3 objects"):
        _segment(pack, img, masks=obs.masks, phrases="a\nb")


def test_greyscale_and_rgba_images(pack, sam_path, scene):
    _, obs = scene
    (sam,) = node_class(pack, "loaders", "LoadSAM")().load(str(sam_path))
    grey = obs.image.mean(-1, keepdim=True)[None]
    crops, *_ = _segment(pack, grey, masks=obs.masks)
    assert crops.shape[-1] == 3 and torch.allclose(crops[..., 0], crops[..., 1])
    # RGBA: the alpha channel is a hint; nothing transparent ends up in a mask.
    alpha = torch.ones(128, 128)
    alpha[:, :64] = 0
    rgba = torch.cat([obs.image, alpha[..., None]], -1)[None]
    boxes = obs.boxes[(obs.boxes[:, 2] > 64)].tolist()
    crops, crop_masks, layout, masks = _segment(pack, rgba, sam=sam, boxes_text=str(boxes))
    assert masks.shape[0] == len(boxes) and float(masks[:, :, :64].sum()) == 0


# ----------------------------------------------------------------------------------------------
# Node contract (the classes, whether or not nodes/__init__.py registers them yet)

STAGE1_NODES = {"loaders": ("LoadSAM", "LoadInpaintModel"), "segment": ("Segment",),
                "inpaint": ("Inpaint", "InpaintPrepare", "InpaintFinish")}


def test_stage1_nodes_follow_the_v1_contract(pack):
    for module, names in STAGE1_NODES.items():
        for name in names:
            cls = node_class(pack, module, name)
            assert cls.CATEGORY.startswith("ComboVerse/") and len(cls.DESCRIPTION) > 40, name
            assert callable(getattr(cls, cls.FUNCTION)), name
            assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS), name
            for t in cls.RETURN_TYPES:
                assert t in {"IMAGE", "MASK", "STRING"} or t.startswith("COMBOVERSE_"), (name, t)
            inputs = cls.INPUT_TYPES()
            for section in ("required", "optional"):
                for key, spec in inputs.get(section, {}).items():
                    assert spec[1].get("tooltip"), f"{name}.{key} has no tooltip"


def test_importing_the_stage1_nodes_loads_no_model_library():
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys; sys.path.insert(0, 'tests'); from conftest import load_pack; p = load_pack(); "
            "import importlib; mods = [importlib.import_module(p.__name__ + '.nodes.' + m) "
            "for m in ('loaders', 'segment', 'inpaint')]; "
            "[getattr(m, c).INPUT_TYPES() for m in mods for c in dir(m) if hasattr(getattr(m, c), 'INPUT_TYPES')]; "
            "bad = [m for m in ('diffusers', 'transformers', 'segment_anything', 'scipy', 'comfy', 'folder_paths') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)

"""Inpaint: METHOD.md step 2 on a synthetic occlusion with a tiny SD inpainting model."""

import pytest
import torch

from tiny_models import node_class, save_tiny_sam, save_tiny_sd

import diffusers  # noqa: F401,E402  (declared dependencies: fail loudly, never skip)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


RED, BLUE = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.9])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from comboverse_ops.models.sd import load_sd_model

    path, cfg, _, _ = save_tiny_sd(tmp_path_factory.mktemp("sd2inp"), "sd2", True)
    return load_sd_model(path, expect="inpainting", config_dir=cfg, cache=None)


@pytest.fixture(scope="module")
def occlusion():
    """A red square partly behind a blue one, on white: the red one is occluded, the blue one is not."""
    from comboverse_ops.types.layout import Layout

    h = w = 80
    image = torch.ones(h, w, 3)
    back = torch.zeros(h, w, dtype=torch.bool)
    back[10:50, 10:50] = True
    front = torch.zeros(h, w, dtype=torch.bool)
    front[30:70, 35:75] = True
    image[back] = RED
    image[front] = BLUE
    boxes = torch.tensor([[10.0, 10, 50, 50], [35, 30, 75, 70]])
    layout = Layout(boxes, (h, w), ("a red box", "a blue box"), torch.stack([back & ~front, front]).float())
    return image, layout, back


SETTINGS = dict(resolution=64, steps=4)


def test_noise_outside_the_object_and_an_inpaint_mask_of_box_and_not_object(occlusion):
    from comboverse_ops.decompose.inpaint import InpaintSettings, box_raster, prepare_inpaint_windows

    image, layout, _ = occlusion
    w = prepare_inpaint_windows(image, layout, InpaintSettings(**SETTINGS))
    assert w.occluded == (True, False)
    assert w.images.shape == (2, 64, 64, 3) and w.images.dtype == torch.float32
    assert w.inpaint_masks.shape == w.object_masks.shape == (2, 64, 64)
    obj = w.object_masks[0] > 0.5
    box = box_raster(w.boxes[0], (64, 64))
    assert torch.equal(w.inpaint_masks[0] > 0.5, box & ~obj)  # exactly b AND NOT M
    assert not bool(w.inpaint_masks[1].any())  # nothing occludes the blue square: nothing to repaint
    # The object keeps its own colour (also at its edges: no blue or white bleeding in) ...
    torch.testing.assert_close(w.images[0][obj], RED.expand(int(obj.sum()), 3))
    # ... and everything else is uniform noise, not the scene: no blue occluder, no white background.
    noise = w.images[0][~obj]
    assert 0.45 < float(noise.mean()) < 0.55 and 0.26 < float(noise.std()) < 0.32
    assert float((noise - BLUE).norm(dim=-1).lt(0.05).float().mean()) < 0.01
    # The window is centred on the box, 1.25 times its side; the box maps exactly into it.
    t = w.transforms[0]
    assert t.side == pytest.approx(50.0) and (t.x0, t.y0) == pytest.approx((5.0, 5.0))
    torch.testing.assert_close(w.boxes[0], torch.tensor([6.4, 6.4, 57.6, 57.6]))


def test_inpainting_changes_only_the_inpaint_mask_and_the_same_seed_gives_the_same_result(occlusion, model):
    from comboverse_ops.decompose.inpaint import InpaintSettings, inpaint_objects
    from comboverse_ops.decompose.segment import objects_from_masks

    image, layout, _ = occlusion
    settings = InpaintSettings(**SETTINGS, seed=7)
    steps = []
    result = inpaint_objects(image, layout, model, settings, callback=lambda step, total, preview=None:
                             steps.append((step, total)))
    # One object inpainted; progress counts the sampler's real steps (PNDM adds one) up to the total.
    total = steps[-1][1]
    assert total in (4, 5) and steps == [(k, total) for k in range(1, total + 1)]
    w = result.windows
    changed = (result.completed - w.images).abs().amax(-1) > 0
    assert bool(changed[0].any()) and not bool((changed[0] & (w.inpaint_masks[0] < 0.5)).any())
    assert not bool(changed[1].any())
    assert result.crops.shape == (2, 512, 512, 3) and result.crop_masks.shape == (2, 512, 512)
    assert 0 <= float(result.crops.min()) and float(result.crops.max()) <= 1
    # Completed masks keep every visible pixel and add only repainted ones.
    visible, painted = w.object_masks > 0.5, w.inpaint_masks > 0.5
    done = result.completed_masks > 0.5
    assert bool((done | ~visible).all()) and not bool((done & ~visible & ~painted).any())
    # The unoccluded blue square passes through: exactly Segment's crop.
    seg = objects_from_masks(image, layout.masks)
    assert torch.equal(result.crops[1], seg.crops[1]) and torch.equal(result.crop_masks[1], seg.crop_masks[1])
    # Same seed, same result; another seed, another completion.
    again = inpaint_objects(image, layout, model, settings)
    assert torch.equal(again.completed, result.completed) and torch.equal(again.crops, result.crops)
    other = inpaint_objects(image, layout, model, InpaintSettings(**SETTINGS, seed=8))
    assert not torch.equal(other.completed[0], result.completed[0])


def test_objects_nothing_hides_keep_segments_crops_as_given(occlusion):
    """Inpaint neither cuts out nor frames again what it does not complete: the crops it is given
    come back as they are (here marked, to tell them from any crop made anew); the model is not
    needed when nothing is occluded."""
    from comboverse_ops.decompose.crops import RecenterSettings
    from comboverse_ops.decompose.inpaint import InpaintSettings, inpaint_objects
    from comboverse_ops.decompose.segment import objects_from_masks
    from comboverse_ops.types.layout import Layout

    image, layout, _ = occlusion
    alone = Layout(layout.boxes[1:], layout.image_size, layout.phrases[1:], layout.masks[1:])  # the blue square
    recenter = RecenterSettings(size=96)
    seg = objects_from_masks(image, alone.masks, recenter=recenter)
    marked = seg.crops.clone()
    marked[:, :4, :4] = torch.tensor([0.0, 1.0, 0.0])
    result = inpaint_objects(image, alone, None, InpaintSettings(**SETTINGS), recenter,
                             crops=(marked, seg.crop_masks))
    assert result.windows.occluded == (False,)
    assert torch.equal(result.crops, marked) and torch.equal(result.crop_masks, seg.crop_masks)
    assert torch.equal(result.completed_masks, result.windows.object_masks)
    plain = inpaint_objects(image, alone, None, InpaintSettings(**SETTINGS), recenter)  # no crops: framed as Segment
    assert torch.equal(plain.crops, seg.crops) and torch.equal(plain.crop_masks, seg.crop_masks)
    with pytest.raises(ValueError, match=r"expected Segment.s 1 crops \[1, 64, 64, 3\].*got \(1, 96, 96, 3\)"):
        inpaint_objects(image, alone, None, InpaintSettings(**SETTINGS), RecenterSettings(size=64),
                        crops=(marked, seg.crop_masks))


def test_a_perfect_inpainter_gives_back_the_whole_object(pack, occlusion):
    # Prepare -> any inpainting -> Finish. Here the "inpainter" knows the truth: the hidden part of the red
    # square is red, the rest of the box is background. Finish must cut out the whole square.
    from comboverse_ops.decompose.crops import crop_window_bchw

    image, layout, amodal = occlusion
    images, inpaint_masks, object_masks, prompts = node_class(pack, "inpaint", "InpaintPrepare")().prepare(
        image=image[None], layout=layout, seed=0, resolution=64, prompt="a complete 3D model")
    assert prompts.splitlines() == ["a complete 3D model of a red box", "a complete 3D model of a blue box"]
    from comboverse_ops.decompose.inpaint import InpaintSettings, prepare_inpaint_windows

    t = prepare_inpaint_windows(image, layout, InpaintSettings(resolution=64)).transforms[0]
    truth = crop_window_bchw(amodal[None, None].float(), t)[0, 0] > 0.5
    painted = images.clone()
    hole = inpaint_masks[0] > 0.5
    painted[0][hole] = torch.where(truth[hole][:, None], RED, torch.tensor([0.95, 0.95, 0.9]))
    crops, crop_masks = node_class(pack, "inpaint", "InpaintFinish")().finish(
        images=painted, object_masks=object_masks, inpaint_masks=inpaint_masks, resegment="background_distance",
        crop_size=128, foreground_ratio=0.85, background="grey")
    assert crops.shape == (2, 128, 128, 3) and crop_masks.shape == (2, 128, 128)
    # The completed red square fills its crop as a square: both sides 85% of the canvas.
    ys, xs = torch.nonzero(crop_masks[0] > 0.5, as_tuple=True)
    assert abs(int(xs.max() - xs.min()) + 1 - 0.85 * 128) <= 2 and abs(int(ys.max() - ys.min()) + 1 - 0.85 * 128) <= 2
    assert float((crop_masks[0] > 0.5).float().mean()) == pytest.approx(0.85 ** 2, abs=0.03)
    assert torch.allclose(crops[0][crop_masks[0] > 0.99].mean(0), RED, atol=0.02)


def test_background_distance_recovers_a_round_object_from_a_painted_background():
    # A red disc partly behind a blue square; a perfect inpainter paints the hidden part red and the rest of the
    # box in a background colour. The re-segmented disc is the whole disc, not its box.
    from comboverse_ops.decompose.crops import crop_window_bchw
    from comboverse_ops.decompose.inpaint import InpaintSettings, finish_objects, prepare_inpaint_windows
    from comboverse_ops.types.layout import Layout

    h = w = 96
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    disc = (xs - 40) ** 2 + (ys - 40) ** 2 <= 25 ** 2
    square = torch.zeros(h, w, dtype=torch.bool)
    square[45:85, 45:85] = True
    image = torch.ones(h, w, 3)
    image[disc], image[square] = RED, BLUE
    layout = Layout(torch.tensor([[15.0, 15, 65, 65], [45, 45, 85, 85]]), (h, w), masks=torch.stack(
        [disc & ~square, square]).float())
    settings = InpaintSettings(resolution=64, resegment="background_distance")
    win = prepare_inpaint_windows(image, layout, settings)
    assert win.occluded == (True, False)
    truth = crop_window_bchw(disc[None, None].float(), win.transforms[0])[0, 0] > 0.5
    painted = win.images.clone()
    hole = win.inpaint_masks[0] > 0.5
    painted[0][hole] = torch.where(truth[hole][:, None], RED, torch.tensor([0.6, 0.6, 0.62]))
    _, _, masks = finish_objects(painted, win.object_masks, win.inpaint_masks, win.boxes, settings)
    got = masks[0] > 0.5
    assert float((got & truth).sum()) / float((got | truth).sum()) >= 0.97


def test_the_inpaint_node_with_sam_resegmentation(pack, occlusion, model, tmp_path):
    from comboverse_ops.models.sam import load_sam

    image, layout, _ = occlusion
    sam = load_sam(save_tiny_sam(tmp_path / "sam.pth"), cache=None)
    out = node_class(pack, "inpaint", "Inpaint")().inpaint(
        inpaint_model=model, image=image[None], layout=layout, seed=0, steps=2, guidance=7.5,
        prompt="a complete 3D model", use_phrases=True, resolution=64, resegment="sam", crop_size=96,
        foreground_ratio=0.85, background="white", sam=sam)
    crops, crop_masks, inputs, inpaint_masks, completed = out
    assert crops.shape == (2, 96, 96, 3) and crop_masks.shape == (2, 96, 96)
    assert inputs.shape == completed.shape == (2, 64, 64, 3) and inpaint_masks.shape == (2, 64, 64)
    assert all(t.dtype == torch.float32 for t in out)
    assert 0 <= float(crops.min()) and float(crops.max()) <= 1


def test_bad_inputs_are_clear_errors(occlusion, model, tmp_path):
    from comboverse_ops.decompose.inpaint import InpaintSettings, inpaint_objects, prepare_inpaint_windows
    from comboverse_ops.types.layout import Layout
    from comboverse_ops.models.sd import load_sd_model

    image, layout, _ = occlusion
    with pytest.raises(ValueError, match="no object masks.*ComboVerse Segment"):
        prepare_inpaint_windows(image, Layout(layout.boxes, layout.image_size), InpaintSettings(**SETTINGS))
    with pytest.raises(ValueError, match="80x80 image but the image is 40x40"):
        prepare_inpaint_windows(image[:40, :40], layout, InpaintSettings(**SETTINGS))
    with pytest.raises(ValueError, match="resolution: expected a multiple of 8"):
        InpaintSettings(resolution=100)
    with pytest.raises(ValueError, match="needs a SAM model"):
        inpaint_objects(image, layout, model, InpaintSettings(**SETTINGS, resegment="sam"))
    path, cfg, _, _ = save_tiny_sd(tmp_path, "sd1", inpainting=False)
    text2img = load_sd_model(path, config_dir=cfg, cache=None)
    with pytest.raises(ValueError, match="9-channel inpainting checkpoint"):
        inpaint_objects(image, layout, text2img, InpaintSettings(**SETTINGS))


def test_a_procedural_scene_through_segment_and_inpaint(pack, model):
    from comboverse_ops.synthetic.procedural import ProceduralSettings, make_procedural_scene

    # Seed 5: four objects, one partly hidden under the object on top of it, two standing apart.
    proc = make_procedural_scene(5, ProceduralSettings(min_objects=3, max_objects=4, image_size=96))
    obs = proc.observe()
    crops, crop_masks, layout, masks = node_class(pack, "segment", "Segment")().segment(
        image=obs.image[None], negative_points=True, auto_objects=3, crop_size=64, foreground_ratio=0.85,
        background="grey", masks=obs.masks, phrases="\n".join(proc.phrases))
    out = node_class(pack, "inpaint", "Inpaint")().inpaint(
        inpaint_model=model, image=obs.image[None], layout=layout, seed=1, steps=2, guidance=7.5,
        prompt="a complete 3D model", use_phrases=True, resolution=64, resegment="auto", crop_size=64,
        foreground_ratio=0.85, background="grey")
    inpainted = [bool(m.any()) for m in out[3]]
    hidden = (obs.visible_fraction < 0.999).tolist()
    assert inpainted == hidden  # exactly the partly hidden object is inpainted
    for i, done in enumerate(inpainted):
        if not done:
            assert torch.equal(out[0][i], crops[i]) and torch.equal(out[1][i], crop_masks[i])


def test_no_hidden_object_is_left_out():
    # The occlusion test is conservative: when the outlines do not tell who is in front, both objects are
    # completed (as the paper completes every object); a hidden object is never passed through.
    from comboverse_ops.decompose.inpaint import InpaintSettings, occluded_objects
    from comboverse_ops.synthetic.procedural import ProceduralSettings, make_procedural_scene

    passed_through = 0
    for seed in range(6):
        proc = make_procedural_scene(seed, ProceduralSettings(min_objects=3, max_objects=4, image_size=96))
        obs = proc.observe()
        occluded = occluded_objects(obs.masks, obs.boxes, InpaintSettings())
        for occ, visible in zip(occluded, obs.visible_fraction.tolist()):
            assert occ or visible > 0.999, (seed, occluded, obs.visible_fraction)
            passed_through += not occ
    assert passed_through >= 5


def test_the_stage1_benchmark_runs_tiny_on_the_cpu(capsys):
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("bench_stage1", ROOT / "benchmarks" / "stage1.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tiny", "--repeats", "1", "--steps", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "SAM custom image embedding" in out and "SD-2 inpainting" in out

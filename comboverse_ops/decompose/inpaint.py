"""Stage 1, step 2 (METHOD.md): complete occluded objects with occlusion-aware SD inpainting.

Per object ``i`` with visible mask ``M_i`` and box ``b_i``:

1. The noisy image ``I_i = O_i + noise * (1 - M_i)``: the object's own pixels where ``M_i`` is
   set, uniform random RGB noise everywhere else (other objects, background, outside the
   image), so the inpainter has no border or colour to continue.
2. The inpaint mask ``m_i = b_i AND NOT M_i``: only what lies inside the box and outside the
   object can be repainted.
3. Stable Diffusion inpainting with the prompt "a complete 3D model" (plus "of <phrase>"),
   30 steps, guidance 7.5, a seeded generator. Only pixels under ``m_i`` change.
4. The completed object is re-segmented (SAM with its box when a SAM model is given, otherwise
   by colour distance from the background SD painted, see :func:`resegment_completed`) and
   re-centred for image-to-3D (:mod:`.crops`).

Objects that nothing occludes (no other object's visible pixels within ``occlusion_margin``
pixels of the object inside its box, and not cut by the image border) are not inpainted, cut out
or re-centred again: their crop is exactly Segment's crop (passed through when given).

All of this happens in a square window per object, centred on its box, ``context`` times its
longer side, resampled to the model's ``resolution``; the relations above hold exactly in that
window (the noise is drawn at window resolution, masks are binary there). The window images
and masks are ordinary ``IMAGE`` / ``MASK`` batches, so any other inpainting workflow can take
step 3's place (:func:`prepare_inpaint_windows` before, :func:`finish_objects` after).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .crops import CropTransform, RecenterSettings, crop_window_bchw, recenter_object, square_window
from ..determinism import serial_bilinear
from ..types.layout import Layout
from .segment import SegmentSettings, clean_mask, source_rgb
from ..settings import setting, settings_class

__all__ = ["InpaintSettings", "InpaintWindows", "InpaintResult", "occluded_objects", "box_raster",
           "prepare_inpaint_windows", "object_prompt", "complete_with_sd", "resegment_completed", "finish_objects",
           "inpaint_objects"]

log = logging.getLogger(__name__)

RESEGMENT_MODES = ("auto", "sam", "background_distance")


@settings_class
@dataclass(frozen=True)
class InpaintSettings:
    """How occluded objects are completed. Defaults are METHOD.md's where it states them."""

    prompt: str = setting("a complete 3D model", "Prompt for every object (paper: 'a complete 3D model').",
                          source="paper")
    # METHOD.md: optionally with the object's phrase
    use_phrases: bool = setting(True, "Append 'of <phrase>' with the object's phrase from Segment.", source="paper")
    negative_prompt: str = setting("", "Optional negative prompt (paper: none).", source="paper")
    steps: int = setting(30, "Sampling steps (paper: 30).", lo=1, hi=500, source="paper")
    guidance_scale: float = setting(7.5, "Classifier-free guidance scale (paper: 7.5).", lo=0.0, hi=50.0, step=0.1,
                                    source="paper")
    seed: int = setting(0, "Seed of the noise and of the sampler; object i uses seed + i. Same seed, same result.",
                        lo=0, hi=2**31 - 1, source="choice", flag=False)
    # the checkpoint's own sampler (PNDM for SD 1.5/2 inpainting); open in the paper
    scheduler: str = setting("model", "Sampler: model = the checkpoint's own.", source="upstream")
    resolution: int = setting(512, "Side of each object's inpainting window (SD 1.5/2 inpainting: 512).", lo=64,
                              hi=2048, step=8, source="upstream")
    context: float = setting(1.25, "Window side / longer box side: some surroundings for the inpainter.", lo=1.0,
                             hi=4.0, source="choice")
    occlusion_margin: int = setting(2, "Pixels: another object's mask this close to an object inside its box "
                                       "occludes it.", lo=0, source="choice")
    inpaint_truncated: bool = setting(True, "Objects cut by the image border are completed too.", source="choice")
    resegment: str = setting("auto", "How the completed object is cut out again: 'sam' (SAM with its box on the "
                                     "completed image), 'background_distance' (repainted pixels unlike the painted "
                                     "background), 'auto' (SAM when connected).", choices=RESEGMENT_MODES,
                             source="choice")
    background_threshold: float = setting(0.15, "RGB distance from SD's background above which a repainted pixel "
                                                 "is object.", lo=0.0, hi=2.0, source="choice")

    def __post_init__(self):
        if self.resolution % 8:
            raise ValueError(f"resolution: expected a multiple of 8 in 64..2048 pixels, got {self.resolution}")


@dataclass(frozen=True)
class InpaintWindows:
    """The inpainter's inputs: one square window per object, ``R = resolution``.

    Attributes:
        images: ``[N, R, R, 3]`` float in [0, 1], the noisy images ``I_i`` (object pixels where
            ``object_masks``, uniform noise elsewhere).
        inpaint_masks: ``[N, R, R]`` float in {0, 1}, ``box AND NOT object`` for occluded
            objects, all zero for objects that pass through.
        object_masks: ``[N, R, R]`` float in {0, 1}, the visible object ``M_i``.
        boxes: ``[N, 4]`` float, each object's box in its window's pixels.
        transforms: window <-> source pixels per object.
        occluded: per object, whether it is inpainted.
    """

    images: torch.Tensor
    inpaint_masks: torch.Tensor
    object_masks: torch.Tensor
    boxes: torch.Tensor
    transforms: tuple[CropTransform, ...]
    occluded: tuple[bool, ...]


@dataclass(frozen=True)
class InpaintResult:
    """Completed objects.

    Attributes:
        crops: ``[N, S, S, 3]`` float RGB in [0, 1], re-centred for image-to-3D.
        crop_masks: ``[N, S, S]`` float in [0, 1].
        windows: the inpainter's inputs (:class:`InpaintWindows`).
        completed: ``[N, R, R, 3]`` the windows after inpainting (equal to ``windows.images``
            outside the inpaint masks).
        completed_masks: ``[N, R, R]`` float in {0, 1}, the re-segmented objects.
    """

    crops: torch.Tensor
    crop_masks: torch.Tensor
    windows: InpaintWindows
    completed: torch.Tensor
    completed_masks: torch.Tensor


# ----------------------------------------------------------------------------------------------
# Preparing the inpainter's input


def box_raster(box, size: tuple[int, int], device=None) -> torch.Tensor:
    """``[H, W]`` bool: pixels whose centre lies inside ``box = (x0, y0, x1, y1)`` (continuous pixels)."""
    h, w = size
    x0, y0, x1, y1 = (float(v) for v in box)
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    return ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    return F.max_pool2d(mask[None, None].float(), k, stride=1, padding=radius)[0, 0] > 0.5


def _hull_mask(mask: torch.Tensor, inset: float = 0.5) -> torch.Tensor:
    """``[H, W]`` bool: pixels at least ``inset`` pixels inside the convex hull of ``mask``'s pixel centres.

    The inset keeps a slanted edge's staircase from counting as inside.
    """
    import numpy as np
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = torch.nonzero(mask, as_tuple=True)
    out = torch.zeros_like(mask)
    if ys.numel() < 3:
        return out
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    try:
        eq = ConvexHull(np.stack([xs.numpy(), ys.numpy()], 1).astype(np.float64)).equations
    except QhullError:  # all pixels on one line: nothing lies inside
        return out
    gy, gx = np.mgrid[y0:y1, x0:x1]
    pts = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)
    inside = (pts @ eq[:, :2].T + eq[:, 2] <= -inset).all(1).reshape(gy.shape)
    out[y0:y1, x0:x1] = torch.from_numpy(inside)
    return out


def occluded_objects(masks: torch.Tensor, boxes: torch.Tensor, settings: InpaintSettings = InpaintSettings()
                     ) -> list[bool]:
    """Which objects have something to complete.

    Two objects touch when their visible pixels come within ``settings.occlusion_margin`` pixels
    of each other inside one's box. Of two touching objects, the hidden one is the one the
    other bites into: an occluder's outline cuts a concave notch into what it hides, so clearly
    more (at least twice as many, and 3 or more) of the occluder's pixels lie inside the hidden
    object's convex hull than the other way round. When the outlines do not tell (a straight
    cut, concave shapes), both count as occluded, which is what the paper does for every
    object. With ``inpaint_truncated``, an object whose mask touches the image border (the
    picture cuts it off) is completed too.

    Args:
        masks: ``[N, H, W]`` visible masks, > 0.5 = object.
        boxes: ``[N, 4]`` source-pixel boxes.
    """
    binary = (masks > 0.5).cpu()
    n, h, w = binary.shape
    near = [_dilate(binary[i], settings.occlusion_margin) & box_raster(boxes[i], (h, w)) for i in range(n)]
    hulls = [None] * n
    occluded = [False] * n
    for i in range(n):
        for j in range(i + 1, n):
            if not bool((near[i] & binary[j]).any() or (near[j] & binary[i]).any()):
                continue
            for k in (i, j):
                if hulls[k] is None:
                    hulls[k] = _hull_mask(binary[k])
            bites_i = int((hulls[i] & binary[j]).sum())  # j's pixels inside i's outline
            bites_j = int((hulls[j] & binary[i]).sum())
            if bites_i >= max(3, 2 * bites_j):
                occluded[i] = True
            elif bites_j >= max(3, 2 * bites_i):
                occluded[j] = True
            else:
                occluded[i] = occluded[j] = True
    if settings.inpaint_truncated:
        for i in range(n):
            m = binary[i]
            occluded[i] |= bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
    return occluded


def prepare_inpaint_windows(image_hwc: torch.Tensor, layout: Layout,
                            settings: InpaintSettings = InpaintSettings()) -> InpaintWindows:
    """The noisy images and inpaint masks of METHOD.md step 2, one window per object.

    Args:
        image_hwc: ``[H, W, C]`` float in [0, 1] (C = 1..4, :func:`~comboverse_ops.decompose.segment.source_rgb`).
        layout: boxes and visible masks of the objects (Segment's layout).
    Returns:
        :class:`InpaintWindows` on the CPU, float32. Noise of object ``i`` is drawn from a
        generator seeded with ``settings.seed + i``.
    """
    _require_masks(layout)
    rgb, _ = source_rgb(image_hwc.cpu())
    return _windows(rgb, layout, settings)


def _require_masks(layout: Layout) -> None:
    if layout.masks is None:
        raise ValueError("Inpaint: the layout has no object masks; connect the layout output of ComboVerse Segment")


def _windows(rgb: torch.Tensor, layout: Layout, settings: InpaintSettings) -> InpaintWindows:
    """:func:`prepare_inpaint_windows` of the picture's ``[H, W, 3]`` float32 RGB on the CPU, converted
    once by the caller (:func:`~comboverse_ops.decompose.segment.source_rgb`)."""
    size = tuple(rgb.shape[:2])
    if tuple(layout.image_size) != size:
        raise ValueError(f"Inpaint: the layout is for a {layout.image_size[0]}x{layout.image_size[1]} image but the "
                         f"image is {size[0]}x{size[1]}; give the image that was segmented")
    masks = layout.masks.cpu() > 0.5
    occluded = occluded_objects(masks, layout.boxes.cpu(), settings)
    r = settings.resolution
    images, inpaint_masks, object_masks, boxes, transforms = [], [], [], [], []
    for i in range(len(layout)):
        t = square_window(layout.boxes[i].tolist(), settings.context, size, r)
        m = masks[i].float()
        # Premultiplied resampling: edge pixels keep the object's colour, not its neighbours'.
        win = crop_window_bchw(torch.cat([rgb.permute(2, 0, 1) * m, m[None]])[None], t)[0]
        obj_mask = win[3] >= 0.5
        obj_rgb = (win[:3] / win[3:].clamp_min(1e-6)).clamp(0, 1)
        g = torch.Generator().manual_seed(int(settings.seed) + i)
        noise = torch.rand(3, r, r, generator=g)
        noisy = torch.where(obj_mask[None], obj_rgb, noise)
        box_w = t.boxes_to_crop(layout.boxes[i][None].float())[0]
        inpaint = box_raster(box_w, (r, r)) & ~obj_mask if occluded[i] else torch.zeros(r, r, dtype=torch.bool)
        images.append(noisy.permute(1, 2, 0))
        inpaint_masks.append(inpaint.float())
        object_masks.append(obj_mask.float())
        boxes.append(box_w)
        transforms.append(t)
    return InpaintWindows(torch.stack(images), torch.stack(inpaint_masks), torch.stack(object_masks),
                          torch.stack(boxes), tuple(transforms), tuple(occluded))


def object_prompt(settings: InpaintSettings, phrase: str) -> str:
    """``"a complete 3D model of a teddy bear"`` (or just the prompt without a phrase)."""
    phrase = phrase.strip()
    return f"{settings.prompt} of {phrase}" if settings.use_phrases and phrase else settings.prompt


# ----------------------------------------------------------------------------------------------
# Inpainting


def complete_with_sd(model, windows: InpaintWindows, prompts, settings: InpaintSettings = InpaintSettings(),
                     callback=None) -> torch.Tensor:
    """Run SD inpainting on the occluded objects' windows; the others come back unchanged.

    Args:
        model: :class:`~comboverse_ops.models.sd.SDModel` with a 9-channel UNet.
        windows: from :func:`prepare_inpaint_windows`.
        prompts: one prompt per object (:func:`object_prompt`).
        callback: ``callback(step, total, preview=None)`` over all objects' steps.
    Returns:
        ``[N, R, R, 3]`` float in [0, 1] on the CPU, equal to ``windows.images`` outside
        ``windows.inpaint_masks``. Object ``i`` uses a generator seeded ``settings.seed + i``.
    """
    from diffusers import StableDiffusionInpaintPipeline

    from ..models.sd import make_scheduler

    if not model.info.inpainting:
        raise ValueError(f"Inpaint: the model is {model.info.describe()}; load a 9-channel inpainting checkpoint "
                         "with 'ComboVerse Load Inpaint Model'")
    todo = [i for i, occ in enumerate(windows.occluded) if occ and bool(windows.inpaint_masks[i].any())]
    out = windows.images.clone()
    if not todo:
        return out
    pipe = StableDiffusionInpaintPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                          unet=model.unet, scheduler=make_scheduler(settings.scheduler,
                                                                                     model.scheduler_config),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    r = settings.resolution
    for k, i in enumerate(todo):
        def on_step(pipe_, step, timestep, kwargs, _k=k):
            if callback is not None:
                n = int(getattr(pipe_, "num_timesteps", settings.steps))  # PNDM runs one step more than asked
                callback(_k * n + step + 1, n * len(todo))
            return kwargs

        # NCHW-contiguous: a permuted (channels-last) image makes the VAE's group_norm add
        # per-thread partial sums (determinism.py)
        image = windows.images[i].permute(2, 0, 1)[None].contiguous()
        mask = windows.inpaint_masks[i][None, None]
        with torch.inference_mode(), serial_bilinear():
            result = pipe(prompt=prompts[i], negative_prompt=settings.negative_prompt or None, image=image,
                          mask_image=mask, height=r, width=r, strength=1.0, num_inference_steps=settings.steps,
                          guidance_scale=settings.guidance_scale,
                          generator=torch.Generator("cpu").manual_seed(int(settings.seed) + i), output_type="pt",
                          callback_on_step_end=on_step).images
        painted = result[0].float().cpu().clamp(0, 1).permute(1, 2, 0)
        if not bool(torch.isfinite(painted).all()):
            raise ValueError(f"Inpaint: the model produced NaN/inf for object {i} (fp16 overflow?); try another "
                             "checkpoint or run in float32")
        keep = windows.inpaint_masks[i][..., None] > 0.5
        out[i] = torch.where(keep, painted, windows.images[i])
    return out


# ----------------------------------------------------------------------------------------------
# Re-segmentation and re-centring


def _connected_to(mask: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """The components of bool ``mask`` that touch bool ``seed``."""
    import numpy as np
    from scipy import ndimage

    labels, count = ndimage.label(mask.cpu().numpy(), structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return mask
    keep = np.unique(labels[seed.cpu().numpy() & (labels > 0)])
    return torch.from_numpy(np.isin(labels, keep[keep > 0])).to(mask.device)


def resegment_completed(completed: torch.Tensor, object_mask: torch.Tensor, inpaint_mask: torch.Tensor,
                        box: torch.Tensor, settings: InpaintSettings = InpaintSettings(), sam=None,
                        segment_settings: SegmentSettings = SegmentSettings()) -> torch.Tensor:
    """The completed object's mask in its window.

    The visible pixels always belong to the object, nothing outside the inpaint mask is added.
    Within the inpaint mask, the new pixels are:

    - ``"sam"``: SAM's best mask for the object's box on the completed image;
    - ``"background_distance"``: pixels whose colour is farther than ``background_threshold``
      (RGB Euclidean) from the background SD painted, estimated as the median colour of the
      repainted pixels along the box border; when that colour is the object's own (median of
      its visible pixels), the object reaches its box border and all repainted pixels count;

    keeping only parts connected to the visible object, then filling small holes.

    Args:
        completed: ``[R, R, 3]`` float in [0, 1].
        object_mask, inpaint_mask: ``[R, R]`` > 0.5 = set.
        box: ``[4]`` the object's box in window pixels.
        sam: :class:`~comboverse_ops.models.sam.LoadedSam` for ``"sam"`` / ``"auto"``.
    Returns:
        ``[R, R]`` bool.
    """
    visible, paint = object_mask > 0.5, inpaint_mask > 0.5
    if not bool(paint.any()):
        return visible.clone()
    mode = settings.resegment
    if mode == "auto":
        mode = "sam" if sam is not None else "background_distance"
    if mode == "sam":
        if sam is None:
            raise ValueError("Inpaint: resegment='sam' needs a SAM model; connect 'ComboVerse Load SAM' or choose "
                             "'background_distance'")
        from .segment import sam_masks

        masks, _ = sam_masks(sam, completed, box[None], [torch.zeros(0, 2)], segment_settings)
        new = masks[0] & paint
    else:
        r = completed.shape[0]
        inside = box_raster(box, (r, r))
        k = max(2, round(0.03 * r))
        ring = inside & ~(-F.max_pool2d(-inside[None, None].float(), 2 * k + 1, stride=1, padding=k)[0, 0] > 0.5)
        sample = paint & ring
        if int(sample.sum()) < 8:
            sample = paint
        bg = completed[sample].median(dim=0).values
        obj = completed[visible].median(dim=0).values if bool(visible.any()) else None
        if obj is not None and float((bg - obj).norm()) <= settings.background_threshold:
            new = paint  # even the box border was painted as object: it fills its box there
        else:
            new = paint & ((completed - bg).norm(dim=-1) > settings.background_threshold)
    full = _connected_to(visible | new, visible)
    return clean_mask(full, None, SegmentSettings(min_island_fraction=0.0,
                                                  max_hole_fraction=segment_settings.max_hole_fraction)) | visible


def finish_objects(completed: torch.Tensor, object_masks: torch.Tensor, inpaint_masks: torch.Tensor,
                   boxes: torch.Tensor, settings: InpaintSettings = InpaintSettings(),
                   recenter: RecenterSettings = RecenterSettings(), sam=None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-segment inpainted windows (anyone's inpainting) and re-centre the objects.

    Args:
        completed: ``[N, R, R, 3]`` float in [0, 1], the inpainted windows.
        object_masks, inpaint_masks: ``[N, R, R]`` (from :func:`prepare_inpaint_windows`).
        boxes: ``[N, 4]`` the objects' boxes in window pixels.
    Returns:
        ``(crops [N, S, S, 3], crop_masks [N, S, S], completed_masks [N, R, R])``, float32 on the CPU.
    """
    n = completed.shape[0]
    if object_masks.shape[0] != n or inpaint_masks.shape[0] != n or boxes.shape[0] != n:
        raise ValueError(f"Inpaint: {n} inpainted images but {object_masks.shape[0]} object masks, "
                         f"{inpaint_masks.shape[0]} inpaint masks and {boxes.shape[0]} boxes; give one of each per "
                         "object, in the same order")
    if tuple(completed.shape[1:3]) != tuple(object_masks.shape[1:]):
        raise ValueError(f"Inpaint: inpainted images are {tuple(completed.shape[1:3])} but the masks "
                         f"{tuple(object_masks.shape[1:])}; the inpainting must keep the window size")
    done = [_finish_object(completed[i], object_masks[i], inpaint_masks[i], boxes[i], settings, recenter, sam,
                           what=f"object {i}") for i in range(n)]
    return tuple(torch.stack(part) for part in zip(*done))


def _finish_object(completed, object_mask, inpaint_mask, box, settings: InpaintSettings, recenter: RecenterSettings,
                   sam, *, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One object of :func:`finish_objects`: ``(crop [S, S, 3], crop_mask [S, S], completed_mask [R, R])``."""
    mask = resegment_completed(completed.float().cpu(), object_mask.cpu(), inpaint_mask.cpu(), box.cpu(), settings,
                               sam)
    r = recenter_object(completed.float().cpu(), mask.float(), recenter, what=what)
    return r.image, r.mask, mask.float()


def _segment_crops(crops, n: int, recenter: RecenterSettings) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(crops, crop_masks)`` checked against ``n`` objects and the crop size, float32 on the CPU."""
    if crops is None:
        return None
    images, masks = crops
    s = recenter.size
    if tuple(images.shape) != (n, s, s, 3) or tuple(masks.shape) != (n, s, s):
        raise ValueError(f"Inpaint crops: expected Segment's {n} crops [{n}, {s}, {s}, 3] and crop masks "
                         f"[{n}, {s}, {s}] (the crop size of the recenter settings), got {tuple(images.shape)} and "
                         f"{tuple(masks.shape)}; give Segment's crops made with the same recenter settings, or none")
    return images.detach().float().cpu(), masks.detach().float().cpu()


def inpaint_objects(image_hwc: torch.Tensor, layout: Layout, model, settings: InpaintSettings = InpaintSettings(),
                    recenter: RecenterSettings = RecenterSettings(), sam=None, callback=None, *,
                    crops: tuple[torch.Tensor, torch.Tensor] | None = None) -> InpaintResult:
    """Complete every occluded object of ``layout`` and re-centre it (METHOD.md step 2).

    Args:
        image_hwc: ``[H, W, C]`` float in [0, 1], the segmented image.
        layout: Segment's layout (boxes, phrases, visible masks).
        model: :class:`~comboverse_ops.models.sd.SDModel` (inpainting); not used when nothing is
            occluded.
        sam: optional :class:`~comboverse_ops.models.sam.LoadedSam` for re-segmentation.
        callback: ``callback(step, total, preview=None)``.
        crops: Segment's ``(crops [N, S, S, 3], crop_masks [N, S, S])`` made with ``recenter``:
            objects nothing occludes keep them as they are. Without them, those objects are
            framed from the picture as Segment frames them (the same crops).
    Returns:
        :class:`InpaintResult`; objects that nothing occludes get exactly Segment's crop, and
        their window and mask as prepared.
    """
    _require_masks(layout)
    segment_crops = _segment_crops(crops, len(layout), recenter)
    rgb, alpha = source_rgb(image_hwc.cpu())  # once: for the windows and for the untouched objects' crops
    windows = _windows(rgb, layout, settings)
    prompts = [object_prompt(settings, p) for p in layout.phrases]
    completed = complete_with_sd(model, windows, prompts, settings, callback) if any(windows.occluded) \
        else windows.images.clone()
    out_crops, out_crop_masks, masks = [], [], []
    for i, occ in enumerate(windows.occluded):
        if occ:
            crop, crop_mask, mask = _finish_object(completed[i], windows.object_masks[i], windows.inpaint_masks[i],
                                                   windows.boxes[i], settings, recenter, sam, what=f"object {i}")
        elif segment_crops is not None:  # untouched: Segment's crop passes through
            crop, crop_mask, mask = segment_crops[0][i], segment_crops[1][i], windows.object_masks[i]
        else:  # untouched: framed from the picture once, as Segment framed it
            coverage = layout.masks[i].cpu().float() * (alpha if alpha is not None else 1.0)
            r = recenter_object(rgb, coverage, recenter, what=f"object {i}")
            crop, crop_mask, mask = r.image, r.mask, windows.object_masks[i]
        out_crops.append(crop)
        out_crop_masks.append(crop_mask)
        masks.append(mask)
    return InpaintResult(torch.stack(out_crops), torch.stack(out_crop_masks), windows, completed, torch.stack(masks))

"""Stage 1, step 1 (METHOD.md): decompose the image into objects with box-prompted SAM.

Per object ``i`` SAM gets the object's box and, by default, negative points at the centres of
the *other* objects' boxes (the known-good refinement of a later re-implementation), asks for
SAM's three candidate masks and keeps the best-scoring one, then cleans it (stray islands
removed, small holes filled, clipped to the box). Without boxes, points prompt one object each;
with neither, SAM's automatic mask generator proposes the most prominent objects. Masks may
also come from anywhere else, in which case SAM is not needed.

Each object is then cut out and re-centred on a square canvas for the image-to-3D model
(:mod:`.crops`), and a :class:`~comboverse_ops.types.layout.Layout` records boxes, phrases and
visible masks in source pixels for the pose initialisation.

Prompt coordinates: this pack's pixel coordinates are continuous (pixel ``u`` spans
``[u, u + 1)``, :mod:`.layout`); SAM's are pixel indices (it adds 0.5 itself). Points are passed
to SAM as ``xy - 0.5`` and boxes as ``(x0, y0, x1 - 1, y1 - 1)``, i.e. the corner pixels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch

from .crops import CropTransform, RecenterSettings, recenter_object
from ..types.layout import Layout, boxes_from_masks
from ..types.images import check_image_hwc
from ..settings import setting, settings_class

__all__ = ["SegmentSettings", "Segmentation", "source_rgb", "parse_phrases", "assign_points", "object_prompts",
           "clean_mask", "sam_masks", "rank_proposals", "propose_boxes", "objects_from_masks", "segment_image"]

log = logging.getLogger(__name__)


@settings_class
@dataclass(frozen=True)
class SegmentSettings:
    """How objects are segmented. Defaults follow METHOD.md step 1 where it says anything."""

    # METHOD.md: a known-good refinement
    negative_points: bool = setting(True, "Tell SAM that the other objects' box centres are not this object (helps "
                                          "with touching objects).", source="paper")
    multimask: bool = setting(True, "Ask SAM for its 3 candidates and keep the best-scoring one.", source="upstream")
    clip_to_box: bool = setting(True, "Nothing of an object lies outside its box (the box was drawn around it).",
                                source="choice")
    box_margin: float = setting(0.02, "Fraction of the box size still allowed outside the box when clipping.",
                                lo=0.0, hi=1.0, source="choice")
    min_island_fraction: float = setting(0.05, "Mask parts smaller than this fraction of the largest part are "
                                               "dropped.", lo=0.0, hi=1.0, source="choice")
    max_hole_fraction: float = setting(0.02, "Holes smaller than this fraction of the object's area are filled.",
                                       lo=0.0, hi=1.0, source="choice")
    auto_objects: int = setting(3, "Automatic mode only (no boxes, points or masks): how many of the most "
                                   "prominent objects to take, numbered left to right.", lo=1, hi=16,
                                source="choice")
    auto_points_per_side: int = setting(16, "SAM automatic mode's point grid (SAM's own default is 32).", lo=4,
                                        hi=64, source="choice")
    auto_min_area: float = setting(0.002, "Proposals smaller than this fraction of the image are ignored.", lo=0.0,
                                   hi=1.0, source="choice")
    auto_max_area: float = setting(0.6, "Proposals larger than this fraction of the image (background, table "
                                        "tops) are ignored.", lo=0.0, hi=1.0, source="choice")
    auto_pred_iou_thresh: float = setting(0.8, "SAM's predicted-IoU filter for proposals (SAM default 0.88).",
                                          lo=0.0, hi=1.0, source="choice")
    auto_stability_thresh: float = setting(0.9, "SAM's stability filter for proposals (SAM default 0.95).", lo=0.0,
                                           hi=1.0, source="choice")


@dataclass(frozen=True)
class Segmentation:
    """The objects of one image.

    Attributes:
        layout: boxes, phrases and visible masks ``[N, H, W]`` in {0, 1}, source pixels.
        crops: ``[N, S, S, 3]`` float RGB in [0, 1], each object re-centred on its canvas.
        crop_masks: ``[N, S, S]`` float in [0, 1], the objects' coverage in the crops.
        transforms: ``N`` :class:`~comboverse_ops.decompose.crops.CropTransform`, crop <-> source pixels.
        scores: ``[N]`` SAM's predicted IoU of each kept mask (NaN for masks given by the caller).
        rgb: ``[H, W, 3]`` float32 in [0, 1], the picture the objects were cut from, converted once
            (:func:`source_rgb`), for later stages that need it (the reference view of refine).
        alpha: ``[H, W]`` float32 in [0, 1], the picture's own transparency, or None.
    """

    layout: Layout
    crops: torch.Tensor
    crop_masks: torch.Tensor
    transforms: tuple[CropTransform, ...]
    scores: torch.Tensor
    rgb: torch.Tensor | None = None
    alpha: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# Inputs


def source_rgb(image_hwc: torch.Tensor, *, what: str = "image") -> tuple[torch.Tensor, torch.Tensor | None]:
    """RGB and optional alpha of an ``[H, W, C]`` float image in [0, 1].

    ``C`` = 3 (RGB), 4 (RGBA: alpha returned as a hint), 1 (grey, repeated) or 2 (grey + alpha).
    Returns ``([H, W, 3] float32, [H, W] float32 or None)``.
    """
    if image_hwc.ndim != 3 or image_hwc.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{what}: expected [H, W, C] with C = 1, 2, 3 or 4 channels, got {tuple(image_hwc.shape)}")
    img = image_hwc.to(torch.float32)
    c = img.shape[-1]
    alpha = img[..., -1].clamp(0, 1) if c in (2, 4) else None
    rgb = img[..., :3] if c >= 3 else img[..., :1].expand(*img.shape[:2], 3)
    return rgb.clamp(0, 1).contiguous(), alpha


def parse_phrases(text, n: int | None, *, what: str = "phrases") -> tuple[str, ...]:
    """One phrase per object from a JSON list, one per line, or one line split at ";" or ",".

    Empty text gives empty phrases. A count other than ``n`` raises ``ValueError``. With
    ``n=None`` (phrases that define the objects, for a detector) any count is taken, and one
    line is split only at ";".
    """
    if n is None and (text is None or not str(text).strip()):
        raise ValueError(f"{what}: no phrases; name each object, e.g. 'a teddy bear; a chair'")
    if text is None:
        return ("",) * n
    if isinstance(text, (list, tuple)):
        items = [str(t).strip() for t in text]
    else:
        s = str(text).strip()
        if not s:
            return ("",) * n
        if s.startswith("["):
            try:
                items = [str(t).strip() for t in json.loads(s)]
            except json.JSONDecodeError as e:
                raise ValueError(f"{what}: not valid JSON ({e.msg} at character {e.pos})") from None
        else:
            items = [line.strip() for line in s.splitlines() if line.strip()]
            if len(items) == 1 and (n is None or n > 1):
                sep = ";" if (";" in items[0] or n is None) else ","
                items = [p.strip() for p in items[0].split(sep) if p.strip()]
    if n is not None and len(items) != n:
        raise ValueError(f"{what}: {len(items)} phrases for {n} objects ({items}); give one phrase per object, "
                         "in the order of the boxes, one per line")
    return tuple(items)


def assign_points(points: torch.Tensor, boxes: torch.Tensor, *, what: str = "points") -> list[torch.Tensor]:
    """Give each positive point ``[K, 2]`` to the smallest box ``[N, 4]`` that contains it.

    Returns ``N`` tensors ``[k_i, 2]``. A point inside no box raises ``ValueError``.
    """
    out = [[] for _ in range(boxes.shape[0])]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for k, (x, y) in enumerate(points.tolist()):
        inside = (boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])
        if not bool(inside.any()):
            raise ValueError(f"{what}: point {k} ({x:g}, {y:g}) lies in none of the {boxes.shape[0]} boxes; points "
                             "given with boxes mark objects inside them")
        i = int(torch.where(inside, area, torch.full_like(area, float("inf"))).argmin())
        out[i].append([x, y])
    return [torch.tensor(p, dtype=torch.float32).reshape(-1, 2) for p in out]


def object_prompts(i: int, boxes: torch.Tensor | None, points: list[torch.Tensor],
                   settings: SegmentSettings) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """SAM prompts for object ``i`` in this pack's pixel coordinates.

    Returns ``(box [4] or None, point_coords [K, 2], point_labels [K])`` with label 1 for the
    object's own points and 0 for negatives: the centres of the other objects' boxes (or their
    first points when there are no boxes). A box that wholly contains object ``i``'s box (a
    table under a cup) gives no negative: its centre may well lie on object ``i``.
    """
    n = len(points)
    own = points[i]
    neg = []
    if settings.negative_points:
        for j in range(n):
            if j == i:
                continue
            if boxes is not None:
                bj, bi = boxes[j], boxes[i]
                contains = bool((bj[:2] <= bi[:2]).all() and (bj[2:] >= bi[2:]).all())
                if not contains:
                    neg.append(((bj[:2] + bj[2:]) / 2).tolist())
            elif points[j].numel():
                neg.append(points[j][0].tolist())
    coords = torch.tensor(own.tolist() + neg, dtype=torch.float32).reshape(-1, 2)
    labels = torch.tensor([1] * own.shape[0] + [0] * len(neg), dtype=torch.int64)
    return (None if boxes is None else boxes[i]), coords, labels


# ----------------------------------------------------------------------------------------------
# Masks


def clean_mask(mask: torch.Tensor, box: torch.Tensor | None, settings: SegmentSettings) -> torch.Tensor:
    """Remove stray islands and fill small holes of a binary ``[H, W]`` mask; clip it to ``box``.

    Islands smaller than ``min_island_fraction`` of the largest part go (an occluded object
    may be split into large parts, which all stay); holes (background regions not touching the
    image border) smaller than ``max_hole_fraction`` of the object's area are filled (a torus
    keeps its hole). Returns a bool mask on the input's device.
    """
    import numpy as np
    from scipy import ndimage

    m = mask.detach().to("cpu", torch.bool).numpy().copy()
    if box is not None and settings.clip_to_box:
        x0, y0, x1, y1 = box.tolist()
        mx = max(1.0, settings.box_margin * (x1 - x0))
        my = max(1.0, settings.box_margin * (y1 - y0))
        keep = np.zeros_like(m)
        keep[max(0, int(np.floor(y0 - my))):max(0, int(np.ceil(y1 + my))),
             max(0, int(np.floor(x0 - mx))):max(0, int(np.ceil(x1 + mx)))] = True
        m &= keep
    labels, count = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
    if count > 1:
        areas = np.bincount(labels.ravel())[1:]
        big = np.flatnonzero(areas >= settings.min_island_fraction * areas.max()) + 1
        m = np.isin(labels, big)
    if settings.max_hole_fraction > 0 and m.any():
        holes, count = ndimage.label(~m)
        if count:
            border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
            areas = np.bincount(holes.ravel())
            limit = settings.max_hole_fraction * m.sum()
            small = [k for k in range(1, count + 1) if k not in set(border.tolist()) and areas[k] < limit]
            if small:
                m |= np.isin(holes, small)
    return torch.from_numpy(m).to(mask.device)


def _image_uint8(rgb: torch.Tensor):
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def sam_masks(sam, rgb: torch.Tensor, boxes: torch.Tensor | None, points: list[torch.Tensor],
              settings: SegmentSettings = SegmentSettings(), *, predictor=None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Box- (or point-) prompted SAM masks, one per object.

    Args:
        sam: :class:`~comboverse_ops.models.sam.LoadedSam`.
        rgb: ``[H, W, 3]`` float in [0, 1].
        boxes: ``[N, 4]`` source-pixel boxes, or None (then every object needs points).
        points: ``N`` tensors ``[k_i, 2]`` of positive points per object.
        predictor: a ``SamPredictor`` that already holds this image's embedding (optional).
    Returns:
        ``(masks [N, H, W] bool, scores [N] float)``, cleaned (:func:`clean_mask`), on the CPU.
    """
    import numpy as np

    from ..determinism import serial_bilinear

    if predictor is None:
        predictor = sam.predictor()
        with torch.inference_mode(), serial_bilinear():
            predictor.set_image(_image_uint8(rgb), image_format="RGB")
    masks, scores = [], []
    for i in range(len(points)):
        box, coords, labels = object_prompts(i, boxes, points, settings)
        kwargs = {"multimask_output": settings.multimask}
        if coords.shape[0]:
            kwargs["point_coords"] = (coords - 0.5).numpy().astype(np.float32)
            kwargs["point_labels"] = labels.numpy()
        if box is not None:
            b = box.tolist()
            kwargs["box"] = np.array([b[0], b[1], b[2] - 1, b[3] - 1], dtype=np.float32)
        with torch.inference_mode(), serial_bilinear():  # SAM upsamples its masks bilinearly
            cand, cand_scores, _ = predictor.predict(**kwargs)
        best = int(np.argmax(cand_scores))
        mask = clean_mask(torch.from_numpy(cand[best]), box, settings)
        masks.append(mask)
        scores.append(float(cand_scores[best]))
    return torch.stack(masks), torch.tensor(scores, dtype=torch.float32)


def rank_proposals(masks: torch.Tensor, scores: torch.Tensor, n: int, settings: SegmentSettings,
                   alpha: torch.Tensor | None = None) -> list[int]:
    """Indices of the ``n`` most prominent, distinct proposals, left to right.

    Prominence is area times SAM's predicted IoU. Proposals outside the area range, touching
    three or four image borders (background), mostly transparent (with ``alpha``), or mostly
    inside an already chosen one (parts of it) are skipped.

    Args:
        masks: ``[M, H, W]`` bool proposals.
        scores: ``[M]`` predicted IoU.
    """
    m, h, w = masks.shape
    if m == 0:
        return []
    flat = masks.reshape(m, -1).float()
    area = flat.sum(1)
    frac = area / (h * w)
    borders = (masks[:, 0, :].any(1).int() + masks[:, -1, :].any(1).int() + masks[:, :, 0].any(1).int()
               + masks[:, :, -1].any(1).int())
    ok = (frac >= settings.auto_min_area) & (frac <= settings.auto_max_area) & (borders < 3)
    if alpha is not None:
        inside = (flat * (alpha.reshape(1, -1) > 0.5).float()).sum(1) / area.clamp_min(1)
        ok &= inside >= 0.8
    order = torch.argsort(area * scores, descending=True).tolist()
    chosen: list[int] = []
    for k in order:
        if not bool(ok[k]):
            continue
        if any(float((flat[k] * flat[j]).sum()) > 0.5 * float(torch.minimum(area[k], area[j])) for j in chosen):
            continue
        chosen.append(k)
        if len(chosen) == n:
            break
    boxes = boxes_from_masks(masks[chosen]) if chosen else torch.zeros(0, 4)
    return [chosen[i] for i in torch.argsort(boxes[:, 0], stable=True).tolist()]


def propose_boxes(sam, rgb: torch.Tensor, settings: SegmentSettings = SegmentSettings(),
                  alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Boxes ``[N, 4]`` of the ``settings.auto_objects`` most prominent objects (SAM automatic mode).

    Raises:
        ValueError: SAM proposed nothing usable.
    """
    from segment_anything import SamAutomaticMaskGenerator

    gen = SamAutomaticMaskGenerator(sam.sam, points_per_side=settings.auto_points_per_side,
                                    pred_iou_thresh=settings.auto_pred_iou_thresh,
                                    stability_score_thresh=settings.auto_stability_thresh,
                                    output_mode="binary_mask")
    with torch.inference_mode():
        records = gen.generate(_image_uint8(rgb))
    if not records:
        raise ValueError("Segment (automatic mode): SAM proposed no objects; draw boxes around the objects instead")
    masks = torch.stack([torch.from_numpy(r["segmentation"]) for r in records])
    scores = torch.tensor([float(r["predicted_iou"]) for r in records])
    keep = rank_proposals(masks, scores, settings.auto_objects, settings, alpha)
    if not keep:
        raise ValueError(f"Segment (automatic mode): none of SAM's {len(records)} proposals looks like an object "
                         f"(area {settings.auto_min_area:g}..{settings.auto_max_area:g} of the image, not touching "
                         "three image borders); draw boxes around the objects instead")
    return boxes_from_masks(masks[keep])


# ----------------------------------------------------------------------------------------------
# Assembly


def _check_masks(masks: torch.Tensor, size: tuple[int, int], what: str) -> torch.Tensor:
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"{what}: expected [N, H, W] masks, got {tuple(masks.shape)}")
    if tuple(masks.shape[1:]) != tuple(size):
        raise ValueError(f"{what}: masks are {masks.shape[1]}x{masks.shape[2]} but the image is {size[0]}x{size[1]} "
                         "(height x width); give masks of the image's size (core LoadImage gives a 64x64 empty mask "
                         "for pictures without alpha)")
    binary = masks.to(torch.float32) > 0.5
    for i, m in enumerate(binary):
        if not bool(m.any()):
            raise ValueError(f"{what}: mask {i} is empty; every object needs at least one pixel (1 = object; core "
                             "LoadImage's mask is 1 where the picture is transparent: invert it first)")
    return binary


def objects_from_masks(rgb: torch.Tensor, masks: torch.Tensor, *, boxes: torch.Tensor | None = None,
                       phrases=(), alpha: torch.Tensor | None = None, scores: torch.Tensor | None = None,
                       recenter: RecenterSettings = RecenterSettings(), what: str = "masks") -> Segmentation:
    """Crops and layout from object masks (SAM's or anyone's).

    Args:
        rgb: ``[H, W, 3]`` float in [0, 1].
        masks: ``[N, H, W]`` (or ``[H, W]``) float/bool, > 0.5 = object.
        boxes: ``[N, 4]`` boxes for the layout; default the masks' tight boxes.
        phrases: ``N`` strings or ().
        alpha: ``[H, W]`` in [0, 1]: the image's own transparency, which softens crop edges.
    """
    size = tuple(rgb.shape[:2])
    binary = _check_masks(masks, size, what)
    n = binary.shape[0]
    if boxes is None:
        boxes = boxes_from_masks(binary)
    elif boxes.shape[0] != n:
        raise ValueError(f"{what}: {n} masks but {boxes.shape[0]} boxes; give one box per mask")
    crops, crop_masks, transforms = [], [], []
    for i in range(n):
        coverage = binary[i].float() * (alpha if alpha is not None else 1.0)
        r = recenter_object(rgb, coverage, recenter, what=f"object {i}")
        crops.append(r.image)
        crop_masks.append(r.mask)
        transforms.append(r.transform)
    layout = Layout(boxes.to(torch.float32).cpu(), size, tuple(phrases) or ("",) * n, binary.float().cpu())
    if scores is None:
        scores = torch.full((n,), float("nan"))
    return Segmentation(layout, torch.stack(crops), torch.stack(crop_masks), tuple(transforms), scores, rgb, alpha)


def segment_image(image_hwc: torch.Tensor, sam=None, *, boxes: torch.Tensor | None = None,
                  points: torch.Tensor | None = None, phrases="", masks: torch.Tensor | None = None,
                  settings: SegmentSettings = SegmentSettings(),
                  recenter: RecenterSettings = RecenterSettings()) -> Segmentation:
    """Segment the objects of one image and re-centre each for image-to-3D.

    Which prompts are used:

    - ``masks`` given: they are the objects (SAM is not run); ``boxes`` (optional) go into the
      layout, otherwise the masks' tight boxes.
    - ``boxes`` given: one object per box, prompted with the box, the positive ``points`` that
      fall into it, and negatives at the other boxes' centres.
    - only ``points``: one object per point.
    - nothing: SAM proposes the ``settings.auto_objects`` most prominent objects.

    Args:
        image_hwc: ``[H, W, C]`` float in [0, 1], C in 1..4 (:func:`source_rgb`); an alpha
            channel restricts the masks to opaque pixels.
        sam: :class:`~comboverse_ops.models.sam.LoadedSam` (not needed with ``masks``).
        boxes: ``[N, 4]`` float ``(x0, y0, x1, y1)`` source pixels (:func:`~comboverse_ops.types.layout.parse_boxes`).
        points: ``[K, 2]`` float ``(x, y)`` source pixels.
        phrases: one phrase per object (:func:`parse_phrases`).
        masks: ``[N, H, W]`` float, 1 = object.
    Returns:
        :class:`Segmentation`; crops and masks on the CPU.
    """
    check_image_hwc(image_hwc, "Segment image")
    rgb, alpha = source_rgb(image_hwc)
    h, w = rgb.shape[:2]
    if masks is not None:
        n = masks.shape[0] if masks.ndim == 3 else 1
        return objects_from_masks(rgb, masks, boxes=boxes, phrases=parse_phrases(phrases, n), alpha=alpha,
                                  recenter=recenter)
    if sam is None:
        raise ValueError("Segment: no SAM model and no masks; connect 'ComboVerse Load SAM' (a SAM checkpoint in "
                         "models/sams) or give the objects' masks")
    sam_input = rgb if alpha is None else rgb * alpha[..., None] + 0.5 * (1 - alpha[..., None])
    if points is not None and points.numel() == 0:
        points = None
    if boxes is None and points is None:
        boxes = propose_boxes(sam, sam_input, settings, alpha)
        log.info("Segment: automatic mode proposed %d objects", boxes.shape[0])
    if boxes is not None:
        per_object = assign_points(points, boxes) if points is not None else \
            [torch.zeros(0, 2) for _ in range(boxes.shape[0])]
    else:
        per_object = [p[None] for p in points]
    n = len(per_object)
    phrase_tuple = parse_phrases(phrases, n)
    binary, scores = sam_masks(sam, sam_input, boxes, per_object, settings)
    if alpha is not None:
        binary &= alpha.cpu() > 0.5
    empty = [i for i in range(n) if not bool(binary[i].any())]
    if empty:
        where = f" (boxes {boxes[empty].tolist()})" if boxes is not None else ""
        raise ValueError(f"Segment: SAM found nothing for object(s) {empty}{where}; draw a tighter box, add a point "
                         "on the object, or give its mask")
    return objects_from_masks(rgb, binary, boxes=boxes, phrases=phrase_tuple, alpha=alpha, scores=scores,
                              recenter=recenter, what="Segment")

"""Where the objects are in the source image: boxes, phrases, masks.

Boxes are ``(x0, y0, x1, y1)`` in source-image pixels, continuous coordinates: the pixel in
column ``u`` spans ``[u, u + 1)``, so a box around pixels ``u0..u1`` inclusive is
``(u0, v0, u1 + 1, v1 + 1)``. Inputs also come as ComfyUI's ``BOUNDING_BOX`` dicts
(``{"x", "y", "width", "height"}``, top-left origin) or as JSON text of either form.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

__all__ = ["Layout", "layout_meta", "parse_boxes", "parse_box_input", "to_bounding_boxes", "parse_points",
           "boxes_from_masks"]


@dataclass(frozen=True)
class Layout:
    """The objects of one source image, in the user's order.

    Attributes:
        boxes: ``[N, 4]`` float32 ``(x0, y0, x1, y1)`` pixel boxes (module doc).
        image_size: ``(height, width)`` of the source image.
        phrases: ``N`` object phrases ("a teddy bear"); empty strings where none was given.
        masks: ``[N, H, W]`` float in {0, 1}, visible pixels of each object, or None.
    """

    boxes: torch.Tensor
    image_size: tuple[int, int]
    phrases: tuple[str, ...] = ()
    masks: torch.Tensor | None = None

    def __post_init__(self):
        n = self.boxes.shape[0]
        if not self.phrases:
            object.__setattr__(self, "phrases", ("",) * n)
        object.__setattr__(self, "phrases", tuple(self.phrases))
        if len(self.phrases) != n:
            raise ValueError(f"layout: {n} boxes but {len(self.phrases)} phrases; give one phrase per box")
        if self.masks is not None and tuple(self.masks.shape) != (n, *self.image_size):
            raise ValueError(f"layout: masks must be [{n}, {self.image_size[0]}, {self.image_size[1]}] "
                             f"(one per box, image size), got {tuple(self.masks.shape)}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def layout_meta(layout: Layout) -> dict:
    """What a scene built on ``layout`` keeps of it in ``Scene.meta`` (plain JSON values): its
    ``phrases``, ``boxes`` (``[N][4]`` pixels) and ``image_size`` (``[height, width]``); the GLB
    export writes them into each object's node."""
    return {"phrases": list(layout.phrases), "boxes": layout.boxes.detach().cpu().tolist(),
            "image_size": [int(layout.image_size[0]), int(layout.image_size[1])]}


def _numbers(values: list, i: int, what: str, keys=("x0", "y0", "x1", "y1"), shown=None) -> list[float]:
    """Box ``i``'s coordinates as floats; a value that is not a number names the box and the key."""
    out = []
    for k, v in zip(keys, values):
        try:
            if isinstance(v, bool):
                raise TypeError
            out.append(float(v))
        except (TypeError, ValueError):
            raise ValueError(f"{what}: box {i} {values if shown is None else shown!r}: {k} must be a number, "
                             f"got {v!r}") from None
    return out


def _check_boxes(boxes: torch.Tensor, image_size: tuple[int, int], what: str) -> torch.Tensor:
    h, w = image_size
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        if not all(map(math.isfinite, (x0, y0, x1, y1))):
            raise ValueError(f"{what}: box {i} {[x0, y0, x1, y1]} has a NaN or infinite coordinate; expected four "
                             "finite pixel coordinates [x0, y0, x1, y1]")
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"{what}: box {i} {[x0, y0, x1, y1]} has zero or negative area "
                             "(expected x1 > x0 and y1 > y0)")
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise ValueError(f"{what}: box {i} {[x0, y0, x1, y1]} lies outside the {w}x{h} image")
    clipped = boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
    return clipped


def parse_boxes(value, image_size: tuple[int, int], *, what: str = "boxes") -> torch.Tensor:
    """Boxes from what a user or another node gives, as ``[N, 4]`` float32 ``(x0, y0, x1, y1)``.

    Accepts: ComfyUI ``BOUNDING_BOX`` dicts (one, a list, or ComfyUI's per-image list of lists,
    of which only the first image is used); lists ``[x0, y0, x1, y1]``; a tensor ``[N, 4]``; or
    JSON text of any of these. Boxes partly outside the image are clipped to it; boxes wholly
    outside, or of zero area, raise ``ValueError`` naming the box.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError(f"{what}: empty; give one box per object, e.g. [[10, 20, 110, 140]] or "
                             '[{"x": 10, "y": 20, "width": 100, "height": 120}]')
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what}: not valid JSON ({e.msg} at character {e.pos}): {text[:80]!r}") from None
    if torch.is_tensor(value):
        rows = value.detach().reshape(-1, 4).float().cpu().tolist()
    else:
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)) and value[0] \
                and isinstance(value[0][0], dict):
            value = value[0]  # ComfyUI's per-image form
        rows = []
        for i, b in enumerate(value or []):
            if isinstance(b, dict):
                keys = ("x", "y", "width", "height")
                missing = [k for k in keys if k not in b]
                if missing:
                    raise ValueError(f"{what}: box {i} lacks key {missing[0]!r}; expected x, y, width, height")
                x, y, bw, bh = _numbers([b[k] for k in keys], i, what, keys, shown=b)
                rows.append([x, y, x + bw, y + bh])
            elif isinstance(b, (list, tuple)) and len(b) == 4:
                rows.append(_numbers(list(b), i, what))
            else:
                raise ValueError(f"{what}: box {i} must be [x0, y0, x1, y1] or a dict with x, y, width, height; "
                                 f"got {b!r}")
    if not rows:
        raise ValueError(f"{what}: no boxes given; give one box per object")
    return _check_boxes(torch.tensor(rows, dtype=torch.float32), image_size, what)


def _per_image_lists(value) -> list | None:
    """The per-image lists of ComfyUI's ``BOUNDING_BOX``/``BOUNDING_BOXES`` (a list holding one list
    of box dicts per image, possibly empty), or None when ``value`` is not in that form."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value) \
            and all(isinstance(b, dict) for v in value for b in v):
        return [list(v) for v in value]
    return None


def parse_box_input(value, image_size: tuple[int, int], *, what: str = "boxes",
                    source: str = "the node connected to it") -> tuple[torch.Tensor, tuple[str, ...] | None]:
    """Boxes from another node's ``BOUNDING_BOX`` or ``BOUNDING_BOXES`` output, with their labels.

    Accepts every form core nodes and packs give: one ``{x, y, width, height}`` dict (extra keys
    such as ``score`` or ``label`` allowed), a list of them, or one list per image (core SAM3
    detection: boxes ordered by score, ``[[]]`` when nothing was found; only the first image's
    are used, as Segment takes one image), plus everything :func:`parse_boxes` takes.

    Returns:
        ``(boxes, labels)``: ``[N, 4]`` float32 ``(x0, y0, x1, y1)`` in the input's order, and
        the boxes' ``label`` strings (ComboVerse Detect's phrases) when every box has one, else None.
    Raises:
        ValueError: no box at all (naming ``source`` as the node that found nothing), or a box
            :func:`parse_boxes` refuses.
    """
    per_image = _per_image_lists(value)
    if per_image is not None:
        value = per_image[0]
    elif isinstance(value, dict):
        value = [value]
    if isinstance(value, (list, tuple)) and not value:
        raise ValueError(f"{what}: no object was detected: {source} gave no box for this image. Check that "
                         "node's text prompt and threshold (lower it to find more), or draw the boxes instead")
    labels = None
    if isinstance(value, (list, tuple)) and all(isinstance(b, dict) for b in value) \
            and all(isinstance(b.get("label"), str) for b in value):
        labels = tuple(b["label"] for b in value)
    return parse_boxes(value, image_size, what=what), labels


def to_bounding_boxes(boxes: torch.Tensor, scores=None, labels=None) -> list[list[dict]]:
    """``[N, 4]`` pixel boxes ``(x0, y0, x1, y1)`` as ComfyUI's ``BOUNDING_BOX`` for one image:
    ``[[{"x", "y", "width", "height"(, "score")(, "label")}, ...]]`` (floats, pixels)."""
    out = []
    for i, (x0, y0, x1, y1) in enumerate(boxes.detach().cpu().tolist()):
        b = {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}
        if scores is not None:
            b["score"] = float(scores[i])
        if labels is not None:
            b["label"] = str(labels[i])
        out.append(b)
    return [out]


def parse_points(value, *, what: str = "points") -> torch.Tensor:
    """Points ``[{"x": .., "y": ..}, ...]`` (or ``[[x, y], ...]``, or JSON text) as ``[K, 2]`` float32."""
    if isinstance(value, str):
        if not value.strip():
            return torch.zeros(0, 2)
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what}: not valid JSON ({e.msg} at character {e.pos})") from None
    rows = []
    for i, p in enumerate(value or []):
        if isinstance(p, dict) and "x" in p and "y" in p:
            rows.append([float(p["x"]), float(p["y"])])
        elif isinstance(p, (list, tuple)) and len(p) == 2:
            rows.append([float(v) for v in p])
        else:
            raise ValueError(f'{what}: point {i} must be {{"x": .., "y": ..}} or [x, y], got {p!r}')
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 2)


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight pixel boxes of binary masks.

    Args:
        masks: ``[N, H, W]`` masks, nonzero = object.
    Returns:
        ``[N, 4]`` float ``(x0, y0, x1, y1)`` in continuous pixel coordinates (:mod:`.camera`):
        from the left/top edge of the first covered pixel to the right/bottom edge of the last,
        so a single pixel ``(u, v)`` gives ``(u, v, u + 1, v + 1)``. All zeros for an empty mask.
    """
    if masks.ndim != 3:
        raise ValueError(f"boxes_from_masks: masks must be [N, H, W], got {tuple(masks.shape)}")
    out = torch.zeros(masks.shape[0], 4, dtype=torch.float32, device=masks.device)
    for i, m in enumerate(masks != 0):
        rows, cols = m.any(1).nonzero().squeeze(1), m.any(0).nonzero().squeeze(1)
        if rows.numel():
            out[i] = torch.stack([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]).float()
    return out

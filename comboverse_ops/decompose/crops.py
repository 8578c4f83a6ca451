"""Square crops of single objects, framed the way image-to-3D models expect them.

Single-object image-to-3D models (TripoSR, LGM, InstantMesh, ...) are trained on renders with
the object centred on a plain square canvas, its longer side covering a fixed fraction of the
canvas. :func:`recenter_object` makes such a crop from any image and object mask and returns
the :class:`CropTransform` that maps crop pixels back to the source image, so masks can make
the round trip (:func:`paste_mask`).

Pixel coordinates follow :mod:`.camera` and :mod:`.layout`: continuous, pixel ``u`` spans
``[u, u + 1)``. Crops are taken over an integer-aligned square window of the source (areas
outside the source count as empty), then resampled with antialiasing to the output size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..types.layout import boxes_from_masks
from ..lift3d.preprocess import FOREGROUND_RATIO
from ..settings import setting, settings_class

__all__ = ["BACKGROUNDS", "RecenterSettings", "CropTransform", "RecenteredObject", "square_window",
           "crop_window_bchw", "recenter_object", "paste_mask"]

# Canvas colours a user can pick (RGB in [0, 1]).
BACKGROUNDS = {"grey": (0.5, 0.5, 0.5), "white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


@settings_class
@dataclass(frozen=True)
class RecenterSettings:
    """How an object is framed for the image-to-3D model."""

    size: int = setting(512, "Side of each object crop in pixels (TripoSR takes 512).", lo=64, hi=2048, step=8,
                        source="upstream")
    foreground_ratio: float = setting(FOREGROUND_RATIO, "Object's longer side / crop side (TripoSR's default "
                                                        f"{FOREGROUND_RATIO}).", lo=0.3, hi=1.0, step=0.01,
                                      source="upstream")
    background: str = setting("grey", "Canvas colour around the object: grey (TripoSR), white (Zero123-style "
                                      "models) or black.", choices=tuple(BACKGROUNDS), source="upstream")

    def __post_init__(self):
        if int(self.size) != self.size:
            raise ValueError(f"crop size: expected an integer number of pixels, got {self.size!r}")

    @property
    def background_rgb(self) -> tuple[float, float, float]:
        return BACKGROUNDS[self.background]


@dataclass(frozen=True)
class CropTransform:
    """A square window of the source image, resampled to ``size x size`` crop pixels.

    Source pixel ``(x, y) = (x0 + u * side / size, y0 + v * side / size)`` for crop pixel
    ``(u, v)`` (continuous coordinates in both frames).

    Attributes:
        x0, y0: top-left corner of the window in source pixels (may be negative or fractional).
        side: the window's side in source pixels.
        size: the crop's side in pixels.
        source_size: ``(height, width)`` of the source image.
    """

    x0: float
    y0: float
    side: float
    size: int
    source_size: tuple[int, int]

    @property
    def scale(self) -> float:
        """Crop pixels per source pixel."""
        return self.size / self.side

    def to_crop(self, xy: torch.Tensor) -> torch.Tensor:
        """``[..., 2]`` source pixel coordinates -> crop pixel coordinates."""
        offset = torch.tensor([self.x0, self.y0], dtype=xy.dtype, device=xy.device)
        return (xy - offset) * self.scale

    def boxes_to_crop(self, boxes: torch.Tensor) -> torch.Tensor:
        """``[N, 4]`` ``(x0, y0, x1, y1)`` source boxes -> crop boxes."""
        return self.to_crop(boxes.reshape(-1, 2, 2)).reshape(-1, 4)


@dataclass(frozen=True)
class RecenteredObject:
    """One object on its square canvas.

    Attributes:
        image: ``[S, S, 3]`` float RGB in [0, 1], the object composited over the background.
        mask: ``[S, S]`` float in [0, 1], the object's coverage (antialiased edges).
        transform: crop <-> source pixels.
    """

    image: torch.Tensor
    mask: torch.Tensor
    transform: CropTransform


def square_window(box, side_scale: float, source_size: tuple[int, int], size: int) -> CropTransform:
    """The square window centred on ``box``, ``side_scale`` times its longer side.

    The window is exact (fractional) when the crop enlarges the source; when it shrinks it,
    the window snaps to whole source pixels so that antialiased resampling applies (the centre
    then moves by at most half a source pixel, less than half a crop pixel).

    Args:
        box: ``(x0, y0, x1, y1)`` source pixels.
        side_scale: window side / longer box side (``1 / foreground_ratio`` for re-centring).
        source_size: ``(height, width)``.
        size: the crop side the window will be resampled to.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    longer = max(x1 - x0, y1 - y0)
    if not longer > 0:
        raise ValueError(f"square_window: box {[x0, y0, x1, y1]} has zero area")
    side = longer * side_scale
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if side > size:
        side = float(math.ceil(side - 1e-6))
        return CropTransform(float(math.floor(cx - side / 2 + 0.5)), float(math.floor(cy - side / 2 + 0.5)), side,
                             int(size), (int(source_size[0]), int(source_size[1])))
    return CropTransform(cx - side / 2, cy - side / 2, side, int(size), (int(source_size[0]), int(source_size[1])))


def _source_grid(t: CropTransform, h: int, w: int, device) -> torch.Tensor:
    """``[1, S, S, 2]`` grid_sample coordinates (align_corners=False) of the crop's pixel centres."""
    c = (torch.arange(t.size, device=device, dtype=torch.float32) + 0.5) / t.scale
    gx = (t.x0 + c) * (2.0 / w) - 1.0
    gy = (t.y0 + c) * (2.0 / h) - 1.0
    return torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None]


def crop_window_bchw(images: torch.Tensor, t: CropTransform, *, fill: float = 0.0) -> torch.Tensor:
    """Resample the window ``t`` of ``[B, C, H, W]`` float images to ``[B, C, size, size]``, bilinear.

    Areas of the window outside the source are ``fill``. Shrinking windows (whole source pixels,
    see :func:`square_window`) are resampled with antialiasing; a window of exactly ``size``
    whole pixels is copied.
    """
    b, c, h, w = images.shape
    whole = float(t.x0).is_integer() and float(t.y0).is_integer() and float(t.side).is_integer()
    if whole and t.side >= t.size:
        x0, y0, side = int(t.x0), int(t.y0), int(t.side)
        left, top = max(0, -x0), max(0, -y0)
        right, bottom = max(0, x0 + side - w), max(0, y0 + side - h)
        win = images[:, :, y0 + top:y0 + side - bottom, x0 + left:x0 + side - right]
        if left or top or right or bottom:
            win = F.pad(win, (left, right, top, bottom), value=fill)
        if side == t.size:
            return win.clone()
        return F.interpolate(win, size=(t.size, t.size), mode="bilinear", align_corners=False, antialias=True)
    grid = _source_grid(t, h, w, images.device).expand(b, -1, -1, -1).to(images.dtype)
    out = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def recenter_object(image_hw3: torch.Tensor, mask_hw: torch.Tensor,
                    settings: RecenterSettings = RecenterSettings(), *, what: str = "object") -> RecenteredObject:
    """Centre one object on a square canvas (TripoSR-style framing).

    The window is centred on the mask's tight box, its side the box's longer side divided by
    ``settings.foreground_ratio``; colour and mask are resampled premultiplied, so edges blend
    into the background colour without halos.

    Args:
        image_hw3: ``[H, W, 3]`` float RGB in [0, 1].
        mask_hw: ``[H, W]`` float in [0, 1] (or bool), 1 = object.
    Returns:
        :class:`RecenteredObject` on the image's device, float32.
    Raises:
        ValueError: empty mask, or image and mask of different sizes.
    """
    if image_hw3.ndim != 3 or image_hw3.shape[-1] != 3:
        raise ValueError(f"{what}: image must be [H, W, 3], got {tuple(image_hw3.shape)}")
    if tuple(mask_hw.shape) != tuple(image_hw3.shape[:2]):
        raise ValueError(f"{what}: mask {tuple(mask_hw.shape)} and image {tuple(image_hw3.shape[:2])} differ in size")
    mask = mask_hw.to(image_hw3.device, torch.float32)
    box = boxes_from_masks((mask > 0.5)[None])[0]
    if not bool((box[2:] > box[:2]).all()):
        raise ValueError(f"{what}: the mask is empty; nothing to crop")
    t = square_window(box.tolist(), 1.0 / settings.foreground_ratio, tuple(mask.shape), settings.size)
    rgb = image_hw3.to(torch.float32).permute(2, 0, 1)
    stacked = torch.cat([rgb * mask, mask[None]], 0)[None]
    out = crop_window_bchw(stacked, t)[0].clamp(0, 1)
    coverage = out[3]
    bg = torch.tensor(settings.background_rgb, dtype=out.dtype, device=out.device).view(3, 1, 1)
    composed = (out[:3] + bg * (1 - coverage)).clamp(0, 1)
    return RecenteredObject(composed.permute(1, 2, 0).contiguous(), coverage.contiguous(), t)


def paste_mask(mask_crop: torch.Tensor, t: CropTransform) -> torch.Tensor:
    """A crop-frame mask ``[S, S]`` back in source pixels, ``[H, W]`` float in [0, 1].

    The inverse of the resampling in :func:`recenter_object` (up to resampling blur);
    threshold at 0.5 for a binary mask.
    """
    h, w = t.source_size
    m = mask_crop.to(torch.float32)[None, None]
    scale = t.scale
    factor = int(scale) if scale >= 2 else 1
    if factor > 1:  # average first, so shrinking back does not alias
        m = F.avg_pool2d(m, factor, ceil_mode=True)
        scale /= factor
    size = m.shape[-1]
    xs = (torch.arange(w, device=m.device, dtype=torch.float32) + 0.5 - t.x0) * scale
    ys = (torch.arange(h, device=m.device, dtype=torch.float32) + 0.5 - t.y0) * scale
    grid = torch.stack(torch.meshgrid(xs * (2.0 / size) - 1, ys * (2.0 / size) - 1, indexing="xy"), -1)[None]
    out = F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0, 0].clamp(0, 1)

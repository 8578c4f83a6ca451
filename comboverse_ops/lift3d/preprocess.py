"""Object crops to the conditioning images a single-object image-to-3D model expects.

TripoSR was trained on one object, centred, on a grey (0.5) background, filling about 85% of a
square image. Per object (masks given):

- a crop that is already framed that way (:func:`is_framed`: square, the mask's box centred,
  its longer side ``foreground_ratio`` of the side), as ComboVerse Segment and Inpaint make
  them, is used as it is: composited over grey (below), resized only when its side is not
  ``size``. Framing it again would resample it and drop its antialiased fringe;
- any other crop (another node's, a loaded picture with its mask) is framed here: composited
  over grey, the mask's bounding box cut, padded to a square, padded again so the object spans
  ``foreground_ratio`` of the side, resized to ``size`` (bilinear, antialiased).

Compositing: colour times mask plus grey times (1 - mask), unless every pixel outside the mask
is grey already; such a crop is taken as composited over grey (Segment's and Inpaint's grey
crops are) and kept, since compositing it again would square its edges' coverage.

Without a mask the crop is padded to a square with grey and resized, i.e. it must already be
prepared that way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FOREGROUND_RATIO = 0.85  # object size / image side after re-centring (TripoSR run.py default)

# How far (crop pixels) a framed crop's mask box may be from the exact framing. A crop framed by
# crops.recenter_object is off by less than this: its window snaps to whole source pixels when it
# shrinks the source (the object's side shrinks by < 1 crop pixel, its centre moves by < 0.5), and
# the box of the mask thresholded at 0.5 quantises each edge to whole pixels (< 0.5 each). A
# reframe within this tolerance would move the object by at most a pixel anyway.
FRAMED_CENTRE_TOLERANCE = 1.0
FRAMED_SIDE_TOLERANCE = 2.0

__all__ = ["FRAMED_CENTRE_TOLERANCE", "FRAMED_SIDE_TOLERANCE", "conditioning_images", "is_framed"]


def _square_canvas(rgb_hwc: torch.Tensor, side: int, background: float) -> torch.Tensor:
    h, w, _ = rgb_hwc.shape
    canvas = rgb_hwc.new_full((side, side, 3), background)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top:top + h, left:left + w] = rgb_hwc
    return canvas


def _resize(canvas_hwc: torch.Tensor, size: int) -> torch.Tensor:
    x = canvas_hwc.permute(2, 0, 1)[None]
    if x.shape[-1] != size:
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).clamp(0, 1)


def _mask_box(alpha_hw: torch.Tensor) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` pixel edges of ``alpha > 0.5``, or None when no pixel is."""
    ys, xs = torch.nonzero(alpha_hw > 0.5, as_tuple=True)
    if ys.numel() == 0:
        return None
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def is_framed(mask_hw: torch.Tensor, foreground_ratio: float = FOREGROUND_RATIO) -> bool:
    """Whether a crop is already framed for the image-to-3D model.

    Framed: the crop is square, the box of ``mask > 0.5`` is centred (within
    ``FRAMED_CENTRE_TOLERANCE`` pixels on both axes) and its longer side is ``foreground_ratio``
    of the crop's side (within ``FRAMED_SIDE_TOLERANCE`` pixels), which every crop of
    :func:`~comboverse_ops.decompose.crops.recenter_object` at that ratio is.

    Args:
        mask_hw: ``[H, W]`` float in [0, 1], 1 = object.
        foreground_ratio: the object's longer side / the crop's side, in (0, 1].
    """
    h, w = mask_hw.shape
    box = _mask_box(mask_hw)
    if h != w or box is None:
        return False
    y0, y1, x0, x1 = box
    return (abs((y0 + y1) / 2 - h / 2) <= FRAMED_CENTRE_TOLERANCE
            and abs((x0 + x1) / 2 - w / 2) <= FRAMED_CENTRE_TOLERANCE
            and abs(max(y1 - y0, x1 - x0) - foreground_ratio * w) <= FRAMED_SIDE_TOLERANCE)


def _on_background(rgb_hwc: torch.Tensor, alpha_hw: torch.Tensor, background: float) -> bool:
    """Whether every pixel outside the mask (alpha below one 8-bit step) is ``background`` already."""
    outside = alpha_hw < 1.0 / 255
    return bool(outside.any()) and float((rgb_hwc[outside] - background).abs().max()) <= 1.0 / 255


def conditioning_images(images: torch.Tensor, masks: torch.Tensor | None, size: int, *,
                        foreground_ratio: float = FOREGROUND_RATIO, background: float = 0.5,
                        names: list[str] | None = None) -> torch.Tensor:
    """One square conditioning image per object crop (module doc).

    Args:
        images: ``[B, H, W, 3]`` float RGB in [0, 1] (ComfyUI IMAGE), one crop per object; a 4th
            channel is read as alpha when ``masks`` is None.
        masks: ``[B, H, W]`` float in [0, 1], 1 = object (ComfyUI MASK convention), or None.
        size: output side in pixels.
        foreground_ratio: the object's longer side as a fraction of the output side, in (0, 1].
        background: grey level outside the object.
        names: object names for error messages (default ``object_<i>``).
    Returns:
        ``[B, size, size, 3]`` float32 in [0, 1], on the images' device.
    Raises:
        ValueError: wrong shapes, an empty mask, or a blank crop; the message names the object.
    """
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise ValueError(f"images: expected [B, H, W, 3] RGB crops (ComfyUI IMAGE), got {tuple(images.shape)}")
    b, h, w, c = images.shape
    if not 0 < foreground_ratio <= 1:
        raise ValueError(f"foreground_ratio: expected a value in (0, 1], got {foreground_ratio}")
    names = names or [f"object_{i}" for i in range(b)]
    if masks is None and c == 4:
        masks = images[..., 3]
    if masks is not None:
        if masks.ndim == 2:
            masks = masks[None]
        if tuple(masks.shape) != (b, h, w):
            raise ValueError(f"masks: expected one [H, W] mask per crop, i.e. [{b}, {h}, {w}] like images, got "
                             f"{tuple(masks.shape)} (resize or batch the masks to match the crops)")
    images = images[..., :3].float()
    out = []
    for i in range(b):
        rgb = images[i]
        if masks is None:
            if float(rgb.amax() - rgb.amin()) < 1.0 / 255:
                raise ValueError(f"{names[i]}: the crop is a single flat colour ({rgb.mean(dim=(0, 1)).tolist()}), "
                                 "so there is no object to reconstruct; check the crop (or give its mask)")
            canvas = _square_canvas(rgb, max(h, w), background)
        else:
            alpha = masks[i].float().clamp(0, 1)
            box = _mask_box(alpha)
            if box is None:
                raise ValueError(
                    f"{names[i]}: its mask is empty (no pixel above 0.5, max {float(alpha.max()):.3f}), so there is "
                    "no object to reconstruct. Check the mask from the Segment node (1 = object; a LoadImage "
                    "mask is 1 - alpha and needs inverting) or drop this crop")
            comp = rgb if _on_background(rgb, alpha, background) else \
                rgb * alpha[..., None] + background * (1 - alpha[..., None])
            if is_framed(alpha, foreground_ratio):
                canvas = comp  # framed once, by whoever made the crop
            else:
                y0, y1, x0, x1 = box
                obj = comp[y0:y1, x0:x1]
                side = max(y1 - y0, x1 - x0)
                canvas = _square_canvas(_square_canvas(obj, side, background),
                                        max(side, int(math.floor(side / foreground_ratio))), background)
        out.append(_resize(canvas, size))
    return torch.stack(out)

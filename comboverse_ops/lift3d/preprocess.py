"""Object crops to the conditioning images a single-object image-to-3D model expects.

TripoSR was trained on one object, centred, on a grey (0.5) background, filling about 85% of a
square image. Per object (masks given): composite the crop over grey with the mask as alpha,
cut the mask's bounding box, pad it to a square, pad again so the object spans
``foreground_ratio`` of the side, resize to ``size`` (bilinear, antialiased). Without a mask the
crop is padded to a square with grey and resized, i.e. it must already be prepared that way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FOREGROUND_RATIO = 0.85  # object size / image side after re-centring (TripoSR run.py default)

__all__ = ["conditioning_images"]


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
            ys, xs = torch.nonzero(alpha > 0.5, as_tuple=True)
            if ys.numel() == 0:
                raise ValueError(
                    f"{names[i]}: its mask is empty (no pixel above 0.5, max {float(alpha.max()):.3f}), so there is "
                    "no object to reconstruct. Check the mask from the Segment node (1 = object; a LoadImage "
                    "mask is 1 - alpha and needs inverting) or drop this crop")
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            comp = rgb * alpha[..., None] + background * (1 - alpha[..., None])
            obj = comp[y0:y1, x0:x1]
            side = max(y1 - y0, x1 - x0)
            canvas = _square_canvas(_square_canvas(obj, side, background),
                                    max(side, int(math.floor(side / foreground_ratio))), background)
        out.append(_resize(canvas, size))
    return torch.stack(out)

"""Pictures from files, and the checks every picture passes before a model sees it.

:func:`load_image_hwc` reads what cameras and editors write: 8-bit RGB/RGBA, greyscale (with or
without alpha), paletted (with or without a transparent colour), CMYK, 16-bit greyscale
(``I;16``, scaled by 65535, not clipped at 255), 32-bit integer (``I``, scaled by 65535 when
it fits 16 bits) and 32-bit float (``F``, taken as [0, 1]) images; a picture's EXIF orientation
is applied, so it comes out the way viewers show it.

Transparency is kept as a fourth channel: Segment limits the objects' masks to opaque pixels
(alpha > 0.5) and shows SAM the colours over grey; everything else uses the colour channels.

:func:`check_image_hwc` refuses pictures no stage can work with: smaller than
:data:`MIN_SIDE` pixels on a side, or holding NaN / infinite values.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["MIN_SIDE", "load_image_hwc", "check_image_hwc"]

MIN_SIDE = 16  # pixels; SAM's smallest mask cell is 4x4 px of a 1024 px input, a box needs several


def check_image_hwc(image_hwc: torch.Tensor, what: str = "image") -> torch.Tensor:
    """Raise ``ValueError`` naming ``what`` unless ``image_hwc`` is an ``[H, W, C]`` picture with
    H, W >= :data:`MIN_SIDE` and only finite values; returns it unchanged."""
    if image_hwc.ndim != 3:
        raise ValueError(f"{what}: expected one picture [H, W, C], got shape {tuple(image_hwc.shape)}")
    h, w = image_hwc.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"{what}: the picture is {w}x{h} pixels; expected at least {MIN_SIDE} pixels on each side")
    if image_hwc.is_floating_point():
        bad = int((~torch.isfinite(image_hwc)).sum())
        if bad:
            raise ValueError(f"{what}: {bad} of the picture's {image_hwc.numel()} values are NaN or infinite; "
                             "expected finite values in [0, 1] (the node before it produced them)")
    return image_hwc


def _float_array(img) -> np.ndarray:
    """A Pillow image as ``[H, W, C]`` float32 in [0, 1], C = 3 or 4 (module doc for the modes)."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img).astype(np.float32)
        if mode != "F":
            a = a / (65535.0 if mode.startswith("I;16") or a.max(initial=0) <= 65535 else 2.0**31 - 1)
        return np.repeat(a[..., None], 3, -1)
    alpha = "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info
    return np.asarray(img.convert("RGBA" if alpha else "RGB"), dtype=np.float32) / 255.0


def load_image_hwc(path: str | os.PathLike, what: str = "image") -> torch.Tensor:
    """An image file as ``[H, W, C]`` float32 in [0, 1] (C = 3, or 4 when it has transparency),
    upright as its EXIF orientation says, checked with :func:`check_image_hwc`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a folder, not a picture, a damaged or truncated file, or a degenerate picture;
            every message names ``what`` and the file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what}: no file at {p}")
    if p.is_dir():
        raise ValueError(f"{what}: expected a picture file, got the folder {p}")
    try:
        with Image.open(p) as img:
            img.load()
            arr = _float_array(ImageOps.exif_transpose(img))
    except UnidentifiedImageError:
        raise ValueError(f"{what}: {p} is not a picture Pillow can read (expected PNG, JPEG, WebP, TIFF, ...)") \
            from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for truncated or damaged files
        raise ValueError(f"{what}: {p} is damaged or truncated ({e}); save or download it again") from None
    return check_image_hwc(torch.from_numpy(np.ascontiguousarray(arr)), f"{what} {p}")

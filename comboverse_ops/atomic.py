"""Atomic file writes: a file appears complete or not at all."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["write_bytes_atomic", "save_png_atomic"]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    On any error (or a cancel) the temporary file is removed and an existing ``path`` is left
    untouched. Parent folders are created. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # NamedTemporaryFile creates 0600; give the result the usual 0644, or keep the old file's mode.
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, mode)
        os.replace(tmp.name, path)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    return path


def save_png_atomic(path: str | os.PathLike, image_hwc: torch.Tensor) -> Path:
    """Save an ``[H, W, 3]`` (or ``[H, W]``) float image in [0, 1] as PNG, atomically."""
    from PIL import Image

    arr = (image_hwc.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return write_bytes_atomic(path, buf.getvalue())

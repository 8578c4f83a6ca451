"""Atomic file writes: a file appears complete or not at all, and a run's files appear together.

Every file is written to a temporary name in its own folder (``.<name>.<random>.tmp``), flushed
to disk, then renamed onto its name. :func:`write_files_atomic` does this for all outputs of one
run at once: nothing is renamed before every file is on disk, and the last file (the run's report,
which lists the others) is renamed last after its older version was removed first. So a run
killed at any point (even by SIGKILL, where no clean-up code runs) leaves either the old outputs,
or new outputs without a report, never a new ``scene.glb`` beside an old ``scene_report.json``.

Temporaries that a killed run left behind are removed by the next write of the same file
(:func:`remove_stale_temporaries`). Two runs writing the same outputs at the same moment are not
supported (the later one may remove the other's temporaries).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

import torch

__all__ = ["write_bytes_atomic", "write_files_atomic", "save_png_atomic", "png_bytes", "remove_stale_temporaries"]


def _temporary_name(path: Path) -> re.Pattern:
    # tempfile's random part is 8 characters of [a-z0-9_].
    return re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` that an interrupted write left in its folder; return them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = _temporary_name(path)
    stale = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _write_temporary(path: Path, data: bytes) -> Path:
    """``data`` in a flushed temporary file next to ``path``, with the mode ``path`` will have."""
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
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    return Path(tmp.name)


def write_files_atomic(files: dict[str | os.PathLike, bytes]) -> list[Path]:
    """Write several files as one commit (module doc); the last entry of ``files`` is the marker
    (e.g. the report) that is removed first and renamed last.

    On any error (or a cancel) before the renames begin, every temporary is removed and the old
    files are left untouched; one during the renames removes the temporaries not yet renamed.
    Stale temporaries of these files are removed first. Parent folders are created. Returns the
    paths in the order given.
    """
    items = [(Path(p), data) for p, data in files.items()]
    for path, _ in items:
        remove_stale_temporaries(path)
    temporaries: list[Path] = []
    try:
        for path, data in items:
            temporaries.append(_write_temporary(path, data))
    except BaseException:
        for t in temporaries:
            t.unlink(missing_ok=True)
        raise
    marker = items[-1][0]
    if len(items) > 1:
        marker.unlink(missing_ok=True)  # a killed commit must not leave new files beside an old marker
    renamed = 0
    try:
        for (path, _), tmp in zip(items, temporaries):
            os.replace(tmp, path)
            renamed += 1
    except BaseException:  # a rename failed (or a cancel): no temporary stays behind
        for t in temporaries[renamed:]:
            t.unlink(missing_ok=True)
        raise
    return [p for p, _ in items]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    On any error (or a cancel) the temporary file is removed and an existing ``path`` is left
    untouched; temporaries an earlier, killed write left are removed. Parent folders are
    created. Returns the path.
    """
    return write_files_atomic({path: data})[0]


def png_bytes(image_hwc: torch.Tensor) -> bytes:
    """An ``[H, W, 3]`` (or ``[H, W]``) float image in [0, 1] as 8-bit PNG bytes."""
    from PIL import Image

    arr = (image_hwc.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def save_png_atomic(path: str | os.PathLike, image_hwc: torch.Tensor) -> Path:
    """Save an ``[H, W, 3]`` (or ``[H, W]``) float image in [0, 1] as PNG, atomically."""
    return write_bytes_atomic(path, png_bytes(image_hwc))

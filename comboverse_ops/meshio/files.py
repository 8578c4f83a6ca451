"""Cheap checks of weight files and output paths, run before any model does.

A damaged or wrong file must be named in seconds, not after SAM and inpainting ran for minutes.
These checks read a file's first bytes and, for archives, its directory, never the weights:

- ``.safetensors``: the 8-byte header length, the JSON header, and that the file holds every
  byte the header's tensors point to (a truncated download fails here).
- ``torch.save`` files (``.pth``, ``.pt``, ``.ckpt``, ``.bin``): a zip archive whose central
  directory (at the end of the file, so truncation loses it) opens and lists a ``data.pkl``, or
  a legacy pickle stream.

Anything else (random bytes, an empty file, an HTML error page, a Git LFS pointer) is refused
with a message that says the file is not a valid checkpoint and what was found instead.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zipfile
from pathlib import Path

__all__ = ["check_weights_file", "check_output_file", "SAFETENSORS_SUFFIXES"]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def _found_instead(head: bytes) -> str:
    """What the first bytes of a file that is no checkpoint look like."""
    text = head.lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer (a few lines of text), not the weights: fetch the real file with `git lfs pull`"
    if text.startswith((b"<!doctype", b"<html", b"<?xml")):
        return "an HTML/XML page (a failed or redirected download)"
    return f"unknown content (first bytes {head[:8].hex(' ')})"


def _check_safetensors(path: Path, size: int, what: str, fix: str) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{what}: {path} is not a valid safetensors file: {size} bytes, shorter than its "
                             f"8-byte header length; the file is damaged or truncated.{fix}")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            seen = _found_instead(head)
            seen = "" if seen.startswith("unknown") else f"; it is {seen}"
            raise ValueError(f"{what}: {path} is not a valid safetensors file: its header claims {n} bytes but the "
                             f"file holds {size} bytes{seen}; the file is damaged or truncated.{fix}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what}: {path} is not a valid safetensors file: its header is not JSON ({e}); the file "
                         f"is damaged.{fix}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{what}: {path} is not a valid safetensors file: its header is not a JSON object.{fix}")
    ends = [v.get("data_offsets", [0, 0])[1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    data = size - 8 - n
    if ends and max(ends) > data:
        raise ValueError(f"{what}: {path} is truncated: its header describes {max(ends)} bytes of tensor data but "
                         f"the file holds {data}; download it again.{fix}")


def _check_torch_file(path: Path, size: int, what: str, fix: str) -> None:
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{what}: {path} is not a valid checkpoint: it starts as a zip archive (torch.save) but "
                             f"its directory cannot be read ({e}); the file is truncated or damaged, download it "
                             f"again.{fix}") from None
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise ValueError(f"{what}: {path} is not a valid checkpoint: a zip archive without data.pkl (not written "
                             f"by torch.save; holds {names[:3]}).{fix}")
        return
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return  # a legacy (pre-zip) torch.save pickle; torch.load reports damage inside it
    if head.startswith(b"PK"):
        raise ValueError(f"{what}: {path} is not a valid checkpoint: a damaged zip archive.{fix}")
    raise ValueError(f"{what}: {path} is not a valid checkpoint: expected a PyTorch file written by torch.save (a zip "
                     f"archive or a pickle), found {_found_instead(head)}; the file is damaged or not a "
                     f"checkpoint.{fix}")


def check_weights_file(path: str | os.PathLike, what: str, fix: str = "") -> Path:
    """Raise unless ``path`` is a readable, complete weights file (module doc); cheap.

    Args:
        path: a ``.safetensors`` / ``.sft`` file, or a ``torch.save`` file of any suffix.
        what: who needs the file, e.g. ``"Lift3D (TripoSR) --lift3d"``: starts every message.
        fix: appended to every message (where the right file comes from).
    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a folder, an empty file, or not a valid checkpoint (says what was found).
    """
    path = Path(path)
    fix = f" {fix[0].upper()}{fix[1:]}" if fix else ""
    if not path.exists():
        raise FileNotFoundError(f"{what}: no file at {path}.{fix}")
    if path.is_dir():
        raise ValueError(f"{what}: expected a weights file, got the folder {path}.{fix}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{what}: {path} is empty (0 bytes), not a valid checkpoint; download it again.{fix}")
    try:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            _check_safetensors(path, size, what, fix)
        else:
            _check_torch_file(path, size, what, fix)
    except PermissionError as e:
        raise ValueError(f"{what}: {path} cannot be read ({e.strerror}).{fix}") from None
    return path


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise ``ValueError`` unless a file can be written at ``path``: not a folder, and its folder
    (created if missing) writable. Cheap; creates the folder, and leaves no file behind."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a folder; expected a file name in it, e.g. {path / 'scene.glb'}")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{what}: cannot create the folder {parent} ({e.strerror}); choose another place") from None
    if not parent.is_dir():
        raise ValueError(f"{what}: {parent} is not a folder; choose another place")
    try:  # a real write: permission bits alone miss read-only file systems (and root ignores them)
        with tempfile.TemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise ValueError(f"{what}: cannot write in the folder {parent} ({e.strerror}); choose another place") \
            from None
    return path

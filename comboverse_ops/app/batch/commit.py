"""The batch output folder: each scene committed whole by one rename, one run at a time.

Layout of ``OUT``::

    scenes/<id>/          one folder per finished scene: scene.glb, previews, report, log.txt, done.json
    summary.jsonl, .csv   one row per manifest line (rewritten as the run goes)
    batch_log.jsonl       what happened, one event a line (appended): committed, retried, failed
    .staging/             folders being filled (emptied at the start of every run)
    .lock                 held by the running batch

A scene is written into ``.staging/<id>.<random>/`` (every file flushed to disk, ``done.json``
last), then that folder is renamed to ``scenes/<id>``: a reader sees all of a scene's files or
none, and ``scenes/<id>/done.json`` with the scene's hash is what "done" means.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from ...meshio.atomic import write_bytes_atomic

__all__ = ["OutputFolder", "commit_folder", "BatchLocked"]


class BatchLocked(RuntimeError):
    """Another batch is writing into the same output folder."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_folder(files: dict[str, bytes], final: Path, staging_root: Path) -> Path:
    """Write ``files`` (name -> bytes, in order: put the marker last) as the folder ``final``, atomically.

    The files are written and fsynced in ``staging_root/<name>.<random>/``, which is then renamed to
    ``final``. An existing ``final`` (a stale result) is moved aside first and removed after; if the
    process dies between the two renames the scene simply counts as not done. Returns ``final``.
    (A multi-file sibling of :func:`..atomic.write_bytes_atomic`; it needs the files as bytes.)
    """
    staging_root.mkdir(parents=True, exist_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_root / f"{final.name}.{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"commit: expected plain file names, got {name!r}")
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp / name, 0o644)
        _fsync_dir(tmp)
        old = None
        if final.exists():
            old = staging_root / f"{final.name}.old.{uuid.uuid4().hex[:12]}"
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


class OutputFolder:
    """The batch output folder (module doc); use as a context manager to hold its lock."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.scenes = self.root / "scenes"
        self.staging = self.root / ".staging"
        self._lock_fd = None

    def __enter__(self) -> "OutputFolder":
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise BatchLocked(f"--out {self.root}: another comboverse batch is writing into this folder; wait for "
                              "it to end or give another --out") from None
        # Folders of an earlier run that died before their rename: never committed, so never done.
        shutil.rmtree(self.staging, ignore_errors=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def done_record(self, scene_id: str) -> dict | None:
        """``scenes/<id>/done.json`` as a dict, or None (absent or unreadable)."""
        try:
            return json.loads((self.scenes / scene_id / "done.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def is_done(self, scene_id: str, scene_hash: str) -> bool:
        rec = self.done_record(scene_id)
        return rec is not None and rec.get("hash") == scene_hash

    def commit(self, scene_id: str, files: dict[str, bytes], record: dict) -> Path:
        """Commit a finished scene's files with ``done.json`` = ``record`` (which must hold ``hash``)."""
        files = dict(files)
        files.pop("done.json", None)
        files["done.json"] = json.dumps(record, indent=1).encode()
        return commit_folder(files, self.scenes / scene_id, self.staging)

    def log_event(self, event: str, **fields) -> None:
        """Append one line to ``batch_log.jsonl`` (flushed: a crash loses at most the line being written)."""
        line = json.dumps({"time": round(time.time(), 3), "event": event, **fields}, default=str)
        with open(self.root / "batch_log.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def write_summary(self, rows: list[dict]) -> tuple[Path, Path]:
        """``summary.jsonl`` and ``summary.csv`` (columns: the union of the rows' keys, first-seen order)."""
        jsonl = "".join(json.dumps(r, default=str) + "\n" for r in rows)
        columns: list[str] = []
        for r in rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
        return (write_bytes_atomic(self.root / "summary.jsonl", jsonl.encode()),
                write_bytes_atomic(self.root / "summary.csv", buf.getvalue().encode()))

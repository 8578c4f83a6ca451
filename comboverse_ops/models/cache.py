"""One process-wide model cache, so a model used by two nodes (or two CLI stages) loads once.

Keys are ``(kind, file, dtype, device)``: the same file loaded as fp16 on the GPU and as fp32 on
the CPU are two entries. A file changed on disk (new size or mtime) is loaded again. Inside
ComfyUI the node layer loads weights onto ComfyUI's offload device and hands the module to
ComfyUI's memory manager; the CLI moves whole stages with :meth:`ModelCache.offload`. Every
model loaded through the cache computes its 1x1 convolutions as matrix products on the CPU, so
their bits do not depend on the thread count (:func:`..determinism.thread_invariant_convs`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..determinism import thread_invariant_convs

__all__ = ["ModelKey", "ModelCache", "MODEL_CACHE"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelKey:
    """What identifies a loaded model.

    Attributes:
        kind: what the file holds, e.g. ``"sam"``, ``"sd-inpaint"``, ``"triposr"``.
        file: resolved path of the weights file or folder.
        stamp: ``(size, mtime_ns)`` of that path when it was loaded.
        dtype, device: as strings, e.g. ``"torch.float16"``, ``"cuda:0"``.
    """

    kind: str
    file: str
    stamp: tuple[int, int]
    dtype: str
    device: str

    @classmethod
    def for_file(cls, kind: str, path: str | os.PathLike, dtype: torch.dtype, device) -> "ModelKey":
        p = Path(path).resolve()
        st = p.stat()
        return cls(kind, str(p), (st.st_size, st.st_mtime_ns), str(dtype), str(torch.device(device)))


class ModelCache:
    """Loaded models by :class:`ModelKey`; thread-safe; loads each key at most once at a time."""

    def __init__(self):
        self._models: dict[ModelKey, object] = {}
        self._lock = threading.RLock()

    def get(self, key: ModelKey, load: Callable[[], object]):
        """The model for ``key``, calling ``load()`` only if it is not cached yet."""
        with self._lock:
            if key in self._models:
                model = self._models[key]
                if isinstance(model, torch.nn.Module) and key.device != "meta":
                    first = next(model.parameters(), None)
                    if first is not None and first.device != torch.device(key.device):
                        model.to(key.device)  # it was offloaded by offload(); bring it back
                return model
            # An older load of the same file (changed on disk since) is dropped.
            for old in [k for k in self._models if k.kind == key.kind and k.file == key.file
                        and (k.dtype, k.device) == (key.dtype, key.device)]:
                del self._models[old]
            log.info("loading %s from %s (%s, %s)", key.kind, key.file, key.dtype, key.device)
            model = load()
            thread_invariant_convs(model)  # same bits with any CPU thread count (determinism.py)
            self._models[key] = model
            return model

    def __contains__(self, key: ModelKey) -> bool:
        return key in self._models

    def __len__(self) -> int:
        return len(self._models)

    def keys(self) -> list[ModelKey]:
        return list(self._models)

    def clear(self, kind: str | None = None) -> None:
        """Forget every model (or those of one kind)."""
        with self._lock:
            for k in [k for k in self._models if kind is None or k.kind == kind]:
                del self._models[k]

    def offload(self, keep: Callable[[ModelKey], bool] = lambda key: False, to="cpu") -> int:
        """Move ``torch.nn.Module`` models whose key ``keep`` rejects to ``to``; return how many moved.

        For the CLI: before a stage runs, the previous stages' models leave the GPU; the next
        :meth:`get` of such a key moves it back to the key's device.
        """
        moved = 0
        with self._lock:
            for key, model in self._models.items():
                if not keep(key) and isinstance(model, torch.nn.Module):
                    model.to(to)
                    moved += 1
        if moved and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return moved


MODEL_CACHE = ModelCache()

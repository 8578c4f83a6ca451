"""Where model files live, for the nodes (inside or outside ComfyUI) and the CLI alike.

The folder names inside a models folder, the suffixes a weight file may have, and the
models-folder default (``$COMBOVERSE_MODELS_DIR``, else ``./models``) are written here once;
``nodes/host.py`` adds ComfyUI's own folder registry on top, ``comboverse_ops/app/pipeline.py``
picks one file per stage from them.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MODELS_DIR_VARIABLE", "SAM_FOLDER", "TRIPOSR_FOLDER", "CHECKPOINTS_FOLDER", "CLIP_TOKENIZER_FOLDER",
           "WEIGHT_SUFFIXES", "default_models_dir", "weight_files"]

MODELS_DIR_VARIABLE = "COMBOVERSE_MODELS_DIR"
SAM_FOLDER = "sams"  # models/sams: where ComfyUI users already keep SAM .pth files (Impact Pack uses it too)
TRIPOSR_FOLDER = "triposr"  # models/triposr: TripoSR's model.ckpt (+ optionally its config.yaml)
CHECKPOINTS_FOLDER = "checkpoints"  # ComfyUI's folder of SD checkpoints (inpainting and text-to-image)
CLIP_TOKENIZER_FOLDER = "clip_tokenizer"  # a CLIP BPE tokenizer put there by hand (vocab.json + merges.txt)
WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".sft")


def default_models_dir(given: str | os.PathLike | None = None) -> Path:
    """``given``, else ``$COMBOVERSE_MODELS_DIR``, else ``./models`` (outside ComfyUI)."""
    return Path(given or os.environ.get(MODELS_DIR_VARIABLE, "models"))


def weight_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The weight files in ``folder`` (by suffix, case-insensitive), sorted by path; [] if it is missing."""
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)

"""TripoSR checkpoints as users have them: the released ``config.yaml`` + ``model.ckpt``.

Accepted weight files: the released ``model.ckpt`` (a plain ``torch.save`` state dict, read with
``weights_only=True``), and ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` conversions of it.
Key layouts: the released names; a ``{"state_dict": ...}`` wrapper; a ``model.`` prefix; the
ViT under transformers-5 names (``layers.N.attention.q_proj`` ...), mapped back.

Which config: ``config.yaml`` in the checkpoint's folder, else ``<checkpoint stem>.yaml`` next to
it, else the released configuration shipped with the pack (:data:`.config.SHIPPED_CONFIG`).

Files of other kinds (SAM, Stable Diffusion, diffusers, CLIP) are recognised by their keys and
named in the error, before any weight is copied.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.cache import MODEL_CACHE, ModelCache, ModelKey
from .config import SHIPPED_CONFIG, TripoSRConfig, load_triposr_config
from .triposr import TripoSR

__all__ = ["LoadedTripoSR", "load_triposr", "build_triposr", "read_state_dict", "find_config", "check_triposr_files",
           "WEIGHT_EXTENSIONS"]

logger = logging.getLogger(__name__)

WEIGHT_EXTENSIONS = (".ckpt", ".safetensors", ".pt", ".pth", ".bin", ".sft")
_FIX = ("put TripoSR's model.ckpt (from huggingface.co/stabilityai/TripoSR) in the models/triposr folder "
        "and select it in 'ComboVerse Load Lift3D Model'")
# Every released TripoSR checkpoint has tensors under each of these prefixes.
_TRIPOSR_PREFIXES = ("image_tokenizer.model.", "tokenizer.embeddings", "backbone.", "post_processor.upsample.",
                     "decoder.layers.")
_OTHER_KINDS = (
    ("a Segment Anything (SAM) checkpoint", ("image_encoder.", "mask_decoder.", "prompt_encoder.")),
    ("a Stable Diffusion single-file checkpoint", ("model.diffusion_model.", "first_stage_model.",
                                                   "cond_stage_model.", "conditioner.")),
    ("a diffusers UNet or VAE", ("down_blocks.", "up_blocks.", "mid_block.", "conv_in.")),
    ("a CLIP / text-encoder checkpoint", ("text_model.", "vision_model.", "transformer.resblocks.")),
)
# transformers 5 renamed the ViT modules; the released checkpoint uses the 4.x names.
_VIT_RENAMES = (
    (r"\.layers\.(\d+)\.attention\.q_proj\.", r".encoder.layer.\1.attention.attention.query."),
    (r"\.layers\.(\d+)\.attention\.k_proj\.", r".encoder.layer.\1.attention.attention.key."),
    (r"\.layers\.(\d+)\.attention\.v_proj\.", r".encoder.layer.\1.attention.attention.value."),
    (r"\.layers\.(\d+)\.attention\.o_proj\.", r".encoder.layer.\1.attention.output.dense."),
    (r"\.layers\.(\d+)\.mlp\.fc1\.", r".encoder.layer.\1.intermediate.dense."),
    (r"\.layers\.(\d+)\.mlp\.fc2\.", r".encoder.layer.\1.output.dense."),
    (r"\.layers\.(\d+)\.layernorm_", r".encoder.layer.\1.layernorm_"),
)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a weights file, on the CPU (``.safetensors`` or a ``torch.save`` file).

    ``torch.save`` files are read with ``weights_only=True`` (no code runs) and memory-mapped
    where the format allows, so looking at a large file of the wrong kind is cheap.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a plain tensor file (the message says what it found).
    """
    from ..meshio.files import check_weights_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TripoSR checkpoint not found: {str(path)!r}; {_FIX}")
    check_weights_file(path, "TripoSR checkpoint", _FIX)  # truncated or not a checkpoint: said here, cheaply
    if path.suffix.lower() in (".safetensors", ".sft"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise ValueError(f"{path}: not a readable .safetensors file ({err})") from err
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: cannot be read as a plain tensor file with weights_only=True ({first}). "
                         f"TripoSR's model.ckpt is one; this is another kind of file. {_FIX}") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (names -> tensors), got {type(obj).__name__}; {_FIX}")
    return obj


def _official_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a ``model.`` wrapper and map transformers-5 ViT names back to the released ones."""
    if sd and all(k.startswith("model.") for k in sd):
        stripped = {k[len("model."):]: v for k, v in sd.items()}
        if any(k.startswith(_TRIPOSR_PREFIXES) for k in stripped):
            sd = stripped
    out = {}
    for k, v in sd.items():
        if k.startswith("image_tokenizer.model.layers."):
            for pattern, repl in _VIT_RENAMES:
                k = re.sub(pattern, repl, k, count=1)
        out[k] = v
    return out


def _check_kind(keys, path: Path) -> None:
    """``ValueError`` naming what the file is when it is not a TripoSR checkpoint."""
    missing = [p for p in _TRIPOSR_PREFIXES if not any(k.startswith(p) for k in keys)]
    if not missing:
        return
    for what, prefixes in _OTHER_KINDS:
        if any(k.startswith(prefixes) for k in keys):
            raise ValueError(f"{path.name}: expected a TripoSR checkpoint (tensors under "
                             f"{', '.join(p.rstrip('.') for p in _TRIPOSR_PREFIXES)}), got {what} "
                             f"(tensors under {', '.join(p.rstrip('.') for p in prefixes)}); {_FIX}")
    tops = sorted({k.split(".")[0] for k in keys})[:8]
    raise ValueError(f"{path.name}: expected a TripoSR checkpoint, but it has no tensors under "
                     f"{[p.rstrip('.') for p in missing]} (its top-level names: {tops}); {_FIX}")


def find_config(ckpt_path: str | os.PathLike) -> Path:
    """The ``config.yaml`` that describes ``ckpt_path`` (module doc for the search order)."""
    ckpt_path = Path(ckpt_path)
    for candidate in (ckpt_path.parent / "config.yaml", ckpt_path.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    return SHIPPED_CONFIG


def _check_shapes(model: TripoSR, sd: dict[str, torch.Tensor], cfg: TripoSRConfig, path: Path) -> None:
    want = model.state_dict()
    fix = (f"the config ({cfg.source}) does not describe this checkpoint; put the config.yaml that came with "
           f"{path.name} next to it")
    missing = [k for k in want if k not in sd]
    if missing:
        raise ValueError(f"{path.name}: {len(missing)} tensor(s) the TripoSR config needs are missing, e.g. "
                         f"{missing[:4]} (a truncated file, or another variant: {fix})")
    extra = [k for k in sd if k not in want]
    if extra:
        raise ValueError(f"{path.name}: {len(extra)} tensor(s) are not part of the configured model, e.g. "
                         f"{extra[:4]}; {fix}")
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in want.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        k, got, expected = bad[0]
        raise ValueError(f"{path.name}: {len(bad)} tensor shape(s) differ from the config, e.g. {k}: expected "
                         f"{expected}, got {got}; {fix}")


def build_triposr(path: str | os.PathLike, config: str | os.PathLike | None = None, *, device="cpu",
                  dtype: torch.dtype = torch.float32) -> TripoSR:
    """A TripoSR model with the weights of ``path``, in eval mode, on ``device`` in ``dtype`` (no cache).

    Args:
        path: the weights file (module doc for formats and key layouts).
        config: a ``config.yaml``; default :func:`find_config`.
        device, dtype: where the parameters end up (floating-point tensors are cast to ``dtype``).
    Raises:
        FileNotFoundError: missing weights or config file.
        ValueError: a file of another kind (named), or a config that does not match the weights.
    """
    path = Path(path)
    cfg = load_triposr_config(config if config is not None else find_config(path))
    sd = _official_names(read_state_dict(path))
    _check_kind(list(sd), path)
    with torch.device("meta"):
        model = TripoSR(cfg)
    _check_shapes(model, sd, cfg, path)
    sd = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None, copy=True) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    logger.info("TripoSR loaded from %s with config %s (%s, %s)", path, cfg.source, dtype, device)
    return model.eval().requires_grad_(False)


@dataclass
class LoadedTripoSR:
    """A loaded TripoSR and where it came from (what the LIFT3D_MODEL socket carries).

    A plain holder rather than the module itself, so the shared cache never moves the module
    while ComfyUI's memory manager owns its placement.
    """

    model: TripoSR
    path: Path
    config: Path

    def to(self, device) -> "LoadedTripoSR":
        self.model.to(device)
        return self


def check_triposr_files(path: str | os.PathLike, config: str | os.PathLike | None = None) -> Path:
    """Raise what :func:`load_triposr` would for a missing, truncated or foreign weights file or a
    bad config, cheaply (the file's header and the YAML only); returns the config's path."""
    from ..meshio.files import check_weights_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TripoSR checkpoint not found: {str(path)!r}; {_FIX}")
    check_weights_file(path, "TripoSR checkpoint", _FIX)
    cfg_path = Path(config) if config is not None else find_config(path)
    load_triposr_config(cfg_path)
    return cfg_path


def load_triposr(path: str | os.PathLike, config: str | os.PathLike | None = None, *, device="cpu",
                 dtype: torch.dtype = torch.float32, cache: ModelCache | None = MODEL_CACHE) -> LoadedTripoSR:
    """:func:`build_triposr` through the shared model cache (keyed by file, config, dtype, device).

    The same file loaded twice with the same settings returns the same object; a changed file
    (or config) is loaded again.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TripoSR checkpoint not found: {str(path)!r}; {_FIX}")
    cfg_path = Path(config) if config is not None else find_config(path)

    def load():
        return LoadedTripoSR(build_triposr(path, cfg_path, device=device, dtype=dtype), path, cfg_path)

    if cache is None:
        return load()
    stamp = cfg_path.stat().st_mtime_ns if cfg_path.is_file() else 0
    return cache.get(ModelKey.for_file(f"triposr[{cfg_path}@{stamp}]", path, dtype, device), load)

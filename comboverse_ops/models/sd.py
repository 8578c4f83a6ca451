"""Stable Diffusion 1.x / 2.x loading, offline: single-file checkpoints and diffusers folders.

Used by Inpaint (9-channel inpainting UNets) and by the SSDS guidance (4-channel text-to-image
UNets). What a file holds is read from its weights (:mod:`.sd_checkpoint`), never from its name.

Single files are loaded with diffusers' ``from_single_file(config=<folder>,
local_files_only=True)``; ``<folder>`` is one of the diffusers-format config folders shipped
in :mod:`comboverse_ops.configs` (written from the published architectures: ``sd1``,
``sd1-inpainting``, ``sd2``, ``sd2-inpainting``), or one given by the caller. The text encoder
and the tokenizer come from :mod:`.sd_text`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cache import MODEL_CACHE, ModelCache, ModelKey
from .precision import model_dtype
from .sd_checkpoint import (SDCheckpointInfo, check_against_config, detect_sd_checkpoint, detect_sd_folder,
                            read_checkpoint, shipped_config_dir)
from .sd_text import (cast_module, load_clip_tokenizer, require_clip_tokenizer, text_encoder_from_folder,
                      text_encoder_from_single_file)

__all__ = ["SCHEDULERS", "SDModel", "check_sd_source", "load_sd_model", "make_scheduler"]

log = logging.getLogger(__name__)

# Samplers a user may pick; "model" is the checkpoint's own (PNDM for the SD 1/2 releases).
SCHEDULERS = ("model", "pndm", "ddim", "euler", "euler_ancestral", "dpmpp_2m")
_SCHEDULER_CLASSES = {"pndm": "PNDMScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
                      "euler_ancestral": "EulerAncestralDiscreteScheduler",
                      "dpmpp_2m": "DPMSolverMultistepScheduler"}
_KNOWN_SCHEDULERS = set(_SCHEDULER_CLASSES.values()) | {"DDPMScheduler", "LMSDiscreteScheduler",
                                                        "HeunDiscreteScheduler", "UniPCMultistepScheduler"}

_WHERE_INPAINT = ("an SD inpainting checkpoint (sd-v1-5-inpainting.ckpt / 512-inpainting-ema.safetensors, or a "
                  "diffusers folder of stable-diffusion-inpainting / stable-diffusion-2-inpainting) in ComfyUI's "
                  "models/checkpoints (or models/diffusers) folder")
_WHERE_TEXT2IMG = ("an SD 1.x/2.x text-to-image checkpoint (v1-5-pruned-emaonly.safetensors, "
                   "v2-1_512-ema-pruned.safetensors, ...) in ComfyUI's models/checkpoints folder")



# ----------------------------------------------------------------------------------------------
# Schedulers


def make_scheduler(name: str, base_config: dict):
    """A diffusers scheduler ``name`` (one of :data:`SCHEDULERS`) with the model's noise schedule.

    ``"model"`` rebuilds the scheduler class named in ``base_config["_class_name"]``.
    """
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"scheduler: expected one of {SCHEDULERS}, got {name!r}")
    cls_name = base_config.get("_class_name", "PNDMScheduler") if name == "model" else _SCHEDULER_CLASSES[name]
    if cls_name not in _KNOWN_SCHEDULERS:
        raise ValueError(f"scheduler: the model's scheduler {cls_name!r} is not one of {sorted(_KNOWN_SCHEDULERS)}")
    cls = getattr(diffusers, cls_name)
    config = dict(base_config)
    if name == "pndm":
        config["skip_prk_steps"] = True
    return cls.from_config(config)


# ----------------------------------------------------------------------------------------------
# Loading


@dataclass
class SDModel:
    """A loaded SD 1.x / 2.x model.

    Attributes:
        unet: ``diffusers.UNet2DConditionModel`` (9 input channels when ``info.inpainting``).
        vae: ``diffusers.AutoencoderKL``; latents are scaled by ``vae.config.scaling_factor``.
        text_encoder: ``transformers.CLIPTextModel`` (SD2: the penultimate OpenCLIP layer).
        tokenizer: ``transformers.CLIPTokenizer``, ``model_max_length`` 77.
        scheduler_config: the model's scheduler config (a dict); see :func:`make_scheduler`.
        info: what the file holds.
        path: the file or folder loaded.
    """

    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    info: SDCheckpointInfo
    path: Path
    config_dir: Path | None = None
    _modules: object = field(default=None, repr=False)

    def modules(self) -> torch.nn.Module:
        """The three networks in one ``ModuleDict`` (one unit for a memory manager)."""
        if self._modules is None:
            self._modules = torch.nn.ModuleDict({"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder})
        return self._modules

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device) -> "SDModel":
        self.modules().to(device)
        return self


def _no_meta(module, what: str, part: str) -> None:
    if any(p.device.type == "meta" for p in module.parameters()):
        raise ValueError(f"{what}: the {part} weights in the checkpoint do not cover the {part} of the config")


def _load_single_file(path: Path, info: SDCheckpointInfo, state, config_dir: Path, dtype, device,
                      tokenizer_dirs, what: str) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    check_against_config(state, info, config_dir, what)
    unet_kwargs = {}
    if info.prediction_type == "v_prediction" and info.family == "sd2":
        unet_kwargs["upcast_attention"] = True  # the SD 2.x 768-v releases need fp32 attention in fp16
    try:
        unet = UNet2DConditionModel.from_single_file(state, config=str(config_dir), subfolder="unet",
                                                     local_files_only=True, **unet_kwargs)
        vae = AutoencoderKL.from_single_file(state, config=str(config_dir), subfolder="vae", local_files_only=True)
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"{what}: the weights do not fit the config {config_dir} ({type(e).__name__}: "
                         f"{str(e)[:300]})") from None
    _no_meta(unet, what, "UNet")
    _no_meta(vae, what, "VAE")
    unet, vae = cast_module(unet, dtype), cast_module(vae, dtype)
    text_encoder = text_encoder_from_single_file(state, config_dir, info.family, dtype, what)
    tokenizer = load_clip_tokenizer([*tokenizer_dirs, path.parent / "tokenizer", config_dir / "tokenizer"],
                                    info.family, text_encoder.config.max_position_embeddings, what=what)
    sched = json.loads((config_dir / "scheduler" / "scheduler_config.json").read_text())
    sched["prediction_type"] = info.prediction_type
    return SDModel(unet.to(device).eval(), vae.to(device).eval(), text_encoder.to(device), tokenizer, sched, info,
                   path, config_dir)


def _load_folder(path: Path, info: SDCheckpointInfo, dtype, device, tokenizer_dirs, what: str) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    def variant(sub):
        names = [p.name for p in (path / sub).iterdir()]
        plain = any(n in names for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"))
        return None if plain or "diffusion_pytorch_model.fp16.safetensors" not in names else "fp16"

    try:
        unet = cast_module(UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", local_files_only=True,
                                                          variant=variant("unet")), dtype)
        vae = cast_module(AutoencoderKL.from_pretrained(str(path), subfolder="vae", local_files_only=True,
                                                  variant=variant("vae")), dtype)
    except (OSError, EnvironmentError) as e:
        raise FileNotFoundError(f"{what}: could not read the UNet/VAE weights in {path} ({e})") from None
    text_encoder = text_encoder_from_folder(path / "text_encoder", dtype, what)
    tokenizer = load_clip_tokenizer([path / "tokenizer", *tokenizer_dirs], info.family,
                                    text_encoder.config.max_position_embeddings, what=what)
    sched_path = path / "scheduler" / "scheduler_config.json"
    if sched_path.is_file():
        sched = json.loads(sched_path.read_text())
    else:
        sched = json.loads((shipped_config_dir(info.config_name) / "scheduler" / "scheduler_config.json").read_text())
    sched["prediction_type"] = info.prediction_type
    return SDModel(unet.to(device).eval(), vae.to(device).eval(), text_encoder.to(device), tokenizer, sched, info,
                   path, None)


def load_sd_model(path: str | os.PathLike, *, expect: str | None = None, device="cpu",
                  dtype: torch.dtype | None = None, config_dir: str | os.PathLike | None = None,
                  tokenizer_dirs=(), prediction_type: str = "auto", what: str = "SD model",
                  cache: ModelCache | None = MODEL_CACHE) -> SDModel:
    """Load an SD 1.x / 2.x model from a single file or a diffusers folder, offline.

    Args:
        path: a ``.safetensors`` / ``.ckpt`` file in the original layout, or a diffusers folder.
        expect: ``"inpainting"``, ``"text2img"`` or None (either); a different kind is an error.
        device: where the networks go.
        dtype: default float16 on CUDA, float32 elsewhere.
        config_dir: a diffusers-format config folder (model_index.json, unet/, vae/,
            text_encoder/, scheduler/) for single files; default the shipped one for the kind of
            model detected (:func:`shipped_config_dir`).
        tokenizer_dirs: folders to look in for the CLIP tokenizer first (then ``tokenizer/`` next
            to the checkpoint, in the diffusers folder, or in ``config_dir``).
        prediction_type: ``"auto"``, ``"epsilon"`` or ``"v_prediction"``.
        cache: the shared model cache (None: always load).
    Returns:
        :class:`SDModel` with the networks in eval mode on ``device``.
    """
    path = Path(path)
    device = torch.device(device)
    if dtype is None:
        dtype = model_dtype("auto", device)
    if expect not in (None, "inpainting", "text2img"):
        raise ValueError(f"expect: expected 'inpainting', 'text2img' or None, got {expect!r}")
    if not path.exists():
        where = _WHERE_TEXT2IMG if expect == "text2img" else _WHERE_INPAINT
        raise FileNotFoundError(f"{what}: no file or folder at {path}; expected {where}")
    config_dir = Path(config_dir) if config_dir else None
    if config_dir is not None and not (config_dir / "unet" / "config.json").is_file():
        raise FileNotFoundError(f"{what}: config folder {config_dir} has no unet/config.json; expected a "
                                "diffusers-format config folder (model_index.json, unet/, vae/, text_encoder/, "
                                "scheduler/)")

    def load():
        if path.is_dir():
            info = detect_sd_folder(path, prediction_type=prediction_type, what=f"{what} {path.name}")
            _check_expected(info, expect, path, what)
            return _load_folder(path, info, dtype, device, tokenizer_dirs, f"{what} {path.name}")
        state = read_checkpoint(path, what=f"{what} {path.name}")
        info = detect_sd_checkpoint(state, prediction_type=prediction_type, what=f"{what} {path.name}")
        _check_expected(info, expect, path, what)
        cfg = config_dir or shipped_config_dir(info.config_name)
        return _load_single_file(path, info, state, cfg, dtype, device, tokenizer_dirs, f"{what} {path.name}")

    if cache is None:
        return load()
    kind = "sd" + (f"[{expect}]" if expect else "") + (f"[{config_dir}]" if config_dir else "") + \
        (f"[{prediction_type}]" if prediction_type != "auto" else "")
    return cache.get(ModelKey.for_file(kind, path, dtype, device), load)


def _check_expected(info: SDCheckpointInfo, expect: str | None, path: Path, what: str) -> None:
    if expect == "inpainting" and not info.inpainting:
        raise ValueError(f"{what}: {path.name} is an {info.describe()} model; inpainting needs a 9-channel "
                         f"inpainting model: {_WHERE_INPAINT}")
    if expect == "text2img" and info.inpainting:
        raise ValueError(f"{what}: {path.name} is an {info.describe()} model; expected {_WHERE_TEXT2IMG}")


def check_sd_source(path: str | os.PathLike, *, expect: str | None = None, config_dir: str | os.PathLike | None = None,
                    tokenizer_dirs=(), what: str = "SD model") -> None:
    """Raise what :func:`load_sd_model` would for a missing or damaged file, config folder or
    tokenizer, cheaply (headers and JSON files only, no weights), so that a run fails before its
    first model runs rather than minutes later."""
    from ..meshio.files import check_weights_file

    path = Path(path)
    if not path.exists():
        where = _WHERE_TEXT2IMG if expect == "text2img" else _WHERE_INPAINT
        raise FileNotFoundError(f"{what}: no file or folder at {path}; expected {where}")
    if config_dir and not (Path(config_dir) / "unet" / "config.json").is_file():
        raise FileNotFoundError(f"{what}: config folder {config_dir} has no unet/config.json; expected a "
                                "diffusers-format config folder (model_index.json, unet/, vae/, text_encoder/, "
                                "scheduler/)")
    if path.is_dir():
        info = detect_sd_folder(path, what=f"{what} {path.name}")
        _check_expected(info, expect, path, what)
        for sub in ("unet", "vae", "text_encoder"):
            weights = sorted(p for p in (path / sub).glob("*") if p.suffix in (".safetensors", ".bin"))
            if not weights:
                raise FileNotFoundError(f"{what}: no weights in {path / sub} (expected a .safetensors or .bin file)")
            for w in weights:
                check_weights_file(w, what)
        require_clip_tokenizer([path / "tokenizer", *tokenizer_dirs], what)
    else:
        check_weights_file(path, what, f"Expected {_WHERE_TEXT2IMG if expect == 'text2img' else _WHERE_INPAINT}")
        require_clip_tokenizer([*tokenizer_dirs, path.parent / "tokenizer",
                                 *([Path(config_dir) / "tokenizer"] if config_dir else [])], what)

"""What an SD 1.x / 2.x file or diffusers folder holds, read from its weights, never from its name.

- inpainting vs text-to-image: the UNet's input convolution has 9 channels (4 latent + 4 masked
  image latent + 1 mask) or 4;
- SD1 vs SD2: the text encoder's keys: SD1 checkpoints carry a Hugging Face CLIP-L
  (``cond_stage_model.transformer.…``), SD2 ones an OpenCLIP ViT-H text tower
  (``cond_stage_model.model.…``);
- SDXL, SD3, Flux, UNet-only files, LoRAs, VAEs and diffusers component files are recognised
  and rejected with a message that says what the file is.

The diffusers-format config folders shipped in :mod:`comboverse_ops.configs` (``sd1``,
``sd1-inpainting``, ``sd2``, ``sd2-inpainting``) are found here too (:func:`shipped_config_dir`).
Loading is :mod:`.sd`'s job.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CONFIG_ROOT", "SD1_TEXT", "SD2_TEXT", "SDCheckpointInfo", "check_against_config", "detect_sd_checkpoint",
           "detect_sd_folder", "read_checkpoint", "shipped_config_dir"]

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"

# Original (LDM / ComfyUI checkpoint) key layout.
_UNET = "model.diffusion_model."
_UNET_IN = _UNET + "input_blocks.0.0.weight"
_VAE = "first_stage_model."
SD1_TEXT = "cond_stage_model.transformer."
SD2_TEXT = "cond_stage_model.model."
_ATTN2_K = re.compile(r"^model\.diffusion_model\..*\.attn2\.to_k\.weight$")


@dataclass(frozen=True)
class SDCheckpointInfo:
    """What an SD file or folder holds.

    Attributes:
        family: ``"sd1"`` or ``"sd2"``.
        inpainting: True for a 9-channel (inpainting) UNet, False for 4 channels (text-to-image).
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        source: ``"single_file"`` or ``"diffusers"``.
    """

    family: str
    inpainting: bool
    prediction_type: str = "epsilon"
    source: str = "single_file"

    @property
    def config_name(self) -> str:
        """Name of the shipped config folder for this kind of model."""
        return self.family + ("-inpainting" if self.inpainting else "")

    def describe(self) -> str:
        kind = "inpainting (9-channel UNet)" if self.inpainting else "text-to-image (4-channel UNet)"
        return f"{self.family.upper()} {kind}, {self.prediction_type}"


def shipped_config_dir(name: str) -> Path:
    """The diffusers-format config folder shipped for ``name`` (e.g. ``"sd2-inpainting"``)."""
    path = CONFIG_ROOT / name
    if not (path / "model_index.json").is_file():
        known = sorted(p.name for p in CONFIG_ROOT.iterdir() if (p / "model_index.json").is_file())
        raise ValueError(f"no shipped SD config named {name!r}; expected one of {known}")
    return path


# ----------------------------------------------------------------------------------------------
# Reading and recognising checkpoints


def read_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` / ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` file, on the CPU.

    Pickled files are read with ``weights_only=True`` (no code runs); a ``"state_dict"`` wrapper
    (PyTorch Lightning) is unwrapped.
    """
    from ..meshio.files import check_weights_file

    path = check_weights_file(path, what)  # damaged, truncated or not a checkpoint: said here, cheaply
    if path.suffix.lower() in (".safetensors", ".sft"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{what}: {path.name} is not a readable safetensors file ({e})") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for corrupt files / pickled code
            if "weights_only" not in str(e).lower():  # not pickled code: the file itself is damaged
                raise ValueError(f"{what}: {path} is not a valid checkpoint ({type(e).__name__}: "
                                 f"{str(e).strip()[:200]}); the file is damaged, download it again") from None
            raise ValueError(f"{what}: {path.name} could not be read as weights only ({type(e).__name__}: {e}). "
                             "If it is a trusted checkpoint that pickles extra objects, convert it to "
                             ".safetensors first") from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{what}: {path.name} holds no tensors (got {type(state).__name__})")
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def _what_else(keys: list[str]) -> str | None:
    """A description of a file that is not an SD 1/2 checkpoint, or None when it may be one."""
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    contains = lambda part: any(part in k for k in keys)  # noqa: E731
    if has("conditioner.embedders."):
        return "an SDXL checkpoint (two text encoders under conditioner.embedders); SDXL is not supported"
    if contains("double_blocks.") or contains("single_blocks."):
        return "a Flux model; Flux is not supported"
    if contains("joint_blocks."):
        return "an SD3 model; SD3 is not supported"
    if has(_UNET + "label_emb."):
        return "an SDXL or unCLIP UNet (it has a label embedding); not supported"
    if has("lora_") or contains(".lora_down.") or contains(".lora_A.") or contains("lora_unet"):
        return "a LoRA, not a full checkpoint"
    if has("input_blocks.") and has("out."):
        return ("a UNet-only file (ComfyUI's models/diffusion_models or unet folder); a full checkpoint with VAE and "
                "text encoder is needed")
    if has("conv_in.") and has("down_blocks.") and not has(_UNET):
        return ("one component of a diffusers folder (diffusion_pytorch_model.*); choose the whole diffusers folder "
                "instead")
    if has("encoder.") and has("decoder.") and not has(_UNET):
        return "a VAE only"
    if has("text_model.") or has("embeddings.token_embedding"):
        return "a text encoder only"
    return None


def _context_dim(state: dict[str, torch.Tensor]) -> int | None:
    for k, v in state.items():
        if _ATTN2_K.match(k):
            return int(v.shape[1])
    return None


def detect_sd_checkpoint(state: dict[str, torch.Tensor], *, prediction_type: str = "auto",
                         what: str = "checkpoint") -> SDCheckpointInfo:
    """Recognise an SD 1.x / 2.x single-file checkpoint in the original (LDM / ComfyUI) key layout.

    Args:
        state: the file's tensors (:func:`read_checkpoint`).
        prediction_type: ``"auto"``, ``"epsilon"`` or ``"v_prediction"``. Auto is epsilon for
            SD1 and for inpainting models (all released SD inpainting models are epsilon) and
            guessed from the weights for SD2 text-to-image (see :func:`_guess_sd2_prediction`).
    Raises:
        ValueError: for anything else, saying what the file seems to be.
    """
    keys = list(state)
    if _UNET_IN not in state:
        other = _what_else(keys)
        raise ValueError(f"{what}: not a Stable Diffusion 1.x/2.x checkpoint: it looks like "
                         f"{other or 'an unknown model'} (no {_UNET_IN!r} key)")
    other = _what_else([k for k in keys if not k.startswith((_UNET, _VAE, "cond_stage_model.", "model_ema."))])
    if other is not None and other.startswith(("an SDXL", "a Flux", "an SD3")):
        raise ValueError(f"{what}: not a Stable Diffusion 1.x/2.x checkpoint: it looks like {other}")
    if any(k.startswith(_UNET + "label_emb.") for k in keys):
        raise ValueError(f"{what}: not a Stable Diffusion 1.x/2.x checkpoint: it looks like an SDXL or unCLIP UNet "
                         "(it has a label embedding); not supported")
    in_channels = int(state[_UNET_IN].shape[1])
    if in_channels not in (4, 9):
        raise ValueError(f"{what}: the UNet takes {in_channels} input channels; expected 9 (inpainting) or 4 "
                         "(text-to-image). Other variants (instruct-pix2pix: 8, depth2img: 5, upscalers: 7) are "
                         "not supported")
    if not any(k.startswith(_VAE) for k in keys):
        raise ValueError(f"{what}: the checkpoint has a UNet but no VAE (no {_VAE!r} keys); a full checkpoint with "
                         "VAE and text encoder is needed")
    if any(k.startswith(SD2_TEXT) for k in keys):
        family = "sd2"
    elif any(k.startswith(SD1_TEXT) for k in keys):
        family = "sd1"
    else:
        raise ValueError(f"{what}: the checkpoint has no text encoder (no {SD1_TEXT!r} or {SD2_TEXT!r} keys); a "
                         "full checkpoint with VAE and text encoder is needed")
    inpainting = in_channels == 9
    if prediction_type == "auto":
        prediction_type = "epsilon"
        if family == "sd2" and not inpainting:
            prediction_type = _guess_sd2_prediction(state)
    elif prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type: expected 'auto', 'epsilon' or 'v_prediction', got {prediction_type!r}")
    return SDCheckpointInfo(family, inpainting, prediction_type, "single_file")


def _guess_sd2_prediction(state: dict[str, torch.Tensor]) -> str:
    """SD 2.x 768 models predict v, the 512 "base" ones epsilon; the weights give a hint.

    The v-prediction releases were fine-tuned long enough that the bias of the last output
    block's first transformer norm grew clearly away from zero (population std above ~0.09),
    which the epsilon releases' did not; a well-known community heuristic. Pass
    ``prediction_type`` explicitly when it guesses wrong.
    """
    bias = state.get(_UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias")
    if bias is not None and float(bias.float().std(unbiased=False)) > 0.09:
        return "v_prediction"
    return "epsilon"


def detect_sd_folder(folder: str | os.PathLike, *, prediction_type: str = "auto",
                     what: str = "diffusers folder") -> SDCheckpointInfo:
    """Recognise a diffusers-format SD 1.x / 2.x folder from its config files."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{what}: {folder} has no model_index.json; expected a diffusers pipeline folder")
    index = json.loads(index_path.read_text())
    name = str(index.get("_class_name", ""))
    if "XL" in name or "text_encoder_2" in index or (folder / "text_encoder_2").is_dir():
        raise ValueError(f"{what}: {folder.name} is an SDXL pipeline ({name or 'two text encoders'}); SDXL is not "
                         "supported")
    for sub in ("unet", "vae", "text_encoder"):
        if not (folder / sub / "config.json").is_file():
            raise ValueError(f"{what}: {folder.name} has no {sub}/config.json (pipeline {name!r}); expected a Stable "
                             "Diffusion 1.x/2.x folder with unet, vae, text_encoder and tokenizer")
    unet = json.loads((folder / "unet" / "config.json").read_text())
    if unet.get("_class_name") != "UNet2DConditionModel":
        raise ValueError(f"{what}: {folder.name}'s unet is a {unet.get('_class_name')}; expected a "
                         "UNet2DConditionModel (SD 1.x/2.x)")
    if unet.get("addition_embed_type") or unet.get("class_embed_type"):
        raise ValueError(f"{what}: {folder.name}'s UNet has extra conditioning (SDXL / unCLIP); not supported")
    in_channels = int(unet.get("in_channels", 4))
    if in_channels not in (4, 9):
        raise ValueError(f"{what}: {folder.name}'s UNet takes {in_channels} input channels; expected 9 (inpainting) "
                         "or 4 (text-to-image)")
    text = json.loads((folder / "text_encoder" / "config.json").read_text())
    hidden = int(text.get("hidden_size", text.get("text_config", {}).get("hidden_size", 0)))
    family = "sd2" if text.get("hidden_act") == "gelu" or hidden == 1024 else "sd1"
    if prediction_type == "auto":
        sched_path = folder / "scheduler" / "scheduler_config.json"
        sched = json.loads(sched_path.read_text()) if sched_path.is_file() else {}
        prediction_type = sched.get("prediction_type", "epsilon")
    return SDCheckpointInfo(family, in_channels == 9, prediction_type, "diffusers")


def check_against_config(state, info: SDCheckpointInfo, config_dir: Path, what: str) -> dict:
    """The config folder's UNet config, after checking that the checkpoint ``state`` fits it (input
    channels, width, cross-attention width); ``ValueError`` naming both otherwise."""
    unet_cfg = json.loads((config_dir / "unet" / "config.json").read_text())
    conv = state[_UNET_IN]
    expect_in, expect_ch = int(unet_cfg.get("in_channels", 4)), int(unet_cfg["block_out_channels"][0])
    if conv.shape[1] != expect_in or conv.shape[0] != expect_ch:
        raise ValueError(f"{what}: the checkpoint's UNet input convolution is {tuple(conv.shape)} but the config "
                         f"{config_dir} expects {expect_in} input and {expect_ch} output channels; pass the config "
                         "folder that matches this architecture")
    context = _context_dim(state)
    if context is not None and context != int(unet_cfg["cross_attention_dim"]):
        raise ValueError(f"{what}: the checkpoint's cross-attention is {context} wide but the config {config_dir} "
                         f"says {unet_cfg['cross_attention_dim']}; pass the config folder that matches")
    return unet_cfg

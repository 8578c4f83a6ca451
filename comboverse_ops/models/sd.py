"""Stable Diffusion 1.x / 2.x loading, offline: single-file checkpoints and diffusers folders.

Used by Inpaint (9-channel inpainting UNets) and by the SSDS guidance (4-channel text-to-image
UNets). What a file holds is read from its weights, never from its name:

- inpainting vs text-to-image: the UNet's input convolution has 9 channels (4 latent + 4 masked
  image latent + 1 mask) or 4;
- SD1 vs SD2: the text encoder's keys: SD1 checkpoints carry a Hugging Face CLIP-L
  (``cond_stage_model.transformer.…``), SD2 ones an OpenCLIP ViT-H text tower
  (``cond_stage_model.model.…``);
- SDXL, SD3, Flux, UNet-only files, LoRAs, VAEs and diffusers component files are recognised
  and rejected with a message that says what the file is.

Single files are loaded with diffusers' ``from_single_file(config=<folder>,
local_files_only=True)``; ``<folder>`` is one of the diffusers-format config folders shipped
in :mod:`comboverse_ops.configs` (written from the published architectures: ``sd1``,
``sd1-inpainting``, ``sd2``, ``sd2-inpainting``), or one given by the caller. The text encoder is
converted by this module (both the original SD1 and OpenCLIP layouts) and loaded strictly into
``transformers.CLIPTextModel``, whichever key layout that transformers version uses
(transformers 5.x dropped the ``text_model.`` prefix). The CLIP BPE tokenizer files cannot be
shipped or downloaded: they are looked up in folders the caller names (the ComfyUI node passes
ComfyUI's own ``comfy/sd1_tokenizer``), see :func:`find_clip_tokenizer`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cache import MODEL_CACHE, ModelCache, ModelKey
from .precision import model_dtype

__all__ = [
    "CONFIG_ROOT",
    "SCHEDULERS",
    "SDCheckpointInfo",
    "SDModel",
    "check_sd_source",
    "detect_sd_checkpoint",
    "detect_sd_folder",
    "find_clip_tokenizer",
    "load_clip_tokenizer",
    "load_sd_model",
    "make_scheduler",
    "read_checkpoint",
    "shipped_config_dir",
]

log = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"

# Original (LDM / ComfyUI checkpoint) key layout.
_UNET = "model.diffusion_model."
_UNET_IN = _UNET + "input_blocks.0.0.weight"
_VAE = "first_stage_model."
_SD1_TEXT = "cond_stage_model.transformer."
_SD2_TEXT = "cond_stage_model.model."
_ATTN2_K = re.compile(r"^model\.diffusion_model\..*\.attn2\.to_k\.weight$")

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
    if any(k.startswith(_SD2_TEXT) for k in keys):
        family = "sd2"
    elif any(k.startswith(_SD1_TEXT) for k in keys):
        family = "sd1"
    else:
        raise ValueError(f"{what}: the checkpoint has no text encoder (no {_SD1_TEXT!r} or {_SD2_TEXT!r} keys); a "
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


# ----------------------------------------------------------------------------------------------
# Text encoder: original layouts -> transformers CLIPTextModel (either key layout)


def _sd1_text_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k.startswith(_SD1_TEXT):
            rest = k[len(_SD1_TEXT):]
            out[rest if rest.startswith("text_model.") else "text_model." + rest] = v
    return out


_OPEN_CLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _sd2_text_state(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """OpenCLIP's text tower (SD2 checkpoints) in transformers' CLIP names.

    SD2 conditions on the penultimate layer: the diffusers config has one layer fewer than the
    checkpoint (23 of 24), and the last one is not loaded.
    """
    src = {k[len(_SD2_TEXT):]: v for k, v in state.items() if k.startswith(_SD2_TEXT)}
    out = {"text_model.embeddings.token_embedding.weight": src["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": src["positional_embedding"],
           "text_model.final_layer_norm.weight": src["ln_final.weight"],
           "text_model.final_layer_norm.bias": src["ln_final.bias"]}
    for i in range(num_layers):
        pre, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        if pre + "attn.in_proj_weight" not in src:
            raise KeyError(pre + "attn.in_proj_weight")
        for a, b in _OPEN_CLIP_LAYER.items():
            for p in ("weight", "bias"):
                out[f"{dst}{b}.{p}"] = src[f"{pre}{a}.{p}"]
        for p in ("weight", "bias"):
            q, k, v = src[f"{pre}attn.in_proj_{p}"].chunk(3, dim=0)
            out[f"{dst}self_attn.q_proj.{p}"], out[f"{dst}self_attn.k_proj.{p}"] = q, k
            out[f"{dst}self_attn.v_proj.{p}"] = v
    return out


def _load_clip_text_state(model, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``text_model.``-prefixed or flat CLIP text keys into ``model`` (either layout), strictly."""
    target = model.state_dict().keys()
    prefixed = any(k.startswith("text_model.") for k in target)
    fitted = {}
    for k, v in state.items():
        bare = k[len("text_model."):] if k.startswith("text_model.") else k
        fitted["text_model." + bare if prefixed else bare] = v
    fitted = {k: v for k, v in fitted.items() if k in target}
    missing = [k for k in target if k not in fitted and not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"{what}: the text encoder weights lack {len(missing)} tensors the config expects, e.g. "
                         f"{missing[:3]}; the checkpoint and the config do not match")
    try:
        model.load_state_dict(fitted, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{what}: the text encoder weights do not fit the config: {str(e)[:400]}") from None


def _text_encoder_from_single_file(state, config_dir: Path, family: str, dtype, what: str):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder"), local_files_only=True)
    model = CLIPTextModel(config)
    try:
        text_state = _sd1_text_state(state) if family == "sd1" else _sd2_text_state(state, config.num_hidden_layers)
    except KeyError as e:
        raise ValueError(f"{what}: the text encoder lacks {e.args[0]!r} (the config asks for "
                         f"{config.num_hidden_layers} layers)") from None
    _load_clip_text_state(model, text_state, what)
    return _cast(model, dtype).eval()


def _read_component_weights(folder: Path, what: str) -> dict[str, torch.Tensor]:
    for name in ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin"):
        if (folder / name).is_file():
            return read_checkpoint(folder / name, what=what)
    shards = sorted(folder.glob("model-*.safetensors"))
    if shards:
        out = {}
        for s in shards:
            out.update(read_checkpoint(s, what=what))
        return out
    raise FileNotFoundError(f"{what}: no weights in {folder} (expected model.safetensors or pytorch_model.bin)")


def _text_encoder_from_folder(folder: Path, dtype, what: str):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(str(folder), local_files_only=True)
    model = CLIPTextModel(config)
    _load_clip_text_state(model, _read_component_weights(folder, what), what)
    return _cast(model, dtype).eval()


# ----------------------------------------------------------------------------------------------
# Tokenizer


def find_clip_tokenizer(candidates) -> Path | None:
    """The first folder in ``candidates`` that holds a CLIP BPE tokenizer.

    A tokenizer folder has ``vocab.json`` and ``merges.txt`` (what ComfyUI ships in
    ``comfy/sd1_tokenizer``, and what transformers 4.x writes) or ``tokenizer.json`` (what
    transformers 5.x writes). Folders that do not exist are skipped.
    """
    for c in candidates:
        if c is None:
            continue
        p = Path(c)
        if (p / "tokenizer.json").is_file() or ((p / "vocab.json").is_file() and (p / "merges.txt").is_file()):
            return p
    return None


def _require_clip_tokenizer(candidates, what: str) -> Path:
    """:func:`find_clip_tokenizer`, else the vocabulary of an installed ``open_clip_torch``
    (:mod:`.clip_vocab`); raises ``FileNotFoundError`` (says where to put one) if neither."""
    folder = find_clip_tokenizer(candidates)
    if folder is None:  # last: the vocabulary open_clip_torch ships (the same tokens, clip_vocab.py)
        from .clip_vocab import packaged_clip_tokenizer_dir

        folder = packaged_clip_tokenizer_dir()
    if folder is None:
        looked = [str(c) for c in candidates if c is not None]
        raise FileNotFoundError(
            f"{what}: no CLIP tokenizer found (looked in {looked}). The pack cannot download it: install the CLIP "
            "vocabulary with `pip install open_clip_torch` (the extra comboverse[clip-vocab]), or put vocab.json and "
            "merges.txt (or tokenizer.json) of openai/clip-vit-large-patch14 into a folder named 'tokenizer' next to "
            "the checkpoint (or into the diffusers folder's tokenizer/). Inside ComfyUI the tokenizer that ships with "
            "ComfyUI (comfy/sd1_tokenizer) is used automatically")
    return folder


def load_clip_tokenizer(candidates, family: str, max_length: int = 77, *, what: str = "tokenizer"):
    """A ``transformers.CLIPTokenizer`` from the first usable folder in ``candidates``.

    SD2's OpenCLIP text tower was trained with "!" (id 0) as padding, SD1's with the end token;
    the tokenizer pads accordingly whatever its folder says.
    """
    folder = _require_clip_tokenizer(candidates, what)
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    kwargs = {"model_max_length": max_length}
    if family == "sd2":
        kwargs["pad_token"] = "!"
    # transformers 4.x's CLIPTokenizer reads only vocab.json + merges.txt; the fast one reads tokenizer.json.
    bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    cls = CLIPTokenizer if bpe else CLIPTokenizerFast
    tok = cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
    if family == "sd1" and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


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


def _check_against_config(state, info: SDCheckpointInfo, config_dir: Path, what: str) -> dict:
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


def _cast(module, dtype: torch.dtype):
    """``module`` in ``dtype`` (diffusers' ``.to(dtype)`` logs a spurious warning, ``.half()`` & co. do not)."""
    cast = {torch.float16: module.half, torch.bfloat16: module.bfloat16, torch.float32: module.float}.get(dtype)
    if cast is None:
        raise ValueError(f"dtype: expected float16, bfloat16 or float32, got {dtype}")
    return cast()


def _no_meta(module, what: str, part: str) -> None:
    if any(p.device.type == "meta" for p in module.parameters()):
        raise ValueError(f"{what}: the {part} weights in the checkpoint do not cover the {part} of the config")


def _load_single_file(path: Path, info: SDCheckpointInfo, state, config_dir: Path, dtype, device,
                      tokenizer_dirs, what: str) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    _check_against_config(state, info, config_dir, what)
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
    unet, vae = _cast(unet, dtype), _cast(vae, dtype)
    text_encoder = _text_encoder_from_single_file(state, config_dir, info.family, dtype, what)
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
        unet = _cast(UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", local_files_only=True,
                                                          variant=variant("unet")), dtype)
        vae = _cast(AutoencoderKL.from_pretrained(str(path), subfolder="vae", local_files_only=True,
                                                  variant=variant("vae")), dtype)
    except (OSError, EnvironmentError) as e:
        raise FileNotFoundError(f"{what}: could not read the UNet/VAE weights in {path} ({e})") from None
    text_encoder = _text_encoder_from_folder(path / "text_encoder", dtype, what)
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
        _require_clip_tokenizer([path / "tokenizer", *tokenizer_dirs], what)
    else:
        check_weights_file(path, what, f"Expected {_WHERE_TEXT2IMG if expect == 'text2img' else _WHERE_INPAINT}")
        _require_clip_tokenizer([*tokenizer_dirs, path.parent / "tokenizer",
                                 *([Path(config_dir) / "tokenizer"] if config_dir else [])], what)

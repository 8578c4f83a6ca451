"""ComboVerse Load Guidance Model: the text-to-image SD model for SSDSRefine's score distillation."""

from __future__ import annotations

from pathlib import Path

from ..comboverse_ops.models.precision import PRECISION_TOOLTIP, PRECISIONS, model_dtype
from . import host
from .host import GUIDANCE_MODEL

NODE_NAME = "ComboVerse Load Guidance Model"


class LoadGuidanceModel:
    DESCRIPTION = ("Loads a Stable Diffusion 1.x/2.x text-to-image model offline for ComboVerse SSDSRefine's "
                   "spatially-aware score distillation: a single .safetensors/.ckpt in models/checkpoints (e.g. "
                   "v1-5-pruned-emaonly.safetensors, v2-1_512-ema-pruned.safetensors) or a diffusers folder in "
                   "models/diffusers. Inpainting, SDXL, Flux and other checkpoints are refused with a message. fp16 "
                   "on the GPU (bf16 if chosen), fp32 on the CPU. Loaded once and shared; ComfyUI moves it to the "
                   "GPU when needed.")
    CATEGORY = "ComboVerse/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (GUIDANCE_MODEL,)
    RETURN_NAMES = ("guidance_model",)
    OUTPUT_TOOLTIPS = ("The SD text-to-image model (UNet, VAE, text encoder, tokenizer), for SSDSRefine.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": (host.sd_model_choices(),
                              {"tooltip": "An SD 1.x/2.x text-to-image checkpoint (4-channel UNet). SD-2.1-base "
                                          "(v2-1_512-ema-pruned) is what a re-implementation used; SD 1.5 works too. "
                                          "'diffusers/<name>' entries are diffusers folders."}),
            },
            "optional": {
                "precision": (list(PRECISIONS), {"default": "auto", "tooltip": PRECISION_TOOLTIP}),
                "config_dir": ("STRING", {"default": "",
                                          "tooltip": "Leave empty: the config shipped with the pack for the detected "
                                                     "model is used. Or the path of a diffusers-format config folder "
                                                     "(unet/, vae/, text_encoder/, scheduler/) for a checkpoint of "
                                                     "another SD 1.x/2.x-style architecture."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name=None, config_dir=""):
        from ..comboverse_ops.models.sd import check_sd_source

        return ckpt_name is None or host.validation(lambda: check_sd_source(
            host.resolve_sd_model(ckpt_name, NODE_NAME), expect="text2img",
            config_dir=(config_dir or "").strip() or None, tokenizer_dirs=host.clip_tokenizer_dirs(), what=NODE_NAME))

    def load(self, ckpt_name, precision="auto", config_dir=""):
        from ..comboverse_ops.models.sd import load_sd_model

        path = host.resolve_sd_model(ckpt_name, NODE_NAME)
        load_device, offload = host.model_devices()
        dtype = model_dtype(precision, load_device, f"{NODE_NAME}: precision")
        model = load_sd_model(path, expect="text2img", device=offload, dtype=dtype,
                              config_dir=Path(config_dir.strip()) if config_dir and config_dir.strip() else None,
                              tokenizer_dirs=host.clip_tokenizer_dirs(), what=NODE_NAME)
        return (model,)

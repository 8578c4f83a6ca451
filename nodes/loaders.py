"""ComboVerse Load SAM / Load Inpaint Model: model files from ComfyUI's model folders, loaded once."""

from __future__ import annotations

from pathlib import Path

from ..comboverse_ops.models.precision import model_dtype
from . import host
from .host import INPAINT_MODEL, SAM_MODEL


class LoadSAM:
    DESCRIPTION = ("Loads an official Segment Anything checkpoint (vit_b, vit_l or vit_h; the architecture is read "
                   "from the weights) from ComfyUI's models/sams folder, for ComboVerse Segment and Inpaint. "
                   "Loaded once and shared; ComfyUI moves it to the GPU when needed.")
    CATEGORY = "ComboVerse/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (SAM_MODEL,)
    RETURN_NAMES = ("sam",)
    OUTPUT_TOOLTIPS = ("The SAM model, for ComboVerse Segment (and Inpaint's re-segmentation).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sam_name": (host.model_files(host.SAM_FOLDER),
                         {"tooltip": "A SAM checkpoint in models/sams: sam_vit_h_4b8939.pth (best), "
                                     "sam_vit_l_0b3195.pth or sam_vit_b_01ec64.pth (fastest)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, sam_name=None):
        from ..comboverse_ops.meshio.files import check_weights_file

        node = "ComboVerse Load SAM"
        return sam_name is None or host.validation(lambda: check_weights_file(
            host.resolve_model_file(host.SAM_FOLDER, sam_name, node), node))

    def load(self, sam_name):
        from ..comboverse_ops.models.sam import load_sam

        path = host.resolve_model_file(host.SAM_FOLDER, sam_name, "ComboVerse Load SAM")
        _, offload = host.model_devices()
        return (load_sam(path, device=offload),)


class LoadInpaintModel:
    DESCRIPTION = ("Loads a Stable Diffusion inpainting model offline for ComboVerse Inpaint: SD-1.5-inpainting or "
                   "SD-2-inpainting as a single .safetensors/.ckpt in models/checkpoints, or a diffusers folder in "
                   "models/diffusers. Text-to-image, SDXL and other checkpoints are refused with a message. fp16 on "
                   "the GPU, fp32 on the CPU.")
    CATEGORY = "ComboVerse/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (INPAINT_MODEL,)
    RETURN_NAMES = ("inpaint_model",)
    OUTPUT_TOOLTIPS = ("The SD inpainting model (UNet, VAE, text encoder, tokenizer), for ComboVerse Inpaint.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": (host.sd_model_choices(),
                              {"tooltip": "An SD inpainting checkpoint (9-channel UNet), e.g. "
                                          "512-inpainting-ema.safetensors (SD-2-inpainting, the paper's known-good "
                                          "choice) or sd-v1-5-inpainting.ckpt; 'diffusers/<name>' entries are "
                                          "diffusers folders."}),
            },
            "optional": {
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

        node = "ComboVerse Load Inpaint Model"
        return ckpt_name is None or host.validation(lambda: check_sd_source(
            host.resolve_sd_model(ckpt_name, node), expect="inpainting", config_dir=(config_dir or "").strip() or None,
            tokenizer_dirs=host.clip_tokenizer_dirs(), what=node))

    def load(self, ckpt_name, config_dir=""):
        from ..comboverse_ops.models.sd import load_sd_model

        path = host.resolve_sd_model(ckpt_name, "ComboVerse Load Inpaint Model")
        load_device, offload = host.model_devices()
        dtype = model_dtype("auto", load_device)
        model = load_sd_model(path, expect="inpainting", device=offload, dtype=dtype,
                              config_dir=Path(config_dir.strip()) if config_dir and config_dir.strip() else None,
                              tokenizer_dirs=host.clip_tokenizer_dirs(), what="ComboVerse Load Inpaint Model")
        return (model,)

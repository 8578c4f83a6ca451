"""ComboVerse Load Depth Model / ComboVerse Depth: Depth Anything V2 disparity for InitPose's depth_map."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import host

DEPTH_MODEL = "COMBOVERSE_DEPTH_MODEL"  # comboverse_ops.decompose.depth.DepthModel
DEPTH_FOLDER = "depth_anything"  # models/depth_anything/<name>/: save_pretrained folders
_LOADER = "ComboVerse Load Depth Model"


def register_depth_folder() -> None:
    """Make ComfyUI know ``models/depth_anything`` (idempotent; kept if another pack registered it)."""
    try:
        import folder_paths as fp
    except ImportError:
        return
    path = os.path.join(fp.models_dir, DEPTH_FOLDER)
    if DEPTH_FOLDER not in fp.folder_names_and_paths:
        fp.folder_names_and_paths[DEPTH_FOLDER] = ([path], set())
    elif path not in fp.folder_names_and_paths[DEPTH_FOLDER][0]:
        fp.add_model_folder_path(DEPTH_FOLDER, path)


def depth_model_roots() -> list[Path]:
    register_depth_folder()
    return host.model_folder_paths(DEPTH_FOLDER)


def depth_model_choices() -> list[str]:
    """Subfolders of models/depth_anything, sorted by name."""
    names = set()
    for root in depth_model_roots():
        if root.is_dir():
            names |= {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return sorted(names)


def resolve_depth_folder(name: str) -> Path:
    """The folder ``name`` of models/depth_anything (an absolute path is taken as it is)."""
    roots = depth_model_roots()
    if not name:
        raise FileNotFoundError(f"{_LOADER}: no model folder chosen; put a Depth Anything V2 folder (e.g. "
                                f"Depth-Anything-V2-Small-hf, as saved by save_pretrained) into "
                                f"{[str(r) for r in roots]} and refresh")
    p = Path(name)
    if p.is_absolute():
        return p
    for root in roots:
        if (root / name).exists():
            return root / name
    return roots[0] / name  # the loader's error names this path, the folder and what to put there


class LoadDepthModel:
    DESCRIPTION = ("Loads a Depth Anything V2 model (relative, e.g. Depth-Anything-V2-Small-hf) from a folder in "
                   "models/depth_anything, as saved by transformers' save_pretrained, offline. fp16 on the GPU, "
                   "fp32 on the CPU; loaded once and shared. For ComboVerse Depth.")
    CATEGORY = "ComboVerse/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (DEPTH_MODEL,)
    RETURN_NAMES = ("depth_model",)
    OUTPUT_TOOLTIPS = ("The depth model, for ComboVerse Depth.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_folder": (depth_model_choices(),
                             {"tooltip": "A subfolder of models/depth_anything holding config.json, "
                                         "model.safetensors and preprocessor_config.json of a relative Depth "
                                         "Anything V2 model (Small is enough for initial poses)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_folder=None):
        from ..comboverse_ops.decompose.depth import check_depth_folder

        def check():
            try:
                check_depth_folder(resolve_depth_folder(model_folder))
            except (FileNotFoundError, ValueError) as e:
                raise type(e)(f"{_LOADER}: {e}") from e

        return model_folder is None or host.validation(check)

    def load(self, model_folder):
        from ..comboverse_ops.decompose.depth import load_depth_model

        return (host.load_from_folder(load_depth_model, resolve_depth_folder(model_folder), _LOADER),)


class Depth:
    DESCRIPTION = ("Estimates relative disparity (bright = near, normalised to 0..1 per image) with Depth "
                   "Anything V2, at the picture's size, as a grey IMAGE. Wire it to ComboVerse InitPose's "
                   "depth_map with depth_kind 'disparity'.")
    CATEGORY = "ComboVerse/stage1"
    FUNCTION = "estimate"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("disparity",)
    OUTPUT_TOOLTIPS = (("Grey disparity [B,H,W,3] in [0, 1], 1 = nearest: InitPose's depth_map with depth_kind "
                        "'disparity'."),)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "depth_model": (DEPTH_MODEL, {"tooltip": "From ComboVerse Load Depth Model."}),
            "image": ("IMAGE", {"tooltip": "The picture (the same one given to Segment); each image of a batch "
                                           "gets its own map. An alpha channel is ignored."}),
        }}

    def estimate(self, depth_model, image):
        from ..comboverse_ops.decompose.depth import estimate_disparity

        if image.ndim != 4 or image.shape[-1] not in (3, 4):
            raise ValueError(f"ComboVerse Depth: expected an IMAGE [B, H, W, 3], got {tuple(image.shape)}")
        out = host.intermediate_device()
        maps = []
        for i in range(image.shape[0]):
            device = host.use_models([depth_model.modules()])
            host.check_cancel()
            maps.append(estimate_disparity(depth_model, image[i].to(device)).to(out))
        return (torch.stack(maps)[..., None].expand(-1, -1, -1, 3).contiguous(),)

"""Monocular depth for InitPose: Depth Anything V2 through transformers, from a local folder only.

The model folder is what ``save_pretrained`` writes (``config.json`` with ``model_type``
``"depth_anything"``, ``model.safetensors``, optionally ``preprocessor_config.json``), e.g.
``models/depth_anything/Depth-Anything-V2-Small-hf``. Nothing is ever downloaded
(``local_files_only=True``).

Depth Anything's relative models predict relative *inverse* depth (disparity): large = near.
:func:`estimate_disparity` returns it at the image's size, min-max normalised to [0, 1], which is
what InitPose takes with ``depth_kind="disparity"``. The map is affine-invariant (unknown scale and
shift), so the normalisation loses nothing the model knew. Metric Depth Anything models predict
depth in metres (large = far) and are refused.

Preprocessing is done here in torch rather than through the transformers image processor (whose
path goes through PIL/numpy per image): the short side is resized to ``size`` (518) and both sides
are rounded to a multiple of the patch size (14), keeping the aspect ratio (the original V2
"lower_bound" resize), bicubic with antialiasing; then ImageNet mean/std normalisation. ``size``,
``ensure_multiple_of``, ``image_mean`` and ``image_std`` are read from the folder's
``preprocessor_config.json`` when it has one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..determinism import serial_bilinear
from ..models.cache import MODEL_CACHE, ModelCache, ModelKey

__all__ = [
    "DepthModel",
    "DepthPreprocess",
    "check_depth_folder",
    "estimate_disparity",
    "load_depth_model",
    "preprocess_image_hwc",
]

log = logging.getLogger(__name__)

EXPECTED_MODEL_TYPE = "depth_anything"
_EXAMPLE = "Depth-Anything-V2-Small-hf"


@dataclass(frozen=True)
class DepthPreprocess:
    """How an image is prepared for the network (defaults: Depth Anything V2's processor config)."""

    size: int = 518  # short side in pixels before rounding (Depth Anything V2's 518)
    multiple_of: int = 14  # both sides a multiple of this (DINOv2's patch size)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet mean
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # ImageNet std

    def __post_init__(self):
        if self.size < 1 or self.multiple_of < 1:
            raise ValueError(f"depth preprocess: expected size >= 1 and multiple_of >= 1, got "
                             f"{self.size}, {self.multiple_of}")

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` fed to the network: short side near ``size``, both multiples of ``multiple_of``."""
        scale = self.size / min(height, width)
        m = self.multiple_of
        return (max(m, round(height * scale / m) * m), max(m, round(width * scale / m) * m))

    @classmethod
    def from_folder(cls, folder: Path) -> DepthPreprocess:
        """Read ``preprocessor_config.json`` if present (missing keys keep the defaults)."""
        p = folder / "preprocessor_config.json"
        if not p.is_file():
            return cls()
        try:
            cfg = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"depth model: {p} is not readable JSON ({e})") from e
        size = cfg.get("size", {})
        if isinstance(size, dict):
            size = min(v for k, v in size.items() if k in ("height", "width", "shortest_edge")) if size else None
        kw = {}
        if isinstance(size, int):
            kw["size"] = size
        if isinstance(cfg.get("ensure_multiple_of"), int):
            kw["multiple_of"] = cfg["ensure_multiple_of"]
        if isinstance(cfg.get("image_mean"), list) and len(cfg["image_mean"]) == 3:
            kw["mean"] = tuple(float(v) for v in cfg["image_mean"])
        if isinstance(cfg.get("image_std"), list) and len(cfg["image_std"]) == 3:
            kw["std"] = tuple(float(v) for v in cfg["image_std"])
        return cls(**kw)


class DepthModel:
    """A loaded Depth Anything model: the network plus its preprocessing and where it came from."""

    def __init__(self, module: torch.nn.Module, preprocess: DepthPreprocess, folder: Path):
        self.module, self.preprocess, self.folder = module, preprocess, folder

    def modules(self) -> torch.nn.Module:
        """The ``nn.Module`` (for ComfyUI's memory manager)."""
        return self.module

    def to(self, device) -> DepthModel:
        self.module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype


def _hint(folder: Path) -> str:
    return (f"put a Depth Anything V2 folder as saved by transformers' save_pretrained (config.json with "
            f"model_type \"{EXPECTED_MODEL_TYPE}\", model.safetensors, preprocessor_config.json), e.g. "
            f"{_EXAMPLE}, into {folder.parent}")


def check_depth_folder(folder: str | os.PathLike) -> None:
    """Raise (as :func:`load_depth_model` would) unless ``folder`` looks like a relative Depth Anything
    folder; cheap (reads config.json and the weights file's header), for checking every model before
    any work."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"depth model: folder {folder} does not exist; {_hint(folder)}")
    if not folder.is_dir():
        raise ValueError(f"depth model: expected a model folder, got the file {folder}; {_hint(folder)}")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise FileNotFoundError(f"depth model: {folder} has no config.json (found {found or 'nothing'}); "
                                f"expected a transformers depth-estimation folder; {_hint(folder)}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"depth model: {cfg_path} is not readable JSON ({e}); {_hint(folder)}") from e
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if model_type != EXPECTED_MODEL_TYPE:
        raise ValueError(f"depth model: {folder} holds a model of type {model_type!r} "
                         f"(architectures {cfg.get('architectures') if isinstance(cfg, dict) else None}), "
                         f"expected {EXPECTED_MODEL_TYPE!r} (Depth Anything V2); {_hint(folder)}")
    kind = cfg.get("depth_estimation_type", "relative")
    if kind != "relative":
        raise ValueError(f"depth model: {folder} is a {kind!r} Depth Anything model (depth in metres, bright = "
                         f"far); expected a 'relative' one, which predicts disparity (bright = near), e.g. {_EXAMPLE}")
    weights = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
    if not weights:
        raise FileNotFoundError(f"depth model: {folder} has no model.safetensors (or pytorch_model.bin); "
                                f"{_hint(folder)}")
    from ..meshio.files import check_weights_file

    check_weights_file(weights[0], "depth model", _hint(folder))  # a truncated download is named here


def load_depth_model(folder: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32,
                     cache: ModelCache | None = MODEL_CACHE) -> DepthModel:
    """Load a Depth Anything (V2) model folder offline, through the shared cache (keyed by the folder).

    Args:
        folder: a ``save_pretrained`` folder of a relative Depth Anything model.
        device, dtype: where and how to keep the weights (fp16 on the GPU, fp32 on the CPU is usual).
    Raises:
        FileNotFoundError: the folder, its config.json or its weights are missing.
        ValueError: the folder holds another kind of model (names what was found and what is expected).
    """
    folder = Path(folder)
    check_depth_folder(folder)

    def load() -> DepthModel:
        from transformers import AutoModelForDepthEstimation

        try:
            module = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
        except OSError as e:  # no weights file, or an unreadable one
            raise FileNotFoundError(f"depth model: could not load the weights in {folder} ({e}); "
                                    f"{_hint(folder)}") from e
        module.eval().requires_grad_(False).to(device)
        return DepthModel(module, DepthPreprocess.from_folder(folder), folder.resolve())

    if cache is None:
        return load()
    return cache.get(ModelKey.for_file("depth-anything", folder, dtype, device), load)


def preprocess_image_hwc(image_hwc: torch.Tensor, preprocess: DepthPreprocess = DepthPreprocess()) -> torch.Tensor:
    """``[H, W, 3]`` float in [0, 1] -> normalised ``[1, 3, h, w]`` float32 at the network size."""
    x = image_hwc[..., :3].float().permute(2, 0, 1)[None]
    h, w = preprocess.network_size(*image_hwc.shape[:2])
    if (h, w) != tuple(image_hwc.shape[:2]):
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(preprocess.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def estimate_disparity(model: DepthModel, image_hwc: torch.Tensor) -> torch.Tensor:
    """Relative disparity of one picture.

    Args:
        model: from :func:`load_depth_model` (on the device it should run on).
        image_hwc: ``[H, W, 3]`` (or RGBA ``[H, W, 4]``, alpha ignored) float in [0, 1].
    Returns:
        ``[H, W]`` float32 in [0, 1] on the image's device; 1 = nearest, 0 = farthest (a flat
        prediction gives all ones: everything at one depth). The 0 is relative, not infinitely
        far: :func:`comboverse_ops.compose.init_pose.init_poses` reads it through ``InitSettings.map_floor``.
    """
    if image_hwc.ndim != 3 or image_hwc.shape[-1] not in (3, 4):
        raise ValueError(f"estimate_disparity: expected an image [H, W, 3] in [0, 1], got {tuple(image_hwc.shape)}")
    h, w = image_hwc.shape[:2]
    x = preprocess_image_hwc(image_hwc.to(model.device), model.preprocess).to(model.dtype)
    with serial_bilinear():  # the network's head and our resize: bits independent of the thread count
        pred = model.module(pixel_values=x).predicted_depth  # [1, h', w'] relative inverse depth
        d = F.interpolate(pred[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    if not torch.isfinite(d).all():
        raise ValueError(f"estimate_disparity: the model gave NaN/inf values (dtype {model.dtype}); "
                         "try float32")
    lo, hi = d.min(), d.max()
    if float(hi - lo) <= 1e-8 * max(1.0, float(hi.abs())):
        return torch.ones(h, w, device=image_hwc.device)
    return ((d - lo) / (hi - lo)).to(image_hwc.device)

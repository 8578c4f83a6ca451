"""Render a :class:`~comboverse_ops.types.scene.Scene` for a batch of cameras.

One function, two backends with the same results (see ``tests/test_render_parity_gpu.py``):

- ``"nvdiffrast"``: CUDA rasterization, optional (not on PyPI; non-commercial licence);
- ``"torch"``: the pure-torch rasterizer in :mod:`.torch_raster`, for CPU, MPS and CI.

``backend="auto"`` picks nvdiffrast when it imports and the scene lives on CUDA, else torch.
"""

from __future__ import annotations

import torch

from ..types.camera import Cameras
from ..types.scene import Scene
from .common import RenderOutput, flatten_scene, to_clip
from .nvdiffrast_backend import nvdiffrast_available, rasterize_nvdiffrast
from .torch_raster import rasterize_torch

__all__ = ["render_scene", "RenderOutput", "resolve_backend", "BACKENDS"]

BACKENDS = ("auto", "torch", "nvdiffrast")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend ``render_scene`` will use for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"render backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "nvdiffrast" if device.type == "cuda" and nvdiffrast_available() else "torch"
    if backend == "nvdiffrast" and not nvdiffrast_available():
        raise ValueError("render backend 'nvdiffrast' was asked for, but nvdiffrast is not installed or no CUDA "
                         "device is present; install nvdiffrast (see README) or use backend='torch'")
    return backend


def _background(background, like: torch.Tensor) -> torch.Tensor:
    """``[3]`` background colour on ``like``'s device. A tensor passes through; numbers are filled
    in on the device one by one, since copying a tensor made from them there waits for the GPU
    (an optimisation loop renders at every step)."""
    if torch.is_tensor(background):
        return background.to(like).reshape(3)
    values = [float(c) for c in background]
    if len(values) != 3:
        raise ValueError(f"render_scene: background must be 3 RGB values in [0, 1], got {background!r}")
    out = torch.empty(3, dtype=like.dtype, device=like.device)
    for i, c in enumerate(values):
        out[i].fill_(c)  # a kernel with the number as its argument; ``out[i] = c`` copies a CPU tensor
    return out


def render_scene(scene: Scene, cameras: Cameras, *, background=(1.0, 1.0, 1.0), backend: str = "auto",
                 aa_width: float = 1.0, per_object: bool = False, check: bool = True) -> RenderOutput:
    """Render RGB, alpha, depth and object ids of ``scene`` seen by every camera.

    Args:
        scene: objects with poses; gradients flow to every pose tensor that requires grad.
        cameras: ``B`` cameras (all of one image size), on the scene's device.
        background: RGB in [0, 1] behind the objects.
        backend: ``"auto"``, ``"torch"`` or ``"nvdiffrast"`` (module doc).
        aa_width: torch backend only: width in pixels of the antialiasing ramp at edges.
        per_object: also return each object's visible alpha (``RenderOutput.object_alpha``).
        check: validate the scene first (:meth:`Scene.validate`). Its checks read values back
            from the GPU; a loop that validated once and renders the same meshes again passes False.
    Returns:
        :class:`RenderOutput` with ``[B, H, W, ...]`` tensors, images top row first.
    """
    flat = flatten_scene(scene, check=check)
    device = flat.vertices.device
    if cameras.device != device:
        raise ValueError(f"render_scene: cameras are on {cameras.device} but the scene is on {device}")
    bg = _background(background, flat.vertices)
    clip = to_clip(flat.vertices, cameras)
    if resolve_backend(backend, device) == "nvdiffrast":
        out = rasterize_nvdiffrast(flat, clip, cameras.width, cameras.height, bg, per_object=per_object)
    else:
        out = rasterize_torch(flat, clip, cameras.width, cameras.height, bg, near=cameras.near, aa_width=aa_width,
                              per_object=per_object)
    return RenderOutput(*out)

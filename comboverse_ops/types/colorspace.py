"""The pack's colour convention, written once.

Inside the pack every colour is a **display (sRGB-encoded) value**, float in [0, 1], as in the
photos it reconstructs: ``Mesh.vertex_colors``, ``Mesh.texture``, ``Mesh.DEFAULT_COLOR``, the
renderer's images and the reference-view loss all compare like with like.

Formats and types that use another convention are converted where the value crosses into or
out of the pack, and only there:

============================================  ===========  ===============================
boundary                                      its values   where the conversion happens
============================================  ===========  ===============================
glTF ``COLOR_0`` and ``baseColorFactor``      linear       ``glb.scene_to_glb_bytes`` /
(glTF 2.0 spec, "Metallic-Roughness                        ``meshes_in.load_mesh_file`` (.glb,
Material": factors and vertex colours are                  .gltf)
linear)
glTF ``baseColorTexture`` images (PNG/JPEG)   sRGB         none: stored as they are
OBJ / PLY vertex colours (by convention,      sRGB         none
display values)
ComfyUI core ``MESH.vertex_colors``           linear       ``meshes_in.meshes_from_core_mesh``
(``colors`` in some 2026 TRELLIS.2 nodes;                  (in), ExportMesh node (out)
core's SaveGLB writes them to ``COLOR_0``
unchanged)
ComfyUI core ``MESH.texture``                 sRGB         none
============================================  ===========  ===============================

The transfer function is the exact piecewise sRGB curve of IEC 61966-2-1 (not a 2.2 power), so
``linear_to_srgb(srgb_to_linear(c)) == c`` up to float rounding.
"""

from __future__ import annotations

import torch

__all__ = ["srgb_to_linear", "linear_to_srgb"]

# IEC 61966-2-1: below the knee the curve is a straight line of slope 12.92.
_SRGB_KNEE = 0.04045
_LINEAR_KNEE = 0.0031308


def _unit_float(c) -> torch.Tensor:
    t = torch.as_tensor(c)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t.clamp(0.0, 1.0)


def srgb_to_linear(c) -> torch.Tensor:
    """Linear-light values of display (sRGB-encoded) colours.

    Args:
        c: any shape (e.g. ``[N, 3]`` vertex colours or ``[H, W, 3]``), float in [0, 1]
            (tensor, array or sequence); values outside [0, 1] are clamped first.
    Returns:
        a new tensor of the same shape, float in [0, 1] (input float dtype kept, float32 for
        other inputs), on the input's device.
    """
    c = _unit_float(c)
    return torch.where(c <= _SRGB_KNEE, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c) -> torch.Tensor:
    """Display (sRGB-encoded) values of linear-light colours; the inverse of :func:`srgb_to_linear`.

    Args:
        c: any shape, float in [0, 1] (tensor, array or sequence); clamped to [0, 1] first.
    Returns:
        a new tensor of the same shape, float in [0, 1] (input float dtype kept, float32 for
        other inputs), on the input's device.
    """
    c = _unit_float(c)
    return torch.where(c <= _LINEAR_KNEE, c * 12.92, 1.055 * c.clamp_min(_LINEAR_KNEE) ** (1 / 2.4) - 0.055)

"""Object frames: which way a mesh's front and top point, and the rotation into the canonical frame.

The canonical object frame (:mod:`comboverse_ops.types.mesh`): +Y up, front towards +Z, bounding box
centred, longest side 1. A camera on +Z looking at the origin sees the front with image right =
+X and image up = +Y.

A source frame is described by two signed axes: ``front`` (where the object's front faces) and
``up`` (where its top points). The rotation maps ``front -> +Z``, ``up -> +Y`` and therefore
``up x front -> +X``. Common cases:

- glTF / GLB exports of most generators (Hunyuan3D, TRELLIS, TripoSG ...): ``up = +Y``, front
  usually ``+Z`` (check the first Preview3D view if an object comes out backwards: try ``-Z``);
- Blender OBJ exports with "Z up": ``up = +Z``, front ``-Y``;
- TripoSR (read off its camera code: the input view sits on +X, image right is +Y, image up is
  +Z): ``front = +X``, ``up = +Z``, i.e. ``(x, y, z)_canonical = (y, z, x)_TripoSR``. The same
  follows from its Gradio demo, which turns meshes by -90 deg about X then +90 deg about Y for a
  viewer whose default camera sits on -Z: that maps +X to -Z, +Z to +Y and +Y to -X.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..types.mesh import Mesh

__all__ = ["AXES", "axis_vector", "frame_rotation", "to_canonical_frame", "TRIPOSR_FRONT", "TRIPOSR_UP"]

AXES = ("+X", "-X", "+Y", "-Y", "+Z", "-Z")
TRIPOSR_FRONT, TRIPOSR_UP = "+X", "+Z"


def axis_vector(axis: str, *, what: str = "axis") -> torch.Tensor:
    """``"+X"`` ... ``"-Z"`` -> ``[3]`` float64 unit vector."""
    name = str(axis).strip().upper()
    if name in ("X", "Y", "Z"):
        name = "+" + name
    if name not in AXES:
        raise ValueError(f"{what}: expected one of {', '.join(AXES)}, got {axis!r}")
    v = torch.zeros(3, dtype=torch.float64)
    v["XYZ".index(name[1])] = 1.0 if name[0] == "+" else -1.0
    return v


def frame_rotation(front: str = "+Z", up: str = "+Y") -> torch.Tensor:
    """``[3, 3]`` float64 rotation ``R`` (``det = +1``) with ``R @ front = +Z`` and ``R @ up = +Y``.

    Apply as ``v_canonical = v @ R.T``. A proper rotation keeps face winding and handedness.
    """
    f = axis_vector(front, what="front_axis")
    u = axis_vector(up, what="up_axis")
    if abs(float(f @ u)) > 0.5:
        raise ValueError(f"front_axis {front!r} and up_axis {up!r} are parallel; the front must be "
                         f"perpendicular to the up axis (e.g. front +Z with up +Y, or front -Y with up +Z)")
    return torch.stack([torch.linalg.cross(u, f), u, f])  # rows: where +X, +Y, +Z come from


def to_canonical_frame(mesh: Mesh, front: str = "+Z", up: str = "+Y") -> Mesh:
    """``mesh`` rotated so ``front -> +Z`` and ``up -> +Y``, then centred with longest side 1.

    Colours, uvs and textures are carried along unchanged; the input mesh is not modified.
    """
    rot = frame_rotation(front, up).to(mesh.vertices.dtype if mesh.vertices.is_floating_point() else torch.float32)
    rot = rot.to(mesh.vertices.device)
    return replace(mesh, vertices=mesh.vertices @ rot.T).normalized()

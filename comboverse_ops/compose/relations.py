"""Spatial relations between posed objects, judged in 3D from the final poses.

The relation vocabulary is the spatial prior's (issue 12): VIEWER-RELATIVE, like captions of real
photographs. "A to the left of B" means A is further left as the reference camera sees it; "A in
front of B" means A is closer to that camera; "A on top of B" means A rests on B's top. These
predicates score a layout against a caption such as "a red cube behind a blue sphere" (the
benchmark's "relation satisfied in 3D").

Definitions (world +Y up, cameras as in :mod:`.camera`; every object is summarised by the
axis-aligned world box of its posed mesh, its AABB):

- **size** of an object: the longest side of its AABB; the margin and tolerance below are
  fractions of ``s = (size_A + size_B) / 2``.
- **to the left of / to the right of**: camera-frame ``x`` (the reference camera's right
  vector, ``c2w[:3, 0]``) of the two AABB centres. A is left of B when
  ``x_B - x_A > margin * s``. Camera-frame, not image, ``x``: the relation is a 3D fact about
  where the objects are, which a layout with the wrong depths can get wrong even when the
  reference image is right.
- **in front of / behind**: distance from the camera along its forward direction projected on
  the ground plane (``-c2w[:3, 2]`` with its ``y`` dropped, normalised), of the AABB centres.
  Ground-projected so that the camera's elevation does not turn "higher" into "further". A is
  in front of B when ``d_B - d_A > margin * s``.
- **on top of**: A's bottom lies within ``contact_tolerance * s`` of B's top (neither floating
  nor sunk by more) AND the centre of A's footprint (AABB centre in ``x, z``) lies inside B's
  footprint (B's AABB in ``x, z``). **under** is "on top of" with the roles swapped.

Each predicate has a margin-aware score (:func:`relation_score`, in units of ``s``): positive
when the relation holds, its value how far it is from failing; :func:`relation_holds` is
``score > 0``. With the default margin of 0.1, two objects whose centres are closer than a tenth
of their size along the axis satisfy neither "left of" nor "right of".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..types.camera import Cameras
from ..types.scene import Scene

__all__ = [
    "RELATIONS",
    "OPPOSITES",
    "RelationMargins",
    "relation_score",
    "relation_holds",
    "object_boxes",
]

RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "in front of", "behind", "on top of", "under")
# "A rel B" holds exactly when "B OPPOSITES[rel] A" does (the predicates are written so).
OPPOSITES: dict[str, str] = {
    "to the left of": "to the right of", "to the right of": "to the left of",
    "in front of": "behind", "behind": "in front of",
    "on top of": "under", "under": "on top of",
}


@dataclass(frozen=True)
class RelationMargins:
    """How clear a relation must be, as fractions of the pair's mean size (module doc)."""

    margin: float = 0.1  # left/right and front/behind: centres at least this far apart along the axis
    contact_tolerance: float = 0.1  # on top of: |A's bottom - B's top| at most this (floating or sunk)

    def __post_init__(self):
        if self.margin < 0 or self.contact_tolerance < 0:
            raise ValueError(f"RelationMargins: margin and contact_tolerance must be >= 0, got {self.margin}, "
                             f"{self.contact_tolerance}")


def object_boxes(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """``([N, 3], [N, 3])`` float64 CPU min and max corners of each posed object's world AABB."""
    boxes = [o.world_vertices().detach() for o in scene.objects]
    lo = torch.stack([v.amin(0) for v in boxes]).cpu().double()
    hi = torch.stack([v.amax(0) for v in boxes]).cpu().double()
    return lo, hi


def _camera_axes(camera: Cameras) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(eye, right, ground_forward)`` ``[3]`` float64 of the first camera."""
    if camera is None or len(camera) < 1:
        raise ValueError("relations: expected a reference camera (Cameras with one camera), got none")
    c2w = camera.c2w[0].detach().cpu().double()
    forward = -c2w[:3, 2].clone()
    forward[1] = 0.0
    norm = forward.norm()
    if float(norm) < 1e-6:
        raise ValueError("relations: the reference camera looks straight up or down, so 'in front of' has no "
                         "direction on the ground; use a camera with elevation inside (-89, 89) degrees")
    return c2w[:3, 3], c2w[:3, 0], forward / norm


def relation_score(scene: Scene, subject_index: int, relation: str, object_index: int,
                   camera: Cameras | None = None, margins: RelationMargins = RelationMargins()) -> float:
    """How clearly "subject ``relation`` object" holds, in units of the pair's mean size (module doc).

    Args:
        scene: posed objects.
        subject_index, object_index: object positions in ``scene.objects`` (different).
        relation: one of :data:`RELATIONS`.
        camera: the viewer; default ``scene.camera`` (the reference camera).
        margins: :class:`RelationMargins`.
    Returns:
        float: > 0 when the relation holds; its size is the slack before it would fail.
    """
    n = len(scene.objects)
    for name, k in (("subject_index", subject_index), ("object_index", object_index)):
        if not 0 <= int(k) < n:
            raise ValueError(f"relation_score: {name} must be in [0, {n}), got {k}")
    if subject_index == object_index:
        raise ValueError(f"relation_score: subject and object are both object {subject_index}; expected two objects")
    if relation not in RELATIONS:
        raise ValueError(f"relation_score: unknown relation {relation!r}; expected one of {RELATIONS}")
    if relation == "under":
        return relation_score(scene, object_index, "on top of", subject_index, camera, margins)
    lo, hi = object_boxes(scene)
    a, b = int(subject_index), int(object_index)
    centre = (lo + hi) / 2
    size = (hi - lo).amax(1)
    s = max(float((size[a] + size[b]) / 2), 1e-9)
    if relation == "on top of":
        gap = abs(float(lo[a, 1] - hi[b, 1]))
        contact = margins.contact_tolerance - gap / s
        # Signed distance of A's footprint centre inside B's footprint (>= 0 inside).
        inside = min(float(centre[a, k] - lo[b, k]) for k in (0, 2))
        inside = min(inside, min(float(hi[b, k] - centre[a, k]) for k in (0, 2))) / s
        return min(contact, inside)
    eye, right, forward = _camera_axes(camera if camera is not None else scene.camera)
    axis = right if relation in ("to the left of", "to the right of") else forward
    coord = (centre - eye) @ axis
    # left of: smaller x than B; in front of: smaller ground distance than B.
    sign = 1.0 if relation in ("to the left of", "in front of") else -1.0
    return sign * float(coord[b] - coord[a]) / s - margins.margin


def relation_holds(scene: Scene, subject_index: int, relation: str, object_index: int,
                   camera: Cameras | None = None, margins: RelationMargins = RelationMargins()) -> bool:
    """True when "subject ``relation`` object" holds in 3D (:func:`relation_score` > 0)."""
    return relation_score(scene, subject_index, relation, object_index, camera, margins) > 0

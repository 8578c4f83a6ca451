"""Where the objects of a procedural scene go: each placed so that a stated relation holds.

Objects are placed one after another, each relative to one already placed ("on top of", "beside",
"in front of", ...), scaled and turned at random, and kept only when its world box overlaps no
other's; the whole layout is then centred on the origin in x and z. Units are world units; all
randomness comes from the caller's ``random.Random``. :mod:`.procedural` frames the layout with a
camera and renders it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..types.mesh import Mesh
from ..types.pose import Pose, matrix_to_rotvec, rotvec_to_matrix

if TYPE_CHECKING:
    from .procedural import ProceduralSettings

__all__ = ["SCENE_RELATIONS", "PlacedObject", "lay_out", "uniform"]

# The relations the generator draws, as they appear in its prompts and ``ProceduralScene.relations``
# (each is one of spatial_tokens.RELATION_PHRASES, so SSDS marks it in a prompt). "beside" and
# "next to" are synonyms; "partly occluding" is "in front of" plus an overlap in the reference view.
SCENE_RELATIONS = ("on top of", "beside", "next to", "in front of", "behind", "partly occluding")
_GROUND_RELATIONS = ("beside", "next to", "in front of", "behind", "partly occluding")
# Shapes with a flat horizontal top that can carry another object.
_FLAT_TOPPED = ("box", "cylinder")


@dataclass
class PlacedObject:
    """Working record of one object during layout (world units, python floats)."""

    kind: str
    color: str
    mesh: Mesh
    proxy: Mesh  # a coarse copy of the shape for quick image-space checks
    scale: float
    rotvec: tuple[float, float, float]
    translation: list[float]
    lo: list[float]
    hi: list[float]
    on_ground: bool
    can_support: bool
    top_inradius: float  # radius of the disc inscribed in the flat top face (0 if none)


def uniform(rng: random.Random, lo_hi) -> float:
    """A uniform draw from the range ``(lo, hi)``."""
    return rng.uniform(float(lo_hi[0]), float(lo_hi[1]))


def _rotvec(yaw: float, tilt: float, tilt_axis: int) -> tuple[float, float, float]:
    """Rotation vector of ``R_yaw @ R_tilt`` (tilt about the canonical x or z axis), radians in."""
    if tilt == 0:
        return (0.0, yaw, 0.0)
    t = [0.0, 0.0, 0.0]
    t[tilt_axis] = tilt
    m = rotvec_to_matrix(torch.tensor([0.0, yaw, 0.0], dtype=torch.float64)) @ rotvec_to_matrix(
        torch.tensor(t, dtype=torch.float64))
    return tuple(float(x) for x in matrix_to_rotvec(m))


def _relative_bounds(mesh: Mesh, scale: float, rotvec) -> tuple[list[float], list[float]]:
    """AABB of the mesh scaled and rotated about its canonical origin (no translation)."""
    v = Pose.create(scale, rotvec).apply(mesh.vertices)
    return v.amin(0).tolist(), v.amax(0).tolist()


def _collides(p: PlacedObject, others: list[PlacedObject], tol: float = 1e-5) -> bool:
    """True when ``p``'s AABB overlaps another's by more than ``tol`` on all three axes."""
    for o in others:
        if all(min(p.hi[a], o.hi[a]) - max(p.lo[a], o.lo[a]) > tol for a in range(3)):
            return True
    return False


def _place(rng: random.Random, s: ProceduralSettings, kind: str, color: str, mesh: Mesh, proxy: Mesh,
           ref: PlacedObject | None, phrase: str | None) -> PlacedObject | None:
    """Pose one object relative to ``ref`` so that ``phrase`` holds; None when it cannot."""
    lo_c, hi_c = mesh.bounds()
    canon_ext = (hi_c - lo_c).tolist()
    flat = kind in _FLAT_TOPPED
    yaw = math.radians(uniform(rng, s.yaw_range_deg))
    tilt = 0.0
    if s.max_tilt_deg > 0 and phrase in _GROUND_RELATIONS and rng.random() < 0.5:
        tilt = math.radians(rng.uniform(-s.max_tilt_deg, s.max_tilt_deg))
    rotvec = _rotvec(yaw, tilt, rng.choice((0, 2)))
    scale = uniform(rng, s.size_range)
    if phrase == "on top of":
        lo1, hi1 = _relative_bounds(mesh, 1.0, rotvec)
        radius1 = 0.5 * math.hypot(hi1[0] - lo1[0], hi1[2] - lo1[2])
        # Whole footprint within the support's top face: circumscribed disc inside its inscribed one.
        cap = 0.85 * ref.top_inradius / radius1
        if cap < 0.5 * s.size_range[0]:
            return None
        scale = min(scale, cap)
    lo, hi = _relative_bounds(mesh, scale, rotvec)
    ext = [h - l for l, h in zip(lo, hi)]
    mid = [(l + h) / 2 for l, h in zip(lo, hi)]
    t = [0.0, -lo[1], 0.0]  # resting on the ground: lowest point at y = 0
    if ref is not None:
        rext = [h - l for l, h in zip(ref.lo, ref.hi)]
        rmid = [(l + h) / 2 for l, h in zip(ref.lo, ref.hi)]
        gap = uniform(rng, s.gap_range)
        if phrase == "on top of":
            r, a = 0.15 * ref.top_inradius * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            t[0] = ref.translation[0] + r * math.cos(a) - mid[0]
            t[2] = ref.translation[2] + r * math.sin(a) - mid[2]
            t[1] = ref.hi[1] - lo[1]
        elif phrase in ("beside", "next to"):
            t[0] = ref.hi[0] + gap - lo[0] if rng.random() < 0.5 else ref.lo[0] - gap - hi[0]
            t[2] = rmid[2] + rng.uniform(-0.25, 0.25) * rext[2] - mid[2]
        elif phrase in ("in front of", "behind"):
            t[0] = rmid[0] + rng.uniform(-0.5, 0.5) * (ext[0] + rext[0]) / 2 - mid[0]
            t[2] = ref.hi[2] + gap - lo[2] if phrase == "in front of" else ref.lo[2] - gap - hi[2]
        elif phrase == "partly occluding":
            gap = rng.uniform(s.gap_range[0], (s.gap_range[0] + s.gap_range[1]) / 2)
            side = rng.choice((-1.0, 1.0))
            t[0] = rmid[0] + side * rng.uniform(0.3, 0.65) * (ext[0] + rext[0]) / 2 - mid[0]
            t[2] = ref.hi[2] + gap - lo[2]
        else:
            raise ValueError(f"unknown relation phrase {phrase!r}; expected one of {SCENE_RELATIONS}")
    on_ground = phrase != "on top of"
    return PlacedObject(kind, color, mesh, proxy, scale, rotvec, t, [l + x for l, x in zip(lo, t)],
                   [h + x for h, x in zip(hi, t)], on_ground, flat and tilt == 0,
                   0.5 * min(canon_ext[0], canon_ext[2]) * scale if flat else 0.0)


def _candidates(phrase: str, placed: list[PlacedObject], supporting: set[int]) -> list[int]:
    if phrase == "on top of":
        return [j for j, p in enumerate(placed) if p.can_support and j not in supporting]
    return [j for j, p in enumerate(placed) if p.on_ground]


def lay_out(rng: random.Random, s: ProceduralSettings, specs):
    """One attempt at placing all objects: (placed, relations as index triples) or None.

    ``specs``: ``(kind, colour name, mesh, proxy mesh)`` per object, in placing order; each object
    after the first is placed relative to an earlier one with a relation drawn from ``s.relations``.
    """
    placed: list[PlacedObject] = []
    relations: list[tuple[int, str, int]] = []
    supporting: set[int] = set()
    for i, (kind, color, mesh, proxy) in enumerate(specs):
        if i == 0:
            placed.append(_place(rng, s, kind, color, mesh, proxy, None, None))
            continue
        for _ in range(s.placement_attempts):
            phrase = rng.choice(s.relations)
            cands = _candidates(phrase, placed, supporting)
            if not cands:
                continue
            j = rng.choice(cands)
            p = _place(rng, s, kind, color, mesh, proxy, placed[j], phrase)
            if p is None or _collides(p, placed):
                continue
            placed.append(p)
            relations.append((i, phrase, j))
            if phrase == "on top of":
                supporting.add(j)
            break
        else:
            return None
    # Centre the layout on the origin in x and z (relations are translation invariant).
    cx = (min(p.lo[0] for p in placed) + max(p.hi[0] for p in placed)) / 2
    cz = (min(p.lo[2] for p in placed) + max(p.hi[2] for p in placed)) / 2
    for p in placed:
        for a, c in ((0, cx), (2, cz)):
            p.translation[a] -= c
            p.lo[a] -= c
            p.hi[a] -= c
    return placed, relations

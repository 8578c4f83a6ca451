"""Physical plausibility: signed distance grids, interpenetration and support.

Each frozen canonical mesh gets a signed distance grid once (negative inside, canonical units;
sign by ray parity, so meshes must be closed; magnitude to the nearest surface sample, accurate
to about half the mesh's edge length). Then, for posed objects:

- :func:`penetration_loss`: points sampled inside object ``i`` are carried into object ``j``'s
  canonical frame and pay for how deep they sit inside ``j`` (differentiable w.r.t. both poses).
- :func:`support_loss`: the lowest point of every object should rest on the ground (the lowest
  object's bottom) or on the top of an object under it, instead of floating or sinking.
- :func:`interpenetration_volume`: the metric, in world units cubed.
World +Y is up (see :mod:`.camera`).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..types.mesh import Mesh
from ..types.scene import Scene

__all__ = ["SDFGrid", "mesh_sdf", "penetration_loss", "support_loss", "interpenetration_volume",
           "inside_by_parity"]

GRID_EXTENT = 0.6  # the grid spans [-0.6, 0.6]^3: the canonical unit box plus a margin


def inside_by_parity(axis: torch.Tensor, tris: torch.Tensor) -> torch.Tensor:
    """Occupancy ``[R, R, R]`` (``[z, y, x]``) of a closed mesh on the grid ``axis^3``.

    One ray per ``(x, y)`` column along +Z: a grid point is inside when an odd number of
    triangles cross its column below it. Columns are nudged off the grid by an irrational
    fraction of a cell so rays do not graze shared edges.
    """
    r = axis.shape[0]
    jitter = (axis[1] - axis[0]) * 1e-3 * math.sqrt(2)
    y, x = torch.meshgrid(axis + jitter, axis + jitter * math.sqrt(3), indexing="ij")
    cols = torch.stack([x, y], -1).reshape(-1, 2)  # [C, 2]
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    keep = area.abs() > 1e-12
    a, b, c, area = a[keep], b[keep], c[keep], area[keep]
    counts = torch.zeros(r * r, r, dtype=torch.int64, device=tris.device)
    for ch in torch.arange(cols.shape[0], device=tris.device).split(256):
        p = cols[ch][:, None]  # [c, 1, 2]

        def edge(u, v):
            return (v[:, 0] - u[:, 0]) * (p[..., 1] - u[:, 1]) - (v[:, 1] - u[:, 1]) * (p[..., 0] - u[:, 0])

        w0, w1, w2 = edge(b, c) / area, edge(c, a) / area, edge(a, b) / area
        hit = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        z_hit = w0 * a[:, 2] + w1 * b[:, 2] + w2 * c[:, 2]  # [c, F]
        z_hit = torch.where(hit, z_hit, torch.full_like(z_hit, float("inf")))
        counts[ch] = (z_hit[:, :, None] < axis[None, None, :]).sum(1)
    return (counts % 2 == 1).reshape(r, r, r).permute(2, 0, 1)  # [x?]: columns are (y, x); -> [z, y, x]


def surface_samples(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Points on a mesh's surface: vertices, face centres and edge midpoints ``[S, 3]``."""
    tris = vertices[faces]
    return torch.cat([vertices, tris.mean(1), (tris + tris.roll(1, 1)).reshape(-1, 3) / 2])


@dataclass(frozen=True)
class SDFGrid:
    """Signed distance of a canonical mesh on a regular grid over ``[-GRID_EXTENT, GRID_EXTENT]^3``.

    Attributes:
        values: ``[R, R, R]`` float signed distance in canonical units, indexed ``[z, y, x]``
            (``grid_sample``'s layout), negative inside.
        all_inside: ``[K, 3]`` canonical grid points inside the mesh.
        cell_volume: canonical volume of one grid cell.
    """

    values: torch.Tensor
    all_inside: torch.Tensor
    cell_volume: float

    def inside_points(self, max_points: int) -> tuple[torch.Tensor, float]:
        """At most ``max_points`` inside points spread evenly, and the volume each stands for."""
        k = self.all_inside.shape[0]
        if k <= max_points:
            return self.all_inside, self.cell_volume
        idx = torch.linspace(0, k - 1, max_points, device=self.all_inside.device).round().long()
        return self.all_inside[idx], self.cell_volume * k / max_points

    def sample(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear signed distance ``[P]`` at canonical points ``[P, 3]`` (differentiable)."""
        g = (points / GRID_EXTENT)[None, None, None]  # [1, 1, 1, P, 3], (x, y, z) order
        v = F.grid_sample(self.values[None, None], g, mode="bilinear", padding_mode="border", align_corners=True)
        return v.reshape(-1)


_SDF_CACHE: dict[int, tuple] = {}


def mesh_sdf(mesh: Mesh, resolution: int = 32) -> SDFGrid:
    """The :class:`SDFGrid` of a canonical mesh, computed once per mesh (cached by tensor id)."""
    key = id(mesh.faces)
    hit = _SDF_CACHE.get(key)
    if hit is not None and hit[0]() is mesh.faces and hit[1]() is mesh.vertices and hit[2] == resolution:
        return hit[3]
    with torch.no_grad(), torch.inference_mode(False):
        v = mesh.vertices.detach().clone().float()
        f = mesh.faces.detach().clone().long()
        axis = torch.linspace(-GRID_EXTENT, GRID_EXTENT, resolution, device=v.device)
        z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
        pts = torch.stack([x, y, z], -1).reshape(-1, 3)
        inside = inside_by_parity(axis, v[f]).reshape(-1)
        surface = surface_samples(v, f)
        dist = torch.cat([torch.cdist(p, surface).amin(1) for p in pts.split(4096)])
        values = torch.where(inside, -dist, dist).reshape(resolution, resolution, resolution)
        grid = SDFGrid(values, pts[inside], (2 * GRID_EXTENT / (resolution - 1)) ** 3)
    _SDF_CACHE[key] = (weakref.ref(mesh.faces), weakref.ref(mesh.vertices), resolution, grid)
    weakref.finalize(mesh.faces, _SDF_CACHE.pop, key, None)
    return grid


def _to_canonical(points_world: torch.Tensor, pose) -> torch.Tensor:
    return (points_world - pose.translation) @ pose.rotation_matrix() / pose.scale


def penetration_loss(scene: Scene, resolution: int = 32, points: int = 512) -> torch.Tensor:
    """Mean squared penetration depth (world units) of each object's inside points in the others.

    Zero when no object reaches into another; differentiable w.r.t. every pose.
    """
    grids = [mesh_sdf(o.mesh, resolution) for o in scene.objects]
    total = scene.objects[0].pose.translation.new_zeros(())
    n = len(scene.objects)
    for i, oi in enumerate(scene.objects):
        pts = oi.pose.apply(grids[i].inside_points(points)[0].to(oi.pose.translation))
        for j, oj in enumerate(scene.objects):
            if i == j:
                continue
            depth = (-grids[j].sample(_to_canonical(pts, oj.pose))).clamp_min(0) * oj.pose.scale
            total = total + depth.square().mean()
    return total / max(1, n * (n - 1))


def interpenetration_volume(scene: Scene, resolution: int = 32) -> float:
    """World volume shared by pairs of objects, summed over pairs (a metric; not differentiable)."""
    with torch.no_grad():
        grids = [mesh_sdf(o.mesh, resolution) for o in scene.objects]
        vol = 0.0
        for i, oi in enumerate(scene.objects):
            inner, cell = grids[i].inside_points(1 << 30)
            pts = oi.pose.apply(inner.to(oi.pose.translation))
            cell = cell * float(oi.pose.scale) ** 3
            for j in range(i + 1, len(scene.objects)):
                oj = scene.objects[j]
                vol += cell * float((grids[j].sample(_to_canonical(pts, oj.pose)) < 0).sum())
        return vol


def support_loss(scene: Scene, footprint_margin: float = 0.1) -> torch.Tensor:
    """Squared gap (world units) between each object's lowest point and what should carry it.

    What carries an object is, of the ground (the median bottom of the objects with nothing under
    them) and every
    other object whose centre lies lower than the object's and whose horizontal footprint (grown
    by ``footprint_margin`` of its size, to tolerate depth errors) contains the object's centre,
    the one whose height is nearest the object's bottom. That choice is made without gradient;
    the gap itself is differentiable.
    """
    world = [o.world_vertices() for o in scene.objects]
    n = len(world)
    lo = torch.stack([w.amin(0) for w in world])  # [n, 3]
    hi = torch.stack([w.amax(0) for w in world])
    bottoms, tops = lo[:, 1], hi[:, 1]
    # Who carries whom is decided without gradient, on the device, as [n, n] masks: an
    # optimisation step on the GPU never waits for it.
    with torch.no_grad():
        lo_, hi_, b, t = lo.detach(), hi.detach(), bottoms.detach(), tops.detach()
        centre = (lo_ + hi_) / 2
        grow = footprint_margin * (hi_ - lo_)  # [n(j), 3]
        # carries[i, j]: could j carry i? j's centre lower, i's centre inside j's grown footprint (x, z)
        inside = (centre[:, None, :] >= lo_[None] - grow[None]) & (centre[:, None, :] <= hi_[None] + grow[None])
        carries = inside[..., 0] & inside[..., 2] & (centre[None, :, 1] < centre[:, None, 1])
        carries &= ~torch.eye(n, dtype=torch.bool, device=carries.device)
        # The ground: the median bottom of objects with nothing under them, so no single misplaced
        # object drags the floor with it (all objects when every one stands on another).
        free = ~carries.any(1)
        free = torch.where(free.any(), free, torch.ones_like(free))
        ground = torch.where(free, b, torch.full_like(b, float("nan"))).nanmedian()
        # Of the ground (candidate 0) and each carrier, the support nearest the bottom; ties go to
        # the first candidate.
        gaps = torch.cat([(b - ground).abs()[:, None],
                          torch.where(carries, (b[:, None] - t[None, :]).abs(), torch.full_like(carries, float("inf"),
                                                                                                  dtype=b.dtype))], 1)
        choice = gaps.argmin(1)  # [n] in 0..n
    on_object = tops[(choice - 1).clamp_min(0)]
    support = torch.where(choice > 0, on_object, ground.expand(n))
    return (bottoms - support).square().sum() / n

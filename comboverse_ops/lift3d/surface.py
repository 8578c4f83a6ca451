"""Density fields to triangle meshes: sample a grid, run marching cubes.

Grid convention (TripoSR's own): ``R`` samples per axis at ``linspace(-radius, radius, R)``,
indexed ``[ix, iy, iz]`` (``ij`` order), so vertex ``(i, j, k)`` in grid units is the point
``-radius + (i, j, k) * 2 radius / (R - 1)``.

Marching cubes is scikit-image's (Lewiner et al. 2003, topologically consistent). The grid is
padded with one layer of empty samples first, so surfaces cut by the grid boundary are closed
too: every mesh returned is watertight. Faces are counter-clockwise seen from outside (where the
density is below the level).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["sample_density_grid", "marching_cubes"]


def sample_density_grid(density: Callable[[torch.Tensor], torch.Tensor], radius: float, resolution: int, *,
                        chunk: int = 262_144, device=None, dtype=torch.float32,
                        check: Callable[[], None] | None = None) -> torch.Tensor:
    """``density`` sampled on the ``resolution^3`` grid of the module doc.

    Args:
        density: maps ``[N, 3]`` points (``dtype``, on ``device``) to ``[N]`` densities.
        radius: the grid spans ``[-radius, radius]^3``.
        resolution: samples per axis, >= 2.
        chunk: at most this many points per ``density`` call (memory only; same result).
        check: called between chunks (e.g. ComfyUI's cancel check).
    Returns:
        ``[R, R, R]`` float32 on ``device``, indexed ``[ix, iy, iz]``.
    """
    if resolution < 2:
        raise ValueError(f"resolution: expected at least 2 samples per axis, got {resolution}")
    axis = torch.linspace(-radius, radius, resolution, device=device, dtype=dtype)
    grid = torch.empty((resolution,) * 3, device=device, dtype=torch.float32)
    plane = resolution * resolution
    rows = max(1, chunk // plane)  # whole x-slices per call: no [R^3, 3] point array is ever built
    yz = torch.cartesian_prod(axis, axis)  # [R*R, 2], y major
    for start in range(0, resolution, rows):
        xs = axis[start:start + rows]
        pts = torch.cat([xs.repeat_interleave(plane)[:, None], yz.repeat(xs.shape[0], 1)], dim=1)
        for s in range(0, pts.shape[0], max(chunk, 1)):
            part = pts[s:s + chunk]
            grid.view(-1)[start * plane + s:start * plane + s + part.shape[0]] = density(part).float()
            if check is not None:
                check()
    return grid


def marching_cubes(grid: torch.Tensor, level: float, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The closed iso-surface ``grid == level`` of a density grid (inside: ``grid > level``).

    Args:
        grid: ``[R, R, R]`` float densities on the grid of the module doc (any device).
        level: iso value.
        radius: the grid spans ``[-radius, radius]^3``; vertices come back in those units.
    Returns:
        ``(vertices [V, 3] float32, faces [F, 3] int64)`` on the CPU; faces counter-clockwise
        seen from outside. ``V == F == 0`` when the grid never exceeds ``level``.
    """
    import numpy as np
    from skimage.measure import marching_cubes as skimage_marching_cubes

    if grid.ndim != 3 or len(set(grid.shape)) != 1:
        raise ValueError(f"grid: expected a cubic [R, R, R] density grid, got {tuple(grid.shape)}")
    volume = grid.detach().to("cpu", torch.float32).numpy()
    if not np.isfinite(volume).all():
        volume = np.nan_to_num(volume, nan=0.0, posinf=np.finfo(np.float32).max / 4, neginf=0.0)
    if not (volume > level).any():
        return torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64)
    outside = min(float(volume.min()), float(level)) - 1.0
    padded = np.pad(volume, 1, mode="constant", constant_values=outside)
    verts, faces, _, _ = skimage_marching_cubes(padded, level=float(level), method="lewiner")
    resolution = grid.shape[0]
    step = 2.0 * radius / (resolution - 1)
    verts = (verts - 1.0) * step - radius  # undo the padding, grid units -> world
    # scikit-image winds faces counter-clockwise seen from the high-valued side (the inside here);
    # the pack wants them counter-clockwise seen from outside.
    faces = faces[:, [0, 2, 1]]
    return (torch.from_numpy(np.ascontiguousarray(verts, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(faces, dtype=np.int64)))

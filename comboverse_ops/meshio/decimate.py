"""Mesh decimation to a face budget (ComboVerse decimates every object to at most 50,000 faces).

Quadric edge collapse by ``fast-simplification`` (the library trimesh's
``simplify_quadric_decimation`` calls). Collapsing can stall above the budget on pathological
meshes (a sponge of very many tiny pieces, e.g. a noisy reconstruction); then the largest pieces
that fit are kept, and if one piece alone is still too big, vertices are clustered on the finest
uniform grid that meets the budget (coarse, but the budget always holds). Collapses move vertices, so per-vertex attributes are carried over from the nearest
original vertex (colours, uvs); callers that can recompute colours exactly (the TripoSR
decoder) do that instead.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from ..types.mesh import Mesh

MAX_FACES = 50_000  # ComboVerse paper: each object decimated to at most 50k faces (0 keeps all)

__all__ = ["decimate"]

logger = logging.getLogger(__name__)


def _largest_pieces(faces, n_vertices: int, max_faces: int):
    """The faces of the largest connected pieces (by face count) that fit in ``max_faces``."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols = faces.reshape(-1), faces[:, [1, 2, 0]].reshape(-1)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_vertices, n_vertices))
    _, vertex_piece = connected_components(graph, directed=False)
    piece = vertex_piece[faces[:, 0]]
    sizes = np.bincount(piece)
    order = np.argsort(-sizes, kind="stable")
    keep = order[np.cumsum(sizes[order]) <= max_faces]
    if keep.size == 0:  # even the largest piece is over budget: keep it alone
        keep = order[:1]
    return faces[np.isin(piece, keep)]


def _cluster_once(points, faces, lo, cell: float):
    import numpy as np

    ijk = np.floor((points - lo) / cell).astype(np.int64)
    m = int(ijk.max()) + 1
    _, inverse = np.unique((ijk[:, 0] * m + ijk[:, 1]) * m + ijk[:, 2], return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse)
    centroids = np.stack([np.bincount(inverse, weights=points[:, d]) for d in range(3)], axis=1) / counts[:, None]
    f = inverse[faces]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    return centroids, f[np.sort(first)]


def _cluster_vertices(points, faces, max_faces: int):
    """Vertex clustering on the finest uniform grid (cells per side, binary search) within budget."""
    lo = points.min(0)
    extent = float((points.max(0) - lo).max()) or 1.0
    best, low, high = None, 1, 4096
    while low <= high:
        n = (low + high) // 2
        p, f = _cluster_once(points, faces, lo, extent / n)
        if len(f) <= max_faces:
            best, low = (p, f), n + 1
        else:
            high = n - 1
    if best is None:  # not even one cell per side fits (a budget of a handful of faces)
        p, f = _cluster_once(points, faces, lo, extent)
        best = (p, f[:max_faces])
    return best


def decimate(mesh: Mesh, max_faces: int, *, transfer_attributes: bool = True) -> Mesh:
    """``mesh`` with at most ``max_faces`` faces (unchanged when it already has no more).

    Args:
        mesh: a valid mesh (any device; the result is on the same device and dtype).
        max_faces: face budget, >= 4; 0 or less keeps the mesh as it is.
        transfer_attributes: copy vertex colours / uvs from the nearest original vertex; when
            False they are dropped (``texture`` too).
    Returns:
        a new :class:`Mesh` (the input is not modified).
    """
    import numpy as np

    if max_faces <= 0 or mesh.num_faces <= max_faces:
        return mesh
    if max_faces < 4:
        raise ValueError(f"max_faces: expected 0 (keep all) or at least 4, got {max_faces}")
    import fast_simplification

    points = mesh.vertices.detach().to("cpu", torch.float64).numpy()
    faces = mesh.faces.detach().to("cpu", torch.int64).numpy()
    new_points, new_faces = points, faces
    for _ in range(2):  # the collapse may stop a little above the target; a second pass finishes it
        new_points, new_faces = fast_simplification.simplify(new_points, new_faces.astype(np.int32),
                                                             target_count=max_faces)
        if len(new_faces) <= max_faces:
            break
    if len(new_faces) > max_faces:
        before = len(new_faces)
        new_faces = _largest_pieces(new_faces, len(new_points), max_faces)
        if len(new_faces) > max_faces:  # one piece alone is over budget: collapse it once more
            new_points, new_faces = fast_simplification.simplify(new_points, new_faces.astype(np.int32),
                                                                 target_count=max_faces)
        if len(new_faces) > max_faces:
            new_points, new_faces = _cluster_vertices(new_points, new_faces, max_faces)
        logger.warning("mesh %r: quadric decimation stalled at %d faces; kept the largest pieces / clustered "
                       "vertices: %d faces", mesh.name, before, len(new_faces))
    used = np.unique(new_faces)
    remap = np.full(len(new_points), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    new_points, new_faces = new_points[used], remap[new_faces]
    dev, dt = mesh.vertices.device, mesh.vertices.dtype
    out = replace(mesh, vertices=torch.as_tensor(new_points, dtype=dt, device=dev),
                  faces=torch.as_tensor(new_faces, dtype=torch.int64, device=dev),
                  vertex_colors=None, uvs=None, texture=None)
    has_attr = mesh.vertex_colors is not None or mesh.uvs is not None
    if transfer_attributes and has_attr:
        from scipy.spatial import cKDTree

        _, nearest = cKDTree(points).query(new_points)
        idx = torch.as_tensor(nearest, dtype=torch.int64, device=dev)
        out = replace(out, vertex_colors=None if mesh.vertex_colors is None else mesh.vertex_colors[idx],
                      uvs=None if mesh.uvs is None else mesh.uvs[idx], texture=mesh.texture)
    logger.debug("decimated %r from %d to %d faces", mesh.name, mesh.num_faces, out.num_faces)
    return out.validate()

"""Pure-torch differentiable rasterizer (CPU, MPS, CUDA without nvdiffrast).

How it works, in two passes per call:

1. Without autograd, every triangle is paired with the pixels inside its screen bounding box
   (grown by half the antialiasing width for front faces), so cost follows covered pixels, not
   pixels x faces. A z-buffer picks, per pixel, the front-most triangle covering the pixel centre.
2. With autograd, the few pairs that make each pixel are evaluated again from the
   differentiable clip-space vertices and alpha-composited front to back.

Antialiasing, and with it the gradient of alpha w.r.t. poses, lives on silhouette edges: edges
of a front-facing triangle whose neighbour (found by position, see ``FlatScene.neighbours``)
faces away or is missing. A pixel whose centre lies at signed distance ``d`` (pixels, positive
inside) from such an edge is covered ``clamp(0.5 + d / aa_width, 0, 1)`` - a box filter for
straight edges, so the pixel nearest an edge, inside or outside, always carries its gradient.
Outside, the edge's triangle is composited over what lies behind; inside, the nearest
front-facing surface behind the covering triangle (another object, or the far side of this
one) shows through, else the background. Interior edges of a surface are not softened, so
closed meshes show no seams. Gradients of colour and depth flow through perspective-correct
barycentrics. Triangles with a vertex behind the near plane are dropped.

Determinism: every differentiable gather is an ``index_select`` and every scatter an
``index_add``, whose CPU backward and forward add in index order. Advanced indexing
(``x[idx]``) would be shorter, but its backward adds with atomics across threads, so the
gradients, and with them the refined poses, changed with the thread count and the machine's
load (see :mod:`comboverse_ops.determinism`).
"""

from __future__ import annotations

import torch

from .common import FlatScene, shade

__all__ = ["rasterize_torch"]

_EPS = 1e-12
_RAMP, _COVER, _BEHIND = 0, 1, 2  # kinds of fragments, front to back within a pixel


def _screen(clip: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[..., 4]`` clip coordinates to ``[..., 3]`` (x, y in pixels with y down, w)."""
    w = clip[..., 3]
    x = (clip[..., 0] / w + 1) * (width / 2)
    y = (1 - clip[..., 1] / w) * (height / 2)
    return torch.stack([x, y, w], -1)


def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]`` for ``[N, C]`` ``x`` and int64 ``idx`` of any shape, with a backward that adds
    in a fixed order (module doc, Determinism). Returns ``[*idx.shape, C]``."""
    return x.index_select(0, idx.reshape(-1)).reshape(*idx.shape, x.shape[1])


def _cross2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _signed_area(tri: torch.Tensor) -> torch.Tensor:
    return _cross2(tri[..., 1, :2] - tri[..., 0, :2], tri[..., 2, :2] - tri[..., 0, :2])


def _silhouette_edges(scr: torch.Tensor, flat: FlatScene, near: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per face, for one camera: drawable, front-facing, and which of its 3 edges are silhouettes."""
    tri = scr[flat.faces]
    area = _signed_area(tri)
    drawable = (tri[..., 2] > near).all(-1) & (area.abs() > 1e-9)
    # Screen y points down, so OpenGL's counter-clockwise front faces have negative area here.
    front = drawable & (area < 0)
    nb = flat.neighbours
    nb_front = torch.where(nb >= 0, front[nb.clamp_min(0)], torch.zeros_like(nb, dtype=torch.bool))
    return drawable, front, front[:, None] & ~nb_front


def _pair_geometry(tri: torch.Tensor, px: torch.Tensor, py: torch.Tensor, sil: torch.Tensor):
    """Pixel centres against their paired triangles.

    Args:
        tri: ``[P, 3, 3]`` screen vertices (x, y, w) of each pair's triangle.
        px, py: ``[P]`` integer pixel coordinates.
        sil: ``[P, 3]`` bool, which edges of the triangle are silhouette edges.
    Returns:
        ``inside`` ``[P]`` bool (pixel centre inside the triangle); ``sil_dist`` ``[P]`` distance
        in pixels to the nearest silhouette edge segment (inf if none); ``depth`` ``[P]``
        perspective-correct view depth and ``pbary`` ``[P, 3]`` perspective-correct barycentrics,
        both taken at the nearest point of the triangle for outside pixels.
    """
    c = torch.stack([px.to(tri.dtype) + 0.5, py.to(tri.dtype) + 0.5], -1)
    p = tri[..., :2]
    area = _signed_area(tri)
    area = torch.where(area.abs() < _EPS, torch.full_like(area, _EPS), area)
    b0 = _cross2(p[:, 2] - p[:, 1], c - p[:, 1]) / area
    b1 = _cross2(p[:, 0] - p[:, 2], c - p[:, 2]) / area
    bary = torch.stack([b0, b1, 1 - b0 - b1], -1)
    inside = (bary >= 0).all(-1)
    edge_d = []
    for k in range(3):
        a, b = p[:, k], p[:, (k + 1) % 3]
        ab = b - a
        t = ((c - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(_EPS)
        edge_d.append((c - a - t.clamp(0, 1)[:, None] * ab).norm(dim=-1))
    edge_d = torch.stack(edge_d, -1)
    sil_dist = torch.where(sil, edge_d, torch.full_like(edge_d, float("inf"))).amin(-1)
    clamped = bary.clamp_min(0)
    clamped = clamped / clamped.sum(-1, keepdim=True).clamp_min(_EPS)
    bary = torch.where(inside[:, None], bary, clamped)
    q = bary / tri[:, :, 2]
    qs = q.sum(-1)
    return inside, sil_dist, 1 / qs, q / qs[:, None]


def _enumerate_pairs(scr: torch.Tensor, faces: torch.Tensor, drawable: torch.Tensor, front: torch.Tensor,
                     width: int, height: int, aa_width: float, cull: bool = True):
    """Pairs (face, pixel) for one camera whose pixel lies in the face's grown screen box.

    With ``cull=False`` every face is paired with every pixel (the dense reference).
    """
    tri = scr[faces]
    grow = torch.where(front, aa_width / 2, 0.0).to(tri.dtype)
    lo = tri[..., :2].amin(1) - grow[:, None]
    hi = tri[..., :2].amax(1) + grow[:, None]
    x0 = torch.ceil(lo[:, 0] - 0.5).clamp(0, width).long()
    y0 = torch.ceil(lo[:, 1] - 0.5).clamp(0, height).long()
    x1 = torch.floor(hi[:, 0] - 0.5).clamp(-1, width - 1).long()
    y1 = torch.floor(hi[:, 1] - 0.5).clamp(-1, height - 1).long()
    if not cull:
        x0, y0 = torch.zeros_like(x0), torch.zeros_like(y0)
        x1, y1 = torch.full_like(x1, width - 1), torch.full_like(y1, height - 1)
    nx = (x1 - x0 + 1).clamp_min(0)
    ny = (y1 - y0 + 1).clamp_min(0)
    count = torch.where(drawable, nx * ny, torch.zeros_like(nx))
    fid = torch.repeat_interleave(torch.arange(faces.shape[0], device=faces.device), count)
    start = torch.cumsum(count, 0) - count
    local = torch.arange(fid.shape[0], device=faces.device) - start[fid]
    return fid, x0[fid] + local % nx[fid], y0[fid] + local // nx[fid]


def _nearest_per_pixel(pix: torch.Tensor, depth: torch.Tensor, candidate: torch.Tensor, n_pix: int):
    """Bool mask of the one nearest candidate pair per pixel (ties to the highest pair index),
    and the ``[n_pix]`` depth buffer (inf where a pixel has no candidate)."""
    zbuf = torch.full((n_pix,), float("inf"), device=depth.device, dtype=depth.dtype)
    zbuf.scatter_reduce_(0, pix[candidate], depth[candidate], reduce="amin")
    nearest = candidate & (depth <= zbuf[pix])
    order = torch.arange(pix.shape[0], device=pix.device)
    best = torch.full((n_pix,), -1, device=pix.device, dtype=torch.long)
    best.scatter_reduce_(0, pix[nearest], order[nearest], reduce="amax")
    return nearest & (best[pix] == order), zbuf


@torch.no_grad()
def _select_fragments(scr: torch.Tensor, flat: FlatScene, width: int, height: int, near: float,
                      aa_width: float, cull: bool = True):
    """Pass 1 for one camera: the (face, pixel, kind) fragments that make the image, front to back."""
    drawable, front, sil = _silhouette_edges(scr, flat, near)
    fid, px, py = _enumerate_pairs(scr, flat.faces, drawable, front, width, height, aa_width, cull)
    inside, sil_dist, depth, _ = _pair_geometry(scr[flat.faces[fid]], px, py, sil[fid])
    pix = py * width + px
    n_pix = width * height
    cover, zbuf = _nearest_per_pixel(pix, depth, inside, n_pix)
    # Where the covering triangle lies within half a ramp of its silhouette, the surface behind shows.
    soft = torch.zeros(n_pix, dtype=torch.bool, device=pix.device)
    soft[pix[cover & (sil_dist < aa_width / 2)]] = True
    behind, _ = _nearest_per_pixel(pix, depth, inside & front[fid] & ~cover & (depth >= zbuf[pix]) & soft[pix],
                                   n_pix)
    ramp = ~inside & (sil_dist < aa_width / 2) & (depth < zbuf[pix])
    kind = torch.full_like(pix, _RAMP)
    kind[cover], kind[behind] = _COVER, _BEHIND
    keep = ramp | cover | behind
    fid, pix, depth, kind = fid[keep], pix[keep], depth[keep], kind[keep]
    # Front to back inside each pixel: by kind, then depth, then stably by pixel.
    o = torch.argsort(depth, stable=True)
    o = o[torch.argsort(kind[o], stable=True)]
    o = o[torch.argsort(pix[o], stable=True)]
    return fid[o], pix[o], kind[o], sil[fid[o]]


def rasterize_torch(flat: FlatScene, clip: torch.Tensor, width: int, height: int,
                    background: torch.Tensor, near: float = 1e-4, aa_width: float = 1.0, cull: bool = True,
                    per_object: bool = False):
    """Render a flattened scene for ``B`` cameras.

    Args:
        flat: the scene (see :func:`.common.flatten_scene`).
        clip: ``[B, V, 4]`` clip-space vertices (differentiable).
        width, height: image size in pixels.
        background: ``[3]`` colour behind the objects.
        near: smallest clip ``w`` (view depth) a drawn vertex may have.
        aa_width: width in pixels of the coverage ramp across silhouette edges.
        cull: pair faces only with pixels near them (False: every pixel, the slow dense
            reference that tests and benchmarks compare against).
        per_object: also return each object's visible alpha ``[B, N, H, W]``.
    Returns:
        ``(rgb [B,H,W,3], alpha [B,H,W], depth [B,H,W], object_id [B,H,W], object_alpha)`` as
        in :class:`.common.RenderOutput` (``object_alpha`` None unless ``per_object``).
    """
    b_count = clip.shape[0]
    n_img = height * width
    scr = _screen(clip, width, height)
    parts = [_select_fragments(scr[b].detach(), flat, width, height, near, aa_width, cull) for b in range(b_count)]
    fid = torch.cat([p[0] for p in parts])
    pix = torch.cat([p[1] + b * n_img for b, p in enumerate(parts)])
    kind = torch.cat([p[2] for p in parts])
    sil = torch.cat([p[3] for p in parts])
    cam = pix // n_img
    px, py = (pix % n_img) % width, (pix % n_img) // width

    # Pass 2, differentiable, on the selected fragments only.
    vidx = flat.faces[fid]
    n_vert = scr.shape[1]
    tri = _rows(scr.reshape(-1, 3), cam[:, None] * n_vert + vidx)
    _, sil_dist, depth, pbary = _pair_geometry(tri, px, py, sil)
    ramp = (0.5 - sil_dist / aa_width).clamp(0, 1)
    inner = (0.5 + sil_dist / aa_width).clamp(0, 1)
    cover = torch.where(kind == _RAMP, ramp, torch.where(kind == _COVER, inner, torch.ones_like(ramp)))
    # Front-to-back transmittance inside each pixel's run: T_j = prod_{k<j} (1 - cover_k).
    log_t = torch.log1p(-cover.clamp(max=1 - 1e-6)).double()
    log_t = torch.where(kind == _BEHIND, torch.zeros_like(log_t), log_t)  # always last in its run
    excl = torch.cumsum(log_t, 0) - log_t
    run_start = torch.ones_like(pix, dtype=torch.bool)
    run_start[1:] = pix[1:] != pix[:-1]
    arange = torch.arange(pix.shape[0], device=pix.device)
    start_idx = torch.cummax(torch.where(run_start, arange, torch.zeros_like(arange)), 0).values
    weight = cover * torch.exp(excl - excl.index_select(0, start_idx)).to(cover.dtype)

    obj = flat.face_object[fid]
    color = (pbary[:, :, None] * _rows(flat.colors, vidx)).sum(1)
    uv = (pbary[:, :, None] * _rows(flat.uvs, vidx)).sum(1)
    color = shade(flat, obj, color, uv)

    n_pix = b_count * n_img
    alpha = clip.new_zeros(n_pix).index_add(0, pix, weight)
    rgb = clip.new_zeros(n_pix, 3).index_add(0, pix, weight[:, None] * color)
    wdepth = clip.new_zeros(n_pix).index_add(0, pix, weight * depth)
    depth_img = torch.where(alpha > 1e-6, wdepth / alpha.clamp_min(1e-6), torch.zeros_like(wdepth))
    rgb = rgb + (1 - alpha)[:, None] * background.to(rgb.dtype)
    object_id = torch.full((n_pix,), -1, dtype=torch.long, device=clip.device)
    object_id[pix[kind == _COVER]] = obj[kind == _COVER]
    shape = (b_count, height, width)
    object_alpha = None
    if per_object:
        n_obj = len(flat.textures)
        object_alpha = clip.new_zeros(n_obj * n_pix).index_add(0, obj * n_pix + pix, weight)
        object_alpha = object_alpha.reshape(n_obj, *shape).transpose(0, 1)
    return (rgb.reshape(*shape, 3), alpha.reshape(shape), depth_img.reshape(shape), object_id.reshape(shape),
            object_alpha)

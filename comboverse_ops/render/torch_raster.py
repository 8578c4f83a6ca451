"""Pure-torch differentiable rasterizer (CPU, MPS, CUDA without nvdiffrast).

How it works, in two passes per call:

1. Without autograd, every triangle is paired with the pixels inside its screen bounding box
   (grown by half the antialiasing width for front faces). Cost follows covered pixels, not
   pixels x faces. Each pair gets screen barycentrics, a perspective-correct depth and a coverage:
   1 where the pixel centre lies inside the triangle, else ``clamp(0.5 - distance / aa_width)``
   for front-facing triangles (a one-pixel ramp outside silhouette edges). A z-buffer keeps, per
   pixel, the front-most covering triangle and the uncovering front-face ramps in front of it.
2. With autograd, those few pairs are evaluated again from the differentiable clip-space
   vertices and alpha-composited front to back. Gradients of alpha flow to the vertices through
   the ramps (silhouette and occlusion edges); gradients of colour and depth flow through the
   perspective-correct barycentrics.

Only front faces get ramps, so the inside of a closed mesh never shows seams and a silhouette
is softened once (not once per layer). Triangles with a vertex behind the near plane are dropped.
"""

from __future__ import annotations

import torch

from .common import FlatScene, shade

__all__ = ["rasterize_torch"]

_EPS = 1e-12


def _screen(clip: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[..., 4]`` clip coordinates to ``[..., 3]`` (x, y in pixels with y down, w)."""
    w = clip[..., 3]
    x = (clip[..., 0] / w + 1) * (width / 2)
    y = (1 - clip[..., 1] / w) * (height / 2)
    return torch.stack([x, y, w], -1)


def _cross2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _pair_geometry(tri: torch.Tensor, px: torch.Tensor, py: torch.Tensor):
    """Barycentrics and distance of pixel centres to their paired triangles.

    Args:
        tri: ``[P, 3, 3]`` screen vertices (x, y, w) of each pair's triangle.
        px, py: ``[P]`` integer pixel coordinates.
    Returns:
        ``bary`` ``[P, 3]`` screen barycentrics, clamped onto the triangle for outside pixels;
        ``inside`` ``[P]`` bool; ``dist`` ``[P]`` distance in pixels to the triangle (0 inside);
        ``depth`` ``[P]`` perspective-correct view depth; ``pbary`` ``[P, 3]`` perspective-correct
        barycentrics.
    """
    c = torch.stack([px.to(tri.dtype) + 0.5, py.to(tri.dtype) + 0.5], -1)
    p0, p1, p2 = tri[:, 0, :2], tri[:, 1, :2], tri[:, 2, :2]
    area = _cross2(p1 - p0, p2 - p0)
    area = torch.where(area.abs() < _EPS, torch.full_like(area, _EPS), area)
    b0 = _cross2(p2 - p1, c - p1) / area
    b1 = _cross2(p0 - p2, c - p2) / area
    b2 = 1 - b0 - b1
    bary = torch.stack([b0, b1, b2], -1)
    inside = (bary >= 0).all(-1)
    # Distance to the triangle: the nearest of its three edges (only used outside).
    dist = None
    for a, b in ((p0, p1), (p1, p2), (p2, p0)):
        ab = b - a
        t = ((c - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(_EPS)
        d = (c - a - t.clamp(0, 1)[:, None] * ab).norm(dim=-1)
        dist = d if dist is None else torch.minimum(dist, d)
    dist = torch.where(inside, torch.zeros_like(dist), dist)
    clamped = bary.clamp_min(0)
    clamped = clamped / clamped.sum(-1, keepdim=True).clamp_min(_EPS)
    bary = torch.where(inside[:, None], bary, clamped)
    q = bary / tri[:, :, 2]
    qs = q.sum(-1)
    depth = 1 / qs
    return bary, inside, dist, depth, q / qs[:, None]


def _enumerate_pairs(scr: torch.Tensor, faces: torch.Tensor, width: int, height: int, near: float,
                     aa_width: float, cull: bool = True):
    """Pairs (face, pixel) for one camera whose pixel lies in the face's grown screen box.

    With ``cull=False`` every face is paired with every pixel (the dense reference).
    """
    tri = scr[faces]  # [F, 3, 3]
    ok = (tri[..., 2] > near).all(-1)
    area = _cross2(tri[:, 1, :2] - tri[:, 0, :2], tri[:, 2, :2] - tri[:, 0, :2])
    ok &= area.abs() > 1e-9
    # Screen y points down, so OpenGL's counter-clockwise front faces have negative area here.
    front = area < 0
    grow = torch.where(front, torch.full_like(area, aa_width / 2), torch.zeros_like(area))
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
    count = torch.where(ok, nx * ny, torch.zeros_like(nx))
    fid = torch.repeat_interleave(torch.arange(faces.shape[0], device=faces.device), count)
    start = torch.cumsum(count, 0) - count
    local = torch.arange(fid.shape[0], device=faces.device) - start[fid]
    px = x0[fid] + local % nx[fid]
    py = y0[fid] + local // nx[fid]
    return fid, px, py, front[fid]


@torch.no_grad()
def _select_fragments(scr: torch.Tensor, faces: torch.Tensor, width: int, height: int, near: float,
                      aa_width: float, cull: bool = True):
    """Pass 1 for one camera: the (face, pixel) pairs that contribute to the image, front to back."""
    fid, px, py, front = _enumerate_pairs(scr, faces, width, height, near, aa_width, cull)
    _, inside, dist, depth, _ = _pair_geometry(scr[faces[fid]], px, py)
    keep = inside | (front & (dist < aa_width / 2))
    fid, px, py, inside, depth = fid[keep], px[keep], py[keep], inside[keep], depth[keep]
    pix = py * width + px
    zbuf = torch.full((height * width,), float("inf"), device=scr.device, dtype=depth.dtype)
    zbuf.scatter_reduce_(0, pix[inside], depth[inside], reduce="amin")
    # Exactly one covering pair per pixel: the nearest, ties to the highest pair index.
    is_front = inside & (depth <= zbuf[pix])
    order = torch.arange(pix.shape[0], device=pix.device)
    best = torch.full((height * width,), -1, device=pix.device, dtype=torch.long)
    best.scatter_reduce_(0, pix[is_front], order[is_front], reduce="amax")
    winner = inside & (best[pix] == order)
    ramp = ~inside & (depth < zbuf[pix])
    keep = winner | ramp
    fid, pix, depth, inside = fid[keep], pix[keep], depth[keep], inside[keep]
    # Front to back inside each pixel: sort by depth, then stably by pixel. A pixel's covering
    # triangle is its farthest kept pair, so it always closes its pixel's run.
    o = torch.argsort(depth, stable=True)
    o = o[torch.argsort(pix[o], stable=True)]
    return fid[o], pix[o], inside[o]


def rasterize_torch(flat: FlatScene, clip: torch.Tensor, width: int, height: int,
                    background: torch.Tensor, near: float = 1e-4, aa_width: float = 1.0, cull: bool = True):
    """Render a flattened scene for ``B`` cameras.

    Args:
        flat: the scene (see :func:`.common.flatten_scene`).
        clip: ``[B, V, 4]`` clip-space vertices (differentiable).
        width, height: image size in pixels.
        background: ``[3]`` colour behind the objects.
        near: smallest clip ``w`` (view depth) a drawn vertex may have.
        aa_width: width in pixels of the coverage ramp outside front-face edges.
        cull: pair faces only with pixels near them (False: every pixel, the slow dense
            reference that tests and benchmarks compare against).
    Returns:
        ``(rgb [B,H,W,3], alpha [B,H,W], depth [B,H,W], object_id [B,H,W])`` as in
        :class:`.common.RenderOutput`.
    """
    b_count = clip.shape[0]
    scr = _screen(clip, width, height)
    fids, pixs, insides = [], [], []
    for b in range(b_count):
        fid, pix, inside = _select_fragments(scr[b].detach(), flat.faces, width, height, near, aa_width, cull)
        fids.append(fid)
        pixs.append(pix + b * height * width)
        insides.append(inside)
    fid, pix, inside = torch.cat(fids), torch.cat(pixs), torch.cat(insides)
    cam = pix // (height * width)
    local = pix % (height * width)
    px, py = local % width, local // width

    # Pass 2, differentiable, on the selected pairs only.
    vidx = flat.faces[fid]  # [P, 3]
    tri = scr[cam[:, None], vidx]  # [P, 3, 3]
    _, _, dist, depth, pbary = _pair_geometry(tri, px, py)
    cover = torch.where(inside, torch.ones_like(dist), (0.5 - dist / aa_width).clamp(0, 1))
    # Segmented front-to-back transmittance: T_j = prod_{k<j} (1 - cover_k) within each pixel run.
    log_t = torch.log1p(-cover.clamp(max=1 - 1e-6)).double()
    log_t = torch.where(inside, torch.zeros_like(log_t), log_t)  # a run's covering pair is its last
    excl = torch.cumsum(log_t, 0) - log_t
    run_start = torch.ones_like(pix, dtype=torch.bool)
    run_start[1:] = pix[1:] != pix[:-1]
    start_idx = torch.cummax(torch.where(run_start, torch.arange(pix.shape[0], device=pix.device),
                                         torch.zeros_like(pix)), 0).values
    weight = cover * torch.exp(excl - excl[start_idx]).to(cover.dtype)

    obj = flat.face_object[fid]
    color = (pbary[:, :, None] * flat.colors[vidx]).sum(1)
    uv = (pbary[:, :, None] * flat.uvs[vidx]).sum(1)
    color = shade(flat, obj, color, uv)

    n_pix = b_count * height * width
    dtype = cover.dtype
    alpha = torch.zeros(n_pix, dtype=dtype, device=clip.device).index_add(0, pix, weight)
    rgb = torch.zeros(n_pix, 3, dtype=dtype, device=clip.device).index_add(0, pix, weight[:, None] * color)
    wdepth = torch.zeros(n_pix, dtype=dtype, device=clip.device).index_add(0, pix, weight * depth)
    depth_img = torch.where(alpha > 1e-6, wdepth / alpha.clamp_min(1e-6), torch.zeros_like(wdepth))
    rgb = rgb + (1 - alpha)[:, None] * background.to(dtype)
    object_id = torch.full((n_pix,), -1, dtype=torch.long, device=clip.device)
    object_id[pix[inside]] = obj[inside]
    shape = (b_count, height, width)
    return rgb.reshape(*shape, 3), alpha.reshape(shape), depth_img.reshape(shape), object_id.reshape(shape)

"""What both rasterizer backends share: the scene flattened to one triangle soup, and shading."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..types.camera import Cameras
from ..types.scene import Scene

__all__ = ["RenderOutput", "FlatScene", "flatten_scene", "face_neighbours", "to_clip", "shade"]


@dataclass(frozen=True)
class RenderOutput:
    """What :func:`comboverse_ops.render.render_scene` returns, batched over cameras.

    Attributes:
        rgb: ``[B, H, W, 3]`` float in [0, 1], composited over the background colour.
        alpha: ``[B, H, W]`` float in [0, 1]; edges are antialiased, so gradients reach every
            pose parameter through silhouettes.
        depth: ``[B, H, W]`` float view depth (distance along the viewing axis), 0 where empty.
        object_id: ``[B, H, W]`` int64 index into ``scene.objects`` of the front-most object
            whose surface covers the pixel centre, -1 where none does.
        object_alpha: ``[B, N, H, W]`` float, each object's visible share of ``alpha`` (they sum
            to ``alpha``); only when asked for with ``per_object=True``, else None.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    object_id: torch.Tensor
    object_alpha: torch.Tensor | None = None


@dataclass(frozen=True)
class FlatScene:
    """All posed objects concatenated.

    Attributes:
        vertices: ``[V, 3]`` world positions (differentiable w.r.t. poses).
        faces: ``[F, 3]`` int64 indices into ``vertices``.
        face_object: ``[F]`` int64 object index of each face.
        colors: ``[V, 3]`` per-vertex base colour (multiplies the texture where there is one).
        uvs: ``[V, 2]`` texture coordinates (zeros for untextured objects).
        textures: per object, ``[H, W, 3]`` texture or None.
        neighbours: ``[F, 3]`` int64 face across edge ``k`` (from vertex ``k`` to ``k + 1``) of each
            face, -1 on open boundaries; vertices at the same position count as one, so meshes
            with split vertices (hard edges, uv seams) are still closed.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    face_object: torch.Tensor
    colors: torch.Tensor
    uvs: torch.Tensor
    textures: tuple
    neighbours: torch.Tensor


# Topology per mesh, computed once: optimisation loops render the same frozen meshes many times.
# Keyed by the id of the faces tensor; an entry is dropped when that tensor is freed.
_NEIGHBOURS: dict[int, tuple] = {}


def mesh_neighbours(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """:func:`face_neighbours`, cached for as long as the mesh's tensors live."""
    hit = _NEIGHBOURS.get(id(faces))
    if hit is not None and hit[0]() is faces and hit[1]() is vertices:
        return hit[2]
    nb = face_neighbours(vertices, faces)
    _NEIGHBOURS[id(faces)] = (weakref.ref(faces), weakref.ref(vertices), nb)
    weakref.finalize(faces, _NEIGHBOURS.pop, id(faces), None)
    return nb


def face_neighbours(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """``[F, 3]`` neighbour across each face edge (see :class:`FlatScene`); -1 where an edge is
    open or shared by more than two faces."""
    v = vertices.detach()
    lo = v.amin(0)
    extent = (v.amax(0) - lo).max().clamp_min(1e-12)
    _, weld = torch.unique(torch.round((v - lo) / extent * 1e6).long(), dim=0, return_inverse=True)
    f = weld[faces]
    a, b = f, f.roll(-1, dims=1)
    n = int(weld.max()) + 1
    key = (torch.minimum(a, b) * n + torch.maximum(a, b)).reshape(-1)
    order = torch.argsort(key)
    sk = key[order]
    _, inverse, counts = torch.unique_consecutive(sk, return_inverse=True, return_counts=True)
    first = ((sk[1:] == sk[:-1]) & (counts[inverse][:-1] == 2)).nonzero().squeeze(1)
    e1, e2 = order[first], order[first + 1]
    nb = torch.full_like(key, -1)
    nb[e1] = e2 // 3
    nb[e2] = e1 // 3
    return nb.reshape(-1, 3)


# What flatten_scene concatenates besides the posed vertices depends only on the meshes; an
# optimisation loop renders the same meshes at every step, so it is built once per set of meshes
# (the same tensors each time, which also lets a backend cache what it derives from them).
# Keyed by the ids of every mesh tensor; an entry is dropped when the first mesh's faces are freed.
_STATIC: dict[tuple, tuple] = {}


def _static_parts(scene: Scene, dtype: torch.dtype) -> tuple:
    """``(faces, face_object, colors, uvs, textures, neighbours)`` of :class:`FlatScene` for ``scene``'s meshes."""
    meshes = [o.mesh for o in scene.objects]
    tensors = [t for m in meshes for t in (m.vertices, m.faces, m.vertex_colors, m.uvs, m.texture)]
    key = (dtype, *(id(t) for t in tensors))
    hit = _STATIC.get(key)
    if hit is not None and all(r() is t for r, t in zip(hit[0], tensors) if t is not None):
        return hit[1]
    faces, face_obj, cols, uvs, texs, nbs = [], [], [], [], [], []
    face_offset = offset = 0
    for i, m in enumerate(meshes):
        device = m.vertices.device
        faces.append(m.faces.to(torch.int64) + offset)
        nb = mesh_neighbours(m.vertices, m.faces).to(torch.int64)
        nbs.append(torch.where(nb >= 0, nb + face_offset, nb))
        face_offset += m.num_faces
        face_obj.append(torch.full((m.num_faces,), i, dtype=torch.int64, device=device))
        if m.has_texture:
            white = torch.ones(m.num_vertices, 3, dtype=dtype, device=device)
            cols.append(m.vertex_colors.to(dtype) if m.vertex_colors is not None else white)
            uvs.append(m.uvs.to(dtype))
            texs.append(m.texture.to(dtype))
        else:
            cols.append(m.colors_or_default().to(dtype))
            uvs.append(torch.zeros(m.num_vertices, 2, dtype=dtype, device=device))
            texs.append(None)
        offset += m.num_vertices
    parts = (torch.cat(faces), torch.cat(face_obj), torch.cat(cols), torch.cat(uvs), tuple(texs), torch.cat(nbs))
    _STATIC[key] = ([None if t is None else weakref.ref(t) for t in tensors], parts)
    weakref.finalize(meshes[0].faces, _STATIC.pop, key, None)
    return parts


def flatten_scene(scene: Scene, check: bool = True) -> FlatScene:
    """Validate the scene (unless ``check`` is False) and concatenate its posed objects (see :class:`FlatScene`)."""
    if check:
        scene.validate()
    verts = torch.cat([obj.world_vertices() for obj in scene.objects])
    faces, face_obj, cols, uvs, texs, nbs = _static_parts(scene, verts.dtype)
    return FlatScene(verts, faces, face_obj, cols, uvs, texs, nbs)


def to_clip(vertices: torch.Tensor, cams: Cameras) -> torch.Tensor:
    """``[V, 3]`` world positions to ``[B, V, 4]`` OpenGL clip coordinates for ``B`` cameras."""
    mvp = (cams.proj.to(vertices) @ cams.view.to(vertices))
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], 1)
    return torch.einsum("vj,bij->bvi", homo, mvp)


def shade(flat: FlatScene, obj: torch.Tensor, color: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Surface colour at fragments.

    Args:
        obj: ``[P]`` int64 object index per fragment.
        color: ``[P, 3]`` interpolated vertex colour; uv: ``[P, 2]`` interpolated uvs.
    Returns:
        ``[P, 3]`` colour: vertex colour times the bilinearly sampled texture where textured.
    """
    out = color
    for k, tex in enumerate(flat.textures):
        if tex is None:
            continue
        sel = (obj == k).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        u, v = uv[sel, 0], uv[sel, 1]
        # OpenGL uv (v up) against a texture stored top row first (see mesh.py).
        grid = torch.stack([u * 2 - 1, (1 - v) * 2 - 1], -1)[None, None]
        texel = F.grid_sample(tex.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                              align_corners=False)[0, :, 0].T
        out = out.index_put((sel,), out.index_select(0, sel) * texel)
    return out

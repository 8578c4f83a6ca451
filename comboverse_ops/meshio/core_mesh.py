"""ComfyUI's core ``MESH`` arrays made from a scene, and read back into meshes.

ComfyUI's core ``MESH`` is an object with ``vertices`` ``[B, N, 3]`` float and ``faces``
``[B, M, 3]`` int (and, in newer versions, ``vertex_colors`` **linear** in [0, 1], ``uvs``,
``texture``). This module only makes and reads those arrays; the node layer wraps them in
ComfyUI's class, so nothing here imports ComfyUI.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..types.colorspace import linear_to_srgb
from ..types.mesh import Mesh
from ..types.scene import Scene

__all__ = ["scene_to_mesh_arrays", "scene_vertex_colors", "meshes_from_mesh_arrays"]


def scene_to_mesh_arrays(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """All posed objects merged into one world-space mesh, as ComfyUI ``MESH`` arrays.

    Returns:
        ``(vertices, faces)``: ``[1, N, 3]`` float32 world positions and ``[1, M, 3]`` int64
        indices into them (each object's faces offset by the vertices before it), on the CPU,
        detached. Objects follow ``scene.objects`` order.
    """
    scene.validate()
    verts, faces, offset = [], [], 0
    for obj in scene.objects:
        verts.append(obj.world_vertices().detach().to("cpu", torch.float32))
        faces.append(obj.mesh.faces.detach().to("cpu", torch.int64) + offset)
        offset += obj.mesh.num_vertices
    return torch.cat(verts)[None], torch.cat(faces)[None]


def scene_vertex_colors(scene: Scene) -> torch.Tensor:
    """``[1, N, 3]`` float32 sRGB colours in [0, 1] of the vertices of :func:`scene_to_mesh_arrays`
    (the pack's convention: core ``MESH.vertex_colors`` wants :func:`.colorspace.srgb_to_linear` of them).

    Vertex colours as they are; textured objects get their texture sampled at each vertex's uv
    (times any vertex colour), so a viewer without textures still shows each object's look.
    """
    from ..render.common import shade  # shading is the renderer's, so colours match its images

    cols = []
    for obj in scene.objects:
        m = obj.mesh.to("cpu", torch.float32)
        base = m.colors_or_default() if not m.has_texture else (
            m.vertex_colors if m.vertex_colors is not None else torch.ones(m.num_vertices, 3))
        if m.has_texture:
            flat = SimpleNamespace(textures=(m.texture,))
            base = shade(flat, torch.zeros(m.num_vertices, dtype=torch.long), base, m.uvs)
        cols.append(base.detach().clamp(0, 1))
    return torch.cat(cols)[None]


def _batched(x, label: str, width: tuple[int, ...]) -> torch.Tensor:
    t = torch.as_tensor(x).detach()
    t = t[None] if t.ndim == 2 else t
    if t.ndim != 3 or t.shape[-1] not in width:
        want = " or ".join(f"[B, *, {w}]" for w in width)
        raise ValueError(f"{label}: expected {want} (or without the batch axis), got {tuple(t.shape)}")
    return t


def meshes_from_mesh_arrays(vertices, faces, colors=None, *, name: str = "mesh") -> list[Mesh]:
    """Split ComfyUI ``MESH`` arrays into one :class:`Mesh` per batch entry.

    Args:
        vertices: ``[B, N, 3]`` (or ``[N, 3]``) float positions, tensor or array.
        faces: ``[B, M, 3]`` (or ``[M, 3]``) integer indices into the same entry's vertices.
        colors: optional ``[B, N, 3]`` or ``[B, N, 4]`` vertex colours, linear as in core ``MESH``
            (float in [0, 1] or uint8 in [0, 255]; alpha is dropped), returned as the pack's
            sRGB values (:mod:`.colorspace`).
        name: mesh names are ``name`` for one entry, ``f"{name}_{b}"`` for several.
    Returns:
        ``B`` validated meshes (float32 vertices, int64 faces, copies of the inputs).
    Raises:
        ValueError: shapes that do not match, or faces that index past their entry's vertices.
    """
    v = _batched(vertices, "vertices", (3,))
    f = _batched(faces, "faces", (3,))
    if not v.is_floating_point():
        raise ValueError(f"vertices: expected floating point positions, got {v.dtype}")
    if f.is_floating_point() or f.dtype == torch.bool:
        raise ValueError(f"faces: expected integer vertex indices, got {f.dtype}")
    if f.shape[0] != v.shape[0]:
        raise ValueError(f"faces: expected batch size {v.shape[0]} (as vertices), got {f.shape[0]}")
    c = None
    if colors is not None:
        c = _batched(colors, "colors", (3, 4))
        if c.shape[:2] != v.shape[:2]:
            raise ValueError(f"colors: expected [{v.shape[0]}, {v.shape[1]}, 3 or 4] (as vertices), got {tuple(c.shape)}")
        c = linear_to_srgb(c[..., :3].float() / 255.0 if c.dtype == torch.uint8 else c[..., :3].float())
    n = v.shape[1]
    meshes = []
    for i in range(v.shape[0]):
        if f.shape[1] and (int(f[i].min()) < 0 or int(f[i].max()) >= n):
            raise ValueError(f"faces: batch entry {i} indexes vertices {int(f[i].min())}..{int(f[i].max())}, "
                             f"expected indices in 0..{n - 1} (vertices[{i}] has {n} vertices)")
        meshes.append(Mesh(vertices=v[i].to(torch.float32).clone(), faces=f[i].to(torch.int64).clone(),
                           vertex_colors=None if c is None else c[i].clone(),
                           name=name if v.shape[0] == 1 else f"{name}_{i}").validate())
    return meshes

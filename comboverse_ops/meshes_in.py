"""Object meshes from elsewhere: ComfyUI core ``MESH`` values and GLB / OBJ / PLY files.

Single-object generators other than the built-in one (Hunyuan3D, TRELLIS, TripoSG, a mesh made by
hand) often give better objects; ComboVerse's combination stage only needs one mesh per object in
the canonical object frame (:mod:`.mesh`: +Y up, front +Z, centred, longest side 1). The caller
says which of the source's axes is the object's front and which is up
(:mod:`.lift3d.frames`); meshes are decimated to a face budget (the paper uses 50,000) first.

Core ``MESH`` (read by attribute, so any ComfyUI version works; nothing here imports ComfyUI):
``vertices [B, N, 3]``, ``faces [B, M, 3]``; optional ``vertex_counts`` / ``face_counts [B]``
(real lengths of a zero-padded batch), ``vertex_colors`` (or ``colors``) ``[B, N, 3|4]`` in [0, 1],
``uvs [B, N, 2]`` and ``texture [B, H, W, 3]``. ComfyUI writes ``uvs`` to glTF unchanged, so they
follow glTF's convention (``v`` down); they are flipped into the pack's (``v`` up). Each batch
entry is one object.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .lift3d.decimate import decimate
from .lift3d.frames import to_canonical_frame
from .mesh import Mesh

__all__ = ["meshes_from_core_mesh", "mesh_from_file", "merge_meshes", "canonical_object", "texture_to_vertex_colors",
           "append_objects"]


def canonical_object(mesh: Mesh, *, front: str = "+Z", up: str = "+Y", max_faces: int = 50_000) -> Mesh:
    """``mesh`` decimated to ``max_faces`` (0 keeps all) and put into the canonical object frame."""
    return to_canonical_frame(decimate(mesh.validate(), max_faces), front=front, up=up)


def _item(value, index: int, count: int | None, what: str, batch: int):
    """Entry ``index`` of a batched MESH attribute, cut to ``count`` rows of a padded batch."""
    if value is None:
        return None
    t = torch.as_tensor(value).detach()
    if t.ndim < 2 or t.shape[0] != batch:
        if what == "texture" and t.ndim == 4 and t.shape[0] == 1:
            return t[0]  # one texture shared by every entry
        raise ValueError(f"MESH.{what}: expected a batch of {batch} (as vertices), got shape {tuple(t.shape)}")
    return t[index] if count is None else t[index, :count]


def meshes_from_core_mesh(core_mesh, *, front: str = "+Z", up: str = "+Y", max_faces: int = 50_000,
                          name: str = "object") -> list[Mesh]:
    """One canonical-frame :class:`Mesh` per batch entry of a ComfyUI ``MESH`` (module doc).

    Args:
        core_mesh: the ``MESH`` value (any object with the attributes of the module doc).
        front, up: the source axes of the objects' front and top (``"+X"`` ... ``"-Z"``).
        max_faces: decimate to at most this many faces (0 keeps all).
        name: mesh names are ``name`` for one entry, ``f"{name}_{b}"`` for several.
    Returns:
        ``B`` meshes on the CPU (float32, colours / uv texture kept where given).
    Raises:
        ValueError: missing or malformed attributes, naming the attribute and the shapes.
    """
    vertices, faces = getattr(core_mesh, "vertices", None), getattr(core_mesh, "faces", None)
    if vertices is None or faces is None:
        raise ValueError(f"mesh: expected a ComfyUI MESH (with vertices and faces), got {type(core_mesh).__name__}")
    v_all, f_all = torch.as_tensor(vertices).detach(), torch.as_tensor(faces).detach()
    if v_all.ndim == 2:
        v_all, f_all = v_all[None], f_all[None]
    if v_all.ndim != 3 or v_all.shape[-1] != 3 or f_all.ndim != 3 or f_all.shape[-1] != 3:
        raise ValueError(f"MESH: expected vertices [B, N, 3] and faces [B, M, 3], got {tuple(v_all.shape)} and "
                         f"{tuple(f_all.shape)}")
    if f_all.shape[0] != v_all.shape[0]:
        raise ValueError(f"MESH: vertices hold {v_all.shape[0]} meshes but faces hold {f_all.shape[0]}")
    v_counts, f_counts = getattr(core_mesh, "vertex_counts", None), getattr(core_mesh, "face_counts", None)
    colors = getattr(core_mesh, "vertex_colors", None)
    if colors is None:
        colors = getattr(core_mesh, "colors", None)  # older ComfyUI / TRELLIS nodes
    uvs, texture = getattr(core_mesh, "uvs", None), getattr(core_mesh, "texture", None)
    b = v_all.shape[0]
    out = []
    for i in range(b):
        nv = None if v_counts is None else int(v_counts[i])
        nf = None if f_counts is None else int(f_counts[i])
        v = _item(v_all, i, nv, "vertices", b).to(torch.float32)
        f = _item(f_all, i, nf, "faces", b).to(torch.int64)
        c = _item(colors, i, nv, "vertex_colors", b)
        if c is not None:
            c = (c.float() / 255.0 if c.dtype == torch.uint8 else c.float())[:, :3].clamp(0, 1)
        uv, tex = _item(uvs, i, nv, "uvs", b), _item(texture, i, None, "texture", b)
        if uv is None or tex is None:
            uv = tex = None
        else:
            uv = uv.float().clone()
            uv[:, 1] = 1.0 - uv[:, 1]  # glTF (v down) -> pack (v up)
            tex = tex[..., :3].float().clamp(0, 1)
        label = name if b == 1 else f"{name}_{i}"
        try:
            mesh = Mesh(vertices=v.clone(), faces=f.clone(), vertex_colors=c, uvs=uv, texture=tex, name=label)
            out.append(canonical_object(mesh, front=front, up=up, max_faces=max_faces))
        except ValueError as err:
            raise ValueError(f"MESH batch entry {i}: {err}") from err
    return out


def texture_to_vertex_colors(mesh: Mesh) -> Mesh:
    """A textured mesh turned into a vertex-coloured one (texture sampled bilinearly at each uv,
    times any vertex colour); other meshes are returned unchanged."""
    if not mesh.has_texture:
        return mesh
    tex = mesh.texture.float().permute(2, 0, 1)[None]
    uv = mesh.uvs.float()
    grid = torch.stack([uv[:, 0] * 2 - 1, (1 - uv[:, 1]) * 2 - 1], dim=1)[None, None]  # v up -> rows down
    sampled = F.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T
    colors = sampled if mesh.vertex_colors is None else sampled * mesh.vertex_colors.float()
    return replace(mesh, vertex_colors=colors.clamp(0, 1), uvs=None, texture=None)


def merge_meshes(meshes: list[Mesh], name: str) -> Mesh:
    """Several parts as one mesh (one object). A single part is kept as it is (texture included);
    several parts are merged with vertex colours (textures sampled per vertex, grey where a part
    has none)."""
    if not meshes:
        raise ValueError(f"{name}: no meshes to merge")
    if len(meshes) == 1:
        return replace(meshes[0], name=name)
    parts = [texture_to_vertex_colors(m) for m in meshes]
    coloured = any(p.vertex_colors is not None for p in parts)
    verts, faces, cols, offset = [], [], [], 0
    for p in parts:
        verts.append(p.vertices.float())
        faces.append(p.faces + offset)
        if coloured:
            cols.append(p.colors_or_default().float())
        offset += p.num_vertices
    return Mesh(vertices=torch.cat(verts), faces=torch.cat(faces), vertex_colors=torch.cat(cols) if coloured else None,
                name=name).validate()


def mesh_from_file(path: str | os.PathLike, *, front: str = "+Z", up: str = "+Y", max_faces: int = 50_000,
                   name: str | None = None) -> Mesh:
    """One canonical-frame object from a GLB / glTF / OBJ / PLY file (all its meshes merged).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no triangle mesh, or bad axes.
    """
    from .export import load_mesh_file

    path = Path(path)
    name = name or path.stem
    return canonical_object(merge_meshes(load_mesh_file(path), name), front=front, up=up, max_faces=max_faces)


def append_objects(existing: list[Mesh] | None, new: list[Mesh]) -> list[Mesh]:
    """A new list: ``existing`` then ``new``, with clashing names made unique (``name_2``, ...),
    since a scene needs one name per object. Neither input list is modified."""
    out = list(existing or [])
    taken = {m.name for m in out}
    for m in new:
        name, k = m.name, 2
        while name in taken:
            name, k = f"{m.name}_{k}", k + 1
        taken.add(name)
        out.append(m if name == m.name else replace(m, name=name))
    return out

"""ComfyUI's core ``MESH`` <-> the pack's :class:`~comboverse_ops.types.mesh.Mesh`, both directions, written once.

In: :func:`read_core_mesh` turns a core ``MESH`` into one :class:`Mesh` per batch entry, as it
is stored (no re-framing; :func:`.meshes_in.meshes_from_core_mesh` then puts each object into the
canonical frame). Out: :func:`scene_to_mesh_arrays` and :func:`scene_vertex_colors` give the
arrays of a posed scene merged in world space; the node layer wraps them in ComfyUI's class
(``nodes/host.py``), so nothing here imports ComfyUI.

Core ``MESH`` (read by attribute, so any ComfyUI version works; nothing here imports ComfyUI),
in every form core nodes produce (checked against ComfyUI's 2026 ``comfy_api`` MESH type,
SaveGLB and its mesh post-processing nodes):

- a tensor batch: ``vertices [B, N, 3]``, ``faces [B, M, 3]`` (or one mesh, ``[N, 3]`` / ``[M, 3]``);
- a zero-padded batch: the same plus ``vertex_counts`` / ``face_counts [B]``, the real lengths;
  per-vertex attributes are cut to ``vertex_counts`` too (``colors`` to ``color_counts`` if set);
- a ragged batch: Python lists of per-item tensors (``vertices[i] [N_i, 3]``, ``faces[i] [M_i, 3]``,
  per-vertex attributes likewise), as core's Decimate / Fill Holes nodes return meshes of
  different sizes; list items are taken whole (any counts describe an earlier padded form).

Optional attributes: ``vertex_colors`` (``colors`` in early TRELLIS.2 nodes) ``[B, N, 3|4]``,
**linear** values in [0, 1] as glTF stores them (core's SaveGLB writes them to ``COLOR_0``
unchanged), converted to the pack's sRGB (:mod:`.colorspace`); ``uvs [B, N, 2]`` and ``texture
[B, H, W, 3]`` (sRGB, kept as it is). ComfyUI writes ``uvs`` to glTF unchanged, so they follow
glTF's convention (``v`` down); they are flipped into the pack's (``v`` up). Each batch entry is
one object.
"""

from __future__ import annotations

import torch

from ..types.colorspace import linear_to_srgb
from ..types.mesh import Mesh, texture_to_vertex_colors
from ..types.scene import Scene

__all__ = ["core_mesh_items", "read_core_mesh", "scene_to_mesh_arrays", "scene_vertex_colors"]


def _per_item(value, what: str, batch: int, counts: list[int] | None = None, shared: bool = False) -> list:
    """A MESH attribute as ``batch`` per-item tensors (module doc), ``[None] * batch`` when absent.

    ``value`` is a list of per-item tensors, or a ``[B, ...]`` tensor whose item ``i`` is cut to
    ``counts[i]`` rows when counts are given; ``shared``: a ``[1, ...]`` tensor serves every item.
    """
    if value is None:
        return [None] * batch
    if isinstance(value, (list, tuple)):
        if len(value) != batch:
            raise ValueError(f"MESH.{what}: expected {batch} per-item tensors (as vertices), "
                             f"got a list of {len(value)}")
        return [None if x is None else torch.as_tensor(x).detach() for x in value]
    t = torch.as_tensor(value).detach()
    if shared and t.ndim >= 1 and t.shape[0] == 1 and batch > 1:
        return [t[0]] * batch
    if t.ndim < 2 or t.shape[0] != batch:
        raise ValueError(f"MESH.{what}: expected a batch of {batch} (as vertices), got shape {tuple(t.shape)}")
    if counts is None:
        return list(t.unbind(0))
    if max(counts) > t.shape[1]:
        raise ValueError(f"MESH.{what}: counts {counts} exceed the padded length {t.shape[1]}")
    return [t[i, :n] for i, n in enumerate(counts)]


def _counts(core_mesh, name: str, batch: int) -> list[int] | None:
    value = getattr(core_mesh, name, None)
    if value is None:
        return None
    counts = [int(n) for n in torch.as_tensor(value).reshape(-1).tolist()]
    if len(counts) != batch or min(counts) < 0:
        raise ValueError(f"MESH.{name}: expected {batch} non-negative lengths (one per mesh), got {counts}")
    return counts


def core_mesh_items(core_mesh) -> list[dict]:
    """Per-item tensors of a ComfyUI ``MESH`` in any of the forms of the module doc.

    Returns:
        one dict per batch entry with ``vertices [N, 3]``, ``faces [M, 3]`` and (None where absent)
        ``vertex_colors [N, 3|4]`` (linear, as the MESH holds them), ``uvs [N, 2]``, ``texture
        [H, W, 3]``: views of the input, padding cut off; dtypes as given.
    Raises:
        ValueError: not a MESH, or attributes whose batch sizes or counts do not match.
    """
    vertices, faces = getattr(core_mesh, "vertices", None), getattr(core_mesh, "faces", None)
    if vertices is None or faces is None:
        raise ValueError(f"mesh: expected a ComfyUI MESH (with vertices and faces), got {type(core_mesh).__name__}")
    colors, colors_attr = getattr(core_mesh, "vertex_colors", None), "vertex_colors"
    if colors is None:
        colors, colors_attr = getattr(core_mesh, "colors", None), "colors"  # early TRELLIS.2 nodes (2026)
    uvs, texture = getattr(core_mesh, "uvs", None), getattr(core_mesh, "texture", None)
    ragged = isinstance(vertices, (list, tuple))
    if not ragged:
        vertices = torch.as_tensor(vertices).detach()
        if vertices.ndim == 2:  # one mesh without a batch axis: every attribute is one item
            vertices, faces = [vertices], [faces]
            colors, uvs = (None if x is None else [x] for x in (colors, uvs))
            if texture is not None and torch.as_tensor(texture).ndim == 3:
                texture = [texture]
            ragged = True
        elif vertices.ndim != 3 or vertices.shape[-1] != 3:
            raise ValueError(f"MESH: expected vertices [B, N, 3] (or a list of [N, 3] tensors), "
                             f"got {tuple(vertices.shape)}")
    batch = len(vertices)
    if batch == 0:
        raise ValueError("MESH: holds no meshes (batch size 0); expected at least one object")
    v_counts = None if ragged else _counts(core_mesh, "vertex_counts", batch)
    f_counts = None if ragged else _counts(core_mesh, "face_counts", batch)
    c_counts = v_counts
    if colors_attr == "colors" and not ragged and getattr(core_mesh, "color_counts", None) is not None:
        c_counts = _counts(core_mesh, "color_counts", batch)
    columns = {"vertices": _per_item(vertices, "vertices", batch, v_counts),
               "faces": _per_item(faces, "faces", batch, f_counts),
               "vertex_colors": _per_item(colors, colors_attr, batch, c_counts),
               "uvs": _per_item(uvs, "uvs", batch, v_counts),
               "texture": _per_item(texture, "texture", batch, None, shared=True)}
    return [{k: col[i] for k, col in columns.items()} for i in range(batch)]


def read_core_mesh(core_mesh, *, name: str = "object") -> list[Mesh]:
    """One :class:`Mesh` per batch entry of a ComfyUI ``MESH``, as stored (module doc).

    Args:
        core_mesh: the ``MESH`` value: tensor batch, padded batch with counts, or lists.
        name: mesh names are ``name`` for one entry, ``f"{name}_{b}"`` for several.
    Returns:
        ``B`` validated meshes on the CPU: float32 vertices, int64 faces (copies of the inputs),
        vertex colours converted from linear to sRGB (uint8 scaled by 255, alpha dropped), uvs
        flipped into the pack's convention with their texture, where given.
    Raises:
        ValueError: missing or malformed attributes, naming the attribute and the shapes, or the
            batch entry whose faces, colours or uvs do not fit its vertices.
    """
    items = core_mesh_items(core_mesh)
    out = []
    for i, item in enumerate(items):
        label = name if len(items) == 1 else f"{name}_{i}"
        try:
            v, f, c = item["vertices"], item["faces"], item["vertex_colors"]
            if f.is_floating_point():
                raise ValueError(f"faces must be integer indices, got {f.dtype}")
            if c is not None:
                c = linear_to_srgb((c.float() / 255.0 if c.dtype == torch.uint8 else c.float())[..., :3])
            uv, tex = item["uvs"], item["texture"]
            if uv is None or tex is None:
                uv = tex = None
            else:
                uv = uv.float().clone()
                uv[:, 1] = 1.0 - uv[:, 1]  # glTF (v down) -> pack (v up)
                tex = tex[..., :3].float().clamp(0, 1)
            out.append(Mesh(vertices=v.to("cpu", torch.float32).clone(), faces=f.to("cpu", torch.int64).clone(),
                            vertex_colors=None if c is None else c.cpu(), uvs=None if uv is None else uv.cpu(),
                            texture=None if tex is None else tex.cpu(), name=label).validate())
        except ValueError as err:
            raise ValueError(f"MESH batch entry {i}: {err}") from err
    return out


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
    (times any vertex colour, :func:`~comboverse_ops.types.mesh.texture_to_vertex_colors`), so a
    viewer without textures still shows each object's look.
    """
    cols = []
    for obj in scene.objects:
        m = texture_to_vertex_colors(obj.mesh.to("cpu", torch.float32))
        cols.append(m.colors_or_default().detach().clamp(0, 1))
    return torch.cat(cols)[None]

"""Object meshes from elsewhere: ComfyUI core ``MESH`` values and GLB / OBJ / PLY files.

Single-object generators other than the built-in one (Hunyuan3D, TRELLIS, TripoSG, a mesh made by
hand) often give better objects; ComboVerse's combination stage only needs one mesh per object in
the canonical object frame (:mod:`.mesh`: +Y up, front +Z, centred, longest side 1). The caller
says which of the source's axes is the object's front and which is up
(:mod:`.frames`); meshes are decimated to a face budget (the paper uses 50,000) first.

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

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..types.colorspace import linear_to_srgb
from .decimate import MAX_FACES, decimate
from .frames import to_canonical_frame
from ..types.mesh import Mesh

__all__ = ["meshes_from_core_mesh", "core_mesh_items", "mesh_from_file", "load_mesh_file", "merge_meshes",
           "canonical_object", "texture_to_vertex_colors", "append_objects"]

logger = logging.getLogger(__name__)


def canonical_object(mesh: Mesh, *, front: str = "+Z", up: str = "+Y", max_faces: int = MAX_FACES) -> Mesh:
    """``mesh`` decimated to ``max_faces`` (0 keeps all) and put into the canonical object frame."""
    return to_canonical_frame(decimate(mesh.validate(), max_faces), front=front, up=up)


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


def meshes_from_core_mesh(core_mesh, *, front: str = "+Z", up: str = "+Y", max_faces: int = MAX_FACES,
                          name: str = "object") -> list[Mesh]:
    """One canonical-frame :class:`Mesh` per batch entry of a ComfyUI ``MESH`` (module doc).

    Args:
        core_mesh: the ``MESH`` value: tensor batch, padded batch with counts, or lists.
        front, up: the source axes of the objects' front and top (``"+X"`` ... ``"-Z"``).
        max_faces: decimate to at most this many faces (0 keeps all).
        name: mesh names are ``name`` for one entry, ``f"{name}_{b}"`` for several.
    Returns:
        ``B`` meshes on the CPU (float32; vertex colours converted from linear to sRGB, uv texture
        kept where given).
    Raises:
        ValueError: missing or malformed attributes, naming the attribute and the shapes.
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
            mesh = Mesh(vertices=v.to("cpu", torch.float32).clone(), faces=f.to("cpu", torch.int64).clone(),
                        vertex_colors=None if c is None else c.cpu(), uvs=None if uv is None else uv.cpu(),
                        texture=None if tex is None else tex.cpu(), name=label)
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


def _unit_colors(colors) -> np.ndarray:
    """``[N, 3]`` float32 RGB in [0, 1] from float or normalised-integer RGB(A) colours."""
    c = np.asarray(colors)[:, :3]
    scale = float(np.iinfo(c.dtype).max) if c.dtype.kind in "ui" else 1.0
    return np.clip(c.astype(np.float32) / scale, 0.0, 1.0)


def _mesh_from_trimesh(geom, transform: np.ndarray, name: str, linear_colors: bool = False) -> Mesh:
    """A :class:`Mesh` from a ``trimesh.Trimesh`` with ``transform`` (``[4, 4]``) baked into it.

    ``linear_colors``: the file stores vertex colours and colour factors as linear values (glTF;
    trimesh hands them over unconverted), so they are turned into the pack's sRGB values."""
    import trimesh

    verts = trimesh.transformations.transform_points(np.asarray(geom.vertices, dtype=np.float64), transform)
    visual, colors, uvs, texture, factor = geom.visual, None, None, None, None
    if visual.kind == "texture":
        material = visual.material
        if getattr(material, "baseColorFactor", None) is not None:  # glTF: multiplies colours
            factor = _unit_colors(np.asarray(material.baseColorFactor)[None])[0]
        image = getattr(material, "baseColorTexture", None)
        if image is None:
            image = getattr(material, "image", None)
        if image is not None and getattr(visual, "uv", None) is not None:
            # trimesh already flipped glTF uvs to the OpenGL convention (v up) on load.
            uvs = np.asarray(visual.uv, dtype=np.float32)
            texture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        if "color" in visual.vertex_attributes:  # glTF COLOR_0 next to a material
            colors = _unit_colors(visual.vertex_attributes["color"])
    elif visual.kind in ("vertex", "face"):
        colors = _unit_colors(visual.vertex_colors)
    if factor is not None and texture is None:
        colors = np.broadcast_to(factor, verts.shape) if colors is None else colors * factor
    if colors is not None and linear_colors:
        colors = linear_to_srgb(np.ascontiguousarray(colors)).numpy()

    def tensor(a):
        return None if a is None else torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)
    return Mesh(vertices=tensor(verts), faces=torch.as_tensor(np.asarray(geom.faces), dtype=torch.int64),
                vertex_colors=tensor(colors), uvs=tensor(uvs), texture=tensor(texture), name=name).validate()


def load_mesh_file(path: str | os.PathLike) -> list[Mesh]:
    """Triangle meshes of a GLB / glTF / OBJ / PLY file (anything trimesh reads), via trimesh.

    Each mesh instance in the file's scene graph becomes one :class:`Mesh` in the file's world
    frame (node transforms applied), named after its node (made unique). Vertex colours and a
    base-colour texture with uvs are kept (uvs in the OpenGL convention of :mod:`.mesh`; colours
    as sRGB values, converted from linear for .glb / .gltf, see :mod:`.colorspace`); point
    clouds and lines are skipped.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file holds no triangle mesh.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {str(path)!r}")
    try:
        loaded = trimesh.load(str(path), force="scene", process=False)
    except Exception as e:  # noqa: BLE001 - trimesh raises many types for damaged files; name the file
        raise ValueError(f"mesh file {str(path)!r}: cannot be read ({_mesh_read_error(path, e)}); expected a "
                         "complete GLB / glTF / OBJ / PLY file") from None
    gltf = path.suffix.lower() in (".glb", ".gltf")  # linear colours; OBJ / PLY colours are sRGB
    meshes, used = [], set()
    # trimesh lists nodes in reverse; order them by geometry, i.e. by mesh order in the file.
    geometry_order = {name: i for i, name in enumerate(loaded.geometry)}
    instances = sorted(((node, *loaded.graph[node]) for node in loaded.graph.nodes_geometry),
                       key=lambda item: geometry_order.get(item[2], len(geometry_order)))
    for node, transform, geom_name in instances:
        geom = loaded.geometry[geom_name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            logger.info("%s: skipping %r (%s, not a triangle mesh)", path, node, type(geom).__name__)
            continue
        name, k = str(node), 1
        while name in used:
            name, k = f"{node}_{k}", k + 1
        used.add(name)
        meshes.append(_mesh_from_trimesh(geom, np.asarray(transform), name, linear_colors=gltf))
    if not meshes:
        raise ValueError(f"mesh file {str(path)!r}: expected at least one triangle mesh, found none")
    return meshes


def _mesh_read_error(path: Path, err: Exception) -> str:
    """What went wrong reading a mesh file, in words (an OBJ face past its vertices is common)."""
    if isinstance(err, IndexError) and path.suffix.lower() == ".obj":
        with open(path, "rb") as f:
            n = sum(1 for line in f if line.startswith(b"v "))
        return f"a face refers to a vertex past the file's {n} vertices ({err})"
    if path.stat().st_size == 0:
        return "the file is empty"
    return f"{type(err).__name__}: {str(err)[:200]}; damaged, truncated or not a mesh"


def mesh_from_file(path: str | os.PathLike, *, front: str = "+Z", up: str = "+Y", max_faces: int = MAX_FACES,
                   name: str | None = None) -> Mesh:
    """One canonical-frame object from a GLB / glTF / OBJ / PLY file (all its meshes merged).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no triangle mesh, or bad axes.
    """
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

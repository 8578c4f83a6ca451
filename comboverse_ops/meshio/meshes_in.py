"""Object meshes from elsewhere: ComfyUI core ``MESH`` values and GLB / OBJ / PLY files.

Single-object generators other than the built-in one (Hunyuan3D, TRELLIS, TripoSG, a mesh made by
hand) often give better objects; ComboVerse's combination stage only needs one mesh per object in
the canonical object frame (:mod:`.mesh`: +Y up, front +Z, centred, longest side 1). The caller
says which of the source's axes is the object's front and which is up
(:mod:`.frames`); meshes are decimated to a face budget (the paper uses 50,000) first.

Core ``MESH`` values are read by :mod:`.core_mesh` (every form core nodes produce); mesh files
by trimesh (:func:`load_mesh_file`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..types.colorspace import linear_to_srgb
from ..types.mesh import Mesh, texture_to_vertex_colors
from ..types.scene import unique_name
from .core_mesh import read_core_mesh
from .decimate import MAX_FACES, decimate
from .frames import to_canonical_frame

__all__ = ["meshes_from_core_mesh", "mesh_from_file", "load_mesh_file", "merge_meshes", "canonical_object",
           "append_objects"]

logger = logging.getLogger(__name__)


def canonical_object(mesh: Mesh, *, front: str = "+Z", up: str = "+Y", max_faces: int = MAX_FACES) -> Mesh:
    """``mesh`` decimated to ``max_faces`` (0 keeps all) and put into the canonical object frame."""
    return to_canonical_frame(decimate(mesh.validate(), max_faces), front=front, up=up)


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
    out = []
    for i, mesh in enumerate(read_core_mesh(core_mesh, name=name)):
        try:
            out.append(canonical_object(mesh, front=front, up=up, max_faces=max_faces))
        except ValueError as err:
            raise ValueError(f"MESH batch entry {i}: {err}") from err
    return out


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
        name = unique_name(str(node), used)
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
        name = unique_name(m.name, taken, first=2)
        taken.add(name)
        out.append(m if name == m.name else replace(m, name=name))
    return out

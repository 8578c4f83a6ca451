"""Scenes to files and back: GLB export, mesh-file loading, ComfyUI ``MESH`` arrays.

GLB written by :func:`scene_to_glb_bytes` (glTF 2.0, one JSON and one BIN chunk):

- one node per scene object, named after it, whose TRS is the object's pose (``scale``
  ``[s, s, s]``, ``rotation`` a unit quaternion ``(x, y, z, w)``, ``translation``), so objects
  stay separate and can be re-posed in Blender; the node's ``extras`` say how the object was
  made (:func:`object_extras`: its phrase, its box in the source picture, its pose);
- ``asset.extras``: what the caller passes (ExportMesh: ComfyUI's prompt and workflow, as core
  SaveGLB stores them; the CLI: its settings) plus the pack's version under ``comboverse``;
- the node's mesh holds the canonical-frame vertices; one mesh and one material per object;
- attributes POSITION, NORMAL (unit length), COLOR_0 (float RGB, when the mesh has vertex
  colours), TEXCOORD_0 (when it has uvs; ``v`` flipped from the pack's OpenGL convention, see
  :mod:`.mesh`); the texture is embedded as PNG. glTF multiplies COLOR_0 with the base colour
  texture when a mesh has both; a mesh with neither gets :attr:`Mesh.DEFAULT_COLOR`.
- colours: COLOR_0 and ``baseColorFactor`` are linear in glTF, textures sRGB; the pack's sRGB
  values are converted on the way out and back in (:mod:`.colorspace`).

ComfyUI's core ``MESH`` is an object with ``vertices`` ``[B, N, 3]`` float and ``faces``
``[B, M, 3]`` int. This module only makes and reads those arrays; the node layer wraps them in
ComfyUI's class, so nothing here imports ComfyUI.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .atomic import write_bytes_atomic
from ..types.colorspace import linear_to_srgb, srgb_to_linear
from ..types.mesh import Mesh
from ..types.pose import matrix_to_quat_xyzw
from ..types.scene import Scene, SceneObject

__all__ = ["scene_to_glb_bytes", "write_glb", "object_extras", "load_mesh_file", "scene_to_mesh_arrays",
           "scene_vertex_colors", "meshes_from_mesh_arrays"]

logger = logging.getLogger(__name__)

_GLB_MAGIC, _JSON_CHUNK, _BIN_CHUNK = 0x46546C67, 0x4E4F534A, 0x004E4942
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_COMPONENT_TYPES = {np.dtype(np.float32): 5126, np.dtype(np.uint16): 5123, np.dtype(np.uint32): 5125}
_ACCESSOR_TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4"}
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071


def _numpy(t: torch.Tensor, dtype) -> np.ndarray:
    """A detached CPU copy of ``t`` as a C-contiguous numpy array of ``dtype`` (floats go through
    float64, since numpy has no bfloat16)."""
    return np.ascontiguousarray(t.detach().to("cpu", torch.float64 if np.dtype(dtype).kind == "f" else None)
                                .numpy().astype(dtype))


class _GlbBuilder:
    """Collects glTF JSON entries and one binary buffer whose views are 4-byte aligned."""

    def __init__(self):
        self.gltf = {"asset": {"version": "2.0", "generator": "ComboVerse"}, "scene": 0,
                     "scenes": [{"nodes": []}], "nodes": [], "meshes": [], "materials": [],
                     "textures": [], "images": [], "samplers": [], "accessors": [], "bufferViews": []}
        self._blobs: list[bytes] = []
        self._length = 0

    def add(self, kind: str, entry: dict) -> int:
        self.gltf[kind].append(entry)
        return len(self.gltf[kind]) - 1

    def view(self, data: bytes, target: int | None = None) -> int:
        entry = {"buffer": 0, "byteOffset": self._length, "byteLength": len(data)}
        if target is not None:
            entry["target"] = target
        padded = data + b"\0" * (-len(data) % 4)
        self._blobs.append(padded)
        self._length += len(padded)
        return self.add("bufferViews", entry)

    def accessor(self, array: np.ndarray, target: int, bounds: bool = False) -> int:
        """Accessor over ``array`` (``[count]`` or ``[count, k]``), in its own buffer view."""
        entry = {"bufferView": self.view(array.tobytes(), target),
                 "componentType": _COMPONENT_TYPES[array.dtype], "count": int(array.shape[0]),
                 "type": _ACCESSOR_TYPES[1 if array.ndim == 1 else array.shape[1]]}
        if bounds:  # exact float32 values, as the validator recomputes them
            entry["min"], entry["max"] = array.min(0).tolist(), array.max(0).tolist()
        return self.add("accessors", entry)

    def to_bytes(self) -> bytes:
        gltf = {k: v for k, v in self.gltf.items() if v != []}  # glTF forbids empty arrays
        binary = b"".join(self._blobs)
        if binary:
            gltf["buffers"] = [{"byteLength": len(binary)}]
        text = json.dumps(gltf, separators=(",", ":"), allow_nan=False).encode("utf-8")
        text += b" " * (-len(text) % 4)
        chunks = struct.pack("<II", len(text), _JSON_CHUNK) + text
        if binary:
            chunks += struct.pack("<II", len(binary), _BIN_CHUNK) + binary
        return struct.pack("<III", _GLB_MAGIC, 2, 12 + len(chunks)) + chunks


def _png_bytes(texture: torch.Tensor) -> bytes:
    from PIL import Image

    rgb = (texture.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _check_finite(obj: SceneObject, label: str, t: torch.Tensor | None) -> None:
    if t is not None and not torch.isfinite(t.detach()).all():
        raise ValueError(f"object {obj.name!r}: mesh {label} contain NaN or inf; expected finite values")


def _unit_normals(mesh: Mesh) -> np.ndarray:
    """``[N, 3]`` float32 vertex normals, unit length to float32 precision (validator requirement)."""
    v64 = mesh.vertices.detach().to("cpu", torch.float64)
    n = replace(mesh, vertices=v64, faces=mesh.faces.detach().cpu()).vertex_normals()
    n = (n / n.norm(dim=1, keepdim=True)).numpy().astype(np.float32)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _add_object(b: _GlbBuilder, obj: SceneObject, extras: dict | None = None) -> int:
    """Append one object's mesh, material and node (with ``extras``); return the node index."""
    mesh = obj.mesh
    for label, t in (("vertex_colors", mesh.vertex_colors), ("uvs", mesh.uvs), ("texture", mesh.texture)):
        _check_finite(obj, label, t)
    attributes = {"POSITION": b.accessor(_numpy(mesh.vertices, np.float32), _ARRAY_BUFFER, bounds=True),
                  "NORMAL": b.accessor(_unit_normals(mesh), _ARRAY_BUFFER)}
    if mesh.vertex_colors is not None:
        attributes["COLOR_0"] = b.accessor(_numpy(srgb_to_linear(mesh.vertex_colors.detach()), np.float32),
                                           _ARRAY_BUFFER)
    pbr = {"metallicFactor": 0.0, "roughnessFactor": 1.0}
    if mesh.has_texture:
        uv = _numpy(mesh.uvs, np.float32)
        uv[:, 1] = 1.0 - uv[:, 1]  # OpenGL v-up -> glTF v-down
        attributes["TEXCOORD_0"] = b.accessor(uv, _ARRAY_BUFFER)
        if not b.gltf["samplers"]:
            b.add("samplers", {"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR,
                               "wrapS": _CLAMP_TO_EDGE, "wrapT": _CLAMP_TO_EDGE})
        image = b.add("images", {"name": obj.name, "bufferView": b.view(_png_bytes(mesh.texture)),
                                 "mimeType": "image/png"})
        pbr["baseColorTexture"] = {"index": b.add("textures", {"sampler": 0, "source": image})}
    elif mesh.vertex_colors is None:
        pbr["baseColorFactor"] = [*srgb_to_linear(torch.tensor(Mesh.DEFAULT_COLOR, dtype=torch.float64)).tolist(), 1.0]
    # Indices 65535 (uint16) are primitive restart values, hence the strict bound.
    index_type = np.uint16 if mesh.num_vertices < 65535 else np.uint32
    indices = b.accessor(_numpy(mesh.faces, np.int64).reshape(-1).astype(index_type), _ELEMENT_ARRAY_BUFFER)
    material = b.add("materials", {"name": obj.name, "pbrMetallicRoughness": pbr})
    gltf_mesh = b.add("meshes", {"name": obj.name, "primitives": [
        {"attributes": attributes, "indices": indices, "material": material, "mode": 4}]})
    pose = obj.pose.detach().to("cpu", torch.float64)
    node = {"name": obj.name, "mesh": gltf_mesh, "rotation": matrix_to_quat_xyzw(pose.rotation_matrix()).tolist(),
            "scale": [float(pose.scale[0])] * 3, "translation": pose.translation.tolist()}
    if extras:
        node["extras"] = extras
    return b.add("nodes", node)


def object_extras(scene: Scene, index: int) -> dict:
    """What the GLB node of ``scene.objects[index]`` records in its ``extras``.

    ``{"phrase": str, "box_xyxy": [x0, y0, x1, y1] (source-image pixels, :mod:`.layout`),
    "image_size": [width, height], "pose": {"scale": float, "rotation_vector": [3] (axis-angle,
    radians, :mod:`.pose`), "translation": [3]}}``; phrase, box and image size come from
    ``scene.meta`` (:func:`.layout.layout_meta`) and are left out where the scene has none.
    """
    obj, meta = scene.objects[index], scene.meta
    pose = obj.pose.detach().to("cpu", torch.float64)
    extras = {}
    if len(meta.get("phrases", ())) == len(scene.objects):
        extras["phrase"] = str(meta["phrases"][index])
    if len(meta.get("boxes", ())) == len(scene.objects):
        extras["box_xyxy"] = [float(v) for v in meta["boxes"][index]]
        if "image_size" in meta:
            extras["image_size"] = [int(meta["image_size"][1]), int(meta["image_size"][0])]
    extras["pose"] = {"scale": float(pose.scale[0]), "rotation_vector": pose.rotation.tolist(),
                      "translation": pose.translation.tolist()}
    return extras


def scene_to_glb_bytes(scene: Scene, asset_extras: dict | None = None) -> bytes:
    """The scene as one glTF 2.0 binary (layout in the module doc).

    Args:
        scene: validated first (``ValueError`` naming the bad object); poses may require grad,
            tensors may live on any device.
        asset_extras: JSON-serialisable values for ``asset.extras`` (``comboverse`` is added:
            ``{"version": ...}`` merged with any ``comboverse`` dict given).
    Returns:
        the ``.glb`` file contents.
    Raises:
        ValueError: an ``asset_extras`` value that JSON cannot hold (named).
    """
    from .. import __version__

    scene.validate()
    b = _GlbBuilder()
    extras = dict(asset_extras or {})
    extras["comboverse"] = {"version": __version__, **extras.get("comboverse", {})}
    for key, value in extras.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"GLB asset extras: {key!r} cannot be stored as JSON ({e})") from None
    b.gltf["asset"]["extras"] = extras
    for i, obj in enumerate(scene.objects):
        b.gltf["scenes"][0]["nodes"].append(_add_object(b, obj, object_extras(scene, i)))
    return b.to_bytes()


def write_glb(scene: Scene, path: str | os.PathLike, asset_extras: dict | None = None) -> Path:
    """Write :func:`scene_to_glb_bytes` to ``path`` atomically; return the path.

    The file appears complete or not at all: the bytes go to a temporary file in the same
    folder, are flushed to disk, then renamed onto ``path``. On any error (or a cancel) the
    temporary file is removed and an existing ``path`` is left untouched. Parent folders are
    created.
    """
    return write_bytes_atomic(path, scene_to_glb_bytes(scene, asset_extras))  # bytes fail before the disk is touched


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

"""Scenes to GLB files (glTF 2.0 binary), one node per object.

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
  values are converted on the way out (:mod:`.colorspace`) and back in by
  :func:`.meshes_in.load_mesh_file`.

Reading mesh files is :mod:`.meshes_in`'s job; ComfyUI's core ``MESH`` arrays are :mod:`.core_mesh`'s.
"""

from __future__ import annotations

import io
import json
import os
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .atomic import write_bytes_atomic
from ..types.colorspace import srgb_to_linear
from ..types.mesh import Mesh
from ..types.pose import matrix_to_quat_xyzw
from ..types.scene import Scene, SceneObject

__all__ = ["scene_to_glb_bytes", "write_glb", "object_extras"]

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

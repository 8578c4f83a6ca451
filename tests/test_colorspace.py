"""One colour convention inside the pack (sRGB, as in photos), linear at glTF and core-MESH boundaries.

A known sRGB colour goes out through ExportMesh into a GLB, whose raw COLOR_0 bytes and
baseColorFactor must hold the linear value a glTF viewer expects, and back in through Meshes From
File; the same through the core MESH of ExportMesh and Meshes From MESH.
"""

from __future__ import annotations

import json
import struct
import sys
import types

import numpy as np
import pytest
import torch

from comboverse_ops.types.colorspace import linear_to_srgb, srgb_to_linear
from comboverse_ops.types.mesh import Mesh
from comboverse_ops.types.pose import Pose
from comboverse_ops.synthetic.primitives import make_primitive
from comboverse_ops.types.scene import Scene, SceneObject

# Display colours of the test objects; 0.02 and 0.03 sit below the sRGB curve's linear knee (0.04045).
ORANGE = (0.8, 0.4, 0.1)
TEAL = (0.02, 0.5, 0.98)
ONE_LEVEL = 1 / 255


def iec_srgb_to_linear(c) -> np.ndarray:
    """IEC 61966-2-1, written out independently of the pack (float64)."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def test_transfer_functions_are_the_exact_piecewise_srgb_curve():
    # Published values: mid grey 0.5 is 21.4% linear light; the knee maps onto itself.
    assert float(srgb_to_linear(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(0.21404114, abs=1e-8)
    assert float(srgb_to_linear(torch.tensor(0.04045, dtype=torch.float64))) == pytest.approx(0.0031308, abs=1e-7)
    assert float(linear_to_srgb(torch.tensor(0.0031308, dtype=torch.float64))) == pytest.approx(0.04045, abs=1e-6)
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    np.testing.assert_allclose(srgb_to_linear(grid).numpy(), iec_srgb_to_linear(grid.numpy()), atol=1e-12)
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(grid)), grid, atol=1e-12, rtol=0)
    assert srgb_to_linear(grid).dtype == torch.float64  # float dtype kept
    # Every 8-bit level survives the round trip in float32; out-of-range values are clamped.
    levels = torch.arange(256, dtype=torch.float32) / 255
    assert (linear_to_srgb(srgb_to_linear(levels)) - levels).abs().max() < 1e-5
    torch.testing.assert_close(srgb_to_linear(torch.tensor([-0.5, 2.0])), torch.tensor([0.0, 1.0]))
    # Arrays and sequences work too; inputs are never modified.
    c = np.array([[0.8, 0.4, 0.1]], dtype=np.float32)
    out = srgb_to_linear(c)
    assert out.dtype == torch.float32 and out.shape == (1, 3) and c[0, 0] == np.float32(0.8)


def _box(color, name):
    mesh = make_primitive("box", color, target_faces=48, name=name)
    rgb = torch.tensor(color, dtype=torch.float32).expand(mesh.num_vertices, 3).clone()
    return Mesh(mesh.vertices, mesh.faces, vertex_colors=rgb, name=name)


def _scene() -> Scene:
    plain = make_primitive("box", (0.5, 0.5, 0.5), target_faces=48, name="plain")
    return Scene((SceneObject("orange", _box(ORANGE, "orange"), Pose.create(0.5, (0, 0.3, 0), (-1.0, 0, 0))),
                  SceneObject("teal", _box(TEAL, "teal"), Pose.create(0.7, (0.1, 0, 0.2), (1.0, 0, 0))),
                  SceneObject("plain", Mesh(plain.vertices, plain.faces, name="plain"),
                              Pose.create(0.4, (0, 0, 0), (0, 0, 1.0)))))


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """(JSON, BIN chunk) of a GLB, read by hand so no glTF library's colour handling is involved."""
    magic, version, total = struct.unpack_from("<III", data, 0)
    assert magic == 0x46546C67 and version == 2 and total == len(data)
    json_len, json_kind = struct.unpack_from("<II", data, 12)
    assert json_kind == 0x4E4F534A
    bin_len, bin_kind = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_kind == 0x004E4942
    start = 28 + json_len
    return json.loads(data[20:20 + json_len]), data[start:start + bin_len]


def accessor_floats(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    acc = gltf["accessors"][index]
    view = gltf["bufferViews"][acc["bufferView"]]
    assert acc["componentType"] == 5126  # FLOAT
    width = {"VEC3": 3, "VEC4": 4}[acc["type"]]
    offset = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(binary, dtype="<f4", count=acc["count"] * width, offset=offset).reshape(-1, width)


def test_exported_glb_stores_linear_colours_and_meshes_from_file_reads_back_srgb(pack, output_dir):
    nodes = pack.NODE_CLASS_MAPPINGS
    scene = _scene()
    result = nodes["ComboVerseExportMesh"]().export(scene=scene, filename_prefix="colour/scene")
    path = output_dir / result["result"][1]
    gltf, binary = read_glb(path.read_bytes())
    by_name = {m["name"]: m["primitives"][0] for m in gltf["meshes"]}
    for name, srgb in (("orange", ORANGE), ("teal", TEAL)):
        stored = accessor_floats(gltf, binary, by_name[name]["attributes"]["COLOR_0"])
        np.testing.assert_allclose(stored, np.broadcast_to(iec_srgb_to_linear(srgb), stored.shape), atol=1e-6)
    stored = accessor_floats(gltf, binary, by_name["orange"]["attributes"]["COLOR_0"])
    assert stored[0, 1] == pytest.approx(0.1329, abs=1e-4)  # sRGB 0.4 is 13.3% linear light, not 40%
    plain = gltf["materials"][by_name["plain"]["material"]]["pbrMetallicRoughness"]
    np.testing.assert_allclose(plain["baseColorFactor"], [*iec_srgb_to_linear([0.8] * 3), 1.0], atol=1e-7)

    # Back in: every object keeps its display colour within one 8-bit level.
    merged = nodes["ComboVerseMeshesFromFile"]().load(str(path), "+Z", "+Y", 0)[0][0]
    colors = merged.vertex_colors
    assert merged.num_vertices == sum(o.mesh.num_vertices for o in scene.objects)
    for obj, srgb in zip(scene.objects, (ORANGE, TEAL, Mesh.DEFAULT_COLOR)):
        close = (colors - torch.tensor(srgb)).abs().amax(1) <= ONE_LEVEL
        assert int(close.sum()) == obj.mesh.num_vertices, (obj.name, srgb)


def test_export_mesh_core_mesh_carries_linear_colours_and_comes_back_as_srgb(pack, output_dir):
    nodes = pack.NODE_CLASS_MAPPINGS
    scene = _scene()
    mesh, _ = nodes["ComboVerseExportMesh"]().export(scene=scene, filename_prefix="colour/scene")["result"]
    srgb = torch.cat([o.mesh.colors_or_default() for o in scene.objects])
    np.testing.assert_allclose(mesh.vertex_colors[0].numpy(), iec_srgb_to_linear(srgb.numpy()), atol=1e-6)
    (back,) = nodes["ComboVerseMeshesFromMESH"]().convert(mesh, "+Z", "+Y", 0, "scene")[0]
    assert float((back.vertex_colors - srgb).abs().max()) <= ONE_LEVEL


def test_core_mesh_is_a_plain_tensor_batch_that_every_core_saveglb_reads(pack, output_dir):
    """What core SaveGLB reads: 0.3.64 loops over ``vertices.shape[0]`` taking ``vertices[i]`` and
    ``faces[i]``; 2026 cores also take ``vertex_colors[i]`` (cut to ``vertex_counts`` when set)."""
    scene = _scene()
    mesh, _ = pack.NODE_CLASS_MAPPINGS["ComboVerseExportMesh"]().export(scene=scene, filename_prefix="c/s")["result"]
    n = sum(o.mesh.num_vertices for o in scene.objects)
    assert torch.is_tensor(mesh.vertices) and mesh.vertices.shape == (1, n, 3) and mesh.vertices.dtype == torch.float32
    assert torch.is_tensor(mesh.faces) and mesh.faces.dtype == torch.int64 and mesh.faces.shape[0] == 1
    assert getattr(mesh, "vertex_counts", None) is None and getattr(mesh, "face_counts", None) is None
    assert mesh.vertex_colors.shape == (1, n, 3) and mesh.vertex_colors.dtype == torch.float32
    assert 0 <= int(mesh.faces.min()) and int(mesh.faces.max()) < n
    assert 0 <= float(mesh.vertex_colors.min()) and float(mesh.vertex_colors.max()) <= 1


class _OldCoreMesh:  # ComfyUI 0.3.64: comfy_extras.nodes_hunyuan3d.MESH(vertices, faces)
    def __init__(self, vertices, faces):
        self.vertices, self.faces = vertices, faces


class _NewCoreMesh:  # 2026: comfy_api.latest Types.MESH(vertices, faces, uvs=None, vertex_colors=None, ...)
    def __init__(self, vertices, faces, uvs=None, vertex_colors=None, texture=None, vertex_counts=None,
                 face_counts=None):
        self.vertices, self.faces, self.uvs, self.vertex_colors = vertices, faces, uvs, vertex_colors
        self.texture, self.vertex_counts, self.face_counts = texture, vertex_counts, face_counts


@pytest.mark.parametrize("core_class", [_OldCoreMesh, _NewCoreMesh])
def test_make_core_mesh_uses_the_running_comfyui_class_old_or_new(pack, monkeypatch, core_class):
    host = sys.modules[f"{pack.__name__}.nodes.host"]
    latest = types.ModuleType("comfy_api.latest")
    latest.Types = types.SimpleNamespace(MESH=core_class)
    monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
    monkeypatch.setitem(sys.modules, "comfy_api.latest", latest)
    v, f, c = torch.rand(1, 5, 3), torch.zeros(1, 2, 3, dtype=torch.int64), torch.rand(1, 5, 3)
    mesh = host.make_core_mesh(v, f, c)
    assert type(mesh) is core_class and mesh.vertices is v and mesh.faces is f and mesh.vertex_colors is c

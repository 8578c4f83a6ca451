"""GLB export (comboverse_ops.meshio.glb), mesh-file loading (meshio.meshes_in) and ComfyUI MESH arrays (meshio.core_mesh)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from comboverse_ops.meshio import glb
from comboverse_ops.meshio.core_mesh import meshes_from_mesh_arrays, scene_to_mesh_arrays
from comboverse_ops.meshio.glb import scene_to_glb_bytes, write_glb
from comboverse_ops.meshio.meshes_in import load_mesh_file
from comboverse_ops.types.mesh import Mesh
from comboverse_ops.types.pose import Pose
from comboverse_ops.types.scene import Scene, SceneObject

TESTS = Path(__file__).parent
VALIDATOR_SCRIPT = TESTS / "gltf_validate.mjs"
VALIDATOR_PACKAGE = TESTS / ".node" / "node_modules" / "gltf-validator"
INSTALL_HINT = "npm install --no-save --prefix tests/.node gltf-validator"

# Corners of the unit box, index = 4 * x + 2 * y + z with each coordinate in {-0.5, 0.5}.
BOX_VERTICES = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
BOX_FACES = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                          [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
# Quadrant colours of the test texture (stored top row first, see comboverse_ops.types.mesh).
TOP_LEFT, TOP_RIGHT, BOTTOM_LEFT, BOTTOM_RIGHT = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)


def box(name: str, colored: bool = True) -> Mesh:
    """Unit box in the canonical frame; corner colours equal their position + 0.5 when ``colored``."""
    return Mesh(BOX_VERTICES.clone(), BOX_FACES.clone(), BOX_VERTICES + 0.5 if colored else None, name=name)


def textured_quad(name: str) -> Mesh:
    """Unit quad facing +Z with an 8x8 texture of four coloured quadrants; each corner's uv sits
    in the middle of its own quadrant, so it must sample that quadrant's colour."""
    tex = torch.empty(8, 8, 3)
    tex[:4, :4], tex[:4, 4:] = torch.tensor(TOP_LEFT), torch.tensor(TOP_RIGHT)
    tex[4:, :4], tex[4:, 4:] = torch.tensor(BOTTOM_LEFT), torch.tensor(BOTTOM_RIGHT)
    verts = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    uvs = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]])
    return Mesh(verts, torch.tensor([[0, 1, 2], [0, 2, 3]]), uvs=uvs, texture=tex, name=name)


def make_scene(kind: str = "mixed") -> Scene:
    chair = SceneObject("chair", box("chair"), Pose.create(0.7, (0.3, -1.2, 0.5), (0.4, -0.2, 1.5)))
    # A rotation just short of 180 degrees: the hardest case for matrix -> quaternion.
    painting = SceneObject("painting", textured_quad("painting"), Pose.create(1.3, (0.0, 3.1, 0.05), (-1.0, 0.5, -2.0)))
    plain = SceneObject("plain box", box("plain box", colored=False), Pose.create(2.5, (0.0, 0.0, 0.0), (3.0, 0.0, 0.0)))
    objects = {"colored": [chair], "textured": [painting], "mixed": [chair, painting, plain]}[kind]
    return Scene(tuple(objects))


def glb_json(data: bytes) -> dict:
    """The JSON chunk of a GLB."""
    length, kind = struct.unpack_from("<II", data, 12)
    assert kind == 0x4E4F534A
    return json.loads(data[20:20 + length])


def validate_glb(path: Path) -> dict:
    """Khronos validator issue summary of ``path``; skips locally, fails on CI, when it is missing."""
    node = shutil.which("node")
    missing = ("node is not on PATH" if node is None else
               None if VALIDATOR_PACKAGE.is_dir() else f"gltf-validator is not installed ({INSTALL_HINT})")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Khronos glTF validator must run on CI: {missing}")
        pytest.skip(missing)
    proc = subprocess.run([node, str(VALIDATOR_SCRIPT), str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_no_issues(report: dict) -> None:
    serious = [m for m in report["messages"] if m["severity"] <= 1]  # 0 error, 1 warning
    assert report["numErrors"] == 0 and report["numWarnings"] == 0, json.dumps(serious, indent=1)


@pytest.mark.parametrize("kind", ["colored", "textured", "mixed"])
def test_glb_passes_khronos_validator(tmp_path, kind):
    path = write_glb(make_scene(kind), tmp_path / f"{kind}.glb")
    assert_no_issues(validate_glb(path))


def test_validator_catches_a_broken_glb(tmp_path):
    """The validator check is only worth something if it fails on a bad file."""
    data = scene_to_glb_bytes(make_scene("colored"))
    gltf = glb_json(data)
    gltf["accessors"][0]["max"] = [9.0, 9.0, 9.0]  # POSITION bounds that do not match the data
    text = json.dumps(gltf).encode()
    text += b" " * (-len(text) % 4)
    old_len = struct.unpack_from("<I", data, 12)[0]
    rest = data[20 + old_len:]
    body = struct.pack("<II", len(text), 0x4E4F534A) + text + rest
    path = tmp_path / "broken.glb"
    path.write_bytes(struct.pack("<III", 0x46546C67, 2, 12 + len(body)) + body)
    assert validate_glb(path)["numErrors"] > 0


def test_large_mesh_uses_uint32_indices(tmp_path):
    n = 260  # 67,600 vertices: past what uint16 indices can address
    y, x = torch.meshgrid(torch.linspace(-0.5, 0.5, n), torch.linspace(-0.5, 0.5, n), indexing="ij")
    verts = torch.stack([x, y, torch.zeros_like(x)], -1).reshape(-1, 3)
    i = torch.arange(n - 1)
    corner = (i[:, None] * n + i[None, :]).reshape(-1)
    faces = torch.cat([torch.stack([corner, corner + 1, corner + n + 1], 1),
                       torch.stack([corner, corner + n + 1, corner + n], 1)])
    scene = Scene((SceneObject("sheet", Mesh(verts, faces), Pose.create()),))
    path = write_glb(scene, tmp_path / "sheet.glb")
    gltf = glb_json(path.read_bytes())
    indices = gltf["meshes"][0]["primitives"][0]["indices"]
    assert gltf["accessors"][indices]["componentType"] == 5125  # UNSIGNED_INT
    assert_no_issues(validate_glb(path))


def test_each_object_is_a_named_node_posed_in_world_space(tmp_path):
    scene = make_scene("mixed")
    loaded = trimesh.load(write_glb(scene, tmp_path / "scene.glb"), force="scene")
    assert sorted(loaded.graph.nodes_geometry) == sorted(scene.names)
    for obj in scene.objects:
        transform, geom_name = loaded.graph[obj.name]
        geom = loaded.geometry[geom_name]
        # Compare triangle corners, so the check holds however the reader orders vertices.
        local = np.asarray(geom.vertices)[geom.faces]
        world = trimesh.transformations.transform_points(np.asarray(geom.vertices), transform)[geom.faces]
        faces = obj.mesh.faces
        np.testing.assert_allclose(local, obj.mesh.vertices[faces].numpy(), atol=1e-6)  # canonical frame
        np.testing.assert_allclose(world, obj.world_vertices().detach()[faces].numpy(), atol=1e-5)


@pytest.mark.parametrize("angle", [0.0, 1e-4, 1.0, 2.5, 3.1, 3.14, 3.1415, 3.14159265])
def test_node_rotation_matches_float32_pose_up_to_half_turn(angle):
    """Objects turned (almost) backwards are common; their quaternion must stay exact."""
    axis = torch.nn.functional.normalize(torch.tensor([0.3, -0.8, 0.5]), dim=0)
    pose = Pose.create(1.0, axis * angle)
    gltf = glb_json(scene_to_glb_bytes(Scene((SceneObject("turned", box("turned"), pose),))))
    x, y, z, w = gltf["nodes"][0]["rotation"]
    from_quaternion = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                       [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                       [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    np.testing.assert_allclose(from_quaternion, pose.rotation_matrix().numpy(), atol=2e-6)


def test_export_detaches_poses_and_works_in_inference_mode():
    scene = make_scene("mixed")
    for pose in scene.poses:
        pose.requires_grad_()
    expected = scene_to_glb_bytes(scene.detach())
    assert scene_to_glb_bytes(scene) == expected
    with torch.inference_mode():
        assert scene_to_glb_bytes(make_scene("mixed")) == expected


def test_vertex_colors_survive_the_round_trip(tmp_path):
    scene = make_scene("mixed")
    loaded = {m.name: m for m in load_mesh_file(write_glb(scene, tmp_path / "scene.glb"))}
    assert list(loaded) == scene.names
    chair = scene.objects[0]
    np.testing.assert_allclose(loaded["chair"].vertices, chair.world_vertices().detach(), atol=1e-5)
    np.testing.assert_allclose(loaded["chair"].vertex_colors, chair.mesh.vertex_colors, atol=1e-6)
    # No colours and no texture: the default grey comes back as the material colour.
    np.testing.assert_allclose(loaded["plain box"].colors_or_default(), 0.8, atol=1 / 255)


def test_texture_and_uv_orientation_survive_the_round_trip(tmp_path):
    scene = make_scene("textured")
    path = write_glb(scene, tmp_path / "painting.glb")
    (mesh,) = load_mesh_file(path)
    original = scene.objects[0].mesh
    assert mesh.has_texture and mesh.vertex_colors is None
    np.testing.assert_allclose(mesh.uvs, original.uvs, atol=1e-6)
    np.testing.assert_allclose(mesh.texture, original.texture, atol=0.5 / 255)
    # An independent reader samples the texture at each corner: bottom-left uv -> bottom-left texel.
    geom = trimesh.load(path, force="scene").geometry["painting"]
    sampled = geom.visual.to_color().vertex_colors[:, :3] / 255.0
    np.testing.assert_allclose(sampled, [BOTTOM_LEFT, BOTTOM_RIGHT, TOP_RIGHT, TOP_LEFT], atol=1 / 255)


def test_failed_export_leaves_existing_file_and_no_temp_files(tmp_path):
    path = write_glb(make_scene("colored"), tmp_path / "scene.glb")
    before = path.read_bytes()
    verts = BOX_VERTICES.clone()
    verts[3, 1] = float("nan")
    broken = Scene((SceneObject("broken lamp", Mesh(verts, BOX_FACES.clone()), Pose.create()),))
    with pytest.raises(ValueError, match="broken lamp"):
        write_glb(broken, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scene.glb"]


def test_interrupted_write_removes_its_temp_file(tmp_path, monkeypatch):
    path = write_glb(make_scene("colored"), tmp_path / "scene.glb")
    before = path.read_bytes()

    def refuse(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(glb.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_glb(make_scene("mixed"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scene.glb"]


def test_write_glb_creates_folders(tmp_path):
    scene = make_scene("mixed")
    path = write_glb(scene, tmp_path / "out" / "nested" / "scene.glb")
    assert path.read_bytes() == scene_to_glb_bytes(scene)
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o644


def test_non_finite_colors_are_rejected_naming_the_object():
    colors = BOX_VERTICES + 0.5
    colors[0, 0] = float("inf")
    scene = Scene((SceneObject("vase", Mesh(BOX_VERTICES.clone(), BOX_FACES.clone(), colors), Pose.create()),))
    with pytest.raises(ValueError, match="'vase'.*vertex_colors"):
        scene_to_glb_bytes(scene)


def test_scene_to_mesh_arrays_merges_objects_in_world_space():
    scene = make_scene("mixed")
    vertices, faces = scene_to_mesh_arrays(scene)
    n = sum(o.mesh.num_vertices for o in scene.objects)
    m = sum(o.mesh.num_faces for o in scene.objects)
    assert vertices.shape == (1, n, 3) and vertices.dtype == torch.float32
    assert faces.shape == (1, m, 3) and faces.dtype == torch.int64
    torch.testing.assert_close(vertices[0], torch.cat([o.world_vertices().detach() for o in scene.objects]))
    corners = vertices[0][faces[0]]
    expected = torch.cat([o.world_vertices().detach()[o.mesh.faces] for o in scene.objects])
    torch.testing.assert_close(corners, expected)


def test_meshes_from_mesh_arrays_splits_the_batch():
    vertices = torch.stack([BOX_VERTICES, BOX_VERTICES * 2])
    faces = torch.stack([BOX_FACES, BOX_FACES.flip(1)]).to(torch.int32)
    colors = torch.full((2, 8, 4), 255, dtype=torch.uint8)
    meshes = meshes_from_mesh_arrays(vertices, faces, colors, name="lifted")
    assert [m.name for m in meshes] == ["lifted_0", "lifted_1"]
    torch.testing.assert_close(meshes[1].vertices, BOX_VERTICES * 2)
    assert meshes[1].faces.dtype == torch.int64 and torch.equal(meshes[1].faces, BOX_FACES.flip(1))
    torch.testing.assert_close(meshes[0].vertex_colors, torch.ones(8, 3))
    meshes[0].vertices.add_(1)  # the meshes are copies: the caller's arrays stay as they were
    torch.testing.assert_close(vertices[0], BOX_VERTICES)
    # Merged scene arrays come back as one mesh with the same world positions.
    (merged,) = meshes_from_mesh_arrays(*scene_to_mesh_arrays(make_scene("mixed")))
    assert merged.num_faces == sum(o.mesh.num_faces for o in make_scene("mixed").objects)


@pytest.mark.parametrize("bad_index", [8, -1])
def test_meshes_from_mesh_arrays_rejects_faces_past_the_vertices(bad_index):
    faces = torch.stack([BOX_FACES, BOX_FACES.clone()])
    faces[1, 5, 2] = bad_index
    with pytest.raises(ValueError, match=r"faces: batch entry 1 indexes vertices .*expected indices in 0\.\.7"):
        meshes_from_mesh_arrays(torch.stack([BOX_VERTICES, BOX_VERTICES]), faces)


def test_meshes_from_mesh_arrays_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="faces: expected batch size 2"):
        meshes_from_mesh_arrays(torch.stack([BOX_VERTICES, BOX_VERTICES]), BOX_FACES[None])


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_load_mesh_file_reads_vertex_colours(tmp_path, suffix):
    colors = (np.asarray(BOX_VERTICES + 0.5) * 255).round().astype(np.uint8)
    tm = trimesh.Trimesh(BOX_VERTICES.numpy(), BOX_FACES.numpy(), vertex_colors=colors, process=False)
    path = tmp_path / f"box{suffix}"
    tm.export(path)
    (mesh,) = load_mesh_file(path)
    corners = mesh.vertices[mesh.faces]
    np.testing.assert_allclose(corners, BOX_VERTICES[BOX_FACES], atol=1e-6)
    np.testing.assert_allclose(mesh.vertex_colors[mesh.faces], (BOX_VERTICES + 0.5)[BOX_FACES], atol=1 / 255)


def test_load_mesh_file_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.glb"):
        load_mesh_file(tmp_path / "nothing.glb")

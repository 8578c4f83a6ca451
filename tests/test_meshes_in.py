"""Meshes from other 3D nodes (core MESH) and from files, in the canonical object frame."""

import importlib
from types import SimpleNamespace

import pytest
import torch

from comboverse_ops.types.colorspace import srgb_to_linear
from comboverse_ops.meshio.frames import frame_rotation
from comboverse_ops.meshio.meshes_in import merge_meshes, mesh_from_file, meshes_from_core_mesh
from comboverse_ops.types.mesh import Mesh
from comboverse_ops.synthetic.primitives import make_primitive


def _box(size=(2.0, 1.0, 0.5), center=(0.0, 0.0, 0.0)):
    """A closed box mesh with a marker vertex colour: red on the +X face, grey elsewhere."""
    import trimesh

    tm = trimesh.creation.box(extents=size)
    tm.apply_translation(center)
    v = torch.tensor(tm.vertices, dtype=torch.float32)
    colors = torch.full_like(v, 0.5)
    colors[v[:, 0] > center[0]] = torch.tensor([1.0, 0.0, 0.0])
    return Mesh(v, torch.tensor(tm.faces, dtype=torch.int64), vertex_colors=colors, name="box")


def _core_mesh(meshes, *, padded=True, colors=True):
    """What ComfyUI's MESH carries for a batch of meshes (padded like pack_variable_mesh_batch;
    colours linear RGBA, as core stores them)."""
    nv, nf = max(m.num_vertices for m in meshes), max(m.num_faces for m in meshes)
    v = torch.zeros(len(meshes), nv, 3)
    f = torch.zeros(len(meshes), nf, 3, dtype=torch.int64)
    c = torch.zeros(len(meshes), nv, 4)
    for i, m in enumerate(meshes):
        v[i, :m.num_vertices], f[i, :m.num_faces] = m.vertices, m.faces
        c[i, :m.num_vertices, :3], c[i, :m.num_vertices, 3] = srgb_to_linear(m.colors_or_default()), 1.0
    counts = dict(vertex_counts=torch.tensor([m.num_vertices for m in meshes]),
                  face_counts=torch.tensor([m.num_faces for m in meshes])) if padded else {}
    return SimpleNamespace(vertices=v, faces=f, vertex_colors=c if colors else None, uvs=None, texture=None, **counts)


def test_a_padded_core_mesh_batch_becomes_one_canonical_object_per_entry():
    sphere = make_primitive("sphere", (0.2, 0.4, 0.9), target_faces=800)
    box = _box(center=(3.0, 1.0, -2.0))
    core = _core_mesh([box, sphere])
    before = core.vertices.clone()
    a, b = meshes_from_core_mesh(core, name="thing")
    assert (a.name, b.name) == ("thing_0", "thing_1")
    assert (a.num_vertices, a.num_faces) == (box.num_vertices, box.num_faces)  # padding cut off
    assert (b.num_vertices, b.num_faces) == (sphere.num_vertices, sphere.num_faces)
    for m in (a, b):
        lo, hi = m.bounds()
        assert float((hi - lo).max()) == pytest.approx(1.0) and torch.allclose(lo + hi, torch.zeros(3), atol=1e-6)
    assert torch.allclose(a.bounds()[1] - a.bounds()[0], torch.tensor([1.0, 0.5, 0.25]))
    assert a.vertex_colors.shape == (box.num_vertices, 3)  # RGBA -> RGB
    torch.testing.assert_close(a.vertex_colors, box.vertex_colors, atol=1e-5, rtol=0)  # linear -> sRGB
    assert torch.equal(core.vertices, before)  # node inputs are never modified


def test_every_form_of_core_mesh_becomes_the_same_objects():
    """Tensor batch, padded batch with counts, lists of per-item tensors (core's Decimate / Fill
    Holes on meshes of different sizes), early TRELLIS.2's ``colors`` + ``color_counts``, one mesh
    without a batch axis: all give the objects that went in, colours back in sRGB."""
    box = _box(center=(3.0, 1.0, -2.0))
    sphere = make_primitive("sphere", (0.2, 0.4, 0.9), target_faces=800)
    lin = [srgb_to_linear(m.colors_or_default()) for m in (box, sphere)]
    padded = _core_mesh([box, sphere])
    v, f = [box.vertices, sphere.vertices], [box.faces, sphere.faces]
    forms = {
        "padded": padded,
        "lists": SimpleNamespace(vertices=v, faces=f, vertex_colors=lin, uvs=None, texture=None),
        "lists, stale counts": SimpleNamespace(vertices=v, faces=f, vertex_colors=lin,
                                               vertex_counts=torch.tensor([3, 3]), face_counts=torch.tensor([1, 1])),
        "trellis2 colors": SimpleNamespace(vertices=padded.vertices, faces=padded.faces,
                                           colors=padded.vertex_colors[..., :3], color_counts=padded.vertex_counts,
                                           vertex_counts=padded.vertex_counts, face_counts=padded.face_counts),
    }
    for form, core in forms.items():
        a, b = meshes_from_core_mesh(core, max_faces=0)
        for got, want in ((a, box), (b, sphere)):
            assert (got.num_vertices, got.num_faces) == (want.num_vertices, want.num_faces), form
            torch.testing.assert_close(got.vertex_colors, want.colors_or_default(), atol=1e-5, rtol=0, msg=form)
            torch.testing.assert_close(got.vertices, want.normalized().vertices, atol=1e-5, rtol=0, msg=form)
    twins = SimpleNamespace(vertices=torch.stack([box.vertices, box.vertices * 2]), faces=torch.stack([box.faces] * 2),
                            vertex_colors=torch.stack([lin[0]] * 2))
    assert [m.num_faces for m in meshes_from_core_mesh(twins, max_faces=0)] == [box.num_faces] * 2
    single = SimpleNamespace(vertices=box.vertices, faces=box.faces, vertex_colors=lin[0])
    (one,) = meshes_from_core_mesh(single, max_faces=0)
    torch.testing.assert_close(one.vertex_colors, box.vertex_colors, atol=1e-5, rtol=0)


def test_malformed_core_mesh_batches_are_named():
    box = _box()
    with pytest.raises(ValueError, match=r"MESH.faces: expected 2 per-item tensors \(as vertices\), got a list of 1"):
        meshes_from_core_mesh(SimpleNamespace(vertices=[box.vertices, box.vertices], faces=[box.faces]))
    with pytest.raises(ValueError, match="MESH: holds no meshes"):
        meshes_from_core_mesh(SimpleNamespace(vertices=[], faces=[]))
    core = _core_mesh([box, box])
    core.vertex_counts = torch.tensor([8, 99])
    with pytest.raises(ValueError, match=r"MESH.vertices: counts \[8, 99\] exceed the padded length 8"):
        meshes_from_core_mesh(core)
    core = _core_mesh([box, box])
    core.vertex_colors = core.vertex_colors[:1].expand(3, -1, -1)
    with pytest.raises(ValueError, match=r"MESH.vertex_colors: expected a batch of 2 \(as vertices\), got shape \(3,"):
        meshes_from_core_mesh(core)


def test_front_and_up_axes_rotate_the_object_into_front_plus_z_and_up_plus_y():
    # A Blender-style OBJ: Z up, front -Y. The box is tall along Z and its red face looks along -Y.
    import trimesh

    tm = trimesh.creation.box(extents=(1.0, 0.5, 2.0))
    v = torch.tensor(tm.vertices, dtype=torch.float32)
    colors = torch.full_like(v, 0.5)
    colors[v[:, 1] < 0] = torch.tensor([1.0, 0.0, 0.0])
    mesh = Mesh(v, torch.tensor(tm.faces), vertex_colors=colors)
    (out,) = meshes_from_core_mesh(_core_mesh([mesh], padded=False), front="-Y", up="+Z")
    lo, hi = out.bounds()
    assert torch.allclose(hi - lo, torch.tensor([0.5, 1.0, 0.25]))  # tall axis -> Y, depth -> Z
    red = out.vertex_colors[:, 0] > 0.9
    assert (out.vertices[red, 2] > 0).all() and (out.vertices[~red, 2] < 0).all()  # the front faces +Z
    assert torch.det(frame_rotation("-Y", "+Z")) == pytest.approx(1.0)  # a rotation: winding is kept
    with pytest.raises(ValueError, match="front_axis '\\+Z' and up_axis '-Z' are parallel"):
        meshes_from_core_mesh(_core_mesh([mesh]), front="+Z", up="-Z")
    with pytest.raises(ValueError, match="front_axis: expected one of"):
        meshes_from_core_mesh(_core_mesh([mesh]), front="forward")


def test_uvs_from_comfyui_are_flipped_to_the_pack_convention_and_big_meshes_are_decimated():
    sphere = make_primitive("sphere", (1, 1, 1), target_faces=4000)
    uvs = torch.rand(sphere.num_vertices, 2)
    core = SimpleNamespace(vertices=sphere.vertices[None], faces=sphere.faces[None], uvs=uvs[None],
                           texture=torch.rand(1, 8, 8, 3), vertex_colors=None)
    (kept,) = meshes_from_core_mesh(core, max_faces=0)
    assert kept.has_texture and torch.allclose(kept.uvs[:, 1], 1 - uvs[:, 1]) and kept.num_faces == sphere.num_faces
    (small,) = meshes_from_core_mesh(core, max_faces=1000)
    assert small.num_faces <= 1000 and small.has_texture
    bad = SimpleNamespace(vertices=sphere.vertices[None], faces=sphere.faces[None] + 10_000)
    with pytest.raises(ValueError, match="MESH batch entry 0.*faces index vertices"):
        meshes_from_core_mesh(bad)
    with pytest.raises(ValueError, match="expected a ComfyUI MESH"):
        meshes_from_core_mesh(torch.zeros(3))


def test_mesh_files_become_one_object_each_with_parts_merged(tmp_path):
    import trimesh

    scene = trimesh.Scene()
    a, b = _box(), _box(size=(0.5, 0.5, 0.5), center=(0.0, 1.0, 0.0))
    for name, m in (("body", a), ("head", b)):
        rgb = (m.vertex_colors.numpy() * 255).astype("uint8")
        part = trimesh.Trimesh(m.vertices.numpy(), m.faces.numpy(), vertex_colors=rgb, process=False)
        scene.add_geometry(part, node_name=name, geom_name=name)
    scene.export(tmp_path / "robot.glb")
    trimesh.Trimesh(a.vertices.numpy(), a.faces.numpy(), process=False).export(tmp_path / "box.obj")
    robot = mesh_from_file(tmp_path / "robot.glb")
    assert robot.name == "robot" and robot.num_faces == a.num_faces + b.num_faces
    assert robot.vertex_colors is not None and float(robot.vertex_colors[:, 0].max()) > 0.9
    lo, hi = robot.bounds()
    assert float((hi - lo).max()) == pytest.approx(1.0, abs=1e-6)
    box = mesh_from_file(tmp_path / "box.obj", front="+X", up="+Y")
    assert torch.allclose(box.bounds()[1] - box.bounds()[0], torch.tensor([0.25, 0.5, 1.0]), atol=1e-6)
    with pytest.raises(FileNotFoundError):
        mesh_from_file(tmp_path / "missing.glb")


def test_merging_textured_parts_samples_their_textures_into_vertex_colours():
    tri = Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2]]),
               uvs=torch.tensor([[0.25, 0.75], [0.75, 0.75], [0.25, 0.25]]),
               texture=torch.tensor([[[1.0, 0, 0], [0, 1, 0]], [[0, 0, 1], [1, 1, 1]]]))
    plain = Mesh(torch.tensor([[0.0, 0, 1], [1, 0, 1], [0, 1, 1]]), torch.tensor([[0, 1, 2]]))
    merged = merge_meshes([tri, plain], "both")
    # uv (0.25, 0.75) is the top-left texel (v up), (0.75, 0.75) top-right, (0.25, 0.25) bottom-left
    assert torch.allclose(merged.vertex_colors[:3], torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]]))
    assert torch.allclose(merged.vertex_colors[3:], torch.tensor(Mesh.DEFAULT_COLOR).expand(3, 3))
    assert merge_meshes([tri], "one").has_texture  # a single part keeps its texture


def test_nodes_collect_objects_from_core_meshes_and_files_in_order(pack, tmp_path, monkeypatch):
    import trimesh

    nodes = importlib.import_module(f"{pack.__name__}.nodes.lift3d")
    monkeypatch.setenv("COMBOVERSE_INPUT_DIR", str(tmp_path / "input"))
    (tmp_path / "input" / "3d").mkdir(parents=True)
    box = _box()
    chair = trimesh.Trimesh(box.vertices.numpy(), box.faces.numpy(), process=False)
    chair.export(tmp_path / "input" / "3d" / "chair.glb")
    (first,) = nodes.MeshesFromMESH().convert(_core_mesh([box]), "+Z", "+Y", 50000, "bear")
    assert [m.name for m in first] == ["bear"]
    (both,) = nodes.MeshesFromFile().load("chair.glb\n", "+Z", "+Y", 50000, meshes=first)
    assert [m.name for m in both] == ["bear", "chair"] and len(first) == 1  # the input list is not modified
    (again,) = nodes.MeshesFromMESH().convert(_core_mesh([box]), "+Z", "+Y", 0, "bear", meshes=both)
    assert [m.name for m in again] == ["bear", "chair", "bear_2"]  # scenes need unique names
    ragged = SimpleNamespace(vertices=[box.vertices, box.vertices[:6]], faces=[box.faces, box.faces[:2]])
    (parts,) = nodes.MeshesFromMESH().convert(ragged, "+Z", "+Y", 0, "part")
    assert [(m.name, m.num_faces) for m in parts] == [("part_0", box.num_faces), ("part_1", 2)]
    with pytest.raises(FileNotFoundError, match="ComboVerse Meshes From File: mesh file 'table.glb' not found"):
        nodes.MeshesFromFile().load("table.glb", "+Z", "+Y", 50000)
    with pytest.raises(ValueError, match="paths is empty"):
        nodes.MeshesFromFile().load("  \n", "+Z", "+Y", 50000)

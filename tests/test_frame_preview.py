"""Meshes From MESH / From File show how the objects sit in the pack's frame, so a wrong front or up
axis is seen before InitPose: an upright cone shows its apex at the top; given the wrong up axis,
at the bottom."""

import types

import torch

from comboverse_ops.meshio.frame_preview import frame_preview
from comboverse_ops.synthetic.primitives import cone
from tiny_models import node_class


def _coverage_top_bottom(view: torch.Tensor) -> tuple[float, float]:
    """Object pixels (not white) in the top and bottom halves of a ``[S, S, 3]`` view."""
    obj = (view < 0.95).any(-1).float()
    half = obj.shape[0] // 2
    return float(obj[:half].sum()), float(obj[half:].sum())


def _core_mesh(mesh):
    return types.SimpleNamespace(vertices=mesh.vertices[None], faces=mesh.faces[None])


def test_preview_rows_views_and_an_upright_cone(tmp_path):
    c = cone(color=(0.2, 0.3, 0.8))
    img = frame_preview([c, c], size=64)
    assert img.shape == (64 * 2 + 4, 64 * 2 + 4, 3) and img.dtype == torch.float32
    top, bottom = _coverage_top_bottom(img[:64, :64])
    assert bottom > 1.5 * top  # the front view: wide base below, apex above


def test_meshes_from_mesh_shows_a_wrong_up_axis_in_its_preview(pack, monkeypatch, tmp_path):
    host = node_class(pack, "host", "Progress").__module__
    import sys

    host = sys.modules[host]
    monkeypatch.setattr(host, "_folder_paths", lambda: types.SimpleNamespace(get_temp_directory=lambda: str(tmp_path)))
    node = node_class(pack, "lift3d", "MeshesFromMESH")()
    views = {}
    for up in ("+Y", "-Y"):
        out = node.convert(_core_mesh(cone()), front_axis="+Z", up_axis=up, max_faces=1000, name="cone")
        assert len(out["result"][0]) == 1
        entry = out["ui"]["images"][0]
        from PIL import Image
        views[up] = torch.from_numpy(__import__("numpy").asarray(
            Image.open(tmp_path / entry["subfolder"] / entry["filename"]), dtype="float32") / 255)
    size = (views["+Y"].shape[1] - 4) // 2
    top, bottom = _coverage_top_bottom(views["+Y"][:, :size])
    assert bottom > 1.5 * top  # right side up
    top, bottom = _coverage_top_bottom(views["-Y"][:, :size])
    assert top > 1.5 * bottom  # upside down: the user sees it and picks the other up axis

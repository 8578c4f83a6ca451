"""The pack as ComfyUI sees it: registration contract, and nodes called with real tensors."""

import subprocess
import sys

import torch
import trimesh

from conftest import ROOT, load_pack


def test_pack_imports_without_comfyui_and_without_loading_models():
    # A fresh interpreter: importing the pack must not need ComfyUI or pull heavy modules.
    code = ("import sys; sys.path.insert(0, 'tests'); from conftest import load_pack; p = load_pack(); "
            "assert p.NODE_CLASS_MAPPINGS; bad = [m for m in ('comfy', 'folder_paths', 'diffusers', "
            "'segment_anything', 'nvdiffrast') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_every_node_follows_the_v1_contract(pack):
    assert pack.NODE_CLASS_MAPPINGS.keys() == pack.NODE_DISPLAY_NAME_MAPPINGS.keys()
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[key].startswith("ComboVerse "), key
        assert cls.CATEGORY.startswith("ComboVerse/"), key
        assert len(cls.DESCRIPTION) > 40, key
        assert callable(getattr(cls, cls.FUNCTION)), key
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS), key
        inputs = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, spec in inputs.get(section, {}).items():
                assert spec[1].get("tooltip"), f"{key}.{name} has no tooltip"
        for t in cls.RETURN_TYPES:
            assert t in {"IMAGE", "MASK", "MESH", "BOUNDING_BOX", "STRING", "INT", "FLOAT"} or t.startswith("COMBOVERSE_"), t


def test_procedural_scene_then_export_writes_a_glb_the_3d_viewer_can_show(pack, output_dir):
    nodes = pack.NODE_CLASS_MAPPINGS
    scene, image, masks, prompt = nodes["ComboVerseProceduralScene"]().make(seed=3, objects=3, image_size=96)
    assert image.shape == (1, 96, 96, 3) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    assert masks.shape == (3, 96, 96) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert " " in prompt
    poses_before = [p.translation.clone() for p in scene.poses]

    result = nodes["ComboVerseExportMesh"]().export(scene=scene, filename_prefix="comboverse/test")
    entry = result["ui"]["3d"][0]
    assert entry == {"filename": "test_00001_.glb", "subfolder": "comboverse", "type": "output"}
    mesh, rel_path = result["result"]
    path = output_dir / rel_path
    assert path.is_file() and rel_path == "comboverse/test_00001_.glb"
    loaded = trimesh.load(path, force="scene")
    assert sorted(loaded.graph.nodes_geometry) == sorted(scene.names)
    n = sum(o.mesh.num_vertices for o in scene.objects)
    assert mesh.vertices.shape == (1, n, 3) and mesh.faces.shape[0] == 1 and mesh.faces.shape[2] == 3
    assert mesh.vertex_colors.shape == (1, n, 3)
    # ComfyUI reuses node outputs: the input scene must be unchanged.
    assert all(torch.equal(a, p.translation) for a, p in zip(poses_before, scene.poses))

    again = nodes["ComboVerseExportMesh"]().export(scene=scene, filename_prefix="comboverse/test")
    assert again["ui"]["3d"][0]["filename"] == "test_00002_.glb"
    assert path.is_file()  # nothing is overwritten


def test_export_rejects_a_prefix_outside_the_output_folder(pack, output_dir):
    import pytest

    scene, *_ = pack.NODE_CLASS_MAPPINGS["ComboVerseProceduralScene"]().make(seed=0, objects=2, image_size=64)
    with pytest.raises(ValueError, match="filename_prefix"):
        pack.NODE_CLASS_MAPPINGS["ComboVerseExportMesh"]().export(scene=scene, filename_prefix="../escape")

"""Objects get one name each, the same way in the nodes, the CLI and mesh imports (issue 13, Deliver 4:
one unique-names helper instead of four)."""

import torch

from comboverse_ops.synthetic.primitives import make_primitive
from comboverse_ops.types.layout import Layout
from comboverse_ops.types.scene import object_names, unique_name


def test_object_names_come_from_phrases_and_repeats_get_the_object_index():
    # The names the InitPose node and `comboverse run` gave before the helper: a repeated phrase
    # takes the object's index, an empty one the mesh's name.
    assert object_names(["a chair", "a chair", "", "a chair"], ["m0", "m1", "object_2", "m3"]) == \
        ["a_chair", "a_chair_1", "object_2", "a_chair_3"]
    assert object_names(["", ""], ["", "  "]) == ["object", "object_1"]
    # A phrase that spells a name already given does not give a second object that name.
    names = object_names(["a", "a", "a_1"], ["", "", ""])
    assert names == ["a", "a_1", "a_1_2"] and len(set(names)) == 3


def test_unique_name_counts_from_first_and_leaves_taken_alone():
    taken = {"part", "part_1"}
    assert unique_name("part", taken) == "part_2" and taken == {"part", "part_1"}
    assert unique_name("bear", {"bear"}, first=2) == "bear_2"
    assert unique_name("new", taken) == "new"


def test_init_pose_node_names_objects_by_phrase(pack):
    box = make_primitive("box", (0.8, 0.2, 0.1), target_faces=200)
    boxes = torch.tensor([[10.0, 30.0, 40.0, 60.0], [50.0, 30.0, 80.0, 60.0], [20.0, 5.0, 70.0, 25.0]])
    layout = Layout(boxes, (64, 96), ("a red box", "a red box", ""))
    meshes = [box, box, box]  # make_primitive names it "box"
    scene, _ = pack.NODE_CLASS_MAPPINGS["ComboVerseInitPose"]().init(meshes, layout, torch.rand(1, 64, 96, 3),
                                                                      fov_deg=40.0, elevation_deg=-15.0,
                                                                      depth_kind="disparity")
    assert scene.names == ["a_red_box", "a_red_box_1", box.name] == \
        object_names(layout.phrases, [m.name for m in meshes])

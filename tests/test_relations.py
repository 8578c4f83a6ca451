"""Viewer-relative relation predicates on procedural scenes (relations known) and hand-made layouts."""

import pytest
import torch

from comboverse_ops import Pose
from comboverse_ops.types.camera import Cameras
from comboverse_ops.synthetic.primitives import make_primitive
from comboverse_ops.synthetic.procedural import ProceduralSettings, make_procedural_scene
from comboverse_ops.compose.relations import OPPOSITES, RELATIONS, relation_holds, relation_score
from comboverse_ops.types.scene import Scene, SceneObject

FAST = dict(faces_per_object=120, image_size=48)


def _cube_scene(*placements, camera=None):
    """Unit cubes (scaled) at ``(scale, (x, y, z))``; the camera on +Z looking at the origin from above."""
    cam = camera or Cameras.orbit(-25.0, 0.0, 4.0, 40.0, 64, 64)
    objs = [SceneObject(f"cube{k}", make_primitive("box", (0.5, 0.5, 0.5), target_faces=12),
                        Pose.create(s, (0.0, 0.0, 0.0), t)) for k, (s, t) in enumerate(placements)]
    return Scene(tuple(objs), cam)


@pytest.mark.parametrize("seed", range(6))
def test_procedural_relations_hold_and_their_swaps_do_not(seed):
    """Procedural 'on top of', 'in front of', 'behind' hold as stated (camera on +Z: world front =
    camera front); 'beside' is left or right, never both; the swapped statement fails."""
    proc = make_procedural_scene(seed, ProceduralSettings(**FAST))
    names = proc.names
    for a, phrase, b in proc.relations:
        i, j = names.index(a), names.index(b)
        if phrase in ("beside", "next to"):
            left, right = relation_holds(proc.scene, i, "to the left of", j), \
                relation_holds(proc.scene, i, "to the right of", j)
            assert left != right, (seed, a, phrase, b)
            continue
        rel = "in front of" if phrase == "partly occluding" else phrase
        assert relation_holds(proc.scene, i, rel, j), (seed, a, rel, b)
        assert relation_holds(proc.scene, j, OPPOSITES[rel], i)
        assert not relation_holds(proc.scene, j, rel, i), (seed, "swapped", b, rel, a)


def test_left_right_follow_the_camera_not_the_world():
    scene = _cube_scene((0.4, (-0.6, 0.2, 0.0)), (0.4, (0.6, 0.2, 0.0)))
    assert relation_holds(scene, 0, "to the left of", 1) and relation_holds(scene, 1, "to the right of", 0)
    assert not relation_holds(scene, 1, "to the left of", 0)
    behind_cam = Cameras.orbit(-25.0, 180.0, 4.0, 40.0, 64, 64)  # the camera on -Z sees the mirror image
    assert relation_holds(scene, 0, "to the right of", 1, behind_cam)
    assert relation_holds(scene, 0, "behind", 1, Cameras.orbit(-25.0, 90.0, 4.0, 40.0, 64, 64))


def test_front_behind_is_ground_distance_with_a_margin():
    scene = _cube_scene((0.4, (0.0, 0.2, 0.6)), (0.4, (0.1, 0.2, -0.3)))
    assert relation_holds(scene, 0, "in front of", 1) and relation_holds(scene, 1, "behind", 0)
    assert not relation_holds(scene, 0, "behind", 1)
    # Within the margin (0.1 x mean size = 0.04) neither holds; the score says how far off it is.
    close = _cube_scene((0.4, (0.0, 0.2, 0.02)), (0.4, (0.5, 0.2, 0.0)))
    assert not relation_holds(close, 0, "in front of", 1) and not relation_holds(close, 0, "behind", 1)
    assert relation_score(close, 0, "in front of", 1) == pytest.approx(0.02 / 0.4 - 0.1, abs=1e-4)
    # A higher object is not "behind" because the camera looks down at it.
    stacked = _cube_scene((0.4, (0.0, 0.2, 0.0)), (0.4, (0.0, 1.5, 0.0)))
    assert not relation_holds(stacked, 1, "behind", 0) and not relation_holds(stacked, 1, "in front of", 0)


def test_on_top_needs_contact_and_footprint():
    base = (0.5, (0.0, 0.25, 0.0))
    resting = _cube_scene(base, (0.3, (0.05, 0.65, 0.0)))
    assert relation_holds(resting, 1, "on top of", 0) and relation_holds(resting, 0, "under", 1)
    assert not relation_holds(resting, 0, "on top of", 1)
    floating = _cube_scene(base, (0.3, (0.05, 0.65 + 0.1, 0.0)))  # gap 0.1 > 0.1 x mean size 0.4
    sunk = _cube_scene(base, (0.3, (0.05, 0.65 - 0.1, 0.0)))
    beside = _cube_scene(base, (0.3, (0.3, 0.65, 0.0)))  # footprint centre outside the base's top
    for s in (floating, sunk, beside):
        assert not relation_holds(s, 1, "on top of", 0)
    assert relation_holds(_cube_scene(base, (0.3, (0.05, 0.68, 0.0))), 1, "on top of", 0)  # within tolerance


def test_bad_arguments_name_what_is_expected():
    scene = _cube_scene((0.4, (0.0, 0.2, 0.0)), (0.4, (1.0, 0.2, 0.0)))
    with pytest.raises(ValueError, match="unknown relation 'above'"):
        relation_holds(scene, 0, "above", 1)
    with pytest.raises(ValueError, match="object_index must be in"):
        relation_holds(scene, 0, "behind", 5)
    with pytest.raises(ValueError, match="two objects"):
        relation_holds(scene, 1, "behind", 1)
    assert set(OPPOSITES) == set(RELATIONS) and all(OPPOSITES[OPPOSITES[r]] == r for r in RELATIONS)

"""Scene metrics the field reports (Chamfer distance, F-score, ADD-S) with known answers."""

import pytest
import torch

from comboverse_ops import Pose
from comboverse_ops.synthetic.metrics import chamfer_fscore, normalize_to_true, sample_surface, surface_metrics
from comboverse_ops.synthetic.primitives import make_primitive
from comboverse_ops.types.scene import Scene, SceneObject


def _scene(offset=(0.0, 0.0, 0.0), scale=1.0):
    """Two unit-box objects 2 apart; the second one shifted by ``offset`` and scaled by ``scale``."""
    box = make_primitive("box", (0.5, 0.5, 0.5), target_faces=12)
    return Scene((SceneObject("a", box, Pose.create(1.0, (0.0, 0.0, 0.0), (-1.0, 0.5, 0.0))),
                  SceneObject("b", box, Pose.create(scale, (0.0, 0.0, 0.0),
                                                   (1.0 + offset[0], 0.5 + offset[1], offset[2])))))


def test_chamfer_and_fscore_on_point_sets_with_known_distances():
    grid = torch.stack(torch.meshgrid(*[torch.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3)  # spacing 1
    near = chamfer_fscore(grid + torch.tensor([0.05, 0.0, 0.0]), grid, tau=0.1)
    assert near["chamfer"] == pytest.approx(0.1, abs=1e-6) and near["fscore"] == 1.0
    far = chamfer_fscore(grid + torch.tensor([0.0, 0.2, 0.0]), grid, tau=0.1)
    assert far["chamfer"] == pytest.approx(0.4, abs=1e-6) and far["fscore"] == 0.0
    # Half the estimated points are wrong: precision 1/2, recall 1 -> F = 2/3.
    half = chamfer_fscore(torch.cat([grid, grid + 10]), grid, tau=0.1)
    assert half["precision"] == 0.5 and half["recall"] == 1.0 and half["fscore"] == pytest.approx(2 / 3)


def test_the_true_scene_is_normalised_to_plus_minus_0_95():
    pts = torch.tensor([[0.0, 0.0, 0.0], [4.0, 1.0, 2.0]])
    centre, factor = normalize_to_true(pts)
    out = (pts - centre) * factor
    assert torch.allclose(out[:, 0], torch.tensor([-0.95, 0.95])) and out.abs().max() == pytest.approx(0.95)


def test_surface_samples_are_seeded_and_on_the_surface():
    box = make_primitive("box", (0.5, 0.5, 0.5), target_faces=12)
    a = sample_surface(box, 500, torch.Generator().manual_seed(3))
    b = sample_surface(box, 500, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    lo, hi = box.bounds()
    on_face = ((a - lo).abs() < 1e-5) | ((a - hi).abs() < 1e-5)
    assert on_face.any(1).all()  # every point lies on one of the cube's faces


def test_identical_scenes_score_perfectly():
    m = surface_metrics(_scene(), _scene(), n=512)
    assert m["chamfer"] == 0.0 and m["fscore"] == 1.0 and m["adds"] == 1.0 and m["adds_distance"] == 0.0


def test_a_shifted_object_costs_what_the_shift_predicts():
    # Scene spans x in [-1.5, 1.5]: factor 1.9 / 3. A shift of 3 units (far beyond the other object)
    # moves all of b's points; a.'s stay: ADD-S succeeds for one object of two.
    far = surface_metrics(_scene(offset=(0.0, 0.0, 3.0)), _scene(), n=512)
    assert far["adds"] == 0.5
    assert 0.4 < far["precision"] < 0.6 and 0.4 < far["recall"] < 0.6  # b's half of the points is lost
    # A shift of 0.01 x the diameter (sqrt 3) passes ADD-S@0.1, and the F-score stays 1.
    small = surface_metrics(_scene(offset=(0.01 * 3 ** 0.5, 0.0, 0.0)), _scene(), n=512)
    assert small["adds"] == 1.0 and small["fscore"] == 1.0 and 0 < small["chamfer"] < 0.02
    # A shrunken copy sitting on b's surface would pass a one-sided closest-point test; not this one.
    shrunk = surface_metrics(_scene(offset=(0.0, -0.35, 0.0), scale=0.3), _scene(), n=512)
    assert shrunk["adds"] == 0.5

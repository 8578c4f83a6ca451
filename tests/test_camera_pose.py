import math

import pytest
import torch

from comboverse_ops.types.camera import (Cameras, box_corners, look_at, orbit_camera, perspective, project_boxes,
                                   project_points, unproject_pixel)
from comboverse_ops.types.pose import Pose, matrix_to_quat_xyzw, matrix_to_rotvec, rotation_angle_deg, rotvec_to_matrix


def test_orbit_camera_follows_kiui_angles():
    # kiui: x = r cos(el) sin(az), y = -r sin(el), z = r cos(el) cos(az); negative elevation is above.
    c2w = orbit_camera(-30.0, 45.0, 2.0)
    el, az = math.radians(-30), math.radians(45)
    expected = torch.tensor([2 * math.cos(el) * math.sin(az), -2 * math.sin(el), 2 * math.cos(el) * math.cos(az)])
    assert torch.allclose(c2w[:3, 3], expected, atol=1e-6)
    assert c2w[1, 3] > 0, "negative elevation must put the camera above the target"
    # The camera looks down its -Z axis at the target.
    forward = -c2w[:3, 2]
    assert torch.allclose(forward, -expected / expected.norm(), atol=1e-6)
    # Azimuth 0 looks at the object's front (+Z) from +Z.
    assert torch.allclose(orbit_camera(0.0, 0.0, 3.0)[:3, 3], torch.tensor([0.0, 0.0, 3.0]), atol=1e-6)


def test_look_at_is_a_rigid_transform_even_straight_down():
    for eye in ([1.0, 2.0, 3.0], [0.0, 5.0, 0.0]):
        c2w = look_at(torch.tensor(eye), torch.zeros(3))
        r = c2w[:3, :3]
        assert torch.allclose(r.T @ r, torch.eye(3), atol=1e-6)
        assert torch.det(r) > 0


def test_perspective_maps_near_and_far_to_clip_bounds():
    p = perspective(60.0, 1.5, near=0.1, far=10.0)
    for z, ndc in ((-0.1, -1.0), (-10.0, 1.0)):
        clip = p @ torch.tensor([0.0, 0.0, z, 1.0])
        assert clip[2] / clip[3] == pytest.approx(ndc, abs=1e-5)


def test_project_then_unproject_round_trips_and_centre_maps_to_image_centre():
    cams = Cameras.orbit([-20.0, 10.0], [30.0, -60.0], 3.0, 45.0, 160, 120)
    pts = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(0)) * 0.5
    uv, depth = project_points(pts, cams)
    back = unproject_pixel(uv, depth, cams)
    assert torch.allclose(back, pts, atol=1e-4)
    centre, d = project_points(torch.zeros(1, 3), cams)
    assert torch.allclose(centre, torch.tensor([80.0, 60.0]).expand(2, 1, 2), atol=1e-4)
    assert torch.allclose(d, torch.full((2, 1), 3.0), atol=1e-5)


def test_project_boxes_of_a_centred_cube_is_symmetric_about_the_image_centre():
    cams = Cameras.orbit(0.0, 0.0, 4.0, 40.0, 100, 100)
    box = project_boxes(box_corners(torch.zeros(1, 3), torch.full((1, 3), 0.5)), cams)[0, 0]
    assert box[0] + box[2] == pytest.approx(100.0, abs=1e-3)
    assert box[1] + box[3] == pytest.approx(100.0, abs=1e-3)
    # The near face (z = 0.5, depth 3.5) sets the extent: f * 0.5 / 3.5 on each side.
    f = 50 / math.tan(math.radians(20))
    assert box[2] - box[0] == pytest.approx(2 * f * 0.5 / 3.5, rel=1e-4)


def test_rotation_vector_round_trips_through_matrix_and_quaternion():
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        r = torch.randn(3, generator=gen, dtype=torch.float64)
        r = r / r.norm() * torch.rand(1, generator=gen, dtype=torch.float64) * 3.1
        m = rotvec_to_matrix(r)
        assert torch.allclose(m.T @ m, torch.eye(3, dtype=torch.float64), atol=1e-10)
        assert torch.allclose(matrix_to_rotvec(m), r, atol=1e-6)
        q = matrix_to_quat_xyzw(m)  # (x, y, z, w)
        x, y, z, w = q
        from_q = torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                               [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                               [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]], dtype=m.dtype)
        assert torch.allclose(from_q, m, atol=1e-6)
    # Half a turn about +Y.
    assert rotation_angle_deg(rotvec_to_matrix(torch.tensor([0.0, math.pi, 0.0])), torch.eye(3)) == pytest.approx(180.0, abs=1e-3)


@pytest.mark.parametrize("angle", [0.0, 1e-7, 1e-3, 1.5, 2.9, 3.1, 3.14, 3.1415, 3.14159, math.pi])
def test_float32_matrices_near_a_half_turn_convert_exactly(angle):
    # Poses are float32; an object turned (almost) backwards must keep its rotation.
    axis = torch.nn.functional.normalize(torch.tensor([0.3, -0.8, 0.5]), dim=0)
    m = rotvec_to_matrix(axis * angle)
    back = rotvec_to_matrix(matrix_to_rotvec(m))
    assert torch.allclose(back, m.double(), atol=2e-6)
    x, y, z, w = matrix_to_quat_xyzw(m)
    from_q = torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                           [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                           [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]], dtype=torch.float64)
    assert w >= 0 and torch.allclose(from_q, m.double(), atol=2e-6)


def test_pose_applies_scale_then_rotation_then_translation():
    pose = Pose.create(2.0, [0.0, math.pi / 2, 0.0], [1.0, 0.0, 0.0])
    # +Z front turned a quarter about +Y points to +X, doubled, then moved by +1 in x.
    out = pose.apply(torch.tensor([[0.0, 0.0, 1.0]]))
    assert torch.allclose(out, torch.tensor([[3.0, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(pose.matrix()[:3, 3], torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="expected 3 values"):
        Pose.create(1.0, [0.0, 0.0], [0.0, 0.0, 0.0])


def test_rotation_vectors_give_the_matrix_exponential_with_float32_gradients_near_zero():
    """The closed form (no GPU read-back) equals exp([r]_x) from 0 to pi, value and gradient."""
    from comboverse_ops.types.pose import _skew, rotvec_to_matrix

    g = torch.Generator().manual_seed(0)
    for scale in (0.0, 1e-7, 1e-3, 0.3, 1.0, 3.0):
        r = torch.randn(64, 3, generator=g, dtype=torch.float64) * scale
        assert torch.allclose(rotvec_to_matrix(r), torch.linalg.matrix_exp(_skew(r)), atol=1e-12)
        r32 = r.float().requires_grad_()
        rotvec_to_matrix(r32).square().mul(torch.arange(9.0).reshape(3, 3)).sum().backward()
        r64 = r.clone().requires_grad_()
        torch.linalg.matrix_exp(_skew(r64)).square().mul(torch.arange(9.0, dtype=torch.float64).reshape(3, 3)) \
            .sum().backward()
        assert torch.isfinite(r32.grad).all()
        assert torch.allclose(r32.grad.double(), r64.grad, atol=1e-5), scale

"""Torch renderer: analytic coverage, gradients, a pose fit, culling against the dense reference."""

import itertools
import math
from dataclasses import replace

import pytest
import torch

from comboverse_ops import Cameras, Mesh, Pose, Scene, SceneObject
from comboverse_ops.types.camera import look_at
from comboverse_ops.types.pose import rotation_angle_deg
from comboverse_ops.render import render_scene
from comboverse_ops.render.common import flatten_scene, to_clip
from comboverse_ops.render.torch_raster import rasterize_torch


def cube_mesh(name="cube") -> Mesh:
    """Unit cube, outward counter-clockwise faces, colours varying with position."""
    v = torch.tensor(list(itertools.product([-0.5, 0.5], repeat=3)), dtype=torch.float32)
    f = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return Mesh(v, f, vertex_colors=v + 0.5, name=name)


def one(mesh, pose, name="obj"):
    return Scene([SceneObject(name, mesh, pose)])


def front_camera(res, distance=3.0, fov=40.0):
    return Cameras.create(look_at(torch.tensor([0.0, 0.0, distance]), torch.zeros(3)), fov, res, res)


def test_unit_cube_face_on_covers_the_analytic_pixels():
    res, dist, fov = 128, 3.0, 40.0
    out = render_scene(one(cube_mesh(), Pose.create()), front_camera(res, dist, fov))
    # The front face (z = 0.5) is a square of half side f * 0.5 / (dist - 0.5) pixels.
    half = res / 2 / math.tan(math.radians(fov / 2)) * 0.5 / (dist - 0.5)
    centres = torch.arange(res) + 0.5
    inside_1d = (centres - res / 2).abs() < half
    expected = (inside_1d[:, None] & inside_1d[None, :]).float()
    alpha = out.alpha[0]
    hard = (alpha > 0.5).float()
    iou_hard = (hard * expected).sum() / ((hard + expected) > 0).sum()
    iou_soft = torch.minimum(alpha, expected).sum() / torch.maximum(alpha, expected).sum()
    assert iou_hard >= 0.99 and iou_soft >= 0.99, (iou_hard, iou_soft)
    assert float(alpha.sum()) == pytest.approx(float((2 * half) ** 2), rel=0.01)
    covered = expected.bool()
    assert torch.allclose(out.depth[0][covered], torch.full_like(out.depth[0][covered], dist - 0.5), atol=1e-4)
    assert (out.object_id[0][covered] == 0).all() and (out.object_id[0][~covered] == -1).all()
    assert torch.allclose(out.rgb[0][~covered & (alpha == 0)], torch.ones(3))


def test_gradients_reach_every_pose_parameter():
    cams = Cameras.create(look_at(torch.tensor([1.5, 1.2, 3.0]), torch.zeros(3)), 40.0, 64, 64)
    target = render_scene(one(cube_mesh(), Pose.create(1.0, [0.1, 0.5, 0.0], [0.1, 0.0, 0.0])), cams)
    pose = Pose.create(0.9, [0.0, 0.3, 0.1], [0.0, 0.1, -0.1]).requires_grad_()
    out = render_scene(one(cube_mesh(), pose), cams)
    loss = (out.rgb - target.rgb).abs().mean() + (out.alpha - target.alpha).abs().mean()
    loss.backward()
    for label, p in zip(("scale", "rotation", "translation"), pose.parameters()):
        assert torch.isfinite(p.grad).all(), label
        assert (p.grad.abs() > 1e-6).all(), (label, p.grad)


def test_silhouette_alone_pulls_an_object_sideways():
    # A flat-coloured object: only the antialiased silhouette carries the x gradient.
    cams = front_camera(64)
    flat = replace(cube_mesh(), vertex_colors=None)
    target = render_scene(one(flat, Pose.create(1.0, translation=[0.05, 0.0, 0.0])), cams).alpha
    pose = Pose.create().requires_grad_()
    (render_scene(one(flat, pose), cams).alpha - target).abs().sum().backward()
    assert pose.translation.grad[0] < 0  # moving +x lowers the loss


def test_fitting_translation_and_rotation_recovers_the_pose():
    torch.manual_seed(0)
    cams = Cameras.create(look_at(torch.tensor([1.5, 1.5, 3.0]), torch.zeros(3)), 40.0, 128, 128)
    true = Pose.create(1.0, [0.1, 0.4, -0.05], [0.0, 0.1, 0.0])
    target = render_scene(one(cube_mesh(), true), cams)
    pose = Pose.create(1.0, [0.25, 0.2, 0.05], [0.12, 0.0, -0.1])
    pose.rotation.requires_grad_()
    pose.translation.requires_grad_()
    opt = torch.optim.Adam([pose.rotation, pose.translation], lr=0.01)
    for _ in range(200):
        out = render_scene(one(cube_mesh(), pose), cams)
        loss = (out.rgb - target.rgb).abs().mean() + (out.alpha - target.alpha).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    size = 1.0
    t_err = float((pose.translation - true.translation).norm())
    r_err = rotation_angle_deg(pose.rotation_matrix().detach(), true.rotation_matrix())
    assert t_err < 0.02 * size, t_err
    assert r_err < 3.0, r_err


def two_object_scene(requires_grad=False):
    a = Pose.create(0.8, [0.0, 0.6, 0.0], [-0.3, 0.0, 0.0])
    b = Pose.create(0.6, [0.3, -0.2, 0.1], [0.35, 0.1, 0.6])  # in front of a, overlapping it
    if requires_grad:
        a.requires_grad_()
        b.requires_grad_()
    return Scene([SceneObject("a", cube_mesh("a"), a), SceneObject("b", cube_mesh("b"), b)])


def test_culled_rasterizer_matches_the_dense_reference_forward_and_backward():
    cams = Cameras.orbit([-20.0, 10.0], [15.0, -40.0], 3.0, 45.0, 40, 32)
    results = []
    for cull in (True, False):
        scene = two_object_scene(requires_grad=True)
        flat = flatten_scene(scene)
        rgb, alpha, depth, oid, obj_alpha = rasterize_torch(flat, to_clip(flat.vertices, cams), 40, 32,
                                                            torch.ones(3), cull=cull, per_object=True)
        (rgb.square().mean() + alpha.mean() + 0.1 * depth.mean()).backward()
        grads = torch.cat([p.grad for pose in scene.poses for p in pose.parameters()])
        results.append((rgb, alpha, depth, oid, obj_alpha, grads))
    for x, y in zip(results[0], results[1]):
        assert torch.allclose(x.float(), y.float(), atol=1e-5)


def test_nearer_object_hides_the_farther_one():
    scene = two_object_scene()
    out = render_scene(scene, front_camera(96))
    ids = out.object_id[0]
    assert (ids == 0).any() and (ids == 1).any()
    # Where the near cube b covers the far cube a, depth is b's (front face at z = 0.6 + 0.3 * cos...).
    alone_a = render_scene(Scene([scene.objects[0]]), front_camera(96))
    overlap = (alone_a.object_id[0] == 0) & (ids == 1)
    assert overlap.sum() > 20
    assert (out.depth[0][overlap] < alone_a.depth[0][overlap]).all()


def test_batched_cameras_equal_separate_renders():
    scene = two_object_scene()
    cams = Cameras.orbit([-30.0, 0.0, 20.0], [0.0, 90.0, 200.0], 3.0, 40.0, 48, 48)
    batch = render_scene(scene, cams)
    for i in range(3):
        single = render_scene(scene, cams[i])
        assert torch.allclose(batch.rgb[i], single.rgb[0], atol=1e-6)
        assert torch.equal(batch.object_id[i], single.object_id[0])


def test_texture_follows_the_uv_convention():
    # A quad facing +Z; its texture's top row is red and bottom row blue. With OpenGL uvs the
    # vertex at v = 1 samples the top row, so red must appear at the top of the image.
    v = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    tex = torch.zeros(8, 8, 3)
    tex[:4, :, 0] = 1.0
    tex[4:, :, 2] = 1.0
    quad = Mesh(v, torch.tensor([[0, 1, 2], [0, 2, 3]]), uvs=uv, texture=tex, name="quad")
    img = render_scene(one(quad, Pose.create()), front_camera(64, 2.0)).rgb[0]
    top, bottom = img[22, 32], img[42, 32]
    assert top[0] > 0.9 and top[2] < 0.1, top
    assert bottom[2] > 0.9 and bottom[0] < 0.1, bottom


@pytest.mark.parametrize("mesh, problem", [
    (Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long)), "empty"),
    (replace(cube_mesh(), vertices=cube_mesh().vertices.clone().index_fill_(0, torch.tensor([3]), float("nan"))),
     "NaN or inf"),
    (replace(cube_mesh(), vertices=cube_mesh().vertices.clone().index_fill_(0, torch.tensor([2]), float("inf"))),
     "NaN or inf"),
    (replace(cube_mesh(), faces=cube_mesh().faces + 5), "only 8 vertices"),
    (Mesh(torch.rand(8, 3), torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])), "triangles"),
])
def test_bad_meshes_raise_errors_naming_object_and_problem(mesh, problem):
    scene = Scene([SceneObject("good", cube_mesh(), Pose.create()), SceneObject("teapot", mesh, Pose.create())])
    with pytest.raises(ValueError, match=problem) as err:
        render_scene(scene, front_camera(32))
    assert "teapot" in str(err.value)


def test_backend_choice_is_explicit():
    scene = one(cube_mesh(), Pose.create())
    with pytest.raises(ValueError, match="backend"):
        render_scene(scene, front_camera(16), backend="opengl")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="nvdiffrast"):
            render_scene(scene, front_camera(16), backend="nvdiffrast")
    auto = render_scene(scene, front_camera(16), backend="auto")
    forced = render_scene(scene, front_camera(16), backend="torch")
    if not torch.cuda.is_available():
        assert torch.equal(auto.rgb, forced.rgb)


def test_per_object_alpha_splits_alpha_by_visible_object():
    scene = two_object_scene()
    out = render_scene(scene, front_camera(64), per_object=True)
    assert out.object_alpha.shape == (1, 2, 64, 64)
    assert torch.allclose(out.object_alpha.sum(1), out.alpha, atol=1e-5)
    # Inside b (away from its antialiased edge) a has no visible share.
    hidden = out.object_alpha[0, 1] > 0.999
    assert hidden.sum() > 100
    assert float(out.object_alpha[0, 0][hidden].max()) < 1e-6
    assert render_scene(scene, front_camera(64)).object_alpha is None

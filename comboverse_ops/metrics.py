"""How far a composed scene is from the truth (benchmarks, the demo's report, tests)."""

from __future__ import annotations

import torch

from .camera import Cameras
from .physics import interpenetration_volume
from .pose import rotation_angle_deg
from .render import render_scene
from .scene import Scene

__all__ = ["pose_errors", "mask_iou", "box3d_iou", "scene_metrics", "scene_extent"]


def scene_extent(scene: Scene) -> float:
    """Diagonal of the world bounding box of all posed objects."""
    lo, hi = scene.world_bounds()
    return float((hi - lo).norm())


def _alignment_scale(est: torch.Tensor, true: torch.Tensor, centre: torch.Tensor) -> float:
    """The one scale ``k`` about ``centre`` that best maps estimated onto true positions."""
    a, b = est - centre, true - centre
    return float((a * b).sum() / (a * a).sum().clamp_min(1e-12))


def pose_errors(est: Scene, true: Scene) -> dict[str, list[float]]:
    """Per-object errors, unaligned and after aligning the whole estimate by one scale about the
    reference camera (the depth-size ambiguity no single image resolves).

    Returns lists (one value per object): ``translation`` and ``translation_aligned`` as a
    fraction of the true scene's extent, ``scale`` and ``scale_aligned`` as relative errors,
    ``rotation_deg``; and ``alignment`` (one value, the scale ``k``).
    """
    extent = scene_extent(true)
    centre = true.camera.c2w[0, :3, 3].detach().cpu()
    t_est = torch.stack([p.translation.detach().cpu() for p in est.poses])
    t_true = torch.stack([p.translation.detach().cpu() for p in true.poses])
    s_est = torch.cat([p.scale.detach().cpu() for p in est.poses])
    s_true = torch.cat([p.scale.detach().cpu() for p in true.poses])
    k = _alignment_scale(t_est, t_true, centre)
    aligned = centre + k * (t_est - centre)
    return {
        "translation": ((t_est - t_true).norm(dim=1) / extent).tolist(),
        "translation_aligned": ((aligned - t_true).norm(dim=1) / extent).tolist(),
        "scale": ((s_est - s_true).abs() / s_true).tolist(),
        "scale_aligned": ((k * s_est - s_true).abs() / s_true).tolist(),
        "rotation_deg": [rotation_angle_deg(a.rotation_matrix().detach().cpu(), b.rotation_matrix().detach().cpu())
                         for a, b in zip(est.poses, true.poses)],
        "alignment": [k],
    }


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union > 0 else 1.0


def _aligned(scene: Scene, k: float) -> Scene:
    centre = scene.camera.c2w[0, :3, 3].detach()
    return scene.with_poses([type(p)(p.scale * k, p.rotation, centre + k * (p.translation - centre))
                             for p in scene.poses])


def box3d_iou(est: Scene, true: Scene) -> list[float]:
    """Per-object IoU of the axis-aligned world boxes of the posed meshes."""
    out = []
    for a, b in zip(est.objects, true.objects):
        va, vb = a.world_vertices().detach(), b.world_vertices().detach()
        lo = torch.maximum(va.amin(0), vb.amin(0))
        hi = torch.minimum(va.amax(0), vb.amax(0))
        inter = (hi - lo).clamp_min(0).prod()
        vol = (va.amax(0) - va.amin(0)).prod() + (vb.amax(0) - vb.amin(0)).prod() - inter
        out.append(float(inter / vol))
    return out


def _object_ious(est: Scene, true: Scene, cams: Cameras) -> list[float]:
    """Mean over views of each object's visible-mask IoU."""
    a = render_scene(est, cams).object_id
    b = render_scene(true, cams).object_id
    return [sum(mask_iou(a[v] == i, b[v] == i) for v in range(len(cams))) / len(cams)
            for i in range(len(true.objects))]


def scene_metrics(est: Scene, true: Scene, novel: Cameras) -> dict[str, float]:
    """All metrics of the layout benchmark for one scene (means over objects).

    Novel-view IoU is given as is and after the one-scale alignment about the reference camera:
    a scene scaled about the camera looks the same from it, so only the aligned number says how
    well the layout was recovered; the reference-view IoU does not change under the alignment.
    """
    errs = pose_errors(est, true)
    k = errs["alignment"][0]
    aligned = _aligned(est, k)
    ref_iou = _object_ious(est, true, true.camera)  # the alignment leaves the reference view as it is
    novel_iou = _object_ious(est, true, novel)
    novel_aligned = _object_ious(aligned, true, novel)
    box = box3d_iou(aligned, true)

    def mean(x):
        return sum(x) / len(x)

    return {
        "translation": mean(errs["translation"]),
        "translation_aligned": mean(errs["translation_aligned"]),
        "scale": mean(errs["scale"]),
        "scale_aligned": mean(errs["scale_aligned"]),
        "rotation_deg": mean(errs["rotation_deg"]),
        "box3d_iou": mean(box),
        "ref_mask_iou": mean(ref_iou),
        "novel_mask_iou": mean(novel_iou),
        "novel_mask_iou_aligned": mean(novel_aligned),
        "interpenetration": interpenetration_volume(est),
        "alignment": k,
    }

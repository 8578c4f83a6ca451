"""How far a composed scene is from the truth (benchmarks, the demo's report, tests)."""

from __future__ import annotations

import torch

from ..types.camera import Cameras
from ..compose.physics import interpenetration_volume
from ..types.pose import rotation_angle_deg
from ..render import render_scene
from ..types.scene import Scene

__all__ = ["pose_errors", "mask_iou", "box3d_iou", "scene_metrics", "scene_extent", "sample_surface",
           "posed_point_sets", "normalize_to_true", "chamfer_fscore", "adds_distances", "surface_metrics"]


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


# ----------------------------------------------------------------------------------------------
# Point-set metrics the field reports (METHOD.md, "The field since"): on our own procedural
# scenes, with the published definitions; numbers are comparable in kind, not with their tables.


def sample_surface(mesh, n: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, 3]`` float32 CPU points uniform on the mesh surface (canonical frame).

    Faces are drawn with probability proportional to their area, points uniformly inside them
    (square-root barycentric sampling), all from ``generator``: the same seed gives the same points.
    """
    v = mesh.vertices.detach().float().cpu()
    tri = v[mesh.faces.detach().cpu().long()]  # [F, 3, 3]
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=1)
    if float(area.sum()) <= 0:
        raise ValueError(f"sample_surface: mesh {mesh.name!r} has no area (all {len(tri)} faces degenerate)")
    face = torch.multinomial(area, n, replacement=True, generator=generator)
    u = torch.rand(n, 2, generator=generator)
    r = u[:, :1].sqrt()
    w = torch.cat([1 - r, r * (1 - u[:, 1:]), r * u[:, 1:]], 1)  # [n, 3] barycentric
    return (w[:, :, None] * tri[face]).sum(1)


def posed_point_sets(est: Scene, true: Scene, n: int = 2048, seed: int = 0) -> tuple[list, list]:
    """Per object, the same canonical surface samples posed by the estimated and by the true pose.

    Returns ``(est_points, true_points)``: lists of ``[n, 3]`` float32 CPU world points, one per
    object (the meshes of ``est`` and ``true`` are the same objects, in the same order).
    """
    if len(est.objects) != len(true.objects):
        raise ValueError(f"point metrics: the estimate has {len(est.objects)} objects, the truth "
                         f"{len(true.objects)}; expected the same objects in the same order")
    g = torch.Generator().manual_seed(int(seed))
    a, b = [], []
    for oe, ot in zip(est.objects, true.objects):
        canon = sample_surface(ot.mesh, n, g)
        a.append(oe.pose.detach().to("cpu", torch.float32).apply(canon))
        b.append(ot.pose.detach().to("cpu", torch.float32).apply(canon))
    return a, b


def normalize_to_true(true_points: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(centre [3], factor)`` that maps the true scene into ``[-0.95, 0.95]^3``.

    SceneGen's metric code normalises the scene this way before Chamfer distance and F-score:
    the bounding box of the true points is centred on the origin and scaled uniformly so that its
    longest side spans ``[-0.95, 0.95]``; ``x_normalised = (x - centre) * factor``. The estimate is
    mapped by the same transform (so an estimate at the wrong scale is not forgiven).
    """
    lo, hi = true_points.amin(0), true_points.amax(0)
    return (lo + hi) / 2, 1.9 / max(float((hi - lo).max()), 1e-12)


def _nearest(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[len(a)]`` distance from each point of ``a`` to its nearest point of ``b``."""
    return torch.cat([torch.cdist(p.double(), b.double()).amin(1) for p in a.split(4096)]).float()


def chamfer_fscore(est_points: torch.Tensor, true_points: torch.Tensor, tau: float = 0.1) -> dict[str, float]:
    """Chamfer distance and F-score at ``tau`` between two point sets ``[P, 3]`` and ``[Q, 3]``.

    - ``chamfer``: ``mean_p min_q |p - q| + mean_q min_p |p - q|`` (Euclidean, not squared: the
      sum of the two mean nearest-neighbour distances, in the points' units).
    - ``precision``: share of estimated points within ``tau`` of a true point; ``recall``: share
      of true points within ``tau`` of an estimated point; ``fscore = 2 P R / (P + R)`` (0 when both
      are 0). Knapitsch et al., Tanks and Temples (2017); at ``tau = 0.1`` on the normalised scene as
      SceneGen / MIDI / Gen3DSR report it.
    """
    d_ab, d_ba = _nearest(est_points, true_points), _nearest(true_points, est_points)
    p, r = float((d_ab < tau).float().mean()), float((d_ba < tau).float().mean())
    return {"chamfer": float(d_ab.mean() + d_ba.mean()), "precision": p, "recall": r,
            "fscore": 2 * p * r / (p + r) if p + r > 0 else 0.0}


def adds_distances(est_points: list, true_points: list) -> tuple[list[float], list[float]]:
    """Per object ``(ADD-S distance, object diameter)`` from :func:`posed_point_sets`.

    ADD-S (Xiang et al., PoseCNN 2018; the layout metric of SAM 3D Objects, arXiv 2511.16624, which
    counts a success when it is below 0.1 of the object's diameter): the average distance from
    each point of one posed copy of the object to the closest point of the other. Made symmetric
    here (the mean of both directions), because our estimates also have a free scale: a shrunken
    estimate lying on the true surface would pass the one-sided form. Diameter: the largest
    distance between two true points.
    """
    dist, diam = [], []
    for a, b in zip(est_points, true_points):
        dist.append(float((_nearest(a, b).mean() + _nearest(b, a).mean()) / 2))
        diam.append(float(torch.cdist(b.double(), b.double()).max()) if len(b) <= 4096 else
                    float((b.amax(0) - b.amin(0)).norm()))
    return dist, diam


def surface_metrics(est: Scene, true: Scene, n: int = 2048, seed: int = 0, tau: float = 0.1,
                    adds_threshold: float = 0.1) -> dict[str, float]:
    """Scene-level Chamfer distance and F-score, and ADD-S, of an estimated layout against the truth.

    Args:
        est, true: the same objects (same meshes, same order) with estimated and true poses.
        n: surface points per object (the same canonical samples for both scenes, seeded).
        seed: of the sampling generator.
        tau: F-score threshold, in units of the normalised scene (:func:`normalize_to_true`).
        adds_threshold: ADD-S success threshold as a fraction of each object's diameter.
    Returns:
        ``chamfer``, ``fscore``, ``precision``, ``recall`` (whole scene, normalised by the true
        scene, :func:`chamfer_fscore`); ``adds`` (the share of objects whose ADD-S distance is below
        ``adds_threshold`` x diameter: ADD-S@0.1) and ``adds_distance`` (mean over objects of
        ADD-S / diameter).
    """
    a, b = posed_point_sets(est, true, n, seed)
    centre, factor = normalize_to_true(torch.cat(b))
    out = chamfer_fscore((torch.cat(a) - centre) * factor, (torch.cat(b) - centre) * factor, tau)
    dist, diam = adds_distances(a, b)
    rel = [d / max(m, 1e-12) for d, m in zip(dist, diam)]
    out["adds"] = sum(r < adds_threshold for r in rel) / len(rel)
    out["adds_distance"] = sum(rel) / len(rel)
    return out

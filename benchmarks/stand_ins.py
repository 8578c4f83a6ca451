"""What trained weights would output, for benchmarks that run random weights at the released sizes.

Random weights compute exactly what trained ones do, but their outputs mean nothing. Where a
later stage's cost depends on an earlier output, :func:`substitute_trained_outputs` lets the
network run and then replaces its output: SAM's masks -> the picture's true masks (matched by
box) or the ellipse inscribed in each box; TripoSR's density -> an object-like blob
(:func:`lift3d.blob_density`), so marching cubes, decimation and the refine renderer see
object-sized meshes. Used by benchmarks/pipeline.py (in its process) and benchmarks/batch.py (in
every Ray worker).
"""

from __future__ import annotations

import torch


def ellipse_masks(boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``[N, H, W]`` bool: the ellipse inscribed in each box (``[N, 4]`` x0, y0, x1, y1 in pixels)."""
    h, w = hw
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    out = []
    for x0, y0, x1, y1 in boxes.tolist():
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 1), max((y1 - y0) / 2, 1)
        out.append(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1)
    return torch.stack(out)


def substitute_trained_outputs(picture_masks: torch.Tensor | None = None,
                               picture_hw: tuple[int, int] | None = None) -> list[str]:
    """Patch SAM's masks and TripoSR's density in this process (after the networks ran, so their
    cost is counted); return what was substituted, one line each. Patching again replaces the
    earlier patch.

    Args:
        picture_masks: ``[N, H, W]`` the picture's true masks; SAM run on a ``picture_hw`` image
            then gives the true mask whose box is nearest each prompt box. Without them, or on
            any other image (an inpainted window), the ellipse in each box.
        picture_hw: ``(H, W)`` of the picture, with ``picture_masks``.
    """
    import comboverse_ops.decompose.segment as segment
    from comboverse_ops.types.layout import boxes_from_masks
    from comboverse_ops.lift3d.triposr import TripoSR
    from lift3d import blob_density

    run_sam = getattr(segment.sam_masks, "__wrapped__", segment.sam_masks)
    true_boxes = boxes_from_masks(picture_masks).float() if picture_masks is not None else None

    def sam_masks(sam, rgb, boxes, points, settings=segment.SegmentSettings(), *, predictor=None):
        masks, scores = run_sam(sam, rgb, boxes, points, settings, predictor=predictor)
        if true_boxes is not None and tuple(rgb.shape[:2]) == tuple(picture_hw):
            out = picture_masks[torch.cdist(boxes.float().cpu(), true_boxes).argmin(1)].bool()
        else:
            out = ellipse_masks(boxes, tuple(rgb.shape[:2]))
        return out.to(masks.device), scores

    sam_masks.__wrapped__ = run_sam
    segment.sam_masks = sam_masks
    run_query = getattr(TripoSR.query, "__wrapped__", TripoSR.query)

    def query(self, triplane, points):
        out = run_query(self, triplane, points)
        out["density"] = blob_density(points.float()).to(out["density"])
        return out

    query.__wrapped__ = run_query
    TripoSR.query = query
    return substitution_notes(picture_masks is not None)


def substitution_notes(picture_masks: bool) -> list[str]:
    """What :func:`substitute_trained_outputs` substitutes, one line each (for a benchmark's report)."""
    sam = ("SAM masks -> the picture's true masks (inpainted windows: the ellipse in the box)" if picture_masks
           else "SAM masks -> the ellipse in each box")
    return [sam, "TripoSR density -> an object-like blob (benchmarks/lift3d.py)"]

"""Does a picture show its caption's relation? A colour checker for the prior's pictures.

Every object of a caption has its own hue (scenes.COLORS), so an object's pixels are found by
colour: a pixel belongs to the caption colour whose chromaticity ``rgb / (r + g + b)`` is
nearest, among the colours the caption names, when it is far enough from the white background.
Then 2D predicates decide each relation (image rows grow downwards):

- "to the left of" / "to the right of": the subject's centroid is left / right of the object's.
- "in front of" / "behind": the subject's lowest visible row is lower / higher in the picture
  than the object's. Cameras look down on the ground, so a nearer contact point is lower.
- "on top of" / "under": the subject's centroid is above / below the object's and the two
  overlap horizontally (the subject's centroid lies within the object's column span).

Each predicate needs a margin of ``margin`` pixels (at 64 px), so a tie fails. "on top of" and
"behind" can both hold for a stack seen from above; opposite relations never both hold.
"""

from __future__ import annotations

import torch

from .scenes import COLORS

__all__ = ["object_masks", "relation_holds", "check_caption"]


def object_masks(image: torch.Tensor, colors: list[str], *, background_distance: float = 0.12) -> torch.Tensor:
    """``[K, H, W]`` bool: the pixels of each named colour.

    Args:
        image: ``[H, W, 3]`` float in [0, 1] over a white background.
        colors: colour names (keys of scenes.COLORS) of the objects to find.
    """
    img = image.float().clamp(0, 1)
    fg = (1 - img).amax(-1) > background_distance
    chroma = img / img.sum(-1, keepdim=True).clamp_min(1e-6)
    ref = torch.tensor([COLORS[c] for c in colors], dtype=img.dtype, device=img.device)
    ref = ref / ref.sum(-1, keepdim=True)
    d = ((chroma[None] - ref[:, None, None]) ** 2).sum(-1)  # [K, H, W]
    nearest = d.argmin(0)
    close = d.amin(0) < 0.02
    return torch.stack([fg & close & (nearest == k) for k in range(len(colors))])


def _stats(mask: torch.Tensor):
    ys, xs = mask.nonzero(as_tuple=True)
    ys, xs = ys.float(), xs.float()
    q = lambda t, p: float(torch.quantile(t, p))  # noqa: E731
    return {"cx": float(xs.mean()), "cy": float(ys.mean()), "bottom": q(ys, 0.95), "x0": q(xs, 0.05),
            "x1": q(xs, 0.95)}


def relation_holds(mask_a: torch.Tensor, mask_b: torch.Tensor, relation: str, *, margin: float = 1.0,
                   min_pixels: int = 6) -> bool:
    """Whether ``A relation B`` holds between two object masks ``[H, W]`` (module doc)."""
    scale = mask_a.shape[-1] / 64
    m = margin * scale
    if int(mask_a.sum()) < min_pixels * scale ** 2 or int(mask_b.sum()) < min_pixels * scale ** 2:
        return False
    a, b = _stats(mask_a), _stats(mask_b)
    if relation == "to the left of":
        return a["cx"] + m < b["cx"]
    if relation == "to the right of":
        return a["cx"] > b["cx"] + m
    if relation == "in front of":
        return a["bottom"] > b["bottom"] + m
    if relation == "behind":
        return a["bottom"] + m < b["bottom"]
    if relation in ("on top of", "under"):
        top, low = (a, b) if relation == "on top of" else (b, a)
        return top["cy"] + m < low["cy"] and low["x0"] <= top["cx"] <= low["x1"]
    raise ValueError(f"relation: expected one of scenes.RELATIONS, got {relation!r}")


def check_caption(image: torch.Tensor, spec, *, first_only: bool = True) -> bool:
    """Whether ``image`` shows the relation(s) of ``spec`` (a scenes.SceneSpec)."""
    slots = [k for k, c in enumerate(spec.colors) if c is not None]
    masks = object_masks(image, [spec.colors[k] for k in slots])
    index = {k: n for n, k in enumerate(slots)}
    rels = spec.relations[:1] if first_only else spec.relations
    return all(relation_holds(masks[index[i]], masks[index[j]], r) for i, r, j in rels)

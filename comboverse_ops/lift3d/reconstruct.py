"""Stage 1, step 3 of ComboVerse: one textured mesh per completed object crop.

Per object: conditioning image (:mod:`.preprocess`: the crop on grey, framed unless it already
is) -> triplane (model ``encode``) -> density on a ``resolution^3`` grid -> marching cubes at
``density_threshold`` -> decimation to ``max_faces`` -> vertex colours from the decoder at the
final vertices -> rotation from the model's frame into the canonical object frame (+Y up, front
+Z, centred, longest side 1).

``model`` is duck-typed: ``image_size`` (int), ``radius`` (float), ``encode([B, 3, S, S]) ->
[B, ...]`` and ``query(code, [N, 3] points) -> {"density": [N], "color": [N, 3]}``, plus the
``front`` / ``up`` axes of its frame (class attributes; TripoSR's by default).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..types.mesh import Mesh
from ..meshio.decimate import MAX_FACES, decimate
from ..meshio.frames import TRIPOSR_FRONT, TRIPOSR_UP, to_canonical_frame
from ..settings import setting, settings_class
from .preprocess import FOREGROUND_RATIO, conditioning_images
from .surface import marching_cubes, sample_density_grid

__all__ = ["Lift3DSettings", "reconstruct_objects", "mesh_from_triplane"]

logger = logging.getLogger(__name__)


@settings_class(label="Lift3D")
@dataclass(frozen=True)
class Lift3DSettings:
    """Settings of :func:`reconstruct_objects`; the Lift3D node's widgets map onto these fields."""

    resolution: int = setting(256, "Marching-cubes grid per axis (TripoSR default 256). Higher = finer surface, "
                                   "cubic cost.", lo=16, hi=1024, step=16, source="upstream")
    density_threshold: float = setting(25.0, "Density level of the surface (TripoSR default 25). Lower = fatter "
                                             "objects.", lo=0.01, hi=1000.0, step=0.5, source="upstream")
    max_faces: int = setting(MAX_FACES, "Decimate each object to at most this many faces (ComboVerse: 50,000); 0 "
                                        "keeps every face. Fewer faces make the combination stage faster.", lo=0,
                             hi=2_000_000, step=1000, source="paper")
    foreground_ratio: float = setting(FOREGROUND_RATIO, "Object size relative to the image the model sees (TripoSR "
                                                        f"default {FOREGROUND_RATIO}); crops framed at this ratio "
                                                        "(Segment's) are used as they are.", lo=0.3, hi=1.0, step=0.01,
                                      source="upstream")
    # TripoSR's own mesh output does
    vertex_colors: bool = setting(True, "Colour the vertices from the model; off gives grey meshes.",
                                  source="upstream")
    query_chunk: int = setting(262_144, "Points per decoder call: lower it if the GPU runs out of memory (same "
                                        "result, slower).", lo=1024, hi=16_777_216, step=1024, source="choice")

    def __post_init__(self):
        if 0 < self.max_faces < 4:
            raise ValueError(f"Lift3D max_faces: expected 0 (keep all) or >= 4, got {self.max_faces}")


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    first = next(model.parameters(), None) if hasattr(model, "parameters") else None
    if first is None:
        return torch.device("cpu"), torch.float32
    return first.device, first.dtype


def mesh_from_triplane(model, code: torch.Tensor, settings: Lift3DSettings, *, name: str = "object",
                       check: Callable[[], None] | None = None) -> Mesh:
    """The canonical-frame mesh of one encoded object (``code`` = one entry of ``model.encode``).

    Raises:
        ValueError: the density never reaches ``density_threshold`` (nothing to mesh).
    """
    device, _ = _model_device_dtype(model)
    grid = sample_density_grid(lambda p: model.query(code, p)["density"], model.radius, settings.resolution,
                               chunk=settings.query_chunk, device=device, check=check)
    verts, faces = marching_cubes(grid, settings.density_threshold, model.radius)
    if faces.shape[0] == 0:
        raise ValueError(f"{name}: the reconstructed density never reaches density_threshold "
                         f"{settings.density_threshold} (its maximum is {float(grid.max()):.3g}), so there is no "
                         "surface; lower density_threshold (ComboVerse Lift3D), or check that the crop shows one whole object")
    mesh = decimate(Mesh(vertices=verts, faces=faces, name=name), settings.max_faces, transfer_attributes=False)
    colors = None
    if settings.vertex_colors:
        pts = mesh.vertices.to(device=device, dtype=torch.float32)
        colors = torch.cat([model.query(code, pts[s:s + settings.query_chunk])["color"]
                            for s in range(0, pts.shape[0], settings.query_chunk)])
        colors = colors.float().clamp(0, 1).cpu()
    mesh = Mesh(vertices=mesh.vertices, faces=mesh.faces, vertex_colors=colors, name=name).validate()
    front = getattr(model, "front", TRIPOSR_FRONT)
    up = getattr(model, "up", TRIPOSR_UP)
    return to_canonical_frame(mesh, front=front, up=up)


def reconstruct_objects(model, images: torch.Tensor, masks: torch.Tensor | None = None,
                        settings: Lift3DSettings = Lift3DSettings(), *, names: list[str] | None = None,
                        callback: Callable[..., None] | None = None,
                        check: Callable[[], None] | None = None) -> tuple[list[Mesh], torch.Tensor]:
    """One canonical-frame mesh per object crop.

    Args:
        model: a loaded image-to-3D model (module doc), e.g. :class:`.triposr.TripoSR`.
        images: ``[B, H, W, 3]`` float RGB in [0, 1], one crop per object.
        masks: ``[B, H, W]`` float in [0, 1], 1 = object, or None (crops already on grey).
        settings: see :class:`Lift3DSettings`.
        names: mesh names (default ``object_<i>``).
        callback: ``callback(step, total, preview=None)`` after each object (``preview`` is its
            ``[S, S, 3]`` conditioning image); may raise to cancel.
        check: called between decoder chunks (several times per object); may raise to cancel.
    Returns:
        ``(meshes, conditioning)``: ``B`` meshes on the CPU (float32 vertices, vertex colours in
        [0, 1] unless disabled) and the ``[B, S, S, 3]`` conditioning images on the CPU.
    """
    b = images.shape[0] if images.ndim == 4 else 1
    names = list(names) if names is not None else [f"object_{i}" for i in range(b)]
    if len(names) != b:
        raise ValueError(f"names: expected {b} names (one per crop), got {len(names)}")
    cond = conditioning_images(images.detach().cpu(), None if masks is None else masks.detach().cpu(),
                               model.image_size, foreground_ratio=settings.foreground_ratio, names=names)
    device, dtype = _model_device_dtype(model)
    meshes = []
    with torch.inference_mode():
        for done, (image, name) in enumerate(zip(cond, names)):
            code = model.encode(image.permute(2, 0, 1)[None].to(device=device, dtype=dtype))[0]
            meshes.append(mesh_from_triplane(model, code, settings, name=name, check=check))
            logger.info("Lift3D %s: %d vertices, %d faces", name, meshes[-1].num_vertices, meshes[-1].num_faces)
            if callback is not None:
                callback(done + 1, b, image)
    return meshes, cond

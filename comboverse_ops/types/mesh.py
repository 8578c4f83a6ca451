"""Triangle meshes with vertex colours or a UV texture.

Texture convention (written once, here): ``uvs`` are OpenGL-style, ``(0, 0)`` is the
bottom-left corner of the texture and ``v`` grows upwards; ``texture`` is stored as an image,
top row first. A texel row is therefore ``(1 - v) * H``. glTF uses ``v`` downwards: the GLB
writer flips ``v`` on the way out and the readers flip it back.

The canonical object frame (what Lift3D produces and what InitPose expects): the mesh is centred
on its bounding-box centre, its longest bounding-box side is 1, +Y is up and the object's front
faces +Z. :meth:`Mesh.normalized` puts any mesh into that frame.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

__all__ = ["Mesh"]


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh.

    Attributes:
        vertices: ``[N, 3]`` float positions.
        faces: ``[M, 3]`` int64 vertex indices, counter-clockwise seen from the front (outside).
        vertex_colors: ``[N, 3]`` float RGB in [0, 1], or None.
        uvs: ``[N, 2]`` float texture coordinates (OpenGL convention, module doc), or None.
        texture: ``[H, W, 3]`` float RGB in [0, 1], top row first, or None.
        name: used in error messages and as the glTF node name.
    A mesh with neither colours nor a texture renders light grey.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    vertex_colors: torch.Tensor | None = None
    uvs: torch.Tensor | None = None
    texture: torch.Tensor | None = None
    name: str = "object"

    DEFAULT_COLOR = (0.8, 0.8, 0.8)

    @property
    def has_texture(self) -> bool:
        return self.uvs is not None and self.texture is not None

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    def validate(self) -> "Mesh":
        """Raise ``ValueError`` naming this mesh and the problem; return self when valid.

        Checks: non-empty, ``[N, 3]`` finite vertices, ``[M, 3]`` integer faces within range,
        colour/uv/texture shapes that match the vertices.
        """
        who = f"mesh {self.name!r}"
        v, f = self.vertices, self.faces
        if not torch.is_tensor(v) or v.ndim != 2 or v.shape[-1] != 3:
            raise ValueError(f"{who}: vertices must be [N, 3], got {tuple(getattr(v, 'shape', ()))}")
        if not torch.is_tensor(f) or f.ndim != 2 or f.shape[-1] != 3:
            raise ValueError(f"{who}: faces must be triangles [M, 3], got {tuple(getattr(f, 'shape', ()))}"
                             " (triangulate quads or polygons before use)")
        if v.shape[0] == 0 or f.shape[0] == 0:
            raise ValueError(f"{who}: mesh is empty ({v.shape[0]} vertices, {f.shape[0]} faces)")
        if not v.is_floating_point():
            raise ValueError(f"{who}: vertices must be floating point, got {v.dtype}")
        if f.is_floating_point() or f.dtype == torch.bool:
            raise ValueError(f"{who}: faces must be integer indices, got {f.dtype}")
        bad = ~torch.isfinite(v).all(dim=1)
        if bad.any():
            raise ValueError(f"{who}: {int(bad.sum())} vertices are NaN or inf (first index {int(bad.nonzero()[0])})")
        lo, hi = int(f.min()), int(f.max())
        if lo < 0 or hi >= v.shape[0]:
            raise ValueError(f"{who}: faces index vertices {lo}..{hi}, but there are only {v.shape[0]} vertices")
        n = v.shape[0]
        if self.vertex_colors is not None and tuple(self.vertex_colors.shape) != (n, 3):
            raise ValueError(f"{who}: vertex_colors must be [{n}, 3], got {tuple(self.vertex_colors.shape)}")
        if (self.uvs is None) != (self.texture is None):
            raise ValueError(f"{who}: uvs and texture come together; got only "
                             f"{'uvs' if self.uvs is not None else 'texture'}")
        if self.uvs is not None and tuple(self.uvs.shape) != (n, 2):
            raise ValueError(f"{who}: uvs must be [{n}, 2], got {tuple(self.uvs.shape)}")
        if self.texture is not None and (self.texture.ndim != 3 or self.texture.shape[-1] != 3):
            raise ValueError(f"{who}: texture must be [H, W, 3], got {tuple(self.texture.shape)}")
        return self

    def colors_or_default(self) -> torch.Tensor:
        """``[N, 3]`` vertex colours (default grey where none are set)."""
        if self.vertex_colors is not None:
            return self.vertex_colors
        return torch.tensor(self.DEFAULT_COLOR, dtype=self.vertices.dtype, device=self.device).expand(self.num_vertices, 3)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``([3], [3])`` minimum and maximum corner of the axis-aligned bounding box."""
        return self.vertices.amin(0), self.vertices.amax(0)

    def normalized(self) -> "Mesh":
        """This mesh moved into the canonical object frame: bounding box centred, longest side 1."""
        lo, hi = self.bounds()
        extent = float((hi - lo).max())
        if extent <= 0:
            raise ValueError(f"mesh {self.name!r}: all vertices coincide, cannot normalise")
        return replace(self, vertices=(self.vertices - (lo + hi) / 2) / extent)

    def to(self, device=None, dtype=None) -> "Mesh":
        def mv(t, floating=True):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if floating else None)
        return replace(self, vertices=mv(self.vertices), faces=mv(self.faces, False),
                       vertex_colors=mv(self.vertex_colors), uvs=mv(self.uvs), texture=mv(self.texture))

    def vertex_normals(self) -> torch.Tensor:
        """``[N, 3]`` unit area-weighted vertex normals (+Y for vertices of degenerate faces only)."""
        v, f = self.vertices, self.faces
        fn = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=1)
        n = torch.zeros_like(v).index_add_(0, f.reshape(-1), fn.repeat_interleave(3, 0))
        length = n.norm(dim=1, keepdim=True)
        up = torch.tensor([0.0, 1.0, 0.0], dtype=v.dtype, device=v.device).expand_as(n)
        return torch.where(length > 1e-12, n / length.clamp_min(1e-12), up)

"""Cameras in one convention, used everywhere in the pack.

Convention (written once, here):

- World: right-handed, +Y up. An object's canonical front faces +Z.
- Camera: OpenGL. The camera looks down its own -Z axis, +Y is up, +X is right.
  ``view`` is the world-to-camera matrix, ``c2w`` its inverse.
- Clip space: OpenGL perspective; ``w_clip = -z_view`` (the distance in front of the camera).
- Pixels: images are stored top row first (``[H, W, C]`` as every image library does);
  pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``; ``u`` grows to the right,
  ``v`` grows downwards. NDC ``x = -1`` is the left edge, NDC ``y = +1`` the top edge.
- Orbit angles are kiui's ``orbit_camera``: azimuth in degrees, measured from +Z towards +X;
  elevation in degrees where NEGATIVE elevation puts the camera ABOVE the target
  (``y = -r * sin(elevation)``), exactly as kiui does.

All functions take and return float tensors; device and dtype follow the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Cameras",
    "perspective",
    "look_at",
    "orbit_camera",
    "project_points",
    "project_boxes",
    "unproject_pixel",
    "box_corners",
]


def perspective(fov_y_deg: float | torch.Tensor, aspect: float, near: float = 0.01, far: float = 100.0,
                *, device=None, dtype=torch.float32) -> torch.Tensor:
    """OpenGL perspective matrix.

    Args:
        fov_y_deg: vertical field of view in degrees, scalar or ``[B]``.
        aspect: width / height.
    Returns:
        ``[4, 4]`` (scalar fov) or ``[B, 4, 4]`` float matrix mapping view space to clip space.
    """
    fov = torch.as_tensor(fov_y_deg, device=device, dtype=dtype)
    f = 1.0 / torch.tan(torch.deg2rad(fov) / 2)
    out = torch.zeros(fov.shape + (4, 4), device=fov.device, dtype=dtype)
    out[..., 0, 0] = f / aspect
    out[..., 1, 1] = f
    out[..., 2, 2] = (far + near) / (near - far)
    out[..., 2, 3] = 2 * far * near / (near - far)
    out[..., 3, 2] = -1.0
    return out


def _axis(i: int, like: torch.Tensor) -> torch.Tensor:
    """``[3]`` unit vector along axis ``i``, made on ``like``'s device (no host-to-device copy)."""
    out = torch.zeros(3, dtype=like.dtype, device=like.device)
    out[i].fill_(1.0)  # a kernel with the number as its argument; ``out[i] = 1.0`` copies a CPU tensor
    return out


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-to-world matrix of an OpenGL camera at ``eye`` looking at ``target``.

    Args:
        eye, target: ``[..., 3]`` float world positions.
        up: ``[..., 3]`` world up, default +Y.
    Returns:
        ``[..., 4, 4]`` camera-to-world matrix (columns: right, up, backward, position).
    """
    eye = torch.as_tensor(eye, dtype=torch.float32) if not torch.is_tensor(eye) else eye
    target = torch.as_tensor(target, dtype=eye.dtype, device=eye.device)
    # Axis vectors are filled on the device: a tensor made from Python numbers is copied there,
    # and that copy waits for the GPU (this runs at every SSDS step).
    up = _axis(1, eye) if up is None else torch.as_tensor(up, dtype=eye.dtype, device=eye.device)
    eye, target = torch.broadcast_tensors(eye, target)
    backward = eye - target
    backward = backward / backward.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    up = up.expand_as(backward)
    right = torch.cross(up, backward, dim=-1)
    # Looking straight up or down: any right vector perpendicular to the view works.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-8
    alt = _axis(2, eye).expand_as(backward)
    right = torch.where(degenerate, torch.cross(alt, backward, dim=-1), right)
    right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    true_up = torch.cross(backward, right, dim=-1)
    c2w = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = true_up
    c2w[..., :3, 2] = backward
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1.0
    return c2w


def orbit_camera(elevation_deg, azimuth_deg, radius, target=(0.0, 0.0, 0.0), *, device=None,
                 dtype=torch.float32) -> torch.Tensor:
    """Camera-to-world matrix on an orbit around ``target`` (kiui's convention, see module doc).

    Args:
        elevation_deg, azimuth_deg, radius: scalars or ``[B]`` tensors.
    Returns:
        ``[4, 4]`` or ``[B, 4, 4]`` camera-to-world matrices looking at ``target``.
    """
    el = torch.deg2rad(torch.as_tensor(elevation_deg, device=device, dtype=dtype))
    az = torch.deg2rad(torch.as_tensor(azimuth_deg, device=device, dtype=dtype))
    r = torch.as_tensor(radius, device=device, dtype=dtype)
    el, az, r = torch.broadcast_tensors(el, az, r)
    tgt = torch.as_tensor(target, device=el.device, dtype=dtype)
    offset = torch.stack([r * torch.cos(el) * torch.sin(az), -r * torch.sin(el), r * torch.cos(el) * torch.cos(az)], -1)
    return look_at(tgt + offset, tgt.expand_as(offset))


@dataclass(frozen=True)
class Cameras:
    """A batch of pinhole cameras sharing one image size.

    Attributes:
        c2w: ``[B, 4, 4]`` float camera-to-world matrices (OpenGL camera, see module doc).
        fov_y_deg: ``[B]`` float vertical field of view in degrees.
        width, height: image size in pixels.
        near, far: clip planes in world units; geometry nearer than ``near`` is not drawn.
    """

    c2w: torch.Tensor
    fov_y_deg: torch.Tensor
    width: int
    height: int
    near: float = 0.01
    far: float = 100.0

    def __post_init__(self):
        if self.c2w.ndim != 3 or self.c2w.shape[-2:] != (4, 4):
            raise ValueError(f"Cameras.c2w: expected [B, 4, 4], got {tuple(self.c2w.shape)}")
        if self.fov_y_deg.shape != self.c2w.shape[:1]:
            raise ValueError(f"Cameras.fov_y_deg: expected [{self.c2w.shape[0]}], got {tuple(self.fov_y_deg.shape)}")
        if int(self.width) < 1 or int(self.height) < 1:
            raise ValueError(f"Cameras: image size must be positive, got {self.width}x{self.height}")

    @classmethod
    def create(cls, c2w: torch.Tensor, fov_y_deg: float | torch.Tensor, width: int, height: int,
               near: float = 0.01, far: float = 100.0) -> "Cameras":
        """Build from ``[4, 4]`` or ``[B, 4, 4]`` matrices and a scalar or ``[B]`` field of view."""
        c2w = c2w if c2w.ndim == 3 else c2w[None]
        fov = torch.as_tensor(fov_y_deg, dtype=c2w.dtype, device=c2w.device).reshape(-1).expand(c2w.shape[0])
        return cls(c2w, fov.clone(), int(width), int(height), float(near), float(far))

    @classmethod
    def orbit(cls, elevation_deg, azimuth_deg, radius, fov_y_deg: float, width: int, height: int,
              target=(0.0, 0.0, 0.0), near: float = 0.01, far: float = 100.0, device=None) -> "Cameras":
        """Orbit cameras (kiui's angles) looking at ``target``."""
        c2w = orbit_camera(elevation_deg, azimuth_deg, radius, target, device=device)
        return cls.create(c2w, fov_y_deg, width, height, near, far)

    @classmethod
    def orbit_like(cls, reference: "Cameras", elevation_deg, azimuth_deg, radius, target, *,
                   fov_y_deg: float | None = None, width: int | None = None, height: int | None = None) -> "Cameras":
        """Orbit cameras looking at ``target`` with ``reference``'s lens: novel views of a scene.

        The cameras share the reference camera's field of view (unless ``fov_y_deg``), image size
        (unless ``width`` / ``height``), clip planes and device; they are computed on that device,
        from angles and radii on it or on the CPU, without waiting for it.

        Args:
            reference: the camera whose lens the views share (its first camera's field of view).
            elevation_deg, azimuth_deg, radius: scalars or ``[B]`` tensors (kiui's angles, module doc).
            target: ``[3]`` point the cameras look at (tensor or sequence).
        Returns:
            ``B`` cameras, float32.
        """
        c2w = orbit_camera(elevation_deg, azimuth_deg, radius, target, device=reference.device)
        c2w = c2w if c2w.ndim == 3 else c2w[None]
        n = c2w.shape[0]
        # filled on the device: a tensor made from a Python number would be copied there and wait
        fov = reference.fov_y_deg[:1].to(c2w.dtype).expand(n) if fov_y_deg is None else \
            torch.full((n,), float(fov_y_deg), dtype=c2w.dtype, device=c2w.device)
        return cls.create(c2w, fov, width or reference.width, height or reference.height, reference.near,
                          reference.far)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def view(self) -> torch.Tensor:
        """``[B, 4, 4]`` world-to-camera matrices."""
        # inv_ex: the same inverse without the singularity check, which waits for the GPU
        return torch.linalg.inv_ex(self.c2w).inverse

    @property
    def proj(self) -> torch.Tensor:
        """``[B, 4, 4]`` OpenGL projection matrices."""
        return perspective(self.fov_y_deg, self.width / self.height, self.near, self.far)

    @property
    def focal_px(self) -> torch.Tensor:
        """``[B]`` focal length in pixels (square pixels)."""
        return self.height / (2 * torch.tan(torch.deg2rad(self.fov_y_deg) / 2))

    def to(self, device=None, dtype=None) -> "Cameras":
        return Cameras(self.c2w.to(device=device, dtype=dtype), self.fov_y_deg.to(device=device, dtype=dtype),
                       self.width, self.height, self.near, self.far)

    def __getitem__(self, idx) -> "Cameras":
        idx = [idx] if isinstance(idx, int) else idx
        return Cameras(self.c2w[idx], self.fov_y_deg[idx], self.width, self.height, self.near, self.far)

    @staticmethod
    def cat(cams: list["Cameras"]) -> "Cameras":
        first = cams[0]
        for c in cams[1:]:
            if (c.width, c.height) != (first.width, first.height):
                raise ValueError(f"Cameras.cat: image sizes differ: {first.width}x{first.height} vs {c.width}x{c.height}")
        return Cameras(torch.cat([c.c2w for c in cams]), torch.cat([c.fov_y_deg for c in cams]),
                       first.width, first.height, first.near, first.far)


def project_points(points: torch.Tensor, cams: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points to pixel coordinates.

    Args:
        points: ``[N, 3]`` or ``[B, N, 3]`` float world positions.
        cams: ``B`` cameras.
    Returns:
        ``(uv, depth)``: ``[B, N, 2]`` pixel coordinates (continuous, pixel centres at ``+0.5``)
        and ``[B, N]`` view depth (distance along the viewing axis, positive in front).
    """
    pts = points if points.ndim == 3 else points[None].expand(len(cams), -1, -1)
    view = cams.view.to(pts.dtype)
    cam = pts @ view[:, :3, :3].transpose(1, 2) + view[:, None, :3, 3]
    depth = -cam[..., 2]
    f = cams.focal_px.to(pts.dtype)[:, None]
    u = cams.width / 2 + f * cam[..., 0] / depth
    v = cams.height / 2 - f * cam[..., 1] / depth
    return torch.stack([u, v], -1), depth


def box_corners(center: torch.Tensor, half_extent: torch.Tensor) -> torch.Tensor:
    """The 8 corners ``[..., 8, 3]`` of axis-aligned boxes given ``[..., 3]`` centres and half extents."""
    signs = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)],
                         dtype=center.dtype, device=center.device)
    return center[..., None, :] + signs * half_extent[..., None, :]


def project_boxes(corners: torch.Tensor, cams: Cameras) -> torch.Tensor:
    """2D bounding boxes of projected 3D point sets (e.g. box corners).

    Args:
        corners: ``[K, P, 3]`` world points, ``P`` points per box (8 for a 3D box).
        cams: ``B`` cameras.
    Returns:
        ``[B, K, 4]`` boxes ``(x0, y0, x1, y1)`` in pixels, not clipped to the image.
    """
    k, p, _ = corners.shape
    uv, _ = project_points(corners.reshape(k * p, 3), cams)
    uv = uv.reshape(len(cams), k, p, 2)
    return torch.cat([uv.amin(2), uv.amax(2)], -1)


def unproject_pixel(uv: torch.Tensor, depth: torch.Tensor, cams: Cameras) -> torch.Tensor:
    """World position of pixel ``uv`` at view depth ``depth`` (inverse of :func:`project_points`).

    Args:
        uv: ``[B, N, 2]`` pixel coordinates; depth: ``[B, N]`` view depth (> 0).
    Returns:
        ``[B, N, 3]`` world positions.
    """
    f = cams.focal_px.to(uv.dtype)[:, None]
    x = (uv[..., 0] - cams.width / 2) / f * depth
    y = -(uv[..., 1] - cams.height / 2) / f * depth
    cam = torch.stack([x, y, -depth], -1)
    c2w = cams.c2w.to(uv.dtype)
    return cam @ c2w[:, :3, :3].transpose(1, 2) + c2w[:, None, :3, 3]

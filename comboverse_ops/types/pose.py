"""Per-object similarity pose: uniform scale, rotation, translation.

Rotation convention (written once, here): a rotation vector ``r`` (axis-angle, ``|r|`` in
radians about the unit axis ``r / |r|``, right-handed), ``R = exp([r]_x)``. Zero is the identity,
so a fresh pose leaves the object's canonical front facing +Z, towards a reference camera that
looks down -Z. A point maps as ``x_world = scale * R @ x_object + translation``.
Quaternions appear only at the glTF boundary and are then ``(x, y, z, w)``, glTF's order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Pose", "rotvec_to_matrix", "matrix_to_rotvec", "matrix_to_quat_xyzw", "rotation_angle_deg"]


def _skew(r: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(r[..., 0])
    return torch.stack([
        torch.stack([z, -r[..., 2], r[..., 1]], -1),
        torch.stack([r[..., 2], z, -r[..., 0]], -1),
        torch.stack([-r[..., 1], r[..., 0], z], -1),
    ], -2)


def rotvec_to_matrix(r: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` rotation vectors to ``[..., 3, 3]`` rotation matrices (differentiable at 0 too).

    Rodrigues' formula ``R = I + a K + b K^2`` with ``K = [r]_x``, ``a = sin t / t`` and
    ``b = (1 - cos t) / t^2`` (``t = |r|``; computed as ``sinc(t/2)^2 / 2``), both written as functions of ``t^2`` so that no branch
    divides by zero: below ``t^2 = 1e-6`` their Taylor series (error < 1e-14). Equal to
    ``matrix_exp`` of the skew matrix, but with no data-dependent branch inside, so an
    optimisation step on the GPU never waits for it (``matrix_exp`` reads the norm back).
    """
    k = _skew(r)
    t2 = (r * r).sum(-1)[..., None, None]
    small = t2 < 1e-6
    t2_safe = torch.where(small, torch.ones_like(t2), t2)
    t = t2_safe.sqrt()
    a = torch.where(small, 1 - t2 / 6 + t2 * t2 / 120, torch.sin(t) / t)
    half = torch.sin(t / 2) / (t / 2)  # (1 - cos t) / t^2 = sinc(t/2)^2 / 2: no cancellation in float32
    b = torch.where(small, 0.5 - t2 / 24 + t2 * t2 / 720, 0.5 * half * half)
    eye = torch.eye(3, dtype=r.dtype, device=r.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_rotvec(m: torch.Tensor) -> torch.Tensor:
    """``[3, 3]`` rotation matrix to a ``[3]`` float64 rotation vector (angle in [0, pi]).

    Accurate for float32 matrices over the whole range: the angle comes from ``atan2`` of the
    antisymmetric and trace parts; past 90 degrees the axis comes from the symmetric part (the
    antisymmetric part vanishes near pi) and the antisymmetric part only picks its sign.
    """
    m = m.double()
    w = torch.stack([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]])  # 2 sin(angle) * axis
    sin2, cos2 = w.norm(), m.diagonal().sum() - 1  # 2 sin(angle), 2 cos(angle)
    angle = torch.atan2(sin2, cos2)
    if cos2 >= 0:
        # angle / sin(angle) is well conditioned here; w / 2 is exact to first order near 0.
        return w / 2 if angle < 1e-8 else w * (angle / sin2)
    b = (m + m.T) / 2 - torch.eye(3, dtype=m.dtype) * (cos2 / 2)  # (1 - cos) * axis axis^T
    axis = b[torch.argmax(b.diagonal())]
    axis = axis / axis.norm()
    if torch.dot(axis, w) < 0:
        axis = -axis
    return axis * angle


def matrix_to_quat_xyzw(m: torch.Tensor) -> torch.Tensor:
    """``[3, 3]`` rotation matrix to a unit quaternion ``[4]`` in glTF order ``(x, y, z, w)``, ``w >= 0``."""
    r = matrix_to_rotvec(m)
    angle = r.norm()
    axis = r / angle if angle > 0 else torch.tensor([1.0, 0.0, 0.0], dtype=r.dtype)
    q = torch.cat([axis * torch.sin(angle / 2), torch.cos(angle / 2)[None]])
    return q / q.norm()


def rotation_angle_deg(ra: torch.Tensor, rb: torch.Tensor) -> float:
    """Angle in degrees of the relative rotation between two ``[3, 3]`` rotation matrices."""
    rel = ra.double().T @ rb.double()
    return float(torch.rad2deg(torch.acos(((rel.diagonal().sum() - 1) / 2).clamp(-1, 1))))


@dataclass(frozen=True)
class Pose:
    """Similarity transform of one object; its three tensors are the optimisable parameters.

    Attributes:
        scale: ``[1]`` float, > 0: side length of the object's canonical unit box in world units.
        rotation: ``[3]`` float rotation vector (module doc).
        translation: ``[3]`` float world position of the object's canonical origin.
    """

    scale: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor

    @classmethod
    def create(cls, scale=1.0, rotation=(0.0, 0.0, 0.0), translation=(0.0, 0.0, 0.0), *, device=None,
               dtype=torch.float32) -> "Pose":
        def t(x, n):
            x = torch.as_tensor(x, device=device, dtype=dtype).reshape(-1).clone()
            if x.numel() != n:
                raise ValueError(f"Pose: expected {n} values, got {x.numel()}")
            return x
        return cls(t(scale, 1), t(rotation, 3), t(translation, 3))

    @classmethod
    def batch(cls, scale: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> list["Pose"]:
        """``N`` poses from ``[N, 1]`` scales, ``[N, 3]`` rotation vectors and ``[N, 3]``
        translations, each pose's rotation matrix computed now and kept with it (an optimisation
        step asks each pose for its matrix many times: renders, physics terms). One pose at a
        time, not batched: a batched matrix product rounds differently in the last bit."""
        poses = []
        for i in range(rotation.shape[0]):
            pose = cls(scale[i], rotation[i], translation[i])
            # not a field: replace() and detach() make poses without it
            object.__setattr__(pose, "_matrix", rotvec_to_matrix(pose.rotation))
            poses.append(pose)
        return poses

    def parameters(self) -> list[torch.Tensor]:
        return [self.scale, self.rotation, self.translation]

    def requires_grad_(self, flag: bool = True) -> "Pose":
        """Make the parameters leaf tensors that track gradients (in place on this pose's tensors)."""
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def detach(self) -> "Pose":
        return Pose(self.scale.detach().clone(), self.rotation.detach().clone(), self.translation.detach().clone())

    def to(self, device=None, dtype=None) -> "Pose":
        return Pose(*(p.to(device=device, dtype=dtype) for p in self.parameters()))

    def rotation_matrix(self) -> torch.Tensor:
        """``[3, 3]`` rotation matrix (computed once for poses made by :meth:`batch`)."""
        kept = self.__dict__.get("_matrix")
        return kept if kept is not None else rotvec_to_matrix(self.rotation)

    def matrix(self) -> torch.Tensor:
        """``[4, 4]`` object-to-world matrix."""
        t = self.translation
        top = torch.cat([self.scale * self.rotation_matrix(), t[:, None]], 1)
        return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=t.dtype, device=t.device)], 0)

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """``[N, 3]`` object-space points to ``[N, 3]`` world points (differentiable)."""
        return self.scale * points @ self.rotation_matrix().T + self.translation

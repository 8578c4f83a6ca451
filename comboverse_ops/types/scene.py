"""A composed scene: object meshes in their canonical frames, one pose each, a reference camera."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .camera import Cameras
from .mesh import Mesh
from .pose import Pose

__all__ = ["SceneObject", "Scene"]


@dataclass(frozen=True)
class SceneObject:
    """One object: a frozen mesh (canonical frame, see :mod:`.mesh`) and its pose in the world."""

    name: str
    mesh: Mesh
    pose: Pose

    def world_vertices(self) -> torch.Tensor:
        """``[N, 3]`` posed vertices (differentiable w.r.t. the pose)."""
        return self.pose.apply(self.mesh.vertices)


@dataclass(frozen=True)
class Scene:
    """Objects with poses, plus the camera the reference image was taken with.

    Scenes are values: functions that change poses return a new Scene and never mutate a
    scene they were given (ComfyUI reuses node outputs).

    Attributes:
        objects: the objects, in layout order (the order of the user's boxes).
        camera: one reference camera (``len(camera) == 1``), or None.
        meta: free-form extras (prompt, relations) carried along for later stages.
    """

    objects: tuple[SceneObject, ...]
    camera: Cameras | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        if self.camera is not None and len(self.camera) != 1:
            raise ValueError(f"Scene.camera: expected one reference camera, got {len(self.camera)}")

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    @property
    def poses(self) -> list[Pose]:
        return [o.pose for o in self.objects]

    def validate(self) -> "Scene":
        """Raise ``ValueError`` naming the object whose mesh or pose is invalid."""
        if not self.objects:
            raise ValueError("scene has no objects")
        seen = set()
        for i, o in enumerate(self.objects):
            if o.name in seen:
                raise ValueError(f"scene: object name {o.name!r} is used twice (names must be unique)")
            seen.add(o.name)
            replace(o.mesh, name=o.name).validate()
            for label, p in zip(("scale", "rotation", "translation"), o.pose.parameters()):
                if not torch.isfinite(p).all():
                    raise ValueError(f"object {o.name!r} (#{i}): pose {label} is not finite: {p.tolist()}")
            if float(o.pose.scale.detach().min()) <= 0:
                raise ValueError(f"object {o.name!r} (#{i}): pose scale must be > 0, got {float(o.pose.scale)}")
        return self

    def with_poses(self, poses: list[Pose]) -> "Scene":
        if len(poses) != len(self.objects):
            raise ValueError(f"Scene.with_poses: expected {len(self.objects)} poses, got {len(poses)}")
        return replace(self, objects=tuple(replace(o, pose=p) for o, p in zip(self.objects, poses)))

    def detach(self) -> "Scene":
        return self.with_poses([p.detach() for p in self.poses])

    def to(self, device=None) -> "Scene":
        objs = tuple(replace(o, mesh=o.mesh.to(device), pose=o.pose.to(device)) for o in self.objects)
        cam = self.camera.to(device) if self.camera is not None else None
        return replace(self, objects=objs, camera=cam)

    def world_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``([3], [3])`` world-space bounding box of all posed vertices."""
        pts = torch.cat([o.world_vertices().detach() for o in self.objects])
        return pts.amin(0), pts.amax(0)

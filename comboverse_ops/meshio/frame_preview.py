"""A picture that shows how imported meshes sit in the pack's object frame, so a wrong front or up
axis (other generators' meshes come Y-up or Z-up, facing +Z, -Z or elsewhere) is seen at once."""

from __future__ import annotations

import torch

from ..types.camera import Cameras
from ..types.mesh import Mesh
from ..types.pose import Pose
from ..types.scene import Scene, SceneObject

__all__ = ["frame_preview"]

# Views of each object: as InitPose first shows it to the reference camera (front, camera on +Z),
# and from the front-right above, where an object lying on its back or facing away is obvious.
VIEWS = ((0.0, 0.0), (-30.0, 45.0))  # (elevation, azimuth) in degrees, kiui's convention (camera.py)


@torch.no_grad()
def frame_preview(meshes: list[Mesh], size: int = 160) -> torch.Tensor:
    """``[H, W, 3]`` float32 in [0, 1]: one row per mesh, the views of :data:`VIEWS` side by side.

    Meshes are shown as they are (already in the canonical frame: front +Z, up +Y, longest side
    1), on a white background, with 4-pixel white gaps between rows and views.
    """
    from ..render import render_scene

    rows = []
    for m in meshes:
        mesh = m.to("cpu", torch.float32)
        scene = Scene((SceneObject(mesh.name or "object", mesh, Pose.create(1.0)),))
        cams = Cameras.orbit(torch.tensor([v[0] for v in VIEWS]), torch.tensor([v[1] for v in VIEWS]),
                             torch.full((len(VIEWS),), 2.4), 40.0, size, size)
        rgb = render_scene(scene, cams, backend="torch").rgb.clamp(0, 1)  # [V, S, S, 3]
        gap = torch.ones(size, 4, 3)
        rows.append(torch.cat([part for v in range(len(VIEWS)) for part in ((gap,) if v else ()) + (rgb[v],)], 1))
    out = []
    for i, r in enumerate(rows):
        out += ([torch.ones(4, r.shape[1], 3)] if i else []) + [r]
    return torch.cat(out, 0)

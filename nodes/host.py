"""The one place that talks to ComfyUI's own modules.

Every import of ComfyUI happens inside a function, so the pack imports (and its nodes run)
without ComfyUI: in tests, and in tools that use the node classes as a library. Outside ComfyUI
the output folder is ``$COMBOVERSE_OUTPUT_DIR`` (default ``./output``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

# Socket types of this pack. Core types (IMAGE, MASK, MESH, BOUNDING_BOX) are used wherever a
# person or another node may want to step in.
SCENE = "COMBOVERSE_SCENE"  # comboverse_ops.scene.Scene: meshes, poses, reference camera
LAYOUT = "COMBOVERSE_LAYOUT"  # comboverse_ops.layout.Layout: boxes, phrases, masks in source pixels
MESHES = "COMBOVERSE_MESHES"  # list[comboverse_ops.mesh.Mesh], canonical frame, one per object
SAM_MODEL = "COMBOVERSE_SAM"
INPAINT_MODEL = "COMBOVERSE_INPAINT_MODEL"
LIFT3D_MODEL = "COMBOVERSE_LIFT3D_MODEL"


def output_directory() -> Path:
    try:
        import folder_paths
    except ImportError:
        return Path(os.environ.get("COMBOVERSE_OUTPUT_DIR", "output")).resolve()
    return Path(folder_paths.get_output_directory())


def next_output_path(filename_prefix: str, extension: str) -> tuple[Path, str, str]:
    """A fresh ``<prefix>_<counter:05>_.<ext>`` path in the output folder, as SaveGLB names files.

    Returns:
        ``(full_path, filename, subfolder)``, the last two relative to the output folder.
    """
    out_dir = output_directory()
    try:
        import folder_paths
    except ImportError:
        folder_paths = None
    if folder_paths is not None:
        full_folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, str(out_dir))
        full_folder = Path(full_folder)
    else:
        prefix = Path(filename_prefix)
        if prefix.is_absolute() or ".." in prefix.parts:
            raise ValueError(f"filename_prefix: expected a path inside the output folder, got {filename_prefix!r}")
        subfolder, name = str(prefix.parent) if str(prefix.parent) != "." else "", prefix.name
        full_folder = out_dir / subfolder
        full_folder.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for p in full_folder.iterdir()
                 if (m := re.fullmatch(re.escape(name) + r"_(\d{5})_\..*", p.name))]
        counter = max(taken, default=0) + 1
    filename = f"{name}_{counter:05}_.{extension}"
    return full_folder / filename, filename, subfolder


def make_core_mesh(vertices: torch.Tensor, faces: torch.Tensor, vertex_colors: torch.Tensor | None = None):
    """A ComfyUI core ``MESH`` (``vertices [B,N,3]``, ``faces [B,M,3]``).

    Uses ComfyUI's own class; vertex colours are passed where that version supports them.
    Outside ComfyUI a small stand-in with the same attributes is returned.
    """
    mesh_cls = None
    try:
        from comfy_api.latest import Types
        mesh_cls = Types.MESH
    except ImportError:
        try:
            from comfy_extras.nodes_hunyuan3d import MESH as mesh_cls
        except ImportError:
            mesh_cls = None
    if mesh_cls is None:
        return CoreMeshStandIn(vertices, faces, vertex_colors)
    if vertex_colors is not None:
        try:
            return mesh_cls(vertices, faces, vertex_colors=vertex_colors)
        except TypeError:  # ComfyUI before vertex colours on MESH (2026-05)
            pass
    return mesh_cls(vertices, faces)


class CoreMeshStandIn:
    """What ComfyUI's MESH carries, for use outside ComfyUI only."""

    def __init__(self, vertices, faces, vertex_colors=None):
        self.vertices, self.faces, self.vertex_colors = vertices, faces, vertex_colors


class Progress:
    """A ``callback(step, total, preview=None)`` that drives ComfyUI's progress bar.

    Every call also checks ComfyUI's Cancel button (throttled bar updates skip that check).
    ``preview`` is an ``[H, W, 3]`` float image in [0, 1] or None. Outside ComfyUI it does nothing.
    """

    def __init__(self, total: int):
        try:
            import comfy.model_management as mm
            import comfy.utils
        except ImportError:
            self._bar = self._mm = None
            return
        self._bar, self._mm = comfy.utils.ProgressBar(total), mm

    def __call__(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        if self._bar is None:
            return
        self._mm.throw_exception_if_processing_interrupted()
        pil = None
        if preview is not None:
            from PIL import Image
            pil = ("JPEG", Image.fromarray((preview.detach().clamp(0, 1) * 255).byte().cpu().numpy()), 512)
        self._bar.update_absolute(step, total, pil)

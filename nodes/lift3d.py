"""ComboVerse Lift3D: object crops -> object meshes (built-in TripoSR), and meshes from other 3D nodes."""

from __future__ import annotations

import torch

from ..comboverse_ops.meshio.frames import AXES
from ..comboverse_ops.lift3d.reconstruct import Lift3DSettings
from ..comboverse_ops.models.precision import PRECISION_TOOLTIP, PRECISIONS, model_dtype
from . import host
from .host import LIFT3D_MODEL, MESHES
from .widgets import settings_widgets, widget

_FRONT_TIP = ("Which axis of the source mesh the object's front faces. The pack's frame has the front on +Z "
              "(what the reference camera sees) and +Y up. Most glTF exports (Hunyuan3D, TRELLIS): +Z; if the "
              "object ends up facing away in the preview, try -Z (or ±X for side-facing exports).")
_UP_TIP = "Which axis of the source mesh points up: +Y for glTF/GLB (and most generators), +Z for many OBJ/PLY."
_APPEND_TIP = ("Optional: object meshes made by other nodes; these objects are appended after them, in order "
               "(a clashing name gets _2, _3 ...).")


def _dtype(precision: str) -> torch.dtype:
    load_device, _ = host.model_devices()
    return model_dtype(precision, load_device, "ComboVerse Load Lift3D Model: precision")


class LoadLift3DModel:
    DESCRIPTION = ("Loads TripoSR's official release offline for ComboVerse Lift3D: model.ckpt (or a .safetensors "
                   "conversion) from ComfyUI's models/triposr folder, with the config.yaml beside it or, if there is "
                   "none, the released configuration shipped with the pack. Loaded once and shared; ComfyUI moves it "
                   "to the GPU when Lift3D runs.")
    CATEGORY = "ComboVerse/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (LIFT3D_MODEL,)
    RETURN_NAMES = ("lift3d_model",)
    OUTPUT_TOOLTIPS = ("The image-to-3D model, for ComboVerse Lift3D.",)

    @classmethod
    def INPUT_TYPES(cls):
        host.register_model_folders()
        return {"required": {
            "ckpt_name": (host.model_files(host.TRIPOSR_FOLDER),
                          {"tooltip": "TripoSR's model.ckpt (huggingface.co/stabilityai/TripoSR) in models/triposr. "
                                      "Put its config.yaml next to it to use that config; otherwise the released "
                                      "one shipped with the pack is used."}),
            "precision": (list(PRECISIONS), {"default": "auto", "tooltip": PRECISION_TOOLTIP}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name=None):
        from ..comboverse_ops.lift3d.checkpoint import check_triposr_files

        if ckpt_name is None:
            return True
        host.register_model_folders()
        return host.validation(lambda: check_triposr_files(
            host.resolve_model_file(host.TRIPOSR_FOLDER, ckpt_name, "ComboVerse Load Lift3D Model")))

    def load(self, ckpt_name, precision="auto"):
        from ..comboverse_ops.lift3d.checkpoint import load_triposr

        host.register_model_folders()
        path = host.resolve_model_file(host.TRIPOSR_FOLDER, ckpt_name, "ComboVerse Load Lift3D Model")
        _, offload = host.model_devices()
        return (load_triposr(path, device=offload, dtype=_dtype(precision)),)


class Lift3D:
    DESCRIPTION = ("Reconstructs one textured mesh per object crop with TripoSR (ComboVerse stage 1): each crop is "
                   "put on grey using its mask and, unless already framed as ComboVerse Segment and Inpaint frame "
                   "them (centred, longer side foreground_ratio of the side), re-centred; then lifted to a triplane, meshed by marching cubes, decimated and "
                   "coloured, then put into the pack's object frame (front +Z, up +Y, unit size). To use another "
                   "image-to-3D model instead, feed its meshes to 'ComboVerse Meshes From MESH'.")
    CATEGORY = "ComboVerse/lift3d"
    FUNCTION = "lift"
    RETURN_TYPES = (MESHES, "IMAGE")
    RETURN_NAMES = ("meshes", "conditioning")
    OUTPUT_TOOLTIPS = ("One mesh per crop, in the pack's object frame, for ComboVerse InitPose.",
                       "What the model saw for each object: re-centred crops on grey [B,S,S,3].")

    SETTINGS = {"resolution": "lift3d.resolution", "density_threshold": "lift3d.density_threshold",
                "max_faces": "lift3d.max_faces", "foreground_ratio": "lift3d.foreground_ratio",
                "vertex_colors": "lift3d.vertex_colors", "query_chunk": "lift3d.query_chunk"}

    @classmethod
    def INPUT_TYPES(cls):
        w = settings_widgets(cls.SETTINGS)
        return {
            "required": {
                "lift3d_model": (LIFT3D_MODEL, {"tooltip": "From 'ComboVerse Load Lift3D Model'."}),
                "images": ("IMAGE", {"tooltip": "Object crops, one per object (batch), e.g. the inpainted crops from "
                                                "ComboVerse Inpaint."}),
                "resolution": w["resolution"],
                "density_threshold": w["density_threshold"],
                "max_faces": w["max_faces"],
                "foreground_ratio": w["foreground_ratio"],
                "vertex_colors": w["vertex_colors"],
            },
            "optional": {
                "masks": ("MASK", {"tooltip": "One mask per crop, 1 = object (as ComboVerse Segment/Inpaint give). "
                                              "A LoadImage mask is 1 - alpha: invert it first. Without masks the crops "
                                              "must already show the object centred on grey."}),
                "query_chunk": w["query_chunk"],
            },
        }

    def lift(self, lift3d_model, images, resolution, density_threshold, max_faces, foreground_ratio, vertex_colors,
             masks=None, query_chunk=Lift3DSettings.query_chunk):
        from ..comboverse_ops.lift3d.reconstruct import reconstruct_objects

        settings = Lift3DSettings(resolution=resolution, density_threshold=density_threshold, max_faces=max_faces,
                                  foreground_ratio=foreground_ratio, vertex_colors=vertex_colors,
                                  query_chunk=query_chunk)
        host.use_models([lift3d_model.model], memory_required=1 << 30)  # grid + decoder chunks, roughly
        meshes, cond = reconstruct_objects(lift3d_model.model, images, masks, settings,
                                           callback=host.Progress(images.shape[0]), check=host.check_cancel)
        return (meshes, cond.to(host.intermediate_device()))


def _frame_inputs() -> dict:
    """The widgets both mesh importers share: which way the file's front and up point, and decimation."""
    return {
        "front_axis": (list(AXES), {"default": "+Z", "tooltip": _FRONT_TIP}),
        "up_axis": (list(AXES), {"default": "+Y", "tooltip": _UP_TIP}),
        "max_faces": widget("lift3d.max_faces"),
    }


def _with_frame_preview(new, result):
    """The node's result plus, inside ComfyUI, a preview of the new objects in the pack's frame
    (front view and from the front-right above): a wrong front or up axis shows at once."""
    if not host.in_comfyui():
        return result
    from ..comboverse_ops.meshio.frame_preview import frame_preview

    return {"ui": host.temp_image_ui(frame_preview(new), "frame"), "result": result}


class MeshesFromMESH:
    DESCRIPTION = ("Turns the core MESH of any 3D node (Hunyuan3D, TRELLIS, Load 3D ...) into ComboVerse object "
                   "meshes: each batch entry becomes one object, decimated and moved into the pack's object frame "
                   "(front +Z, up +Y, unit size). Chain several of these nodes to collect one object each. Shows each "
                   "object as InitPose will face it to the camera and from above-right: an object upside down or "
                   "facing away needs another up_axis / front_axis.")
    CATEGORY = "ComboVerse/lift3d"
    FUNCTION = "convert"
    RETURN_TYPES = (MESHES,)
    RETURN_NAMES = ("meshes",)
    OUTPUT_TOOLTIPS = ("The objects (appended to the optional input), for ComboVerse InitPose.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mesh": ("MESH", {"tooltip": "A core MESH (a batch, a padded batch or a list of meshes); each entry "
                                             "is one object, in the order of the objects' boxes. Its vertex colours "
                                             "are read as linear, core's convention."}),
                **_frame_inputs(),
                "name": ("STRING", {"default": "object", "tooltip": "Object name (used in the GLB); entries of a "
                                                                    "batch get _0, _1 ... appended."}),
            },
            "optional": {"meshes": (MESHES, {"tooltip": _APPEND_TIP})},
        }

    def convert(self, mesh, front_axis, up_axis, max_faces, name, meshes=None):
        from ..comboverse_ops.meshio.meshes_in import append_objects, meshes_from_core_mesh

        new = meshes_from_core_mesh(mesh, front=front_axis, up=up_axis, max_faces=max_faces,
                                    name=name.strip() or "object")
        return _with_frame_preview(new, (append_objects(meshes, new),))


class MeshesFromFile:
    DESCRIPTION = ("Loads object meshes from GLB / glTF / OBJ / PLY files (one object per file, its parts merged), "
                   "decimated and moved into the pack's object frame (front +Z, up +Y, unit size).")
    CATEGORY = "ComboVerse/lift3d"
    FUNCTION = "load"
    RETURN_TYPES = (MESHES,)
    RETURN_NAMES = ("meshes",)
    OUTPUT_TOOLTIPS = ("The objects (appended to the optional input), for ComboVerse InitPose.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "paths": ("STRING", {"multiline": True, "default": "",
                                     "tooltip": "One file per line, in the order of the objects' boxes: relative to "
                                                "ComfyUI's input folder (or input/3d), or absolute."}),
                **_frame_inputs(),
            },
            "optional": {"meshes": (MESHES, {"tooltip": _APPEND_TIP})},
        }

    def load(self, paths, front_axis, up_axis, max_faces, meshes=None):
        from ..comboverse_ops.meshio.meshes_in import append_objects, mesh_from_file

        lines = [line.strip() for line in paths.splitlines() if line.strip()]
        if not lines:
            raise ValueError("ComboVerse Meshes From File: paths is empty; expected one mesh file per line")
        node = "ComboVerse Meshes From File"
        new = [mesh_from_file(host.resolve_input_file(line, node), front=front_axis, up=up_axis, max_faces=max_faces)
               for line in lines]
        return _with_frame_preview(new, (append_objects(meshes, new),))

"""ComboVerse ExportMesh: the posed scene as one GLB (one node per object) plus a core MESH."""

from __future__ import annotations

from ..comboverse_ops.types.colorspace import srgb_to_linear
from ..comboverse_ops.meshio.core_mesh import scene_to_mesh_arrays, scene_vertex_colors
from ..comboverse_ops.meshio.glb import write_glb
from .host import SCENE, make_core_mesh, next_output_path, workflow_metadata


class ExportMesh:
    DESCRIPTION = ("Writes the composed scene as one GLB into ComfyUI's output folder: one glTF node per object, "
                   "whose transform is that object's pose, so objects stay separable in Blender; each node's extras "
                   "hold the object's phrase, box and pose, and the file's asset extras the prompt and workflow "
                   "(as core SaveGLB stores them; not with --disable-metadata). Shows the file in the 3D viewer "
                   "and outputs a core MESH for SaveGLB / Preview3D and other 3D nodes.")
    CATEGORY = "ComboVerse/export"
    FUNCTION = "export"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MESH", "STRING")
    RETURN_NAMES = ("mesh", "glb_path")
    OUTPUT_TOOLTIPS = ("All objects merged in world space (core MESH, batch of 1; vertex colours linear, as glTF "
                       "and core SaveGLB expect).",
                       "The written GLB, relative to the output folder (Preview3D's model_file).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scene": (SCENE, {"tooltip": "The composed scene (from InitPose or SSDSRefine)."}),
            "filename_prefix": ("STRING", {"default": "comboverse/scene",
                                           "tooltip": "File name prefix inside the output folder; a counter "
                                                      "is appended, nothing is overwritten."}),
        }, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def export(self, scene, filename_prefix, prompt=None, extra_pnginfo=None):
        path, filename, subfolder = next_output_path(filename_prefix, "glb")
        write_glb(scene, path, workflow_metadata(prompt, extra_pnginfo))
        vertices, faces = scene_to_mesh_arrays(scene)
        mesh = make_core_mesh(vertices, faces, srgb_to_linear(scene_vertex_colors(scene)))  # core MESH: linear
        rel = f"{subfolder}/{filename}" if subfolder else filename
        ui = {"3d": [{"filename": filename, "subfolder": subfolder, "type": "output"}]}
        return {"ui": ui, "result": (mesh, rel)}

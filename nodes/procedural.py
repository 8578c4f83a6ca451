"""ComboVerse ProceduralScene: a scene of coloured primitives with known poses (no models needed)."""

from __future__ import annotations

from ..comboverse_ops.synthetic.procedural import ProceduralSettings, make_procedural_scene
from .host import SCENE


class ProceduralScene:
    DESCRIPTION = ("A scene of 2-5 coloured primitives placed with spatial relations (on top of, beside, in front "
                   "of, partly occluding), with its reference image, per-object masks and prompt. Use it to try "
                   "the pack without model files, or as a known answer when checking a workflow.")
    CATEGORY = "ComboVerse/testing"
    FUNCTION = "make"
    RETURN_TYPES = (SCENE, "IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("scene", "reference_image", "object_masks", "prompt")
    OUTPUT_TOOLTIPS = ("The scene with its true poses and reference camera.",
                       "What the reference camera sees, [1,H,W,3].",
                       "Visible pixels of each object, one mask per object [N,H,W].",
                       "The spatial relations as one sentence.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                             "tooltip": "The same seed gives the same scene."}),
            "objects": ("INT", {"default": 3, "min": 2, "max": 5, "tooltip": "Number of objects."}),
            "image_size": ("INT", {"default": 256, "min": 64, "max": 1024, "step": 8,
                                   "tooltip": "Side of the square reference image in pixels."}),
        }}

    def make(self, seed, objects, image_size):
        settings = ProceduralSettings(min_objects=objects, max_objects=objects, image_size=image_size)
        proc = make_procedural_scene(seed, settings)
        ref = proc.observe()
        return (proc.scene, ref.image[None].contiguous(), ref.masks.contiguous(), proc.prompt)

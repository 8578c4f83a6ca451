"""ComboVerse Inpaint (+ Prepare / Finish for other inpainting workflows), METHOD.md step 2."""

from __future__ import annotations

from ..comboverse_ops.decompose.inpaint import InpaintSettings
from . import host
from .host import INPAINT_MODEL, LAYOUT, SAM_MODEL
from .segment import _RECENTER_INPUTS, RECENTER_SETTINGS, recenter_settings, single_image
from .widgets import settings_widgets, widget

_SEED = widget("inpaint.seed")
_RESOLUTION = widget("inpaint.resolution")
_RESEGMENT_INPUT = widget("inpaint.resegment")
_SAM_INPUT = (SAM_MODEL, {"tooltip": "Optional, from ComboVerse Load SAM: re-segments completed objects."})
_settings = InpaintSettings


class Inpaint:
    DESCRIPTION = ("Completes the hidden parts of occluded objects (METHOD.md step 2): per object, random noise "
                   "outside its mask, an inpaint mask of 'inside its box and not the object', SD inpainting with "
                   "'a complete 3D model of <phrase>', then the completed object is cut out and re-centred. "
                   "Objects nothing occludes pass through untouched.")
    CATEGORY = "ComboVerse/stage1"
    FUNCTION = "inpaint"
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("crops", "crop_masks", "inpaint_inputs", "inpaint_masks", "completed")
    OUTPUT_TOOLTIPS = ("Completed objects re-centred for image-to-3D, [N,S,S,3] (Lift3D's input).",
                       "Their coverage in the crops, [N,S,S].",
                       "What the inpainter saw: each object's window with noise outside the object, [N,R,R,3].",
                       "The inpaint masks (box and not object; empty for objects that pass through), [N,R,R].",
                       "The windows after inpainting, [N,R,R,3].")

    SETTINGS = {"seed": "inpaint.seed", "steps": "inpaint.steps", "guidance": "inpaint.guidance_scale",
                "prompt": "inpaint.prompt", "use_phrases": "inpaint.use_phrases", "resolution": "inpaint.resolution",
                "resegment": "inpaint.resegment", **RECENTER_SETTINGS, "negative_prompt": "inpaint.negative_prompt"}

    @classmethod
    def INPUT_TYPES(cls):
        w = settings_widgets(cls.SETTINGS)
        return {
            "required": {
                "inpaint_model": (INPAINT_MODEL, {"tooltip": "From ComboVerse Load Inpaint Model."}),
                "image": ("IMAGE", {"tooltip": "The picture that was segmented (one image)."}),
                "layout": (LAYOUT, {"tooltip": "Segment's layout: boxes, phrases and visible masks."}),
                "seed": _SEED,
                "steps": w["steps"],
                "guidance": w["guidance"],
                "prompt": w["prompt"],
                "use_phrases": w["use_phrases"],
                "resolution": _RESOLUTION,
                "resegment": _RESEGMENT_INPUT,
                **_RECENTER_INPUTS,
            },
            "optional": {
                "sam": _SAM_INPUT,
                "negative_prompt": w["negative_prompt"],
            },
        }

    def inpaint(self, inpaint_model, image, layout, seed, steps, guidance, prompt, use_phrases, resolution,
                resegment, crop_size, foreground_ratio, background, sam=None, negative_prompt=""):
        from ..comboverse_ops.decompose.inpaint import inpaint_objects

        img = single_image(image, "ComboVerse Inpaint")
        settings = _settings(prompt=prompt, use_phrases=bool(use_phrases), negative_prompt=negative_prompt or "",
                             steps=int(steps), guidance_scale=float(guidance), seed=int(seed),
                             resolution=int(resolution), resegment=resegment)
        host.use_models([inpaint_model.modules()] + ([sam.modules()] if sam is not None else []))
        result = inpaint_objects(img, layout, inpaint_model, settings,
                                 recenter_settings(crop_size, foreground_ratio, background), sam=sam,
                                 callback=host.Progress(settings.steps * max(1, len(layout))))
        out = host.intermediate_device()
        w = result.windows
        return (result.crops.to(out), result.crop_masks.to(out), w.images.to(out), w.inpaint_masks.to(out),
                result.completed.to(out))


class InpaintPrepare:
    DESCRIPTION = ("The inputs of METHOD.md's inpainting step for your own inpainting workflow: per object, a "
                   "square window with noise outside the object and the inpaint mask 'inside its box and not the "
                   "object' (empty for objects nothing occludes). Inpaint the images with any model, then give the "
                   "result to ComboVerse Inpaint Finish.")
    CATEGORY = "ComboVerse/stage1"
    FUNCTION = "prepare"
    RETURN_TYPES = ("IMAGE", "MASK", "MASK", "STRING")
    RETURN_NAMES = ("images", "inpaint_masks", "object_masks", "prompts")
    OUTPUT_TOOLTIPS = ("Noisy object windows, [N,R,R,3]: inpaint these.",
                       "Where to inpaint, [N,R,R].",
                       "The visible objects in the windows, [N,R,R] (for Finish).",
                       "The per-object prompts, one per line.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The picture that was segmented (one image)."}),
            "layout": (LAYOUT, {"tooltip": "Segment's layout: boxes, phrases and visible masks."}),
            "seed": _SEED,
            "resolution": _RESOLUTION,
            "prompt": widget("inpaint.prompt", tooltip="Prompt; each object's phrase is appended as 'of <phrase>'."),
        }}

    def prepare(self, image, layout, seed, resolution, prompt):
        from ..comboverse_ops.decompose.inpaint import object_prompt, prepare_inpaint_windows

        settings = _settings(seed=int(seed), resolution=int(resolution), prompt=prompt)
        w = prepare_inpaint_windows(single_image(image, "ComboVerse Inpaint Prepare"), layout, settings)
        prompts = "\n".join(object_prompt(settings, p) for p in layout.phrases)
        out = host.intermediate_device()
        return (w.images.to(out), w.inpaint_masks.to(out), w.object_masks.to(out), prompts)


class InpaintFinish:
    DESCRIPTION = ("Cuts completed objects out of inpainted windows (from any inpainting workflow fed by ComboVerse "
                   "Inpaint Prepare) and re-centres them for image-to-3D. Pixels outside the inpaint masks are "
                   "never added to an object.")
    CATEGORY = "ComboVerse/stage1"
    FUNCTION = "finish"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("crops", "crop_masks")
    OUTPUT_TOOLTIPS = ("Completed objects re-centred for image-to-3D, [N,S,S,3].",
                       "Their coverage in the crops, [N,S,S].")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The inpainted windows, [N,R,R,3], same size and order as Prepare's."}),
                "object_masks": ("MASK", {"tooltip": "Prepare's object_masks."}),
                "inpaint_masks": ("MASK", {"tooltip": "Prepare's inpaint_masks."}),
                "resegment": _RESEGMENT_INPUT,
                **_RECENTER_INPUTS,
            },
            "optional": {"sam": _SAM_INPUT},
        }

    def finish(self, images, object_masks, inpaint_masks, resegment, crop_size, foreground_ratio, background,
               sam=None):
        from ..comboverse_ops.decompose.inpaint import finish_objects
        from ..comboverse_ops.types.layout import boxes_from_masks

        # The box of each object in its window: the inpaint mask is "box and not object", so the two together
        # cover the box (as far as pixels show it).
        boxes = boxes_from_masks(((object_masks > 0.5) | (inpaint_masks > 0.5)).float())
        if sam is not None:
            host.use_models([sam.modules()])
        crops, crop_masks, _ = finish_objects(images[..., :3], object_masks, inpaint_masks, boxes,
                                              _settings(resegment=resegment),
                                              recenter_settings(crop_size, foreground_ratio, background), sam=sam)
        out = host.intermediate_device()
        return (crops.to(out), crop_masks.to(out))

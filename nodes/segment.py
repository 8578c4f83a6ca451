"""ComboVerse Segment: objects of one image as re-centred crops, masks and a layout (METHOD.md step 1)."""

from __future__ import annotations

from ..comboverse_ops.decompose.crops import RecenterSettings
from . import host
from .host import LAYOUT, SAM_MODEL
from .widgets import settings_widgets

BOX_TYPES = "BOUNDING_BOX,BOUNDING_BOXES"  # core's box types; ComfyUI accepts either on this socket

RECENTER_SETTINGS = {"crop_size": "recenter.size", "foreground_ratio": "recenter.foreground_ratio",
                     "background": "recenter.background"}
_RECENTER_INPUTS = settings_widgets(RECENTER_SETTINGS)


def recenter_settings(crop_size, foreground_ratio, background):
    return RecenterSettings(size=int(crop_size), foreground_ratio=float(foreground_ratio), background=background)


def single_image(image, node: str):
    """The one ``[H, W, C]`` image of an ``IMAGE`` batch of one."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"{node}: expected one image ([1, H, W, C]), got {tuple(image.shape)}; split the batch "
                         "first (e.g. with ImageFromBatch) and run one image per workflow")
    return image[0]


class Segment:
    DESCRIPTION = ("Splits one picture into its objects: SAM prompted with one box per object (plus negative points "
                   "at the other objects' boxes), or points, or automatic proposals when nothing is given; or "
                   "masks from any other node instead of SAM. Outputs each object re-centred on a square canvas for "
                   "image-to-3D, the masks, and the layout (boxes, phrases, masks) for InitPose.")
    CATEGORY = "ComboVerse/stage1"
    FUNCTION = "segment"
    RETURN_TYPES = ("IMAGE", "MASK", LAYOUT, "MASK")
    RETURN_NAMES = ("crops", "crop_masks", "layout", "masks")
    OUTPUT_TOOLTIPS = ("One re-centred crop per object, [N,S,S,3], in the order of the boxes.",
                       "The objects' coverage in their crops, [N,S,S].",
                       "Boxes, phrases and visible masks in source-image pixels, for Inpaint and InitPose.",
                       "The visible mask of each object in the source image, [N,H,W].")

    SETTINGS = {"negative_points": "segment.negative_points", "auto_objects": "segment.auto_objects",
                **RECENTER_SETTINGS}

    @classmethod
    def INPUT_TYPES(cls):
        w = settings_widgets(cls.SETTINGS)
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The picture with several objects (one image). RGBA images: the "
                                               "alpha channel limits the masks to opaque pixels."}),
                "negative_points": w["negative_points"],
                "auto_objects": w["auto_objects"],
                **_RECENTER_INPUTS,
            },
            "optional": {
                "sam": (SAM_MODEL, {"tooltip": "From ComboVerse Load SAM. Not needed when masks are given."}),
                "boxes": (BOX_TYPES, {"forceInput": True,
                                      "tooltip": "One box per object from a detector or box editor (core "
                                                 "BOUNDING_BOX or BOUNDING_BOXES: x, y, width, height in pixels; "
                                                 "one list per image, of which the first is used). Boxes from "
                                                 "ComboVerse Detect bring their phrases along."}),
                "boxes_text": ("STRING", {"multiline": True, "default": "",
                                          "tooltip": "Boxes as JSON when the boxes input is not connected: "
                                                     "[[x0, y0, x1, y1], ...] or [{\"x\":..,\"y\":..,\"width\":..,"
                                                     "\"height\":..}, ...], in pixels."}),
                "points": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "Optional clicks on objects, JSON [{\"x\":..,\"y\":..}, ...]. With "
                                                 "boxes, each point helps the box it falls in; without boxes, "
                                                 "each point is one object."}),
                "phrases": ("STRING", {"multiline": True, "default": "",
                                       "tooltip": "Optional object names in box order, one per line (\"a teddy "
                                                  "bear\"); Inpaint adds them to its prompt. Empty: the boxes' "
                                                  "own labels (ComboVerse Detect). Core SAM3 detection orders its "
                                                  "boxes by score, not by object."}),
                "masks": ("MASK", {"tooltip": "Object masks from any other node instead of SAM, [N,H,W] at the "
                                              "image's size, 1 = object. Core LoadImage's mask is 1 where the "
                                              "picture is transparent: invert it first."}),
            },
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},  # to name the node that found no box
        }

    def segment(self, image, negative_points, auto_objects, crop_size, foreground_ratio, background, sam=None,
                boxes=None, boxes_text="", points="", phrases="", masks=None, prompt=None, unique_id=None):
        from ..comboverse_ops.types.layout import parse_box_input, parse_boxes, parse_points
        from ..comboverse_ops.decompose.segment import SegmentSettings, segment_image

        img = single_image(image, "ComboVerse Segment")
        size = tuple(img.shape[:2])
        parsed = None
        if boxes is not None:
            parsed, labels = parse_box_input(boxes, size, what="Segment boxes",
                                             source=host.upstream_node(prompt, unique_id, "boxes"))
            if labels is not None and not (phrases or "").strip():
                phrases = list(labels)
        elif boxes_text and boxes_text.strip():
            parsed = parse_boxes(boxes_text, size, what="Segment boxes")
        point_list = parse_points(points or "", what="Segment points")
        if sam is not None and masks is None:
            host.use_models([sam.modules()])
        seg = segment_image(img, sam, boxes=parsed, points=point_list if point_list.numel() else None,
                            phrases=phrases, masks=masks,
                            settings=SegmentSettings(negative_points=bool(negative_points),
                                                     auto_objects=int(auto_objects)),
                            recenter=recenter_settings(crop_size, foreground_ratio, background))
        out = host.intermediate_device()
        layout = seg.layout
        result = (seg.crops.to(out), seg.crop_masks.to(out), layout, layout.masks.to(out))
        ui = host.mask_overlay_ui(img, layout.masks)  # the masks over the picture, shown after a run
        return {"ui": ui, "result": result} if ui is not None else result

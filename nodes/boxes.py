"""ComboVerse Boxes: boxes drawn on the picture in the graph (web/comboverse_boxes.js), named."""

from __future__ import annotations

import json

from .segment import single_image


class Boxes:
    DESCRIPTION = ("Draw one box per object on the picture, right in the graph: drag on the picture to draw a box, "
                   "drag a box to move it, drag its corner to resize it, Delete (or its x) to remove it, and type "
                   "each object's phrase in the list under the picture. Outputs core BOUNDING_BOX (each box "
                   "carries its phrase as 'label') for ComboVerse Segment, whose masks are drawn over the picture "
                   "after a run.")
    CATEGORY = "ComboVerse/stage1"
    FUNCTION = "boxes"
    RETURN_TYPES = ("BOUNDING_BOX", "STRING")
    RETURN_NAMES = ("boxes", "phrases")
    OUTPUT_TOOLTIPS = ("The drawn boxes, [[{x, y, width, height, label}, ...]] in pixels of the picture (core "
                       "BOUNDING_BOX, one list for the one image), in drawing order.",
                       "The phrases, one per line, in the boxes' order.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The picture to draw on (one image; the one given to Segment). The "
                                           "editor shows it once a Load Image (or any node that previews its "
                                           "picture) is connected."}),
            "boxes": ("STRING", {"multiline": True, "default": "[]",
                                 "tooltip": "The boxes as JSON, written by the editor above: [{\"x\":..,\"y\":..,"
                                            "\"width\":..,\"height\":..,\"label\":\"a teddy bear\"}, ...] in "
                                            "pixels. You may also type them here."}),
        }}

    def boxes(self, image, boxes):
        from ..comboverse_ops.types.layout import parse_box_input, to_bounding_boxes

        img = single_image(image, "ComboVerse Boxes")
        try:
            value = json.loads(boxes) if (boxes or "").strip() else []
        except json.JSONDecodeError as e:
            raise ValueError(f"ComboVerse Boxes: boxes is not valid JSON ({e.msg} at character {e.pos}); draw "
                             "the boxes on the picture or fix the text") from None
        if not value:
            raise ValueError("ComboVerse Boxes: no box drawn; drag out one box per object on the picture")
        if isinstance(value, list):  # boxes drawn without a phrase get an empty one
            value = [{**b, "label": str(b.get("label") or "")} if isinstance(b, dict) else b for b in value]
        parsed, labels = parse_box_input(value, tuple(img.shape[:2]), what="ComboVerse Boxes")
        labels = labels or ("",) * parsed.shape[0]
        return (to_bounding_boxes(parsed, labels=labels), "\n".join(labels))

"""ComboVerse Load Detector / ComboVerse Detect: boxes from phrases with an open-vocabulary detector."""

from __future__ import annotations

from . import host
from .segment import single_image
from .widgets import widget

DETECTOR = "COMBOVERSE_DETECTOR"  # comboverse_ops.decompose.detect.Detector
DETECTOR_FOLDER = "detectors"  # models/detectors/<name>/: save_pretrained folders (OWLv2, OWL-ViT)
_LOADER = "ComboVerse Load Detector"
_WHAT = "an OWLv2 folder as saved by save_pretrained (e.g. owlv2-base-patch16-ensemble)"


class LoadDetector:
    DESCRIPTION = ("Loads an open-vocabulary detector (OWLv2 or OWL-ViT, e.g. owlv2-base-patch16-ensemble) from a "
                   "folder in models/detectors, as saved by transformers' save_pretrained, offline. fp16 on the "
                   "GPU, fp32 on the CPU; loaded once and shared. For ComboVerse Detect.")
    CATEGORY = "ComboVerse/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (DETECTOR,)
    RETURN_NAMES = ("detector",)
    OUTPUT_TOOLTIPS = ("The detector, for ComboVerse Detect.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_folder": (host.model_folder_choices(DETECTOR_FOLDER),
                             {"tooltip": "A subfolder of models/detectors holding config.json, model.safetensors "
                                         "and the processor and tokenizer files of an OWLv2 or OWL-ViT model."}),
        }}

    def load(self, model_folder):
        from ..comboverse_ops.decompose.detect import load_detector

        folder = host.resolve_model_folder(DETECTOR_FOLDER, model_folder, _LOADER, _WHAT)
        return (host.load_from_folder(load_detector, folder, _LOADER),)


class Detect:
    DESCRIPTION = ("Finds one box per phrase ('a teddy bear', 'a chair') in the picture with an open-vocabulary "
                   "detector, each phrase its own box. Outputs core BOUNDING_BOX (each box carries its phrase as "
                   "'label' and its 'score'), for ComboVerse Segment's boxes: the phrases come along.")
    CATEGORY = "ComboVerse/stage1"
    FUNCTION = "detect"
    RETURN_TYPES = ("BOUNDING_BOX", "STRING")
    RETURN_NAMES = ("boxes", "phrases")
    OUTPUT_TOOLTIPS = ("One box per phrase, in the phrases' order: [[{x, y, width, height, score, label}, ...]] "
                       "in pixels (core BOUNDING_BOX, one list for the one image).",
                       "The phrases, one per line, in the boxes' order.")

    SETTINGS = {"threshold": "detect.threshold"}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "detector": (DETECTOR, {"tooltip": "From ComboVerse Load Detector."}),
            "image": ("IMAGE", {"tooltip": "The picture (one image; the one given to Segment)."}),
            "phrases": ("STRING", {"multiline": True, "default": "",
                                   "tooltip": "One object per line, e.g. 'a teddy bear' and 'a chair'. Each gets "
                                              "its own box."}),
            "threshold": widget("detect.threshold"),
        }}

    def detect(self, detector, image, phrases, threshold):
        from ..comboverse_ops.decompose.detect import DetectSettings, detect_phrases
        from ..comboverse_ops.types.layout import to_bounding_boxes

        img = single_image(image, "ComboVerse Detect")
        names = [line.strip() for line in (phrases or "").splitlines() if line.strip()]
        if not names:
            raise ValueError("ComboVerse Detect: phrases is empty; give one object per line, e.g. 'a teddy bear'")
        device = host.use_models([detector.modules()])
        found = detect_phrases(detector, img.to(device), names, DetectSettings(threshold=float(threshold)),
                               what="ComboVerse Detect")
        return (to_bounding_boxes(found.boxes, found.scores, found.phrases), "\n".join(found.phrases))

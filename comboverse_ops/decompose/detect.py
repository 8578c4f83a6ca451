"""Boxes from text: an open-vocabulary detector (OWLv2 or OWL-ViT through transformers), offline.

The model folder is what ``save_pretrained`` writes for the model and its processor
(``config.json`` with ``model_type`` ``"owlv2"`` or ``"owlvit"``, ``model.safetensors``, the
image processor's and the CLIP tokenizer's files), e.g. ``models/detectors/owlv2-base-patch16-ensemble``.
Nothing is ever downloaded (``local_files_only=True``).

Each phrase is one object: the detector scores every image patch's box against every phrase,
and the phrases get distinct boxes, greedily by score (the highest phrase-box score first, then
the best remaining pair, ...), so two phrases never share a box. A phrase whose box scores below
the threshold is an error naming it, never a silent guess.

OWL-ViT's boxes are relative to the image as resized to the network's square input; OWLv2 pads
the image to a square first (bottom and right), so its boxes are relative to that square.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.cache import MODEL_CACHE, ModelCache, ModelKey
from ..settings import setting, settings_class

__all__ = ["DetectSettings", "Detector", "Detection", "check_detector_folder", "load_detector", "detect_phrases"]

log = logging.getLogger(__name__)

MODEL_TYPES = ("owlv2", "owlvit")  # transformers' open-vocabulary detectors with per-patch boxes
_EXAMPLE = "owlv2-base-patch16-ensemble"


@settings_class
@dataclass(frozen=True)
class DetectSettings:
    """How boxes are picked for phrases."""

    # transformers' OWL post-processing default
    threshold: float = setting(0.1, "Lowest score a phrase's box may have; below it the run stops and names the "
                                    "phrase (lower it, or reword the phrase).", lo=0.0, hi=1.0, step=0.01,
                               source="upstream")


@dataclass(frozen=True)
class Detection:
    """One box per phrase, in the phrases' order.

    Attributes:
        boxes: ``[N, 4]`` float32 ``(x0, y0, x1, y1)`` source-image pixels (:mod:`.layout`).
        scores: ``[N]`` float32 in [0, 1], each box's score for its phrase.
        phrases: the ``N`` phrases.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    phrases: tuple[str, ...]


class Detector:
    """A loaded detector: the network, its processor, and where it came from."""

    def __init__(self, module: torch.nn.Module, processor, model_type: str, folder: Path):
        self.module, self.processor, self.model_type, self.folder = module, processor, model_type, folder

    def modules(self) -> torch.nn.Module:
        """The ``nn.Module`` (for ComfyUI's memory manager)."""
        return self.module

    def to(self, device) -> Detector:
        self.module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device


def _hint(folder: Path) -> str:
    return (f"put an OWLv2 (or OWL-ViT) folder as saved by transformers' save_pretrained (config.json, "
            f"model.safetensors, preprocessor and tokenizer files), e.g. {_EXAMPLE}, into {folder.parent}")


def check_detector_folder(folder: str | os.PathLike) -> str:
    """Raise (as :func:`load_detector` would) unless ``folder`` holds an OWLv2/OWL-ViT model;
    cheap (reads config.json only). Returns the model type."""
    import json

    folder = Path(folder)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file, expected a model folder"
        raise FileNotFoundError(f"detector: {folder} {what}; {_hint(folder)}")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise FileNotFoundError(f"detector: {folder} has no config.json (found {found or 'nothing'}); {_hint(folder)}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"detector: {cfg_path} is not readable JSON ({e}); {_hint(folder)}") from e
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if model_type not in MODEL_TYPES:
        raise ValueError(f"detector: {folder} holds a model of type {model_type!r}, expected one of {MODEL_TYPES} "
                         f"(OWLv2 / OWL-ViT); {_hint(folder)}")
    return model_type


def load_detector(folder: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32,
                  cache: ModelCache | None = MODEL_CACHE) -> Detector:
    """Load an OWLv2 / OWL-ViT folder offline, through the shared cache (keyed by the folder).

    Raises:
        FileNotFoundError: the folder, its config or its weights / processor files are missing.
        ValueError: the folder holds another kind of model (names what was found).
    """
    folder = Path(folder)
    model_type = check_detector_folder(folder)

    def load() -> Detector:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        try:
            module = AutoModelForZeroShotObjectDetection.from_pretrained(str(folder), local_files_only=True,
                                                                         dtype=dtype)
            processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        except OSError as e:  # no weights, or no processor / tokenizer files
            raise FileNotFoundError(f"detector: could not load {folder} ({e}); {_hint(folder)}") from e
        module.eval().requires_grad_(False).to(device)
        return Detector(module, processor, model_type, folder.resolve())

    if cache is None:
        return load()
    return cache.get(ModelKey.for_file("detector", folder, dtype, device), load)


def _distinct_best(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy one-to-one match of phrases to patches: ``scores`` ``[P, N]`` (patches x phrases)
    -> ``([N] score, [N] patch index)``; needs ``P >= N``."""
    p, n = scores.shape
    if p < n:
        raise ValueError(f"detect: {n} phrases but the detector proposes only {p} boxes")
    s = scores.clone()
    best, index = torch.zeros(n), torch.zeros(n, dtype=torch.long)
    for _ in range(n):
        flat = int(s.argmax())
        i, j = divmod(flat, n)
        best[j], index[j] = scores[i, j], i
        s[i, :] = -1.0  # patch taken
        s[:, j] = -1.0  # phrase placed
    return best.to(scores.device), index.to(scores.device)


@torch.no_grad()
def detect_phrases(detector: Detector, image_hwc: torch.Tensor, phrases, settings: DetectSettings = DetectSettings(),
                   *, what: str = "detect") -> Detection:
    """The best box for each phrase in one picture.

    Args:
        detector: from :func:`load_detector`, on the device it should run on.
        image_hwc: ``[H, W, C]`` float in [0, 1] (C = 3, or 4: alpha ignored).
        phrases: one text per object ("a red cube"), at least one.
    Raises:
        ValueError: no phrase, or a phrase whose best box scores below ``settings.threshold``
            (names the phrase, its best score and the fix).
    """
    phrases = tuple(str(p).strip() for p in phrases)
    if not phrases or not all(phrases):
        raise ValueError(f"{what}: expected one non-empty phrase per object, got {list(phrases)}")
    if image_hwc.ndim != 3 or image_hwc.shape[-1] not in (3, 4):
        raise ValueError(f"{what}: expected an image [H, W, 3] in [0, 1], got {tuple(image_hwc.shape)}")
    h, w = image_hwc.shape[:2]
    pixels = (image_hwc[..., :3].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    max_len = detector.module.config.text_config.max_position_embeddings
    inputs = detector.processor(text=[list(phrases)], images=[pixels], return_tensors="pt", padding="max_length",
                                truncation=True, max_length=max_len)
    dtype = next(detector.module.parameters()).dtype
    inputs = {k: (v.to(detector.device, dtype) if v.is_floating_point() else v.to(detector.device))
              for k, v in inputs.items()}
    out = detector.module(**inputs)
    best, index = _distinct_best(out.logits[0].float().sigmoid())
    cx, cy, bw, bh = out.pred_boxes[0].float()[index].unbind(-1)  # relative (centre, size)
    sx, sy = (max(h, w), max(h, w)) if detector.model_type == "owlv2" else (w, h)  # OWLv2 pads to a square
    boxes = torch.stack([(cx - bw / 2) * sx, (cy - bh / 2) * sy, (cx + bw / 2) * sx, (cy + bh / 2) * sy], -1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    for phrase, score, box in zip(phrases, best.tolist(), boxes.tolist()):
        if score < settings.threshold:
            raise ValueError(f"{what}: no object matching {phrase!r} was found (best score {score:.3f} < threshold "
                             f"{settings.threshold}); reword the phrase, lower the threshold, or draw its box")
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            raise ValueError(f"{what}: the best box for {phrase!r} is smaller than a pixel ({box}); reword the "
                             "phrase or draw its box")
        log.info("%s: %r -> box %s (score %.3f)", what, phrase, [round(v, 1) for v in box], score)
    return Detection(boxes.cpu(), best.cpu(), phrases)

"""What ``comboverse run`` is asked to do, checked before any model runs.

:class:`PipelineSettings` (the run's files and switches plus every stage's settings tree,
:class:`~.presets.StageSettings`), the old flat setting names, finding each stage's model file
in the models folder (:mod:`.models.folders`), and :func:`check_inputs`, which opens every input
of a run so a bad one is reported in milliseconds. The stages themselves: :mod:`.pipeline`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..types.images import load_image_hwc
from ..models.folders import (CHECKPOINTS_FOLDER, CLIP_TOKENIZER_FOLDER, SAM_FOLDER, TRIPOSR_FOLDER,
                             default_models_dir, weight_files)
from .presets import StageSettings, apply_values

__all__ = ["PipelineSettings", "KEEP_MODELS", "RESIDENT_MIN_GIB", "models_stay", "PipelineInputs",
           "LEGACY_NAMES", "with_settings", "models_root", "find_models", "pipeline_device", "check_inputs",
           "output_paths", "tokenizer_dirs"]


# Where the CLI's models wait between stages and between runs (``comboverse batch``, a second
# ``run_pipeline`` in one process):
# - "keep": where they compute, once loaded. On an H100 no transfers: 13.2 s instead of 19.7 s
#   warm; all five models at once peak at 14.9 GiB allocated, 19.6 GiB in PyTorch's pool
#   (docs/pipeline_benchmark.md).
# - "offload": each stage's models leave when the stage ends. From a GPU they go to CPU memory
#   (the largest stage alone: 8.6 GiB). On a CPU run they leave memory and are read again next
#   run: all five in fp32 with SSDS outgrew 24 GB of RAM.
# - "auto": keep on a GPU of at least RESIDENT_MIN_GIB (room for that pool and the desktop),
#   offload on smaller GPUs and on CPU runs. On a CPU, reading a model again costs seconds next to
#   its minutes of compute, and RAM is what runs out.
KEEP_MODELS = ("auto", "keep", "offload")
RESIDENT_MIN_GIB = 30.0


def models_stay(keep_models: str, device: torch.device) -> bool:
    """Whether a run's models stay where they compute between stages and runs (:data:`KEEP_MODELS`)."""
    if keep_models in ("keep", "offload"):
        return keep_models == "keep"
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    return total >= RESIDENT_MIN_GIB


@dataclass(frozen=True)
class PipelineSettings:
    """Everything ``comboverse run`` can set: the run's files and switches, and every stage's
    settings (``stages``: the dataclasses the nodes' widgets are generated from)."""

    models_dir: str | None = None  # default $COMBOVERSE_MODELS_DIR or ./models
    sam: str | None = None
    inpaint: str | None = None
    inpaint_config: str | None = None  # diffusers-format config folder for a single-file inpainting model
    no_inpaint: bool = False
    lift3d: str | None = None
    guidance: str | None = None
    guidance_config: str | None = None
    prompt: str = ""  # the scene's relation text: SSDSSettings.prompt
    phrases: str | None = None  # one per box (JSON list / lines / ';'-separated); default none
    detect: str | None = None  # OWLv2 save_pretrained folder: boxes from the phrases when no boxes are given
    device: str | None = None  # default cuda if available else cpu
    seed: int = 0  # every stage's seed (Inpaint's, SSDS's)
    depth: str | None = None  # Depth Anything V2 save_pretrained folder (--depth DIR); None: no depth map
    preview_size: int = 256  # longer side of the preview PNGs
    keep_models: str = "auto"  # KEEP_MODELS: where models wait between stages and runs (models_stay)
    stages: StageSettings = field(default_factory=StageSettings)

    def resolved(self) -> StageSettings:
        """The stage settings the run uses: ``stages`` with the run's seed and prompt in
        (Inpaint's and SSDS's seed, SSDS's prompt), as a workflow's widgets would hold them."""
        st = self.stages
        return replace(st, inpaint=replace(st.inpaint, seed=self.seed),
                       ssds=replace(st.ssds, seed=self.seed, prompt=self.prompt))

    def stage(self, name: str):
        """Stage ``name``'s settings as the run uses them (:meth:`resolved`)."""
        return getattr(self.resolved(), name)


# Flat names of PipelineSettings before the stage tree (batch manifests, scripts): each a dotted path now.
LEGACY_NAMES = {
    "detect_threshold": "detect.threshold",
    "inpaint_steps": "inpaint.steps",
    "inpaint_resolution": "inpaint.resolution",
    "mc_resolution": "lift3d.resolution",
    "density_threshold": "lift3d.density_threshold",
    "max_faces": "lift3d.max_faces",
    "fov_deg": "camera.fov_deg",
    "elevation_deg": "camera.elevation_deg",
    "refine_steps": "refine.steps",
    "refine_resolution": "refine.resolution",
    "ssds_weight": "refine.weights.guidance",
    "ssds_views": "ssds.views",
    "ssds_resolution": "ssds.render_resolution",
}


def with_settings(settings: PipelineSettings, values: dict[str, object], what: str = "settings") -> PipelineSettings:
    """``settings`` with ``values`` set: run fields by name, stage settings by dotted path
    (``refine.steps``) or by an old flat name (:data:`LEGACY_NAMES`)."""
    run = {f for f in PipelineSettings.__dataclass_fields__ if f != "stages"}
    flat = {k: v for k, v in values.items() if k in run}
    staged = {LEGACY_NAMES.get(k, k): v for k, v in values.items() if k not in run}
    return replace(settings, **flat, stages=apply_values(settings.stages, staged, what=what))


def models_root(settings: PipelineSettings) -> Path:
    return default_models_dir(settings.models_dir)


def _inpainting_files(folder: Path) -> list[Path]:
    """Weight files in ``checkpoints/`` whose name says inpainting (first), then the rest."""
    return sorted(weight_files(folder), key=lambda p: "inpaint" not in p.name.lower())


def find_models(settings: PipelineSettings) -> dict[str, Path | None]:
    """The model file of every stage; a missing one raises ``FileNotFoundError`` naming the folder.

    Returns ``{"sam", "inpaint", "lift3d", "guidance"}`` (``inpaint`` None with ``no_inpaint``,
    ``guidance`` None unless given).
    """
    root = models_root(settings)
    found: dict[str, Path | None] = {}

    def given(path: str | None, what: str, flag: str, hint: str) -> Path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{what}: {flag} {p} does not exist; {hint}")
        return p

    sams, ckpts, tsr = root / SAM_FOLDER, root / CHECKPOINTS_FOLDER, root / TRIPOSR_FOLDER
    sam_hint = (f"put an official SAM checkpoint (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or "
                f"sam_vit_h_4b8939.pth) in the folder {sams}, or give it with --sam FILE")
    if settings.sam:
        found["sam"] = given(settings.sam, "Segment (SAM)", "--sam", sam_hint)
    else:
        found["sam"] = next(iter(weight_files(sams)), None)
        if found["sam"] is None:
            raise FileNotFoundError(f"Segment (SAM): no SAM checkpoint in {sams}; {sam_hint}")
    inpaint_hint = (f"put an SD inpainting checkpoint (512-inpainting-ema.safetensors or sd-v1-5-inpainting.ckpt) "
                    f"in the folder {ckpts}, give it with --inpaint FILE, or skip the stage with --no-inpaint")
    if settings.no_inpaint:
        found["inpaint"] = None
    elif settings.inpaint:
        found["inpaint"] = given(settings.inpaint, "Inpaint (SD inpainting)", "--inpaint", inpaint_hint)
    else:
        files = _inpainting_files(ckpts)
        if not files:
            raise FileNotFoundError(f"Inpaint (SD inpainting): no checkpoint in {ckpts}; {inpaint_hint}")
        found["inpaint"] = files[0]
    lift_hint = (f"put TripoSR's model.ckpt (and optionally its config.yaml) in the folder {tsr}, or give it with "
                 "--lift3d FILE")
    if settings.lift3d:
        found["lift3d"] = given(settings.lift3d, "Lift3D (TripoSR)", "--lift3d", lift_hint)
    else:
        p = tsr / "model.ckpt"
        p = p if p.is_file() else next(iter(weight_files(tsr)), None)
        if p is None:
            raise FileNotFoundError(f"Lift3D (TripoSR): no model.ckpt in {tsr}; {lift_hint}")
        found["lift3d"] = p
    found["guidance"] = given(settings.guidance, "SSDS guidance", "--guidance",
                              f"put an SD 1.x/2.x text-to-image checkpoint in {ckpts} and give "
                              "it with --guidance FILE") if settings.guidance else None
    return found


def tokenizer_dirs(root: Path) -> list[Path]:
    return [root / CLIP_TOKENIZER_FOLDER]


@dataclass(frozen=True)
class PipelineInputs:
    """What :func:`check_inputs` found: the output path, every stage's model file, the picture
    (``[H, W, C]`` float32 in [0, 1]), the boxes (``[N, 4]`` float32 pixels) and the phrases."""

    out: Path
    files: dict
    image: torch.Tensor
    boxes: torch.Tensor | None  # None: Detect finds them from the phrases
    phrases: tuple


def output_paths(out: Path, previews: int = 2) -> dict[str, Path]:
    """What a run writes for ``--out scene.glb``, in commit order (the report last)."""
    stem = out.with_suffix("")
    paths = {"glb": out, "preview_reference": Path(f"{stem}_reference.png")}
    paths.update({f"preview_novel_{k}": Path(f"{stem}_novel_{k}.png") for k in range(1, previews + 1)})
    paths["report"] = Path(f"{stem}_report.json")
    return paths


def pipeline_device(settings: PipelineSettings) -> torch.device:
    """The torch device of ``settings.device`` (default cuda if available, else cpu); a name torch
    does not know, or a device this machine lacks, raises ``ValueError`` naming ``--device``."""
    name = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: expected cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device: {name!r} asked for, but this torch sees {torch.cuda.device_count()} CUDA "
                         "device(s); use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device: {name!r} asked for, but MPS is not available here; use --device cpu")
    return device


def check_inputs(image_path: str | os.PathLike, boxes, out_path: str | os.PathLike,
                 settings: PipelineSettings = PipelineSettings()) -> PipelineInputs:
    """Open or check every input of :func:`run_pipeline` before any model runs: the output path,
    every model file's header, config and tokenizer, the picture, boxes and phrases.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the flag or file, the expected and the
    actual value; a damaged checkpoint is found in milliseconds, not after earlier stages ran.
    """
    from ..meshio.files import check_output_file, check_weights_file
    from ..types.layout import parse_boxes
    from ..decompose.segment import parse_phrases
    from ..lift3d.checkpoint import check_triposr_files
    from ..models.sd import check_sd_source

    if settings.keep_models not in KEEP_MODELS:
        raise ValueError(f"--keep-models: expected one of {KEEP_MODELS}, got {settings.keep_models!r}")

    s = settings
    pipeline_device(s)
    if boxes is None and not s.detect:  # the arguments first: no file needs reading to say this
        raise ValueError("--boxes: not given; give one box per object, or name the objects with --phrases and "
                         "give an OWLv2 folder with --detect DIR to find their boxes")
    image = load_image_hwc(image_path)
    if boxes is None:  # the boxes come from Detect: one per phrase
        from ..decompose.detect import check_detector_folder

        check_detector_folder(s.detect)
        box_t, phrases = None, parse_phrases(s.phrases, None, what="--phrases")
    else:
        box_t = parse_boxes(boxes, tuple(image.shape[:2]), what="--boxes")
        phrases = parse_phrases(s.phrases, box_t.shape[0], what="--phrases")
    out = Path(out_path)
    if out.suffix.lower() != ".glb":
        raise ValueError(f"--out: expected a .glb file name, got {out}")
    check_output_file(out, "--out")
    if s.preview_size < 16:
        raise ValueError(f"--preview-size: expected at least 16 pixels, got {s.preview_size}")
    files = find_models(s)
    check_weights_file(files["sam"], "Segment (SAM)", "Give an official SAM checkpoint with --sam FILE or put one "
                                                      f"in {models_root(s) / SAM_FOLDER}.")
    tokenizers = tokenizer_dirs(models_root(s))
    if files["inpaint"] is not None:
        check_sd_source(files["inpaint"], expect="inpainting", config_dir=s.inpaint_config, tokenizer_dirs=tokenizers,
                        what="Inpaint (SD inpainting)")
    check_triposr_files(files["lift3d"])
    if files["guidance"] is not None and s.prompt.strip():
        check_sd_source(files["guidance"], expect="text2img", config_dir=s.guidance_config, tokenizer_dirs=tokenizers,
                        what="SSDS guidance")
    if s.depth:
        from ..decompose.depth import check_depth_folder
        check_depth_folder(s.depth)
    return PipelineInputs(out, files, image, box_t, phrases)

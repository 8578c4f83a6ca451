"""The whole ComboVerse pipeline, headless: ``comboverse run IMAGE --boxes ... --models DIR``.

Stages, in order (each one the same core call the ComfyUI node makes):

0. **Detect** (only without boxes): an OWLv2 folder (``--detect DIR``) finds one box per
   ``--phrases`` object.
1. **Segment**: SAM, prompted with the user's boxes (``DIR/sams/*.pth``, the first found in
   name order, or ``--sam FILE``).
2. **Inpaint**: SD inpainting completes occluded objects (``DIR/checkpoints/`` or
   ``--inpaint FILE``; ``--no-inpaint`` skips it and uses Segment's crops).
3. **Lift3D**: TripoSR, one canonical mesh per crop (``DIR/triposr/model.ckpt`` or ``--lift3d``).
4. **InitPose**: the reference camera from ``fov_deg`` / ``elevation_deg``; depth from Depth
   Anything V2 (``--depth DIR``, a save_pretrained folder) as relative disparity, or without it
   every object starts at the same depth (InitPose's documented start) and refinement and the
   physics terms sort depth out.
5. **SSDSRefine**: reference-view terms + interpenetration + support; with a guidance model
   (``--guidance FILE``) and a prompt, spatially-aware score distillation too.
6. **Export**: the GLB (one node per object), preview PNGs (reference view + 2 novel views) and
   a JSON report next to it, all written atomically.

Between stages the previous stage's models leave the GPU (the loaders return holders, not
``nn.Module``s, so their ``.to("cpu")`` is called; bare modules in the shared cache go through
``MODEL_CACHE.offload``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..compose.refine import RefineSettings
from ..decompose.detect import DetectSettings
from ..decompose.inpaint import InpaintSettings
from ..meshio.decimate import MAX_FACES
from ..models.precision import model_dtype
from ..types.images import load_image_hwc  # re-exported: the CLI's picture loader

__all__ = ["PipelineSettings", "PipelineInputs", "check_inputs", "run_pipeline", "find_models", "load_image_hwc"]

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class PipelineSettings:
    """Everything ``comboverse run`` can set (CLI flags map onto these fields)."""

    models_dir: str | None = None  # default $COMBOVERSE_MODELS_DIR or ./models
    sam: str | None = None
    inpaint: str | None = None
    inpaint_config: str | None = None  # diffusers-format config folder for a single-file inpainting model
    no_inpaint: bool = False
    lift3d: str | None = None
    guidance: str | None = None
    guidance_config: str | None = None
    prompt: str = ""
    phrases: str | None = None  # one per box (JSON list / lines / ';'-separated); default none
    detect: str | None = None  # OWLv2 save_pretrained folder: boxes from the phrases when no boxes are given
    detect_threshold: float = DetectSettings.threshold
    device: str | None = None  # default cuda if available else cpu
    seed: int = 0
    # Inpaint
    inpaint_steps: int = 30
    inpaint_resolution: int = 512
    inpaint_scheduler: str = InpaintSettings.scheduler
    # Lift3D
    mc_resolution: int = 256
    density_threshold: float = 25.0
    max_faces: int = MAX_FACES
    # InitPose
    depth: str | None = None  # Depth Anything V2 save_pretrained folder (--depth DIR); None: no depth map
    fov_deg: float = 40.0
    elevation_deg: float = -15.0
    # SSDSRefine
    refine_steps: int = 200
    refine_resolution: int = 128
    refine_guided_steps: int = RefineSettings.guided_steps
    refine_guidance_every: int = RefineSettings.guidance_every
    refine_stop_tolerance: float = RefineSettings.stop_tolerance
    ssds_weight: float = 1.0
    ssds_views: int = 4  # SSDSSettings.views (paper: 10)
    ssds_resolution: int = 256
    ssds_model_resolution: int = 0  # SSDSSettings.model_resolution; 0: the UNet's native size
    # Previews
    preview_size: int = 256


def models_root(settings: PipelineSettings) -> Path:
    return Path(settings.models_dir or os.environ.get("COMBOVERSE_MODELS_DIR", "models"))


def _first_file(folder: Path, suffixes=WEIGHT_SUFFIXES) -> Path | None:
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    return files[0] if files else None


def _inpainting_files(folder: Path) -> list[Path]:
    """Weight files in ``checkpoints/`` whose name says inpainting (first), then the rest."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".safetensors", ".ckpt"))
    return sorted(files, key=lambda p: "inpaint" not in p.name.lower())


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

    sam_hint = (f"put an official SAM checkpoint (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or "
                f"sam_vit_h_4b8939.pth) in the folder {root / 'sams'}, or give it with --sam FILE")
    if settings.sam:
        found["sam"] = given(settings.sam, "Segment (SAM)", "--sam", sam_hint)
    else:
        found["sam"] = _first_file(root / "sams", (".pth", ".pt", ".safetensors"))
        if found["sam"] is None:
            raise FileNotFoundError(f"Segment (SAM): no SAM checkpoint in {root / 'sams'}; {sam_hint}")
    inpaint_hint = (f"put an SD inpainting checkpoint (512-inpainting-ema.safetensors or sd-v1-5-inpainting.ckpt) "
                    f"in the folder {root / 'checkpoints'}, give it with --inpaint FILE, or skip the stage with "
                    "--no-inpaint")
    if settings.no_inpaint:
        found["inpaint"] = None
    elif settings.inpaint:
        found["inpaint"] = given(settings.inpaint, "Inpaint (SD inpainting)", "--inpaint", inpaint_hint)
    else:
        files = _inpainting_files(root / "checkpoints")
        if not files:
            raise FileNotFoundError(f"Inpaint (SD inpainting): no checkpoint in {root / 'checkpoints'}; "
                                    f"{inpaint_hint}")
        found["inpaint"] = files[0]
    lift_hint = (f"put TripoSR's model.ckpt (and optionally its config.yaml) in the folder {root / 'triposr'}, "
                 "or give it with --lift3d FILE")
    if settings.lift3d:
        found["lift3d"] = given(settings.lift3d, "Lift3D (TripoSR)", "--lift3d", lift_hint)
    else:
        p = root / "triposr" / "model.ckpt"
        if not p.is_file():
            p = _first_file(root / "triposr", (".ckpt", ".safetensors"))
        if p is None:
            raise FileNotFoundError(f"Lift3D (TripoSR): no model.ckpt in {root / 'triposr'}; {lift_hint}")
        found["lift3d"] = p
    found["guidance"] = given(settings.guidance, "SSDS guidance", "--guidance",
                              f"put an SD 1.x/2.x text-to-image checkpoint in {root / 'checkpoints'} and give "
                              "it with --guidance FILE") if settings.guidance else None
    return found


def _offload(*handles) -> None:
    """Move stage models off the GPU (holders with ``.to``, and bare modules in the shared cache)."""
    from ..models.cache import MODEL_CACHE

    for h in handles:
        if h is not None:
            h.to("cpu")
    MODEL_CACHE.offload()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _tokenizer_dirs(root: Path) -> list[Path]:
    return [root / "clip_tokenizer"]


def _novel_cameras(scene, size: int, offsets=(-45.0, 45.0)):
    """Two orbit cameras at the reference elevation, azimuth offset from the reference view."""
    from ..types.camera import Cameras
    from ..guidance.ssds import reference_orbit

    el, az, r, centre = reference_orbit(scene)
    return Cameras.orbit_like(scene.camera, torch.tensor([el - 10.0] * len(offsets)),
                              torch.tensor([az + o for o in offsets]), torch.tensor([r] * len(offsets)),
                              tuple(float(c) for c in centre), width=size, height=size)


@dataclass(frozen=True)
class PipelineInputs:
    """What :func:`check_inputs` found: the output path, every stage's model file, the picture
    (``[H, W, C]`` float32 in [0, 1]), the boxes (``[N, 4]`` float32 pixels) and the phrases."""

    out: Path
    files: dict
    image: torch.Tensor
    boxes: torch.Tensor | None  # None: Detect finds them from the phrases
    phrases: tuple
    inpaint: object  # InpaintSettings
    lift: object  # Lift3DSettings
    refine: object  # RefineSettings (guidance weight as given; 0 when SSDS is off)
    ssds: object  # SSDSSettings


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
    stage_settings = _stage_settings(s)
    files = find_models(s)
    check_weights_file(files["sam"], "Segment (SAM)", "Give an official SAM checkpoint with --sam FILE or put one "
                                                      f"in {models_root(s) / 'sams'}.")
    tokenizers = _tokenizer_dirs(models_root(s))
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
    return PipelineInputs(out, files, image, box_t, phrases, *stage_settings)


def _stage_settings(s: PipelineSettings):
    """Every stage's settings from the CLI's values; an invalid one names its stage's flags."""
    from ..compose.refine import LossWeights
    from ..guidance.ssds import SSDSSettings
    from ..lift3d.reconstruct import Lift3DSettings

    def make(flags: str, build):
        try:
            return build()
        except ValueError as e:
            raise ValueError(f"{flags}: {e}") from None

    inpaint = make("--inpaint-steps / --inpaint-resolution / --inpaint-scheduler", lambda: InpaintSettings(
        steps=s.inpaint_steps, resolution=s.inpaint_resolution, seed=s.seed, scheduler=s.inpaint_scheduler))
    lift = make("--mc-resolution / --density-threshold / --max-faces", lambda: Lift3DSettings(
        resolution=s.mc_resolution, density_threshold=s.density_threshold, max_faces=s.max_faces).validate())
    refine = make("--steps / --refine-resolution / --ssds-weight / --guidance-every / --stop-tolerance",
                  lambda: RefineSettings(steps=s.refine_steps, guided_steps=s.refine_guided_steps,
                                         resolution=s.refine_resolution,
                                         weights=replace(LossWeights(), guidance=s.ssds_weight),
                                         guidance_every=s.refine_guidance_every,
                                         stop_tolerance=s.refine_stop_tolerance))
    ssds = make("--prompt / --ssds-views / --ssds-resolution / --ssds-model-resolution", lambda: SSDSSettings(
        prompt=s.prompt, views=s.ssds_views, render_resolution=s.ssds_resolution, seed=s.seed,
        model_resolution=s.ssds_model_resolution or None))
    if s.preview_size < 16:
        raise ValueError(f"--preview-size: expected at least 16 pixels, got {s.preview_size}")
    return inpaint, lift, refine, ssds


def run_pipeline(image_path: str | os.PathLike, boxes, out_path: str | os.PathLike,
                 settings: PipelineSettings = PipelineSettings(),
                 progress: Callable[[str, int], Callable] | None = None, log=print) -> dict:
    """Run every stage on one image and write ``out_path`` (GLB), previews and a JSON report.

    Args:
        image_path: the picture (PNG/JPEG/...; transparency restricts the masks).
        boxes: one box per object, ``(x0, y0, x1, y1)`` source pixels, as JSON text or a list
            (:func:`~comboverse_ops.types.layout.parse_boxes`).
        out_path: the ``.glb`` to write; ``<stem>_reference.png``, ``<stem>_novel_1.png``,
            ``<stem>_novel_2.png`` and ``<stem>_report.json`` go next to it.
        progress: ``progress(label, total) -> callback(step, total, preview=None)`` (with an
            optional ``close()``), e.g. the CLI's terminal bar.
    Returns:
        The report (also written as JSON).
    """
    from ..meshio.atomic import png_bytes, remove_stale_temporaries, write_files_atomic
    from ..decompose.crops import RecenterSettings
    from ..meshio.glb import scene_to_glb_bytes
    from ..compose.init_pose import InitSettings, init_poses, reference_camera
    from ..decompose.inpaint import inpaint_objects
    from ..types.layout import layout_meta, parse_boxes
    from ..lift3d.checkpoint import load_triposr
    from ..lift3d.reconstruct import reconstruct_objects
    from ..models.sam import load_sam
    from ..models.sd import load_sd_model
    from ..compose.refine import RefineTargets, refine_poses
    from ..render import render_scene
    from ..types.scene import Scene, SceneObject, object_names
    from ..decompose.segment import segment_image

    s = settings
    inputs = check_inputs(image_path, boxes, out_path, s)
    device = pipeline_device(s)
    out, files, image, box_t, phrases = inputs.out, inputs.files, inputs.image, inputs.boxes, inputs.phrases
    for p in output_paths(out).values():
        remove_stale_temporaries(p)  # left by a run that was killed while writing
    root = models_root(s)
    h, w = image.shape[:2]
    lift_settings, inpaint_settings = inputs.lift, inputs.inpaint
    timings: dict[str, float] = {}
    models_used: dict[str, dict] = {}
    if boxes is None:  # 0. Detect: one box per phrase
        from ..decompose.detect import detect_phrases, load_detector

        t = time.perf_counter()
        log(f"Detect: {s.detect}")
        detector = load_detector(s.detect, device=device, dtype=model_dtype("auto", device)).to(device)
        found = detect_phrases(detector, image.to(device), phrases,
                               DetectSettings(threshold=s.detect_threshold), what="--detect")
        models_used["detect"] = {"kind": f"{detector.model_type} (open-vocabulary detector)", "file": str(s.detect)}
        _offload(detector)
        del detector
        boxes, s = found.boxes.tolist(), replace(s, phrases=json.dumps(list(found.phrases)))
        timings["detect"] = time.perf_counter() - t
        box_t = parse_boxes(boxes, (h, w), what="--detect")
        phrases = tuple(found.phrases)

    def bar(label: str, total: int):
        return progress(label, total) if progress is not None else None

    def close(cb):
        if cb is not None and hasattr(cb, "close"):
            cb.close()

    t_all = time.perf_counter()
    # 1. Segment --------------------------------------------------------------------------------
    t = time.perf_counter()
    log(f"Segment: SAM {files['sam']}")
    sam = load_sam(files["sam"], device=device).to(device)  # back from an earlier offload
    models_used["segment"] = {"kind": f"SAM {sam.arch.name}", "file": str(files["sam"])}
    seg = segment_image(image, sam, boxes=box_t, phrases=list(phrases), recenter=RecenterSettings())
    layout = seg.layout
    timings["segment"] = time.perf_counter() - t

    # 2. Inpaint --------------------------------------------------------------------------------
    t = time.perf_counter()
    crops, crop_masks = seg.crops, seg.crop_masks
    inpainted: list[bool] = [False] * len(layout)
    if files["inpaint"] is None:
        log("Inpaint: skipped (--no-inpaint); Segment's crops go to Lift3D")
        models_used["inpaint"] = {"kind": "skipped", "file": None}
        _offload(sam)
    else:
        log(f"Inpaint: SD inpainting {files['inpaint']}")
        sd = load_sd_model(files["inpaint"], expect="inpainting", device=device, config_dir=s.inpaint_config,
                           tokenizer_dirs=_tokenizer_dirs(root), what="Inpaint (SD inpainting)").to(device)
        models_used["inpaint"] = {"kind": sd.info.describe(), "file": str(files["inpaint"])}
        cb = bar("inpaint", inpaint_settings.steps * max(1, len(layout)))
        res = inpaint_objects(image, layout, sd, inpaint_settings, RecenterSettings(), sam=sam, callback=cb)
        close(cb)
        crops, crop_masks = res.crops, res.crop_masks
        inpainted = list(res.windows.occluded)
        _offload(sam, sd)
        del sd
    del sam
    timings["inpaint"] = time.perf_counter() - t

    # 3. Lift3D ---------------------------------------------------------------------------------
    t = time.perf_counter()
    log(f"Lift3D: TripoSR {files['lift3d']}")
    tsr = load_triposr(files["lift3d"], device=device, dtype=model_dtype("auto", device)).to(device)
    models_used["lift3d"] = {"kind": "TripoSR", "file": str(files["lift3d"]), "config": str(tsr.config)}
    cb = bar("lift3d", len(layout))
    names = object_names(layout.phrases, [f"object_{i}" for i in range(len(layout))])
    meshes, _ = reconstruct_objects(tsr.model, crops, crop_masks, lift_settings, names=names, callback=cb)
    close(cb)
    _offload(tsr)
    del tsr
    timings["lift3d"] = time.perf_counter() - t

    # 4. InitPose -------------------------------------------------------------------------------
    t = time.perf_counter()
    camera = reference_camera(h, w, s.fov_deg, s.elevation_deg, device=device)
    disparity = None  # without a depth model every object starts at one depth (InitPose's documented start)
    if s.depth:
        from ..decompose.depth import estimate_disparity, load_depth_model
        log(f"InitPose: depth from Depth Anything {s.depth}")
        dmodel = load_depth_model(s.depth, device=device,
                                  dtype=model_dtype("auto", device)).to(device)
        disparity = estimate_disparity(dmodel, image.to(device))  # [H, W] in [0, 1], 1 = near
        models_used["depth"] = {"kind": "Depth Anything (relative disparity)", "file": str(s.depth)}
        _offload(dmodel)
        del dmodel
    poses = init_poses(meshes, layout, camera, disparity, InitSettings(depth_kind="disparity"))
    start = Scene([SceneObject(n, m.to(device), p) for n, m, p in zip(names, meshes, poses)], camera,
                  meta=layout_meta(layout))
    timings["init_pose"] = time.perf_counter() - t

    # 5. SSDSRefine -----------------------------------------------------------------------------
    t = time.perf_counter()
    guidance, gmodel = None, None
    use_ssds = files["guidance"] is not None and bool(s.prompt.strip()) and s.ssds_weight > 0
    if files["guidance"] is not None and not s.prompt.strip():
        log("SSDSRefine: --guidance given without --prompt; score distillation needs a prompt, so it is off")
    if use_ssds:
        from ..guidance.ssds import SSDSGuidance

        log(f"SSDSRefine: guidance {files['guidance']}")
        gmodel = load_sd_model(files["guidance"], expect="text2img", device=device, config_dir=s.guidance_config,
                               tokenizer_dirs=_tokenizer_dirs(root), what="SSDS guidance").to(device)
        models_used["guidance"] = {"kind": gmodel.info.describe(), "file": str(files["guidance"])}
        guidance = SSDSGuidance(gmodel, inputs.ssds)
    else:
        models_used["guidance"] = {"kind": "none (reference view + physics only)", "file": None}
    rs = replace(inputs.refine, weights=replace(inputs.refine.weights, guidance=s.ssds_weight if use_ssds else 0.0))
    rgb = seg.rgb  # the picture as Segment converted it
    cb = bar("refine", max(1, rs.steps_for(guidance is not None and rs.weights.guidance != 0)))
    try:
        result = refine_poses(start, RefineTargets.from_masks(rgb, layout.masks.float()), rs, callback=cb,
                              guidance=guidance)
    except BaseException:
        if guidance is not None:
            guidance.close()
        raise
    close(cb)
    if gmodel is not None:
        guidance.close()  # the cached model goes back as it was (attention processors, tensors)
        _offload(gmodel)
    del guidance, gmodel
    timings["refine"] = time.perf_counter() - t

    # 6. Export ---------------------------------------------------------------------------------
    t = time.perf_counter()
    scene = result.scene
    paths = output_paths(out)
    run_record = {"command": "run", "image": str(image_path), "settings": dict(s.__dict__)}
    # written below, all files in one commit
    contents = {"glb": scene_to_glb_bytes(scene.to("cpu"), {"comboverse": run_record})}
    with torch.no_grad():
        size = s.preview_size
        ref_cam = reference_camera(round(h * size / max(h, w)), round(w * size / max(h, w)), s.fov_deg,
                                   s.elevation_deg, device=scene.camera.device)
        contents["preview_reference"] = png_bytes(render_scene(scene, ref_cam).rgb[0])
        novel = render_scene(scene, _novel_cameras(scene, size)).rgb
        for k in range(novel.shape[0]):
            contents[f"preview_novel_{k + 1}"] = png_bytes(novel[k])
    timings["export"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    def finite(d: dict) -> dict:
        return {k: (v if math.isfinite(v) else None) for k, v in d.items()}

    report = {
        "image": str(image_path),
        "image_size": [w, h],
        "prompt": s.prompt,
        "device": str(device),
        "objects": [{"name": o.name, "phrase": ph, "box": b, "inpainted": bool(ip),
                     "faces": int(o.mesh.num_faces), "scale": float(o.pose.scale),
                     "rotation": o.pose.rotation.detach().cpu().tolist(),
                     "translation": o.pose.translation.detach().cpu().tolist()}
                    for o, ph, b, ip in zip(scene.objects, layout.phrases, box_t.tolist(), inpainted)],
        "init_pose": {"depth": (f"Depth Anything disparity from {s.depth}" if s.depth else
                                "none: all objects start at the same depth (InitPose without a depth map)"),
                      "fov_deg": s.fov_deg, "elevation_deg": s.elevation_deg},
        "refine_steps_run": result.steps,
        "losses": {"first": finite(result.history[0]) if result.history else {},
                   "final": finite(result.history[-1]) if result.history else {}},
        "models": models_used,
        "settings": {k: v for k, v in s.__dict__.items()},
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "files": {k: str(v) for k, v in paths.items()},
    }
    contents["report"] = json.dumps(report, indent=2).encode()
    write_files_atomic({paths[k]: contents[k] for k in paths})  # the report last: it marks a complete run
    for k, v in report["files"].items():
        log(f"wrote {k:<18} {v}")
    log("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return report

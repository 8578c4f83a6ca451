"""The whole ComboVerse pipeline, headless: ``comboverse run IMAGE --boxes ... --models DIR``.

Stages, in order (each one the same core call the ComfyUI node makes, with the same settings
dataclass the node's widgets are generated from):

0. **Detect** (only without boxes): an OWLv2 folder (``--detect DIR``) finds one box per
   ``--phrases`` object.
1. **Segment**: SAM, prompted with the user's boxes (``DIR/sams/*.pth``, the first found in
   name order, or ``--sam FILE``).
2. **Inpaint**: SD inpainting completes occluded objects (``DIR/checkpoints/`` or
   ``--inpaint FILE``; ``--no-inpaint`` skips it and uses Segment's crops).
3. **Lift3D**: TripoSR, one canonical mesh per crop (``DIR/triposr/model.ckpt`` or ``--lift3d``).
4. **InitPose**: the reference camera (``stages.camera``); depth from Depth Anything V2
   (``--depth DIR``, a save_pretrained folder) as relative disparity, or without it every
   object starts at the same depth (InitPose's documented start) and refinement and the
   physics terms sort depth out.
5. **SSDSRefine**: reference-view terms + interpenetration + support; with a guidance model
   (``--guidance FILE``) and a prompt, spatially-aware score distillation too.
6. **Export**: the GLB (one node per object), preview PNGs (reference view + 2 novel views) and
   a JSON report next to it, all written atomically.

Each stage is a function ``(run, inputs...) -> its output dataclass``; :class:`Run` carries what
every stage shares (settings, device, model files, timings, the models used). Between stages the
previous stage's models leave the GPU (``.to("cpu")`` on the loaders' holders; bare modules in
the shared cache go through ``MODEL_CACHE.offload``; a CPU run forgets them), unless the run
keeps them (``--keep-models``: by default on GPUs of 30 GiB and more, where all of them fit).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..types.images import load_image_hwc  # re-exported: the CLI's picture loader
from ..models.precision import model_dtype
from .run_settings import (LEGACY_NAMES, PipelineInputs, PipelineSettings, check_inputs, find_models, models_root,
                           models_stay, output_paths, pipeline_device, tokenizer_dirs, with_settings)

__all__ = ["PipelineSettings", "PipelineInputs", "LEGACY_NAMES", "check_inputs", "run_pipeline", "find_models",
           "load_image_hwc", "with_settings", "models_root", "output_paths", "Run", "Detected", "Objects", "Lifted",
           "detect_stage", "segment_stage", "inpaint_stage", "lift3d_stage", "init_pose_stage", "refine_stage",
           "export_stage"]


def _offload(run: "Run", *handles) -> None:
    """A stage's models leave when it ends, unless the run keeps them (:attr:`Run.resident`,
    ``--keep-models``): off the GPU to CPU memory (holders with ``.to``, and bare modules in the
    shared cache); on a CPU run out of memory (the shared cache forgets them, the next run reads
    them again)."""
    from ..models.cache import MODEL_CACHE

    if run.resident:
        return
    if run.device.type == "cpu":
        MODEL_CACHE.clear()
        return
    for h in handles:
        if h is not None:
            h.to("cpu")
    MODEL_CACHE.offload()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Run:
    """What every stage of one run shares: the settings, the device, the model files, and the
    record the report is made from (seconds per stage, the model each stage used)."""

    settings: PipelineSettings
    device: torch.device
    files: dict
    progress: Callable[[str, int], Callable] | None = None
    log: Callable = print
    seconds: dict[str, float] = field(default_factory=dict)
    models_used: dict[str, dict] = field(default_factory=dict)

    @property
    def resident(self) -> bool:
        """Whether models stay where they compute between stages and runs (``settings.keep_models``)."""
        return models_stay(self.settings.keep_models, self.device)

    @property
    def root(self) -> Path:
        return models_root(self.settings)

    @contextmanager
    def timed(self, stage: str):
        t = time.perf_counter()
        yield
        self.seconds[stage] = time.perf_counter() - t

    @contextmanager
    def bar(self, label: str, total: int):
        """A progress callback for ``total`` steps (or None), closed afterwards."""
        cb = self.progress(label, total) if self.progress is not None else None
        yield cb
        if cb is not None and hasattr(cb, "close"):
            cb.close()


@dataclass(frozen=True)
class Detected:
    """Detect's output: ``boxes`` ``[N, 4]`` float32 ``(x0, y0, x1, y1)`` pixels, one per phrase."""

    boxes: torch.Tensor
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class Objects:
    """Segment's and Inpaint's output: the layout and one framed crop per object.

    ``crops`` ``[N, S, S, 3]`` float in [0, 1], ``crop_masks`` ``[N, S, S]``, ``inpainted``: which
    objects Inpaint completed; ``rgb`` ``[H, W, 3]`` float32 in [0, 1]: the picture as Segment
    converted it (the reference view of refine)."""

    layout: object  # Layout
    crops: torch.Tensor
    crop_masks: torch.Tensor
    inpainted: tuple[bool, ...]
    rgb: torch.Tensor | None = None


@dataclass(frozen=True)
class Lifted:
    """Lift3D's output: one canonical-frame mesh per object and the objects' unique names."""

    meshes: list
    names: list[str]


def detect_stage(run: Run, image: torch.Tensor, phrases: tuple) -> Detected:
    """Detect: one box per phrase."""
    from ..decompose.detect import detect_phrases, load_detector
    from ..types.layout import parse_boxes

    s = run.settings
    with run.timed("detect"):
        run.log(f"Detect: {s.detect}")
        detector = load_detector(s.detect, device=run.device, dtype=model_dtype("auto", run.device)).to(run.device)
        found = detect_phrases(detector, image.to(run.device), phrases, s.stage("detect"), what="--detect")
        run.models_used["detect"] = {"kind": f"{detector.model_type} (open-vocabulary detector)",
                                     "file": str(s.detect)}
        _offload(run, detector)
    return Detected(parse_boxes(found.boxes.tolist(), tuple(image.shape[:2]), what="--detect"), tuple(found.phrases))


def segment_stage(run: Run, image: torch.Tensor, boxes: torch.Tensor, phrases: tuple) -> tuple[Objects, object]:
    """Segment: SAM with the boxes; the objects and the SAM holder (Inpaint re-segments with it)."""
    from ..models.sam import load_sam
    from ..decompose.segment import segment_image

    s, files = run.settings, run.files
    with run.timed("segment"):
        run.log(f"Segment: SAM {files['sam']}")
        sam = load_sam(files["sam"], device=run.device).to(run.device)  # back from an earlier offload
        run.models_used["segment"] = {"kind": f"SAM {sam.arch.name}", "file": str(files["sam"])}
        seg = segment_image(image, sam, boxes=boxes, phrases=list(phrases), settings=s.stage("segment"),
                            recenter=s.stage("recenter"))
    return Objects(seg.layout, seg.crops, seg.crop_masks, (False,) * len(seg.layout), seg.rgb), sam


def inpaint_stage(run: Run, image: torch.Tensor, objects: Objects, sam) -> Objects:
    """Inpaint: SD inpainting completes occluded objects (Segment's objects as they are without a model)."""
    from ..decompose.inpaint import inpaint_objects
    from ..models.sd import load_sd_model

    s, files = run.settings, run.files
    with run.timed("inpaint"):
        if files["inpaint"] is None:
            run.log("Inpaint: skipped (--no-inpaint); Segment's crops go to Lift3D")
            run.models_used["inpaint"] = {"kind": "skipped", "file": None}
            _offload(run, sam)
            return objects
        run.log(f"Inpaint: SD inpainting {files['inpaint']}")
        sd = load_sd_model(files["inpaint"], expect="inpainting", device=run.device, config_dir=s.inpaint_config,
                           tokenizer_dirs=tokenizer_dirs(run.root), what="Inpaint (SD inpainting)").to(run.device)
        run.models_used["inpaint"] = {"kind": sd.info.describe(), "file": str(files["inpaint"])}
        settings = s.stage("inpaint")
        with run.bar("inpaint", settings.steps * max(1, len(objects.layout))) as cb:
            res = inpaint_objects(image, objects.layout, sd, settings, s.stage("recenter"), sam=sam, callback=cb,
                                  crops=(objects.crops, objects.crop_masks))  # untouched objects keep Segment's
        _offload(run, sam, sd)
    return Objects(objects.layout, res.crops, res.crop_masks, tuple(bool(x) for x in res.windows.occluded),
                   objects.rgb)


def lift3d_stage(run: Run, objects: Objects) -> Lifted:
    """Lift3D: one canonical mesh per crop, and the objects' unique names."""
    from ..lift3d.checkpoint import load_triposr
    from ..lift3d.reconstruct import reconstruct_objects
    from ..types.scene import object_names

    path = run.files["lift3d"]
    with run.timed("lift3d"):
        run.log(f"Lift3D: TripoSR {path}")
        tsr = load_triposr(path, device=run.device, dtype=model_dtype("auto", run.device)).to(run.device)
        run.models_used["lift3d"] = {"kind": "TripoSR", "file": str(path), "config": str(tsr.config)}
        names = object_names(objects.layout.phrases, [f"object_{i}" for i in range(len(objects.layout))])
        with run.bar("lift3d", len(objects.layout)) as cb:
            meshes, _ = reconstruct_objects(tsr.model, objects.crops, objects.crop_masks, run.settings.stage("lift3d"),
                                            names=names, callback=cb)
        _offload(run, tsr)
    return Lifted(meshes, names)


def init_pose_stage(run: Run, image: torch.Tensor, layout, lifted: Lifted):
    """InitPose: the reference camera, depth (optional), the starting :class:`~.scene.Scene`."""
    from ..compose.init_pose import init_poses, reference_camera
    from ..types.layout import layout_meta
    from ..types.scene import Scene, SceneObject

    s = run.settings
    cam = s.stage("camera")
    with run.timed("init_pose"):
        camera = reference_camera(*image.shape[:2], cam.fov_deg, cam.elevation_deg, cam.distance, device=run.device)
        disparity = None  # without a depth model every object starts at one depth (InitPose's documented start)
        if s.depth:
            from ..decompose.depth import estimate_disparity, load_depth_model
            run.log(f"InitPose: depth from Depth Anything {s.depth}")
            dmodel = load_depth_model(s.depth, device=run.device, dtype=model_dtype("auto", run.device)).to(run.device)
            disparity = estimate_disparity(dmodel, image.to(run.device))  # [H, W] in [0, 1], 1 = near
            run.models_used["depth"] = {"kind": "Depth Anything (relative disparity)", "file": str(s.depth)}
            _offload(run, dmodel)
        poses = init_poses(lifted.meshes, layout, camera, disparity, s.stage("init"))
        return Scene([SceneObject(n, m.to(run.device), p) for n, m, p in zip(lifted.names, lifted.meshes, poses)],
                     camera, meta=layout_meta(layout))


def refine_stage(run: Run, rgb: torch.Tensor, layout, start):
    """SSDSRefine: the reference view and physics, plus score distillation when a guidance model
    and a prompt are given; returns the :class:`~.refine.RefineResult`. ``rgb``: the picture
    ``[H, W, 3]`` as Segment converted it (:attr:`Objects.rgb`)."""
    from ..models.sd import load_sd_model
    from ..compose.refine import RefineTargets, refine_poses

    s, files = run.settings, run.files
    refine = s.stage("refine")
    with run.timed("refine"):
        guidance, gmodel = None, None
        use_ssds = files["guidance"] is not None and bool(s.prompt.strip()) and refine.weights.guidance > 0
        if files["guidance"] is not None and not s.prompt.strip():
            run.log("SSDSRefine: --guidance given without --prompt; score distillation needs a prompt, so it is off")
        if use_ssds:
            from ..guidance.ssds import SSDSGuidance

            run.log(f"SSDSRefine: guidance {files['guidance']}")
            gmodel = load_sd_model(files["guidance"], expect="text2img", device=run.device,
                                   config_dir=s.guidance_config, tokenizer_dirs=tokenizer_dirs(run.root),
                                   what="SSDS guidance").to(run.device)
            run.models_used["guidance"] = {"kind": gmodel.info.describe(), "file": str(files["guidance"])}
            ssds = s.stage("ssds")
            if ssds.backend == "auto":  # the refine renderer, as SSDSRefine's one backend input does
                ssds = replace(ssds, backend=refine.backend)
            guidance = SSDSGuidance(gmodel, ssds)
        else:
            run.models_used["guidance"] = {"kind": "none (reference view + physics only)", "file": None}
            refine = replace(refine, weights=replace(refine.weights, guidance=0.0))
        try:
            with run.bar("refine", max(1, refine.steps_for(guidance is not None))) as cb:
                result = refine_poses(start, RefineTargets.from_masks(rgb, layout.masks.float()), refine,
                                      callback=cb, guidance=guidance)
        finally:
            if guidance is not None:
                guidance.close()  # the cached model goes back as it was (attention processors, tensors)
        if gmodel is not None:
            _offload(run, gmodel)
    return result


def _novel_cameras(scene, size: int, offsets=(-45.0, 45.0)):
    """Two orbit cameras at the reference elevation, azimuth offset from the reference view."""
    from ..types.camera import Cameras
    from ..guidance.ssds import reference_orbit

    el, az, r, centre = reference_orbit(scene)
    return Cameras.orbit_like(scene.camera, torch.tensor([el - 10.0] * len(offsets)),
                              torch.tensor([az + o for o in offsets]), torch.tensor([r] * len(offsets)),
                              tuple(float(c) for c in centre), width=size, height=size)


def export_stage(run: Run, scene, image_path, image_size: tuple[int, int]) -> dict[str, bytes]:
    """Export: the GLB and the preview PNGs as bytes (``output_paths`` keys but the report)."""
    from ..meshio.atomic import png_bytes
    from ..meshio.glb import scene_to_glb_bytes
    from ..compose.init_pose import reference_camera
    from ..render import render_scene

    s = run.settings
    with run.timed("export"):
        record = {"command": "run", "image": str(image_path), "settings": asdict(s)}
        contents = {"glb": scene_to_glb_bytes(scene.to("cpu"), {"comboverse": record})}
        h, w = image_size
        size, cam = s.preview_size, s.stage("camera")
        with torch.no_grad():
            ref_cam = reference_camera(round(h * size / max(h, w)), round(w * size / max(h, w)), cam.fov_deg,
                                       cam.elevation_deg, cam.distance, device=scene.camera.device)
            contents["preview_reference"] = png_bytes(render_scene(scene, ref_cam).rgb[0])
            novel = render_scene(scene, _novel_cameras(scene, size)).rgb
            for k in range(novel.shape[0]):
                contents[f"preview_novel_{k + 1}"] = png_bytes(novel[k])
    return contents


def _report(run: Run, image_path, image: torch.Tensor, objects: Objects, boxes: torch.Tensor, result,
            paths: dict) -> dict:
    s, scene, layout = run.settings, result.scene, objects.layout
    cam = s.stage("camera")

    def finite(d: dict) -> dict:
        return {k: (v if math.isfinite(v) else None) for k, v in d.items()}

    return {
        "image": str(image_path),
        "image_size": [image.shape[1], image.shape[0]],
        "prompt": s.prompt,
        "device": str(run.device),
        "objects": [{"name": o.name, "phrase": ph, "box": b, "inpainted": bool(ip),
                     "faces": int(o.mesh.num_faces), "scale": float(o.pose.scale),
                     "rotation": o.pose.rotation.detach().cpu().tolist(),
                     "translation": o.pose.translation.detach().cpu().tolist()}
                    for o, ph, b, ip in zip(scene.objects, layout.phrases, boxes.tolist(), objects.inpainted)],
        "init_pose": {"depth": (f"Depth Anything disparity from {s.depth}" if s.depth else
                                "none: all objects start at the same depth (InitPose without a depth map)"),
                      "fov_deg": cam.fov_deg, "elevation_deg": cam.elevation_deg},
        "refine_steps_run": result.steps,
        "losses": {"first": finite(result.history[0]) if result.history else {},
                   "final": finite(result.history[-1]) if result.history else {}},
        "models": run.models_used,
        "settings": asdict(s),
        "seconds": {k: round(v, 3) for k, v in run.seconds.items()},
        "files": {k: str(v) for k, v in paths.items()},
    }


def run_pipeline(image_path: str | os.PathLike, boxes, out_path: str | os.PathLike,
                 settings: PipelineSettings = PipelineSettings(),
                 progress: Callable[[str, int], Callable] | None = None, log=print) -> dict:
    """Run every stage on one image and write ``out_path`` (GLB), previews and a JSON report.

    Args:
        image_path: the picture (PNG/JPEG/...; transparency restricts the masks).
        boxes: one box per object, ``(x0, y0, x1, y1)`` source pixels, as JSON text or a list
            (:func:`~comboverse_ops.types.layout.parse_boxes`); None: Detect finds them (``settings.detect``).
        out_path: the ``.glb`` to write; ``<stem>_reference.png``, ``<stem>_novel_1.png``,
            ``<stem>_novel_2.png`` and ``<stem>_report.json`` go next to it.
        progress: ``progress(label, total) -> callback(step, total, preview=None)`` (with an
            optional ``close()``), e.g. the CLI's terminal bar.
    Returns:
        The report (also written as JSON).
    """
    from ..meshio.atomic import remove_stale_temporaries, write_files_atomic

    inputs = check_inputs(image_path, boxes, out_path, settings)
    run = Run(settings, pipeline_device(settings), inputs.files, progress, log)
    paths = output_paths(inputs.out)
    for p in paths.values():
        remove_stale_temporaries(p)  # left by a run that was killed while writing
    image, box_t, phrases = inputs.image, inputs.boxes, inputs.phrases
    if box_t is None:
        found = detect_stage(run, image, phrases)
        box_t, phrases = found.boxes, found.phrases
        run.settings = replace(settings, phrases=json.dumps(list(phrases)))
    t_all = time.perf_counter()
    objects, sam = segment_stage(run, image, box_t, phrases)
    objects = inpaint_stage(run, image, objects, sam)
    del sam
    start = init_pose_stage(run, image, objects.layout, lift3d_stage(run, objects))
    result = refine_stage(run, objects.rgb, objects.layout, start)
    contents = export_stage(run, result.scene, image_path, tuple(image.shape[:2]))
    run.seconds["total"] = time.perf_counter() - t_all
    report = _report(run, image_path, image, objects, box_t, result, paths)
    contents["report"] = json.dumps(report, indent=2).encode()
    write_files_atomic({paths[k]: contents[k] for k in paths})  # the report last: it marks a complete run
    for k, v in report["files"].items():
        log(f"wrote {k:<18} {v}")
    log("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in run.seconds.items()))
    return report

"""The ``comboverse`` command line.

    comboverse demo [--out DIR] [--seed N]
    comboverse run IMAGE --boxes '[[x0,y0,x1,y1], ...]' [--prompt TEXT] [--models DIR] [--out scene.glb]
    comboverse batch MANIFEST.jsonl --out DIR [--procedural N] [--address RAY] (Ray; comboverse_ops/batch/)
    comboverse run-workflow WORKFLOW.json [--models DIR] [--input DIR] [--out DIR] (comboverse_ops/app/workflow.py)

Errors: bad input (a flag, a file, a picture, a checkpoint) prints one line,
``comboverse: error: ...`` naming the flag or file, what was expected and what was found, and
exits with status 2; ``--debug`` shows the traceback instead. Every input is checked before the
first model runs (:func:`comboverse_ops.app.pipeline.check_inputs`).

``demo`` runs the pack's main job on an embedded default: a procedural scene of three coloured
objects with spatial relations is rendered as the reference picture; its masks, boxes and a
noisy disparity map stand in for Segment and a depth node, and its meshes for Lift3D; then the
objects are initialised (InitPose) and refined (SSDSRefine, reference view and physics) and the
composed asset is written as ``scene.glb`` with before/after renders and the pose errors
against the known truth. It needs no model files and runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..determinism import request_reproducible_blas

__all__ = ["main", "run_demo", "build_parser", "run_settings"]


def labelled_grid_png(rows: list[list[torch.Tensor]], row_labels: list[str], col_labels: list[str],
                      gap: int = 4) -> bytes:
    """A grid of ``[H, W, 3]`` float images in [0, 1] (all one size) with a label left of every
    row and above every column (PIL's default font, black on white), as PNG bytes."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(t: str) -> tuple[int, int]:
        x0, y0, x1, y1 = probe.textbbox((0, 0), t, font=font)
        return x1 - x0, y1 - y0

    h, w = rows[0][0].shape[:2]
    left = max(text_size(t)[0] for t in row_labels) + 2 * gap
    top = max(text_size(t)[1] for t in col_labels) + 2 * gap
    n_cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (left + n_cols * (w + gap), top + len(rows) * (h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels):
        tw, _ = text_size(label)
        draw.text((left + j * (w + gap) + (w - tw) // 2, gap), label, fill="black", font=font)
    for i, (row, label) in enumerate(zip(rows, row_labels)):
        y = top + i * (h + gap)
        draw.text((gap, y + (h - text_size(label)[1]) // 2), label, fill="black", font=font)
        for j, img in enumerate(row):
            arr = (img.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
            canvas.paste(Image.fromarray(arr), (left + j * (w + gap), y))
    import io

    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def run_demo(out_dir: str | Path, seed: int = 0, size: int = 256, objects: int = 3, device: str = "cpu",
             steps: int | None = None, log=print) -> dict:
    """Compose the demo scene and write ``scene.glb``, ``reference.png``, ``before_after.png`` (rows:
    truth, initialisation, refined; columns: reference view, two novel views) and ``report.json``
    (poses, losses, pose errors, timings) into ``out_dir`` in one commit; return the report."""
    from ..meshio.atomic import png_bytes, remove_stale_temporaries, write_files_atomic
    from ..meshio.glb import scene_to_glb_bytes
    from ..meshio.files import check_output_file
    from ..compose.init_pose import InitSettings, init_poses
    from ..types.layout import Layout
    from ..synthetic.metrics import scene_metrics
    from ..synthetic.procedural import ProceduralSettings, make_procedural_scene, novel_cameras
    from ..compose.refine import RefineSettings, RefineTargets, refine_poses
    from ..render import render_scene

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: expected a folder for the demo's files, got the file {out}")
    paths = {k: out / n for k, n in (("reference", "reference.png"), ("before_after", "before_after.png"),
                                     ("glb", "scene.glb"), ("report", "report.json"))}
    for p in paths.values():
        check_output_file(p, "--out")
        remove_stale_temporaries(p)  # left by a run that was killed while writing
    timings = {}
    t0 = time.perf_counter()
    settings = ProceduralSettings(min_objects=objects, max_objects=objects, image_size=size)
    truth = make_procedural_scene(seed, settings, device=torch.device(device))
    ref = truth.observe()
    # Stand-ins for Segment (true masks and boxes) and a depth node (5% noisy disparity).
    g = torch.Generator().manual_seed(seed)
    noisy = ref.depth.cpu() * (1 + 0.05 * torch.randn(ref.depth.shape, generator=g))
    disparity = torch.where(ref.alpha.cpu() > 0.5, 1 / noisy.clamp_min(1e-3), torch.zeros_like(noisy))
    layout = Layout(ref.boxes, (size, size), truth.phrases, ref.masks)
    timings["reference"] = time.perf_counter() - t0

    t = time.perf_counter()
    meshes = [o.mesh for o in truth.scene.objects]
    # The stand-in map is metric disparity (1 / depth), not normalised as a depth node's: read it exactly.
    start = truth.scene.with_poses(init_poses(meshes, layout, truth.camera, disparity.to(device),
                                              InitSettings(map_floor=0.0)))
    timings["init"] = time.perf_counter() - t
    t = time.perf_counter()
    rs = RefineSettings() if steps is None else RefineSettings(steps=steps)
    bar = _ProgressBar("refine", rs.steps, log)
    result = refine_poses(start, RefineTargets.from_masks(ref.image, ref.masks), rs, callback=bar)
    bar.close()
    timings["refine"] = time.perf_counter() - t

    views = novel_cameras(truth, 2)
    rows = [[render_scene(sc, sc.camera).rgb[0]] + list(render_scene(sc, views).rgb)
            for sc in (truth.scene, start, result.scene)]
    contents = {"reference": png_bytes(ref.image),
                "before_after": labelled_grid_png(rows, ["truth", "initialisation", "refined"],
                                                  ["reference view", "novel view 1", "novel view 2"]),
                "glb": scene_to_glb_bytes(result.scene, {"comboverse": {
                    "command": "demo", "settings": {"seed": seed, "size": size, "objects": objects,
                                                    "steps": rs.steps}}})}
    m_init = scene_metrics(start, truth.scene, novel_cameras(truth, 4))
    m_final = scene_metrics(result.scene, truth.scene, novel_cameras(truth, 4))
    timings["total"] = time.perf_counter() - t0
    report = {
        "seed": seed,
        "prompt": truth.prompt,
        "objects": [{"name": o.name, "phrase": p, "scale": float(o.pose.scale), "rotation": o.pose.rotation.tolist(),
                     "translation": o.pose.translation.tolist()}
                    for o, p in zip(result.scene.objects, truth.phrases)],
        "relations": [list(r) for r in truth.relations],
        "metrics": {"init": m_init, "refined": m_final},
        "losses": {"first": result.history[0] if result.history else {},
                   "last": result.history[-1] if result.history else {}},
        "files": {k: str(v) for k, v in paths.items()},
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    contents["report"] = json.dumps(report, indent=2).encode()
    write_files_atomic({paths[k]: contents[k] for k in paths})  # one commit, the report last
    log(f"prompt: {truth.prompt}")
    log(f"{'':<30}{'init':>8}{'refined':>9}")
    # "aligned": after one scale of the whole estimate about the camera (the reference view cannot
    # tell it apart), the error that says whether the layout is right; unaligned as measured.
    for key, label in (("translation_aligned", "translation err (aligned)"),
                       ("translation", "translation err (unaligned)"), ("rotation_deg", "rotation err (deg)"),
                       ("ref_mask_iou", "reference IoU"), ("novel_mask_iou_aligned", "novel-view IoU (aligned)")):
        log(f"{label:<30}{m_init[key]:>8.3f}{m_final[key]:>9.3f}")
    log("translation errors are fractions of the scene's size")
    for k, v in paths.items():
        log(f"wrote {k:<12} {v}")
    log(f"done in {timings['total']:.1f} s")
    return report


class _ProgressBar:
    """A terminal progress bar as a ``callback(step, total, preview)``."""

    def __init__(self, label: str, total: int, log=print):
        self.label, self.total, self.log = label, total, log
        self.tty = sys.stderr.isatty()
        self.last = -1

    def __call__(self, step: int, total: int, preview=None) -> None:
        pct = int(100 * step / max(1, total))
        if self.tty:
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {step}/{total}")
            sys.stderr.flush()
        elif pct // 25 != self.last // 25:
            self.log(f"{self.label}: {step}/{total}")
        self.last = pct

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


EXIT_BAD_INPUT = 2  # as argparse: the user's input is wrong
EXIT_FAILED = 1  # anything else (a bug, out of memory, ...)
# What bad input raises: the loaders' and checks' errors, all of which name the flag or file.
_INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


class _Parser(argparse.ArgumentParser):
    """argparse with the pack's one-line error format (``comboverse: error: ...``, status 2)."""

    def error(self, message: str):
        sys.stderr.write(f"comboverse: error: {_one_line(message)} (see: {self.prog} --help)\n")
        sys.exit(EXIT_BAD_INPUT)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every flag that has a value by default."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``comboverse`` argument parser (every subcommand)."""
    parser = _Parser(prog="comboverse", description="ComboVerse: compositional image-to-3D.", formatter_class=_Help)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser("demo", help="compose the built-in procedural scene (no model files needed)",
                          formatter_class=_Help)
    demo.add_argument("--out", default="comboverse_demo", help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="scene seed; the same seed gives the same asset")
    demo.add_argument("--size", type=int, default=256, help="reference image size in pixels")
    demo.add_argument("--objects", type=int, default=3, help="number of objects (2-5)")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    demo.add_argument("--steps", type=int, default=None, help="refinement steps (default: SSDSRefine's)")
    demo.add_argument("--ssds", action="store_true",
                      help="instead: a scene whose depth order InitPose got wrong, refined with score distillation "
                           "from the shipped spatial prior (comboverse_ops/app/demo_ssds.py)")
    _add_run_parser(sub)
    _add_batch_parser(sub)
    _add_run_workflow_parser(sub)
    for p in (demo, sub.choices["run"], sub.choices["batch"], sub.choices["run-workflow"]):
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
    return parser


def run_settings(argv: list[str]):
    """The :class:`~comboverse_ops.app.pipeline.PipelineSettings` that ``comboverse run ARGV...`` runs
    with (``argv`` without the ``run``), without running anything."""
    args = build_parser().parse_args(["run", *argv])
    return _settings_from_args(args, prompt=args.prompt, phrases=_phrases_arg(args.phrases), device=args.device,
                               detect=args.detect)


def main(argv: list[str] | None = None) -> int:
    # MKL's GEMM bits independent of the thread count, chosen before the first product (determinism.py)
    request_reproducible_blas()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run_command(args)
        if args.command == "batch":
            return _batch_command(args)
        if args.command == "run-workflow":
            return _run_workflow_command(args)
        if args.ssds:
            from .demo_ssds import run_ssds_demo

            run_ssds_demo(args.out, device=args.device, **({} if args.steps is None else {"steps": args.steps}))
            return 0
        if not 2 <= args.objects <= 5:
            raise ValueError(f"--objects: expected 2 to 5, got {args.objects}")
        if args.size < 16:
            raise ValueError(f"--size: expected at least 16 pixels, got {args.size}")
        run_demo(args.out, seed=args.seed, size=args.size, objects=args.objects, device=args.device,
                 steps=args.steps)
        return 0
    except KeyboardInterrupt:
        if args.debug:
            raise
        sys.stderr.write("comboverse: interrupted; no output was left half-written\n")
        return 130
    except _INPUT_ERRORS as e:
        if args.debug:
            raise
        sys.stderr.write(f"comboverse: error: {_one_line(e)}\n")
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        if args.debug:
            raise
        sys.stderr.write(f"comboverse: error: {type(e).__name__}: {_one_line(e)[:500]} (a failure, not bad input; "
                         "run again with --debug for the traceback)\n")
        return EXIT_FAILED


def _add_run_parser(sub) -> None:
    """``comboverse run IMAGE --boxes ... --models DIR --out scene.glb`` (comboverse_ops/app/pipeline.py)."""
    run = sub.add_parser("run", help="the full pipeline on one picture (SAM, SD inpainting, TripoSR, InitPose, "
                                     "SSDSRefine), headless", formatter_class=_Help)
    run.add_argument("image", help="the picture (PNG, JPEG, ...)")
    run.add_argument("--boxes", default=None, help="one box per object, JSON: '[[x0,y0,x1,y1], ...]' (pixels); "
                                                   "without it, --detect finds one box per phrase")
    run.add_argument("--prompt", default="", help="the scene's text, stating the relations (used by SSDS)")
    run.add_argument("--phrases", nargs="+", default=None,
                     help="one phrase per object: several arguments (\"a red cube\" \"a blue ball\"), or one "
                          "JSON list, lines, or ';'-separated text")
    run.add_argument("--detect", default=None, help="OWLv2 model folder (save_pretrained layout): finds the box of "
                                                    "each --phrases object when --boxes is not given")
    run.add_argument("--out", default="scene.glb", help="the GLB to write; previews and report go next to it")
    _add_setting_flags(run)


# Flags the stage settings had before they were generated from the dataclasses: still accepted.
FLAG_ALIASES = {
    "refine.steps": ("--steps",),
    "lift3d.resolution": ("--mc-resolution",),
    "lift3d.density_threshold": ("--density-threshold",),
    "lift3d.max_faces": ("--max-faces",),
    "camera.fov_deg": ("--fov",),
    "camera.elevation_deg": ("--elevation",),
    "refine.weights.guidance": ("--ssds-weight",),
    "ssds.render_resolution": ("--ssds-resolution",),
}


def _add_setting_flags(run) -> None:
    """The PipelineSettings flags shared by ``run`` and ``batch``: the run's files and switches,
    ``--preset``, and one flag per stage setting, generated from the settings dataclasses."""
    from dataclasses import fields

    from .pipeline import PipelineSettings
    from .run_settings import KEEP_MODELS, RESIDENT_MIN_GIB
    from .presets import PRESETS, StageSettings
    from ..settings import add_flags, field_type

    d = PipelineSettings()
    run.add_argument("--models", default=None, help="models folder with sams/, checkpoints/, triposr/ "
                                                    "(default: $COMBOVERSE_MODELS_DIR or ./models)")
    run.add_argument("--sam", default=None, help="SAM checkpoint (default: first file in MODELS/sams/)")
    run.add_argument("--inpaint", default=None, help="SD inpainting checkpoint (default: MODELS/checkpoints/)")
    run.add_argument("--inpaint-config", default=None, help="diffusers config folder for a single-file inpainting "
                                                            "model (default: the one shipped for its kind)")
    run.add_argument("--no-inpaint", action="store_true", help="skip Inpaint; Segment's crops go to Lift3D")
    run.add_argument("--lift3d", default=None, help="TripoSR model.ckpt (default: MODELS/triposr/model.ckpt)")
    run.add_argument("--guidance", default=None, help="SD text-to-image checkpoint for SSDS (with --prompt)")
    run.add_argument("--guidance-config", default=None, help="diffusers config folder for --guidance")
    run.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--seed", type=int, default=d.seed, help="seed of every random choice; the same seed gives "
                                                               "the same asset")
    run.add_argument("--depth", default=None, help="Depth Anything V2 model folder (save_pretrained layout) for "
                                                   "InitPose's depth; without it objects start at one depth")
    run.add_argument("--preview-size", type=int, default=d.preview_size, help="longer side of the preview PNGs")
    run.add_argument("--keep-models", choices=KEEP_MODELS, default=d.keep_models,
                     help=f"where models wait between stages and runs: keep leaves them where they compute (no "
                          f"transfers; all five models peak at about 15 GiB on a GPU), offload sends each stage's "
                          f"models away when it ends (to CPU memory from a GPU, peak about 8.6 GiB; out of memory on "
                          f"a CPU run), auto keeps them on GPUs of {RESIDENT_MIN_GIB:.0f} GiB and more and offloads "
                          f"otherwise")
    run.add_argument("--preset", choices=sorted(PRESETS), default="default",
                     help="start from these stage settings (comboverse_ops/app/presets.py); the flags below override "
                          "it. paper: the paper's values (10 SSDS views, ...); fast: a quick look")
    stages = {f.name: field_type(StageSettings, f.name) for f in fields(StageSettings)}
    run.set_defaults(setting_flags=add_flags(run, stages, aliases=FLAG_ALIASES))


def _phrases_arg(values: list[str] | None) -> str | None:
    """``--phrases``: one argument as it is (JSON list, lines, ';'-separated), several as a JSON list."""
    if values is None or len(values) == 1:
        return values[0] if values else None
    return json.dumps(values)


def _run_command(args) -> int:
    from .pipeline import run_pipeline

    settings = _settings_from_args(args, prompt=args.prompt, phrases=_phrases_arg(args.phrases), device=args.device,
                                   detect=args.detect)
    run_pipeline(args.image, args.boxes, args.out, settings,
                 progress=lambda label, total: _ProgressBar(label, total))
    return 0


def _settings_from_args(args, prompt: str = "", phrases: str | None = None, device: str | None = None, **extra):
    """PipelineSettings from the flags of :func:`_add_setting_flags` (``extra``: fields only ``run`` has):
    the preset's stage settings, then every stage flag given on the command line."""
    from .pipeline import PipelineSettings
    from .presets import apply_preset, apply_values
    from ..settings import flag_name, flag_values

    stages = apply_preset(args.preset)
    for path, value in flag_values(args, args.setting_flags).items():
        stages = apply_values(stages, {path: value}, what=flag_name(path))
    return PipelineSettings(
        models_dir=args.models, sam=args.sam, inpaint=args.inpaint, inpaint_config=args.inpaint_config,
        no_inpaint=args.no_inpaint, lift3d=args.lift3d, guidance=args.guidance,
        guidance_config=args.guidance_config, prompt=prompt, phrases=phrases, device=device, seed=args.seed,
        depth=args.depth, preview_size=args.preview_size, keep_models=args.keep_models, stages=stages, **extra)


def _add_run_workflow_parser(sub) -> None:
    """``comboverse run-workflow WORKFLOW.json`` (comboverse_ops/app/workflow.py)."""
    w = sub.add_parser("run-workflow", help="an API-format ComfyUI workflow of this pack, headless, through the "
                                            "pack's node classes", formatter_class=_Help)
    w.add_argument("workflow", help="the workflow in ComfyUI's API format (Workflow > Export (API); the pack's "
                                    "workflows/api/*.json)")
    w.add_argument("--models", default=None, help="ComfyUI's models folder: sams/, checkpoints/, triposr/, ... "
                                                  "(default: $COMBOVERSE_MODELS_DIR or ./models)")
    w.add_argument("--input", default=None, help="ComfyUI's input folder: LoadImage's pictures, Meshes From File's "
                                                 "meshes (default: $COMBOVERSE_INPUT_DIR or ./input)")
    w.add_argument("--out", default=None, help="ComfyUI's output folder: ExportMesh writes its GLB under it "
                                               "(default: $COMBOVERSE_OUTPUT_DIR or ./output)")


def _run_workflow_command(args, log=print) -> int:
    import os

    from .workflow import (FOLDER_VARIABLES, core_nodes, host_folders, load_node_classes, read_workflow,
                           run_workflow, written_files)

    prompt = read_workflow(args.workflow)
    folders = {what: Path(getattr(args, what if what != "output" else "out")
                          or os.environ.get(variable) or what) for what, variable in FOLDER_VARIABLES.items()}
    node_classes = load_node_classes()
    with host_folders(folders["models"], folders["input"], folders["output"]):
        _, ui = run_workflow(prompt, node_classes, core_nodes(folders["input"]), log=log)
    for path in written_files(ui, folders["output"]):
        log(f"wrote {path}")
    return 0


def _add_batch_parser(sub) -> None:
    """``comboverse batch MANIFEST.jsonl --out DIR`` (comboverse_ops/batch/)."""
    from .batch.runner import BatchSettings

    d = BatchSettings()
    b = sub.add_parser("batch", help="many pictures on every GPU (or CPU worker) on Ray, resumable; needs "
                                     "pip install \"comfyui-comboverse[batch]\"")
    b.add_argument("manifest", help="JSONL, one scene a line: {\"image\": ..., \"boxes\": [[x0,y0,x1,y1], ...], "
                                    "\"phrases\": [...], \"prompt\": ..., \"settings\": {...}} (README: Batch)")
    b.add_argument("--out", required=True, help="output folder: scenes/<id>/, summary.jsonl, summary.csv")
    b.add_argument("--procedural", type=int, default=None, metavar="N",
                   help="first write MANIFEST with N procedural scenes with known poses (pictures next to it)")
    b.add_argument("--objects", type=int, default=3, help="objects per procedural scene (2-5)")
    b.add_argument("--size", type=int, default=256, help="procedural picture size in pixels")
    b.add_argument("--first-seed", type=int, default=0, help="seed of the first procedural scene")
    b.add_argument("--stand-ins", action="store_true",
                   help="procedural scenes only: compose from the true masks and meshes as `comboverse demo` does "
                        "(no model files; for trying batch runs and measuring the scheduler)")
    b.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto, or ray://HEAD:10001); "
                                                   "default: start a local one on this machine")
    b.add_argument("--num-cpus", type=int, default=None, help="local Ray: CPUs it may use (default: all)")
    b.add_argument("--num-gpus", type=int, default=None, help="local Ray: GPUs it may use (default: all visible)")
    b.add_argument("--workers", type=int, default=None, help="workers (default: one per GPU; without GPUs, "
                                                             "CPUs // --cpus-per-worker)")
    b.add_argument("--cpus-per-worker", type=int, default=None,
                   help="CPU cores per worker (default: CPUs per GPU up to 8; on CPUs 4)")
    b.add_argument("--gpus-per-worker", type=float, default=d.gpus_per_worker)
    b.add_argument("--in-flight", type=int, default=d.in_flight, help="scenes handed to a worker at once")
    b.add_argument("--max-retries", type=int, default=d.max_retries,
                   help="retries of a scene whose worker died or ran out of memory")
    b.add_argument("--max-restarts", type=int, default=d.max_restarts, help="restarts of a dead worker")
    b.add_argument("--detect", default=None, help="OWLv2 model folder (save_pretrained layout): finds the boxes of "
                                                  "scenes whose lines give \"phrases\" but no \"boxes\"")
    _add_setting_flags(b)


def _batch_command(args) -> int:
    """Exit status 0 when every scene is done (now or before), 1 when some failed (see the summary)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SystemExit('comboverse batch: Ray is not installed; pip install "comfyui-comboverse[batch]" '
                         '(or pip install "ray>=2.40")') from None
    from .batch import BatchSettings, run_batch, write_procedural_manifest

    if args.procedural is not None:
        write_procedural_manifest(args.manifest, args.procedural, args.first_seed, args.objects, args.size)
    bs = BatchSettings(address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus, device=args.device,
                       workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                       gpus_per_worker=args.gpus_per_worker, in_flight=args.in_flight,
                       max_retries=args.max_retries, max_restarts=args.max_restarts, stand_ins=args.stand_ins)
    result = run_batch(args.manifest, args.out,
                       _settings_from_args(args, detect=args.detect), bs)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Whole-pipeline speed and memory: ``comboverse run`` on a 3-object image, full-size random weights.

    python benchmarks/pipeline.py                    # GPU, every model full size, written in its real format
    python benchmarks/pipeline.py --ssds-views 4     # a setting of the run (any PipelineSettings field below)
    python benchmarks/pipeline.py --no-guidance --no-depth
    python benchmarks/pipeline.py --tiny             # CPU smoke test: the tests' tiny models, same formats

What it does:

1. Writes a models folder the way a user has it, with random weights at the released sizes
   (nothing is downloaded): ``sams/sam_vit_h_4b8939.pth`` (torch.save state dict, fp32),
   ``checkpoints/512-inpainting-ema.safetensors`` (SD-2-inpainting, original single-file layout,
   fp32), ``checkpoints/v1-5-pruned-emaonly.safetensors`` (SD 1.5, the guidance model),
   ``triposr/model.ckpt`` (TripoSR, released architecture), ``depth_anything/Depth-Anything-V2-Large-hf/``
   (transformers save_pretrained) and a CLIP BPE tokenizer in ``clip_tokenizer/``.
2. Runs :func:`comboverse_ops.app.pipeline.run_pipeline` (what ``comboverse run`` calls) on a
   768x768 picture of three objects, one partly hidden by another, with the boxes, a prompt and
   default settings: SAM vit_h, SD-2 inpainting 30 steps, TripoSR 256^3, Depth Anything V2
   Large, 200 refine steps with SSDS (SD 1.5, 4 views) and the physics terms, export.
   Twice in one process: ``cold`` (first run: models read from disk, CUDA kernels warmed up)
   and ``warm`` (the models are in the shared cache, offloaded to CPU memory between stages:
   what a second run inside ComfyUI costs).
3. Prints seconds per stage, peak GPU memory per stage (``torch.cuda.max_memory_allocated``, and
   ``max_memory_reserved``, which is what nvidia-smi shows of PyTorch's pool), the GPU memory
   the models still hold after the run, and the goals (<= 60 s, <= 12 GB).

Random weights compute exactly what trained ones do, but their outputs mean nothing. Where a
later stage's cost depends on an earlier output, the benchmark runs the network and then
substitutes what a trained model would give: SAM's masks -> the picture's true masks (an
ellipse in the box when re-segmenting an inpainted window), so the same object is occluded and
inpainted; TripoSR's density -> an object-like blob (``benchmarks/lift3d.py``), so marching
cubes, decimation to 50,000 faces and the refine renderer see object-sized meshes. The SD and
depth outputs are used as they come (noise in, noise out: the cost is the same). The
substitutes live in ``benchmarks/stand_ins.py``, shared with ``benchmarks/batch.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models: the tests' builders for the real file formats
sys.path.insert(0, str(ROOT / "benchmarks"))

from comboverse_ops.app.pipeline import LEGACY_NAMES, PipelineSettings, run_pipeline, with_settings  # noqa: E402
from comboverse_ops.settings import _parser_of, field_type, get_path  # noqa: E402

# Every numeric setting by its flat name (run fields, and the stage settings' old flat names): type.
NUMERIC = {f.name: {"int": int, "float": float}[f.type] for f in fields(PipelineSettings) if f.type in ("int", "float")}
NUMERIC |= {old: type(get_path(PipelineSettings().stages, new)) for old, new in LEGACY_NAMES.items()}
TEXT = ("keep_models",)  # run fields given as text, e.g. --set keep_models=offload


def _get(settings: PipelineSettings, name: str):
    return get_path(settings.stages, LEGACY_NAMES[name]) if name in LEGACY_NAMES else getattr(settings, name)
from stand_ins import substitute_trained_outputs  # noqa: E402

GOAL_SECONDS, GOAL_GB = 60.0, 12.0
STAGES = ("segment", "inpaint", "lift3d", "init_pose", "refine", "export")
# run_pipeline's log line that opens each stage (the stage before it has ended by then)
STAGE_OPENERS = {"Segment:": "segment", "Inpaint:": "inpaint", "Lift3D:": "lift3d", "InitPose:": "init_pose",
                 "SSDSRefine:": "refine", "wrote glb": "export"}
DEPTH_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                   out_indices=[5, 12, 18, 24], neck=[256, 512, 1024, 1024], fusion=256, reassemble=1024)
DEPTH_SMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                   out_indices=[3, 6, 9, 12], neck=[48, 96, 192, 384], fusion=64, reassemble=384)


def gib(n: float) -> float:
    return n / 2**30


def size_of(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------
# The models folder


def write_sd(path: Path, config: str, device) -> None:
    from safetensors.torch import save_file

    from comboverse_ops.models.sd_checkpoint import shipped_config_dir
    from tiny_models import build_sd_models, text_to_ldm, unet_to_ldm, vae_to_ldm

    family = "sd2" if config.startswith("sd2") else "sd1"
    # Random init on the device; shrunken matrices keep fp16 activations finite through 30 steps.
    unet, vae, text = build_sd_models(shipped_config_dir(config), 0, device=device, weight_scale=0.5)
    state = {**unet_to_ldm(unet), **vae_to_ldm(vae), **text_to_ldm(text, family)}
    save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, str(path))
    del unet, vae, text, state


def write_depth(folder: Path, dims: dict, device) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=dims["hidden_size"], num_hidden_layers=dims["num_hidden_layers"],
                            num_attention_heads=dims["num_attention_heads"],
                            intermediate_size=dims["intermediate_size"], image_size=518, patch_size=14,
                            reshape_hidden_states=False, out_indices=dims["out_indices"])
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=dims["reassemble"],
                              neck_hidden_sizes=dims["neck"], fusion_hidden_size=dims["fusion"],
                              head_hidden_size=32, patch_size=14, depth_estimation_type="relative")
    with torch.device(device):
        model = DepthAnythingForDepthEstimation(cfg)
    model.save_pretrained(folder)
    # As the -hf releases ship it: 518 short side, multiple of 14, ImageNet normalisation.
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DPTImageProcessor", "do_resize": True, "size": {"height": 518, "width": 518},
        "keep_aspect_ratio": True, "ensure_multiple_of": 14, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225]}))


def write_models(root: Path, tiny: bool, device, depth: str, reuse: bool = False) -> dict[str, Path]:
    """The models folder (module doc); returns the files, each timed and sized on stdout.
    ``reuse``: files already there are kept (another invocation wrote them)."""
    from comboverse_ops.lift3d.config import load_triposr_config
    from comboverse_ops.lift3d.triposr import TripoSR
    from comboverse_ops.models.sam import SAM_ARCHITECTURES, build_sam
    from tiny_models import (save_tiny_depth_anything, save_tiny_sam, save_tiny_sd, save_tiny_triposr,
                             write_tiny_tokenizer)

    files: dict[str, Path] = {}

    def timed(name: str, path: Path, write) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if reuse and path.exists():
            files[name] = path
            print(f"  kept {path.relative_to(root)}: {gib(size_of(path)):.2f} GiB")
            return
        t = time.perf_counter()
        write()
        files[name] = path
        print(f"  wrote {path.relative_to(root)}: {gib(size_of(path)):.2f} GiB in {time.perf_counter() - t:.1f} s")

    print(f"models folder {root}")
    if tiny:
        timed("sam", root / "sams" / "sam_tiny.pth", lambda: save_tiny_sam(root / "sams" / "sam_tiny.pth"))
        timed("inpaint", root / "checkpoints" / "tiny-sd2-inpainting.safetensors",
              lambda: save_tiny_sd(root / "checkpoints", "sd2", True))
        timed("guidance", root / "checkpoints" / "tiny-sd1.safetensors",
              lambda: save_tiny_sd(root / "checkpoints", "sd1", False))
        files["inpaint_config"] = root / "checkpoints" / "config-sd2-inpainting"
        files["guidance_config"] = root / "checkpoints" / "config-sd1"
        timed("lift3d", root / "triposr" / "model.ckpt", lambda: save_tiny_triposr(root / "triposr"))
        if depth != "none":
            timed("depth", root / "depth_anything" / "tiny",
                  lambda: save_tiny_depth_anything(root / "depth_anything" / "tiny"))
        return files

    torch.manual_seed(0)
    timed("sam", root / "sams" / "sam_vit_h_4b8939.pth",
          lambda: torch.save({k: v.cpu() for k, v in build_sam(SAM_ARCHITECTURES["vit_h"], device=device)
                              .state_dict().items()}, root / "sams" / "sam_vit_h_4b8939.pth"))
    timed("inpaint", root / "checkpoints" / "512-inpainting-ema.safetensors",
          lambda: write_sd(root / "checkpoints" / "512-inpainting-ema.safetensors", "sd2-inpainting", device))
    timed("guidance", root / "checkpoints" / "v1-5-pruned-emaonly.safetensors",
          lambda: write_sd(root / "checkpoints" / "v1-5-pruned-emaonly.safetensors", "sd1", device))
    # The tokenizer's merges only decide token ids; a small BPE keeps this file generator short.
    write_tiny_tokenizer(root / "clip_tokenizer")

    def triposr():
        with torch.device(device):
            model = TripoSR(load_triposr_config())
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, root / "triposr" / "model.ckpt")

    timed("lift3d", root / "triposr" / "model.ckpt", triposr)
    if depth != "none":
        name = f"Depth-Anything-V2-{depth.capitalize()}-hf"
        timed("depth", root / "depth_anything" / name,
              lambda: write_depth(root / "depth_anything" / name, DEPTH_LARGE if depth == "large" else DEPTH_SMALL,
                                  device))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return files


# ---------------------------------------------------------------------------------------------
# The picture


def three_objects(size: int):
    """A red box partly behind a blue one, a green one on the right: ``(image, boxes, masks, prompt)``."""
    image = torch.full((size, size, 3), 0.93)
    s = size / 100
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")

    def rect(x0, y0, x1, y1):
        return (xx >= x0 * s) & (xx < x1 * s) & (yy >= y0 * s) & (yy < y1 * s)

    red, blue = rect(12, 22, 46, 58), rect(32, 38, 66, 80)
    green = ((xx / s - 82) / 12) ** 2 + ((yy / s - 66) / 16) ** 2 <= 1
    for m, c in ((red, (0.85, 0.15, 0.12)), (blue, (0.15, 0.25, 0.85)), (green, (0.15, 0.7, 0.25))):
        image[m] = torch.tensor(c)
    masks = torch.stack([red & ~blue, blue, green])
    boxes = [[12 * s, 22 * s, 46 * s, 58 * s], [32 * s, 38 * s, 66 * s, 80 * s], [70 * s, 50 * s, 94 * s, 82 * s]]
    prompt = "a red box behind a blue box, a green ball (next to) the blue box"
    return image, boxes, masks, prompt


# ---------------------------------------------------------------------------------------------
# Measuring


class StageMemory:
    """Peak GPU memory per stage, from run_pipeline's log lines (each opens a stage)."""

    def __init__(self, device: torch.device):
        self.device, self.stage, self.peaks = device, None, {}
        self.t0 = time.perf_counter()

    def close(self):
        if self.stage is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peaks[self.stage] = (torch.cuda.max_memory_allocated(self.device),
                                      torch.cuda.max_memory_reserved(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)

    def log(self, line: str) -> None:
        for opener, stage in STAGE_OPENERS.items():
            if line.startswith(opener) and stage != self.stage and stage not in self.peaks:
                self.close()
                self.stage = stage
        print(f"    [{time.perf_counter() - self.t0:7.1f} s] {line}", flush=True)  # stage times of a run cut short


def run_once(label: str, image_path: Path, boxes, out: Path, settings: PipelineSettings, device,
             profile_dir: Path | None = None) -> dict:
    if profile_dir is not None:  # the same run under cProfile: where the wall time goes, per function
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        result = prof.runcall(run_once, label, image_path, boxes, out, settings, device)
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text).strip_dirs()
        stats.sort_stats("cumulative").print_stats(70)
        stats.sort_stats("tottime").print_stats(40)
        profile_dir.mkdir(parents=True, exist_ok=True)
        (profile_dir / f"profile_{label.replace('=', '-').replace(',', '_')[:60]}.txt").write_text(text.getvalue())
        return result
    mem = StageMemory(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    print(f"[{label}]")
    report = run_pipeline(image_path, boxes, out, settings, log=mem.log)
    mem.close()
    held = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    return {"label": label, "seconds": report["seconds"], "peaks": mem.peaks, "held": held,
            "refine_steps_run": report.get("refine_steps_run"),
            "faces": [o["faces"] for o in report["objects"]], "inpainted": [o["inpainted"] for o in report["objects"]],
            "losses": report["losses"]}


def print_table(runs: list[dict], device) -> None:
    cuda = device.type == "cuda"
    head = f"{'stage':<10}" + "".join(f" | {r['label'][:9]:>9} s" + (" | alloc GiB | pool GiB" if cuda else "")
                                      for r in runs)
    print(head)
    print("-" * len(head))
    for st in (*STAGES, "total"):
        row = f"{st:<10}"
        for r in runs:
            row += f" | {r['seconds'].get(st, float('nan')):11.2f}"
            if cuda:
                if st == "total":
                    a = max((p[0] for p in r["peaks"].values()), default=0)
                    p = max((p[1] for p in r["peaks"].values()), default=0)
                else:
                    a, p = r["peaks"].get(st, (float("nan"), float("nan")))
                row += f" | {gib(a):9.2f} | {gib(p):8.2f}"
        print(row)
    for r in runs:
        t = r["seconds"]["total"]
        line = f"{r['label']}: total {t:.1f} s ({t / GOAL_SECONDS:.2f}x the {GOAL_SECONDS:.0f} s goal)"
        if cuda:
            peak = max((p[0] for p in r["peaks"].values()), default=0)
            line += (f", peak {gib(peak):.2f} GiB ({gib(peak) / (GOAL_GB * 1e9 / 2**30):.2f}x the {GOAL_GB:.0f} GB "
                     f"goal), models still on the GPU after the run: {gib(r['held']):.2f} GiB")
        print(line)
    print(f"faces per object: {runs[0]['faces']}; inpainted: {runs[0]['inpainted']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny models on the CPU (smoke test)")
    ap.add_argument("--device", default=None, help="default: cuda when available (never with --tiny), else cpu")
    ap.add_argument("--depth", default="large", choices=["large", "small", "none"],
                    help="Depth Anything V2 size for InitPose (none: the same-depth start)")
    ap.add_argument("--no-guidance", action="store_true", help="refine without SSDS (reference view + physics)")
    ap.add_argument("--runs", type=int, default=2, help="pipeline runs in one process (1st cold, then warm)")
    ap.add_argument("--models", type=Path, default=None, help="models folder to write into (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None,
                    help="write the measurements here (default on a GPU: docs/pipeline_benchmark.json); an existing "
                         "file of this benchmark gets this invocation appended, so two runs are kept side by side")
    ap.add_argument("--also", action="append", default=[], metavar="FIELD=VALUE[,FIELD=VALUE]",
                    help="one more (warm) run with these settings changed, e.g. --also ssds_views=4; repeatable")
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE[,PATH=VALUE]",
                    help="settings of every run, by dotted path, e.g. --set refine.guided_steps=120,inpaint.scheduler=model")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="run every pipeline run under cProfile and write its top functions to DIR (slower)")
    ap.add_argument("--reuse-models", action="store_true",
                    help="with --models: use the files already there (written by an earlier invocation)")
    for name, t in NUMERIC.items():  # every numeric setting of the run, e.g. --ssds-views 4
        ap.add_argument("--" + name.replace("_", "-"), type=t, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    import diffusers
    import transformers
    print(f"device {name}; torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"transformers {transformers.__version__}; {'tiny' if args.tiny else 'full-size random'} models")

    with tempfile.TemporaryDirectory() as tmp:
        root = args.models or Path(tmp) / "models"
        t = time.perf_counter()
        files = write_models(root, args.tiny, device, args.depth, reuse=args.reuse_models)
        print(f"  models written in {time.perf_counter() - t:.1f} s")
        size = 128 if args.tiny else 768
        image, boxes, masks, prompt = three_objects(size)
        from comboverse_ops.meshio.atomic import save_png_atomic
        image_path = save_png_atomic(Path(tmp) / "three_objects.png", image)
        notes = substitute_trained_outputs(masks, (size, size))
        overrides = {name: getattr(args, name) for name in NUMERIC if getattr(args, name) is not None}
        for spec in args.set:
            overrides |= parse_also(spec)
        settings = PipelineSettings(models_dir=str(root), device=str(device), prompt=prompt,
                                    inpaint=str(files["inpaint"]), inpaint_config=_str(files.get("inpaint_config")),
                                    guidance=None if args.no_guidance else str(files["guidance"]),
                                    guidance_config=_str(files.get("guidance_config")),
                                    depth=_str(files.get("depth")), phrases="a red box; a blue box; a green ball")
        if args.tiny:  # small enough for 2 CPU cores in seconds
            settings = with_settings(settings, dict(inpaint_steps=2, inpaint_resolution=64, mc_resolution=32,
                                                    refine_steps=3, refine_resolution=32, ssds_views=2,
                                                    ssds_resolution=32, preview_size=64))
        settings = with_settings(settings, overrides)
        print("settings: " + ", ".join(f"{k}={_get(settings, k)}" for k in (
            "inpaint_steps", "inpaint_resolution", "mc_resolution", "max_faces", "refine_steps",
            "refine_resolution", "ssds_views", "ssds_resolution")) + f", depth={args.depth}, "
              f"guidance={'off' if args.no_guidance else 'SD 1.5'}, keep_models={settings.keep_models}")
        runs = [run_once("cold" if i == 0 else f"warm{'' if args.runs == 2 else i}", image_path, boxes,
                         Path(tmp) / f"run{i}" / "scene.glb", settings, device, args.profile) for i in range(args.runs)]
        for k, spec in enumerate(args.also):
            changed = parse_also(spec)
            runs.append(run_once(",".join(f"{a}={b}" for a, b in changed.items()), image_path, boxes,
                                 Path(tmp) / f"also{k}" / "scene.glb", with_settings(settings, changed), device,
                                 args.profile)
                        | {"changed": changed})
    print()
    print_table(runs, device)
    for n in notes:
        print("substituted:", n)
    path = args.json or (ROOT / "docs" / "pipeline_benchmark.json" if device.type == "cuda" else None)
    if path is not None:
        write_json(path, name, settings, runs, notes)
    return 0


def write_json(path: Path, device_name: str, settings: PipelineSettings, runs: list[dict], notes: list[str]) -> None:
    """Append this invocation (card, versions, settings, per-stage seconds and peak GiB of every run) to ``path``."""
    import diffusers
    import transformers

    def run_record(r: dict) -> dict:
        return {"label": r["label"], "seconds": r["seconds"], "settings": r.get("changed", {}),
                "refine_steps_run": r.get("refine_steps_run"),
                "peak_alloc_gib": {k: round(gib(v[0]), 3) for k, v in r["peaks"].items()},
                "peak_pool_gib": {k: round(gib(v[1]), 3) for k, v in r["peaks"].items()},
                "held_after_gib": round(gib(r["held"]), 3), "faces": r["faces"], "inpainted": r["inpainted"]}

    record = {"device": device_name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "diffusers": diffusers.__version__, "transformers": transformers.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": {k: v for k, v in asdict(settings).items() if k not in (
                  "models_dir", "inpaint", "inpaint_config", "guidance", "guidance_config", "depth", "sam", "lift3d",
                  "detect")},
              "substituted": notes, "runs": [run_record(r) for r in runs]}
    old = json.loads(path.read_text()) if path.exists() else {}
    invocations = old.get("invocations", []) if old.get("benchmark") == "benchmarks/pipeline.py" else []
    data = {"benchmark": "benchmarks/pipeline.py", "invocations": invocations + [record]}
    from comboverse_ops.meshio.atomic import write_bytes_atomic
    write_bytes_atomic(path, (json.dumps(data, indent=1, default=str) + "\n").encode())


def parse_also(spec: str) -> dict:
    """``"ssds_views=4,refine.guided_steps=100"`` -> typed changes: a run field or old flat name
    (:data:`NUMERIC`), or any stage setting by its dotted path (typed like its default)."""
    out = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key in NUMERIC:
            out[key] = NUMERIC[key](value)
            continue
        if key in TEXT:
            out[key] = value
            continue
        try:
            default = get_path(PipelineSettings().stages, key)
        except AttributeError:
            raise SystemExit(f"--also/--set: {key!r} is neither a setting's dotted path (e.g. refine.guided_steps) "
                             f"nor one of {sorted(NUMERIC)}") from None
        parent, _, name = key.rpartition(".")
        kind = field_type(type(get_path(PipelineSettings().stages, parent)), name)
        if kind is bool:
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, tuple):  # e.g. ssds.t_range=0.7 0.9
            out[key] = tuple(type(d)(v) for d, v in zip(default, value.split()))
        else:  # as the CLI parses it (X | None takes "none")
            out[key] = _parser_of(kind)(value)
    return out


def _str(p: Path | None) -> str | None:
    return None if p is None else str(p)


if __name__ == "__main__":
    sys.exit(main())

"""Layout benchmark: procedural scenes with known poses, initialisation and refinement variants.

    python benchmarks/layout.py --scenes 30 --workers 16 --out docs/layout_benchmark.md
    python benchmarks/layout.py --scenes 4 --steps 40 --workers 2        # a quick look

Every scene (2-5 primitives, on-top-of and occlusion relations) is initialised from its true
visible masks and boxes and a simulated monocular depth map, at three levels: per-pixel noise
of 5% and 15%, and 5% noise plus a wrong global scale and shift of the disparity (as monocular
estimators give). Then each variant refines it from the reference view alone. Reported per
variant (means over scenes): translation error / scene extent (unaligned, and after aligning
the whole scene by one scale about the reference camera), scale and rotation error, 3D box IoU,
reference-view and novel-view (4 other views) mask IoU, interpenetration volume, and the share
of scenes whose novel-view IoU beats initialisation. Novel-view IoU is also given after that
one-scale alignment: a scene scaled about the camera looks identical from it, so only the
aligned number measures the recovered layout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comboverse_ops.compose.init_pose import InitSettings, init_poses  # noqa: E402
from comboverse_ops.types.layout import Layout  # noqa: E402
from comboverse_ops.synthetic.metrics import scene_metrics  # noqa: E402
from comboverse_ops.synthetic.procedural import ProceduralSettings, make_procedural_scene, novel_cameras  # noqa: E402
from comboverse_ops.compose.refine import LossWeights, RefineSettings, RefineTargets, refine_poses  # noqa: E402

PAPER = LossWeights(silhouette=0, penetration=0, support=0)
DEFAULT = "default: camera+support+penetration"
VARIANTS = {  # name -> RefineSettings (None: initialisation only)
    "init": None,
    "paper": RefineSettings(weights=PAPER, lr_rotation=0.001),
    "paper+silhouette": RefineSettings(weights=replace(PAPER, silhouette=1000.0), lr_rotation=0.001),
    "paper+support": RefineSettings(weights=replace(PAPER, support=1e4), lr_rotation=0.001),
    DEFAULT: RefineSettings(),
    "camera+all": RefineSettings(weights=replace(LossWeights(), silhouette=1000.0)),
    # speed schedules of the twenty-second issue (docs/pipeline_benchmark.md)
    "default, 120 steps": RefineSettings(steps=120),
    "default, stop 0.002": RefineSettings(stop_tolerance=0.002),
    "ray": RefineSettings(parameterization="ray", weights=PAPER),
    "ray+support": RefineSettings(parameterization="ray", weights=replace(PAPER, support=1e4)),
    "ray+all": RefineSettings(parameterization="ray", weights=replace(LossWeights(), silhouette=1000.0)),
    "ray+all-penetration": RefineSettings(parameterization="ray",
                                          weights=replace(LossWeights(), silhouette=1000.0, penetration=0)),
    "ray+all, rotation lr 0.001 (paper)": RefineSettings(parameterization="ray", lr_rotation=0.001,
                                                         weights=replace(LossWeights(), silhouette=1000.0)),
}
DEPTHS = ("noise 5%", "noise 15%", "noise 5% + scale/shift")
MAIN_VARIANTS = ("init", "paper", DEFAULT, "camera+all", "ray+all")  # at every depth level; the rest at 5%


def simulated_disparity(depth: torch.Tensor, alpha: torch.Tensor, level: str, seed: int) -> torch.Tensor:
    """What a monocular estimator might return: noisy (and maybe affinely wrong) disparity."""
    g = torch.Generator().manual_seed(seed)
    sigma = 0.15 if "15%" in level else 0.05
    noisy = depth * (1 + sigma * torch.randn(depth.shape, generator=g))
    disp = torch.where(alpha > 0.5, 1 / noisy.clamp_min(1e-3), torch.zeros_like(noisy))
    if "shift" in level:
        a = 0.5 + 1.5 * float(torch.rand(1, generator=g))
        b = (0.2 + 0.4 * float(torch.rand(1, generator=g))) * float(disp[alpha > 0.5].mean())
        disp = torch.where(alpha > 0.5, a * disp + b, disp)
    return disp


def run_one(task) -> dict:
    seed, level, variant, steps, size = task
    torch.set_num_threads(1)
    proc = make_procedural_scene(seed, ProceduralSettings(image_size=size))
    obs = proc.observe()
    layout = Layout(obs.boxes, (size, size), proc.phrases, obs.masks)
    disp = simulated_disparity(obs.depth, obs.alpha, level, seed)
    # Simulated metric disparity (1 / depth, 0 off the objects), read exactly rather than as a normalised map.
    start = proc.scene.with_poses(init_poses([o.mesh for o in proc.scene.objects], layout, proc.camera, disp,
                                             InitSettings(map_floor=0.0)))
    t0 = time.perf_counter()
    settings = VARIANTS[variant]
    if settings is not None:
        # a variant's own step count wins over --steps
        steps = settings.steps if settings.steps != RefineSettings().steps else steps
        result = refine_poses(start, RefineTargets.from_masks(obs.image, obs.masks),
                              replace(settings, steps=steps, backend="torch"))
        start, steps_run = result.scene, result.steps
    else:
        steps_run = 0
    seconds = time.perf_counter() - t0
    m = scene_metrics(start, proc.scene, novel_cameras(proc, 4))
    return {"seed": seed, "depth": level, "variant": variant, "objects": len(proc.scene.objects),
            "seconds": seconds, "steps_run": steps_run, **m}


def summarise(rows: list[dict]) -> str:
    cols = [("translation", "t err", 3), ("translation_aligned", "t err aligned", 3), ("scale", "scale err", 3),
            ("rotation_deg", "rot err (deg)", 1), ("box3d_iou", "3D box IoU", 3), ("ref_mask_iou", "ref IoU", 3),
            ("novel_mask_iou", "novel IoU", 3), ("novel_mask_iou_aligned", "novel IoU aligned", 3),
            ("interpenetration", "interpen. (1e-3 u^3)", 2),
            ("steps_run", "steps", 0), ("seconds", "s/scene", 1)]
    init = {(r["seed"], r["depth"]): r for r in rows if r["variant"] == "init"}
    out = ["| depth input | variant | " + " | ".join(c[1] for c in cols) + " | aligned novel IoU > init |",
           "|---|---|" + "---|" * (len(cols) + 1)]
    for level in DEPTHS:
        for variant in VARIANTS:
            sel = [r for r in rows if r["depth"] == level and r["variant"] == variant]
            if not sel:
                continue
            cells = []
            for key, _, digits in cols:
                vals = [r[key] for r in sel if key in r]  # rows of earlier runs lack steps_run
                v = statistics.mean(vals) * (1000 if key == "interpenetration" else 1) if vals else float("nan")
                cells.append(f"{v:.{digits}f}")
            key = "novel_mask_iou_aligned"
            better = "" if variant == "init" else \
                f"{sum(r[key] > init[(r['seed'], level)][key] for r in sel) / len(sel):.0%}"
            out.append(f"| {level} | {variant} | " + " | ".join(cells) + f" | {better} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=30)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--variants", nargs="*", default=None, help="run only these variants (and init)")
    ap.add_argument("--merge", type=Path, nargs="*", default=None,
                    help="only summarise rows saved earlier (.jsonl files from --out)")
    ap.add_argument("--steps", type=int, default=RefineSettings().steps)
    ap.add_argument("--size", type=int, default=256, help="reference image size")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None,
                    help="write the table (markdown) here and the rows beside it (.jsonl, as they finish)")
    args = ap.parse_args()
    t0 = time.time()
    if args.merge:
        rows = [json.loads(line) for f in args.merge for line in f.read_text().splitlines() if line.strip()]
        head = (f"{len({r['seed'] for r in rows})} scenes, {args.steps} steps at 128 px, reference image "
                f"{args.size} px, torch renderer on CPU (merged runs)")
    else:
        seeds = range(args.first_seed, args.first_seed + args.scenes)
        wanted = set(args.variants or VARIANTS) | {"init"}
        tasks = [(seed, level, v, args.steps, args.size) for seed in seeds for level in DEPTHS
                 for v in VARIANTS if v in wanted and (level == DEPTHS[0] or v in MAIN_VARIANTS or args.variants)]
        stream = None
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            stream = args.out.with_suffix(".jsonl").open("w")
        with mp.get_context("spawn").Pool(args.workers) as pool:
            rows = []
            for i, r in enumerate(pool.imap_unordered(run_one, tasks), 1):
                rows.append(r)
                if stream:
                    stream.write(json.dumps(r) + "\n")
                    stream.flush()
                if i % 20 == 0 or i == len(tasks):
                    print(f"{i}/{len(tasks)} runs, {time.time() - t0:.0f} s", flush=True)
        head = (f"{args.scenes} scenes, {args.steps} steps at 128 px, reference image {args.size} px, "
                f"torch renderer on CPU, {time.time() - t0:.0f} s wall with {args.workers} workers")
    table = summarise(rows)
    print(head + "\n\n" + table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# Layout benchmark\n\n{head}\n\n{table}\n")


if __name__ == "__main__":
    main()

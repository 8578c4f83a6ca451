"""Does SSDS move a layout the right way? The paper's guidance ablation on scenes with known answers.

    python benchmarks/ssds_effect.py --set report --scenes 60 --workers 16          # GPU, shipped prior
    python benchmarks/ssds_effect.py --set tune --scenes 30 --variants main --workers 16
    python benchmarks/ssds_effect.py --tiny --scenes 2 --steps 5 --workers 0        # CPU smoke run

Scenes (:mod:`comboverse_ops.synthetic.ambiguous`): procedural scenes of 2 (some 3) primitives whose
InitPose start breaks the caption's relation where the reference view cannot see it (depth
order swapped, the "behind" object started in front at a smaller scale, the "on top" object
floating or sunk). The caption is viewer-relative, in the spatial prior's words ("a red cube
behind a blue sphere"). Tuning set and report set use different seeds (``--set``).

Each variant refines every scene with :func:`comboverse_ops.compose.refine.refine_poses` (today's layout
defaults) and the guidance below, with and without the physics terms (``penetration`` and
``support`` weights of :class:`~comboverse_ops.compose.refine.LossWeights`):

- ``ref``: reference view only, no guidance (the paper's "no guidance");
- ``sds``: plain SDS, no reweighting (``reweight = 1``), ``t`` uniform in ``[0.02, 0.98]``;
- ``sds-high``: no reweighting, ``t`` in ``[0.8, 0.9]`` (separates the two ingredients; not in the paper);
- ``ssds-uniform``: reweight 25, ``t`` uniform in ``[0.02, 0.98]``;
- ``ssds-low``: reweight 25, ``t`` in ``[0.02, 0.3]`` (low noise);
- ``ssds``: full SSDS, reweight 25, ``t`` in ``[0.8, 0.9]``;

at 4 views per step, guidance scale 100 and novel views at azimuth offsets ``(-90, 90)`` from
the reference, plus sweeps of full SSDS (with physics): 10 views, scales 7.5 and 30, azimuth
offsets ``(-30, 30)`` (a viewer-relative prior judges front/behind from views near the
reference), and refine's ``ray`` parameterisation (moving an object along its viewing ray keeps
its reference image, so the reference loss no longer resists a depth fix), reference only and
full SSDS. Any variant also takes ``c C`` (relation-token reweighting instead of the kind's 1 or
25) and ``guided P%`` (guidance in the first P% of the steps only, :attr:`RefineSettings.guidance_until`;
the rest refine on the reference view and physics), and ``depth only`` (the guidance moves each object only along
its viewing ray, position and size together, :attr:`RefineSettings.guidance_moves`), ``every K``
(guidance on every K-th step, :attr:`RefineSettings.guidance_every`), ``stop T`` (the convergence
stop, :attr:`RefineSettings.stop_tolerance`) and ``N steps`` (instead of ``--steps``): the speed
schedules of the twenty-second issue, whose rows say the steps actually run.
``--variants`` takes names, or the groups ``main``, ``sweeps``, ``core`` (10 variants
that answer the issue's targets), ``all`` (default),
separated by ``;`` (any combination can be named, e.g. ``"ssds+phys (10 views, scale 30, az
-45..45, ray)"``).

Metrics (means over scenes; definitions in :mod:`comboverse_ops.synthetic.metrics` and
:mod:`comboverse_ops.compose.relations`): relation satisfied in 3D (share of scenes whose every stated
relation holds after refining; ``init``: before), translation error over the scene extent
(unaligned and after the one-scale alignment about the camera), 3D box IoU (after alignment),
novel-view mask IoU (4 views; unaligned and aligned), reference-view IoU, Chamfer distance and
F-score at 0.1 of the scene normalised to [-0.95, 0.95] by the truth (SceneGen), ADD-S@0.1 (SAM 3D
Objects). Also, per variant, the ratio of the guidance's gradient norm to the reference loss's on
the objects' pose parameters (translation, scale, rotation), over the first ``--probe-steps``
steps: the diagnostic for "SSDS does nothing" (a tiny ratio means the reference terms drown it).

Runs ``--workers`` processes (torch.multiprocessing, spawn), each with its own copy of the model
on one of the visible GPUs (taken in turn); a tiny 64-pixel prior leaves a GPU mostly idle per
process, so many processes share
it. Rows go to ``<out>.jsonl`` as they finish; the table to ``--out`` (markdown) and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comboverse_ops.synthetic.ambiguous import AmbiguousScene, set_scene  # noqa: E402
from comboverse_ops.types.camera import Cameras  # noqa: E402
from comboverse_ops.synthetic.metrics import box3d_iou, scene_metrics, surface_metrics  # noqa: E402
from comboverse_ops.synthetic.procedural import novel_cameras  # noqa: E402
from comboverse_ops.compose.refine import LossWeights, RefineSettings, RefineTargets, refine_poses  # noqa: E402
from comboverse_ops.render import render_scene  # noqa: E402
from comboverse_ops.types.scene import Scene  # noqa: E402

DEFAULT_PRIOR = ROOT / "comboverse_ops" / "assets" / "spatial_prior"

# guidance kind -> SSDSSettings fields (None: no guidance)
GUIDANCE = {
    "ref": None,
    "sds": {"reweight": 1.0, "t_range": (0.02, 0.98)},
    "sds-high": {"reweight": 1.0, "t_range": (0.8, 0.9)},
    "ssds-uniform": {"reweight": 25.0, "t_range": (0.02, 0.98)},
    "ssds-low": {"reweight": 25.0, "t_range": (0.02, 0.3)},
    "ssds": {"reweight": 25.0, "t_range": (0.8, 0.9)},
}
# The paper's ablation rows (METHOD.md; CLIP ViT-B/16 colour / geometry), cited beside ours.
PAPER = {"ref": "no guidance 86.62 / 75.24", "sds": "SDS 84.16 / 78.25",
         "ssds-uniform": "SSDS, uniform t 85.33 / 78.49",
         "ssds-low": "SSDS, low-noise t 84.86 / 79.03", "ssds": "full SSDS 89.01 / 79.66"}


@dataclass(frozen=True)
class Variant:
    """One row of the table."""

    guidance: str  # key of GUIDANCE
    physics: bool  # penetration and support terms on (LossWeights defaults) or off
    views: int = 4
    scale: float = 100.0
    azimuth: tuple[float, float] = (-90.0, 90.0)
    ray: bool = False  # refine's "ray" parameterisation: depth moves keep the reference image
    reweight: float | None = None  # c, instead of the guidance kind's (1 or 25)
    until: float = 1.0  # RefineSettings.guidance_until: share of the steps, from the first, with guidance
    depth_only: bool = False  # RefineSettings.guidance_moves = "depth": guidance moves along viewing rays only
    every: int = 1  # RefineSettings.guidance_every: guidance on every k-th step
    stop: float = 0.0  # RefineSettings.stop_tolerance: convergence stop (0: all steps)
    steps: int | None = None  # refine steps, instead of --steps

    @property
    def name(self) -> str:
        out = self.guidance + ("+phys" if self.physics else "")
        extra = (["ray"] if self.ray else []) + (["depth only"] if self.depth_only else [])
        if self.steps is not None:
            extra.append(f"{self.steps} steps")
        if self.stop:
            extra.append(f"stop {self.stop:g}")
        if self.guidance == "ref":
            return out + (f" ({', '.join(extra)})" if extra else "")
        if self.views != 4:
            extra.append(f"{self.views} views")
        if self.scale != 100.0:
            extra.append(f"scale {self.scale:g}")
        if tuple(self.azimuth) != (-90.0, 90.0):
            extra.append(f"az {self.azimuth[0]:g}..{self.azimuth[1]:g}")
        if self.reweight is not None:
            extra.append(f"c {self.reweight:g}")
        if self.until != 1.0:
            extra.append(f"guided {100 * self.until:g}%")
        if self.every != 1:
            extra.append(f"every {self.every}")
        return out + (f" ({', '.join(extra)})" if extra else "")


def parse_variant(name: str) -> Variant:
    """The :class:`Variant` whose :attr:`Variant.name` is ``name``: any combination may be asked for,
    e.g. ``"ssds+phys (10 views, scale 30, az -45..45)"``."""
    m = re.fullmatch(r"\s*([a-z-]+)(\+phys)?\s*(?:\((.*)\))?\s*", name)
    if not m or m.group(1) not in GUIDANCE:
        raise ValueError(f"variant {name!r}: expected '<guidance>[+phys][ (N views, scale S, az A..B)]' with "
                         f"<guidance> one of {list(GUIDANCE)}")
    v = Variant(m.group(1), bool(m.group(2)))
    for part in filter(None, (p.strip() for p in (m.group(3) or "").split(","))):
        if (k := re.fullmatch(r"(\d+) views", part)):
            v = replace(v, views=int(k.group(1)))
        elif (k := re.fullmatch(r"scale ([\d.]+)", part)):
            v = replace(v, scale=float(k.group(1)))
        elif part == "ray":
            v = replace(v, ray=True)
        elif part == "depth only":
            v = replace(v, depth_only=True)
        elif (k := re.fullmatch(r"az (-?[\d.]+)\.\.(-?[\d.]+)", part)):
            v = replace(v, azimuth=(float(k.group(1)), float(k.group(2))))
        elif (k := re.fullmatch(r"c ([\d.]+)", part)):
            v = replace(v, reweight=float(k.group(1)))
        elif (k := re.fullmatch(r"guided ([\d.]+)%", part)):
            v = replace(v, until=float(k.group(1)) / 100)
        elif (k := re.fullmatch(r"every (\d+)", part)):
            v = replace(v, every=int(k.group(1)))
        elif (k := re.fullmatch(r"stop ([\d.e-]+)", part)):
            v = replace(v, stop=float(k.group(1)))
        elif (k := re.fullmatch(r"(\d+) steps", part)):
            v = replace(v, steps=int(k.group(1)))
        else:
            raise ValueError(f"variant {name!r}: unknown option {part!r}; expected 'N views', 'scale S', "
                             "'az A..B' (degrees from the reference azimuth), 'c C' (relation-token "
                             "reweighting), 'guided P%' (guidance in the first P% of the steps), 'every K' "
                             "(guidance on every K-th step), 'stop T' (convergence stop), 'N steps', 'ray' or "
                             "'depth only' (guidance moves objects only along their viewing rays)")
    return v


MAIN = [Variant(g, p) for g in GUIDANCE for p in (False, True)]
SWEEPS = [Variant("ssds", True, views=10), Variant("ssds", True, scale=7.5), Variant("ssds", True, scale=30.0),
          Variant("ssds", True, azimuth=(-30.0, 30.0)), Variant("sds", True, azimuth=(-30.0, 30.0)),
          Variant("ssds", True, views=10, azimuth=(-30.0, 30.0)), Variant("ref", True, ray=True),
          Variant("ssds", True, ray=True)]
VARIANTS = {v.name: v for v in MAIN + SWEEPS}
# What answers the targets (SSDS vs reference only and vs plain SDS, the paper's rows with
# the pack's physics, 4 vs 10 views, near views for a viewer-relative prior) when time is short.
CORE = ["ref", "ref+phys", "sds", "sds+phys", "ssds", "ssds+phys", "ssds-uniform+phys", "ssds-low+phys",
        "ssds+phys (10 views)", "ssds+phys (az -30..30)"]
GROUPS = {"main": [v.name for v in MAIN], "sweeps": [v.name for v in SWEEPS], "core": CORE, "all": list(VARIANTS)}
INIT = "init"

# ----------------------------------------------------------------------------------------------
# Worker side

_STATE: dict = {}


def _init_worker(guidance: str | None, device: str, dtype: str, threads: int, scene_dir: str | None = None,
                 counter=None) -> None:
    torch.set_num_threads(threads)
    if counter is not None and device == "cuda" and torch.cuda.device_count() > 1:
        with counter.get_lock():  # workers take the visible GPUs in turn
            device, counter.value = f"cuda:{counter.value % torch.cuda.device_count()}", counter.value + 1
    _STATE["device"] = torch.device(device)
    if _STATE["device"].type == "cuda" and _STATE["device"].index is not None:
        torch.cuda.set_device(_STATE["device"])  # the rasterizer's context lives on the current device
    _STATE["scene_dir"] = scene_dir
    _STATE["model"] = None
    if guidance:
        from comboverse_ops.models.sd import load_sd_model

        dt = {"auto": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        _STATE["model"] = load_sd_model(guidance, expect="text2img", device=device, dtype=dt, cache=None,
                                        what="--guidance")


def _scene_file(which: str, index: int, size: int) -> str:
    return f"{which}-{index}-{size}.pt"


def _prepare(task) -> None:
    """Make one scene and save it where the workers will read it (made once, not once per worker)."""
    which, index, size = task
    torch.save(set_scene(which, index, image_size=size), Path(_STATE["scene_dir"]) / _scene_file(which, index, size))


def _scene(which: str, index: int, size: int) -> AmbiguousScene:
    """Scene ``index`` of set ``which``: from the prepared file, else made here; kept per worker."""
    cache = _STATE.setdefault("scenes", {})
    key = (which, index, size)
    if key not in cache:
        path = Path(_STATE.get("scene_dir") or "") / _scene_file(which, index, size)
        cache[key] = torch.load(path, weights_only=False) if _STATE.get("scene_dir") and path.is_file() else \
            set_scene(which, index, image_size=size)
    return cache[key]


class GradientProbe:
    """Wraps a guidance: for the first ``steps`` steps, also the norms of the guidance's and the
    reference loss's gradients w.r.t. the objects' pose tensors (as refine_poses weights them)."""

    def __init__(self, guidance, targets: RefineTargets, settings: RefineSettings, steps: int):
        self.guidance, self.steps = guidance, steps
        self.w = settings.weights
        h, w = targets.image.shape[:2]
        f = settings.resolution / max(h, w)
        self.hw = (max(8, round(h * f)), max(8, round(w * f)))
        image = F.interpolate(targets.image.float().permute(2, 0, 1)[None], size=self.hw, mode="area")[0]
        alpha = F.interpolate(targets.alpha.float()[None, None], size=self.hw, mode="area")[0, 0]
        self.alpha = alpha
        self.ref_rgb = image.permute(1, 2, 0) * alpha[..., None] + (1 - alpha[..., None])
        self.backend = settings.backend
        self.records: list[dict] = []

    def __call__(self, scene: Scene, step: int) -> dict:
        out = self.guidance(scene, step)
        if step < self.steps:
            cam0 = scene.camera
            cam = Cameras(cam0.c2w, cam0.fov_y_deg, self.hw[1], self.hw[0], cam0.near, cam0.far)
            r = render_scene(scene, cam, backend=self.backend, check=False)
            dev = r.rgb.device
            ref = self.w.ref_rgb * (r.rgb[0] - self.ref_rgb.to(dev)).abs().mean() + \
                self.w.ref_alpha * (r.alpha[0] - self.alpha.to(dev)).abs().mean()
            inputs = [t for p in scene.poses for t in (p.translation, p.scale, p.rotation)]
            live = [k for k, t in enumerate(inputs) if t.requires_grad]  # "depth only": rotations are detached

            def grad(loss):
                gs = torch.autograd.grad(loss, [inputs[k] for k in live], retain_graph=True, allow_unused=True)
                out_ = [None] * len(inputs)
                for k, g in zip(live, gs):
                    out_[k] = g
                return out_

            g_ssds = grad(self.w.guidance * out["loss_ssds"])
            g_ref = grad(ref)

            def norm(gs, which=None):
                sel = [g for k, g in enumerate(gs) if g is not None and (which is None or k % 3 == which)]
                return float(torch.sqrt(sum((g.float() ** 2).sum() for g in sel))) if sel else 0.0

            self.records.append({"ssds": norm(g_ssds), "ref": norm(g_ref), "ssds_t": norm(g_ssds, 0),
                                 "ref_t": norm(g_ref, 0)})
        return out


def _metrics(est: Scene, amb: AmbiguousScene, novel: Cameras, points: int) -> dict:
    truth = amb.truth.scene.to(est.objects[0].mesh.device)
    m = scene_metrics(est, truth, novel.to(est.objects[0].mesh.device))
    m |= surface_metrics(est, truth, n=points, seed=amb.seed)
    box = box3d_iou(est, truth)
    m["box3d_iou_unaligned"] = sum(box) / len(box)
    holds = amb.holds(est)
    m["relation"] = float(all(holds))
    m["relation_triples"] = sum(holds) / len(holds)
    m["holds"] = holds
    return m


def _run(task) -> dict:
    which, index, size, name, opts = task
    amb = _scene(which, index, size)
    device = _STATE["device"]
    t0, c0 = time.perf_counter(), time.process_time()
    start = amb.start.to(device)
    novel = novel_cameras(amb.truth, 4)
    row = {"set": opts["set"], "seed": amb.seed, "corruption": amb.corruption, "caption": amb.caption,
           "objects": len(amb.start.objects), "fallback": amb.fallback, "variant": name}
    if name == INIT:
        return row | _metrics(start, amb, novel, opts["points"]) | {"seconds": 0.0}
    v = parse_variant(name)
    weights = LossWeights() if v.physics else replace(LossWeights(), penetration=0.0, support=0.0)
    # Every row states its own schedule: guided_steps=0 so that the steps asked for are the steps run.
    settings = RefineSettings(steps=v.steps or opts["steps"], guided_steps=0, weights=weights, backend=opts["backend"],
                              preview_every=0, parameterization="ray" if v.ray else "camera", guidance_until=v.until,
                              guidance_moves="depth" if v.depth_only else "all", guidance_every=v.every,
                              stop_tolerance=v.stop)
    targets = RefineTargets.from_masks(amb.image, amb.masks)
    probe = None
    if GUIDANCE[v.guidance] is not None:
        from comboverse_ops.guidance.ssds import SSDSGuidance, SSDSSettings, ViewSampling

        model = _STATE["model"]
        if model is None:
            raise ValueError(f"variant {name!r} needs a guidance model; pass --guidance FOLDER or --tiny")
        # Renders at the prior's own resolution unless told: a 64-pixel prior gains nothing from 256.
        native = int(model.unet.config.sample_size) * 2 ** (len(model.vae.config.block_out_channels) - 1)
        s = SSDSSettings(prompt=amb.caption, views=v.views, guidance_scale=v.scale,
                         view_sampling=ViewSampling(azimuth_offset_deg=tuple(v.azimuth)),
                         render_resolution=opts["render_res"] or native, seed=amb.seed, backend=opts["backend"],
                         **(GUIDANCE[v.guidance] | ({"reweight": v.reweight} if v.reweight is not None else {})))
        guidance = SSDSGuidance(model, s)
        probe = GradientProbe(guidance, targets, settings, opts["probe_steps"])
    try:
        result = refine_poses(start, targets, settings, guidance=probe)
    finally:
        if probe is not None:
            probe.guidance.close()  # the worker's model serves the next variant as it was
    # Refine only (model set-up included, metrics not); CPU seconds tell the cost on a busy machine.
    row |= {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "steps_run": result.steps}
    row |= _metrics(result.scene, amb, novel, opts["points"])
    if probe is not None:
        rec = probe.records
        row["grad_ratio"] = [r["ssds"] / max(r["ref"], 1e-30) for r in rec]
        row["grad_ratio_translation"] = [r["ssds_t"] / max(r["ref_t"], 1e-30) for r in rec]
        row["grad_ssds"] = [r["ssds"] for r in rec]
        row["grad_ref"] = [r["ref"] for r in rec]
    return row


# ----------------------------------------------------------------------------------------------
# Table

COLUMNS = [("relation", "relation satisfied", "%"), ("translation", "t err", 3),
           ("translation_aligned", "t err aligned", 3), ("box3d_iou", "3D box IoU", 3),
           ("novel_mask_iou", "novel IoU", 3), ("novel_mask_iou_aligned", "novel IoU aligned", 3),
           ("ref_mask_iou", "ref IoU", 3), ("chamfer", "CD", 3), ("fscore", "F@0.1", 3), ("adds", "ADD-S@0.1", 3),
           ("steps_run", "steps", 0), ("seconds", "s/scene", 1)]


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def summarise(rows: list[dict]) -> tuple[str, str, str]:
    """``(main table, relation by corruption, gradient ratios)`` as markdown."""
    names = [INIT] + [n for n in VARIANTS if any(r["variant"] == n for r in rows)]
    names += sorted({r["variant"] for r in rows} - set(names))
    init = {r["seed"]: r for r in rows if r["variant"] == INIT}
    head = "| variant | scenes | " + " | ".join(c[1] for c in COLUMNS) + \
        " | relation fixed / broken vs init | paper's row (CLIP colour / geometry) |"
    out = [head, "|---|---|" + "---|" * (len(COLUMNS) + 2)]
    for n in names:
        sel = [r for r in rows if r["variant"] == n]
        if not sel:
            continue
        cells = []
        for key, _, fmt in COLUMNS:
            vals = [r[key] for r in sel if key in r]
            v = statistics.mean(vals) if vals else float("nan")
            cells.append(f"{100 * v:.0f}%" if fmt == "%" else f"{v:.{fmt}f}")
        change = ""
        if n != INIT:
            fixed = sum(r["relation"] > init[r["seed"]]["relation"] for r in sel if r["seed"] in init)
            broken = sum(r["relation"] < init[r["seed"]]["relation"] for r in sel if r["seed"] in init)
            change = f"{fixed} / {broken}"
        v = parse_variant(n) if n != INIT else None
        paper = PAPER.get(v.guidance, "") if v is not None and v == Variant(v.guidance, False) else ""
        out.append(f"| {n} | {len(sel)} | " + " | ".join(cells) + f" | {change} | {paper} |")
    kinds = sorted({r["corruption"] for r in rows})
    by = ["| variant | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for n in names:
        cells = []
        for k in kinds:
            sel = [r["relation"] for r in rows if r["variant"] == n and r["corruption"] == k]
            cells.append(f"{100 * statistics.mean(sel):.0f}% ({len(sel)})" if sel else "")
        if any(cells):
            by.append(f"| {n} | " + " | ".join(cells) + " |")
    grads = ["| variant | median ratio, all pose tensors | median ratio, translations | median SSDS grad norm | "
             "median reference grad norm |", "|---|---|---|---|---|"]
    for n in names:
        sel = [r for r in rows if r["variant"] == n and r.get("grad_ratio")]
        if not sel:
            continue
        flat = lambda k: [x for r in sel for x in r[k]]
        grads.append(f"| {n} | {_median(flat('grad_ratio')):.3g} | {_median(flat('grad_ratio_translation')):.3g} | "
                     f"{_median(flat('grad_ssds')):.3g} | {_median(flat('grad_ref')):.3g} |")
    return "\n".join(out), "\n".join(by), "\n".join(grads)


# ----------------------------------------------------------------------------------------------


def _variant_names(spec: str | None) -> list[str]:
    if not spec:
        return GROUPS["all"]
    out = []
    parts = spec.split(";") if ";" in spec or "(" in spec else spec.split(",")
    for part in parts:
        part = part.strip()
        if part in GROUPS:
            out += GROUPS[part]
        elif part:
            try:
                out.append(parse_variant(part).name)
            except ValueError as e:
                raise SystemExit(f"--variants: {e}; or a group of {list(GROUPS)}; names are separated by ';' "
                                 f"(',' too when no name has options); known: {list(VARIANTS)}") from None
    return list(dict.fromkeys(out))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guidance", default=None, help=f"spatial prior (diffusers folder); default {DEFAULT_PRIOR}")
    ap.add_argument("--tiny", action="store_true", help="a tiny random prior instead (smoke runs, CPU tests)")
    ap.add_argument("--set", default="report", choices=["tune", "report"])
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--first-scene", type=int, default=0)
    ap.add_argument("--variants", default=None, help="variant names or groups (main, sweeps, core, all), separated "
                    "by ';' (or ',' when no name has options)")
    ap.add_argument("--steps", type=int, default=RefineSettings().steps)
    ap.add_argument("--size", type=int, default=128, help="reference image size, pixels")
    ap.add_argument("--render-res", type=int, default=0, help="SSDS render resolution; 0: the prior's resolution")
    ap.add_argument("--probe-steps", type=int, default=10, help="steps over which the gradient ratio is measured")
    ap.add_argument("--points", type=int, default=1024, help="surface points per object for CD / F / ADD-S")
    ap.add_argument("--device", default=None, help="default cuda when available")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    ap.add_argument("--backend", default="auto", help="renderer backend (auto, torch, nvdiffrast)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="worker processes (0: run in this process)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker; 0: the cores / workers")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "ssds_effect.md",
                    help="markdown table; per-scene rows go beside it as .jsonl")
    ap.add_argument("--from-jsonl", type=Path, nargs="+", default=None,
                    help="summarise rows saved by earlier runs (their .jsonl files) instead of running")
    args = ap.parse_args(argv)
    t0 = time.time()
    if args.from_jsonl:
        rows = [json.loads(line) for f in args.from_jsonl for line in f.read_text().splitlines() if line.strip()]
        # Runs over the same scenes each hold an "init" row per scene (and may repeat a variant): keep one.
        rows = list({(r["set"], r["seed"], r["variant"]): r for r in rows}.values())
        # Only scenes that every variant finished (a run cut short leaves some scenes part-done).
        variants = {r["variant"] for r in rows}
        done = {}
        for r in rows:
            done.setdefault((r["set"], r["seed"]), set()).add(r["variant"])
        rows = [r for r in rows if done[(r["set"], r["seed"])] == variants]
        table, by, grads = summarise(rows)
        text = (f"{table}\n\n### Relation satisfied by start corruption\n\n{by}\n\n"
                f"### Guidance vs reference gradient on the pose tensors\n\n{grads}\n")
        print(text)
        return rows
    names = _variant_names(args.variants)
    needs_model = any(GUIDANCE[parse_variant(n).guidance] is not None for n in names)
    guidance = None
    if needs_model:
        if args.tiny:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_models import save_tiny_sd_folder

            guidance = str(save_tiny_sd_folder(Path(tempfile.mkdtemp(prefix="ssds-effect-")) / "tiny_prior"))
        else:
            guidance = str(args.guidance or DEFAULT_PRIOR)
            if not Path(guidance).is_dir():
                raise SystemExit(f"--guidance: no spatial prior folder at {guidance}; expected the diffusers folder "
                                 "of issue 12's prior (pass --guidance FOLDER, or --tiny for a random smoke-test model)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    workers = args.workers
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    opts = {"steps": args.steps, "backend": args.backend, "render_res": args.render_res, "points": args.points,
            "probe_steps": args.probe_steps, "set": args.set}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    stream = args.out.with_suffix(".jsonl").open("w")
    rows: list[dict] = []

    def collect(it, total):
        for i, r in enumerate(it, 1):
            rows.append(r)
            stream.write(json.dumps(r) + "\n")
            stream.flush()
            if i % 10 == 0 or i == total:
                print(f"{i}/{total} runs, {time.time() - t0:.0f} s", flush=True)

    # Scene by scene, every variant of a scene together (a run cut short still compares all variants
    # on the scenes it finished); within a scene the longest runs (most views) first.
    tasks = [(args.set, k, args.size, n, opts)
             for k in range(args.first_scene, args.first_scene + args.scenes)
             for n in sorted([INIT] + names, key=lambda n: -(parse_variant(n).views if n != INIT else 0))]
    if workers == 0:
        _init_worker(guidance, device, args.dtype, torch.get_num_threads())
        collect(map(_run, tasks), len(tasks))
    else:
        import torch.multiprocessing as tmp

        scene_dir = tempfile.mkdtemp(prefix="ssds-effect-scenes-")
        ctx = tmp.get_context("spawn")
        init_args = (guidance, device, args.dtype, threads, scene_dir, ctx.Value("i", 0))
        with ctx.Pool(workers, _init_worker, init_args) as pool:
            pool.map(_prepare, sorted({t[:3] for t in tasks}), chunksize=1)
            print(f"{args.scenes} scenes made, {time.time() - t0:.0f} s", flush=True)
            collect(pool.imap_unordered(_run, tasks), len(tasks))
        shutil.rmtree(scene_dir, ignore_errors=True)
    stream.close()
    table, by, grads = summarise(rows)
    dev_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    head = (f"{args.set} set, {args.scenes} scenes, {args.steps} refine steps at 128 px, reference image "
            f"{args.size} px, prior {guidance or '-'}, {dev_name}, {workers} workers, "
            f"{time.time() - t0:.0f} s wall")
    text = (f"# SSDS effect (issue 12)\n\n{head}\n\n{table}\n\n## Relation satisfied by start corruption\n\n{by}\n\n"
            f"## Guidance vs reference gradient on the pose tensors (first {args.probe_steps} steps)\n\n{grads}\n")
    print(text)
    args.out.write_text(text)
    return rows


if __name__ == "__main__":
    main()

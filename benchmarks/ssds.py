"""SSDS speed and memory: ms per refine iteration vs the bare SDS step, and peak VRAM.

    python benchmarks/ssds.py                  # SD-1.5-sized UNet + VAE, random weights, CUDA fp16
    python benchmarks/ssds.py --variants base,channels_last,compile
    python benchmarks/ssds.py --tiny           # tiny SD model on the CPU (smoke test)

For each render resolution (256, 512) and views per step (4, 10) it measures, in the same run:

- ``bare``: VAE-encode (with gradients) of ``views`` images upsampled to the model's 512, the
  UNet on the classifier-free-guidance batch (2 x views, spatial-token processor installed) and
  the backward pass to the images: the cost any SDS step pays;
- ``refine``: one full iteration of :func:`comboverse_ops.compose.refine.refine_poses` with
  :class:`comboverse_ops.guidance.ssds.SSDSGuidance` (novel-view render, reference render and losses,
  physics terms, the SDS step, backward to the poses, Adam), as the difference between runs of
  ``1 + n`` and ``1`` steps so one-off setup is not counted;

and prints ``refine / bare`` (goal: <= 1.25) and peak VRAM (torch.cuda.max_memory_allocated).
Variants (cheap wins), each timed on its own: ``base`` (fp16 weights, SDPA processor),
``channels_last`` (UNet and VAE in channels-last memory format), ``autocast`` (render-side
fp32 maths under CUDA autocast fp16), ``compile`` (torch.compile of the UNet),
``compile_vae`` (also the VAE encoder). Weights are random (diffusers configs shipped with the
pack, no downloads); the text encoder is a one-layer stand-in (it runs once per refine, not per
step). The scene is procedural: 3 objects of ``--faces`` faces each.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from comboverse_ops.compose.init_pose import init_poses
from comboverse_ops.types.layout import Layout
from comboverse_ops.models.sd import SDModel
from comboverse_ops.models.sd_checkpoint import SDCheckpointInfo, shipped_config_dir
from comboverse_ops.models.sd_text import load_clip_tokenizer
from comboverse_ops.synthetic.procedural import ProceduralSettings, make_procedural_scene
from comboverse_ops.compose.refine import RefineSettings, RefineTargets, refine_poses
from comboverse_ops.guidance.ssds import SSDSGuidance, SSDSSettings, sds_loss

VARIANTS = ("base", "channels_last", "autocast", "compile", "compile_vae")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(tiny: bool, device, dtype) -> SDModel:
    """Random-weight UNet + VAE of SD 1.5 (or the tiny test model) and a one-layer text encoder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from tiny_models import tiny_sd_configs, write_config_dir, write_tiny_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    tmp = Path(tempfile.mkdtemp(prefix="ssds-bench-"))
    vocab = write_tiny_tokenizer(tmp / "tokenizer")
    cfg_dir = write_config_dir(tmp / "tiny", tiny_sd_configs("sd1", False, vocab)) if tiny else shipped_config_dir("sd1")
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(cfg_dir), subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(cfg_dir), subfolder="vae"))
        ctx = unet.config.cross_attention_dim
        text = CLIPTextModel(CLIPTextConfig(hidden_size=ctx, intermediate_size=ctx * 2, num_attention_heads=4,
                                            num_hidden_layers=1, vocab_size=vocab, max_position_embeddings=77,
                                            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=1))
    cast = {torch.float16: "half", torch.bfloat16: "bfloat16", torch.float32: "float"}[dtype]
    unet, vae, text = (getattr(m, cast)().eval() for m in (unet, vae, text))  # .to(dtype) warns spuriously
    tok = load_clip_tokenizer([tmp / "tokenizer"], "sd1")
    sched = __import__("json").loads((shipped_config_dir("sd1") / "scheduler" / "scheduler_config.json").read_text())
    return SDModel(unet, vae, text, tok, sched, SDCheckpointInfo("sd1", False), cfg_dir)


def make_scene(device, faces: int, size: int = 256):
    proc = make_procedural_scene(0, ProceduralSettings(min_objects=3, max_objects=3, image_size=size,
                                                       faces_per_object=faces))
    obs = proc.observe()
    layout = Layout(obs.boxes, (size, size), proc.phrases, obs.masks)
    start = proc.scene.with_poses(init_poses([o.mesh for o in proc.scene.objects], layout, proc.camera))
    return start.to(device), RefineTargets.from_masks(obs.image, obs.masks)


def apply_variant(model: SDModel, variant: str) -> SDModel:
    if variant in ("channels_last", "compile", "compile_vae"):
        model.unet.to(memory_format=torch.channels_last)
        model.vae.to(memory_format=torch.channels_last)
    if variant in ("compile", "compile_vae"):
        model = replace(model, unet=torch.compile(model.unet, dynamic=False))
    if variant == "compile_vae":
        model.vae.encoder = torch.compile(model.vae.encoder, dynamic=False)
    return model


def timed(fn, device, repeats: int) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats * 1000


PROMPT = "a red box (on top of:25) a blue box"
# Guidance at every step and no convergence stop: an iteration of ``1 + n`` steps is ``1 + n``
# guided iterations (the defaults guide every 2nd step and may stop early).
EVERY_STEP = RefineSettings(steps=1, guided_steps=0, guidance_every=1, stop_tolerance=0.0, resolution=128,
                            preview_every=0)


def timed_reference_only(scene, targets, device, repeats: int) -> float:
    """ms per refine iteration without guidance (difference of ``1 + n`` and ``1`` steps)."""
    def refine(steps):
        refine_poses(scene, targets, replace(EVERY_STEP, steps=steps))
    refine(2)
    one = timed(lambda: refine(1), device, 2)
    many = timed(lambda: refine(1 + 4 * repeats), device, 1)
    return (many - one) / (4 * repeats)


def report_syncs(model, scene, targets, device, model_resolution: int) -> None:
    """Where a guided refine step waits for the GPU: torch's sync debug mode warns at every
    synchronising call; the warnings are counted by their innermost frame in the pack."""
    import collections
    import traceback
    import warnings

    settings = SSDSSettings(prompt=PROMPT, views=4, model_resolution=model_resolution or None)
    sites: collections.Counter = collections.Counter()
    steps = 6

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "comboverse_ops" in f.filename]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].line}" if frames \
            else f"{Path(filename).name}:{lineno}"
        sites[where] += 1

    with SSDSGuidance(model, settings) as guidance:
        refine_poses(scene, targets, replace(EVERY_STEP, steps=2), guidance=guidance)
        old = warnings.showwarning
        warnings.showwarning = record
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    refine_poses(scene, targets, replace(EVERY_STEP, steps=steps), guidance=guidance)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
        finally:
            warnings.showwarning = old
    print(f"GPU syncs in a {steps}-step guided refine (set-up and the final read-back included):")
    for where, count in sites.most_common():
        print(f"  {count:4d}  {where}")
    if not sites:
        print("  none")


WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaMemcpy", "aten::_local_scalar_dense",
         "aten::nonzero")


def _waits_by_frame(prof):
    """Counts of :data:`WAITS` events (syncs, copies, reads back) by the innermost Python frame in
    the pack (and the innermost frame of all, when that is a library's). With ``with_stack``, the
    profiler records Python calls as the parents of the ops they run."""
    import collections

    counts: collections.Counter = collections.Counter()
    for e in prof.events():
        if e.name not in WAITS:
            continue
        frames, node = [], getattr(e, "cpu_parent", None)
        while node is not None:
            if ".py(" in node.name:
                frames.append(node.name.split("/")[-1])
            node = getattr(node, "cpu_parent", None)
        ours = [f for f in frames if "comboverse_ops" in f or any(m in f for m in PACK_FILES)]
        where = (ours or frames or ["?"])[0]
        if ours and frames[0] != ours[0]:
            where += f" <- {frames[0]}"
        counts[f"{e.name}: {where}"] += 1
    return counts


# the pack's file names (the profiler's frames keep only the file's base name after the split)
PACK_FILES = tuple(f"{p.name}(" for p in (ROOT / "comboverse_ops").rglob("*.py"))


def profile_steps(model, scene, targets, device, steps: int = 6, trace: Path | None = None) -> None:
    """Where a refine iteration's time goes: torch.profiler over ``steps`` guided and ``steps``
    reference-only iterations. Prints wall ms per iteration, the GPU's busy ms (kernel time) per
    iteration, and the ops that cost most GPU and most CPU time. A wall time well above the busy
    time means the GPU waits for the CPU to issue work."""
    from torch.profiler import ProfilerActivity, profile

    settings = SSDSSettings(prompt=PROMPT, views=4)
    with SSDSGuidance(model, settings) as guidance:
        for label, g in (("guided (SSDS, 4 views)", guidance), ("reference + physics only", None)):
            run = replace(EVERY_STEP, steps=steps)
            refine_poses(scene, targets, replace(run, steps=2), guidance=g)  # warm-up
            sync(device)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
                t0 = time.perf_counter()
                refine_poses(scene, targets, run, guidance=g)
                sync(device)
                wall = (time.perf_counter() - t0) * 1000 / steps
            events = prof.key_averages()
            busy = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
            kernels = sum(e.count for e in events if getattr(e, "device_type", None) is not None
                          and "CUDA" in str(e.device_type))
            print(f"\n## {label}: {wall:.1f} ms wall per iteration, GPU busy {busy / 1000 / steps:.1f} ms "
                  f"per iteration ({busy / 1000 / steps / wall:.0%}), {kernels / steps:.0f} kernels per iteration "
                  f"(set-up and the final read-back included)")
            print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
            print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))
            print(f"Waits and host-device copies in {steps} iterations, by the pack's innermost frame:")
            for where, count in _waits_by_frame(prof).most_common(30):
                print(f"  {count:4d}  {where}")
            if trace is not None:
                prof.export_chrome_trace(str(trace.with_name(f"{trace.stem}_{'guided' if g else 'ref'}.json")))


def bench_one(model, scene, targets, res: int, views: int, variant: str, device, repeats: int, warmup: int,
              model_resolution: int = 0):
    settings = SSDSSettings(prompt=PROMPT, views=views, render_resolution=res, backend="auto",
                            model_resolution=model_resolution or None)
    guidance = SSDSGuidance(model, settings)
    amp = torch.autocast(device.type, dtype=torch.float16) if variant == "autocast" and device.type == "cuda" \
        else contextlib.nullcontext()

    def bare():
        img = torch.rand(views, res, res, 3, device=device, requires_grad=True)
        z = guidance.encode(img).float()
        t = guidance.sample_timesteps(views).to(device)
        noise = torch.randn_like(z)
        a = guidance.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        eps = guidance.predict_noise(a.sqrt() * z.detach() + (1 - a).sqrt() * noise, t)
        sds_loss(z, eps, noise, 1 - a.reshape(-1)).backward()

    def refine(steps):
        with amp:
            refine_poses(scene, targets, replace(EVERY_STEP, steps=steps), guidance=guidance)

    for _ in range(warmup):
        bare()
        refine(1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bare_ms = timed(bare, device, repeats)
    one = timed(lambda: refine(1), device, 2)
    many = timed(lambda: refine(1 + repeats), device, 1)
    refine_ms = (many - one) / repeats
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return bare_ms, refine_ms, peak


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny SD model on the CPU (smoke test)")
    ap.add_argument("--device", help="default cuda when available (cpu with --tiny)")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--resolutions", default="256,512", help="render resolutions (comma list)")
    ap.add_argument("--views", default="4,10", help="views per step (comma list)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {VARIANTS}")
    ap.add_argument("--faces", type=int, default=5000, help="faces per object (3 objects)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--model-resolution", type=int, default=0,
                    help="SSDSSettings.model_resolution (0: the UNet's native 512)")
    ap.add_argument("--syncs", action="store_true",
                    help="CUDA: list every place a refine step waits for the GPU (torch's sync debug mode)")
    ap.add_argument("--profile", action="store_true",
                    help="CUDA: profile guided and reference-only iterations (GPU busy vs wall, top ops) and exit")
    ap.add_argument("--trace", type=Path, default=None, help="with --profile: write chrome traces next to this path")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if device.type == "cpu":
        dtype = torch.float32
    resolutions = [int(r) for r in args.resolutions.split(",")]
    views = [int(v) for v in args.views.split(",")]
    if args.tiny:
        resolutions, views, args.faces = [32, 64], [2], 200
        args.repeats, args.warmup = 2, 1
        variants = ["base", "channels_last"]
    else:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"--variants: unknown {bad}; expected some of {VARIANTS}")
    scene, targets = make_scene(device, args.faces)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"{args.dtype if device.type == 'cuda' else 'fp32'}, torch {torch.__version__}, "
          f"model {'tiny' if args.tiny else 'SD-1.5-sized (random weights)'}")
    ref_only = timed_reference_only(scene, targets, device, args.repeats)
    print(f"refine iteration without guidance (reference view + physics): {ref_only:.1f} ms")
    if args.profile:
        profile_steps(build_model(args.tiny, device, dtype), scene, targets, device, trace=args.trace)
        return
    if args.syncs and device.type == "cuda":
        report_syncs(build_model(args.tiny, device, dtype), scene, targets, device, args.model_resolution)
    print("| variant | render | views | bare SDS step ms | refine iteration ms | ratio | peak VRAM GiB |")
    print("|---|---|---|---|---|---|---|")
    for variant in variants:
        model = build_model(args.tiny, device, dtype)
        try:
            model = apply_variant(model, variant)
            for res in sorted(set(resolutions)):
                for v in sorted(set(views)):
                    bare, ref, peak = bench_one(model, scene, targets, res, v, variant, device, args.repeats,
                                                args.warmup, args.model_resolution)
                    print(f"| {variant} | {res} | {v} | {bare:.1f} | {ref:.1f} | {ref / bare:.2f} | {peak:.2f} |",
                          flush=True)
        except (RuntimeError, ImportError, OSError, TypeError, ValueError) as e:  # a variant that fails (e.g. torch.compile without a compiler) is reported
            print(f"| {variant} | - | - | failed: {type(e).__name__}: {str(e)[:120]} | | | |", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

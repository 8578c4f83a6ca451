"""Stage 1 speed and memory: SAM segmentation and SD inpainting, full-size random weights.

    python benchmarks/stage1.py                 # GPU: SAM vit_h + SD-2-inpainting, fp16, 512x512, 30 steps
    python benchmarks/stage1.py --tiny          # CPU smoke test with tiny models (the tests' architectures)

No weights are downloaded: the networks are built from the architectures (SAM's vit_h
dimensions, the SD configs shipped in comboverse_ops/configs) with random initialisation, which
costs the same time as trained weights. The tokenizer is a tiny BPE written on the fly (token
ids only feed an embedding lookup). Prints seconds and peak GPU memory per part:

- SAM image embedding (one image, the encoder at 1024x1024);
- SAM per-object prediction (box + negative points, 3 candidates, best kept, clean-up);
- SD inpainting of one occluded object (a 512x512 window, 30 steps, guidance 7.5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models: the tests' tiny architectures and tokenizer

from comboverse_ops.types.layout import Layout  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats):
    """Median seconds of ``repeats`` calls (after one warm-up) and peak GPU memory in GiB."""
    fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def occlusion_scene(size: int):
    """A red square partly behind a blue one and a green one apart: one object to inpaint."""
    image = torch.ones(size, size, 3)
    s = size / 100
    def square(x0, y0, x1, y1):
        m = torch.zeros(size, size, dtype=torch.bool)
        m[int(y0 * s):int(y1 * s), int(x0 * s):int(x1 * s)] = True
        return m
    red, blue, green = square(10, 10, 50, 50), square(35, 30, 75, 70), square(75, 75, 95, 95)
    image[red], image[blue], image[green] = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.9]), \
        torch.tensor([0.1, 0.8, 0.2])
    masks = torch.stack([red & ~blue, blue, green]).float()
    boxes = torch.tensor([[10.0, 10, 50, 50], [35, 30, 75, 70], [75, 75, 95, 95]]) * s
    return image, Layout(boxes, (size, size), ("a red box", "a blue box", "a green box"), masks)


def build_sd(config_dir: Path, tokenizer_dir: Path, device, dtype):
    from comboverse_ops.models.sd import SDModel
    from comboverse_ops.models.sd_checkpoint import SDCheckpointInfo
    from comboverse_ops.models.sd_text import cast_module, load_clip_tokenizer
    from tiny_models import build_sd_models

    # Random init straight on the device; small weights keep activations finite in fp16 for 30 steps.
    unet, vae, text = build_sd_models(config_dir, 0, device=device, weight_scale=0.5)
    sched = json.loads((config_dir / "scheduler" / "scheduler_config.json").read_text())
    tok = load_clip_tokenizer([tokenizer_dir], "sd2", text.config.max_position_embeddings)
    return SDModel(cast_module(unet, dtype).eval(), cast_module(vae, dtype).eval(), cast_module(text, dtype).eval(),
                   tok, sched, SDCheckpointInfo("sd2", True), config_dir)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models on the CPU (smoke test)")
    ap.add_argument("--device", default=None, help="default: cuda when available (never with --tiny), else cpu")
    ap.add_argument("--sam", default="vit_h", choices=["vit_b", "vit_l", "vit_h"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--resolution", type=int, default=None, help="inpainting window (default 512; tiny: 64)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    resolution = args.resolution or (64 if args.tiny else 512)

    from comboverse_ops.decompose.inpaint import InpaintSettings, complete_with_sd, object_prompt, prepare_inpaint_windows
    from comboverse_ops.models.sam import SAM_ARCHITECTURES, LoadedSam, SamArchitecture, build_sam
    from comboverse_ops.models.sd_checkpoint import shipped_config_dir
    from comboverse_ops.decompose.segment import SegmentSettings, sam_masks
    from tiny_models import SAM_TINY, tiny_sd_configs, write_config_dir, write_tiny_tokenizer

    import diffusers
    import segment_anything  # noqa: F401
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}; torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"transformers {transformers.__version__}; {'tiny models' if args.tiny else 'full-size models'}, {dtype}")
    rows = []

    # ---- SAM
    arch = SamArchitecture(**SAM_TINY) if args.tiny else SAM_ARCHITECTURES[args.sam]
    torch.manual_seed(0)
    sam = LoadedSam(build_sam(arch, device=device), arch, Path("random"))
    image, layout = occlusion_scene(128 if args.tiny else 768)
    rgb_u8 = (image * 255).round().to(torch.uint8).numpy()
    predictor = sam.predictor()

    def embed():
        with torch.inference_mode():
            predictor.set_image(rgb_u8)

    t, peak = timed(embed, device, args.repeats)
    rows.append((f"SAM {arch.name} image embedding ({arch.image_size}px)", t, peak))
    boxes = layout.boxes
    per_object = [torch.zeros(0, 2) for _ in range(len(layout))]

    def predict():
        sam_masks(sam, image, boxes, per_object, SegmentSettings(), predictor=predictor)

    t, peak = timed(predict, device, args.repeats)
    rows.append((f"SAM prediction per object (box + {len(layout) - 1} negatives, best of 3, clean-up)",
                 t / len(layout), peak))
    predictor.reset_image()
    sam.sam.to("cpu")  # make room for SD
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # ---- SD inpainting
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vocab = write_tiny_tokenizer(tmp / "tokenizer")
        if args.tiny:
            config_dir = write_config_dir(tmp / "config", tiny_sd_configs("sd2", True, vocab))
        else:
            config_dir = shipped_config_dir("sd2-inpainting")
        model = build_sd(config_dir, tmp / "tokenizer", device, dtype)
        n_params = sum(p.numel() for p in model.modules().parameters())
        settings = InpaintSettings(steps=args.steps, resolution=resolution)
        windows = prepare_inpaint_windows(image, layout, settings)
        prompts = [object_prompt(settings, p) for p in layout.phrases]
        assert sum(windows.occluded) >= 1

        notes = []

        def inpaint():
            try:
                complete_with_sd(model, windows, prompts, settings)
            except ValueError as e:  # random weights may overflow fp16; the time is still the time
                if "NaN" not in str(e):
                    raise
                notes.append("random weights gave NaN/inf in fp16 (timing unaffected)")

        t, peak = timed(inpaint, device, args.repeats)
        params = f"{n_params / 1e6:.0f}M" if n_params >= 1e7 else f"{n_params / 1e6:.2f}M"
        rows.append((f"SD-2 inpainting ({params} params), {sum(windows.occluded)} object(s), "
                     f"{resolution}x{resolution}, {args.steps} steps, guidance 7.5", t, peak))

    width = max(len(r[0]) for r in rows)
    print(f"{'part':<{width}}  {'seconds':>8}  {'peak GiB':>8}")
    for label, t, peak in rows:
        print(f"{label:<{width}}  {t:8.3f}  {peak:8.2f}")
    for note in sorted(set(notes)):
        print("note:", note)
    return 0


if __name__ == "__main__":
    sys.exit(main())

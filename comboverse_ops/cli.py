"""The ``comboverse`` command line.

    comboverse demo [--out DIR] [--seed N]

``demo`` runs the pack's main job on an embedded default: a procedural scene of three coloured
objects with spatial relations, its reference image, and the composed asset as ``scene.glb``
with preview renders. It needs no model files and runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

__all__ = ["main", "run_demo"]


def _image_row(images: list[torch.Tensor], gap: int = 4) -> torch.Tensor:
    """``[H, W, 3]`` images side by side with white gaps."""
    h = images[0].shape[0]
    white = torch.ones(h, gap, 3)
    parts = []
    for i, img in enumerate(images):
        parts += ([white] if i else []) + [img.detach().cpu()]
    return torch.cat(parts, 1)


def run_demo(out_dir: str | Path, seed: int = 0, size: int = 256, objects: int = 3, device: str = "cpu",
             log=print) -> dict:
    """Make the demo scene and write ``scene.glb``, ``reference.png``, ``preview.png`` and ``report.json``.

    Returns the report (also written as JSON): files, objects, relations, prompt, timings.
    """
    from .atomic import save_png_atomic, write_bytes_atomic
    from .export import write_glb
    from .procedural import ProceduralSettings, make_procedural_scene, novel_cameras
    from .render import render_scene

    out = Path(out_dir)
    t0 = time.perf_counter()
    settings = ProceduralSettings(min_objects=objects, max_objects=objects, image_size=size)
    proc = make_procedural_scene(seed, settings, device=torch.device(device))
    ref = proc.observe()
    views = novel_cameras(proc, 2)
    novel = render_scene(proc.scene, views).rgb
    files = {
        "reference": save_png_atomic(out / "reference.png", ref.image),
        "preview": save_png_atomic(out / "preview.png", _image_row([ref.image, novel[0], novel[1]])),
        "glb": write_glb(proc.scene, out / "scene.glb"),
    }
    report = {
        "seed": seed,
        "prompt": proc.prompt,
        "objects": [{"name": o.name, "phrase": p, "scale": float(o.pose.scale),
                     "rotation": o.pose.rotation.tolist(), "translation": o.pose.translation.tolist(),
                     "box_xyxy": b.tolist()}
                    for o, p, b in zip(proc.scene.objects, proc.phrases, ref.boxes)],
        "relations": [list(r) for r in proc.relations],
        "files": {k: str(v) for k, v in files.items()},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    files["report"] = write_bytes_atomic(out / "report.json", json.dumps(report, indent=2).encode())
    log(f"prompt: {proc.prompt}")
    for o in report["objects"]:
        log(f"  {o['name']:<16} scale {o['scale']:.3f}  translation "
            + " ".join(f"{x:+.3f}" for x in o["translation"]))
    for k, v in files.items():
        log(f"wrote {k:<9} {v}")
    log(f"done in {report['seconds']:.1f} s")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comboverse", description="ComboVerse: compositional image-to-3D.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compose the built-in procedural scene (no model files needed)")
    demo.add_argument("--out", default="comboverse_demo", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="scene seed; the same seed gives the same asset")
    demo.add_argument("--size", type=int, default=256, help="reference image size in pixels")
    demo.add_argument("--objects", type=int, default=3, help="number of objects (2-5)")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if not 2 <= args.objects <= 5:
            parser.error(f"--objects: expected 2 to 5, got {args.objects}")
        run_demo(args.out, seed=args.seed, size=args.size, objects=args.objects, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())

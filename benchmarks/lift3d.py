"""Lift3D speed and memory: seconds per object and peak VRAM for the built-in TripoSR.

    python benchmarks/lift3d.py                       # released architecture, random weights, CUDA fp16, 256^3
    python benchmarks/lift3d.py --dtype fp32 --objects 5
    python benchmarks/lift3d.py --ckpt models/triposr/model.ckpt   # real weights: the full Lift3D path
    python benchmarks/lift3d.py --tiny                 # reduced model from tests/data, CPU smoke test

Per object it times the stages of :func:`comboverse_ops.lift3d.reconstruct.mesh_from_triplane`:
encode (image -> triplane), grid (decoder over resolution^3 points), marching cubes, decimation
to --max-faces, vertex colours. Random weights give no object-like surface, so without --ckpt
the marching-cubes / decimation / colour stages run on an object-like analytic density (a bumpy
blob of about the face count TripoSR gives at that resolution) while encode and grid run the
real network; the table says which. Peak VRAM is torch.cuda.max_memory_allocated over the run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comboverse_ops.lift3d.checkpoint import build_triposr  # noqa: E402
from comboverse_ops.lift3d.config import load_triposr_config  # noqa: E402
from comboverse_ops.meshio.decimate import decimate  # noqa: E402
from comboverse_ops.lift3d.preprocess import conditioning_images  # noqa: E402
from comboverse_ops.lift3d.surface import marching_cubes, sample_density_grid  # noqa: E402
from comboverse_ops.lift3d.triposr import TripoSR  # noqa: E402
from comboverse_ops.types.mesh import Mesh  # noqa: E402

TINY = ROOT / "tests" / "data" / "triposr_tiny"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def blob_density(p: torch.Tensor) -> torch.Tensor:
    """An object-like density (exp-activated scale, surface at 25): a sphere with bumps."""
    r = p.norm(dim=1)
    bumps = 0.04 * torch.sin(9 * p[:, 0]) * torch.sin(7 * p[:, 1]) * torch.sin(8 * p[:, 2])
    return torch.exp(3.2 + 12.0 * (0.42 + bumps - r))


def make_model(args, device, dtype) -> TripoSR:
    if args.tiny:
        return build_triposr(TINY / "model.ckpt", device=device, dtype=dtype)
    if args.ckpt:
        return build_triposr(args.ckpt, device=device, dtype=dtype)
    torch.manual_seed(0)
    with torch.device(device):
        model = TripoSR(load_triposr_config())  # released architecture, default (random) init
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("cls_token", "position_embeddings", "tokenizer.embeddings")):
                p.normal_(0.0, 0.5)  # zero-initialised tables: give them values like trained ones
            elif p.ndim > 1:
                p.mul_(0.5)  # keep random activations tame; the cost does not depend on values
    return model.to(dtype).eval().requires_grad_(False)


def run(args) -> None:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    if args.threads:
        torch.set_num_threads(args.threads)
    resolution = args.resolution or (32 if args.tiny else 256)
    model = make_model(args, device, dtype)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    g = torch.Generator().manual_seed(0)
    crops = torch.rand(args.objects + 1, 96, 96, 3, generator=g)
    masks = torch.zeros(args.objects + 1, 96, 96)
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    masks[:, ((yy - 48) ** 2 + (xx - 48) ** 2) < 35 ** 2] = 1
    cond = conditioning_images(crops, masks, model.image_size)
    real_surface = bool(args.ckpt)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = []
    with torch.inference_mode():
        for i in range(args.objects + 1):  # object 0 warms up and is not counted
            t = {}
            sync(device)
            t0 = time.perf_counter()
            code = model.encode(cond[i].permute(2, 0, 1)[None].to(device, dtype))[0]
            sync(device)
            t["encode"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            grid = sample_density_grid(lambda p: model.query(code, p)["density"], model.radius, resolution,
                                       chunk=args.query_chunk, device=device)
            sync(device)
            t["grid"] = time.perf_counter() - t0
            level = args.threshold
            if not real_surface or not bool((grid > level).any()):
                real_surface = False
                grid = sample_density_grid(blob_density, model.radius, resolution, chunk=args.query_chunk,
                                           device=device, dtype=torch.float32)
            t0 = time.perf_counter()
            verts, faces = marching_cubes(grid, level, model.radius)
            t["mc"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            mesh = decimate(Mesh(verts, faces), args.max_faces, transfer_attributes=False)
            t["decimate"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            pts = mesh.vertices.to(device)
            colors = torch.cat([model.query(code, pts[s:s + args.query_chunk])["color"]
                                for s in range(0, pts.shape[0], args.query_chunk)]).cpu()
            sync(device)
            t["colors"] = time.perf_counter() - t0
            t["faces_mc"], t["faces"] = faces.shape[0], mesh.num_faces
            assert colors.shape[0] == mesh.num_vertices
            if i > 0:
                rows.append(t)
    stages = ("encode", "grid", "mc", "decimate", "colors")
    med = {k: statistics.median(r[k] for r in rows) for k in stages}
    total = statistics.median(sum(r[k] for k in stages) for r in rows)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"dtype {str(dtype).split('.')[-1]}, grid {resolution}^3, chunk {args.query_chunk}, "
          f"{'tiny test model' if args.tiny else 'released architecture'}, "
          f"{'checkpoint weights' if args.ckpt else 'random weights'}, weights {weights_mb:.1f} MiB")
    print(f"surface for mc/decimate/colors: {'the model density' if real_surface else 'analytic blob'} "
          f"({int(statistics.median(r['faces_mc'] for r in rows))} faces -> "
          f"{int(statistics.median(r['faces'] for r in rows))} after decimation)")
    print("stage      median s")
    for k in stages:
        print(f"{k:<10} {med[k]:8.3f}")
    print(f"total      {total:8.3f} s/object over {len(rows)} objects")
    if device.type == "cuda":
        print(f"peak VRAM  {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB "
              f"(torch.cuda.max_memory_allocated; weights {weights_mb / 1024:.2f} GiB)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="reduced model from tests/data on the CPU (smoke test)")
    ap.add_argument("--ckpt", type=Path,
                    help="a real TripoSR model.ckpt (config.yaml next to it, else the shipped one)")
    ap.add_argument("--objects", type=int, default=3, help="timed objects (one more warms up)")
    ap.add_argument("--resolution", type=int, help="marching-cubes grid per axis (default 256; 32 with --tiny)")
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="default fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--device", help="default cuda when available (cpu with --tiny)")
    ap.add_argument("--query-chunk", type=int, default=262_144, help="points per decoder call")
    ap.add_argument("--max-faces", type=int, default=50_000)
    ap.add_argument("--threshold", type=float, default=25.0, help="density level of the surface")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()

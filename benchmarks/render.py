"""Renderer speed: ms per forward+backward, 3 objects x ~5k faces.

    python benchmarks/render.py            # torch backend on CPU; nvdiffrast and torch on CUDA when present
    python benchmarks/render.py --threads 2

Prints a table and the speed-up of the culled torch rasterizer over the dense (unculled) one
at 64x64, where the dense one is still affordable. Goal: <= 200 ms at 128x128 on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comboverse_ops import Cameras, Pose, Scene, SceneObject  # noqa: E402
from comboverse_ops.synthetic.primitives import make_primitive  # noqa: E402
from comboverse_ops.render import render_scene  # noqa: E402
from comboverse_ops.render.common import flatten_scene, to_clip  # noqa: E402
from comboverse_ops.render.nvdiffrast_backend import nvdiffrast_available  # noqa: E402
from comboverse_ops.render.torch_raster import rasterize_torch  # noqa: E402


def make_scene(device) -> Scene:
    spec = (("sphere", (0.9, 0.3, 0.2), [-0.6, 0.0, 0.0]), ("cylinder", (0.2, 0.5, 0.9), [0.5, 0.1, -0.2]),
            ("torus", (0.3, 0.8, 0.3), [0.1, 0.2, 0.5]))
    objs = []
    for kind, color, t in spec:
        pose = Pose.create(0.7, [0.2, 0.4, 0.1], t, device=device).requires_grad_()
        objs.append(SceneObject(kind, make_primitive(kind, color, target_faces=5000, device=device), pose))
    return Scene(objs)


def time_ms(step, device, repeats: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def fwd_bwd(scene, cams, backend):
    def step():
        out = render_scene(scene, cams, backend=backend)
        (out.rgb.mean() + out.alpha.mean() + 0.01 * out.depth.mean()).backward()
    return step


def dense_fwd_bwd(scene, cams, cull):
    def step():
        flat = flatten_scene(scene)
        rgb, alpha, depth, _, _ = rasterize_torch(flat, to_clip(flat.vertices, cams), cams.width, cams.height,
                                               torch.ones(3, device=cams.device), cull=cull)
        (rgb.mean() + alpha.mean() + 0.01 * depth.mean()).backward()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        scene = make_scene(device)
        faces = sum(o.mesh.num_faces for o in scene.objects)
        backends = ["torch"] + (["nvdiffrast"] if device.type == "cuda" and nvdiffrast_available() else [])
        for backend in backends:
            for res in (128, 256):
                cams = Cameras.orbit(-25.0, 20.0, 3.2, 45.0, res, res, device=device)
                rows.append((backend, device.type, f"{res}x{res}", faces,
                             time_ms(fwd_bwd(scene, cams, backend), device, args.repeats)))
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    print(f"| backend | device | resolution | faces | ms per forward+backward |")
    print(f"|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} |")
    cpu = torch.device("cpu")
    scene = make_scene(cpu)
    cams = Cameras.orbit(-25.0, 20.0, 3.2, 45.0, 64, 64)
    culled = time_ms(dense_fwd_bwd(scene, cams, True), cpu, max(3, args.repeats // 3))
    dense = time_ms(dense_fwd_bwd(scene, cams, False), cpu, 3)
    print(f"\n64x64 torch on CPU: culled {culled:.1f} ms, dense (unculled) {dense:.1f} ms, "
          f"dense / culled = {dense / culled:.1f}x")


if __name__ == "__main__":
    main()

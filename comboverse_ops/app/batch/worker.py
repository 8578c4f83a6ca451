"""One batch worker: runs scenes on its device and hands their output files back as bytes.

A worker writes nothing where the results go: it runs a scene in a private temporary folder and
returns every file's bytes; the driver alone commits them (:mod:`.commit`). So a worker killed
mid-scene leaves nothing behind, and workers on other machines need no shared disk. Models stay
loaded between scenes in the worker process (the pack's shared model cache), so each worker loads
each model once.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..pipeline import PipelineSettings

__all__ = ["SceneJob", "SceneWorker", "run_scene"]


@dataclass(frozen=True)
class SceneJob:
    """What a worker needs for one scene (sent to it whole: the picture travels as bytes).

    Attributes:
        id, hash: the scene's id and :func:`.manifest.scene_hash`.
        image_name: the picture's path as given in the manifest (for the report).
        image_bytes: the picture file's contents.
        boxes: as in the manifest line (list or JSON text), or None: the detector finds them from the
            phrases (``settings.detect``).
        settings: the scene's PipelineSettings (prompt, phrases, per-scene fields applied).
        truth: ``{"seed", "objects", "image_size"}`` of a procedural scene, or None.
        stand_ins: compose procedural scenes from their true masks and meshes (the demo's stand-ins
            for Segment, depth and Lift3D): no model files needed.
        attempt: 1 for the first try, 2 after a worker died under it, ...
    """

    id: str
    hash: str
    image_name: str
    image_bytes: bytes
    boxes: object
    settings: PipelineSettings
    truth: dict | None = None
    stand_ins: bool = False
    attempt: int = 1


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _truth_scene(truth: dict):
    from ...synthetic.procedural import ProceduralSettings, make_procedural_scene

    s = ProceduralSettings(min_objects=truth["objects"], max_objects=truth["objects"],
                           image_size=truth["image_size"])
    return make_procedural_scene(truth["seed"], s, device=torch.device("cpu"))


def pose_error_means(report_objects: list[dict], truth: dict) -> dict[str, float]:
    """Mean pose errors of a report's objects against the rebuilt procedural scene (boxes are in
    the truth's object order). Keys as :func:`..metrics.pose_errors`, prefixed ``pose_``."""
    from ...synthetic.metrics import pose_errors
    from ...types.pose import Pose

    true = _truth_scene(truth)
    if len(report_objects) != len(true.scene.objects):
        raise ValueError(f"pose errors: the report has {len(report_objects)} objects, the truth "
                         f"{len(true.scene.objects)}")
    est = true.scene.with_poses([Pose.create(o["scale"], o["rotation"], o["translation"]) for o in report_objects])
    errs = pose_errors(est, true.scene)
    return {f"pose_{k}": sum(v) / len(v) for k, v in errs.items() if k != "alignment"} | \
        {"pose_alignment": errs["alignment"][0]}


def _run_pipeline_scene(job: SceneJob, folder: Path, device: str, log) -> tuple[dict, dict]:
    """The real pipeline (:func:`..pipeline.run_pipeline`) in ``folder``: ``(report, row fields)``."""
    from ..pipeline import run_pipeline

    image = folder / ("input" + (Path(job.image_name).suffix or ".png"))
    image.write_bytes(job.image_bytes)
    report = run_pipeline(image, job.boxes, folder / "scene.glb", replace(job.settings, device=device), log=log)
    report["image"] = job.image_name
    report["files"] = {k: Path(v).name for k, v in report["files"].items()}
    (folder / "scene_report.json").write_text(json.dumps(report, indent=2))
    image.unlink()
    row = {f"seconds_{k}": v for k, v in report["seconds"].items()}
    row |= {f"loss_{k}": _finite(v) for k, v in report["losses"].get("final", {}).items()}
    if job.truth is not None:
        row |= pose_error_means(report["objects"], job.truth)
    row["objects"] = len(report["objects"])
    return report, row


def _run_stand_in_scene(job: SceneJob, folder: Path, device: str, log) -> tuple[dict, dict]:
    """A procedural scene composed as ``comboverse demo`` does (true masks and meshes, no models)."""
    from ..cli import run_demo

    if job.truth is None:
        raise ValueError("stand-ins: only procedural scenes (lines with \"truth\") can run without models; "
                         "run without --stand-ins to use the model files")
    t = job.truth
    report = run_demo(folder, seed=t["seed"], size=t["image_size"], objects=t["objects"], device=device,
                      steps=job.settings.stages.refine.steps, log=log)
    report["image"] = job.image_name
    report["stand_ins"] = "Segment, depth and Lift3D replaced by the procedural scene's true masks, noisy depth " \
                          "and meshes (comboverse demo)"
    report["files"] = {k: Path(v).name for k, v in report["files"].items()}
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    row = {f"seconds_{k}": v for k, v in report["seconds"].items()}
    row |= {f"loss_{k}": _finite(v) for k, v in report["losses"].get("last", {}).items()}
    pose = pose_error_means(report["objects"], t)
    row |= pose | {"ref_mask_iou": report["metrics"]["refined"]["ref_mask_iou"]}
    row["objects"] = len(report["objects"])
    return report, row


def _is_out_of_memory(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def run_scene(job: SceneJob, device: str) -> dict:
    """Run one scene; never raises for the scene's own problems.

    Returns ``{"id", "hash", "status", "row", "files", "error"}``: ``status`` is ``"done"`` (with
    ``files`` = ``{file name: bytes}``: the GLB, previews, report and ``log.txt``), ``"failed"``
    (bad input or a bug: ``error`` holds the exception, the scene is not retried) or ``"oom"``
    (out of device memory: the driver retries it on another worker).
    """
    lines: list[str] = []

    def log(msg: str) -> None:
        lines.append(str(msg))

    t0 = time.perf_counter()
    row = {"worker": f"{socket.gethostname()}:{os.getpid()}", "device": device}
    with tempfile.TemporaryDirectory(prefix=f"comboverse_{job.id}_") as tmp:
        folder = Path(tmp)
        try:
            run = _run_stand_in_scene if job.stand_ins else _run_pipeline_scene
            _, fields = run(job, folder, device, log)
        except Exception as e:  # noqa: BLE001 - a scene's failure is data for the summary, not a crash
            oom = _is_out_of_memory(e)
            if oom and torch.cuda.is_available():
                from ...models.cache import MODEL_CACHE

                MODEL_CACHE.offload()
                torch.cuda.empty_cache()
            return {"id": job.id, "hash": job.hash, "status": "oom" if oom else "failed", "files": {},
                    "row": row | {"seconds_wall": round(time.perf_counter() - t0, 3)},
                    "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
        (folder / "log.txt").write_text("\n".join(lines) + "\n")
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    row |= fields
    row["seconds_wall"] = round(time.perf_counter() - t0, 3)
    return {"id": job.id, "hash": job.hash, "status": "done", "row": row, "files": files, "error": None}


class SceneWorker:
    """A worker process (a Ray actor: ``ray.remote(SceneWorker)``) on one device.

    Args:
        device: ``"cuda"`` (Ray makes the actor's GPU ``cuda:0``) or ``"cpu"``.
        threads: torch CPU threads (the CPU cores Ray gave this worker).
        setup: optional ``setup()`` run once in the worker before any scene (benchmarks patch
            stand-ins for random weights' outputs here).
    """

    def __init__(self, device: str = "cpu", threads: int = 1, setup=None):
        from ...determinism import request_reproducible_blas

        request_reproducible_blas()  # before this process's first matrix product, as the CLI does
        self.device = device
        torch.set_num_threads(max(1, int(threads)))
        if setup is not None:
            setup()
        self.scenes = 0

    def info(self) -> dict:
        """Where this worker runs (and that it started)."""
        name = torch.cuda.get_device_name(0) if self.device.startswith("cuda") else "CPU"
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": self.device, "name": name,
                "threads": torch.get_num_threads()}

    def check(self, settings: PipelineSettings, stand_ins: bool) -> str | None:
        """The missing-model error on this worker's machine, or None (checked before any scene)."""
        if stand_ins:
            return None
        from ..pipeline import find_models

        try:
            find_models(settings)
            if settings.depth:
                from ...decompose.depth import check_depth_folder
                check_depth_folder(settings.depth)
            if settings.detect:
                from ...decompose.detect import check_detector_folder
                check_detector_folder(settings.detect)
        except (FileNotFoundError, ValueError) as e:
            return f"{socket.gethostname()}: {e}"
        return None

    def run(self, job: SceneJob) -> dict:
        self.scenes += 1
        return run_scene(job, self.device)

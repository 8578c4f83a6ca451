"""Scenes across workers on Ray: back-pressure, retries of lost scenes, progress, summary.

The driver (this module) reads the manifest, skips scenes already committed with the same hash,
and hands scenes to :class:`.worker.SceneWorker` actors, at most ``in_flight`` per worker (one
running, the next waiting so the device never idles; the rest stay in the driver, pictures
unread). It alone writes the output folder (:mod:`.commit`). When a worker dies (killed, the
machine lost, the process crashed) Ray restarts it up to ``max_restarts`` times and every scene
it held goes back to the queue, preferably for another worker; a scene is tried at most
``1 + max_retries`` times. A scene that fails by itself (bad input) is recorded and not retried.
Ray is imported only here, only when a batch runs: it is an optional dependency.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..pipeline import PipelineSettings, models_root
from .commit import OutputFolder
from .manifest import ManifestError, SceneEntry, read_manifest, scene_hash
from .worker import SceneJob, SceneWorker

__all__ = ["BatchSettings", "WorkerPool", "run_batch", "run_scenes", "start_ray", "BatchResult"]

PATH_FIELDS = ("models_dir", "sam", "inpaint", "inpaint_config", "lift3d", "guidance", "guidance_config", "depth")


@dataclass(frozen=True)
class BatchSettings:
    """How a batch is spread over Ray workers (``comboverse batch`` flags map onto these)."""

    address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001", ...); None: start a local one
    num_cpus: int | None = None  # local cluster only: CPUs it may use (default: all of this machine)
    num_gpus: int | None = None  # local cluster only: GPUs it may use (default: all visible)
    device: str | None = None  # "cuda" or "cpu" (default: cuda when the cluster has GPUs)
    workers: int | None = None  # default: one per GPU; without GPUs, cluster CPUs // cpus_per_worker
    cpus_per_worker: int | None = None  # default: CPUs per GPU (at most 8) on GPUs, 4 on CPUs (capped at the cluster's)
    gpus_per_worker: float = 1.0  # below 1 packs several workers on one GPU (each holds its own models)
    in_flight: int = 2  # scenes handed to a worker at once: one running, one waiting
    max_retries: int = 2  # a scene whose worker died or ran out of memory runs at most 1 + this times
    max_restarts: int = 3  # Ray restarts a dead worker at most this often; then the run goes on without it
    stand_ins: bool = False  # procedural scenes only: true masks and meshes instead of models (comboverse demo)
    summary_every_s: float = 30.0  # rewrite the summary files this often during a run
    start_timeout_s: float = 600.0  # how long workers may take to start before the run gives up

    def __post_init__(self):
        for name in ("workers", "cpus_per_worker", "num_cpus", "num_gpus"):
            v = getattr(self, name)
            if v is not None and v < (0 if name == "num_gpus" else 1):
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive number, got {v}")
        if self.in_flight < 1 or self.max_retries < 0 or self.max_restarts < 0:
            raise ValueError(f"batch: expected in_flight >= 1, max_retries >= 0, max_restarts >= 0, got "
                             f"{self.in_flight}, {self.max_retries}, {self.max_restarts}")
        if not 0 < self.gpus_per_worker <= 8:
            raise ValueError(f"--gpus-per-worker: expected a fraction or count of GPUs in (0, 8], got "
                             f"{self.gpus_per_worker}")
        if self.device not in (None, "cuda", "cpu"):
            raise ValueError(f"--device: expected cuda or cpu (each worker gets its own GPU), got {self.device!r}")


@dataclass
class BatchResult:
    """What a run did: summary rows (one per manifest line) and counts."""

    rows: list[dict]
    done: int
    skipped: int
    failed: int
    seconds: float
    summary: tuple[Path, Path] | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0


def _pack_parent() -> str:
    return str(Path(__file__).resolve().parents[3])


def start_ray(bs: BatchSettings) -> bool:
    """Connect to ``bs.address`` or start a local Ray (loopback only, no dashboard); True if this
    call started it (the caller then shuts it down). An existing connection is reused."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    if bs.address:
        # The pack travels with the job, so cluster nodes need its dependencies but not the pack.
        ray.init(address=bs.address, runtime_env={"py_modules": [str(Path(__file__).resolve().parents[2])]},
                 logging_level=logging.WARNING)
    else:
        path = os.pathsep.join(p for p in (_pack_parent(), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(address="local", num_cpus=bs.num_cpus, num_gpus=bs.num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    return True


class WorkerPool:
    """One :class:`.worker.SceneWorker` actor per GPU (or per ``cpus_per_worker`` CPUs), started
    and checked. Needs a connected Ray (:func:`start_ray`)."""

    def __init__(self, bs: BatchSettings, setup: Callable[[], None] | None = None, log=print):
        import ray

        self.ray, self.bs, self.log = ray, bs, log
        res = ray.cluster_resources()
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]  # workers never span machines
        cpus, gpus, gpw = int(res.get("CPU", 1)), res.get("GPU", 0), bs.gpus_per_worker
        self.device = bs.device or ("cuda" if gpus >= gpw else "cpu")
        if self.device == "cuda":
            gpu_nodes = [r for r in nodes if r.get("GPU", 0) >= gpw]
            if not gpu_nodes:
                raise ValueError(f"--device cuda: the Ray cluster has {gpus:g} GPUs, a worker needs {gpw:g} on one "
                                 "machine; use --device cpu or join a cluster with GPUs (--address)")
            slots = sum(int(r["GPU"] // gpw) for r in gpu_nodes)
            # The CPUs of the tightest GPU machine, shared among its workers (at most 8 each).
            cpw = bs.cpus_per_worker or max(1, min(8, min(int(r.get("CPU", 1) // (r["GPU"] // gpw))
                                                          for r in gpu_nodes)))
            n = bs.workers or slots
            if n > slots:
                raise ValueError(f"--workers {n}: the Ray cluster has {gpus:g} GPUs, room for {slots} workers of "
                                 f"{gpw:g} GPU; ask for fewer workers or lower --gpus-per-worker")
            opts = {"num_gpus": gpw}
        else:
            cpw = min(bs.cpus_per_worker or 4, max(int(r.get("CPU", 1)) for r in nodes))
            slots = sum(int(r.get("CPU", 1) // cpw) for r in nodes)
            n = bs.workers or max(1, slots)
            opts = {"num_gpus": 0}
            if n > slots:
                raise ValueError(f"--workers {n} x --cpus-per-worker {cpw}: the Ray cluster's machines have room "
                                 f"for {slots} such workers ({cpus} CPUs in all); lower one of them")
        self.cpus_per_worker = cpw
        actor = ray.remote(num_cpus=cpw, max_restarts=bs.max_restarts, max_task_retries=0, **opts)(SceneWorker)
        self.actors = [actor.remote(self.device, cpw, setup) for _ in range(n)]
        refs = [a.info.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=bs.start_timeout_s)
        if len(ready) < len(refs):
            raise RuntimeError(f"batch: only {len(ready)} of {n} workers started within {bs.start_timeout_s:.0f} s "
                               f"(each needs {cpw} CPUs{' and a GPU' if self.device == 'cuda' else ''}; the cluster "
                               f"has {res}); ask for fewer --workers")
        self.infos = ray.get(refs)
        for i, info in enumerate(self.infos):
            log(f"worker {i}: {info['host']} pid {info['pid']}, {info['device']} ({info['name']}), "
                f"{info['threads']} threads")

    def __len__(self) -> int:
        return len(self.actors)

    def check(self, settings: PipelineSettings, stand_ins: bool) -> None:
        """Raise ``FileNotFoundError`` naming the machine and the folder if a worker lacks a model file."""
        errors = [e for e in self.ray.get([a.check.remote(settings, stand_ins) for a in self.actors]) if e]
        if errors:
            raise FileNotFoundError(errors[0] + (f" (and {len(errors) - 1} more workers)" if len(errors) > 1 else ""))

    def shutdown(self) -> None:
        for a in self.actors:
            self.ray.kill(a, no_restart=True)
        self.actors = []


class BatchProgress:
    """One progress line on stderr: scenes done, failed, running, ETA (a redrawn bar on a terminal,
    a line every 10% or 30 s otherwise)."""

    def __init__(self, total: int, skipped: int, stream=None):
        self.total, self.skipped, self.stream = total, skipped, stream or sys.stderr
        self.t0 = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_line, self.last_decile = 0.0, -1

    def update(self, done: int, failed: int, running: int, force: bool = False) -> None:
        finished = done + failed
        todo = self.total - self.skipped
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / finished * (todo - finished) if finished else None
        pct = (self.skipped + finished) / max(1, self.total)
        bar = "#" * int(25 * pct)
        eta_s = "--" if eta is None else (f"{eta / 60:.0f}m{eta % 60:02.0f}s" if eta >= 60 else f"{eta:.0f}s")
        text = (f"batch [{bar:<25}] {self.skipped + finished}/{self.total}: {done} done, {failed} failed, "
                f"{self.skipped} skipped, {running} running, ETA {eta_s}")
        if self.tty:
            self.stream.write("\r" + text + "\033[K")
            self.stream.flush()
        elif force or int(pct * 10) != self.last_decile or time.time() - self.last_line > 30:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_decile, self.last_line = int(pct * 10), time.time()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _absolute(settings: PipelineSettings, base: Path) -> PipelineSettings:
    """Path settings made absolute against ``base`` (workers run in other folders, or on other machines)."""
    changes = {}
    for name in PATH_FIELDS:
        v = getattr(settings, name)
        if name == "models_dir":
            v = str(models_root(settings))
        if v and not Path(v).expanduser().is_absolute():
            changes[name] = str((base / Path(v).expanduser()).resolve())
    return replace(settings, **changes)


def _scene_settings(entry: SceneEntry, base: PipelineSettings, manifest_dir: Path) -> PipelineSettings:
    s = entry.settings(base)
    per_scene = entry.line.get("settings", {})
    changes = {k: str((manifest_dir / v).resolve()) for k, v in per_scene.items()
               if k in PATH_FIELDS and isinstance(v, str) and not Path(v).is_absolute()}
    return replace(s, **changes)


def _row(entry: SceneEntry, status: str, attempts: int, error: str | None = None, **more) -> dict:
    row = {"id": entry.id, "line": entry.index, "status": status, "attempts": attempts,
           "image": entry.line.get("image")}
    row |= more
    row["error"] = error
    return row


def run_scenes(pool: WorkerPool, entries: list[SceneEntry], out: OutputFolder, settings: PipelineSettings,
               bs: BatchSettings, manifest_dir: Path, *, workers: list[int] | None = None,
               on_event: Callable[..., None] | None = None, progress: BatchProgress | None = None,
               log=print) -> BatchResult:
    """Run ``entries`` on ``pool`` (or on the pool's workers ``workers``) into ``out``.

    ``settings`` must have absolute paths. ``on_event(event, **fields)`` sees every
    ``batch_log.jsonl`` event as it happens (``committed``, ``retry``, ``failed``, ``worker_lost``).
    """
    import ray
    from ray.exceptions import ActorDiedError, RayActorError

    t0 = time.perf_counter()
    use = list(range(len(pool))) if workers is None else list(workers)
    hashes = {e.id: scene_hash(e, settings, bs.stand_ins) for e in entries}
    rows: dict[str, dict] = {}
    queue: deque[tuple[SceneEntry, int, int | None]] = deque()  # (entry, attempts so far, worker to avoid)
    for e in entries:
        rec = out.done_record(e.id)
        if rec is not None and rec.get("hash") == hashes[e.id]:
            rows[e.id] = rec.get("row", {}) | {"id": e.id, "line": e.index, "status": "skipped"}
        else:
            queue.append((e, 0, None))
    skipped = len(rows)
    prog = progress or BatchProgress(len(entries), skipped)
    counts = {"done": 0, "failed": 0}
    inflight: dict = {}  # scene ObjectRef -> (entry, attempts, worker index)
    probes: dict = {}  # info() ObjectRef -> worker index, for workers Ray is restarting
    last_probe = {w: 0.0 for w in use}
    load = {w: 0 for w in use}
    deaths = {w: 0 for w in use}
    state = {w: "up" for w in use}  # "up", "restarting" (no scenes until a probe answers) or "dead"
    last_summary = time.perf_counter()

    def up() -> list[int]:
        return [w for w in use if state[w] == "up"]

    def event(name: str, **f) -> None:
        out.log_event(name, **f)
        if on_event is not None:
            on_event(name, **f)

    def fail(entry: SceneEntry, attempts: int, error: str, **more) -> None:
        rows[entry.id] = _row(entry, "failed", attempts, error, **more)
        counts["failed"] += 1
        event("failed", id=entry.id, attempts=attempts, error=error)

    def retry_or_fail(entry: SceneEntry, attempts: int, w: int, why: str) -> None:
        if attempts <= bs.max_retries:
            queue.appendleft((entry, attempts, w))
            event("retry", id=entry.id, attempts=attempts, worker=w, why=why)
        else:
            fail(entry, attempts, f"{why}; gave up after {attempts} attempts (--max-retries {bs.max_retries})")

    def worker_lost(w: int, error: Exception, entry_id: str | None) -> None:
        if state[w] == "up":  # one death, however many of its scenes report it
            deaths[w] += 1
            event("worker_lost", worker=w, id=entry_id, deaths=deaths[w], error=str(error).splitlines()[0])
        if isinstance(error, ActorDiedError) or deaths[w] > bs.max_restarts:
            state[w] = "dead"
        elif state[w] != "dead":
            state[w] = "restarting"

    def submit() -> None:
        # One scene at a time to the least loaded worker, so a few scenes still spread over all workers.
        healthy, blocked = up(), set()
        while queue:
            free = [w for w in healthy if load[w] < bs.in_flight and w not in blocked]
            if not free:
                return
            w = min(free, key=lambda k: load[k])
            # Not the worker a scene was just lost on, while another one is up to take it.
            k = next((i for i, q in enumerate(queue) if q[2] != w or len(healthy) == 1), None)
            if k is None:
                blocked.add(w)
                continue
            entry, attempts, _ = queue[k]
            del queue[k]
            if entry.error is not None:
                fail(entry, 0, entry.error)
                continue
            try:
                image = entry.image.read_bytes()
            except OSError as e:
                fail(entry, 0, f"image: cannot read {entry.image} ({e.strerror or e}); fix the line's "
                               f"\"image\" (relative to the manifest's folder {manifest_dir})")
                continue
            job = SceneJob(entry.id, hashes[entry.id], entry.line["image"], image, entry.line.get("boxes"),
                           _scene_settings(entry, settings, manifest_dir), entry.line.get("truth"),
                           bs.stand_ins, attempts + 1)
            ref = pool.actors[w].run.remote(job)
            inflight[ref] = (entry, attempts + 1, w)
            load[w] += 1

    def probe() -> None:
        now = time.perf_counter()
        for w in use:
            if state[w] == "restarting" and w not in probes.values() and now - last_probe[w] > 1.0:
                probes[pool.actors[w].info.remote()] = w
                last_probe[w] = now

    try:
        while queue or inflight:
            submit()
            probe()
            if not inflight and not probes:
                if not any(state[w] != "dead" for w in use):
                    while queue:
                        entry, attempts, _ = queue.popleft()
                        fail(entry, attempts, "no worker left: every worker died more than --max-restarts times")
                else:
                    time.sleep(0.2)
                continue
            ready, _ = ray.wait(list(inflight) + list(probes), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in probes:
                    w = probes.pop(ref)
                    try:
                        pool.infos[w] = ray.get(ref)
                        state[w] = "up"
                        event("worker_back", worker=w, pid=pool.infos[w]["pid"])
                    except RayActorError as e:
                        if isinstance(e, ActorDiedError):
                            state[w] = "dead"
                    continue
                entry, attempts, w = inflight.pop(ref)
                load[w] -= 1
                try:
                    res = ray.get(ref)
                except RayActorError as e:
                    worker_lost(w, e, entry.id)
                    retry_or_fail(entry, attempts, w, f"worker {w} died while it held the scene")
                    continue
                if res["status"] == "done":
                    row = _row(entry, "done", attempts, None, **res["row"])
                    out.commit(entry.id, res["files"], {"hash": hashes[entry.id], "line": entry.line, "row": row})
                    rows[entry.id] = row
                    event("committed", id=entry.id, attempts=attempts, worker=w, by=row.get("worker"))
                    counts["done"] += 1
                elif res["status"] == "oom":
                    retry_or_fail(entry, attempts, w, f"out of memory on worker {w} ({res['error']})")
                else:
                    fail(entry, attempts, res["error"], **res["row"])
            prog.update(counts["done"], counts["failed"], len(inflight))
            if time.perf_counter() - last_summary > bs.summary_every_s:
                out.write_summary([rows[e.id] for e in entries if e.id in rows])
                last_summary = time.perf_counter()
    finally:
        prog.update(counts["done"], counts["failed"], len(inflight), force=True)
        prog.close()
        ordered = [rows.get(e.id) or _row(e, "not run", 0, "the run stopped before this scene") for e in entries]
        summary = out.write_summary(ordered)
    return BatchResult(ordered, counts["done"], skipped, counts["failed"], time.perf_counter() - t0, summary)


def run_batch(manifest: str | Path, out_dir: str | Path, settings: PipelineSettings = PipelineSettings(),
              bs: BatchSettings = BatchSettings(), *, setup: Callable[[], None] | None = None,
              on_event: Callable[..., None] | None = None, log=print) -> BatchResult:
    """``comboverse batch``: every scene of ``manifest`` into ``out_dir`` on Ray (module doc).

    Starts (or joins, with ``bs.address``) Ray, one worker per GPU or per ``cpus_per_worker``
    CPUs, checks every worker has the model files, runs the scenes not yet committed with the
    same hash, and writes ``summary.jsonl`` / ``summary.csv``. Returns the :class:`BatchResult`.
    """
    manifest = Path(manifest)
    entries = read_manifest(manifest)
    settings = _absolute(settings, Path.cwd())
    need_detector = [e.id for e in entries if e.error is None and "boxes" not in e.line
                     and not (settings.detect or e.line.get("settings", {}).get("detect"))]
    if need_detector:  # a setting of the whole run, like the model files: said before any scene
        more = " ..." if len(need_detector) > 5 else ""
        raise ManifestError(f"manifest {manifest}: scene(s) {need_detector[:5]}{more}"
                            ' give "phrases" but no "boxes"; pass --detect DIR (an OWLv2 folder saved with '
                            'save_pretrained) to find their boxes, or give each line its "boxes"')
    with OutputFolder(out_dir) as out:
        todo = [e for e in entries if not out.is_done(e.id, scene_hash(e, settings, bs.stand_ins))]
        log(f"manifest {manifest}: {len(entries)} scenes, {len(entries) - len(todo)} already done in {out.root}")
        out.log_event("start", manifest=str(manifest), scenes=len(entries), to_run=len(todo),
                      settings=asdict(settings), batch=asdict(bs))
        if not todo:
            rows = [out.done_record(e.id)["row"] | {"status": "skipped"} for e in entries]
            return BatchResult(rows, 0, len(entries), 0, 0.0, out.write_summary(rows))
        started = start_ray(bs)
        pool = None
        try:
            pool = WorkerPool(bs, setup=setup, log=log)
            pool.check(settings, bs.stand_ins)
            result = run_scenes(pool, entries, out, settings, bs, manifest.parent.resolve(), on_event=on_event,
                                log=log)
        finally:
            if pool is not None:
                pool.shutdown()
            if started:
                import ray

                ray.shutdown()
    log(f"{result.done} done, {result.skipped} skipped, {result.failed} failed in {result.seconds:.1f} s; "
        f"summary {result.summary[0]} and {result.summary[1].name}")
    return result

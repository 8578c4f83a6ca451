"""``comboverse batch``: many pictures across many GPUs (or CPU workers) on Ray, resumable.

:mod:`.manifest` reads the JSONL manifest, :mod:`.worker` runs one scene in a worker process,
:mod:`.commit` owns the output folder, :mod:`.runner` schedules scenes on Ray. Ray is optional
(``pip install "comfyui-comboverse[batch]"``) and imported only when a batch runs.
"""

from .commit import OutputFolder, commit_folder
from .manifest import ManifestError, SceneEntry, read_manifest, scene_hash, write_procedural_manifest
from .runner import BatchResult, BatchSettings, WorkerPool, run_batch, run_scenes, start_ray
from .worker import SceneJob, SceneWorker, run_scene

__all__ = ["BatchSettings", "BatchResult", "WorkerPool", "run_batch", "run_scenes", "start_ray", "OutputFolder",
           "commit_folder", "ManifestError", "SceneEntry", "read_manifest", "scene_hash",
           "write_procedural_manifest", "SceneJob", "SceneWorker", "run_scene"]

import re
from pathlib import Path

import pytest
import torch

from comboverse_ops.models import ModelCache, ModelKey


def test_a_model_loads_once_per_file_dtype_and_device_and_reloads_when_the_file_changes(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(2)}, path)
    cache, calls = ModelCache(), []

    def load():
        calls.append(1)
        return torch.nn.Linear(2, 2)

    a = cache.get(ModelKey.for_file("toy", path, torch.float32, "cpu"), load)
    b = cache.get(ModelKey.for_file("toy", path, torch.float32, "cpu"), load)
    assert a is b and len(calls) == 1
    cache.get(ModelKey.for_file("toy", path, torch.float16, "cpu"), load)
    assert len(calls) == 2 and len(cache) == 2
    torch.save({"w": torch.ones(3)}, path)  # a new file under the same name
    c = cache.get(ModelKey.for_file("toy", path, torch.float32, "cpu"), load)
    assert c is not a and len(calls) == 3 and len(cache) == 2


class RecordingModule(torch.nn.Linear):
    """Records device moves instead of making them (this machine has one device)."""

    def __init__(self):
        super().__init__(2, 2)
        self.moves = []

    def to(self, device):
        self.moves.append(str(device))
        return self


def test_offload_moves_models_away_and_get_brings_them_back():
    cache = ModelCache()
    key = ModelKey("toy", "/models/toy.pth", (1, 1), "torch.float32", "cuda:0")
    keep = ModelKey("other", "/models/other.pth", (1, 1), "torch.float32", "cuda:0")
    model = cache.get(key, RecordingModule)
    kept = cache.get(keep, RecordingModule)
    assert cache.offload(keep=lambda k: k.kind == "other") == 1
    assert model.moves == ["cpu"] and kept.moves == []
    # Its parameters are on the CPU, its key says cuda:0: the next get moves it back.
    assert cache.get(key, lambda: None) is model and model.moves == ["cpu", "cuda:0"]


def test_one_precision_policy_for_every_loader_and_the_cli():
    # Every loader node and `comboverse run` ask this one function, so a workflow and the CLI run each
    # network in the same dtype on the same device (before, the CLI ran TripoSR in fp32 on a GPU
    # while the node ran it in fp16).
    import inspect

    from comboverse_ops.models.precision import model_dtype

    assert model_dtype("auto", "cuda") == torch.float16 and model_dtype("auto", "cpu") == torch.float32
    assert model_dtype("bf16", "cpu") == torch.bfloat16 and model_dtype("fp32", "cuda") == torch.float32
    with pytest.raises(ValueError, match="Load Lift3D Model: precision: fp16 on the CPU"):
        model_dtype("fp16", "cpu", "Load Lift3D Model: precision")
    with pytest.raises(ValueError, match=r"expected one of \('auto'"):
        model_dtype("half", "cuda")
    root = Path(__file__).resolve().parents[1]
    for path in [*root.glob("nodes/*.py"), *root.glob("comboverse_ops/**/*.py")]:
        text = path.read_text()
        if path.name != "precision.py":
            assert "torch.float16 if" not in text, f"{path.name} decides a model's dtype itself; use model_dtype"
    import comboverse_ops.app.pipeline as pipeline

    # TripoSR, detector, depth
    assert len(re.findall(r'model_dtype\("auto", (?:run\.)?device\)', inspect.getsource(pipeline))) >= 3

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

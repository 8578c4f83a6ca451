"""Where the CLI's models wait between stages and runs (``--keep-models``)."""

from types import SimpleNamespace

import pytest
import torch

from comboverse_ops.app import pipeline
from comboverse_ops.app.run_settings import PipelineSettings, check_inputs, models_stay
from comboverse_ops.models.cache import MODEL_CACHE, ModelKey

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
GIB = 2**30


@pytest.fixture
def card(monkeypatch):
    """Pretend the CUDA card has ``card(gib)`` of memory (no GPU needed)."""
    def set_memory(gib: float):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=gib * GIB))
    return set_memory


def test_auto_keeps_models_on_a_large_card_and_offloads_on_a_24_gb_one(card):
    card(79.2)  # H100 80GB
    assert models_stay("auto", CUDA)
    card(24564 / 1024)  # RTX 4090: 24 GB are 23.99 GiB, short of the ~20 GiB pool plus the desktop's margin
    assert not models_stay("auto", CUDA)
    assert models_stay("keep", CUDA)
    card(79.2)
    assert not models_stay("offload", CUDA)


def test_a_cpu_run_lets_models_go_unless_told_to_keep_them():
    assert not models_stay("auto", CPU)
    assert models_stay("keep", CPU)


class _Holder:
    def __init__(self):
        self.moves = []

    def to(self, device):
        self.moves.append(str(device))


@pytest.mark.parametrize("keep, moved", [("keep", []), ("offload", ["cpu"])])
def test_a_gpu_stage_offloads_its_models_only_when_the_run_does_not_keep_them(monkeypatch, keep, moved):
    cache_offloads = []
    monkeypatch.setattr(MODEL_CACHE, "offload", lambda *a, **k: cache_offloads.append(1))
    run = pipeline.Run(PipelineSettings(keep_models=keep), CUDA, {})
    holder = _Holder()
    pipeline._offload(run, holder)
    assert holder.moves == moved
    assert len(cache_offloads) == len(moved)


@pytest.mark.parametrize("keep, kept", [("auto", False), ("keep", True)])
def test_a_cpu_stage_leaves_memory_unless_kept(keep, kept):
    """On a CPU run the models are in RAM already: letting go means the shared cache forgets them
    (all five full-size models in fp32 with SSDS outgrew 24 GB of RAM)."""
    key = ModelKey("test-model", "/nowhere/model.bin", (1, 1), "torch.float32", "cpu")
    MODEL_CACHE.get(key, lambda: torch.nn.Linear(2, 2))
    try:
        pipeline._offload(pipeline.Run(PipelineSettings(keep_models=keep), CPU, {}), _Holder())
        assert (key in MODEL_CACHE) == kept
    finally:
        MODEL_CACHE.clear("test-model")


def test_an_unknown_keep_models_value_is_named_before_anything_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"--keep-models: expected one of \('auto', 'keep', 'offload'\), got 'always'"):
        check_inputs(tmp_path / "missing.png", None, tmp_path / "scene.glb", PipelineSettings(keep_models="always"))

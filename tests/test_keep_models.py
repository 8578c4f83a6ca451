"""Where the CLI's models wait between stages and runs (``--keep-models``)."""

from types import SimpleNamespace

import pytest
import torch

from comboverse_ops.app import pipeline
from comboverse_ops.models.cache import MODEL_CACHE
from comboverse_ops.app.run_settings import PipelineSettings, check_inputs, models_stay_on_gpu

CUDA = torch.device("cuda")
GIB = 2**30


@pytest.fixture
def card(monkeypatch):
    """Pretend the CUDA card has ``card(gib)`` of memory (no GPU needed)."""
    def set_memory(gib: float):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=gib * GIB))
    return set_memory


def test_auto_keeps_models_on_a_large_card_and_offloads_on_a_24_gb_one(card):
    card(79.2)  # H100 80GB
    assert models_stay_on_gpu("auto", CUDA)
    card(24564 / 1024)  # RTX 4090: 24 GB are 23.99 GiB, short of the ~20 GiB pool plus the desktop's margin
    assert not models_stay_on_gpu("auto", CUDA)
    assert models_stay_on_gpu("gpu", CUDA)
    card(79.2)
    assert not models_stay_on_gpu("offload", CUDA)


def test_models_on_the_cpu_never_move():
    assert not models_stay_on_gpu("gpu", torch.device("cpu"))


class _Holder:
    def __init__(self):
        self.moves = []

    def to(self, device):
        self.moves.append(str(device))


@pytest.mark.parametrize("keep, moved", [("gpu", []), ("offload", ["cpu"])])
def test_a_stage_offloads_its_models_only_when_the_run_does_not_keep_them(monkeypatch, keep, moved):
    cache_offloads = []
    monkeypatch.setattr(MODEL_CACHE, "offload", lambda *a, **k: cache_offloads.append(1))
    run = pipeline.Run(PipelineSettings(keep_models=keep), CUDA, {})
    holder = _Holder()
    pipeline._offload(run, holder)
    assert holder.moves == moved
    assert len(cache_offloads) == len(moved)


def test_an_unknown_keep_models_value_is_named_before_anything_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"--keep-models: expected one of \('auto', 'gpu', 'offload'\), got 'always'"):
        check_inputs(tmp_path / "missing.png", None, tmp_path / "scene.glb", PipelineSettings(keep_models="always"))

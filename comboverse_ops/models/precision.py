"""One precision policy: which dtype a model's weights and compute use, given where it runs.

Every loader node and the CLI ask :func:`model_dtype`, so a workflow and ``comboverse run`` run
each network in the same precision on the same device.
"""

from __future__ import annotations

import torch

__all__ = ["PRECISIONS", "PRECISION_TOOLTIP", "model_dtype"]

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
PRECISION_TOOLTIP = ("Weight and compute precision: auto = fp16 on a CUDA GPU (half the memory), fp32 elsewhere "
                     "(CPU, Apple MPS: untested in half precision).")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def model_dtype(precision: str, device: torch.device | str, what: str = "precision") -> torch.dtype:
    """The dtype for a model that will run on ``device``.

    Args:
        precision: one of :data:`PRECISIONS`; ``"auto"``: fp16 on CUDA, fp32 elsewhere (the pack's
            half-precision paths were never run on Apple's MPS).
        device: where the model computes (not where it waits while offloaded).
        what: the input's name in error messages (e.g. the node and widget).
    Raises:
        ValueError: an unknown precision, or fp16 on the CPU (half-precision convolutions are slow
            or missing there; bf16 or fp32 work).
    """
    device = torch.device(device)
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"{what}: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError(f"{what}: fp16 on the CPU is slow or unsupported for convolutions; choose auto, bf16 or "
                         "fp32 (or run on a GPU)")
    return _DTYPES[precision]

"""CPU results whose bits do not depend on the number of threads or the machine's load.

The same seed must give a byte-identical asset (DESIGN.md). These torch CPU ops break that
(measured with torch 2.14.1, MKL 2024.2, oneDNN 3.12 on an AVX-512 Xeon; 1 vs 2, 3, 4, 8 threads):

- A full reduction (``x.sum()``, ``x.mean()``) of more than 32,768 elements splits the input
  into one chunk per thread and adds the partial sums: the rounding follows the thread count.
  Reductions with several outputs (``x.sum(1)``) give every output to one thread, so their bits
  are fixed. :func:`ordered_sum` and :func:`ordered_mean` reduce rows of :data:`CHUNK` elements
  first, then the row sums, so no single reduction is large enough to be split.
- The backward of advanced indexing (``x[idx]`` with repeated indices) accumulates with atomic
  adds across threads: the order, and so the rounding, changes from run to run under load.
  The renderer gathers with ``index_select`` instead, whose backward (``index_add``) runs in
  index order (render/torch_raster.py).

- oneDNN's 1x1 convolution (SD's ``conv_shortcut``, SAM's neck, the VAE's ``quant_conv``)
  gives outputs with 1 thread that differ from those with 2, 3, 4 or 8 by ~4e-6.
  :func:`thread_invariant_convs` computes exact-1x1 ``Conv2d`` layers as one matrix product per
  image instead; 3x3 and strided convolutions, transposed ones and their backward passes gave
  the same bits with every thread count tried.
- MKL's float32 GEMM (every ``Linear``) partitions some shapes by the thread count: the text
  encoders' 77-token products (77x1024 @ 1024x1024) differ by ~3e-6 between 1 and 2 threads
  (large products such as 4096x1280 @ 1280x3840 did not). MKL's strict reproducibility mode (:data:`MKL_REPRODUCIBLE`) makes GEMM bits
  independent of the thread count; it must be chosen before the process's first MKL call, so
  the CLI sets it when it starts (``MKL_CBWR``; a value the user set wins).
- ``F.interpolate(mode="bilinear")`` without antialiasing (SAM's mask upsampling, Depth Anything's
  head, SSDS's resize to the guidance model's resolution) rounds some pixels differently when its
  rows are split across threads (~1e-7). :func:`serial_bilinear` runs those calls, and only
  those, in one thread; antialiased, bicubic and area resizes are unaffected.
- ``group_norm`` on a channels-last tensor with few groups per thread adds per-thread partial
  sums (~2e-5); a ``permute``d image fed to a VAE is channels-last, so callers pass
  ``.contiguous()`` images (ssds.py, inpaint.py).

Cost: the sums and gathers are as fast as the ops they replace (benchmarks/render.py); the 1x1
products run about as fast as oneDNN's, on all threads; README, Rendering, "Deterministic on the
CPU" has the numbers.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["CHUNK", "MKL_REPRODUCIBLE", "ordered_sum", "ordered_mean", "request_reproducible_blas",
           "thread_invariant_convs", "fixed_threads", "serial_bilinear"]

MKL_REPRODUCIBLE = "AUTO,STRICT"  # MKL_CBWR value: MKL's best code path, bits independent of threads

CHUNK = 4096  # elements per row; far below torch's 32,768-element grain, so no reduction is split


def ordered_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of all elements of ``x`` (any shape, float) as a 0-d tensor, added in an order
    that does not depend on the thread count; differentiable like ``x.sum()``."""
    flat = x.reshape(-1)
    while flat.numel() > CHUNK:
        flat = F.pad(flat, (0, -flat.numel() % CHUNK)).reshape(-1, CHUNK).sum(1)
    return flat.sum()


def ordered_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of all elements of ``x`` (0-d tensor; NaN for an empty ``x`` like ``x.mean()``),
    added as in :func:`ordered_sum`."""
    return ordered_sum(x) / x.numel() if x.numel() else x.mean()


def request_reproducible_blas() -> bool:
    """Ask MKL for GEMM results that do not depend on the thread count (:data:`MKL_REPRODUCIBLE`).

    Sets ``MKL_CBWR`` unless the user set it. MKL reads it at its first call, so this works only
    in a process that has not multiplied matrices yet (the CLI calls it when it starts); later it
    changes nothing. Returns whether the strict mode is now requested.
    """
    os.environ.setdefault("MKL_CBWR", MKL_REPRODUCIBLE)
    return "STRICT" in os.environ["MKL_CBWR"].upper()


class _Conv1x1AsMatmul(torch.nn.Conv2d):
    """A 1x1, stride-1, unpadded, ungrouped ``Conv2d`` whose CPU forward is one GEMM per image.

    Same parameters, state dict and result (within float32 rounding) as the convolution; on other
    devices it is the convolution.
    """

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4:
            return super()._conv_forward(x, weight, bias)
        n, c, h, w = x.shape
        wm = weight.reshape(weight.shape[0], c)
        flat = x.reshape(n, c, h * w)
        # One 2-D product per image: MKL's plain GEMM (reproducible in its strict mode), not the
        # batched routine that strict mode does not cover.
        y = torch.stack([wm @ flat[i] for i in range(n)]) if n != 1 else (wm @ flat[0])[None]
        if bias is not None:
            y = y + bias[:, None]
        return y.reshape(n, -1, h, w)


def _is_plain_1x1(m: torch.nn.Module) -> bool:
    return (type(m) is torch.nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.padding in ((0, 0), "valid")
            and m.padding_mode == "zeros")


def thread_invariant_convs(model) -> int:
    """Turn every plain 1x1 ``torch.nn.Conv2d`` of ``model`` into :class:`_Conv1x1AsMatmul`, in place.

    Args:
        model: an ``nn.Module``, or an object holding modules as attributes (a loaded SAM, an
            SD model with ``modules()``); anything else is left alone.
    Returns:
        How many layers were changed (0 when called again on the same model).
    """
    roots = []
    if isinstance(model, torch.nn.Module):
        roots.append(model)
    elif callable(getattr(model, "modules", None)) and isinstance(model.modules(), torch.nn.Module):
        roots.append(model.modules())
    else:
        roots += [v for v in vars(model).values() if isinstance(v, torch.nn.Module)] if hasattr(model, "__dict__") \
            else []
    n = 0
    for root in roots:
        for m in root.modules():
            if _is_plain_1x1(m):
                m.__class__ = _Conv1x1AsMatmul
                n += 1
    return n


@contextlib.contextmanager
def fixed_threads(n: int = 1):
    """Run the block with ``n`` torch CPU threads, then restore the caller's count.

    For small ops whose bits follow the thread count; never for a whole network.
    """
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _SerialBilinear(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.interpolate and _plain_bilinear(args, kwargs):
            with fixed_threads(1):
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def _plain_bilinear(args, kwargs) -> bool:
    mode = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
    antialias = kwargs.get("antialias", args[6] if len(args) > 6 else False)
    x = args[0] if args else kwargs.get("input")
    return mode == "bilinear" and not antialias and isinstance(x, torch.Tensor) and x.device.type == "cpu"


@contextlib.contextmanager
def serial_bilinear():
    """Inside the block, CPU ``F.interpolate(mode="bilinear")`` without antialiasing (also inside
    library code: SAM, Depth Anything) runs in one thread, so its bits do not depend on the thread
    count; every other op keeps all threads."""
    with _SerialBilinear():
        yield

"""Sums whose bits do not depend on the number of CPU threads or the machine's load.

The same seed must give a byte-identical asset (DESIGN.md). Two kinds of torch CPU ops break
that (measured with torch 2.14, 1 vs 2 threads):

- A full reduction (``x.sum()``, ``x.mean()``) of more than 32,768 elements splits the input
  into one chunk per thread and adds the partial sums: the rounding follows the thread count.
  Reductions with several outputs (``x.sum(1)``) give every output to one thread, so their bits
  are fixed. :func:`ordered_sum` and :func:`ordered_mean` reduce rows of :data:`CHUNK` elements
  first, then the row sums, so no single reduction is large enough to be split.
- The backward of advanced indexing (``x[idx]`` with repeated indices) accumulates with atomic
  adds across threads: the order, and so the rounding, changes from run to run under load.
  The renderer gathers with ``index_select`` instead, whose backward (``index_add``) runs in
  index order (render/torch_raster.py).

Cost: both are as fast as the ops they replace on CPU (benchmarks/render.py; README).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["CHUNK", "ordered_sum", "ordered_mean"]

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

"""Reductions and normalisations over a dim: mean/sum/amax/max, p-norms, softmax, log-softmax, F.normalize.

Channels: reduced dims stop here (a mean over channels would change with pruning); the others pass.
Softmax normalises over its dim, which therefore stays whole. F.normalize may lose channels along its
dim: a zero entry adds nothing to the norm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import COUPLING


def _reduce(r, dims_index: int, keepdim_index: int) -> None:
    """The reduced dims stop here; the others pass through (shifted where keepdim drops the reduced ones)."""
    x, y = r.arg(0, "input"), r.out()
    if y is None:
        raise ValueError("non-tensor result")
    dims = r.raw(dims_index, "dim")
    keepdim = r.raw(keepdim_index, "keepdim", False)
    if dims is None:
        return
    dims = {d % r.rank(x) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    j = 0
    for d in range(r.rank(x)):
        if d in dims:
            j += 1 if keepdim else 0
            continue
        r.same(x, d, y, j)
        j += 1


@COUPLING.register("mean", "sum", "amax", "max", torch.mean, torch.sum, torch.amax)
def reduction_coupling(r) -> None:
    _reduce(r, 1, 2)


@COUPLING.register("norm", torch.norm, torch.linalg.vector_norm)
def norm_coupling(r) -> None:
    """A p-norm (its p before the dims) reduces its dims like a sum: zero entries add nothing."""
    _reduce(r, 2, 3)


@COUPLING.register(F.softmax, torch.softmax, F.log_softmax, torch.log_softmax, "softmax", "log_softmax")
def softmax_coupling(r) -> None:
    x, y = r.arg(0, "input"), r.out()
    dim = r.raw(1, "dim")
    r.identity(x, y, skip=(dim,))
    r.block(y, dim, f"{r.name}: normalised over this dim")


@COUPLING.register(F.normalize)
def normalize_coupling(r) -> None:
    r.identity(r.arg(0, "input"), r.out())

"""Reductions and normalisations over a dim: mean/sum/amax/max, p-norms, softmax, log-softmax, F.normalize.

Channels: a sum, a mean or a p-norm over channels may lose them (a zero entry adds nothing; a mean keeps its
divisor, rewritten as `sum_divided` by its resize rule, so RMSNorm's mean of squares and ConvNeXt V2's GRN
prune exactly), and where a removed entry is not zero there (a hand-written LayerNorm subtracts the mean
first) the zeroed run of prune/compensate.py keeps that group whole; a max over channels keeps them all. The
other dims pass. Softmax normalises over its dim, which therefore stays whole. F.normalize may lose channels
along its dim: a zero entry adds nothing to the norm.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F

from .registry import COUPLING, RESIZE


def sum_divided(x: torch.Tensor, dim, keepdim: bool, divisor: float) -> torch.Tensor:
    """A mean over `dim` after pruning: the sum of the entries left over the count the unpruned model had
    (the removed entries were zero, so the mean is what it was)."""
    return torch.sum(x, dim, keepdim=keepdim) / divisor


def reduction_args(node: fx.Node, dims_index: int = 1,
                   keepdim_index: int = 2) -> Optional[Tuple[fx.Node, tuple, bool]]:
    """(input, reduced dims (normalised), keepdim) of a reduction call (torch.mean, Tensor.sum, ...); None
    without dims (the whole tensor), with a dtype, a rank unknown or dims and keepdim that are graph values."""
    x = node.args[0] if node.args else None
    dims = node.args[dims_index] if len(node.args) > dims_index else node.kwargs.get("dim")
    keepdim = node.args[keepdim_index] if len(node.args) > keepdim_index else node.kwargs.get("keepdim", False)
    shape = getattr(x.meta.get("tensor_meta"), "shape", None) if isinstance(x, fx.Node) else None
    if dims is None or shape is None or node.kwargs.get("dtype") is not None:
        return None
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    if not all(isinstance(d, int) for d in dims) or not isinstance(keepdim, bool):
        return None
    return x, tuple(sorted(d % len(shape) for d in dims)), keepdim


_SUMMED = {}   # reduction target -> (dims arg index, keepdim arg index): a zero entry adds nothing to it


def summed_dims(node: fx.Node) -> Optional[Tuple[fx.Node, tuple]]:
    """(input, reduced dims) where `node` sums, averages or p-norms its input over dims (the zeroed run checks
    those see zeros where channels go), else None."""
    if node.op not in ("call_function", "call_method") or node.target not in _SUMMED:
        return None
    found = reduction_args(node, *_SUMMED[node.target])
    return found[:2] if found else None


def _reduce(r, dims_index: int, keepdim_index: int, summed: bool) -> None:
    """The reduced dims stop here, or are summed away (`summed`); the others pass through (shifted where
    keepdim drops the reduced ones)."""
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
            if summed:
                r.reduces(x, d)
            j += 1 if keepdim else 0
            continue
        r.same(x, d, y, j)
        j += 1


def _register_summed(dims_index: int, keepdim_index: int, *targets):
    for t in targets:
        _SUMMED[t] = (dims_index, keepdim_index)
    COUPLING.register(*targets, rule=lambda r: _reduce(r, dims_index, keepdim_index, summed=True))


_register_summed(1, 2, "mean", "sum", torch.mean, torch.sum, sum_divided)
_register_summed(2, 3, "norm", torch.norm)                 # a p-norm: its p before the dims
_register_summed(2, 3, torch.linalg.vector_norm)


@COUPLING.register("amax", "max", torch.amax)
def max_coupling(r) -> None:
    """A removed zero could be a maximum: the reduced dims stay whole."""
    _reduce(r, 1, 2, summed=False)


@RESIZE.register("mean", torch.mean)
def mean_resize(s, node, _):
    """A mean whose reduced dims lost entries divides by the count the unpruned model had."""
    found = reduction_args(node)
    if found is None:
        return
    x, dims, keepdim = found
    old, new = s.old_shape(x), s.node_shape(x)
    if old is None or new is None:
        return
    count_old, count_new = (math.prod(shape[d] for d in dims) for shape in (old, new))
    if count_old != count_new:
        node.op, node.target = "call_function", sum_divided
        node.args, node.kwargs = (x, dims, keepdim, float(count_old)), {}


@COUPLING.register(F.softmax, torch.softmax, F.log_softmax, torch.log_softmax, "softmax", "log_softmax")
def softmax_coupling(r) -> None:
    x, y = r.arg(0, "input"), r.out()
    dim = r.raw(1, "dim")
    r.identity(x, y, skip=(dim,))
    r.block(y, dim, f"{r.name}: normalised over this dim")


@COUPLING.register(F.normalize)
def normalize_coupling(r) -> None:
    r.identity(r.arg(0, "input"), r.out())

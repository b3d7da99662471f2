"""Shape ops: view/reshape/flatten/unflatten/squeeze/unsqueeze, permute/transpose/movedim, expand, and the ops
that only read a tensor's metadata (size, dim, len...).

Channels: dims kept whole pass through; where dims fold (NCHW -> N(CHW)), the flat dim follows the
largest folded dim and the other folded dims stop here; permutes move couplings along. Under pruning the
size constants baked into view/reshape/expand/unflatten calls follow the new shapes. INT8: they only move
values, so they reuse their input's quantization. ONNX export: `Tensor.unfold` (sliding windows, timm's
halo attention) becomes a gather of the window positions, and `F.fold` (col2im) gets its output size as
constants and opset 18, where Col2Im appeared: torch's exporter needs sizes it cannot read behind a Pad.
"""
from __future__ import annotations

import builtins
import operator
from typing import Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

import torch.nn.functional as F

from .registry import COUPLING, EXPORT, PASSIVE, QUANT, RESIZE, ExportRule, QuantRule, graph_constant, static_shape

# ops that read only a tensor's metadata (shape, rank): they constrain no channel
COUPLING.register(builtins.getattr, torch._assert, operator.eq, operator.ne, operator.floordiv, builtins.len,
                  "size", "dim", "numel", rule=PASSIVE)
QUANT.register(nn.Flatten, torch.flatten, torch.reshape, "flatten", "view", "reshape", rule=QuantRule("passthrough"))


def _align_blocks(sin: Sequence[int], sout: Sequence[int]):
    """Split a reshape into blocks of consecutive input/output dims with equal products."""
    blocks, i, j = [], 0, 0
    while i < len(sin) or j < len(sout):
        ins, outs, pi, pj = [], [], 1, 1
        if i < len(sin):
            ins.append(i); pi *= sin[i]; i += 1
        if j < len(sout):
            outs.append(j); pj *= sout[j]; j += 1
        while pi != pj:
            if pi < pj and i < len(sin):
                ins.append(i); pi *= sin[i]; i += 1
            elif pj < pi and j < len(sout):
                outs.append(j); pj *= sout[j]; j += 1
            else:
                return None
        blocks.append((ins, outs))
    return blocks


def _index_in_block(shape, dims, d):
    """For flat positions p of the block `dims`, the index along dim d."""
    total = int(np.prod([shape[k] for k in dims]))
    stride = int(np.prod([shape[k] for k in dims[dims.index(d) + 1:]]))
    return (np.arange(total) // stride) % shape[d]


def reshape_between(r, x, y) -> None:
    """Dims kept whole pass through; where dims fold (flatten, view), the flat dim follows the largest
    folded dim (the channels in NCHW -> N(CHW)), the other folded dims stop here."""
    sin, sout = r.shape(x), r.shape(y)
    blocks = _align_blocks(sin, sout)
    if blocks is None:
        raise ValueError(f"cannot align {sin} -> {sout}")
    for ins, outs in blocks:
        ins_nt = [d for d in ins if sin[d] != 1]
        outs_nt = [d for d in outs if sout[d] != 1]
        if not ins_nt or not outs_nt:
            continue
        if len(ins_nt) == 1 and len(outs_nt) == 1:
            r.same(x, ins_nt[0], y, outs_nt[0], kind="reshape")
            continue
        di = max(ins_nt, key=lambda d: (sin[d], -d))
        do = max(outs_nt, key=lambda d: (sout[d], -d))
        r.couple(x, di, y, do, _index_in_block(sin, ins, di), _index_in_block(sout, outs, do), kind="fold")


@COUPLING.register("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
                   torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten, nn.Flatten,
                   nn.Unflatten)
def reshape_coupling(r) -> None:
    reshape_between(r, r.arg(0, "input"), r.out())


@COUPLING.register("permute", torch.permute)
def permute_coupling(r) -> None:
    x, y = r.arg(0, "input"), r.out()
    dims = r.node.args[1:] if r.node.op == "call_method" else [r.raw(1, "dims")]
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    if not dims:
        dims = r.node.kwargs.get("dims")
    for j, d in enumerate(dims):
        r.same(x, d, y, j)


@COUPLING.register("transpose", "swapaxes", torch.transpose, torch.swapaxes)
def transpose_coupling(r) -> None:
    x, y = r.arg(0, "input"), r.out()
    a, b = r.raw(1, "dim0"), r.raw(2, "dim1")
    a, b = a % r.rank(x), b % r.rank(x)
    perm = list(range(r.rank(x)))
    perm[a], perm[b] = perm[b], perm[a]
    for j, d in enumerate(perm):
        r.same(x, d, y, j)


@COUPLING.register("movedim", "moveaxis", torch.movedim, torch.moveaxis)
def movedim_coupling(r) -> None:
    x, y = r.arg(0, "input"), r.out()
    src, dst = r.raw(1, "source"), r.raw(2, "destination")
    src, dst = ([src], [dst]) if isinstance(src, int) else (list(src), list(dst))
    rank = r.rank(x)
    src, dst = [d % rank for d in src], [d % rank for d in dst]
    rest = iter(d for d in range(rank) if d not in src)
    perm = [src[dst.index(j)] if j in dst else next(rest) for j in range(rank)]   # y dim j is x dim perm[j]
    for j, d in enumerate(perm):
        r.same(x, d, y, j)


@COUPLING.register("expand", "expand_as")
def expand_coupling(r) -> None:
    r.broadcast(r.arg(0), r.out())


# ---- resizing under pruning: size constants follow the new shapes
def _shape_spec(node, first: int):
    spec = node.args[first:]
    if len(spec) == 1 and isinstance(spec[0], (list, tuple, torch.Size)):
        return list(spec[0]), True
    return list(spec), False


def _size_source(v):
    """(tensor node, dim) whose size `v` reads (`t.size(d)`, `t.shape[d]`, `t.size()[d]`), else None."""
    if v.op == "call_method" and v.target == "size" and len(v.args) == 2 and isinstance(v.args[1], int):
        return v.args[0], v.args[1]
    if v.op == "call_function" and v.target is operator.getitem and isinstance(v.args[1], int):
        shape = v.args[0]
        if isinstance(shape, fx.Node) and ((shape.op == "call_function" and shape.target is builtins.getattr
                                            and shape.args[1] == "shape") or
                                           (shape.op == "call_method" and shape.target == "size"
                                            and len(shape.args) == 1)):
            return shape.args[0], v.args[1]
    return None


def _reads_whole_dims(s, v, depth: int = 3) -> bool:
    """`v` is a size the plan leaves as it is: read from a dim it keeps whole, or such a size times or divided
    by a constant (coat's `C // num_heads`)."""
    source = _size_source(v)
    if source is not None:
        t, d = source
        t_old, t_new = s.old_shape(t), s.node_shape(t)
        return t_old is not None and t_new is not None and t_old[d] == t_new[d]
    if depth and v.op == "call_function" and v.target in _SIZE_ARITHMETIC and len(v.args) == 2:
        a, b = v.args
        if isinstance(a, fx.Node) and isinstance(b, int):
            return _reads_whole_dims(s, a, depth - 1)
        if isinstance(b, fx.Node) and isinstance(a, int) and v.target is not operator.floordiv:
            return _reads_whole_dims(s, b, depth - 1)
    return False


_SIZE_ARITHMETIC = (operator.floordiv, operator.mul)   # proportional: a scaled size stays exact


def _follow(s, node, v, old: int, new: int):
    """A size argument after pruning. A constant becomes the new size. A size read from a tensor whose dim
    the plan leaves whole (pvt_v2's `x.reshape(B, N, C)`, C read from the block's input, after an attention
    whose values lost channels) is scaled by new / old where its dim shrank: a pruned dim is channels times
    sizes that follow the input resolution (a fold), so it stays right at every resolution, as the model's
    own was. A size read from a tensor pruned alike already follows; any other stays as it is (the probe
    of prune/probe.py then finds whether it breaks), and the exactness check has the last word."""
    if isinstance(v, int) and v != -1:
        return new
    if not isinstance(v, fx.Node) or new == old:
        return v
    if not _reads_whole_dims(s, v):
        return v
    with node.graph.inserting_before(node):
        return node.graph.call_function(operator.floordiv, (node.graph.call_function(operator.mul, (v, new)), old))


@RESIZE.register("view", "reshape", "expand", torch.reshape)
def shape_args_resize(s, node, _):
    if not s.changed(node):
        return
    new = s.node_shape(node)
    if node.op == "call_function":
        spec = list(node.args[1] if len(node.args) > 1 else node.kwargs["shape"])
        packed = True
    else:
        spec, packed = _shape_spec(node, 1)
    old = s.old_shape(node)
    if len(spec) != len(new) or old is None or len(old) != len(new):
        return
    spec = [_follow(s, node, v, old[i], new[i]) for i, v in enumerate(spec)]
    if node.op == "call_function":
        node.args = (node.args[0], tuple(spec)) + tuple(node.args[2:])
    else:
        node.args = (node.args[0], tuple(spec)) if packed else (node.args[0], *spec)


@RESIZE.register("unflatten", torch.unflatten)
def unflatten_resize(s, node, _):
    if not s.changed(node):
        return
    dim, sizes = node.args[1], node.args[2]
    dim = dim % len(s.node_shape(node.args[0]))
    new = s.node_shape(node)
    node.args = (node.args[0], node.args[1], tuple(new[dim:dim + len(sizes)]))


def _arg(node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def unfold_export(gm, node, _):
    """x.unfold(dim, size, step) == x.index_select(dim, [window starts + offsets]) with the windows split
    out and moved last: Gather, Reshape and Transpose, which need no size of the exporter's."""
    x = node.args[0]
    shape = static_shape(x)
    dim, size, step = _arg(node, 1, "dimension"), _arg(node, 2, "size"), _arg(node, 3, "step")
    if shape is None or not all(isinstance(v, int) for v in (dim, size, step)):
        return None
    dim %= len(shape)
    if dim == 0:   # the batch dim stays dynamic in the file: no constant index covers it
        return None
    n = (shape[dim] - size) // step + 1
    index = (torch.arange(n)[:, None] * step + torch.arange(size)).reshape(-1)
    g = gm.graph
    picked = g.call_function(torch.index_select, (x, dim, graph_constant(gm, index, "unfold_index")))
    split = g.call_method("reshape", (picked, (-1, *shape[1:dim], n, size, *shape[dim + 1:])))
    return g.call_function(torch.movedim, (split, dim + 1, len(shape)))


def fold_export(gm, node, _):
    """F.fold's output size, often read from a tensor's shape in the model's code, as constants: the
    exporter's Col2Im needs them known."""
    out = static_shape(node)
    if out is None:
        return None
    args = list(node.args)
    kwargs = dict(node.kwargs)
    if len(args) > 1:
        args[1] = tuple(out[-2:])
    else:
        kwargs["output_size"] = tuple(out[-2:])
    return gm.graph.call_function(F.fold, tuple(args), kwargs)


EXPORT.register("unfold", rule=ExportRule(rewrite=unfold_export))
EXPORT.register(F.fold, rule=ExportRule(rewrite=fold_export, min_opset=18))
EXPORT.register(nn.Fold, rule=ExportRule(min_opset=18))

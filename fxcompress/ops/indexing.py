"""Concatenation, splitting and indexing: cat, stack, split/chunk/unbind, getitem (slices, tuple items).

Channels: cat and split couple each piece with its offset in the whole; equal splits (chunk) keep their
pieces equal, so position j goes in every piece; slices couple the positions they keep (strided slices
stop here: their constants cannot follow pruning). Under pruning, split sizes and slice bounds follow
the kept channels. INT8: concat runs as QLinearConcat; its inputs share its output's quantizer where each
feeds no other concat (then onnxruntime copies their codes instead of requantizing them through a table,
as TFLite requires of a concat: fxcompress/quant/concat_scale.py), else they are requantized; split, chunk,
unbind and getitem only move values, so they pass the codes of one quantizer placed before them through
(fxcompress/quant/passthrough.py places it).
"""
from __future__ import annotations

import operator
import numpy as np
import torch
import torch.fx as fx

from .elementwise import PASSTHROUGH
from .registry import COUPLING, QUANT, RESIZE, QuantRule

QUANT.register(torch.cat, rule=QuantRule("requantize", shared_scale=True))
# ONNX Split (Squeeze after it for unbind), Slice / Gather for getitem: the values are not changed
QUANT.register("chunk", "split", "split_with_sizes", "unbind", torch.chunk, torch.split, torch.unbind,
               operator.getitem, rule=PASSTHROUGH)


@COUPLING.register(torch.cat, torch.concat)
def cat_coupling(r) -> None:
    tensors = r.raw(0, "tensors")
    dim = r.raw(1, "dim", 0)
    y = r.out()
    dim = dim % r.rank(y)
    offset = 0
    for t in tensors:
        k = r.key_of(t)
        if k is None:
            raise ValueError("non-tensor in cat")
        n = r.shape(k)[dim]
        for d in range(r.rank(y)):
            if d == dim:
                r.couple(k, d, y, d, np.arange(n), offset + np.arange(n), kind="cat")
            else:
                r.same(k, d, y, d)
        offset += n


@COUPLING.register(torch.stack)
def stack_coupling(r) -> None:
    """Every input's dim d is the output's d (before the new dim) or d + 1; the new dim is the op's."""
    y = r.out()
    dim = r.raw(1, "dim", 0) % r.rank(y)
    for t in r.raw(0, "tensors"):
        k = r.key_of(t)
        if k is None:
            raise ValueError("non-tensor in stack")
        for d in range(r.rank(k)):
            r.same(k, d, y, d if d < dim else d + 1)


def _split_outputs(r, x, sizes, dim, equal: bool) -> None:
    dim = dim % r.rank(x)
    offset = 0
    for i, n in enumerate(sizes):
        y = r.out(i)
        for d in range(r.rank(x)):
            if d == dim:
                r.couple(x, d, y, d, offset + np.arange(n), np.arange(n), kind="split")
            else:
                r.same(x, d, y, d)
        offset += n
    if equal and len(sizes) > 1:  # equal pieces stay equal after pruning: position j goes in every piece
        total = offset
        r.couple(x, dim, x, dim, np.arange(total), np.arange(total) % sizes[0], kind="equal split")


def _unbind_outputs(r, x, dim, n_out: int) -> None:
    """Output i is x.select(dim, i): the other dims pass through; the unbound dim stays whole (one output per
    position: packed q/k/v, say)."""
    dim = dim % r.rank(x)
    for i in range(n_out):
        y = r.out(i)
        for d in range(r.rank(x)):
            if d != dim:
                r.same(x, d, y, d if d < dim else d - 1)
    r.block(x, dim, f"{r.name}: one output per position of the unbound dim")


@COUPLING.register("split", "chunk", "split_with_sizes", "unbind", torch.split, torch.chunk, torch.unbind)
def split_coupling(r) -> None:
    x = r.arg(0, "input")
    name = r.node.target if isinstance(r.node.target, str) else r.node.target.__name__
    n_out = r.n_outputs()
    if name == "unbind":
        _unbind_outputs(r, x, r.raw(1, "dim", 0), n_out)
        return
    spec = r.raw(1, "chunks" if name == "chunk" else "split_size_or_sections")
    if spec is None:
        spec = r.raw(1, "split_size")
    dim = r.raw(2, "dim", 0)
    size = r.shape(x)[dim]
    if isinstance(spec, int):
        piece = -(-size // spec) if name == "chunk" else spec
        sizes = [min(piece, size - i * piece) for i in range(n_out)]
        if size % piece:
            raise ValueError("uneven split")
        _split_outputs(r, x, sizes, dim, equal=True)
    else:
        _split_outputs(r, x, list(spec), dim, equal=False)


@COUPLING.register(operator.getitem)
def getitem_coupling(r) -> None:
    src, idx = r.node.args
    y = r.out()
    if y is None:
        return
    if isinstance(idx, int) and idx < 0 and isinstance(src, fx.Node) \
            and isinstance(src.meta.get("tensor_meta"), (tuple, list)):
        idx += len(src.meta["tensor_meta"])   # spx[-1]: the last item of a split (Res2Net)
    item = r.output_of(src, idx) if isinstance(idx, int) else None
    if item is not None:   # an item of a tuple output
        r.identity(item, y)
        return
    x = r.key_of(src)
    if x is None:
        raise ValueError("indexing a non-tensor")
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in idx):
        raise ValueError("advanced or dynamic indexing")
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded = []
    for i in idx:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (r.rank(x) - n_real))
        else:
            expanded.append(i)
    expanded.extend([slice(None)] * (r.rank(x) - sum(1 for i in expanded if i is not None)))
    dx = dy = 0
    for i in expanded:
        if i is None:
            dy += 1
        elif isinstance(i, int):
            dx += 1
        else:
            pos = np.arange(r.shape(x)[dx])[i]
            if i.step not in (None, 1):
                pass  # strided slices stop here (their constants cannot follow pruning)
            elif len(pos) == r.shape(x)[dx]:
                r.same(x, dx, y, dy)
            else:
                r.couple(x, dx, y, dy, pos, np.arange(len(pos)), kind="slice")
            dx += 1
            dy += 1


# ---- resizing under pruning
@RESIZE.register(operator.getitem)
def getitem_resize(s, node, _):
    """Slice bounds count kept channels."""
    src, idx = node.args
    shape = s.old_shape(src) if isinstance(src, fx.Node) else None
    if shape is None:
        return
    items = idx if isinstance(idx, tuple) else (idx,)
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    new_items, d = [], 0
    for i in items:
        if i is Ellipsis:
            new_items.append(i)
            d += len(shape) - n_real
            continue
        if i is None:
            new_items.append(i)
            continue
        if isinstance(i, slice) and s.node_mask(src, d) is not None:
            start, stop, _ = i.indices(shape[d])
            i = slice(None if i.start is None else s.kept_count(src, d, 0, start),
                      None if i.stop is None else s.kept_count(src, d, 0, stop), i.step)
        new_items.append(i)
        d += 1
    node.args = (src, tuple(new_items) if isinstance(idx, tuple) else new_items[0])


@RESIZE.register("split", torch.split, "split_with_sizes")
def split_resize(s, node, _):
    spec = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    new = [s.node_shape(node, i)[dim] for i in range(s.n_outputs(node))]
    value = new[0] if isinstance(spec, int) else new
    if len(node.args) > 1:
        node.args = (node.args[0], value) + tuple(node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "split_size_or_sections": value}

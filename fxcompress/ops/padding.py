"""Padding (F.pad, nn.ZeroPad*d / ConstantPad*d / ReflectionPad*d / ReplicationPad*d / CircularPad*d).

Channels: `pad` lists (before, after) pairs from the last dim backwards, so the dims it leaves alone (batch,
channels) pass through and the padded ones are the op's business; a pad that reaches the channel dim keeps
its channels (a constant pad would add channels a pruned model must still have).

INT8: a pad moves values, so it keeps its input's codes (a pass-through) where the padding value is one the
codes hold: every non-constant mode (reflect, replicate, circular), a constant 0 (every activation range
holds 0), and -inf read only by max pools (timm's same-padding MaxPool2dSame, nasnet's cells): the lowest
code pads there, and a window's maximum is the same, since every window holds a value of the tensor. Any
other constant keeps the pad's own quantizer (the padding value is observed).
"""
from __future__ import annotations

import math

import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .pooling import is_max_pool
from .registry import COUPLING, QUANT, QuantRule

PAD_MODULES = tuple(getattr(nn, f"{kind}Pad{d}d") for kind in ("Zero", "Constant", "Reflection", "Replication",
                                                                 "Circular") for d in (1, 2, 3)
                    if hasattr(nn, f"{kind}Pad{d}d"))


def _padded_dims(r, pad) -> int:
    """How many trailing dims `pad` pads (its amounts may be graph values: only their count matters here)."""
    if not isinstance(pad, (tuple, list)):
        raise ValueError("padding list not known before running the model")
    return len(pad) // 2


def pad_channels(r, x, y, pad) -> None:
    padded = _padded_dims(r, pad)
    for d in range(r.rank(y) - padded):
        r.same(x, d, y, d)
    for d in range(max(r.rank(y) - padded, 0), r.rank(y)):
        j = r.rank(y) - 1 - d   # pad[2j: 2j + 2] pads dim d
        if list(pad[2 * j: 2 * j + 2]) == [0, 0]:
            r.same(x, d, y, d)
        elif d == 1:
            r.block(y, d, f"{r.name} pads the channel dim")


@COUPLING.register(*PAD_MODULES)
def pad_module_coupling(r) -> None:
    pad_channels(r, r.arg(0, "input"), r.out(), tuple(r.module.padding))


@COUPLING.register(F.pad)
def pad_function_coupling(r) -> None:
    pad_channels(r, r.arg(0, "input"), r.out(), r.raw(1, "pad"))


def _pad_value(node: fx.Node, modules):
    """(mode, constant value) of a pad call; the value is None for non-constant modes."""
    if node.op == "call_module":
        m = modules[node.target]   # ZeroPad*d are ConstantPad*d of value 0
        return ("constant", m.value) if hasattr(m, "value") else ("other", None)
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
    return mode, 0.0 if value is None else value


def pad_keeps_codes(node: fx.Node, modules) -> bool:
    """Whether the pad's output can carry its input's codes (module docstring)."""
    mode, value = _pad_value(node, modules)
    if mode != "constant":
        return True
    if not isinstance(value, (int, float)):
        return False   # a graph value
    if value == 0:
        return True
    return value == -math.inf and bool(node.users) and all(is_max_pool(u, modules) for u in node.users)


def pad_may_be_quantized(node: fx.Node, modules) -> bool:
    """A -inf pad carries its input's codes (the lowest code pads), but has no quantizer of its own: one would
    observe -inf (pnasnet5large, whose unfolded BatchNorm before a same-padding max pool has a float reader:
    the max pool's output is quantized instead)."""
    return _pad_value(node, modules)[1] != -math.inf


QUANT.register(*PAD_MODULES, F.pad, rule=QuantRule("passthrough", applies=pad_keeps_codes,
                                                  own_quantizer=pad_may_be_quantized))

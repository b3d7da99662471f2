"""Padding (F.pad, nn.ZeroPad*d / ConstantPad*d / ReflectionPad*d / ReplicationPad*d / CircularPad*d).

Channels: `pad` lists (before, after) pairs from the last dim backwards, so the dims it leaves alone (batch,
channels) pass through and the padded ones are the op's business; a pad that reaches the channel dim keeps
its channels (a constant pad would add channels a pruned model must still have).
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .registry import COUPLING

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

"""Per-channel scale: y = x * w along one dimension (`ChannelScale`), the diagonal map ResRep trains where
a full compactor cannot merge (after a depthwise conv, a BatchNorm after a concatenation) or would be too
large (a C x C matrix for thousands of channels).

Channels: the input's and the scaled dim's positions are the output's; the weight is per channel (it
makes the channel's value: a producer). No MACs, like a BatchNorm's affine.

    s = ChannelScale(64, dim=1, rank=4)     # NCHW; ChannelScale(64, dim=-1) for (..., C) as after a Linear
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import COUPLING


class ChannelScale(nn.Module):
    def __init__(self, channels: int, dim: int = 1, rank: int = 4):
        super().__init__()
        if not -rank <= dim < rank:
            raise ValueError(f"ChannelScale dim={dim} is outside a rank-{rank} input")
        self.weight = nn.Parameter(torch.ones(channels))
        self.dim, self.rank = dim % rank, rank
        # the broadcast shape is fixed at construction, so the forward traces to one reshape and one mul
        self.shape = tuple(-1 if d == self.dim else 1 for d in range(rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(self.shape)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, dim={self.dim}, rank={self.rank}"


@COUPLING.register(ChannelScale)
def channel_scale_coupling(r) -> None:
    x, y = r.arg(0, "input"), r.out()
    r.identity(x, y)
    w = r.param("weight")
    r.same(y, r.module.dim % r.rank(y), w, 0)
    r.produces(w, 0)

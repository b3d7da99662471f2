"""Compactors: the identity-initialised channel maps ResRep trains after a group's producers.

A compactor is a plain `nn.Conv2d` (1x1) or `nn.Linear` subclass, so the channel rules, MACs rules and the
ONNX exporter treat it as what it is; only ResRep's update and merge look at the subclass.

- `ConvCompactor` (C -> C, 1x1, no bias) follows a dense conv (or its BatchNorm) and merges into it:
  Q(BN(conv(x))) is one conv with weight Q @ (s * W) and bias Q @ b'.
- `LinearCompactor` (C -> C, no bias) does the same for a Linear producer.
- `ChannelScale` (one scale per channel, `fxcompress.ops.scale`) follows a producer that cannot absorb a full
  matrix (a grouped/depthwise conv, a BatchNorm after a concatenation) or one wider than ResRep's
  `max_full_channels` (a full compactor has C x C weights); it merges into that producer's rows.

    q = ConvCompactor(64)          # identity: q(x) == x
    rows = q.rows()                # (64, 64): one row per output channel, what the lasso acts on
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...ops import scale


class Compactor:
    """Mixin: what ResRep needs of every compactor kind."""

    def rows(self) -> torch.Tensor:
        """The weight as one row per output channel (a view: the lasso and the masks act on it)."""
        return self.weight.view(self.weight.shape[0], -1)

    def row_norms(self) -> torch.Tensor:
        return self.rows().detach().norm(dim=1)


class ConvCompactor(Compactor, nn.Conv2d):
    def __init__(self, channels: int):
        super().__init__(channels, channels, 1, bias=False)
        with torch.no_grad():
            self.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))


class LinearCompactor(Compactor, nn.Linear):
    def __init__(self, channels: int):
        super().__init__(channels, channels, bias=False)
        with torch.no_grad():
            self.weight.copy_(torch.eye(channels))


class ChannelScale(Compactor, scale.ChannelScale):
    """A per-channel scale, initialised to ones, acting on dim `dim` (1 for NCHW, -1 after a Linear)."""


COMPACTORS = (ConvCompactor, LinearCompactor, ChannelScale)


def is_compactor(module: nn.Module) -> bool:
    return isinstance(module, Compactor)

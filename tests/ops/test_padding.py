"""Padding passes the channels it does not pad; padding the channel dim fixes them, naming the op. torch.stack
moves every input dim after the new one up by one."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxcompress
from fxcompress.passes import ChannelGroups, MagnitudePrune


class Padded(nn.Module):
    def __init__(self, pad, b_in=8):
        super().__init__()
        self.pad = pad
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(b_in, 4, 3)

    def forward(self, x):
        return self.b(F.pad(self.a(x), self.pad)).mean((2, 3))


def groups_of(model, x):
    result = fxcompress.compile(model, [ChannelGroups()], x, progress=False)
    return result, result.report.records[0].metrics


def test_spatial_padding_keeps_channels_prunable_and_exact():
    model, x = Padded((1, 2, 0, 1)).eval(), torch.randn(1, 3, 6, 6)
    result = fxcompress.compile(model, [MagnitudePrune(0.5)], x, progress=False)
    assert result.model.a.out_channels == 4 and result.report.records[0].metrics["max_rel_error"] < 1e-5


def test_padding_the_channel_dim_fixes_the_group_and_says_why():
    _, metrics = groups_of(Padded((0, 0, 0, 0, 0, 2), b_in=10).eval(), torch.randn(1, 3, 6, 6))
    assert any("pads the channel dim" in reason for reason in metrics["fixed_reasons"])


class Stacked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        paths = torch.stack([self.a(x), self.b(x)], dim=1)   # [N, 2, C, H, W]
        return self.c(paths.sum(1)).mean((2, 3))


def test_stack_couples_its_inputs_channels_and_prunes_exactly():
    model, x = Stacked().eval(), torch.randn(2, 3, 5, 5)
    result = fxcompress.compile(model, [MagnitudePrune(0.5)], x, progress=False)
    assert result.model.a.out_channels == result.model.b.out_channels == result.model.c.in_channels == 4
    assert result.report.records[0].metrics["max_rel_error"] < 1e-5

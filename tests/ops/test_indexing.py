"""Indexing a split from the end (`spx[-1]`, Res2Net) is the same item as from the front: the piece's channels
follow the split's, so pruning stays exact (before: the pruned model no longer ran, as on timm's res2net)."""
import torch
import torch.nn as nn

import fxcompress
from fxcompress.passes import MagnitudePrune


class Res2NetLike(nn.Module):
    def __init__(self, width=8, scale=4):
        super().__init__()
        self.width = width
        self.conv1 = nn.Conv2d(3, width * scale, 1)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(scale - 1))
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.conv3 = nn.Conv2d(width * scale, 6, 1)

    def forward(self, x):
        spx = torch.split(self.conv1(x), self.width, 1)
        out = [conv(spx[i]) for i, conv in enumerate(self.convs)] + [self.pool(spx[-1])]
        return self.conv3(torch.cat(out, 1)).mean((2, 3))


def test_last_item_of_a_split_prunes_with_it():
    model, x = Res2NetLike().eval(), torch.randn(1, 3, 8, 8)
    result = fxcompress.compile(model, [MagnitudePrune(0.5)], x, progress=False)
    assert result.model.conv1.out_channels == 16 and result.model.conv3.in_channels == 16
    assert result.report.records[0].metrics["max_rel_error"] < 1e-5

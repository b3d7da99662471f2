"""Reductions: a p-norm over the spatial dims (ConvNeXt V2's global response norm) carries channels through,
so the channels that feed it prune exactly; a norm over the channels stops them."""
import pytest
import torch
import torch.nn as nn

import fxcompress
from fxcompress.core.context import PassContext
from fxcompress.graph.tracing import trace
from fxcompress.passes import ChannelGroups, PruneChannels


class SpatialNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.a, self.b, self.dim = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 1), dim

    def forward(self, x):
        y = self.a(x)
        return self.b(y * (1 + y.norm(p=2, dim=self.dim, keepdim=True)))


def group_of(model, x, param):
    result = PassContext(trace(model), (x,), progress=False).get(ChannelGroups)
    return next(g for g in result.groups if any(m.name == param and m.role == "producer"
                                                for m in g.param_members()))


def test_spatial_norm_passes_channels_and_prunes_exactly():
    model, x = SpatialNorm((2, 3)).eval(), torch.randn(2, 3, 8, 8)
    group = group_of(model, x, "a.weight")
    assert group.prunable, group
    out = fxcompress.compile(model, [PruneChannels({group.id: [1, 4]})], x, progress=False)   # units kept
    assert out.report.records[0].metrics["max_rel_error"] < 1e-5
    assert out.model.get_submodule("a").weight.shape[0] == 2


@pytest.mark.parametrize("dim", [1, (1, 2, 3)])
def test_norm_over_channels_stops_them(dim):
    model, x = SpatialNorm(dim).eval(), torch.randn(2, 3, 8, 8)
    assert not group_of(model, x, "a.weight").prunable

"""Reductions: a p-norm over the spatial dims (ConvNeXt V2's global response norm) carries channels through;
a sum, mean or p-norm over the channels sums them away, so they prune exactly (a mean keeps its divisor), and
where the removed entries are not zero there (a hand-written LayerNorm) the group stays whole, with the reason;
a max over the channels keeps them all."""
import pytest
import torch
import torch.nn as nn

import fxcompress
from fxcompress.core.context import PassContext
from fxcompress.graph.tracing import trace
from fxcompress.ops.reduction import sum_divided
from fxcompress.passes import ChannelGroups, MagnitudePrune, PruneChannels


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
def test_a_norm_over_the_channels_sums_them_away_exactly(dim):
    model, x = SpatialNorm(dim).eval(), torch.randn(2, 3, 8, 8)
    group = group_of(model, x, "a.weight")
    assert group.prunable, group
    out = fxcompress.compile(model, [PruneChannels({group.id: [0, 3, 5]})], x, progress=False)
    assert out.report.records[0].metrics["max_rel_error"] < 1e-5


class RMSNormed(nn.Module):
    """mobilenetv5's RmsNorm2d written out: x * rsqrt(mean over channels of x^2 + eps) * w."""

    def __init__(self, c=8):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, 4, 1)
        self.w = nn.Parameter(torch.rand(1, c, 1, 1) + 0.5)

    def forward(self, x):
        y = self.a(x)
        y = y * torch.rsqrt(y.pow(2).mean(dim=1, keepdim=True) + 1e-6) * self.w
        return self.b(y)


def test_a_mean_over_the_channels_keeps_its_divisor_and_prunes_exactly():
    model, x = RMSNormed().eval(), torch.randn(2, 3, 8, 8)
    group = group_of(model, x, "a.weight")
    assert group.prunable, group
    out = fxcompress.compile(model, [PruneChannels({group.id: [0, 2, 3, 7]})], x, progress=False)
    assert out.report.records[0].metrics["max_rel_error"] < 1e-5
    assert any(n.target is sum_divided and n.args[3] == 8.0 for n in out.model.graph.nodes)


class HandWrittenLayerNorm(nn.Module):
    """ConvNeXt's original channels-first LayerNorm: x - mean, so a zeroed channel is not zero at the second
    mean."""

    def __init__(self, c=8):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, 4, 1)
        self.w, self.bias = nn.Parameter(torch.rand(c, 1, 1) + 0.5), nn.Parameter(torch.randn(c, 1, 1))

    def forward(self, x):
        y = self.a(x)
        u = y.mean(1, keepdim=True)
        v = (y - u).pow(2).mean(1, keepdim=True)
        return self.b(self.w * (y - u) / torch.sqrt(v + 1e-6) + self.bias)


def test_channels_a_mean_sees_non_zero_stay_whole_with_the_reason():
    model, x = HandWrittenLayerNorm().eval(), torch.randn(2, 3, 8, 8)
    out = fxcompress.compile(model, [MagnitudePrune(0.5)], x, progress=False)
    metrics = out.report.records[0].metrics
    assert metrics["max_rel_error"] < 1e-5
    kept = metrics["groups_kept_whole"]
    assert kept and all("a sum or mean over them" in why for why in kept.values())
    assert out.model.get_submodule("a").out_channels == 8


def test_a_max_over_the_channels_keeps_them():
    class MaxOver(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y * y.amax(1, keepdim=True))
    assert not group_of(MaxOver().eval(), torch.randn(2, 3, 8, 8), "a.weight").prunable

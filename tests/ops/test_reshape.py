"""movedim couples dims like the permutation it is: channels pruned across it stay exact."""
import pytest
import torch
import torch.nn as nn

import fxcompress
from fxcompress.core.context import PassContext
from fxcompress.graph.tracing import trace
from fxcompress.passes import ChannelGroups, PruneChannels


class MoveDim(nn.Module):
    def __init__(self, src, dst):
        super().__init__()
        self.src, self.dst = src, dst
        self.a, self.fc = nn.Conv2d(3, 6, 1), nn.Linear(6, 4)

    def forward(self, x):
        y = torch.movedim(self.a(x), self.src, self.dst)    # channels last
        return self.fc(y).mean((1, 2))


@pytest.mark.parametrize("src,dst", [(1, -1), (1, 3), ((1,), (3,))])
def test_movedim_carries_channels_to_their_new_place(src, dst):
    model = MoveDim(src, dst).eval()
    x = torch.randn(2, 3, 5, 5)
    result = PassContext(trace(model), (x,), progress=False).get(ChannelGroups)
    group = next(g for g in result.groups if any(m.name == "a.weight" and m.dim == 0 for m in g.param_members()))
    assert group.prunable and any(m.name == "fc.weight" and m.dim == 1 for m in group.param_members())
    out = fxcompress.compile(model, [PruneChannels({group.id: [1, 4]})], x, progress=False)
    assert out.report.records[0].metrics["max_rel_error"] < 1e-5 and out.model.fc.in_features == 2

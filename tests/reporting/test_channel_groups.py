"""Rows of the channel-groups explanation: which groups are channels, their MACs share, model order."""
import pytest
import torch
import torch.nn as nn

from fxcompress.graph.macs import count_macs
from fxcompress.graph.tracing import trace, propagate_shapes
from fxcompress.models import get_model
from fxcompress.reporting.channel_groups import explain_model, rows_for_layer


class Concat(nn.Module):
    """Two branches of 6 and 10 channels concatenated, then read by one conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(8, 6, 1), nn.Conv2d(8, 10, 3, padding=1)
        self.mix = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.mix(torch.cat([self.b1(x), self.b2(x)], 1)).mean((2, 3))


def test_a_layer_reading_a_concatenation_splits_its_macs_between_the_parts():
    x = torch.randn(1, 3, 8, 8)
    explained = explain_model(Concat().eval(), (x,))
    gm = trace(Concat().eval())
    propagate_shapes(gm, (x,))
    macs = count_macs(gm)
    per_module = {n.target: macs.per_node[n.name] for n in gm.graph.nodes if n.name in macs.per_node}
    b1 = next(r for r in explained.rows if r.producers == ["b1"])
    assert b1.prunable and b1.width == 6 and b1.modules == ["b1", "mix"]
    assert b1.macs_share == pytest.approx((per_module["b1"] + 6 / 16 * per_module["mix"]) / macs.macs)
    out = next(r for r in explained.rows if r.producers == ["mix"])
    assert not out.prunable and out.reason == "model output (from mean)"   # the node feeding the output


def test_kernel_taps_are_not_channel_groups_and_rows_come_in_model_order():
    explained = explain_model(get_model("resnet20").eval(), (torch.randn(1, 3, 32, 32),))
    model = get_model("resnet20")
    kernels = [r for r in explained.rows if not r.channels]
    assert kernels and all(r.width in (1, 3) and not r.prunable and not r.producers for r in kernels)
    assert all("not carried through" in r.reason for r in kernels)
    channel = explained.channel_rows()
    assert all(r.channels for r in channel) and len(channel) + len(kernels) == len(explained.rows)
    assert [r.first for r in explained.rows] == sorted(r.first for r in explained.rows)
    # a block's inner group: its first conv's output channels, read by the second conv
    inner = rows_for_layer(channel, "layers.4.conv1")
    assert [r.producers for r in inner][-1] == ["layers.4.conv1"]
    assert inner[-1].width == dict(model.named_modules())["layers.4.conv1"].out_channels

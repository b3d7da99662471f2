"""Core: reshape alignment, the rule registry's conservative defaults, and the dimension graph."""
import networkx as nx
import torch
import torch.nn as nn
import torchvision

from fxcompress.graph.shapes import record_shapes
from fxcompress.ops.registry import COUPLING
from fxcompress.ops.reshape import _align_blocks
from fxcompress.prune.coupling import build_channel_graph
from fxcompress.graph.macs import count_macs
from fxcompress.graph.tracing import trace
from fxcompress.graph.keys import ValueKey


def groups(model, x):
    gm = trace(model.eval())
    record_shapes(gm, (x,))
    return build_channel_graph(gm).build_groups(count_macs(gm).per_node)


def test_align_blocks():
    assert _align_blocks((2, 8, 4, 4), (2, 128)) == [([0], [0]), ([1, 2, 3], [1])]
    assert _align_blocks((2, 6, 1, 1), (2, 6)) == [([0], [0]), ([1], [1]), ([2], []), ([3], [])]
    assert _align_blocks((2, 8, 5), (2, 2, 4, 5)) == [([0], [0]), ([1], [1, 2]), ([2], [3])]
    assert _align_blocks((6, 4), (4, 6)) == [([0, 1], [0, 1])]


def test_registry_has_one_rule_per_op_kind():
    assert nn.Conv2d in COUPLING.modules and nn.MultiheadAttention in COUPLING.modules and nn.LayerNorm in COUPLING.modules
    assert torch.cat in COUPLING.functions and "view" in COUPLING.methods and "permute" in COUPLING.methods


def test_unknown_module_blocks_its_parameters_and_neighbours():
    class Mystery(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8))

        def forward(self, x):
            return x * self.w.view(1, 8, 1, 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.m, self.b = nn.Conv2d(3, 8, 1), Mystery(), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(self.m(self.a(x)))

    class Leafy(torch.fx.Tracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, Mystery) or super().is_leaf_module(m, name)

    net = Net().eval()
    gm = torch.fx.GraphModule(net, Leafy().trace(net))
    record_shapes(gm, (torch.randn(1, 3, 4, 4),))
    r = build_channel_graph(gm).build_groups({})
    g = next(g for g in r.groups for m in g.members if m.key == ValueKey.of_param("a.weight") and m.dim == 0)
    assert not g.prunable and any("Mystery" in reason for reason in g.reasons)
    g = next(g for g in r.groups for m in g.members if m.key == ValueKey.of_param("m.w"))
    assert not g.prunable


def test_dimension_graph_is_networkx_and_components_match_groups():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    r = groups(net, torch.randn(1, 3, 8, 8))
    assert isinstance(r.graph, nx.Graph)
    (g,) = r.prunable()
    keys = {(m.key, m.dim) for m in g.members}
    component = nx.node_connected_component(r.graph, (ValueKey.of_param("0.weight"), 0))
    assert keys <= component and (ValueKey.of_param("3.weight"), 1) in component and (ValueKey.of_param("1.running_var"), 0) in component
    assert g.size == 8 and g.macs_per_unit > 0 and g.params_per_unit > 0


def test_strided_slice_and_int_index_stop_channels():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y[:, ::2]), y[:, 3]

    r = groups(Net(), torch.randn(1, 3, 4, 4))
    g = next(g for g in r.groups for m in g.members if m.key == ValueKey.of_param("a.weight") and m.dim == 0)
    assert not g.prunable


def test_plain_slice_keeps_the_rest_prunable():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(5, 2, 1), nn.Conv2d(3, 2, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y[:, :5]) + self.c(y[:, 5:])

    r = groups(Net(), torch.randn(1, 3, 4, 4))
    # channels 0..4 reach b, 5..7 reach c: two groups, both prunable
    found = {g.id: g for g in r.groups for m in g.members if m.key == ValueKey.of_param("a.weight") and m.dim == 0}
    assert sorted(g.size for g in found.values()) == [3, 5] and all(g.prunable for g in found.values())
    for g in found.values():
        a_rows = next(m for m in g.members if m.key == ValueKey.of_param("a.weight") and m.dim == 0)
        reader = next(m for m in g.members if m.key in (ValueKey.of_param("b.weight"), ValueKey.of_param("c.weight")) and m.dim == 1)
        offset = 0 if reader.key == ValueKey.of_param("b.weight") else 5
        assert sorted(a_rows.positions) == sorted(reader.positions + offset)


def test_groups_are_deterministic_and_a_residual_stream_is_one_group():
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    a, b = groups(model, x), groups(model, x)
    assert [(g.size, g.prunable, [(m.key, m.dim) for m in g.members]) for g in a.groups] == \
        [(g.size, g.prunable, [(m.key, m.dim) for m in g.members]) for g in b.groups]
    # the residual stream of layer1 is one group holding every conv that writes or reads it
    stream = next(g for g in a.groups if any(m.key == ValueKey.of_param("layer1.0.conv2.weight") and m.dim == 0 for m in g.members))
    keys = {m.key for m in stream.members}
    assert {ValueKey.of_param("conv1.weight"), ValueKey.of_param("layer1.1.conv2.weight"), ValueKey.of_param("layer2.0.conv1.weight"),
            ValueKey.of_param("layer2.0.downsample.0.weight")} <= keys
    assert stream.size == 64 and stream.prunable

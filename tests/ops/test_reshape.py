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


# ---- sizes read in the graph from a tensor the plan leaves whole (timm's pvt_v2, coat, gcvit)
class HeadsFromInputSize(nn.Module):
    """`B, N, C = x.shape` on the block's input (LayerNormed: kept whole), then the values split into heads
    and merged back with sizes computed from C: pruning the values must rewrite those sizes."""

    def __init__(self):
        super().__init__()
        self.norm, self.v, self.proj = nn.LayerNorm(16), nn.Linear(16, 16), nn.Linear(16, 5)

    def forward(self, x):
        B, N, C = x.shape
        h = self.v(self.norm(x)).reshape(B, N, 2, C // 2).relu()
        return self.proj(h.reshape(B, N, C))


def test_sizes_read_from_a_whole_tensor_follow_the_pruned_values():
    model = HeadsFromInputSize().eval()
    x = torch.randn(2, 7, 16)
    result = PassContext(trace(model), (x,), progress=False).get(ChannelGroups)
    group = next(g for g in result.groups if any(m.name == "v.weight" and m.dim == 0 for m in g.param_members()))
    assert group.prunable and group.size == 8, group.reasons   # the two heads share their channel positions
    out = fxcompress.compile(model, [PruneChannels({group.id: [0, 3, 5]})], x, progress=False)
    assert out.report.records[0].metrics["max_rel_error"] < 1e-5 and out.model.proj.in_features == 6
    # the rewritten sizes are C * 6 // 16 and (C // 2) * 6 // 16: another token count still runs
    assert out.model(torch.randn(3, 4, 16)).shape == (3, 4, 5)


# ---- ONNX export: unfold and fold with sizes torch's exporter cannot read (halo nets, volo)
class HaloWindows(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        kv = nn.functional.pad(self.conv(x), [2, 2, 2, 2])   # the exporter loses the sizes behind the Pad
        w = kv.unfold(2, 6, 4).unfold(3, 6, 4)                # (B, C, 3, 3, 6, 6)
        return w.reshape(x.shape[0], 4, 9, 36).mean(-1)


class FoldBack(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        cols = nn.functional.unfold(self.conv(x), 3, padding=1, stride=2)
        return nn.functional.fold(cols * 2, (x.shape[2], x.shape[3]), 3, padding=1, stride=2)


@pytest.mark.parametrize("model,size", [(HaloWindows, 12), (FoldBack, 10)])
def test_windows_export_with_onnxruntime_parity(model, size, tmp_path):
    from fxcompress.passes import ExportONNX
    x = torch.randn(1, 3, size, size)
    out = fxcompress.compile(model().eval(), [ExportONNX(str(tmp_path / "m.onnx"))], x, progress=False)
    assert out.report.records[0].metrics["max_rel_error"] < 1e-4
    assert not any(str(n.target) in ("index_select", "unfold") and n.op == "call_function"
                   for n in out.model.graph.nodes)   # the rewrite was on a copy: the model is as traced

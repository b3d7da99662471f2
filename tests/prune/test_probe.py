"""The probe: sizes computed in the graph from another tensor fix the groups that reach them, also for a
model that cannot run on meta tensors (probed on a real copy), without editing the analysis' result."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import fxcompress
from fxcompress.core.context import PassContext
from fxcompress.graph.keys import ValueKey
from fxcompress.graph.shapes import record_shapes
from fxcompress.graph.tracing import trace
from fxcompress.passes import ChannelGroups, MagnitudePrune
from fxcompress.prune.coupling import build_channel_graph
from fxcompress.prune.probe import probe_groups

X = torch.randn(2, 3, 16, 16)


def cbr(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SizedByOtherBranch(nn.Module):
    """b's pooled map is viewed as (B, <a's width>, -1); `on_cpu` moves the logits to the CPU, which a meta
    tensor cannot do, so the probe must run on real tensors."""

    def __init__(self, on_cpu: bool):
        super().__init__()
        self.on_cpu = on_cpu
        self.stem, self.a, self.b = cbr(3, 8), cbr(8, 6), cbr(8, 12)
        self.fc, self.fc2 = nn.Linear(12 * 4, 5), nn.Linear(6, 5)

    def forward(self, x):
        x = self.stem(x)
        y, z = self.a(x), F.adaptive_avg_pool2d(self.b(x), 2)
        z = z.view(z.size(0), y.size(1), -1)     # a size computed from another branch's channels
        out = self.fc(z.flatten(1)) + self.fc2(y.mean((2, 3)))
        return out.cpu() if self.on_cpu else out


def _context(on_cpu):
    gm = trace(SizedByOtherBranch(on_cpu).eval())
    assert record_shapes(gm, (X,)).method == ("fake" if on_cpu else "meta")
    return PassContext(gm=gm, example_inputs=(X,))


def _group_of(result, param):
    key = ValueKey.of_param(param)
    return next(g for g in result.groups for m in g.members if m.key == key and m.dim == 0)


def _state(result):
    return [(g.id, g.prunable, list(g.reasons)) for g in result.groups]


def test_dynamic_size_is_fixed_on_a_real_copy_when_meta_cannot_run():
    ctx = _context(on_cpu=True)
    result = build_channel_graph(ctx.gm).build_groups(ctx.flops().per_node)
    a, b, stem = (_group_of(result, f"{n}.0.weight") for n in ("a", "b", "stem"))
    assert a.prunable and b.prunable and stem.prunable   # the op rules alone do not see the view's size
    before = copy.deepcopy(_state(result))

    fixed, how = probe_groups(ctx.gm, result, (X,))
    assert how == "real"                                  # meta tensors cannot run .cpu()
    assert set(fixed) == {a.id, b.id}                     # the view reads a's width and b's values
    assert "view" in fixed[a.id] and "computed from another tensor" in fixed[a.id]
    assert _state(result) == before                       # fixes are returned, not written into the result

    groups = ctx.get(ChannelGroups)                       # the pass applies them to a copy
    assert groups is not result and ctx.get(ChannelGroups) is groups
    assert not _group_of(groups, "a.0.weight").prunable and _group_of(groups, "stem.0.weight").prunable
    assert _group_of(groups, "a.0.weight").reasons == [fixed[a.id]]
    assert _state(result) == before


def test_meta_and_real_probes_agree():
    results = {}
    for on_cpu in (False, True):
        ctx = _context(on_cpu)
        result = build_channel_graph(ctx.gm).build_groups(ctx.flops().per_node)
        results[on_cpu] = probe_groups(ctx.gm, result, (X,))
    assert results[False][1] == "meta" and results[True][1] == "real"
    assert results[False][0] == results[True][0]


def test_pruning_keeps_the_sizing_branch_whole_and_stays_exact():
    model = SizedByOtherBranch(on_cpu=True).eval()
    res = fxcompress.compile(model, [MagnitudePrune(0.5)], X, progress=False)
    out = res.model
    assert out.get_submodule("a.0").out_channels == 6 and out.get_submodule("stem.0").out_channels == 4
    assert res.report.records[0].metrics["max_rel_error"] < 1e-5


def test_a_clean_probe_runs_the_pruned_copy_on_meta_only(monkeypatch):
    """A graph with computed sizes that all follow their own tensor: one meta run of the pruned copy (the
    unpruned graph is run on meta only to decide meta vs real after a mismatch)."""
    from fxcompress.prune import probe

    class SelfSized(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = cbr(3, 8), nn.Linear(8 * 4, 5)

        def forward(self, x):
            z = F.adaptive_avg_pool2d(self.body(x), 2)
            return self.fc(z.view(z.size(0), -1))

    gm = trace(SelfSized().eval())
    record_shapes(gm, (X,))
    result = build_channel_graph(gm).build_groups(PassContext(gm=gm, example_inputs=(X,)).flops().per_node)
    runs = []
    real = probe.run_on_meta
    monkeypatch.setattr(probe, "run_on_meta", lambda g, *a: (runs.append(g), real(g, *a))[1])
    assert probe_groups(gm, result, (X,)) == ({}, "meta")
    assert len(runs) == 1 and runs[0] is not gm

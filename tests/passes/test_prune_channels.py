"""PruneChannels: every coupling pattern pruned at several ratios, exact and ONNX-verified; bad plans and
wrong rules are caught."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import fxcompress
from fxcompress import PassError, VerificationError
from fxcompress.ops.registry import COUPLING
from fxcompress.core.context import PassContext
from fxcompress.passes import ChannelGroups, ExportONNX, PruneChannels
from fxcompress.graph.tracing import trace
from pruning_models import COUPLING_MODELS, ResidualProjection, TinyAttention, cbr, randomize

X = torch.randn(2, 3, 32, 32)


def analyse(model):
    ctx = PassContext(gm=trace(model.eval()), example_inputs=(X,))
    return ctx.get(ChannelGroups)


def random_plan(result, ratio, seed=0):
    rng = np.random.default_rng(seed)
    plan = {}
    for g in result.prunable():
        keep = max(1, g.size - int(round(ratio * g.size)))
        plan[g.id] = sorted(rng.choice(g.size, keep, replace=False).tolist())
    return plan


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("name", sorted(COUPLING_MODELS))
def test_pruned_model_is_exact_and_exports(name, ratio, tmp_path):
    model = randomize(COUPLING_MODELS[name](), seed=1)
    result = analyse(model)
    plan = random_plan(result, ratio)
    out = fxcompress.compile(model, [PruneChannels(plan), ExportONNX(str(tmp_path / "m.onnx"))], X, progress=False)
    prune, export = out.report.records
    assert prune.params_after < prune.params_before
    assert prune.metrics["max_rel_error"] < 1e-5 and export.metrics["max_rel_error"] < 1e-4
    assert prune.metrics["units_removed"] == sum(result.groups[g].size - len(k) for g, k in plan.items())
    for m in out.model.modules():  # module attributes describe the new weights
        if isinstance(m, nn.Conv2d):
            assert m.out_channels == m.weight.shape[0] and m.in_channels == m.weight.shape[1] * m.groups
        if isinstance(m, nn.Linear):
            assert (m.out_features, m.in_features) == tuple(m.weight.shape)
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_features == m.running_mean.shape[0] == m.weight.shape[0]
    # forward and backward still work
    out.model.train()
    y = out.model(X)
    (y[0] if isinstance(y, tuple) else y).sum().backward()


def test_pruning_keeps_conv_hyperparameters_and_dtype():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1)).double().eval()
    x = X.double()
    ctx = PassContext(gm=trace(model), example_inputs=(x,))
    result = ctx.get(ChannelGroups)
    (g,) = result.prunable()
    out = fxcompress.compile(model, [PruneChannels({g.id: [1, 5, 6]})], x, progress=False).model
    conv, bn = out.get_submodule("0"), out.get_submodule("1")
    assert (conv.stride, conv.padding, conv.dilation, conv.out_channels) == ((2, 2), (2, 2), (2, 2), 3)
    assert conv.weight.dtype == torch.float64 and conv.bias is not None and bn.running_var.shape == (3,)
    assert torch.equal(bn.running_mean, model[1].running_mean[[1, 5, 6]])
    assert torch.equal(out.get_submodule("3").weight, model[3].weight[:, [1, 5, 6]])


def test_bad_plans_name_the_group():
    model = randomize(ResidualProjection())
    result = analyse(model)
    fixed = next(g for g in result.groups if not g.prunable and g.size > 1)
    ok = result.prunable()[0]
    with pytest.raises(PassError, match=f"group {fixed.id}.*fixed"):
        fxcompress.compile(model, [PruneChannels({fixed.id: [0]})], X, progress=False)
    with pytest.raises(PassError, match="keeps no unit"):
        fxcompress.compile(model, [PruneChannels({ok.id: []})], X, progress=False)
    with pytest.raises(PassError, match="has units"):
        fxcompress.compile(model, [PruneChannels({ok.id: [ok.size + 3]})], X, progress=False)
    with pytest.raises(PassError, match="names group"):
        fxcompress.compile(model, [PruneChannels({10 ** 6: [0]})], X, progress=False)


def test_a_wrong_coupling_rule_is_caught_by_the_exactness_check(monkeypatch):
    """A ReLU rule that maps channel c to channel C-1-c prunes the wrong channels: VerificationError."""
    def reversed_relu(r):
        x, y = r.arg(0), r.out()
        for d in range(r.rank(y)):
            if d == 1:
                n = r.shape(y)[1]
                r.couple(x, 1, y, 1, np.arange(n), np.arange(n)[::-1])
            else:
                r.same(x, d, y, d)
    model = nn.Sequential(cbr(3, 8), nn.Conv2d(8, 4, 1)).eval()
    randomize(model)
    monkeypatch.setitem(COUPLING.modules, nn.ReLU, reversed_relu)
    result = analyse(model)
    (g,) = result.prunable()
    with pytest.raises(VerificationError, match="removed channels zeroed"):
        fxcompress.compile(model, [PruneChannels({g.id: [0, 1, 2]})], X, progress=False)


def test_failed_prune_leaves_the_model_untouched(monkeypatch):
    model = randomize(ResidualProjection())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from fxcompress.core import verify
    monkeypatch.setitem(verify.TOLERANCES, "exact_transform", -1.0)  # force the check to fail
    ctx = PassContext(gm=trace(model), example_inputs=(X,))
    gm = ctx.gm
    plan = random_plan(ctx.get(ChannelGroups), 0.5)
    with pytest.raises(VerificationError):
        PruneChannels(plan).run(ctx)
    assert ctx.gm is gm
    for k, v in gm.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_pruning_twice_prunes_attention_again():
    model = randomize(TinyAttention())
    first = fxcompress.compile(model, [PruneChannels(random_plan(analyse(model), 0.5))], X, progress=False).model
    attn = first.get_submodule("attn")
    assert (attn.qk_dim, attn.v_dim, attn.num_heads) == (2, 2, 4)
    second = fxcompress.compile(first, [PruneChannels(random_plan(analyse(first), 0.5, seed=3))], X,
                                progress=False).model
    attn = second.get_submodule("attn")
    assert (attn.qk_dim, attn.v_dim) == (1, 1) and second.get_submodule("mlp.0").out_features == 8

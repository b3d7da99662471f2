import copy

import pytest
import torch
import torch.nn as nn

import fxcompress
from fxcompress import AnalysisPass, LoweringPass, PassError, TransformPass, VerificationError
from fxcompress.passes import CountFlops, ShapeAnalysis


def small():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4))


X = (torch.randn(2, 3, 4, 4),)


class CountingAnalysis(AnalysisPass):
    runs = 0

    def run(self, ctx):
        CountingAnalysis.runs += 1
        return len(ctx.gm.graph.nodes)


class NeedsAnalysis(LoweringPass):
    requires = (CountingAnalysis,)

    def run(self, ctx):
        return {"nodes": ctx.get(CountingAnalysis)}


class ScaleWeights(TransformPass):
    """Changes values (allowed for a non-exact transform), not structure."""

    def run(self, ctx):
        with torch.no_grad():
            ctx.gm.get_submodule("4").weight.mul_(2)
        return {"scaled": 1}


class ScaleWeightsClaimingExact(ScaleWeights):
    verify_exact = True


class BreakShape(TransformPass):
    def run(self, ctx):
        ctx.gm.add_submodule("4", nn.Linear(8 * 16, 5))


class MakeNaN(TransformPass):
    def run(self, ctx):
        with torch.no_grad():
            ctx.gm.get_submodule("4").bias.fill_(float("nan"))


class NeedsCalib(TransformPass):
    requires = ("calib_loader",)

    def run(self, ctx):
        return {}


def test_model_not_modified_in_place_and_report_rows():
    model = small()
    before = copy.deepcopy(model.state_dict())
    result = fxcompress.compile(model, [CountFlops(), ScaleWeights(), ShapeAnalysis()], X)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.allclose(result.model(*X), model.eval()(*X))
    assert [r.name for r in result.report.records] == ["CountFlops", "ScaleWeights", "ShapeAnalysis"]
    flops = result.report.records[0]
    assert flops.macs_after == 2 * (8 * 16 * 27 + 4 * 128) and flops.params_after == sum(p.numel() for p in model.parameters())
    d = result.report.to_dict()
    assert d["passes"][1]["metrics"]["scaled"] == 1
    assert "| CountFlops | analysis |" in result.report.table()


def test_analyses_are_cached_and_invalidated_by_transforms():
    CountingAnalysis.runs = 0
    fxcompress.compile(small(), [NeedsAnalysis(), NeedsAnalysis(), ScaleWeights(), NeedsAnalysis()], X)
    assert CountingAnalysis.runs == 2  # once before the transform, once after it invalidated the cache


def test_missing_resource_names_pass_and_fix():
    with pytest.raises(PassError, match="NeedsCalib needs calib_loader: pass calib_loader="):
        fxcompress.compile(small(), [NeedsCalib()], X)
    fxcompress.compile(small(), [NeedsCalib()], X, calib_loader=[X[0]])


def test_pass_classes_instead_of_instances_are_rejected():
    with pytest.raises(PassError, match=r"passes\[0\].*instantiate"):
        fxcompress.compile(small(), [CountFlops], X)


def test_manager_catches_changed_output_shape():
    with pytest.raises(VerificationError, match=r"after BreakShape, outputs changed from \[\[2, 4\]"):
        fxcompress.compile(small(), [BreakShape()], X)


def test_manager_catches_non_finite_outputs():
    with pytest.raises(VerificationError, match="NaN"):
        fxcompress.compile(small(), [MakeNaN()], X)


def test_exact_transform_must_not_change_outputs():
    with pytest.raises(VerificationError, match="exactness"):
        fxcompress.compile(small(), [ScaleWeightsClaimingExact()], X)


def test_bad_example_inputs():
    with pytest.raises(fxcompress.ShapeError, match="example_inputs"):
        fxcompress.compile(small(), [], "not a tensor")


class AddAndSubtractLarge(TransformPass):
    """Mathematically the identity, but float32 cancellation loses ~1e-4: the float64 re-check must accept it."""
    verify_exact = True

    def run(self, ctx):
        out = next(n for n in ctx.gm.graph.nodes if n.op == "output")
        value = out.args[0]
        with ctx.gm.graph.inserting_before(out):
            shifted = ctx.gm.graph.call_function(torch.sub, (ctx.gm.graph.call_function(torch.add, (value, 3e3)), 3e3))
        out.args = (shifted,)


class AddAndSubtractLargeWrongly(AddAndSubtractLarge):
    def run(self, ctx):
        super().run(ctx)
        node = next(n for n in ctx.gm.graph.nodes if n.target is torch.sub)
        node.args = (node.args[0], 3e3 - 1e-3)


def test_exactness_falls_back_to_float64_for_rounding_only():
    result = fxcompress.compile(small(), [AddAndSubtractLarge()], X)
    assert result.report.records[0].metrics["exact_check"] == "float64"
    with pytest.raises(VerificationError, match="float64"):
        fxcompress.compile(small(), [AddAndSubtractLargeWrongly()], X)

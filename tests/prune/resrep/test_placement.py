"""Compactor sites come from the channel groups: one after every terminal producer (after its BatchNorm),
full where the producer is dense, a per-channel scale otherwise; insertion is the identity."""
import pytest
import torch

from fxcompress.core.verify import compare_exact, run_eval
from fxcompress.prune.resrep import ChannelScale, ConvCompactor, LinearCompactor, find_sites, insert_compactors
from pruning_models import COUPLING_MODELS, randomize
from resrep_models import ResNetDigits, X, analysed, randomize_bn

X3 = torch.randn(2, 3, 16, 16)


def sites_by_attach(model, x=X):
    gm, result = analysed(model, x)
    placement = find_sites(gm, result, [g.id for g in result.prunable()])
    return gm, result, placement, {s.attach: s for s in placement.sites}


def test_residual_group_gets_a_compactor_after_every_block_output():
    gm, result, placement, sites = sites_by_attach(ResNetDigits())
    # the residual stream's producers: the stem and both blocks' second BatchNorm; inner groups: b1
    assert set(sites) == {"stem_1", "blocks_0_b1", "blocks_0_b2", "blocks_1_b1", "blocks_1_b2"}
    assert all(s.kind is ConvCompactor and s.norm for s in sites.values())
    residual = [gid for gid in placement.eligible if len(result.groups[gid].modules()) > 4]
    assert len(residual) == 1
    assert {a for a, s in sites.items() if residual[0] in s.groups} == {"stem_1", "blocks_0_b2", "blocks_1_b2"}
    assert not placement.skipped


def test_depthwise_chain_gets_one_scale_after_its_last_batchnorm():
    gm, result, placement, sites = sites_by_attach(COUPLING_MODELS["depthwise_separable"](), X3)
    # expand -> BN -> ReLU -> depthwise -> BN -> ReLU: only the depthwise conv's BN is terminal; a full
    # compactor cannot merge into a depthwise conv, so a per-channel scale merges into that BN's affine
    assert sites["dw_1"].kind is ChannelScale and sites["dw_1"].producer == "dw.1" and sites["dw_1"].norm is None
    assert "expand_1" not in sites and "expand_0" not in sites
    # a grouped conv with no BatchNorm after it (channel multiplier 2) gets a scale merging into its rows
    assert sites["dw2"].kind is ChannelScale and sites["dw2"].producer == "dw2"


def test_linear_producers_get_linear_compactors():
    _, _, _, sites = sites_by_attach(COUPLING_MODELS["flatten_linear"](), X3)
    assert any(s.kind is LinearCompactor for s in sites.values())


def test_shared_module_groups_are_skipped_with_a_reason():
    gm, result, placement, _ = sites_by_attach(COUPLING_MODELS["shared_module"](), X3)
    assert any("called 2 times" in r for r in placement.skipped.values())


@pytest.mark.parametrize("name", sorted(COUPLING_MODELS))
def test_insertion_is_the_identity(name):
    model = randomize(COUPLING_MODELS[name](), seed=3).eval()
    gm, result, placement, _ = sites_by_attach(model, X3)
    compacted = insert_compactors(gm, placement.sites)
    n_compactors = sum(1 for n in compacted.graph.nodes if n.op == "call_module" and n.target.endswith("_compactor"))
    assert n_compactors == len(placement.sites)
    compare_exact(lambda x: run_eval(gm, x), lambda x: run_eval(compacted, x), (gm, compacted), (X3,), name)
    # the compacted graph shares the original's tensors: training one trains the other
    assert {id(p) for p in gm.parameters()} <= {id(p) for p in compacted.parameters()}


def test_a_non_identity_compactor_changes_the_output():
    gm, result, placement, _ = sites_by_attach(randomize_bn(ResNetDigits()))
    compacted = insert_compactors(gm, placement.sites)
    with torch.no_grad():
        compacted.get_submodule(placement.sites[0].compactor).weight.mul_(0.5)
    assert not torch.allclose(run_eval(gm, (X,)), run_eval(compacted, (X,)))


def test_compactors_are_modules_the_analyses_and_the_exporter_understand(tmp_path):
    import fxcompress
    from fxcompress.passes import ChannelGroups, CountFlops, ExportONNX
    gm, result, placement, _ = sites_by_attach(randomize_bn(ResNetDigits()))
    compacted = insert_compactors(gm, placement.sites)
    out = fxcompress.compile(compacted, [ChannelGroups(), CountFlops(), ExportONNX(str(tmp_path / "c.onnx"))], X,
                             progress=False)
    groups, flops, export = out.report.records
    # each compactor is a 1x1 conv: C*C MACs per pixel on top of the model's
    extra = sum(s.channels ** 2 * 64 * X.shape[0] for s in placement.sites)   # (MACs of the whole batch)
    assert flops.macs_after == flops.macs_before and flops.macs_after - count_macs_of(gm) == extra
    assert groups.metrics["prunable_groups"] > len(placement.eligible)   # compactor inputs are groups too
    assert export.metrics["max_rel_error"] < 1e-4


def count_macs_of(gm):
    from fxcompress.graph.macs import count_macs
    return count_macs(gm).macs

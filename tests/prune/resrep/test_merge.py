"""Merging folds BatchNorms and trained (non-identity) compactors into their producers exactly, and the
removal plan built from the masks removes exactly the masked channels, exactly."""
import numpy as np
import pytest
import torch

from fxcompress.core.context import PassContext
from fxcompress.core.verify import compare_exact, run_eval
from fxcompress.graph.macs import count_macs
from fxcompress.passes import ChannelGroups
from fxcompress.prune.apply import prune
from fxcompress.prune.plan import PlanMacs
from fxcompress.prune.resrep import (ChannelMasks, find_sites, insert_compactors, merge_compactors, removal_plan,
                                     zero_masked_rows)
from pruning_models import COUPLING_MODELS, randomize
from resrep_models import ResNetDigits, analysed, randomize_bn, X

X3 = torch.randn(2, 3, 16, 16)


def trained_like(model, x, seed=0, max_full_channels=None):
    """Compacted graph whose compactors are random perturbations of the identity (as after training)."""
    gm, result = analysed(model, x)
    placement = find_sites(gm, result, [g.id for g in result.prunable()], max_full_channels)
    compacted = insert_compactors(gm, placement.sites)
    compactors = {s.compactor: compacted.get_submodule(s.compactor) for s in placement.sites}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for q in compactors.values():
            q.weight.add_(0.2 * torch.randn(q.weight.shape, generator=g))
    return gm, result, placement, compacted, compactors


def merge_and_remove(model, x, fraction=0.5, min_channels=1, max_full_channels=None):
    gm, result, placement, compacted, compactors = trained_like(model, x, max_full_channels=max_full_channels)
    masks = ChannelMasks(result, placement, compactors, min_channels=min_channels)
    macs_of = PlanMacs(gm, result)
    masks.mask_more(macs_of, int(fraction * count_macs(gm).macs), limit=None)
    predicted = macs_of(masks.plan())
    zero_masked_rows(compactors, masks.row_masks())
    merge_compactors(gm, compacted, placement.sites)
    merge = compare_exact(lambda i: run_eval(compacted, i), lambda i: run_eval(gm, i), (compacted, gm), (x,), "merge")
    assert not any(n.target.endswith("_compactor") for n in gm.graph.nodes if n.op == "call_module")
    merged = PassContext(gm, (x,), progress=False).get(ChannelGroups)
    pruned, metrics = prune(gm, merged, removal_plan(merged, masks, placement.sites), (x,))
    assert count_macs(pruned).macs == predicted
    assert np.allclose(run_eval(pruned, (x,)).numpy(), run_eval(compacted, (x,)).numpy(), atol=1e-4, rtol=1e-4)
    return masks, merge, metrics, pruned


def test_merge_folds_batchnorms_and_compactors_exactly():
    masks, merge, removal, pruned = merge_and_remove(randomize_bn(ResNetDigits()), X)
    assert merge["max_rel_error"] < 1e-5 and removal["max_rel_error"] < 1e-5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in pruned.modules())


def test_residual_stage_width_shrinks_not_only_inner_convs():
    masks, _, _, pruned = merge_and_remove(randomize_bn(ResNetDigits()), X, fraction=0.3, min_channels=8)
    # inner convs kept at >= 8 of 16 leave ~51% of the MACs: to reach 30% the residual stream must narrow
    assert pruned.get_submodule("stem.0").out_channels < 16
    assert pruned.get_submodule("blocks.1.c2").out_channels == pruned.get_submodule("stem.0").out_channels
    assert pruned.get_submodule("fc").in_features == pruned.get_submodule("stem.0").out_channels


@pytest.mark.parametrize("name", ["residual_projection", "concat_branches", "depthwise_separable", "grouped_conv",
                                  "se_gate", "flatten_linear", "decoder_skip_concat", "shuffle"])
def test_merge_and_removal_are_exact_on_every_coupling(name):
    model = randomize(COUPLING_MODELS[name](), seed=2).eval()
    masks, merge, removal, pruned = merge_and_remove(model, X3)
    assert masks.masked_count() > 0
    assert merge["max_rel_error"] < 1e-5 and removal["max_rel_error"] < 1e-5


@pytest.mark.parametrize("name", ["residual_projection", "flatten_linear", "attention"])
def test_scales_instead_of_full_compactors_above_max_full_channels(name):
    model = randomize(COUPLING_MODELS[name](), seed=2).eval()
    masks, merge, removal, pruned = merge_and_remove(model, X3, max_full_channels=8)
    kinds = {type(q).__name__ for q in masks.compactors.values()}
    assert "ChannelScale" in kinds
    assert all(q.weight.shape[0] <= 8 for q in masks.compactors.values() if type(q).__name__ != "ChannelScale")
    assert merge["max_rel_error"] < 1e-5 and removal["max_rel_error"] < 1e-5


def test_a_wrong_merge_is_caught():
    gm, result, placement, compacted, compactors = trained_like(randomize_bn(ResNetDigits()), X)
    merge_compactors(gm, compacted, placement.sites)
    with torch.no_grad():   # a producer whose merged rows are in the wrong order
        producer = gm.get_submodule(placement.sites[0].producer)
        producer.weight.copy_(producer.weight.flip(0))
    with pytest.raises(Exception, match="merge"):
        compare_exact(lambda i: run_eval(compacted, i), lambda i: run_eval(gm, i), (compacted, gm), (X,), "merge")

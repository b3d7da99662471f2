"""ChannelGroups: the right channels are coupled for every pattern, and what cannot be pruned says why."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from fxcompress.core.context import PassContext
from fxcompress.passes import ChannelGroups
from fxcompress.graph.tracing import trace
from fxcompress.graph.keys import ValueKey
from pruning_models import (COUPLING_MODELS, ConcatBranches, Decoder, DepthwiseSeparable, FlattenLinear,
                            FunctionalConv, GroupedConv, MultiOutput, ResidualProjection, SEGate, SharedModule,
                            ShuffleBlocks, TinyAttention, ChannelsLast, cbr)


def groups_of(model, size=32):
    model.eval()
    ctx = PassContext(gm=trace(model), example_inputs=(torch.randn(2, 3, size, size),))
    return ctx.get(ChannelGroups)


def member(result, param, dim):
    """(group, member) holding dimension `dim` of parameter `param`."""
    for g in result.groups:
        for m in g.members:
            if m.key == ValueKey.of_param(param) and m.dim == dim:
                return g, m
    raise AssertionError(f"{param}[{dim}] is in no group")


def test_residual_with_projection_couples_both_branches():
    r = groups_of(ResidualProjection())
    stem, _ = member(r, "stem.0.weight", 0)
    assert member(r, "a2.0.weight", 0)[0] is stem          # add: the block output is the stem's channels
    assert member(r, "a1.0.weight", 1)[0] is stem          # and every reader of them
    assert member(r, "proj.0.weight", 1)[0] is stem
    second, _ = member(r, "proj.0.weight", 0)
    assert member(r, "b2.0.weight", 0)[0] is second and member(r, "head.fc.weight", 1)[0] is second
    assert member(r, "a1.0.weight", 0)[0].prunable and second.prunable and stem.size == 8


def test_concat_offsets_map_each_branch_to_its_columns():
    r = groups_of(ConcatBranches())
    for conv, lo, hi in (("b1.0.weight", 0, 6), ("b2.1.0.weight", 6, 16), ("b3.1.0.weight", 16, 21)):
        g, _ = member(r, conv, 0)
        cols = [m for m in g.members if m.key == ValueKey.of_param("mix.0.weight") and m.dim == 1]
        assert len(cols) == 1 and sorted(cols[0].positions) == list(range(lo, hi))
        assert g.prunable


def test_channel_split_shuffle_concat_pairs_halves():
    r = groups_of(ShuffleBlocks())
    g, m = member(r, "stem.0.weight", 0)
    # chunk(2) keeps both halves equal (a unit is channel j of each half); the shuffle then interleaves
    # them, so after two blocks a unit is 4 stem channels: {j, j + 4, j + 8, j + 12}
    assert g.size == 4 and len(m.positions) == 16 and g.prunable
    assert np.bincount(m.units).tolist() == [4] * 4
    assert sorted(m.positions[m.units == m.units[m.positions == 0][0]]) == [0, 4, 8, 12]
    assert member(r, "branches.0.3.0.weight", 0)[0] is g    # the branch output re-enters through the shuffle


def test_depthwise_follows_its_producer():
    r = groups_of(DepthwiseSeparable())
    g, _ = member(r, "expand.0.weight", 0)
    assert member(r, "dw.0.weight", 0)[0] is g and g.prunable
    stem, _ = member(r, "stem.0.weight", 0)
    g2, m = member(r, "dw2.weight", 0)                        # multiplier 2: two outputs per input channel
    assert g2 is stem and np.bincount(m.units).tolist() == [2] * 8


def test_grouped_conv_prunes_the_same_index_in_every_group():
    r = groups_of(GroupedConv())
    g, m = member(r, "grouped.0.weight", 1)
    assert g.size == 4 and member(r, "reduce.0.weight", 0)[0] is g        # 16 inputs = 4 groups x 4
    out, _ = member(r, "grouped.0.weight", 0)
    assert out.size == 4 and out.prunable
    gn, m = member(r, "expand.1.weight", 0)                               # GroupNorm: whole groups only
    assert gn.size == 3 and np.bincount(m.units).tolist() == [4, 4, 4]


def test_se_gate_couples_gate_with_feature_map():
    r = groups_of(SEGate())
    g, _ = member(r, "conv.0.weight", 0)
    assert member(r, "fc2.weight", 0)[0] is g and member(r, "fc2.bias", 0)[0] is g
    assert member(r, "fc1.weight", 1)[0] is g and g.prunable
    assert member(r, "fc1.weight", 0)[0].size == 4


def test_flatten_gives_each_channel_its_spatial_columns():
    r = groups_of(FlattenLinear())
    g, _ = member(r, "features.2.0.weight", 0)
    cols = [m for m in g.members if m.key == ValueKey.of_param("fc1.weight")][0]
    assert g.size == 12 and len(cols.positions) == 12 * 16
    assert sorted(cols.positions[cols.units == 0]) == list(range(16))  # channel 0 -> columns 0..15


def test_conv_transpose_decoder_with_skip_concat():
    r = groups_of(Decoder())
    up, _ = member(r, "up.weight", 1)
    cols = [m for m in up.members if m.key == ValueKey.of_param("dec.0.weight") and m.dim == 1][0]
    assert sorted(cols.positions) == list(range(8)) and up.prunable
    skip, _ = member(r, "enc1.0.weight", 0)
    cols = [m for m in skip.members if m.key == ValueKey.of_param("dec.0.weight") and m.dim == 1][0]
    assert sorted(cols.positions) == list(range(8, 16))
    assert member(r, "enc2.0.weight", 0)[0] is member(r, "up.weight", 0)[0]
    assert not member(r, "out.weight", 0)[0].prunable


def test_module_used_twice_couples_its_input_and_output():
    r = groups_of(SharedModule())
    g, _ = member(r, "shared.weight", 0)
    assert member(r, "shared.weight", 1)[0] is g and member(r, "stem.0.weight", 0)[0] is g


def test_multiple_outputs_keep_their_width():
    r = groups_of(MultiOutput())
    feat, _ = member(r, "feat.weight", 0)
    assert not feat.prunable and any("model output" in x for x in feat.reasons)
    body, _ = member(r, "body.0.weight", 0)
    assert body.prunable and member(r, "feat.weight", 1)[0] is body and member(r, "head.fc.weight", 1)[0] is body


def test_functional_conv_with_parameter_attributes():
    r = groups_of(FunctionalConv())
    g, _ = member(r, "w1", 0)
    assert member(r, "b1", 0)[0] is g and member(r, "w_dw", 0)[0] is g and member(r, "w2", 1)[0] is g
    assert member(r, "fc_w", 1)[0] is member(r, "w2", 0)[0] and g.prunable


def test_attention_head_dims_and_layer_norm():
    r = groups_of(TinyAttention())
    qk, m = member(r, "attn.in_proj_weight", 0)
    groups = {id(g): g for g in r.groups for mm in g.members if mm.key == ValueKey.of_param("attn.in_proj_weight") and mm.dim == 0}
    assert sorted(g.size for g in groups.values()) == [4, 4]            # q/k head dim, v head dim (4 heads x 4)
    assert all(g.prunable for g in groups.values())
    embed, _ = member(r, "embed.weight", 0)
    assert not embed.prunable and any("LayerNorm" in x for x in embed.reasons)
    assert member(r, "mlp.0.weight", 0)[0].prunable


def test_channels_last_permute():
    r = groups_of(ChannelsLast())
    hidden, _ = member(r, "pw1.weight", 0)
    assert hidden.size == 48 and hidden.prunable
    g, _ = member(r, "stem.0.weight", 0)
    assert member(r, "dw.weight", 0)[0] is g and member(r, "pw2.weight", 0)[0] is g and member(r, "scale", 0)[0] is g


def test_model_input_and_unknown_ops_are_fixed_with_their_reason():
    class Unknown(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbr(3, 8), cbr(8, 8)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), 1)).mean((2, 3))

    r = groups_of(Unknown())
    g, _ = member(r, "a.0.weight", 0)
    assert not g.prunable and any("cumsum" in x for x in g.reasons)
    g, _ = member(r, "a.0.weight", 1)
    assert not g.prunable and "model input" in g.reasons


@pytest.mark.parametrize("name", sorted(COUPLING_MODELS))
def test_every_coupling_model_has_prunable_groups_and_a_summary(name):
    r = groups_of(COUPLING_MODELS[name]())
    assert r.prunable()
    s = ChannelGroups().summarize(r)
    assert s["prunable_groups"] == len(r.prunable()) and s["dims"] == r.graph.number_of_nodes()
    for g in r.groups:  # a unit never appears twice in one dimension
        for m in g.members:
            assert len(np.unique(m.positions)) == len(m.positions)

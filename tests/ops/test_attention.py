"""The pruned-attention replacements compute exactly what torch / torchvision compute before pruning."""
import math

import pytest
import torch
import torch.nn as nn
from torchvision.models.swin_transformer import shifted_window_attention

from fxcompress.ops.attention_modules import PrunedMultiheadAttention, window_attention


def test_pruned_mha_matches_multihead_attention():
    torch.manual_seed(0)
    for batch_first in (True, False):
        ref = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
        m = PrunedMultiheadAttention(16, 16, 4, 4, 4, 0.5, batch_first).eval()
        with torch.no_grad():
            m.in_proj_weight.copy_(ref.in_proj_weight)
            m.in_proj_bias.copy_(ref.in_proj_bias.normal_())
            m.out_proj.load_state_dict(ref.out_proj.state_dict())
        x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
        want, want_w = ref(x, x, x)
        got, got_w = m(x, x, x)
        assert torch.allclose(got, want, atol=1e-5) and torch.allclose(got_w, want_w, atol=1e-6)


def test_window_attention_matches_torchvision_v1_and_v2():
    torch.manual_seed(0)
    C, heads = 16, 2
    x = torch.randn(2, 9, 10, C)  # not a multiple of the window: padding and masks are exercised
    qkv_w, qkv_b = torch.randn(3 * C, C) * 0.2, torch.randn(3 * C) * 0.1
    proj_w, proj_b = torch.randn(C, C) * 0.2, torch.randn(C) * 0.1
    bias = torch.randn(1, heads, 16, 16)
    for logit_scale in (None, torch.log(10 * torch.ones(heads, 1, 1))):
        for shift in ([0, 0], [2, 2]):
            args = (x, qkv_w, proj_w, bias, [4, 4], heads, shift, 0.0, 0.0, qkv_b, proj_b, logit_scale, False)
            want = shifted_window_attention(*args)
            got = window_attention(*args, qk_dim=C // heads, v_dim=C // heads, scale=(C // heads) ** -0.5)
            assert torch.allclose(got, want, atol=1e-5), (logit_scale is None, shift)


def test_window_attention_with_pruned_head_dims_equals_zeroed_dims():
    torch.manual_seed(0)
    C, heads, hd = 16, 2, 8
    x = torch.randn(1, 8, 8, C)
    qkv_w, proj_w = torch.randn(3 * C, C) * 0.2, torch.randn(C, C) * 0.2
    bias = torch.zeros(1, heads, 16, 16)
    drop_qk, drop_v = [1, 5], [0, 7]
    zeroed = qkv_w.clone()
    for h in range(heads):
        for j in drop_qk:
            zeroed[h * hd + j] = 0
            zeroed[C + h * hd + j] = 0
        for j in drop_v:
            zeroed[2 * C + h * hd + j] = 0
    want = shifted_window_attention(x, zeroed, proj_w, bias, [4, 4], heads, [2, 2], training=False)
    keep_qk = [j for j in range(hd) if j not in drop_qk]
    keep_v = [j for j in range(hd) if j not in drop_v]
    rows = [h * hd + j for h in range(heads) for j in keep_qk]
    rows += [C + r for r in rows] + [2 * C + h * hd + j for h in range(heads) for j in keep_v]
    cols = [h * hd + j for h in range(heads) for j in keep_v]
    got = window_attention(x, qkv_w[rows], proj_w[:, cols], bias, [4, 4], heads, [2, 2], training=False,
                           qk_dim=len(keep_qk), v_dim=len(keep_v), scale=1 / math.sqrt(hd))
    assert torch.allclose(got, want, atol=1e-5)


def test_macs_rules_match_the_unpruned_ops():
    from fxcompress.graph.macs import count_macs
    from fxcompress.graph.tracing import propagate_shapes, trace

    class MHA(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.a = m

        def forward(self, x):
            return self.a(x, x, x, need_weights=False)[0]

    def macs(model, x):
        gm = trace(model.eval())
        propagate_shapes(gm, (x,))
        return count_macs(gm).macs

    x = torch.randn(2, 5, 16)
    assert macs(MHA(nn.MultiheadAttention(16, 4, batch_first=True)), x) == \
        macs(MHA(PrunedMultiheadAttention(16, 16, 4, 4, 4, 0.5, True)), x) > 0
    # torchvision's Swin attention node, then the same node calling window_attention with the same dims
    from torchvision.models.swin_transformer import ShiftedWindowAttention
    x = torch.randn(1, 8, 8, 16)
    gm = trace(ShiftedWindowAttention(16, [4, 4], [2, 2], 2).eval())
    propagate_shapes(gm, (x,))
    before = count_macs(gm).macs
    node = next(n for n in gm.graph.nodes if n.target is shifted_window_attention)
    node.target = window_attention
    node.kwargs = {**node.kwargs, "qk_dim": 8, "v_dim": 8, "scale": 8 ** -0.5}
    gm.recompile()
    propagate_shapes(gm, (x,))
    assert count_macs(gm).macs == before > 0


class PackedSdpa(nn.Module):
    """timm's Attention: one qkv linear, reshape to (3, heads, head_dim), unbind, F.scaled_dot_product_attention
    with its default 1 / sqrt(head_dim) scale."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, self.heads * self.head_dim))


def test_packed_qkv_with_sdpa_prunes_head_dims_exactly_keeping_the_scale():
    import fxcompress
    from fxcompress.passes import MagnitudePrune
    model, x = PackedSdpa().eval(), torch.randn(2, 5, 16)
    result = fxcompress.compile(model, [MagnitudePrune(0.5)], x, progress=False)
    record = result.report.records[0]
    assert result.model.qkv.out_features < 48 and record.metrics["max_rel_error"] < 1e-5
    sdpa = next(n for n in result.model.graph.nodes if n.target is torch.nn.functional.scaled_dot_product_attention)
    assert sdpa.kwargs["scale"] == pytest.approx(8 ** -0.5)    # the unpruned head_dim's scale, written out


class RegisterTokens(nn.Module):
    """naflexvit: learned register tokens concatenated to the patch tokens along the sequence, then
    self-attention; the register tokens form a group of their own along the token dim."""

    def __init__(self, dim=16, regs=4, attention="sdpa"):
        super().__init__()
        self.reg = nn.Parameter(torch.randn(1, regs, dim))
        self.embed = nn.Linear(dim, dim)
        self.attn = PackedSdpa(dim) if attention == "sdpa" else nn.MultiheadAttention(dim, 2, batch_first=True)

    def forward(self, x):
        x = torch.cat([self.reg.expand(x.shape[0], -1, -1), self.embed(x)], 1)
        y = self.attn(x) if isinstance(self.attn, PackedSdpa) else self.attn(x, x, x, need_weights=False)[0]
        return y[:, self.reg.shape[1]:]   # the patch tokens' outputs


@pytest.mark.parametrize("attention", ["sdpa", "mha"])
def test_tokens_that_are_keys_stay(attention):
    """Removing a key is not zeroing it (a zero key still weighs exp(0) in the softmax): the register tokens'
    group must stay whole, with the reason; the embedding channels still prune exactly."""
    import fxcompress
    from fxcompress.ops.attention import KEYS_STAY
    from fxcompress.passes import ChannelGroups, MagnitudePrune
    torch.manual_seed(0)
    model, x = RegisterTokens(attention=attention).eval(), torch.randn(2, 6, 16)
    result = fxcompress.compile(model, [ChannelGroups(), MagnitudePrune(0.5)], x, progress=False)
    groups, record = result.report.records
    assert groups.metrics["fixed_reasons"].get(KEYS_STAY, 0) >= 1
    assert result.model.reg.shape[1] == 4 and record.metrics["max_rel_error"] < 1e-5
    # what the rule prevents: half the register tokens removed changes the patch tokens' outputs
    with torch.no_grad():
        fewer = RegisterTokens(regs=2, attention=attention).eval()
        fewer.load_state_dict({**model.state_dict(), "reg": model.reg[:, :2]})
        zeroed = RegisterTokens(attention=attention).eval()
        zeroed.load_state_dict({**model.state_dict(), "reg": torch.cat([model.reg[:, :2], 0 * model.reg[:, 2:]], 1)})
        assert not torch.allclose(fewer(x), zeroed(x), atol=1e-4)


class BiasedSdpa(PackedSdpa):
    """tiny_vit / beit / maxvit: a relative-position bias per head, looked up from a table by an index tensor
    (advanced indexing: no channel rule), passed to SDPA as its attn_mask."""

    def __init__(self, dim=16, heads=2, tokens=5):
        super().__init__(dim, heads)
        self.table = nn.Parameter(torch.randn(heads, 2 * tokens - 1))
        pos = torch.arange(tokens)
        self.register_buffer("index", pos[:, None] - pos[None, :] + tokens - 1)

    def forward(self, x):
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.table[:, self.index])
        return self.proj(y.transpose(1, 2).reshape(B, N, self.heads * self.head_dim))


def test_an_attention_mask_keeps_heads_and_tokens_and_head_dims_prune_exactly():
    import fxcompress
    from fxcompress.core.context import PassContext
    from fxcompress.graph.tracing import trace
    from fxcompress.passes import ChannelGroups, MagnitudePrune
    model, x = BiasedSdpa().eval(), torch.randn(2, 5, 16)
    groups = PassContext(trace(model), (x,), progress=False).get(ChannelGroups).groups
    assert any(g.prunable and any(m.name == "qkv.weight" and m.role == "producer" for m in g.param_members())
               for g in groups)                     # q/k and v head dims: the mask never sees them
    result = fxcompress.compile(model, [MagnitudePrune(0.5)], x, progress=False)
    record = result.report.records[0]
    assert result.model.qkv.out_features < 48 and record.metrics["max_rel_error"] < 1e-5
    assert result.model.table.shape == (2, 9)       # the heads stay (the mask's lookup has no rule)

"""Attention: nn.MultiheadAttention, torchvision's Swin window attention, scaled_dot_product_attention,
and their pruned forms (`ops.attention_modules`: explicit head dims once they no longer equal
embed_dim / num_heads).

MACs: projections plus the two attention products, read from the parameter shapes, so they hold for
pruned head dims too. Channels: the packed q/k/v projection (rows [q | k | v], heads x head dim each)
prunes the same q/k head-dim index in every head of q and k, the same v index in every head of v and the
matching output-projection column; num_heads stays, head dims shrink. Under pruning an
nn.MultiheadAttention becomes a PrunedMultiheadAttention and Swin's attention calls window_attention,
both with the original 1/sqrt(head dim) scale.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .attention_modules import (PrunedMultiheadAttention, SelfAttentionAsLinears, WindowAttentionAsLinears,
                                window_attention)
from .registry import COUPLING, MACS, QUANT, RESIZE, QuantRule, numel, optional

SWIN_ATTENTION = optional("torchvision.models.swin_transformer", "shifted_window_attention")
WINDOW_ATTENTION_ARGS = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
                         "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale",
                         "training")


def head_dims(qkv_rows: int, out_cols: int, heads: int) -> tuple:
    """(q/k head dim, v head dim) of a packed projection with h * (2 qk + v) rows feeding an output
    projection with h * v columns."""
    v = out_cols // heads
    return (qkv_rows // heads - v) // 2, v


# ---- MACs
@MACS.register(nn.MultiheadAttention, PrunedMultiheadAttention)
def multihead_attention_macs(v) -> int:
    m, q = v.module, v.arg(0)
    k = v.arg(1) or q
    if q is None:
        return 0
    L, S = (q[1], k[1]) if m.batch_first else (q[0], k[0])
    B = q[0] if m.batch_first else q[1]
    if m.in_proj_weight is None:   # separate q/k/v projections (kdim, vdim != embed_dim): never pruned
        E = m.embed_dim
        return B * (L * E * E + S * E * m.kdim + S * E * m.vdim + 2 * L * S * E + L * E * E)
    rows, e_in = v.param("in_proj_weight")
    e_out, out_cols = v.param("out_proj.weight")
    h = m.num_heads
    qk, vd = head_dims(rows, out_cols, h)
    return B * (L * e_in * h * qk + S * e_in * h * (qk + vd) + L * S * h * (qk + vd) + L * h * vd * e_out)


KEYS_STAY = "attention: the softmax normalises over the keys (a removed key is not a zeroed one)"


@COUPLING.register(F.scaled_dot_product_attention)
def sdpa_coupling(r) -> None:
    """q [.., L, E], k [.., S, E], v [.., S, Ev] -> out [.., L, Ev]: leading (batch, head) dims shared by all
    four; q's and k's embedding positions go together (their dot products lose only zeroed terms; the
    softmax scale, 1/sqrt(E) by default, is kept by the resize rule), v's with the output's; queries with the
    output, keys with values, but the keys stay: the softmax normalises over them, and a zeroed key still
    weighs exp(0) in it (`KEYS_STAY`; naflexvit's 4 register tokens, half removed, moved its output by 1.7e-3).
    A mask tensor (a relative-position bias added to the scores: tiny_vit, beit, maxvit) is broadcast to the
    scores [.., L, S]: its leading dims go with q's (the heads), its last two with the queries and the keys;
    the embedding positions it never sees stay free."""
    q, k, v, y = r.arg(0, "query"), r.arg(1, "key"), r.arg(2, "value"), r.out()
    mask = r.raw(3, "attn_mask")
    if mask is not None:
        m = r.key_of(mask)
        if m is None:
            raise ValueError("attention mask that is no tensor of the graph")
        _couple_mask(r, m, q, k)
    rank = r.rank(y)
    for d in range(rank - 2):
        for t in (k, v, y):
            r.same(q, d, t, d)
    r.same(q, rank - 2, y, rank - 2)
    r.same(k, rank - 2, v, rank - 2)
    r.block(k, rank - 2, KEYS_STAY)
    r.same(q, rank - 1, k, rank - 1)
    r.same(v, rank - 1, y, rank - 1)


def _couple_mask(r, m, q, k) -> None:
    """The mask's dims, aligned from the right with the scores [.., L, S]; size-1 (broadcast) dims stay alone."""
    rank, scores = r.rank(q), list(r.shape(q)[:-1]) + [r.shape(k)[-2]]
    for d in range(r.rank(m)):
        s = d - r.rank(m) + rank           # the scores' dim this mask dim lines up with
        if s < 0 or r.shape(m)[d] != scores[s] or r.shape(m)[d] == 1:
            continue
        if s == rank - 1:
            r.same(m, d, k, rank - 2)      # the keys
        else:
            r.same(m, d, q, s)             # the heads and batch, or the queries


@RESIZE.register(F.scaled_dot_product_attention)
def sdpa_resize(s, node, _):
    """Fewer q/k embedding positions must not change the softmax scale: write the original one."""
    old, new = s.old_shape(node.args[0])[-1], s.node_shape(node.args[0])[-1]
    if old != new and node.kwargs.get("scale") is None and len(node.args) < 7:
        node.kwargs = {**node.kwargs, "scale": old ** -0.5}


@MACS.register(F.scaled_dot_product_attention)
def sdpa_macs(v) -> int:
    q, k = v.arg(0), v.arg(1)
    if q is None or k is None:
        return 0
    return 2 * numel(q[:-1]) * k[-2] * q[-1]


@MACS.register(SWIN_ATTENTION, window_attention)
def window_attention_macs(v) -> int:
    """Projections plus attention inside each (padded) window."""
    x = v.arg(0)
    if x is None:
        return 0
    B, H, W, C = x
    window, heads = v.raw(4, "window_size"), v.raw(5, "num_heads")
    rows = v.arg(1, "qkv_weight")[0]
    c_out, out_cols = v.arg(2, "proj_weight")
    qk, vd = head_dims(rows, out_cols, heads)
    tokens = B * math.ceil(H / window[0]) * window[0] * math.ceil(W / window[1]) * window[1]
    return tokens * (C * rows + window[0] * window[1] * heads * (qk + vd) + heads * vd * c_out)


# ---- channel coupling
def attention_heads(r, x, y, qkv_w, qkv_b, out_w, out_b, heads: int, qk: int, v: int) -> None:
    """Couplings of a packed q/k/v projection and the output projection (see the module docstring)."""
    for d in range(r.rank(y) - 1):
        r.same(x, d, y, d)
    r.same(x, -1, qkv_w, 1)
    r.produces(qkv_w, 0)
    r.consumes(qkv_w, 1)
    h = np.arange(heads)[:, None]
    qk_j, v_j = np.arange(qk)[None, :], np.arange(v)[None, :]
    q_rows = (h * qk + qk_j).ravel()
    k_rows = heads * qk + q_rows
    v_rows = 2 * heads * qk + (h * v + v_j).ravel()
    first_q = np.tile(np.arange(qk), heads)
    first_v = 2 * heads * qk + np.tile(np.arange(v), heads)
    r.couple(qkv_w, 0, qkv_w, 0, np.concatenate([q_rows, k_rows]), np.concatenate([first_q, first_q]),
             kind="q/k head dim")
    r.couple(qkv_w, 0, qkv_w, 0, v_rows, first_v, kind="v head dim")
    r.couple(qkv_w, 0, out_w, 1, v_rows, np.arange(heads * v), kind="v -> out proj")
    r.consumes(out_w, 1)
    r.produces(out_w, 0)
    if qkv_b is not None:
        r.same(qkv_w, 0, qkv_b, 0)
        r.produces(qkv_b, 0)
    r.same(y, -1, out_w, 0)
    if out_b is not None:
        r.same(y, -1, out_b, 0)
        r.produces(out_b, 0)


@COUPLING.register(nn.MultiheadAttention, PrunedMultiheadAttention)
def multihead_attention_coupling(r) -> None:
    m = r.module
    q, k, v = r.arg(0, "query"), r.arg(1, "key"), r.arg(2, "value")
    if not m._qkv_same_embed_dim or m.bias_k is not None or not (q == k == v):
        raise ValueError("only packed self-attention is handled")
    if r.raw(3, "key_padding_mask") is not None or r.raw(5, "attn_mask") is not None:
        raise ValueError("attention masks")
    y = r.out(0)
    if not m.batch_first:
        r.same(q, 0, y, 0)
    r.block(q, 1 if m.batch_first and r.rank(q) == 3 else 0, KEYS_STAY)   # self-attention: the tokens are keys
    qk, v = getattr(m, "qk_dim", m.head_dim), getattr(m, "v_dim", m.head_dim)
    attention_heads(r, q, y, r.param("in_proj_weight"), r.param("in_proj_bias"), r.param("out_proj.weight"),
                    r.param("out_proj.bias"), m.num_heads, qk, v)
    w = r.out(1)
    if w is not None:
        r.block_all(w, "attention weights")


@COUPLING.register(SWIN_ATTENTION, window_attention)
def window_attention_coupling(r) -> None:
    """Swin: x[B,H,W,C]; the relative position bias is per head and stays."""
    x, y = r.arg(0, "input"), r.out()
    qkv_w, proj_w = r.arg(1, "qkv_weight"), r.arg(2, "proj_weight")
    heads = r.raw(5, "num_heads")
    qk = r.node.kwargs.get("qk_dim", r.shape(qkv_w)[0] // 3 // heads)
    v = r.node.kwargs.get("v_dim", qk)
    attention_heads(r, x, y, qkv_w, r.arg(9, "qkv_bias"), proj_w, r.arg(10, "proj_bias"), heads, qk, v)
    for d in range(3):
        r.same(x, d, y, d)
    for d in (1, 2):   # a window's tokens are its keys
        r.block(x, d, KEYS_STAY)


# ---- resizing under pruning
@RESIZE.register(nn.MultiheadAttention, PrunedMultiheadAttention)
def multihead_attention_resize(s, node, m):
    h = m.num_heads
    old_qk, old_v = getattr(m, "qk_dim", m.head_dim), getattr(m, "v_dim", m.head_dim)
    mask = s.param_mask(f"{node.target}.in_proj_weight", 0)
    new_qk, new_v = (old_qk, old_v) if mask is None else \
        (int(mask[:old_qk].sum()), int(mask[2 * h * old_qk:2 * h * old_qk + old_v].sum()))
    if isinstance(m, PrunedMultiheadAttention):
        m.qk_dim = m.head_dim = new_qk
        m.v_dim = new_v
        m.embed_dim, m.embed_out = m.in_proj_weight.shape[1], m.out_proj.weight.shape[0]
        m.out_proj.in_features, m.out_proj.out_features = m.out_proj.weight.shape[1], m.out_proj.weight.shape[0]
        return None
    if m.in_proj_weight.shape[0] == 3 * m.embed_dim and m.out_proj.weight.shape == (m.embed_dim, m.embed_dim):
        return None
    new = PrunedMultiheadAttention(m.in_proj_weight.shape[1], m.out_proj.weight.shape[0], h, new_qk, new_v,
                                   1.0 / math.sqrt(old_qk), m.batch_first, bias=m.in_proj_bias is not None,
                                   dropout=m.dropout, dtype=m.in_proj_weight.dtype, device=m.in_proj_weight.device)
    new.in_proj_weight = m.in_proj_weight
    new.in_proj_bias = m.in_proj_bias
    new.out_proj.weight, new.out_proj.bias = m.out_proj.weight, m.out_proj.bias
    new.train(m.training)
    return new


@RESIZE.register(SWIN_ATTENTION, window_attention)
def window_attention_resize(s, node, _):
    """Call window_attention with the head dims that are left and the original scale."""
    kw = dict(node.kwargs)
    for i, n in enumerate(WINDOW_ATTENTION_ARGS):
        if i < len(node.args):
            kw[n] = node.args[i]
    heads = kw["num_heads"]
    old_rows = s.old_shape(kw["qkv_weight"])[0]
    old_qk = kw.get("qk_dim", old_rows // 3 // heads)
    old_v = kw.get("v_dim", old_qk)
    m = s.node_mask(kw["qkv_weight"], 0)
    if m is None:
        return
    kw["qk_dim"] = int(m[:old_qk].sum())
    kw["v_dim"] = int(m[2 * heads * old_qk:2 * heads * old_qk + old_v].sum())
    kw.setdefault("scale", 1.0 / math.sqrt(s.old_shape(kw["input"])[-1] // heads))
    node.target = window_attention
    node.args = tuple(kw.pop(n) for n in WINDOW_ATTENTION_ARGS[:7])
    node.kwargs = kw


# ---- INT8: the packed q/k/v projection as an nn.Linear, so that both projections are quantized
MHA_ARGS = inspect.signature(nn.MultiheadAttention.forward)


def self_attention_as_linears(m, node):
    """(SelfAttentionAsLinears, its inputs) for a self-attention call without masks, or why not (a string)."""
    try:
        call = MHA_ARGS.bind(m, *node.args, **node.kwargs).arguments
    except TypeError as e:
        return f"unexpected call: {e}"
    key, value = call.get("key"), call.get("value")
    if not (key is call["query"] or key is None) or not (value is call["query"] or value is None):
        return "not self-attention (query, key and value differ)"
    if any(call.get(a) is not None for a in ("key_padding_mask", "attn_mask")) or call.get("is_causal"):
        return "masked attention"
    if isinstance(m, PrunedMultiheadAttention):
        return SelfAttentionAsLinears(m, m.qk_dim, m.v_dim, m.scale), [call["query"]]
    if m.in_proj_weight is None or m.bias_k is not None or m.add_zero_attn:
        return "separate q/k/v projections, bias_k/bias_v or add_zero_attn"
    return SelfAttentionAsLinears(m, m.head_dim, m.head_dim, 1.0 / math.sqrt(m.head_dim)), [call["query"]]


def _linear(gm: fx.GraphModule, weight, bias) -> nn.Linear:
    """An nn.Linear sharing the parameters two get_attr nodes read."""
    w = gm.get_parameter(weight.target)
    linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    linear.weight = w
    if bias is not None:
        linear.bias = gm.get_parameter(bias.target) if isinstance(bias, fx.Node) else bias
    return linear


def window_attention_as_linears(_, node):
    """(WindowAttentionAsLinears, its inputs) for a shifted_window_attention / window_attention call whose
    weights are parameters and whose input size is known, or why not (a string)."""
    kw = dict(node.kwargs)
    kw.update(zip(WINDOW_ATTENTION_ARGS, node.args))
    gm, x = node.graph.owning_module, kw["input"]
    meta = x.meta.get("tensor_meta") if isinstance(x, fx.Node) else None
    tensors = [kw.get(k) for k in ("qkv_weight", "proj_weight", "qkv_bias", "proj_bias")]
    if meta is None or len(meta.shape) != 4:
        return "input size unknown"
    if any(t is not None and not (isinstance(t, fx.Node) and t.op == "get_attr") for t in tensors):
        return "projection weights are computed, not parameters"
    heads, (_, H, W, C) = kw["num_heads"], meta.shape
    rows = gm.get_parameter(kw["qkv_weight"].target).shape[0]
    qk = kw.get("qk_dim", rows // 3 // heads)
    qkv_bias = kw.get("qkv_bias")
    if kw.get("logit_scale") is not None and qkv_bias is not None:   # Swin v2 has no key bias: it is zeroed
        b = gm.get_parameter(qkv_bias.target)
        keep = torch.ones_like(b)
        keep[heads * qk:2 * heads * qk] = 0
        qkv_bias = nn.Parameter((b * keep).detach())
    module = WindowAttentionAsLinears(
        _linear(gm, kw["qkv_weight"], qkv_bias), _linear(gm, kw["proj_weight"], kw.get("proj_bias")), [H, W],
        list(kw["window_size"]), heads, list(kw["shift_size"]), qk, kw.get("v_dim", qk),
        kw.get("scale", 1.0 / math.sqrt(C // heads)), kw.get("attention_dropout", 0.0), kw.get("dropout", 0.0))
    inputs = [x, kw["relative_position_bias"]] + ([kw["logit_scale"]] if kw.get("logit_scale") is not None else [])
    return module, inputs


QUANT.register(nn.MultiheadAttention, PrunedMultiheadAttention,
               rule=QuantRule("decompose", decompose=self_attention_as_linears))
QUANT.register(SWIN_ATTENTION, window_attention,
               rule=QuantRule("decompose", decompose=window_attention_as_linears))

"""Attention with head dims that no longer equal embed_dim / num_heads: what pruned attention becomes
(the rules that prune attention and count its MACs are in `fxcompress.ops.attention`).

`nn.MultiheadAttention` and torchvision's `shifted_window_attention` derive the head dim (and the
1/sqrt(head_dim) scale) from the embedding width, so once q/k or v head dims are pruned they cannot
express the model any more. These replacements keep the packed parameter layout ([q | k | v] rows,
heads x head dim each) with explicit `qk_dim`, `v_dim` and `scale`.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F


def packed_attention(qkv, h: int, qk: int, v: int, scale: float, dropout: float, training: bool):
    """Scaled dot-product attention on a packed [q | k | v] projection (batch first): (attention weights, the
    heads' outputs merged to [batch, tokens, h * v])."""
    q, k, val = qkv.split([h * qk, h * qk, h * v], dim=-1)
    q = q.unflatten(-1, (h, qk)).transpose(1, 2)
    k = k.unflatten(-1, (h, qk)).transpose(1, 2)
    val = val.unflatten(-1, (h, v)).transpose(1, 2)
    attn = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
    attn = F.dropout(attn, dropout, training)
    return attn, (attn @ val).transpose(1, 2).flatten(-2)


class PrunedMultiheadAttention(nn.Module):
    """Self-attention equivalent of nn.MultiheadAttention (same parameter names) with free head dims."""

    _qkv_same_embed_dim = True
    bias_k = bias_v = None

    def __init__(self, embed_in: int, embed_out: int, num_heads: int, qk_dim: int, v_dim: int, scale: float,
                 batch_first: bool, bias: bool = True, dropout: float = 0.0, dtype=None, device=None):
        super().__init__()
        self.embed_dim, self.embed_out, self.num_heads = embed_in, embed_out, num_heads
        self.qk_dim = self.head_dim = qk_dim
        self.v_dim, self.scale, self.batch_first, self.dropout = v_dim, scale, batch_first, dropout
        kw = {"dtype": dtype, "device": device}
        self.in_proj_weight = nn.Parameter(torch.empty(num_heads * (2 * qk_dim + v_dim), embed_in, **kw))
        self.in_proj_bias = nn.Parameter(torch.zeros(num_heads * (2 * qk_dim + v_dim), **kw)) if bias else None
        self.out_proj = nn.Linear(num_heads * v_dim, embed_out, bias=bias, **kw)

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights: bool = True,
                attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
        x = query if self.batch_first else query.transpose(0, 1)
        h, qk, v = self.num_heads, self.qk_dim, self.v_dim
        attn, heads = packed_attention(F.linear(x, self.in_proj_weight, self.in_proj_bias), h, qk, v, self.scale,
                                       self.dropout, self.training)
        out = self.out_proj(heads)
        if not self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            weights = attn.mean(1) if average_attn_weights else attn
        return out, weights


class SelfAttentionAsLinears(nn.Module):
    """Self-attention of an nn.MultiheadAttention or PrunedMultiheadAttention (no masks, no attention weights
    returned) with its packed q/k/v projection as an nn.Linear, so that INT8 quantization sees both
    projections as linear layers (QuantizeINT8 inlines it; see QUANT's "decompose" rule in ops.attention).
    Parameters are shared with the module it replaces; the output is (out, None) as that module returns."""

    def __init__(self, mha: nn.Module, qk_dim: int, v_dim: int, scale: float):
        super().__init__()
        rows, embed_in = mha.in_proj_weight.shape
        self.in_proj = nn.Linear(embed_in, rows, bias=mha.in_proj_bias is not None)
        self.in_proj.weight = mha.in_proj_weight
        if mha.in_proj_bias is not None:
            self.in_proj.bias = mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.num_heads, self.qk_dim, self.v_dim, self.scale = mha.num_heads, qk_dim, v_dim, scale
        self.batch_first, self.dropout = mha.batch_first, mha.dropout

    def forward(self, x):
        x = x if self.batch_first else x.transpose(0, 1)
        _, heads = packed_attention(self.in_proj(x), self.num_heads, self.qk_dim, self.v_dim, self.scale,
                                    self.dropout, self.training)
        out = self.out_proj(heads)
        return (out if self.batch_first else out.transpose(0, 1)), None


def _window_mask(x: torch.Tensor, pad_h: int, pad_w: int, window: List[int], shift: List[int]) -> torch.Tensor:
    """-100 where two tokens of a window came from different regions before the cyclic shift."""
    region = x.new_zeros((pad_h, pad_w))
    count = 0
    for hs in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for ws in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            region[hs[0]:hs[1], ws[0]:ws[1]] = count
            count += 1
    n_windows = (pad_h // window[0]) * (pad_w // window[1])
    region = region.view(pad_h // window[0], window[0], pad_w // window[1], window[1])
    region = region.permute(0, 2, 1, 3).reshape(n_windows, window[0] * window[1])
    diff = region.unsqueeze(1) - region.unsqueeze(2)
    return diff.masked_fill(diff != 0, float(-100.0)).masked_fill(diff == 0, float(0.0))


@torch.fx.wrap
def window_attention(input: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor,
                     relative_position_bias: torch.Tensor, window_size: List[int], num_heads: int,
                     shift_size: List[int], attention_dropout: float = 0.0, dropout: float = 0.0,
                     qkv_bias: Optional[torch.Tensor] = None, proj_bias: Optional[torch.Tensor] = None,
                     logit_scale: Optional[torch.Tensor] = None, training: bool = True, *, qk_dim: int,
                     v_dim: int, scale: float) -> torch.Tensor:
    """torchvision's shifted_window_attention (Swin v1 and v2) with explicit head dims and scale."""
    B, H, W, C = input.shape
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_h, pad_w, _ = x.shape
    shift = list(shift_size)
    if window_size[0] >= pad_h:
        shift[0] = 0
    if window_size[1] >= pad_w:
        shift[1] = 0
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    n_windows = (pad_h // window_size[0]) * (pad_w // window_size[1])
    x = x.view(B, pad_h // window_size[0], window_size[0], pad_w // window_size[1], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * n_windows, window_size[0] * window_size[1], C)
    h, qk, v = num_heads, qk_dim, v_dim
    if logit_scale is not None and qkv_bias is not None:  # Swin v2 has no key bias
        qkv_bias = torch.cat([qkv_bias[:h * qk], torch.zeros_like(qkv_bias[h * qk:2 * h * qk]), qkv_bias[2 * h * qk:]])
    qkv = F.linear(x, qkv_weight, qkv_bias)
    q, k, val = qkv.split([h * qk, h * qk, h * v], dim=-1)
    q = q.reshape(x.size(0), x.size(1), h, qk).transpose(1, 2)
    k = k.reshape(x.size(0), x.size(1), h, qk).transpose(1, 2)
    val = val.reshape(x.size(0), x.size(1), h, v).transpose(1, 2)
    if logit_scale is not None:  # cosine attention: zero entries leave the norms unchanged
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * scale).matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    if sum(shift) > 0:
        mask = _window_mask(x, pad_h, pad_w, window_size, shift)
        attn = attn.view(x.size(0) // n_windows, n_windows, h, x.size(1), x.size(1))
        attn = attn + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, h, x.size(1), x.size(1))
    attn = F.dropout(F.softmax(attn, dim=-1), p=attention_dropout, training=training)
    x = attn.matmul(val).transpose(1, 2).reshape(x.size(0), x.size(1), h * v)
    x = F.dropout(F.linear(x, proj_weight, proj_bias), p=dropout, training=training)
    c_out = proj_weight.shape[0]
    x = x.view(B, pad_h // window_size[0], pad_w // window_size[1], window_size[0], window_size[1], c_out)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_h, pad_w, c_out)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


class WindowAttentionAsLinears(nn.Module):
    """torchvision's shifted window attention (Swin v1 and v2; `window_attention` once pruned) for one input
    size (H, W), with the q/k/v and output projections as nn.Linear layers, so that INT8 quantization sees
    them (QuantizeINT8 inlines it; see QUANT's "decompose" rule in ops.attention). Padding, shifts and the
    window mask are fixed by the input size, which makes the forward traceable; the batch stays free.
    forward(x, relative_position_bias[, logit_scale]) computes what the replaced call computes."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, hw: List[int], window_size: List[int], num_heads: int,
                 shift_size: List[int], qk_dim: int, v_dim: int, scale: float, attention_dropout: float = 0.0,
                 dropout: float = 0.0):
        super().__init__()
        self.qkv, self.proj = qkv, proj
        (H, W), (w0, w1) = hw, window_size
        self.hw, self.window = (H, W), (w0, w1)
        self.pads = ((w1 - W % w1) % w1, (w0 - H % w0) % w0)
        self.padded = (H + self.pads[1], W + self.pads[0])
        self.shift = (0 if w0 >= self.padded[0] else shift_size[0], 0 if w1 >= self.padded[1] else shift_size[1])
        self.num_heads, self.qk_dim, self.v_dim, self.scale = num_heads, qk_dim, v_dim, scale
        self.attention_dropout, self.dropout = attention_dropout, dropout
        self.n_windows = (self.padded[0] // w0) * (self.padded[1] // w1)
        mask = _window_mask(torch.zeros(()), *self.padded, list(self.window), list(self.shift)) \
            if sum(self.shift) > 0 else None
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x, relative_position_bias, logit_scale=None):
        (H, W), (ph, pw), (w0, w1), (s0, s1) = self.hw, self.padded, self.window, self.shift
        h, qk, v, n = self.num_heads, self.qk_dim, self.v_dim, self.window[0] * self.window[1]
        c_in, c_out = self.qkv.in_features, self.proj.out_features
        x = F.pad(x, (0, 0, 0, self.pads[0], 0, self.pads[1]))
        if s0 + s1 > 0:
            x = torch.roll(x, shifts=(-s0, -s1), dims=(1, 2))
        x = x.view(-1, ph // w0, w0, pw // w1, w1, c_in).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c_in)
        q, k, val = self.qkv(x).split([h * qk, h * qk, h * v], dim=-1)
        q = q.reshape(-1, n, h, qk).transpose(1, 2)
        k = k.reshape(-1, n, h, qk).transpose(1, 2)
        val = val.reshape(-1, n, h, v).transpose(1, 2)
        if logit_scale is not None:   # Swin v2: cosine attention
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
        else:
            attn = (q * self.scale).matmul(k.transpose(-2, -1))
        attn = attn + relative_position_bias
        if self.mask is not None:
            attn = (attn.view(-1, self.n_windows, h, n, n) + self.mask.unsqueeze(1).unsqueeze(0)).view(-1, h, n, n)
        attn = F.dropout(F.softmax(attn, dim=-1), p=self.attention_dropout, training=self.training)
        x = attn.matmul(val).transpose(1, 2).reshape(-1, n, h * v)
        x = F.dropout(self.proj(x), p=self.dropout, training=self.training)
        x = x.view(-1, ph // w0, pw // w1, w0, w1, c_out).permute(0, 1, 3, 2, 4, 5).reshape(-1, ph, pw, c_out)
        if s0 + s1 > 0:
            x = torch.roll(x, shifts=(s0, s1), dims=(1, 2))
        return x[:, :H, :W, :].contiguous()

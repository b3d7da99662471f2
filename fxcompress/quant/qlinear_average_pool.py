"""QLinearAveragePool (com.microsoft) on uint8 codes, as onnxruntime computes it, for the fake-quant model to
emulate (quant/emulate.py).

onnxruntime fuses DequantizeLinear -> AveragePool -> QuantizeLinear into QLinearAveragePool, which
(contrib_ops/cpu/quantization/qlinear_pool.cc) dequantizes each code in float32 (s_x * (code - zp_x)), sums
each window's values in float32 row by row, divides by the window's count (the kernel's area with
count_include_pad, else the elements inside the input), and quantizes with rne(y / s_y + zp_y): the zero point
is added before rounding, so a tie rounds to even with it, not without it as QuantizeLinear does. Ties are
common where the pool averages 4 or 6 codes of a tensor quantized with its output's scale: nasnetalarge's
3x3 count_include_pad=False pools had 1.4 % of their codes one step off float average + QuantizeLinear. A
kernel that covers the whole map without padding runs as QLinearGlobalAveragePool instead, as does an adaptive
pool to one value per channel (exported as GlobalAveragePool): MLAS sums the codes as integers
(`qlinear_global_average_pool`).

    variant = average_pool_variant(node, modules)            # None: not a fixed-kernel 1-d/2-d average pool
    codes = qlinear_average_pool(codes, variant, out_hw, s_x, zp_x, s_y, zp_y)
    acc, multiplier = qlinear_global_average_pool(codes, s_x, zp_x, s_y)   # rne(acc * multiplier) + zp_y
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .observers import QMAX, QMIN

ADAPTIVE_POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
ADAPTIVE_POOL_FUNCTIONS = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d)
POOL_FUNCTIONS = (F.avg_pool1d, F.avg_pool2d)


def _pair(v, n: int) -> Tuple[int, ...]:
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * n


def average_pool_variant(node: fx.Node, modules) -> Optional[tuple]:
    """(kernel, stride, padding, count_include_pad) of a fixed-kernel average pool (1-d or 2-d), or None."""
    if node.op == "call_module" and isinstance(modules.get(node.target), POOL_MODULES):
        m = modules[node.target]
        n = 1 if isinstance(m, nn.AvgPool1d) else 2
        kernel, stride, padding = m.kernel_size, m.stride, m.padding
        include, divisor = m.count_include_pad, getattr(m, "divisor_override", None)
    elif node.op == "call_function" and node.target in POOL_FUNCTIONS:
        n = 1 if node.target is F.avg_pool1d else 2
        names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
        args = dict(zip(names, node.args), **node.kwargs)
        kernel, stride, padding = args.get("kernel_size"), args.get("stride"), args.get("padding", 0)
        include, divisor = args.get("count_include_pad", True), args.get("divisor_override")
        stride = stride if stride not in (None, [], ()) else kernel
    else:
        return None
    if divisor is not None or any(isinstance(v, fx.Node) for v in (kernel, stride, padding, include)):
        return None   # no ONNX form (divisor_override), or sizes known only when the model runs
    return _pair(kernel, n), _pair(stride, n), _pair(padding, n), bool(include)


def covers_whole_map(variant: tuple, spatial: Tuple[int, ...]) -> bool:
    """onnxruntime runs a kernel as large as the map, without padding, as QLinearGlobalAveragePool."""
    kernel, _, padding, _ = variant
    return tuple(kernel) == tuple(spatial) and not any(padding)


def qlinear_average_pool(codes: torch.Tensor, variant: tuple, out_spatial: Tuple[int, ...], s_x: torch.Tensor,
                         zp_x: int, s_y: torch.Tensor, zp_y: int) -> torch.Tensor:
    """QLinearAveragePool's output codes (float) from its input codes (float or int, N x C x spatial)."""
    kernel, stride, padding, include = variant
    one_d = codes.dim() == 3
    if one_d:   # as a 2-d pool over a 1-row map
        codes, kernel, stride, padding = codes.unsqueeze(2), (1,) + kernel, (1,) + stride, (0,) + padding
        out_spatial = (1,) + tuple(out_spatial)
    x = (codes.float() - float(zp_x)) * s_x.float()            # float32 dequantization, as its lookup table
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_spatial
    h, w = x.shape[-2:]
    # zeros around the map (ceil mode may reach past it): adding 0.0 leaves a float32 sum unchanged, so each
    # window is the sum of its elements inside the map, in onnxruntime's order (rows, then columns)
    below, right = max(0, (oh - 1) * sh + kh - ph - h), max(0, (ow - 1) * sw + kw - pw - w)
    padded = F.pad(x, (pw, right, ph, below))
    inside = F.pad(torch.ones(1, 1, h, w, dtype=torch.float32, device=x.device), (pw, right, ph, below))
    total = torch.zeros(*x.shape[:2], oh, ow, dtype=torch.float32, device=x.device)
    count = torch.zeros(1, 1, oh, ow, dtype=torch.float32, device=x.device)
    for i in range(kh):
        for j in range(kw):
            window = (..., slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))
            total = total + padded[window]
            count = count + inside[window]
    if include:
        count = torch.full_like(count, float(kh * kw))
    y = total / count
    out = torch.clamp(torch.round(y / s_y.float() + float(zp_y)), QMIN, QMAX)
    return out.squeeze(2) if one_d else out


def global_pool(node: fx.Node, modules) -> bool:
    """An adaptive average pool to one value per channel: what the exporter writes as GlobalAveragePool and
    onnxruntime runs as QLinearGlobalAveragePool. A fixed-kernel pool with a 1x1 output is not one (with
    padding, count_include_pad divides a 1x1 map by the kernel's area: inception_v3's Mixed_7 branch pools)."""
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape") or len(meta.shape) <= 2 or any(s != 1 for s in meta.shape[2:]):
        return False
    if node.op == "call_module":
        return isinstance(modules.get(node.target), ADAPTIVE_POOL_MODULES)
    return node.op == "call_function" and node.target in ADAPTIVE_POOL_FUNCTIONS


def qlinear_global_average_pool(codes: torch.Tensor, s_x: torch.Tensor, zp_x: int, s_y: torch.Tensor):
    """QLinearGlobalAveragePool (MLAS) before its rounding: (the integer sum of each channel's codes minus
    zp_x * N, the float32 multiplier fl32(s_x / fl32(s_y * N))); the codes are rne(acc * multiplier) + zp_y."""
    spatial = tuple(range(2, codes.dim()))
    n = 1
    for d in spatial:
        n *= codes.shape[d]
    acc = codes.double().sum(dim=spatial, keepdim=True) - float(zp_x) * n     # exact: integers < 2^53
    multiplier = (s_x.float() / (s_y.float() * torch.tensor(float(n), dtype=torch.float32))).float()
    return acc, multiplier

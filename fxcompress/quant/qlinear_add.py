"""QLinearAdd (com.microsoft) on uint8 codes, as onnxruntime's MLAS computes it, for the fake-quant model to
emulate (quant/emulate.py).

MLAS (mlas/lib/qladd.cpp) works in float32 with the ratios r_a = s_a / s_c and r_b = s_b / s_c and a fixed
part f = zp_c - (r_a * zp_a + r_b * zp_b), which the compiler contracts into one fused multiply-add
(r_a * zp_a rounded only once, with r_b * zp_b). Each output is then two fused multiply-adds,
c = rne(a * r_a + (b * r_b + f)), the zero point already in. Computing f with two roundings instead, as
the C source reads, left 2 of 3.9 million code pairs a step off onnxruntime (60 random scale and zero-point
sets, every pair of codes: tests/quant/test_qlinear_add.py); ghostnetv3's chains of adds met such pairs.

    value = qlinear_add(codes_a, s_a, zp_a, codes_b, s_b, zp_b, s_c, zp_c)   # float32; rne + saturate next
"""
from __future__ import annotations

import torch

from .ort_float_ops import fma32


def qlinear_add(codes_a: torch.Tensor, s_a: torch.Tensor, zp_a: int, codes_b: torch.Tensor, s_b: torch.Tensor,
                zp_b: int, s_c: torch.Tensor, zp_c: int) -> torch.Tensor:
    """The float32 value MLAS rounds to the output code (zero point included), from uint8 codes (as float)."""
    r_a, r_b = s_a.float() / s_c.float(), s_b.float() / s_c.float()
    f32 = lambda v: torch.tensor(float(v), dtype=torch.float32)   # noqa: E731
    inner = fma32(r_a, f32(zp_a), r_b * f32(zp_b))
    fixed = f32(zp_c) - inner
    return fma32(codes_a.float(), r_a, fma32(codes_b.float(), r_b, fixed))

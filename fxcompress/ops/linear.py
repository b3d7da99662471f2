"""Linear layers: nn.Linear, F.linear, nn.Bilinear.

MACs: every output element costs one weight row. Channels: output features with weight rows and bias,
input features with weight columns; all leading dims pass through. INT8: a 2-D linear lowers to Gemm,
which onnxruntime runs as QGemm, with float output when its bias is int32 (a final classifier keeps
float logits); on N-D inputs torch exports MatMul + Add, which the lowering rewrites (quant/lower_linear.py:
lower_nd_linears) into a 1x1 QLinearConv over the rows, or a 2-D Gemm between reshapes of the uint8 input
and output, so the output is quantized there. BatchNorm folds into the weight rows.
"""
from __future__ import annotations

import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .registry import BN_FOLD, COUPLING, MACS, QUANT, RESIZE, QuantRule, numel


@MACS.register(nn.Linear)
def linear_macs(v) -> int:
    return numel(v.out()) * v.param("weight")[1]


@MACS.register(nn.Bilinear)
def bilinear_macs(v) -> int:
    w = v.param("weight")   # [out, in1, in2]
    return numel(v.out()) * w[1] * w[2]


@MACS.register(F.linear)
def functional_linear_macs(v) -> int:
    w = v.arg(1, "weight")
    return numel(v.out()) * (w[-1] if w else 0)


def linear_channels(r, x, y, w, b) -> None:
    for d in range(r.rank(y) - 1):
        r.same(x, d, y, d)
    r.same(x, -1, w, 1)
    r.same(y, -1, w, 0)
    r.same(y, -1, b, 0)
    r.produces(b, 0)
    r.produces(w, 0)
    r.consumes(w, 1)


@COUPLING.register(nn.Linear)
def linear_coupling(r) -> None:
    linear_channels(r, r.arg(0, "input"), r.out(), r.param("weight"), r.param("bias"))


@COUPLING.register(F.linear)
def functional_linear_coupling(r) -> None:
    linear_channels(r, r.arg(0, "input"), r.out(), r.arg(1, "weight"), r.arg(2, "bias"))


@RESIZE.register(nn.Linear)
def linear_resize(s, node, m):
    m.out_features, m.in_features = m.weight.shape


def _is_2d_input(node: fx.Node) -> bool:
    meta = node.args[0].meta.get("tensor_meta") if node.args and isinstance(node.args[0], fx.Node) else None
    return meta is not None and len(meta.shape) == 2


QUANT.register(nn.Linear, rule=QuantRule("weighted", weight_axis=0, float_output_ok=_is_2d_input))
BN_FOLD.register(nn.Linear, rule=lambda m: 0)

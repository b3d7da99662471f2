"""Element-wise ops: arithmetic, activations, dropout, identity, PReLU.

Channels: every dim of every tensor input (broadcast from the right) is the output's.
INT8: adds run as QLinearAdd (both operands and the output quantized); ReLU-like activations right after
a quantized op move the output quantizer after them (onnxruntime drops the ReLU/Clip that the uint8
range already clips); dropout and identity reuse their input's quantization.
"""
from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import COUPLING, QUANT, RESIZE, QuantRule, optional

ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Hardsigmoid, nn.Hardswish, nn.Tanh,
                       nn.LeakyReLU, nn.ELU, nn.Mish, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                       nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Hardtanh, nn.CELU, nn.SELU)
ELEMENTWISE_FUNCTIONS = (operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd,
                         operator.imul, torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid,
                         torch.tanh, torch.neg, torch.exp, torch.clamp, torch.clip, torch.maximum, torch.minimum,
                         torch.where, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid,
                         F.tanh, F.leaky_relu, F.elu, F.mish, F.dropout, F.dropout1d, F.dropout2d, F.hardtanh,
                         F.softplus, F.selu, operator.pow, torch.pow, torch.sqrt, torch.rsqrt, torch.addcmul,
                         torch.erf, torch.abs, operator.abs)
ELEMENTWISE_METHODS = ("add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "relu", "relu_", "sigmoid",
                       "sigmoid_", "tanh", "clamp", "clamp_", "contiguous", "clone", "detach", "float", "to",
                       "type", "exp", "neg", "abs", "sqrt", "pow", "__add__", "__mul__", "masked_fill", "rsqrt", "addcmul",
                       "erf", "square", "reciprocal")
# torchvision's wrapped per-sample scaling: channels pass through unchanged
STOCHASTIC_DEPTH = optional("torchvision.ops.stochastic_depth", "stochastic_depth")


@COUPLING.register(*ELEMENTWISE_MODULES, *ELEMENTWISE_FUNCTIONS, *ELEMENTWISE_METHODS, STOCHASTIC_DEPTH)
def elementwise_coupling(r) -> None:
    out = r.out()
    for k in r.tensor_args():
        r.broadcast(k, out)


@COUPLING.register(nn.PReLU)
def prelu_coupling(r) -> None:
    x, y = r.arg(0, "input"), r.out()
    r.identity(x, y)
    w = r.param("weight")
    if r.shape(w)[0] > 1:
        r.same(y, 1, w, 0)
        r.produces(w, 0)


@RESIZE.register(nn.PReLU)
def prelu_resize(s, node, m):
    m.num_parameters = m.weight.numel()


def _hardtanh_bound(m):
    return m.max_val if getattr(m, "min_val", None) == 0.0 else False   # Hardtanh(-1, 1) is not ReLU-like


ADD = QuantRule("requantize", min_tensor_inputs=2)    # QLinearAdd needs both operands quantized
RELU = QuantRule("activation")
PASSTHROUGH = QuantRule("passthrough")
QUANT.register(operator.add, operator.iadd, torch.add, "add", "add_", rule=ADD)
QUANT.register(nn.ReLU, F.relu, torch.relu, "relu", "relu_", rule=RELU)
QUANT.register(nn.ReLU6, F.relu6, rule=QuantRule("activation", upper_bound=lambda m: 6.0))
QUANT.register(nn.Hardtanh, rule=QuantRule("activation", upper_bound=_hardtanh_bound))
QUANT.register(nn.Dropout, nn.Identity, F.dropout, "contiguous", rule=PASSTHROUGH)
# stochastic depth is dropout per sample: identity in eval, gone from the ONNX file, so a SiLU before it must
# be followed by its quantizer in the graph too (EfficientNetV2's fused blocks), as it is in the file
QUANT.register(STOCHASTIC_DEPTH, rule=PASSTHROUGH)

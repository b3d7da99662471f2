"""Which ops are quantized, and how: one small rule per module type, function or method.

Roles (how onnxruntime's CPU optimizer turns QDQ groups into integer kernels decides them):
- "weighted": conv / linear modules. Weight fake-quantized to int8 (per output channel), input
  and output quantized to uint8 -> QLinearConv / QGemm / QLinearMatMul.
- "requantize": ops with integer kernels of their own (add, average pools, concat): every tensor
  input and the output quantized -> QLinearAdd, QLinearGlobalAveragePool, QLinearConcat...
- "activation": ReLU-like ops right after a quantized op: the output is quantized after them
  instead (onnxruntime removes the ReLU/Clip when the uint8 range already clips it).
- "passthrough": ops that move or select values (max-pool, flatten, reshape, dropout): their output
  reuses the input's quantization, so the op runs on uint8 and the Q/DQ pair around it vanishes.
Adding support for an op is adding one entry here.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class QuantRule:
    role: str
    weight_axis: Optional[int] = None             # weighted: output-channel axis of the weight
    integer_kernels: tuple = ()                   # weighted: onnxruntime ops that count as integer kernels
    upper_bound: Optional[Callable] = None        # activation: f(module or node) -> bound on the output or None
    float_output_ok: Optional[Callable] = None    # weighted: f(node) -> True if the output may stay float
    min_tensor_inputs: int = 1                    # requantize: fewer float tensor operands -> left in float


def _is_2d_input(node: fx.Node) -> bool:
    meta = node.args[0].meta.get("tensor_meta") if node.args and isinstance(node.args[0], fx.Node) else None
    return meta is not None and len(meta.shape) == 2


CONV_KERNELS = ("QLinearConv", "ConvInteger")
MATMUL_KERNELS = ("QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")

WEIGHTED = QuantRule("weighted", weight_axis=0, integer_kernels=CONV_KERNELS)
# A 2-D linear lowers to Gemm, which becomes QGemm with float output when its bias is int32: a final
# classifier can keep float logits. Linear on N-D inputs lowers to MatMul, which needs a quantized output.
LINEAR = QuantRule("weighted", weight_axis=0, integer_kernels=MATMUL_KERNELS, float_output_ok=_is_2d_input)
REQUANTIZE = QuantRule("requantize")
ADD = QuantRule("requantize", min_tensor_inputs=2)    # QLinearAdd needs both operands quantized
PASSTHROUGH = QuantRule("passthrough")
RELU = QuantRule("activation")


def _hardtanh_bound(m):
    return m.max_val if getattr(m, "min_val", None) == 0.0 else False


MODULE_RULES: Dict[type, QuantRule] = {
    nn.Conv1d: WEIGHTED, nn.Conv2d: WEIGHTED, nn.Conv3d: WEIGHTED,
    nn.Linear: LINEAR,
    nn.AdaptiveAvgPool1d: REQUANTIZE, nn.AdaptiveAvgPool2d: REQUANTIZE, nn.AvgPool1d: REQUANTIZE,
    nn.AvgPool2d: REQUANTIZE,
    nn.ReLU: RELU,
    nn.ReLU6: QuantRule("activation", upper_bound=lambda m: 6.0),
    nn.Hardtanh: QuantRule("activation", upper_bound=_hardtanh_bound),
    nn.MaxPool1d: PASSTHROUGH, nn.MaxPool2d: PASSTHROUGH, nn.MaxPool3d: PASSTHROUGH,
    nn.Flatten: PASSTHROUGH, nn.Dropout: PASSTHROUGH, nn.Identity: PASSTHROUGH,
}

FUNCTION_RULES: Dict[object, QuantRule] = {
    operator.add: ADD, operator.iadd: ADD, torch.add: ADD,
    torch.cat: REQUANTIZE,
    F.adaptive_avg_pool2d: REQUANTIZE, F.avg_pool2d: REQUANTIZE,
    F.relu: RELU, torch.relu: RELU,
    F.relu6: QuantRule("activation", upper_bound=lambda n: 6.0),
    F.max_pool2d: PASSTHROUGH, torch.flatten: PASSTHROUGH, torch.reshape: PASSTHROUGH, F.dropout: PASSTHROUGH,
}

METHOD_RULES: Dict[str, QuantRule] = {
    "add": ADD, "add_": ADD,
    "relu": RELU, "relu_": RELU,
    "flatten": PASSTHROUGH, "view": PASSTHROUGH, "reshape": PASSTHROUGH, "contiguous": PASSTHROUGH,
}


def rule_for(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[QuantRule]:
    if node.op == "call_module":
        m = modules[node.target]
        rule = next((MODULE_RULES[t] for t in type(m).__mro__ if t in MODULE_RULES), None)
        if rule is not None and rule.role == "activation" and rule.upper_bound is not None \
                and rule.upper_bound(m) is False:
            return None   # e.g. Hardtanh(-1, 1) is not ReLU-like
        return rule
    if node.op == "call_function":
        return FUNCTION_RULES.get(node.target)
    if node.op == "call_method":
        return METHOD_RULES.get(node.target)
    return None


def activation_bound(node: fx.Node, rule: QuantRule, modules) -> Optional[float]:
    if rule.upper_bound is None:
        return None
    owner = modules[node.target] if node.op == "call_module" else node
    bound = rule.upper_bound(owner)
    return None if bound is False else bound

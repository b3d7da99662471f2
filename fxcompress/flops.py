"""Counting multiply-accumulates (MACs) and parameters on a shape-annotated fx graph.

Op knowledge lives in a registry: one small rule per module type or function, looked up by target.
A rule gets the node, the module (for call_module) and the input/output shapes and returns MACs.
Ops without a rule (activations, norms, pooling, adds) count as zero MACs, as is conventional.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Callable, Dict

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .op_registry import OpRegistry
from .tracing import node_shape

MacRule = Callable[[fx.Node, object], int]
MACS = OpRegistry("MACs")
MODULE_RULES: Dict[type, MacRule] = MACS.modules
FUNCTION_RULES: Dict[object, MacRule] = MACS.functions
module_rule, function_rule = MACS.module, MACS.function


def _numel(shape) -> int:
    return int(math.prod(shape)) if shape is not None else 0


def _in_shape(node: fx.Node, i: int = 0):
    a = node.args[i] if len(node.args) > i else None
    return node_shape(a) if isinstance(a, fx.Node) else None


@module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(node, m):
    k = math.prod(m.kernel_size) * (m.in_channels // m.groups)
    return _numel(node_shape(node)) * k


@module_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(node, m):
    # every input element is multiplied into kernel * out_channels/groups outputs
    k = math.prod(m.kernel_size) * (m.out_channels // m.groups)
    return _numel(_in_shape(node)) * k


@module_rule(nn.Linear)
def _linear(node, m):
    return _numel(node_shape(node)) * m.in_features


@module_rule(nn.Bilinear)
def _bilinear(node, m):
    return _numel(node_shape(node)) * m.in1_features * m.in2_features


@module_rule(nn.MultiheadAttention)
def _mha(node, m):
    q = _in_shape(node, 0)
    k = _in_shape(node, 1) or q
    if q is None:
        return 0
    batch_first = m.batch_first
    L, S = (q[1], k[1]) if batch_first else (q[0], k[0])
    B = q[0] if batch_first else q[1]
    E = m.embed_dim
    proj = B * (L * E * E + S * E * m.kdim + S * E * m.vdim)  # packed q/k/v in-projection
    attn = B * 2 * L * S * E  # Q K^T and A V over all heads
    out = B * L * E * E
    return proj + attn + out


@function_rule(F.linear)
def _f_linear(node, _):
    w = _in_shape(node, 1) if len(node.args) > 1 else node_shape(node.kwargs.get("weight"))
    return _numel(node_shape(node)) * (w[-1] if w else 0)


@function_rule(F.conv1d, F.conv2d, F.conv3d)
def _f_conv(node, _):
    w = _in_shape(node, 1) if len(node.args) > 1 else node_shape(node.kwargs.get("weight"))
    return _numel(node_shape(node)) * (math.prod(w[1:]) if w else 0)


@function_rule(torch.matmul, operator.matmul, torch.bmm, torch.mm)
def _matmul(node, _):
    a = _in_shape(node, 0)
    return _numel(node_shape(node)) * (a[-1] if a else 0)


@function_rule(torch.addmm, torch.baddbmm)
def _addmm(node, _):
    a = _in_shape(node, 1)
    return _numel(node_shape(node)) * (a[-1] if a else 0)


@function_rule(F.scaled_dot_product_attention)
def _sdpa(node, _):
    q, k = _in_shape(node, 0), _in_shape(node, 1)
    if q is None or k is None:
        return 0
    return 2 * _numel(q[:-1]) * k[-2] * q[-1]


def _swin_attention(node, _):
    """torchvision's wrapped shifted_window_attention(input[B,H,W,C], qkv_weight, proj_weight, bias,
    window_size, num_heads, ...): qkv and output projections plus attention inside each window."""
    x = _in_shape(node, 0)
    if x is None:
        return 0
    window = node.args[4] if len(node.args) > 4 else node.kwargs.get("window_size")
    B, H, W, C = x
    wh, ww = window
    Hp, Wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
    tokens = B * Hp * Wp
    return tokens * C * 3 * C + tokens * C * C + 2 * tokens * (wh * ww) * C


try:  # torchvision is optional for the core; register its wrapped leaf functions when present
    from torchvision.models import swin_transformer as _swin

    for _name in ("shifted_window_attention",):
        if hasattr(_swin, _name):
            FUNCTION_RULES[getattr(_swin, _name)] = _swin_attention
except ImportError:  # pragma: no cover
    pass


@dataclass
class FlopsResult:
    macs: int
    params: int
    per_node: Dict[str, int] = field(default_factory=dict)

    def to_dict(self):
        return {"macs": self.macs, "params": self.params}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(gm: fx.GraphModule) -> FlopsResult:
    """MACs of every node of a shape-annotated graph (see tracing.propagate_shapes), for the whole example
    batch: example inputs of batch 1 give per-image MACs."""
    modules = dict(gm.named_modules())
    per_node = {}
    for node in gm.graph.nodes:
        owner = modules[node.target] if node.op == "call_module" else None
        rule = MACS.lookup(node, owner)
        if rule is None and node.op == "call_method" and node.target in ("matmul", "bmm"):
            rule = _matmul
        if rule is not None:
            per_node[node.name] = int(rule(node, owner))
    return FlopsResult(sum(per_node.values()), count_params(gm), per_node)

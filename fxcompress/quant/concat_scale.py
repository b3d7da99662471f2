"""Concat inputs quantized with the concat's own scale, so that onnxruntime copies their codes.

QLinearConcat requantizes every input whose scale or zero point differs from the output's through a
256-entry table, element by element; an input with the output's very (scale, zero point) is copied as bytes.
Measured on YOLOv8n pruned + INT8 at 640x640 (onnxruntime's profiler, one thread): its 19 QLinearConcats
took 7 % of the model's time with a scale per input, 3 % with the output's scale on every input.

So a concat whose op family asks for it (`QuantRule.shared_scale`, torch.cat in ops/indexing.py) lends its
quantizer to the tensors it concatenates (TFLite's rule for a concat): each input's call site reuses the
concat's quantizer (observe=False) instead of one of its own. The concat's output holds every value of its
inputs, so the range it observes covers them all; an input tensor then reads at most the concat's coarser
step. What the fake-quant model computes is still what onnxruntime runs (one scale per tensor either way),
so the INT8 check is unchanged.

Left alone, keeping their own quantizers: an input tensor that feeds two such concats (DenseNet's features
go into every later layer's concat: one scale cannot be two concats' outputs), a concat that is itself the
input of one, inputs that are not all quantized, and a ReLU-like op's output (its quantizer must keep zero
point 0 for onnxruntime to drop the ReLU into the conv before it: with the concat's range, the conv stayed
float) or one with a bound of its own (ReLU6's).
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List

import torch.fx as fx

from .passthrough import tensor_args


def share_concat_scales(need: Dict[fx.Node, None], rules: Dict[fx.Node, object], shared: Dict[fx.Node, fx.Node],
                        bounds: Dict[fx.Node, float]) -> Dict[fx.Node, fx.Node]:
    """Update `shared` ({tensor: quantized tensor whose quantizer it reuses}, passthrough.share_quantizers')
    in place so that each eligible concat's input tensors reuse the concat's quantizer (module doc); the
    tensors pass-through ops read from them follow. Returns {input tensor: concat} for those moved."""
    groups: Dict[fx.Node, List[fx.Node]] = {}
    for n in need:
        rule = rules.get(n)
        if rule is None or not getattr(rule, "shared_scale", False) or n in shared:
            continue
        roots = []
        for a in tensor_args(n):
            root = shared.get(a, a)   # a piece of a chunk: the tensor whose quantizer it shares
            role = getattr(rules.get(root), "role", None)
            if root not in need or root in bounds or root is n or role == "activation":
                roots = []
                break
            roots.append(root)
        if roots:
            groups[n] = roots
    uses = Counter(r for roots in groups.values() for r in set(roots))
    moved: Dict[fx.Node, fx.Node] = {}
    for cat, roots in groups.items():
        if any(uses[r] > 1 or r in groups for r in roots) or uses[cat]:
            continue
        for r in roots:
            moved[r] = cat
    for n, src in list(shared.items()):
        if src in moved:
            shared[n] = moved[src]
    shared.update(moved)
    return moved

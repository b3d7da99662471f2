"""Placing fake-quant nodes in an fx graph where the INT8 lowering really quantizes.

Which ops are quantized, and how, is each op family's `QuantRule` (registry `QUANT` in `fxcompress.ops`),
chosen by how onnxruntime's CPU optimizer turns QDQ groups into integer kernels:
- "weighted" (conv, linear): int8 weight per output channel, uint8 input and output -> QLinearConv, QGemm;
- "requantize" (add, average pools, concat): every tensor input and the output quantized -> QLinearAdd...;
  a concat's inputs with the concat's own quantizer where that is safe (quant/concat_scale.py);
- "activation" (ReLU-like, right after a quantized op): the output is quantized after them instead;
- "passthrough" (max-pool, flatten, reshape, dropout, chunk/split and their getitem): reuse the input's
  quantizer, run on uint8.

The plan is tensor-centric, like a QDQ model: a tensor is quantized once, at its producer, when it
is an input or output of a quantized op. A ReLU-like op right after a quantized op moves the output
quantization after it; a pass-through op reuses the quantizer of the tensor it reads, which moves there from
after the op when that tensor is not quantized yet (quant/passthrough.py: C2f's SiLU before its chunk).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrize

from .. import ops  # noqa: F401  (registers every op family's rules)
from ..ops.registry import QUANT, QuantRule
from .fake_quant import ActivationQuantizer, WeightQuantizer
from .concat_scale import share_concat_scales
from .observers import CalibrationConfig
from .passthrough import hoist_quantizers, share_quantizers
from .passthrough import is_float_tensor as _is_float_tensor, tensor_args


def rule_for(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[QuantRule]:
    module = modules[node.target] if node.op == "call_module" else None
    rule = QUANT.lookup(node, module)
    if rule is not None and rule.applies is not None and not rule.applies(node, modules):
        return None
    if rule is not None and rule.role == "activation" and activation_bound(node, rule, modules) is False:
        return None   # e.g. Hardtanh(-1, 1) is not ReLU-like
    return rule


def activation_bound(node: fx.Node, rule: QuantRule, modules):
    """A known upper bound of an activation's output (6 for ReLU6), None, or False if it is not ReLU-like."""
    if rule.upper_bound is None:
        return None
    return rule.upper_bound(modules[node.target] if node.op == "call_module" else node)


@dataclass
class QuantPlan:
    weighted: List[fx.Node] = field(default_factory=list)        # conv/linear nodes to quantize
    quantized: List[fx.Node] = field(default_factory=list)       # tensors with their own quantizer
    shared: Dict[fx.Node, fx.Node] = field(default_factory=dict)  # pass-through tensor -> source tensor
    bounds: Dict[fx.Node, float] = field(default_factory=dict)
    kept_float: Dict[str, str] = field(default_factory=dict)     # layer left in float -> why


def plan_quantization(gm: fx.GraphModule, min_input_channels: int = 1) -> QuantPlan:
    """Decide which tensors get quantized. Needs tensor_meta on nodes (ctx.refresh_shapes()).
    Convs reading fewer than `min_input_channels` channels (an RGB stem, with 4) stay in float: the raw
    image is then never quantized, for ~1-3% of the MACs left in float."""
    modules = dict(gm.named_modules())
    rules = {n: rule_for(n, modules) for n in gm.graph.nodes}
    need: Dict[fx.Node, None] = {}   # ordered set
    plan = QuantPlan()
    for n, rule in rules.items():
        if rule is None or rule.role not in ("weighted", "requantize"):
            continue
        inputs = [n.args[0]] if rule.role == "weighted" else tensor_args(n)
        if not inputs or not all(_is_float_tensor(a) for a in inputs) or not _is_float_tensor(n):
            continue
        if len(inputs) < rule.min_tensor_inputs:
            continue   # e.g. x + 1.0: no integer kernel for it, stays float
        thin = _thin_input(n, modules, min_input_channels)
        if thin:
            plan.kept_float[n.target] = thin
            continue
        if rule.role == "weighted":
            plan.weighted.append(n)
        for a in inputs:
            need[a] = None
        only_output = all(u.op == "output" for u in n.users)
        if not (only_output and rule.float_output_ok is not None and rule.float_output_ok(n)):
            need[n] = None
    # a pass-through op's quantizer moves up onto the tensor it moves, where that changes no float reader
    hoist_quantizers(need, rules)
    for n in list(need):   # a -inf pad shares its input's quantizer or none: its max pool's output is quantized
        rule = rules[n]
        if rule is not None and rule.own_quantizer is not None and not rule.own_quantizer(n, modules):
            del need[n]
    # ReLU-like op as the only user of a quantized op: quantize after it (the lowering drops the ReLU)
    for n in list(need):
        rule = rules[n]
        if rule is None or rule.role not in ("weighted", "requantize") or len(n.users) != 1:
            continue
        user = next(iter(n.users))
        urule = rules[user]
        if urule is not None and urule.role == "activation" and user.args and user.args[0] is n:
            del need[n]
            need[user] = None
            bound = activation_bound(user, urule, modules)
            if bound is not None and bound is not False:
                plan.bounds[user] = bound
    # pass-through ops reuse the quantizer of the tensor they move (placed there if it had none)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    plan.shared = share_quantizers(need, rules, order)
    # a concat's inputs take its quantizer, so that onnxruntime copies their codes (quant/concat_scale.py)
    share_concat_scales(need, rules, plan.shared, plan.bounds)
    plan.quantized = [n for n in sorted(need, key=order.get) if n not in plan.shared]
    return plan


def _thin_input(node: fx.Node, modules, min_input_channels: int) -> str:
    m = modules.get(node.target) if node.op == "call_module" else None
    cin = getattr(m, "in_channels", None)
    if isinstance(m, nn.modules.conv._ConvNd) and cin < min_input_channels:
        return f"{cin} input channel(s) < min_input_channels={min_input_channels}"
    return ""


def insert_fake_quant(gm: fx.GraphModule, plan: QuantPlan, config: CalibrationConfig, per_channel: bool = True,
                      symmetric_weights: bool = True, weight_bits: int = 8) -> Dict[str, ActivationQuantizer]:
    """Rewrite gm in place: parametrize weights, insert activation quantizers. Returns them by name."""
    modules = dict(gm.named_modules())
    quantizers: Dict[str, ActivationQuantizer] = {}
    targets: Dict[fx.Node, str] = {}
    for n in plan.quantized + list(plan.shared):
        if n in plan.shared:
            target = targets[plan.shared[n]]
            kwargs = {"observe": False}
        else:
            target = f"act_quant_{n.name}"
            q = ActivationQuantizer(config, plan.bounds.get(n), label=n.name)
            gm.add_submodule(target, q)
            quantizers[target] = q
            kwargs = {}
        targets[n] = target
        with gm.graph.inserting_after(n):
            qnode = gm.graph.call_module(target, (n,), kwargs)
        n.replace_all_uses_with(qnode, delete_user_cb=lambda u, q=qnode: u is not q)
        qnode.meta["tensor_meta"] = n.meta.get("tensor_meta")
    done = set()
    for n in plan.weighted:
        m = modules[n.target]
        if n.target in done:
            continue
        done.add(n.target)
        rule = rule_for(n, modules)
        axis = rule.weight_axis if per_channel else None
        parametrize.register_parametrization(m, "weight", WeightQuantizer(m.weight, axis, symmetric_weights,
                                                                             weight_bits))
    gm.recompile()
    return quantizers


def weighted_modules(gm: fx.GraphModule) -> Dict[str, nn.Module]:
    """Modules whose weight is fake-quantized (by name)."""
    return {name: m for name, m in gm.named_modules()
            if parametrize.is_parametrized(m, "weight")
            and any(isinstance(p, WeightQuantizer) for p in m.parametrizations.weight)}

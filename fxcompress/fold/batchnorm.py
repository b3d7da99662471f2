"""Folding an eval-mode BatchNorm into the affine layer that feeds it (conv, linear).

BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta is a per-channel affine map, so with
y = W x + b it folds into W' = W * s (s scaled along the output-channel axis) and
b' = (b - mean) * s + beta, where s = gamma / sqrt(var + eps). Shared by FoldBatchNorm and any pass
that merges BN.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from .. import ops  # noqa: F401  (registers every op family's rules)
from ..ops.registry import BN_FOLD

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def output_axis(module: nn.Module) -> Optional[int]:
    """The weight axis holding output channels, or None if `module` cannot absorb a BatchNorm."""
    rule = BN_FOLD.for_type(type(module))   # each op family says where its output channels are
    return rule(module) if rule is not None else None


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) such that bn(y) == y * scale + shift per channel, using running statistics."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def folded_parameters(module: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of `module` with `bn` folded in, in float64 (rounded to float32 only when stored)."""
    axis = output_axis(module)
    if axis is None:
        raise ValueError(f"{type(module).__name__} cannot absorb a BatchNorm")
    weight = module.weight
    channels = weight.shape[axis]
    if bn.num_features != channels:
        raise ValueError(f"BatchNorm has {bn.num_features} channels but {type(module).__name__} produces {channels}")
    scale, shift = bn_scale_shift(bn)
    shape = [1] * weight.dim()
    shape[axis] = channels
    with torch.no_grad():
        bias = module.bias.double() if module.bias is not None else torch.zeros(channels, dtype=torch.float64,
                                                                                 device=weight.device)
        return weight.double() * scale.view(shape), bias * scale + shift


def fold_bn_into(module: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold `bn` into `module`'s weight and bias in place (creating the bias if absent).
    Computed in float64 then cast back, so the folded layer matches layer+BN to float rounding."""
    new_w, new_b = folded_parameters(module, bn)
    with torch.no_grad():
        module.weight.copy_(new_w.to(module.weight.dtype))
        if module.bias is None:
            module.bias = nn.Parameter(new_b.to(module.weight.dtype))
        else:
            module.bias.copy_(new_b.to(module.bias.dtype))


def exact_folds(before: fx.GraphModule, after: fx.GraphModule) -> Callable[[torch.Tensor], Optional[torch.Tensor]]:
    """For compare_exact's float64 re-check of a folding (`before` unfolded, `after` = fold_batchnorms of a
    copy of it): a folded weight or bias of `after` -> its float64 value, recomputed from `before`'s layer
    and BatchNorm, when the stored tensor is exactly that value rounded to float32 (else None: the stored
    tensor is checked as it is, and a wrong fold fails). Rounding the folded weights to float32 is the only
    inexact step of a fold, and deep random-weight networks amplify it past the tolerance (resnet152: 1e-4
    relative); with it removed, the float64 re-check tests the rewrite alone."""
    kept = {n.name for n in after.graph.nodes}
    sources = {}   # id(tensor of after) -> (which, producer name, bn name)
    for node in before.graph.nodes:
        producer = node.args[0] if node.args else None
        if (node.op != "call_module" or node.name in kept or not isinstance(producer, fx.Node)
                or producer.op != "call_module" or not isinstance(before.get_submodule(node.target), BATCHNORMS)):
            continue
        layer = after.get_submodule(producer.target)
        for which, t in ((0, layer.weight), (1, layer.bias)):
            sources[id(t)] = (which, producer.target, node.target)

    def exact(t: torch.Tensor) -> Optional[torch.Tensor]:
        source = sources.get(id(t))
        if source is None:
            return None
        which, layer, bn = source
        value = folded_parameters(before.get_submodule(layer), before.get_submodule(bn))[which]
        return value if torch.equal(value.to(t.dtype), t.detach()) else None
    return exact


def _unfoldable(bn_node: fx.Node, modules: dict) -> str:
    producer = bn_node.args[0] if bn_node.args else None
    if not isinstance(producer, fx.Node) or producer.op != "call_module":
        return "input is not a module call"
    m = modules[producer.target]
    if output_axis(m) is None:
        return f"input {producer.target} ({type(m).__name__}) cannot absorb a BatchNorm"
    if len(producer.users) != 1:
        return f"output of {producer.target} is also used elsewhere"
    if modules[bn_node.target].running_mean is None:
        return "no running statistics"
    if sum(1 for n in producer.graph.nodes if n.op == "call_module" and n.target == producer.target) > 1:
        return f"{producer.target} is called more than once"
    return ""


def fold_batchnorms(gm: fx.GraphModule) -> Tuple[List[str], List[str]]:
    """Fold every foldable BatchNorm of `gm` into its producer and remove it from the graph.
    Returns (folded BN names, 'name: reason' for those left in place). The caller recompiles."""
    modules = dict(gm.named_modules())
    folded, skipped = [], []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), BATCHNORMS):
            continue
        reason = _unfoldable(node, modules)
        if reason:
            skipped.append(f"{node.target}: {reason}")
            continue
        producer = node.args[0]
        fold_bn_into(modules[producer.target], modules[node.target])
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)
        folded.append(node.target)
    still_used = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for name in folded:
        if name not in still_used:
            gm.delete_submodule(name)
    return folded, skipped

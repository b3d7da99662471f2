"""Canonical forms: composite layers of model libraries rewritten, right after tracing, as the standard layers
they are made of, so that every analysis and transform reads them with the rules it already has.

timm builds models from its own layer types: `BatchNormAct2d` is an `nn.BatchNorm2d` subclass whose forward
also applies an activation; `Conv2dSame` an `nn.Conv2d` subclass that pads like TensorFlow's 'SAME' from the
input's size. Traced through, they turn into functional calls whose `self.training` is frozen at trace time
(a BatchNorm that never again uses batch statistics) and whose padding is shape-dependent Python; treated as
their base class, BatchNorm folding would drop the activation. So the tracer keeps them whole and this step
replaces each call by a chain of standard modules computing the same thing, `nn.BatchNorm2d` sharing the
layer's own parameters and buffers followed by its activation, and checks the graph's outputs unchanged.

    gm = trace(model)                                  # keeps layers with a canonical form as leaves
    report = canonicalize(gm, example_inputs)          # {"canonicalized": {"BatchNormAct2d": 53}, ...}

The rules live with their op family (`ops/norm.py`, `ops/conv.py`), registered in `CANONICAL`: rule(module,
input_shape) returns [(suffix, module), ...], the chain that replaces it, in data-flow order (the module
with suffix None takes the layer's own name, the others `name_suffix`), or a string saying why it cannot (the layer then stays as it is, and its
type's other rules, if any, or none, apply).
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from ..core.errors import VerificationError
from ..core.verify import TOLERANCES, compare_outputs
from ..ops.registry import CANONICAL
from .tracing import node_shape, propagate_shapes


def has_canonical_form(module: nn.Module) -> bool:
    return CANONICAL.for_type(type(module)) is not None


def canonicalize(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], protected=()) -> Dict[str, dict]:
    """Replace every call of a module with a canonical form by its chain of standard modules; the graph's
    outputs on `example_inputs` are checked unchanged (VerificationError naming the layers otherwise).
    `protected`: modules that must not change (the user's: gm's containers are its own, checked).
    Returns {"canonicalized": {type: count}, "kept": {node: reason}}."""
    protected = {id(m) for m in protected}
    modules = dict(gm.named_modules())
    sites = [n for n in gm.graph.nodes if n.op == "call_module" and has_canonical_form(modules[n.target])]
    if not sites:
        return {"canonicalized": {}, "kept": {}}
    with torch.no_grad():
        expected = propagate_shapes(gm, example_inputs)   # the input shapes the rules need, and the reference
    done, kept = Counter(), {}
    for node in sites:
        module = modules[node.target]
        if len(node.args) != 1 or node.kwargs:
            kept[node.name] = f"{type(module).__name__}: called with more than one input"
            continue
        chain = CANONICAL.for_type(type(module))(module, node_shape(node.args[0]))
        if isinstance(chain, str):
            kept[node.name] = f"{type(module).__name__}: {chain}"
            continue
        _replace(gm, node, chain, protected)
        done[type(module).__name__] += 1
    gm.graph.lint()
    gm.recompile()
    with torch.no_grad():
        actual = gm(*example_inputs)
    try:
        compare_outputs(actual, expected, TOLERANCES["exact_transform"], "canonical forms vs the traced layers")
    except VerificationError as e:
        raise VerificationError(f"{e} (layers rewritten: {dict(done)})") from e
    return {"canonicalized": dict(done), "kept": kept}


def _replace(gm: fx.GraphModule, node: fx.Node, chain, protected: set) -> None:
    """Replace `node` by a chain of call_module nodes: the module whose suffix is None takes the layer's
    name, the others `name_suffix` beside it."""
    parent, _, name = node.target.rpartition(".")
    owner = gm.get_submodule(parent) if parent else gm
    if id(owner) in protected:
        raise RuntimeError(f"canonical forms: {parent or 'the root'} is the user's module, not the graph's copy")
    value = node.args[0]
    for suffix, module in chain:
        setattr(owner, name if suffix is None else f"{name}_{suffix}", module)   # gm's own container
        with gm.graph.inserting_before(node):
            value = gm.graph.call_module(node.target if suffix is None else f"{node.target}_{suffix}", (value,))
    value.meta.update(node.meta)   # the chain's output is the layer's: a later site reads its shape
    node.replace_all_uses_with(value)
    gm.graph.erase_node(node)

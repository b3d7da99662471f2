"""Inlining the "decompose" rules of the op families (QUANT registry) before INT8 quantization: a module
that hides its linear layers (nn.MultiheadAttention computes its packed q/k/v projection inside one
call) is replaced, in the graph, by the ops of an equivalent module built from nn.Linear layers, which
the quantizer then treats as any other linear layer. The caller checks the result exact.

    report = decompose_modules(gm)   # {"decomposed": [...], "kept": {module: why}}
"""
from __future__ import annotations

import operator
from typing import Dict

import torch.fx as fx
import torch.nn as nn

from .. import ops  # noqa: F401  (registers every op family's rules)
from ..graph.tracing import LeafTracer
from ..ops.registry import QUANT


def decompose_modules(gm: fx.GraphModule) -> dict:
    """Rewrite gm in place; returns the modules decomposed and those kept whole, with the reason."""
    modules = dict(gm.named_modules())
    decomposed, kept = [], {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        rule = QUANT.for_type(type(modules[node.target]))
        if rule is None or rule.role != "decompose":
            continue
        replacement = rule.decompose(modules[node.target], node)
        if isinstance(replacement, str):
            kept[node.target] = replacement
            continue
        if not all(u.op == "call_function" and u.target is operator.getitem and (u.args[1] == 0 or not u.users)
                   for u in node.users):
            kept[node.target] = "its output is used other than as (output, _)"
            continue
        _inline(gm, node, replacement)
        decomposed.append(node.target)
    if decomposed:
        gm.graph.lint()
        gm.recompile()
    return {"decomposed": decomposed, "kept": kept}


def _set_submodule(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _inline(gm: fx.GraphModule, node: fx.Node, module: nn.Module) -> None:
    """Replace the call `node` by the traced ops of `module` (installed at the same path), whose forward
    takes the node's first argument and returns (output, None)."""
    _set_submodule(gm, node.target, module)
    sub = LeafTracer().trace(module)
    env: Dict[fx.Node, fx.Node] = {}
    result = None
    with gm.graph.inserting_before(node):
        for n in sub.nodes:
            if n.op == "placeholder":
                env[n] = node.args[0]
            elif n.op == "output":
                result = env[n.args[0][0]]
            else:
                copy = gm.graph.node_copy(n, lambda a: env[a])
                if n.op in ("call_module", "get_attr"):
                    copy.target = f"{node.target}.{n.target}"
                env[n] = copy
    for user in list(node.users):
        if user.args[1] == 0:
            user.replace_all_uses_with(result)
        gm.graph.erase_node(user)
    gm.graph.erase_node(node)

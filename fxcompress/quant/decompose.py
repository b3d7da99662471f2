"""Inlining the "decompose" rules of the op families (QUANT registry) before INT8 quantization: a module
that hides its linear layers (nn.MultiheadAttention computes its packed q/k/v projection inside one call)
is replaced, in the graph, by the ops of an equivalent module built from nn.Linear layers, which the
quantizer then treats as any other linear layer. The caller checks the result exact. (Swin's window
attention, a function taking its projections as tensors, is decomposed the same way in commit 3f1c8d7,
with function calls handled here too; not registered until its float ops are emulated: issue 11.)

    report = decompose_modules(gm)   # {"decomposed": [...], "kept": {module: why}}
"""
from __future__ import annotations

import inspect
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
        rule = QUANT.lookup(node, modules[node.target])
        if rule is None or rule.role != "decompose":
            continue
        found = rule.decompose(modules[node.target], node)
        if isinstance(found, str):
            kept[node.target] = found
        elif _inline(gm, node, *found):
            decomposed.append(node.target)
        else:
            kept[node.target] = "its output is used other than as (output, _)"
    if decomposed:
        gm.graph.lint()
        gm.recompile()
    return {"decomposed": decomposed, "kept": kept}


def _inline(gm: fx.GraphModule, node: fx.Node, module: nn.Module, inputs) -> bool:
    """Replace the call `node` by the traced ops of `module`, installed at the same path, whose forward takes
    `inputs` (later arguments keep their defaults) and returns a tuple, as the call did, read by getitem nodes."""
    params = list(inspect.signature(module.forward).parameters.values())[len(inputs):]
    sub = LeafTracer().trace(module, concrete_args={p.name: p.default for p in params})
    output = next(n for n in sub.nodes if n.op == "output").args[0]
    if not all(u.op == "call_function" and u.target is operator.getitem
               and (isinstance(output[u.args[1]], fx.Node) or not u.users) for u in node.users):
        return False
    parent, _, name = node.target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)
    env: Dict[fx.Node, fx.Node] = {}
    placeholders = iter(inputs)
    with gm.graph.inserting_before(node):
        for n in sub.nodes:
            if n.op == "placeholder":
                env[n] = next(placeholders, None)
            elif n.op != "output":
                copy = gm.graph.node_copy(n, lambda a: env[a])
                if n.op in ("call_module", "get_attr"):
                    copy.target = f"{node.target}.{n.target}"
                env[n] = copy
    for user in list(node.users):
        if isinstance(output[user.args[1]], fx.Node):
            user.replace_all_uses_with(env[output[user.args[1]]])
        gm.graph.erase_node(user)
    gm.graph.erase_node(node)
    return True

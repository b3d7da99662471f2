"""Inlining the "decompose" rules of the op families (QUANT registry) before INT8 quantization: an op that
hides its linear layers (nn.MultiheadAttention computes its packed q/k/v projection inside one call, Swin's
window attention takes its projections as weight tensors) is replaced, in the graph, by the ops of an
equivalent module built from nn.Linear layers, which the quantizer then treats as any other linear layer;
a mean over an NCHW map's H and W becomes the global average pool it is (ops/pooling.py).
Needs tensor_meta on the nodes; the caller checks the result exact.

    report = decompose_modules(gm)   # {"decomposed": [...], "kept": {op: why}}
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
    """Rewrite gm in place; returns the ops decomposed and those kept whole, with the reason."""
    modules = dict(gm.named_modules())
    decomposed, kept = [], {}
    for node in list(gm.graph.nodes):
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        module = modules[node.target] if node.op == "call_module" else None
        rule = QUANT.lookup(node, module)
        if rule is None or rule.role != "decompose" or (rule.applies is not None and not rule.applies(node, modules)):
            continue
        label = node.target if module is not None else node.name
        found = rule.decompose(module, node)
        if isinstance(found, str):
            kept[label] = found
            continue
        replacement, inputs = found
        path = node.target if module is not None else _free_path(gm, node)
        if not _inline(gm, node, replacement, inputs, path):
            kept[label] = "its output is used other than as (output, _)"
            continue
        decomposed.append(label)
    if decomposed:
        # the weights the replaced calls read are now the nn.Linear layers' own: drop the old names (the
        # ONNX exporter names a shared tensor after its first name, and the INT8 check looks it up by the new)
        read = {n.target for n in gm.graph.nodes if n.op == "get_attr" and n.users}
        for node in list(gm.graph.nodes):
            if node.op == "get_attr" and not node.users:
                gm.graph.erase_node(node)
                if node.target not in read:
                    owner, _, name = node.target.rpartition(".")
                    delattr(gm.get_submodule(owner) if owner else gm, name)
        gm.graph.lint()
        gm.recompile()
    return {"decomposed": decomposed, "kept": kept}


def _free_path(gm: fx.GraphModule, node: fx.Node) -> str:
    """Where a function call's replacement module goes: beside the first parameter it reads (at the root
    for a call that reads none, a mean)."""
    owner = next((a.target.rpartition(".")[0] for a in node.all_input_nodes if a.op == "get_attr"), "")
    owner = owner.rpartition(".")[0] if owner else ""   # ...attn.qkv.weight -> ...attn
    base = f"{owner}.{node.name}_decomposed" if owner else f"{node.name}_decomposed"
    return base


def _set_submodule(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _inline(gm: fx.GraphModule, node: fx.Node, module: nn.Module, inputs, path: str) -> bool:
    """Replace the call `node` by the traced ops of `module` (installed at `path`), whose forward takes
    `inputs` and returns what the call returned: a tensor, or a tuple read by getitem nodes."""
    params = list(inspect.signature(module.forward).parameters.values())[len(inputs):]
    sub = LeafTracer().trace(module, concrete_args={p.name: p.default for p in params})
    output = next(n for n in sub.nodes if n.op == "output").args[0]
    if isinstance(output, (tuple, list)) and not all(
            u.op == "call_function" and u.target is operator.getitem
            and (isinstance(output[u.args[1]], fx.Node) or not u.users) for u in node.users):
        return False
    _set_submodule(gm, path, module)
    env: Dict[fx.Node, fx.Node] = {}
    placeholders = iter(inputs)
    with gm.graph.inserting_before(node):
        for n in sub.nodes:
            if n.op == "placeholder":
                env[n] = next(placeholders, None)
            elif n.op != "output":
                copy = gm.graph.node_copy(n, lambda a: env[a])
                if n.op in ("call_module", "get_attr"):
                    copy.target = f"{path}.{n.target}"
                env[n] = copy
    if isinstance(output, (tuple, list)):
        for user in list(node.users):
            if isinstance(output[user.args[1]], fx.Node):
                user.replace_all_uses_with(env[output[user.args[1]]])
            gm.graph.erase_node(user)
    else:
        node.replace_all_uses_with(env[output])
    gm.graph.erase_node(node)
    return True

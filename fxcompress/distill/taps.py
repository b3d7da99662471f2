"""Feature taps: expose named intermediate values of an fx graph without changing what it returns.

`install_taps(gm, names)` puts a `Tap` (an `nn.Identity` that remembers its last input) right after each
named node, in the data path, so every op rule treats it as the identity it is: channel analysis and
pruning pass through it, and a pruned model's tap follows the new width. `remove_taps(gm)` takes them out
again. A name is an fx node name or a module name (the node calling that module); an unknown name raises
PassError listing close matches. `with_features(gm, names)` builds a graph returning (outputs, [features])
instead, for a frozen teacher.

    taps = install_taps(student, ["layers_5", "layers.8"])
    logits = student(x); feats = [t.value for t in taps]
    remove_taps(student)
"""
from __future__ import annotations

import copy
import difflib
from typing import List, Sequence

import torch.fx as fx
import torch.nn as nn

from ..core.errors import PassError

TAP_PREFIX = "fxcompress_tap_"


class Tap(nn.Identity):
    """Identity that keeps its last input in `value` (cleared by `clear()`)."""

    def __init__(self, label: str = ""):
        super().__init__()
        self.label, self.value = label, None

    def forward(self, x):
        self.value = x
        return x

    def clear(self) -> None:
        self.value = None


def resolve_nodes(gm: fx.GraphModule, names: Sequence[str], role: str = "tap") -> List[fx.Node]:
    """The fx node of each name (node name, or the module a call_module node calls), in the given order."""
    by_name = {n.name: n for n in gm.graph.nodes if n.op not in ("output",)}
    by_module = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            by_module.setdefault(n.target, n)
    out = []
    for name in names:
        node = by_name.get(name) or by_module.get(name)
        if node is None:
            close = difflib.get_close_matches(name, list(by_name) + list(by_module), n=5, cutoff=0.5)
            raise PassError(f"{role} names {name!r}, which is neither a node nor a called module of the graph; "
                            f"close matches: {close or 'none'} (node names as in gm.graph, module names as in "
                            f"named_modules())")
        if name in by_module and list(n.target for n in gm.graph.nodes if n.op == "call_module").count(name) > 1:
            raise PassError(f"{role} names module {name!r}, which is called more than once: name the node instead")
        out.append(node)
    return out


def install_taps(gm: fx.GraphModule, names: Sequence[str], role: str = "tap") -> List[Tap]:
    """A Tap after each named node (in place); returns the taps in the order of `names`."""
    nodes = resolve_nodes(gm, names, role)
    taps = []
    for i, node in enumerate(nodes):
        target = f"{TAP_PREFIX}{i}"
        while hasattr(gm, target):
            target += "_"
        tap = Tap(names[i])
        gm.add_submodule(target, tap)
        with gm.graph.inserting_after(node):
            tap_node = gm.graph.call_module(target, (node,))
        node.replace_all_uses_with(tap_node, delete_user_cb=lambda user: user is not tap_node)
        if "tensor_meta" in node.meta:
            tap_node.meta["tensor_meta"] = node.meta["tensor_meta"]
        taps.append(tap)
    gm.graph.lint()
    gm.recompile()
    return taps


def remove_taps(gm: fx.GraphModule) -> None:
    """Take every Tap out of the graph (in place)."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(modules.get(node.target), Tap):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.delete_submodule(node.target)
    gm.graph.lint()
    gm.recompile()


def with_features(gm: fx.GraphModule, names: Sequence[str], role: str = "teacher tap") -> fx.GraphModule:
    """A new graph (sharing gm's tensors) returning (gm's outputs, [the named values])."""
    tensors = list(gm.parameters()) + list(gm.buffers())
    new = copy.deepcopy(gm, {id(t): t for t in tensors})
    nodes = resolve_nodes(new, names, role)
    output = next(n for n in new.graph.nodes if n.op == "output")
    output.args = ((output.args[0], list(nodes)),)
    new.graph.lint()
    new.recompile()
    return new

"""Checking the channel analysis' predictions on a pruned copy before anyone relies on them.

The op rules predict every tensor's shape after pruning. A size computed in the graph from another
tensor's shape (`x.view(a.size(0), -1)`, `torch.zeros(n, ...)`) may not follow: remove one unit of every
prunable group in a copy of the model and run it; a node that then fails or changes shape unpredictably
fixes the groups that reach it. The copy lives on the meta device (shapes only, no memory); a model that
meta tensors cannot run is probed on a real copy instead (its unpruned tensors shared).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
import torch.fx as fx

from ..graph.keys import ValueKey
from ..graph.shapes import MetaRunError, run_on_meta
from ..graph.tracing import node_shape
from .apply import apply_plan
from .groups import ChannelGroupsResult
from .state import PruneState, keep_masks

SIZE_ARG_OPS = {"view", "reshape", "expand", "new_zeros", "new_ones", "new_empty", "new_full", "repeat",
                torch.reshape, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange}


def _has_dynamic_size(node: fx.Node) -> bool:
    """A shape argument computed in the graph (from some tensor's size), not a constant."""
    if node.op not in ("call_method", "call_function") or node.target not in SIZE_ARG_OPS:
        return False
    args = list(node.args[1:] if node.op == "call_method" or node.target is torch.reshape else node.args)
    flat = [a for x in args for a in (x if isinstance(x, (list, tuple)) else [x])]
    return any(isinstance(a, fx.Node) for a in flat)


def _shape_check(result: ChannelGroupsResult, masks):
    """A callback(node, value) raising when a node's output differs from the shape the plan predicts."""
    s = PruneState(result, masks)

    def check(n, out):
        items = {ValueKey.of_node(n.name): out} if isinstance(out, torch.Tensor) else \
            {ValueKey.of_node(n.name, i): v for i, v in enumerate(out)} if isinstance(out, (tuple, list)) else {}
        for key, value in items.items():
            if isinstance(value, torch.Tensor) and key in result.shapes and tuple(value.shape) != s.new_shape(key):
                raise RuntimeError("shape mismatch")
    return check


def _first_mismatch(gm: fx.GraphModule, result: ChannelGroupsResult, masks, inputs, on_meta: bool):
    """Run gm (on meta tensors with graph.shapes' fast loop, or for real); the first node that fails or whose
    shape differs from the prediction, None if all hold."""
    check = _shape_check(result, masks)
    if on_meta:
        try:
            run_on_meta(gm, inputs, check)
        except MetaRunError as e:
            return e.node
        return None

    class Probe(fx.Interpreter):
        failed = None

        def run_node(self, n):
            Probe.failed = n
            out = super().run_node(n)
            check(n, out)
            return out
    try:
        with torch.no_grad():
            Probe(gm).run(*inputs)
    except Exception:
        return Probe.failed or next(iter(gm.graph.nodes))
    return None


def _reaching_names(node: fx.Node, depth: int = 4) -> set:
    """The node, its inputs, and through non-tensor inputs (`y.size(1)`, `x.shape`, arithmetic on them) the
    tensors they were read from: a size computed from `y` makes y's group a culprit, not every group."""
    names, frontier = {node.name}, list(node.all_input_nodes)
    for _ in range(depth):
        nxt = []
        for a in frontier:
            if a.name not in names:
                names.add(a.name)
                if node_shape(a) is None and a.op in ("call_method", "call_function"):
                    nxt.extend(a.all_input_nodes)
        frontier = nxt
    return names


def probe_groups(gm: fx.GraphModule, result: ChannelGroupsResult, example_inputs,
                 max_rounds: int = 30) -> tuple:
    """Returns ({group id: why it must stay whole}, how the probe ran: "not needed" | "meta" | "real")."""
    if not any(_has_dynamic_size(n) for n in gm.graph.nodes):
        return {}, "not needed"   # every size in the graph follows its tensors: the predictions are complete
    inputs = tuple(example_inputs)
    # "real" if the unpruned graph cannot run on meta tensors: asked at the first mismatch on meta only (a
    # graph whose pruned copy runs there runs there), sparing a meta run of the whole model (vit_b_16: 20 ms)
    how = None
    fixed: Dict[int, str] = {}
    for _ in range(max_rounds):
        plan = {g.id: np.arange(1, g.size) for g in result.prunable() if g.size > 1 and g.id not in fixed}
        if not plan:
            break
        masks = keep_masks(result, plan)
        node = None if how == "real" else \
            _first_mismatch(apply_plan(gm, result, plan, on_meta=True), result, masks, inputs, on_meta=True)
        if node is not None and how is None:
            how = "meta" if _first_mismatch(gm, result, {}, inputs, on_meta=True) is None else "real"
        if how == "real":
            new = apply_plan(gm, result, plan)
            was_training = new.training
            new.eval()
            node = _first_mismatch(new, result, masks, inputs, on_meta=False)
            new.train(was_training)
        if node is None:
            break
        names = _reaching_names(node)
        culprits = [gid for gid in plan if any(m.key.node_name in names for m in result.groups[gid].members)]
        for gid in culprits or list(plan):   # cannot tell which group: fix them all rather than guess
            fixed[gid] = (f"pruning it breaks {node.op} {getattr(node.target, '__name__', node.target)} "
                          f"({node.name}): a size there is computed from another tensor")
    return fixed, how or "meta"

"""Counting multiply-accumulates (MACs) and parameters on a shape-annotated fx graph.

The rules live with their op family in `fxcompress.ops` (registry `MACS`); a rule reads shapes only
through a `MacView` (the node's output, its arguments, its module's parameters), so the same rules count
a graph as it is (recorded shapes) or as a pruning plan would leave it (shapes the plan predicts, see
`fxcompress.prune.plan.macs_of_plan`) without building the pruned model. Ops without a rule (activations,
norms, pooling, adds) count as zero MACs, as is conventional.

    >>> count_macs(gm).macs        # gm with tensor_meta on its nodes (graph.shapes.record_shapes)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
import torch.fx as fx
import torch.nn as nn

from .. import ops  # noqa: F401  (registers every op family's rules)
from ..ops.registry import MACS
from .tracing import node_shape


class MacView:
    """What a MACs rule sees of one node. `shape_of(value)` gives an fx node's output shape (None if it is
    not a tensor), `param_shape(tensor)` a parameter's shape: by default the recorded and actual ones."""

    def __init__(self, node: fx.Node, module: Optional[nn.Module] = None,
                 shape_of: Callable[[fx.Node], Optional[tuple]] = node_shape,
                 param_shape: Callable[[torch.Tensor], tuple] = lambda t: tuple(t.shape)):
        self.node, self.module = node, module
        self._shape_of, self._param_shape = shape_of, param_shape

    def raw(self, i: int, name: Optional[str] = None, default=None):
        if i < len(self.node.args):
            return self.node.args[i]
        return self.node.kwargs.get(name, default) if name else default

    def out(self) -> Optional[tuple]:
        return self._shape_of(self.node)

    def arg(self, i: int, name: Optional[str] = None) -> Optional[tuple]:
        value = self.raw(i, name)
        return self._shape_of(value) if isinstance(value, fx.Node) else None

    def param(self, attr: str) -> tuple:
        t = self.module
        for part in attr.split("."):
            t = getattr(t, part)
        return self._param_shape(t)


@dataclass
class FlopsResult:
    macs: int
    params: int
    per_node: Dict[str, int] = field(default_factory=dict)

    def to_dict(self):
        return {"macs": self.macs, "params": self.params}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def node_macs(gm: fx.GraphModule, shape_of=node_shape, param_shape=None) -> Dict[str, int]:
    """MACs of every node that has a rule, for the whole example batch (batch-1 inputs: per-image MACs)."""
    modules = dict(gm.named_modules())
    extra = {} if param_shape is None else {"param_shape": param_shape}
    per_node = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        module = modules[node.target] if node.op == "call_module" else None
        rule = MACS.lookup(node, module)
        if rule is not None:
            per_node[node.name] = int(rule(MacView(node, module, shape_of, **extra)))
    return per_node


def count_macs(gm: fx.GraphModule) -> FlopsResult:
    """MACs and parameters of a shape-annotated graph."""
    per_node = node_macs(gm)
    return FlopsResult(sum(per_node.values()), count_params(gm), per_node)

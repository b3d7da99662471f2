"""The graph torch's TorchScript exporter is given: a copy of the model's graph in which the ops it cannot
export as traced are rewritten by their family's `ExportRule` (fxcompress/ops/registry.py; `Tensor.unfold`
and `F.fold` in ops/reshape.py, adaptive pools in ops/pooling.py). The exporter reads sizes from its own
shape inference, which loses them behind a Pad or a reshape with computed sizes; the rewrites read them from
shapes recorded on the example inputs instead, which is sound because only the batch dim is dynamic in the
file. The model itself is never changed, and ExportONNX compares the file with it in onnxruntime."""
from __future__ import annotations

import copy
from typing import Optional, Sequence, Tuple

import torch
import torch.fx as fx

from ..graph.shapes import record_shapes
from ..ops.registry import EXPORT


def _rules(gm: fx.GraphModule):
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        rule = EXPORT.lookup(node, module)
        if rule is not None:
            yield node, module, rule


def exportable(module: torch.nn.Module,
               example_inputs: Sequence[torch.Tensor]) -> Tuple[torch.nn.Module, Optional[int]]:
    """(the module to export, the lowest opset holding its ops or None): `module` itself unless an op of
    its graph has an export rule that rewrites it."""
    if not isinstance(module, fx.GraphModule):
        return module, None
    found = list(_rules(module))
    opset = max((r.min_opset for _, _, r in found if r.min_opset), default=None)
    if not any(r.rewrite for _, _, r in found):
        return module, opset
    gm = fx.GraphModule(module, copy.deepcopy(module.graph), class_name=type(module).__name__)
    record_shapes(gm, example_inputs)
    changed = False
    for node, sub, rule in list(_rules(gm)):
        if rule.rewrite is None:
            continue
        with gm.graph.inserting_before(node):
            new = rule.rewrite(gm, node, sub)
        if new is not None:
            # the same values: rules rewriting later nodes read this output's recorded shape
            new.meta.update({k: node.meta[k] for k in ("tensor_meta", "type") if k in node.meta})
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            changed = True
    if not changed:
        return module, opset
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm.eval(), opset

"""The layers a latency model times one by one: every nn.Conv1d/2d and 2-D nn.Linear of a traced graph, with
the geometry that fixes its cost and the two channel dimensions a pruning plan can shrink.

A layer's widths under a plan are read from the channel groups (`DimWidths`): its output width from its
weight's output axis, its input width from its input's channel axis (the axis the groups couple to the
weight's input columns, and the one a depthwise conv's groups follow).

    layers = find_layers(gm, groups_result)      # gm with recorded shapes
    widths = DimWidths(groups_result)
    widths.width(layers[0].out_dim, {gid: keep_mask, ...})
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch.fx as fx
import torch.nn as nn

from ..graph.keys import ValueKey
from ..graph.tracing import node_shape
from ..prune.groups import ChannelGroupsResult, Dim
from ..prune.state import tensor_names


@dataclass(frozen=True)
class LayerSpec:
    """What fixes one layer's cost, batch aside: kind ("conv" | "linear"), widths, kernel geometry and the
    input's spatial size (empty for linear layers)."""
    kind: str
    cin: int
    cout: int
    kernel: Tuple[int, ...] = ()
    stride: Tuple[int, ...] = ()
    padding: Tuple[int, ...] = ()
    dilation: Tuple[int, ...] = ()
    groups: int = 1
    spatial: Tuple[int, ...] = ()
    bias: bool = True

    @property
    def depthwise(self) -> bool:
        """Each input channel its own group: pruning shrinks `groups` with the channels."""
        return self.kind == "conv" and self.groups > 1 and self.groups == self.cin

    def at(self, cin: int, cout: int) -> "LayerSpec":
        """The same layer with other widths (a depthwise conv keeps one group per input channel)."""
        return replace(self, cin=cin, cout=cout, groups=cin if self.depthwise else self.groups)

    def geometry_key(self) -> str:
        """Everything but the widths, as a file-name-safe string (the widths index entries inside)."""
        def join(t):
            return "x".join(map(str, t)) or "-"
        mult = self.cout // self.cin if self.depthwise else 0
        return (f"{self.kind}_in{self.cin}_out{self.cout}_k{join(self.kernel)}_s{join(self.stride)}"
                f"_p{join(self.padding)}"
                f"_d{join(self.dilation)}_g{'dw' + str(mult) if self.depthwise else self.groups}"
                f"_hw{join(self.spatial)}_b{int(self.bias)}")


@dataclass(frozen=True)
class Layer:
    """One timed layer of a graph: its fx node, module name, spec at full width and prunable dims."""
    node: str
    module: str
    spec: LayerSpec
    in_dim: Dim
    out_dim: Dim


SUPPORTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _spec(module: nn.Module, in_shape: tuple) -> Optional[LayerSpec]:
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if isinstance(module.padding, str) or module.padding_mode != "zeros" or in_shape is None:
            return None   # 'same'/'valid' strings and non-zero padding modes export otherwise
        return LayerSpec("conv", module.in_channels, module.out_channels, tuple(module.kernel_size),
                         tuple(module.stride), tuple(module.padding), tuple(module.dilation), module.groups,
                         tuple(in_shape[2:]), module.bias is not None)
    if isinstance(module, nn.Linear) and in_shape is not None and len(in_shape) == 2:
        return LayerSpec("linear", module.in_features, module.out_features, bias=module.bias is not None)
    return None   # N-D linears lower otherwise (quant/lower_linear.py): left to the remainder


def find_layers(gm: fx.GraphModule, result: ChannelGroupsResult) -> Tuple[List[Layer], List[str]]:
    """(the layers a table can time, the names of conv/linear-like modules left to the remainder)."""
    modules = dict(gm.named_modules())
    names = tensor_names(modules)
    layers, skipped = [], []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], (SUPPORTED, nn.modules.conv._ConvNd)):
            continue
        module = modules[node.target]
        x = node.args[0] if node.args else None
        in_shape = node_shape(x) if isinstance(x, fx.Node) else None
        spec = _spec(module, in_shape) if isinstance(module, SUPPORTED) else None
        weight = ValueKey.of_param(names.get(id(module.weight), f"{node.target}.weight"))
        in_dim = (ValueKey.of_node(x.name), 1) if spec is not None and spec.kind == "conv" else (weight, 1)
        if spec is None or weight not in result.shapes or in_dim[0] not in result.shapes:
            skipped.append(node.target)
            continue
        layers.append(Layer(node.name, node.target, spec, in_dim, (weight, 0)))
    return layers, skipped


class DimWidths:
    """The size a tracked dimension keeps under a plan: its size less the positions whose unit a group
    removes (a dim may span several groups: a conv reading a concatenation).

        widths = DimWidths(result)
        widths.width((key, 1), {gid: keep_mask})     # keep_mask: boolean over the group's units
    """

    def __init__(self, result: ChannelGroupsResult):
        self.result = result
        self.members: Dict[Dim, List[Tuple[int, np.ndarray]]] = {}
        for g in result.groups:
            if g.prunable:
                for m in g.members:
                    self.members.setdefault((m.key, m.dim % len(result.shapes[m.key])), []).append((g.id, m.units))

    def size(self, dim: Dim) -> int:
        key, d = dim
        return int(self.result.shapes[key][d])

    def groups_of(self, dim: Dim) -> List[int]:
        return [gid for gid, _ in self.members.get(dim, ())]

    def width(self, dim: Dim, keep: Mapping[int, np.ndarray]) -> int:
        removed = 0
        for gid, units in self.members.get(dim, ()):
            mask = keep.get(gid)
            if mask is not None:
                removed += int(units.size - mask[units].sum())
        return self.size(dim) - removed

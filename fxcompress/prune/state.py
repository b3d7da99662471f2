"""A pruning plan and what it implies: which positions of which tensors stay (`keep_masks`), and the shapes
every tracked tensor will have (`PruneState`, what resize rules and MACs predictions read).

A plan maps a group id to the unit indices it keeps; groups left out keep everything.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.fx as fx

from ..core.errors import PassError
from ..graph.keys import ValueKey, output_keys
from .groups import ChannelGroupsResult, Dim

Plan = Mapping[int, Sequence[int]]


def normalize_plan(result: ChannelGroupsResult, plan: Mapping) -> Dict[int, np.ndarray]:
    """Check a plan and return {group id: sorted kept unit indices}; PassError names the bad entry."""
    out = {}
    for gid, kept in plan.items():
        gid = getattr(gid, "id", gid)
        if not isinstance(gid, (int, np.integer)) or not 0 <= gid < len(result.groups):
            raise PassError(f"plan names group {gid!r}, but the graph has groups 0..{len(result.groups) - 1}")
        group = result.groups[gid]
        kept = np.unique(np.asarray(list(kept), dtype=np.int64))
        if len(kept) == group.size:
            continue
        if not group.prunable:
            raise PassError(f"plan prunes group {gid}, which is fixed ({'; '.join(group.reasons[:2])}); "
                            f"leave it out of the plan")
        if len(kept) == 0:
            raise PassError(f"plan keeps no unit of group {gid} ({group.describe()}); keep at least one")
        if kept.min() < 0 or kept.max() >= group.size:
            raise PassError(f"plan keeps unit {kept.max()} of group {gid}, which has units 0..{group.size - 1}")
        out[int(gid)] = kept
    return out


def keep_masks(result: ChannelGroupsResult, plan: Dict[int, np.ndarray]) -> Dict[Dim, np.ndarray]:
    """(key, dim) -> boolean mask of the positions that stay."""
    masks: Dict[Dim, np.ndarray] = {}
    for gid, kept in plan.items():
        for m in result.groups[gid].members:
            mask = masks.setdefault((m.key, m.dim), np.ones(result.shapes[m.key][m.dim], dtype=bool))
            mask[m.positions[~np.isin(m.units, kept)]] = False
    return masks


class PruneState:
    """Old shapes, keep masks and the new shapes they imply, looked up by fx node or parameter name.

        s = PruneState(result, keep_masks(result, plan))
        s.node_shape(node)        # the shape the node's output will have after pruning
    """

    def __init__(self, result: ChannelGroupsResult, masks: Dict[Dim, np.ndarray]):
        self.result, self.masks = result, masks

    def mask(self, key: ValueKey, dim: int) -> Optional[np.ndarray]:
        return self.masks.get((key, dim % len(self.result.shapes[key])))

    def new_shape(self, key: ValueKey) -> tuple:
        old = self.result.shapes[key]
        return tuple(int(self.masks[(key, d)].sum()) if (key, d) in self.masks else s for d, s in enumerate(old))

    # ---- by node (what op rules use)
    def old_shape(self, node, i: Optional[int] = None) -> Optional[tuple]:
        """The shape when the groups were built (None for untracked values)."""
        return self.result.shapes.get(ValueKey.of_node(node.name, i)) if isinstance(node, fx.Node) else None

    def node_shape(self, node, i: Optional[int] = None) -> Optional[tuple]:
        """The shape after pruning (None for untracked values)."""
        if not isinstance(node, fx.Node):
            return None
        key = ValueKey.of_node(node.name, i)
        return self.new_shape(key) if key in self.result.shapes else None

    def node_mask(self, node, dim: int, i: Optional[int] = None) -> Optional[np.ndarray]:
        key = ValueKey.of_node(node.name, i)
        return self.mask(key, dim) if key in self.result.shapes else None

    def changed(self, node, i: Optional[int] = None) -> bool:
        key = ValueKey.of_node(node.name, i)
        return any((key, d) in self.masks for d in range(len(self.result.shapes.get(key, ()))))

    def kept_count(self, node, dim: int, start: int, stop: int) -> int:
        m = self.node_mask(node, dim)
        return stop - start if m is None else int(m[start:stop].sum())

    def n_outputs(self, node) -> int:
        return len(output_keys(node))

    # ---- by parameter
    def param_mask(self, qualname: str, dim: int) -> Optional[np.ndarray]:
        key = ValueKey.of_param(qualname)
        return self.mask(key, dim) if key in self.result.shapes else None

    def param_shape(self, qualname: str, actual: Sequence[int]) -> tuple:
        key = ValueKey.of_param(qualname)
        return self.new_shape(key) if key in self.result.shapes else tuple(actual)


def tensor_names(modules: Dict[str, torch.nn.Module]) -> Dict[int, str]:
    """id(tensor) -> the qualified name the channel analysis knows it by (its first name), from
    `dict(gm.named_modules())` (one walk: named_parameters() walks once per call)."""
    names: Dict[int, str] = {}
    for prefix, module in modules.items():
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is not None:
                    names.setdefault(id(t), f"{prefix}.{name}" if prefix else name)
    return names

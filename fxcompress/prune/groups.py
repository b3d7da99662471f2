"""Channel groups: what the channel analysis finds and a pruner ranks and cuts (data only; built by
`fxcompress.prune.builder` from the couplings that the op rules in `fxcompress.ops` declare).

A group's *units* are the channels that must go together (one channel of a conv, the same channel of its
BatchNorm, of every residual-add partner, of every consumer's input columns...). Each `Member` is one
dimension of one tensor (a node output or a parameter, named by a `ValueKey`) and says which of its
positions belong to which unit. A group is prunable unless some member dimension is blocked, and then
`reasons` says why (model input/output, an op the analysis does not understand, a LayerNorm...).

The dimension-level dependency graph (networkx) is kept for inspection: vertices are `(key, dim)`, edges
"these dimensions keep the same channels", with the coupling kind (same, cat, split, fold, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Dict, List, Optional, Tuple

import networkx as nx
import numpy as np

from ..graph.keys import ValueKey

Dim = Tuple[ValueKey, int]

# a parameter member either makes its channels (conv output rows, biases, norm affines) or only reads them
# (a consumer's input columns): zeroing the producers of a unit silences it
PRODUCER, CONSUMER = "producer", "consumer"


@dataclass(slots=True)
class Member:
    """One dimension of a group: positions[i] of dimension `dim` of `key` belongs to unit units[i]."""
    key: ValueKey
    dim: int
    positions: np.ndarray
    units: np.ndarray
    role: Optional[str] = None   # for parameters: PRODUCER (its slice makes the channel) or CONSUMER

    @property
    def is_param(self) -> bool:
        return self.key.is_param

    @property
    def name(self) -> str:
        return self.key.name


@dataclass
class ChannelGroup:
    id: int
    size: int                     # number of units (what a plan keeps or removes)
    members: List[Member]
    prunable: bool
    reasons: List[str] = field(default_factory=list)
    macs_per_unit: float = 0.0
    params_per_unit: float = 0.0

    def param_members(self) -> List[Member]:
        return [m for m in self.members if m.is_param]

    def modules(self) -> List[str]:
        return sorted({m.name.rsplit(".", 1)[0] for m in self.param_members()})

    def describe(self) -> str:
        params = ", ".join(f"{m.name}[{m.dim}]" for m in self.param_members()[:4])
        more = "" if len(self.param_members()) <= 4 else f", +{len(self.param_members()) - 4}"
        state = "prunable" if self.prunable else "fixed: " + "; ".join(self.reasons[:2])
        return f"group {self.id}: {self.size} units, {params}{more} ({state})"


@dataclass
class ChannelGroupsResult:
    groups: List[ChannelGroup]
    dims: List[Tuple[Dim, int]]           # every dimension and its size
    dim_edges: List[Tuple[Dim, Dim, str]]  # couplings between dimensions, with their kind
    shapes: Dict[ValueKey, tuple]         # every tracked tensor's shape when the groups were built
    roles: Dict[Dim, str]

    @cached_property
    def graph(self) -> nx.Graph:
        """The dimension-level dependency graph (built on first use: the groups do not need it)."""
        graph = nx.Graph()
        graph.add_nodes_from((dim, {"size": size}) for dim, size in self.dims)
        graph.add_edges_from((a, b, {"kind": kind}) for a, b, kind in self.dim_edges)
        return graph

    def prunable(self) -> List[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def with_fixed(self, fixed: Dict[int, str]) -> "ChannelGroupsResult":
        """A copy in which the groups named in `fixed` (id -> reason) are no longer prunable."""
        groups = [replace(g, prunable=False, reasons=[fixed[g.id]]) if g.id in fixed else g for g in self.groups]
        return replace(self, groups=groups)

    def n_edges(self) -> int:
        """Distinct couplings between two different dimensions, either way round (each pair as a sorted
        tuple: a third cheaper than a frozenset of the two)."""
        return len({(a, b) if a < b else (b, a) for a, b, _ in self.dim_edges if a != b})

    def largest_fixed(self, top: int = 5) -> List[str]:
        """The fixed groups holding the most parameters, each with the first thing that fixes it: what a user
        whose model barely pruned reads first."""
        fixed = sorted((g for g in self.groups if not g.prunable and g.params_per_unit > 0),
                       key=lambda g: -g.params_per_unit * g.size)
        return [f"{g.size} channels of {', '.join(g.modules()[:2]) or 'no module'} "
                f"({g.params_per_unit * g.size / 1e6:.2f}M parameters): {g.reasons[0] if g.reasons else '?'}"
                for g in fixed[:top]]

    def summary(self) -> dict:
        fixed: Dict[str, int] = {}
        for g in self.groups:
            if not g.prunable:
                for r in g.reasons[:1]:
                    fixed[r] = fixed.get(r, 0) + 1
        return {"groups": len(self.groups), "prunable_groups": len(self.prunable()),
                "prunable_units": int(sum(g.size for g in self.prunable())),
                "dims": len(self.dims), "edges": self.n_edges(),
                "fixed_reasons": dict(sorted(fixed.items(), key=lambda kv: -kv[1])[:8])}



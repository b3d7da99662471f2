"""The channel-dependency graph: which channels of which tensors and parameters must be removed together.

Vertices of the networkx graph are *dimensions*: `(vertex key, dim)` where the key names a node's output
tensor (`n:<node>` or `n:<node>#i` for the i-th tensor of a tuple) or a parameter/buffer (`p:<qualname>`).
Edges say "these dimensions keep the same channels" and carry an index mapping (identity, offsets through
`cat`/`split`/slicing, folds through `view`/`flatten`). Underneath, every position of every dimension
gets an integer id and each edge unions ids position by position, so the connected components of the
position graph are the *units* that must go together (one channel of a conv, plus the same channel of
its BatchNorm, of every add partner, of every consumer's input columns...). Units touching the same set
of dimensions form a `ChannelGroup`: what a pruner ranks and cuts.

Op knowledge lives in `fxcompress.channel_rules` (one rule per module type, function or method). A
dimension that a rule does not explicitly carry is *blocked*: its units may never be removed, and the
group records why (model input/output, an op the analysis does not understand, a LayerNorm...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import networkx as nx
import numpy as np
import torch
import torch.fx as fx
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

Dim = Tuple[str, int]

PRODUCER, CONSUMER = "producer", "consumer"


@dataclass
class Member:
    """One dimension of a group: positions[i] of dimension `dim` of `key` belongs to unit units[i]."""
    key: str
    dim: int
    positions: np.ndarray
    units: np.ndarray
    role: Optional[str] = None   # for parameters: PRODUCER (its slice makes the channel) or CONSUMER

    @property
    def is_param(self) -> bool:
        return self.key.startswith("p:")

    @property
    def name(self) -> str:
        return self.key[2:]


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
    graph: nx.Graph               # dimension-level dependency graph
    shapes: Dict[str, tuple]      # vertex key -> shape when the groups were built
    roles: Dict[Dim, str]

    def prunable(self) -> List[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def by_id(self, gid: int) -> ChannelGroup:
        return self.groups[gid]

    def summary(self) -> dict:
        fixed: Dict[str, int] = {}
        for g in self.groups:
            if not g.prunable:
                for r in g.reasons[:1]:
                    fixed[r] = fixed.get(r, 0) + 1
        return {"groups": len(self.groups), "prunable_groups": len(self.prunable()),
                "prunable_units": int(sum(g.size for g in self.prunable())),
                "dims": self.graph.number_of_nodes(), "edges": self.graph.number_of_edges(),
                "fixed_reasons": dict(sorted(fixed.items(), key=lambda kv: -kv[1])[:8])}


def record_shapes(gm: fx.GraphModule, example_inputs) -> None:
    """Record `tensor_meta` on every node without computing anything: the graph runs on fake tensors
    (shapes only), much faster than a real forward pass at full resolution. Falls back to a real run
    for ops fake tensors do not support."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.shape_prop import ShapeProp

    from .tracing import propagate_shapes
    was_training = gm.training
    gm.eval()
    try:
        prop = ShapeProp(gm)
        # the real parameters take part as they are (no fake copy of the module): only inputs are fake
        prop.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        with torch.no_grad():
            prop.propagate(*example_inputs)
    except Exception:
        propagate_shapes(gm, example_inputs)
    finally:
        gm.train(was_training)


def tensor_metas(node: fx.Node) -> Dict[str, tuple]:
    """Vertex key -> shape for each tensor a node produces (a tuple output gives one key per item)."""
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return {}
    if hasattr(meta, "shape"):
        return {f"n:{node.name}": tuple(meta.shape)}
    if isinstance(meta, (tuple, list)):
        return {f"n:{node.name}#{i}": tuple(m.shape) for i, m in enumerate(meta) if hasattr(m, "shape")}
    return {}


class ChannelGraphBuilder:
    """Collects couplings from the rules and turns them into groups. See the module docstring."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.tensor_names: Dict[int, str] = {}
        for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
            self.tensor_names.setdefault(id(t), name)
        self.shapes: Dict[str, tuple] = {}
        self.base: Dict[str, List[int]] = {}
        self.n_ids = 0
        self.edge_a: List[np.ndarray] = []
        self.edge_b: List[np.ndarray] = []
        self.blocked: List[Tuple[np.ndarray, int]] = []
        self.reasons: List[str] = []
        self.reason_index: Dict[str, int] = {}
        self.graph = nx.Graph()
        self.touched: set = set()
        self.roles: Dict[Dim, str] = {}
        self.node_of_key: Dict[str, fx.Node] = {}
        self.param_users: Dict[str, List[fx.Node]] = {}
        self.attr_of: Dict[str, str] = {}   # get_attr node vertex -> parameter vertex

    # ---- vertices ---------------------------------------------------------------------------------
    def add_vertex(self, key: str, shape: Sequence[int]) -> str:
        if key not in self.base:
            shape = tuple(int(s) for s in shape)
            self.shapes[key] = shape
            bases = []
            for d, s in enumerate(shape):
                bases.append(self.n_ids)
                self.n_ids += s
                self.graph.add_node((key, d), size=s)
            self.base[key] = bases
        return key

    def param_key(self, tensor: torch.Tensor) -> Optional[str]:
        name = self.tensor_names.get(id(tensor))
        if name is None:
            return None
        return self.add_vertex(f"p:{name}", tensor.shape)

    def ids(self, key: str, dim: int, positions=None) -> np.ndarray:
        base = self.base[key][dim]
        if positions is None:
            return np.arange(base, base + self.shapes[key][dim])
        return base + np.asarray(positions, dtype=np.int64)

    # ---- couplings ------------------------------------------------------------------------------
    def couple(self, a: str, da: int, b: str, db: int, pa=None, pb=None, kind: str = "same") -> None:
        ia, ib = self.ids(a, da, pa), self.ids(b, db, pb)
        if len(ia) != len(ib):
            raise ValueError(f"coupling {a}[{da}] ({len(ia)}) with {b}[{db}] ({len(ib)}): lengths differ")
        self.edge_a.append(ia)
        self.edge_b.append(ib)
        self.touched.add((a, da))
        self.touched.add((b, db))
        if (a, da) != (b, db):
            self.graph.add_edge((a, da), (b, db), kind=kind)

    def block(self, key: str, dim: int, reason: str, positions=None) -> None:
        idx = self.reason_index.setdefault(reason, len(self.reasons))
        if idx == len(self.reasons):
            self.reasons.append(reason)
        self.blocked.append((self.ids(key, dim, positions), idx))
        self.touched.add((key, dim))

    def block_all(self, key: str, reason: str) -> None:
        for d in range(len(self.shapes[key])):
            self.block(key, d, reason)

    # ---- groups ---------------------------------------------------------------------------------
    def build_groups(self, node_macs: Dict[str, int]) -> ChannelGroupsResult:
        n = self.n_ids
        if self.edge_a:
            a, b = np.concatenate(self.edge_a), np.concatenate(self.edge_b)
        else:
            a = b = np.zeros(0, dtype=np.int64)
        adj = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
        _, label = connected_components(adj, directed=False)
        # first blocking reason of every component
        comp_reason = np.full(label.max() + 1 if n else 0, -1, dtype=np.int64)
        for ids, r in self.blocked:
            comps = label[ids]
            free = comp_reason[comps] < 0
            comp_reason[comps[free]] = r
        # which vertex-dimension each id belongs to
        dims = [(k, d) for k, bases in self.base.items() for d in range(len(bases))]
        starts = np.array([self.base[k][d] for k, d in dims], dtype=np.int64)
        sizes = np.array([self.shapes[k][d] for k, d in dims], dtype=np.int64)
        keep = sizes > 0
        dims = [x for x, k in zip(dims, keep) if k]
        starts, sizes = starts[keep], sizes[keep]
        dim_of_id = np.repeat(np.arange(len(dims)), sizes)
        pos_of_id = np.arange(n) - np.repeat(starts, sizes)
        is_param = np.array([k.startswith("p:") for k, _ in dims], dtype=bool)
        # a group is the set of components that touch exactly the same dimensions (and share a fate):
        # hash each component's set of dimensions by summing one random 63-bit code per dimension
        comp_has_param = np.zeros(len(comp_reason), dtype=bool)
        comp_has_param[label[is_param[dim_of_id]]] = True
        ids = np.nonzero(comp_has_param[label])[0]
        n_dims = max(len(dims), 1)
        pair_keys = np.unique(label[ids].astype(np.int64) * n_dims + dim_of_id[ids])
        pairs = np.stack([pair_keys // n_dims, pair_keys % n_dims], 1)
        codes = np.random.default_rng(0).integers(1, 2 ** 62, size=len(dims), dtype=np.int64)
        comp_sig = np.zeros(len(comp_reason), dtype=np.int64)
        np.add.at(comp_sig, pairs[:, 0], codes[pairs[:, 1]])
        comps = np.unique(pairs[:, 0])
        keys = np.stack([comp_sig[comps], (comp_reason[comps] >= 0).astype(np.int64)], 1)
        sig_keys, group_of = np.unique(keys, axis=0, return_inverse=True)
        group_of = group_of.reshape(-1)
        # unit index of each component inside its group, in order of first appearance
        order = np.argsort(group_of, kind="stable")
        unit_of = np.empty(len(comps), dtype=np.int64)
        counts = np.bincount(group_of, minlength=len(sig_keys))
        unit_of[order] = np.arange(len(comps)) - np.repeat(np.cumsum(counts) - counts, counts)
        comp_index = np.full(len(comp_reason), -1, dtype=np.int64)
        comp_index[comps] = np.arange(len(comps))
        ci = comp_index[label[ids]]
        g_id, u_id, d_id, p_id = group_of[ci], unit_of[ci], dim_of_id[ids], pos_of_id[ids]
        order = np.lexsort((p_id, d_id, g_id))
        g_id, u_id, d_id, p_id = g_id[order], u_id[order], d_id[order], p_id[order]
        change = np.nonzero((np.diff(g_id) != 0) | (np.diff(d_id) != 0))[0] + 1
        starts_m = np.concatenate([[0], change]) if len(g_id) else np.zeros(0, dtype=np.int64)
        ends_m = np.concatenate([change, [len(g_id)]]) if len(g_id) else np.zeros(0, dtype=np.int64)
        members_of: Dict[int, List[Member]] = {}
        for s, e in zip(starts_m, ends_m):
            key, dim = dims[d_id[s]]
            # parameters make their channel unless a rule says they only read it (input columns)
            role = self.roles.get((key, dim), PRODUCER) if key.startswith("p:") else None
            members_of.setdefault(int(g_id[s]), []).append(Member(key, dim, p_id[s:e], u_id[s:e], role))
        reasons_of: Dict[int, set] = {}
        blocked = comp_reason[comps] >= 0
        for g, r in np.unique(np.stack([group_of[blocked], comp_reason[comps][blocked]], 1), axis=0):
            reasons_of.setdefault(int(g), set()).add(self.reasons[r])
        groups: List[ChannelGroup] = []
        for g in range(len(sig_keys)):
            blocked = bool(sig_keys[g, 1])
            group = ChannelGroup(len(groups), int(counts[g]), members_of.get(g, []), not blocked,
                                 sorted(reasons_of.get(g, ())) if blocked else [])
            if blocked and not group.reasons:
                group.reasons = ["coupled to a fixed dimension"]
            self._weigh(group, node_macs)
            groups.append(group)
        return ChannelGroupsResult(groups, self.graph, dict(self.shapes), dict(self.roles))

    def _weigh(self, group: ChannelGroup, node_macs: Dict[str, int]) -> None:
        """MACs and parameters that one unit of the group carries (its share of every member)."""
        macs = params = 0.0
        for m in group.param_members():
            size = self.shapes[m.key][m.dim]
            frac = len(m.positions) / max(size, 1) / max(group.size, 1)
            params += math.prod(self.shapes[m.key]) * frac
            macs += sum(node_macs.get(n.name, 0) for n in self.param_users.get(m.key, ())) * frac
        group.macs_per_unit, group.params_per_unit = macs, params

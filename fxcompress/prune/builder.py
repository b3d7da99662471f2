"""Building channel groups from couplings (see `fxcompress.prune.groups` for what a group is).

The op rules (`fxcompress.ops`, driven by `fxcompress.prune.coupling`) declare couplings between
dimensions of tensors: "position i of this dim goes with position j of that one" (identity, offsets
through cat/split/slicing, folds through view/flatten). Every position of every dimension gets an integer
id and each coupling unions ids position by position, so the connected components are the units that
must go together. Dimensions coupled whole (position i to position i: most couplings) are merged first
and share one id range, which keeps the position graph a fraction of the model's total channel count.
Units touching the same set of dimensions, and sharing a fate (blocked or not), form a group.
"""
from __future__ import annotations

import contextlib
import gc
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx as fx
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..graph.keys import ValueKey
from .groups import PRODUCER, ChannelGroup, ChannelGroupsResult, Dim, Member
from .state import tensor_names


@contextlib.contextmanager
def paused_gc():
    """Building groups allocates tens of thousands of small objects (keys, members); each automatic
    collection during the build scans the whole heap, model included (densenet121: 15% of the time).
    Nothing here makes reference cycles, so collection waits until the build is done."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ChannelGraphBuilder:
    """Collects couplings from the rules and turns them into groups. See the module docstring."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.tensor_names = tensor_names(self.modules)
        self.shapes: Dict[ValueKey, tuple] = {}
        self.base: Dict[ValueKey, List[int]] = {}  # vertex key -> index of each of its dimensions
        self.dim_keys: List[Dim] = []
        self.dim_sizes: List[int] = []
        self.dim_is_param: List[bool] = []
        self.whole_a: List[int] = []                # dimensions coupled whole (identity on positions)
        self.whole_b: List[int] = []
        self.mapped: List[tuple] = []               # (dim a, positions a, dim b, positions b)
        self.blocked: List[tuple] = []              # (dim, positions or None for all, reason index)
        self.reasons: List[str] = []
        self.reason_index: Dict[str, int] = {}
        self.dim_edges: List[Tuple[Dim, Dim, str]] = []
        self.roles: Dict[Dim, str] = {}
        self.param_users: Dict[ValueKey, List[fx.Node]] = {}
        self.attr_of: Dict[ValueKey, ValueKey] = {}   # get_attr node vertex -> parameter vertex
        # key objects made once and reused: a str builds its hash once, on its first lookup
        self.node_key: Dict[fx.Node, ValueKey] = {}   # node -> vertex of its output (single tensors)
        self.param_keys: Dict[int, ValueKey] = {}     # id(tensor) -> its vertex key

    # ---- vertices ---------------------------------------------------------------------------------
    def add_vertex(self, key: ValueKey, shape: Sequence[int]) -> ValueKey:
        if key not in self.base:
            shape = tuple(int(s) for s in shape)
            self.shapes[key] = shape
            dims = []
            for d, s in enumerate(shape):
                dims.append(len(self.dim_sizes))
                self.dim_keys.append((key, d))
                self.dim_sizes.append(s)
            self.dim_is_param.extend([key.is_param] * len(shape))
            self.base[key] = dims
        return key

    def param_key(self, tensor: torch.Tensor) -> Optional[ValueKey]:
        key = self.param_keys.get(id(tensor))
        if key is None:
            name = self.tensor_names.get(id(tensor))   # the model's tensors: alive, so their ids are theirs
            if name is None:
                return None
            key = self.param_keys[id(tensor)] = ValueKey.of_param(name)
        return self.add_vertex(key, tensor.shape)

    # ---- couplings ------------------------------------------------------------------------------
    def couple_whole(self, a: ValueKey, da: int, b: ValueKey, db: int, kind: str = "same") -> None:
        """Position i of a[da] goes with position i of b[db] (equal sizes, checked by the caller)."""
        self.whole_a.append(self.base[a][da])
        self.whole_b.append(self.base[b][db])
        if a != b or da != db:
            self.dim_edges.append(((a, da), (b, db), kind))

    def couple(self, a: ValueKey, da: int, b: ValueKey, db: int, pa=None, pb=None, kind: str = "same") -> None:
        pa = None if pa is None else np.asarray(pa, dtype=np.int64)
        pb = None if pb is None else np.asarray(pb, dtype=np.int64)
        na = self.shapes[a][da] if pa is None else len(pa)
        nb = self.shapes[b][db] if pb is None else len(pb)
        if na != nb:
            raise ValueError(f"coupling {a}[{da}] ({na}) with {b}[{db}] ({nb}): lengths differ")
        if pa is None and pb is None:
            self.couple_whole(a, da, b, db, kind)
            return
        self.mapped.append((self.base[a][da], pa, self.base[b][db], pb))
        if (a, da) != (b, db):
            self.dim_edges.append(((a, da), (b, db), kind))

    def block(self, key: ValueKey, dim: int, reason: str, positions=None) -> None:
        idx = self.reason_index.setdefault(reason, len(self.reasons))
        if idx == len(self.reasons):
            self.reasons.append(reason)
        positions = None if positions is None else np.asarray(positions, dtype=np.int64)
        self.blocked.append((self.base[key][dim], positions, idx))

    def block_all(self, key: ValueKey, reason: str) -> None:
        for d in range(len(self.shapes[key])):
            self.block(key, d, reason)

    # ---- groups ---------------------------------------------------------------------------------
    def build_groups(self, node_macs: Dict[str, int]) -> ChannelGroupsResult:
        classes = self._dimension_classes()
        label, comp_reason = self._units(classes)
        comps, group_of, group_blocked, unit_of, ids = self._group_units(classes, label, comp_reason)
        counts = np.bincount(group_of, minlength=len(group_blocked))
        members_of, macs, params = self._members(classes, label, comps, group_of, unit_of, ids, counts, node_macs)
        reasons_of: Dict[int, set] = {}
        blocked = comp_reason[comps] >= 0
        for g, r in set(zip(group_of[blocked].tolist(), comp_reason[comps][blocked].tolist())):
            reasons_of.setdefault(g, set()).add(self.reasons[r])
        groups: List[ChannelGroup] = []
        for g in range(len(group_blocked)):
            fixed = bool(group_blocked[g])
            group = ChannelGroup(g, int(counts[g]), members_of.get(g, []), not fixed,
                                 sorted(reasons_of.get(g, ())) if fixed else [], macs[g], params[g])
            if fixed and not group.reasons:
                group.reasons = ["coupled to a fixed dimension"]
            groups.append(group)
        return ChannelGroupsResult(groups, list(zip(self.dim_keys, self.dim_sizes)), self.dim_edges, dict(self.shapes),
                                   dict(self.roles))

    def _dimension_classes(self) -> "_Classes":
        """Dimensions coupled whole (position i to position i) form classes; each class gets one id range."""
        n_dims = len(self.dim_sizes)
        if self.whole_a:
            ones = np.ones(len(self.whole_a), dtype=np.int8)
            _, cls = connected_components(coo_matrix((ones, (self.whole_a, self.whole_b)), shape=(n_dims, n_dims)),
                                          directed=False)
        else:
            cls = np.arange(n_dims)
        n_cls = int(cls.max()) + 1 if n_dims else 0
        size = np.zeros(n_cls, dtype=np.int64)
        size[cls] = self.dim_sizes
        start = np.concatenate([[0], np.cumsum(size)[:-1]]) if n_cls else size
        return _Classes(cls, size, start, np.array(self.dim_sizes, dtype=np.int64))

    def _units(self, classes: "_Classes") -> tuple:
        """Union the ids position by position along the mapped couplings: the components are the units.
        Returns (component of each id, first blocking reason of each component or -1)."""
        n = classes.n_ids
        if self.mapped:
            a, _ = classes.ids_of([(da, pa) for da, pa, _, _ in self.mapped])
            b, _ = classes.ids_of([(db, pb) for _, _, db, pb in self.mapped])
            adj = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
            _, label = connected_components(adj, directed=False)
        else:
            label = np.arange(n)
        comp_reason = np.full(label.max() + 1 if n else 0, -1, dtype=np.int64)
        if self.blocked:
            blocked_ids, lengths = classes.ids_of([(dim, positions) for dim, positions, _ in self.blocked])
            blocked_comps = label[blocked_ids]
            reasons = np.repeat([r for _, _, r in self.blocked], lengths)
            comps, first = np.unique(blocked_comps, return_index=True)
            comp_reason[comps] = reasons[first]
        return label, comp_reason

    def _group_units(self, classes: "_Classes", label: np.ndarray, comp_reason: np.ndarray) -> tuple:
        """A group is the set of units that touch exactly the same classes and share a fate (blocked or
        not); units without a parameter are nobody's to prune and are dropped. Returns (units, group of
        each unit, whether each group is blocked, index of each unit in its group, ids of kept units)."""
        n_comps, n_cls = len(comp_reason), len(classes.size)
        is_param = np.zeros(n_cls, dtype=bool)
        is_param[classes.cls[np.array(self.dim_is_param, dtype=bool)]] = True
        comp_has_param = np.zeros(n_comps, dtype=bool)
        comp_has_param[label[is_param[classes.cls_of_id]]] = True
        ids = np.nonzero(comp_has_param[label])[0]
        # distinct (unit, class) pairs: a sparse count matrix sums the duplicates in linear time; each unit's
        # set of classes is hashed by summing one random 62-bit code per class
        touch = coo_matrix((np.ones(len(ids), dtype=np.int32), (label[ids], classes.cls_of_id[ids])),
                           shape=(n_comps, max(n_cls, 1))).tocsr()
        touch.sum_duplicates()
        codes = np.random.default_rng(0).integers(1, 2 ** 62, size=max(n_cls, 1), dtype=np.int64)
        signature = np.zeros(n_comps, dtype=np.int64)
        np.add.at(signature, np.repeat(np.arange(n_comps), np.diff(touch.indptr)), codes[touch.indices])
        comps = np.nonzero(np.diff(touch.indptr))[0]
        comp_blocked = comp_reason[comps] >= 0
        # groups are numbered in order of first appearance
        _, first, group_of = np.unique(signature[comps] ^ comp_blocked.astype(np.int64), return_index=True,
                                       return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        group_of = rank[group_of.reshape(-1)]
        group_blocked = np.zeros(len(first), dtype=bool)
        group_blocked[group_of] = comp_blocked
        # index of each unit inside its group, in order of first appearance
        order = np.argsort(group_of, kind="stable")
        counts = np.bincount(group_of, minlength=len(first))
        unit_of = np.empty(len(comps), dtype=np.int64)
        unit_of[order] = np.arange(len(comps)) - np.repeat(np.cumsum(counts) - counts, counts)
        return comps, group_of, group_blocked, unit_of, ids

    def _members(self, classes, label, comps, group_of, unit_of, ids, counts, node_macs) -> tuple:
        """Members of each group (every dimension of every class it touches, with positions and units),
        and the MACs and parameters one unit carries (its share of every parameter member)."""
        comp_index = np.full(label.max() + 1 if len(label) else 0, -1, dtype=np.int64)
        comp_index[comps] = np.arange(len(comps))
        ci = comp_index[label[ids]]
        g_id, u_id, c_id, p_id = group_of[ci], unit_of[ci], classes.cls_of_id[ids], classes.pos_of_id[ids]
        # by group, class, position: ids ascend, and so do (class, position) pairs, so one stable sort by
        # group does what a three-key lexsort would
        order = np.argsort(g_id, kind="stable")
        g_id, u_id, c_id, p_id = g_id[order], u_id[order], c_id[order], p_id[order]
        change = np.nonzero((np.diff(g_id) != 0) | (np.diff(c_id) != 0))[0] + 1
        starts = np.concatenate([[0], change]).astype(np.int64) if len(g_id) else np.zeros(0, dtype=np.int64)
        ends = np.concatenate([change, [len(g_id)]]).astype(np.int64) if len(g_id) else starts
        dims_of_class: List[List[int]] = [[] for _ in range(len(classes.size))]
        for d, c in enumerate(classes.cls.tolist()):
            dims_of_class[c].append(d)
        macs_of_key = {k: sum(node_macs.get(n.name, 0) for n in users) for k, users in self.param_users.items()}
        macs, params, group_size = [0.0] * len(counts), [0.0] * len(counts), counts.tolist()
        # what a member needs of its dimension, worked out once per dimension rather than per member (this
        # loop runs per member: tens of thousands on large models): (key, dim, role, parameter numbers or None)
        dim_info = []
        for (key, dim), param in zip(self.dim_keys, self.dim_is_param):
            if param:
                # parameters make their channel unless a rule says they only read it (input columns)
                shape = self.shapes[key]
                dim_info.append((key, dim, self.roles.get((key, dim), PRODUCER),
                                 (max(shape[dim], 1), math.prod(shape), macs_of_key.get(key, 0))))
            else:
                dim_info.append((key, dim, None, None))
        members_of: Dict[int, List[Member]] = {}
        for s, e, g, c in zip(starts.tolist(), ends.tolist(), g_id[starts].tolist(), c_id[starts].tolist()):
            positions, units = p_id[s:e], u_id[s:e]
            members = members_of.setdefault(g, [])
            for d in dims_of_class[c]:
                key, dim, role, numbers = dim_info[d]
                if numbers is not None:
                    dim_size, numel, key_macs = numbers
                    frac = (e - s) / dim_size / max(group_size[g], 1)
                    params[g] += numel * frac
                    macs[g] += key_macs * frac
                members.append(Member(key, dim, positions, units, role))
        return members_of, macs, params


@dataclass
class _Classes:
    """Classes of dimensions coupled whole, and the id range of each."""
    cls: np.ndarray        # class of each dimension
    size: np.ndarray       # positions in each class
    start: np.ndarray      # first id of each class
    dim_size: np.ndarray   # positions in each dimension

    @property
    def n_ids(self) -> int:
        return int(self.size.sum())

    @cached_property
    def cls_of_id(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.size)), self.size)

    @cached_property
    def pos_of_id(self) -> np.ndarray:
        return np.arange(self.n_ids) - np.repeat(self.start, self.size)

    def ids_of(self, pieces: List[Tuple[int, Optional[np.ndarray]]]) -> Tuple[np.ndarray, List[int]]:
        """The ids of positions `positions` (None: all) of dimension `dim`, for every (dim, positions),
        concatenated, and the length of each piece. One addition for all pieces: per piece, numpy's call
        overhead would cost more than the arithmetic (hundreds of pieces of a few dozen positions)."""
        if not pieces:
            return np.zeros(0, dtype=np.int64), []
        dims = np.fromiter((d for d, _ in pieces), dtype=np.int64, count=len(pieces))
        sizes = self.dim_size[dims].tolist()
        ranges: Dict[int, np.ndarray] = {}   # np.arange(n), made once per size
        parts = []
        for (_, p), n in zip(pieces, sizes):
            if p is None:
                p = ranges.get(n)
                if p is None:
                    p = ranges[n] = np.arange(n)
            parts.append(p)
        lengths = [len(p) for p in parts]
        base = np.repeat(self.start[self.cls[dims]], lengths)
        return base + np.concatenate(parts).astype(np.int64, copy=False), lengths

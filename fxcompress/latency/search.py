"""Choosing which channels to remove for a latency target: greedily, the channels whose importance is
smallest per unit of predicted latency they save.

Each group keeps its channels best first (the magnitude scores' order) and shrinks by steps to widths the
runtime may take (multiples of `round_to`, never under `min_channels`). At every step the candidates are
each group's next 1, 2 or 4 steps down (a step that alone saves nothing, a width padded to the same kernel
block, may open one that does); a candidate costs the importance of the channels it removes (scores over
their group's mean, as in global ranking) and saves what the latency model predicts; the one with the
least cost per latency saved is taken, until the predicted latency reaches the target. Widths where the
kernels are slow (onnxruntime's INT8 convolution under 16 output channels) save little or nothing, so
the channels go where they buy time. Only the layers and activations a group touches are re-predicted.

    plan, fraction = latency_plan(lm, groups, scores, target_fraction=0.5, round_to=8)
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..core.errors import PassError
from ..prune.groups import ChannelGroup, Dim
from .model import LatencyModel

STEP_SIZES = (1, 2, 4)


class LatencyUnreachable(PassError):
    """No plan the search can make is predicted to reach the target; `reachable`: the lowest it reached
    (a fraction of the unpruned model's latency on the runtime)."""

    def __init__(self, message: str, reachable: float):
        super().__init__(message)
        self.reachable = reachable


def allowed_widths(size: int, round_to: int, min_channels: int) -> List[int]:
    """The widths a group may keep, largest first (plan.plan_from_scores's rounding and floor)."""
    floor = max(min(size, round_to), min(size, min_channels))
    widths = {size, floor} | {m * round_to for m in range(1, size // round_to + 1) if floor <= m * round_to < size}
    return sorted(widths, reverse=True)


class _State:
    """Widths of every dim and each layer's and activation's predicted share, updated one group at a time."""

    def __init__(self, lm: LatencyModel, groups: Sequence[ChannelGroup], scores: Dict[int, np.ndarray]):
        self.lm = lm
        w = lm.widths
        self.order = {g.id: np.argsort(-scores[g.id], kind="stable") for g in groups}
        self.kept = {g.id: g.size for g in groups}
        mean = {g.id: max(float(scores[g.id].mean()), 1e-12) for g in groups}
        # importance of the channels in keep order, cumulated: cost of removing ranks [a, b) = cum[b] - cum[a]
        self.cum = {g.id: np.concatenate([[0.0], np.cumsum(scores[g.id][self.order[g.id]] / mean[g.id])])
                    for g in groups}
        # per (dim, group): the keep ranks of the dim's positions in that group, sorted
        self.ranks: Dict[Tuple[Dim, int], np.ndarray] = {}
        self.dims_of: Dict[int, List[Dim]] = {g.id: [] for g in groups}
        for dim, members in w.members.items():
            for gid, units in members:
                if gid in self.kept:
                    rank = np.empty(len(self.order[gid]), dtype=np.int64)
                    rank[self.order[gid]] = np.arange(len(rank))
                    prev = self.ranks.get((dim, gid))
                    r = np.sort(rank[units]) if prev is None else np.sort(np.concatenate([prev, rank[units]]))
                    self.ranks[(dim, gid)] = r
                    if dim not in self.dims_of[gid]:
                        self.dims_of[gid].append(dim)
        self.width = {dim: w.size(dim) for dim in w.members}
        self.layers_of: Dict[int, List[int]] = {gid: [] for gid in self.kept}
        for i, l in enumerate(lm.layers):
            for gid in set(w.groups_of(l.in_dim)) | set(w.groups_of(l.out_dim)):
                if gid in self.layers_of:
                    self.layers_of[gid].append(i)
        self.acts_of: Dict[int, List[int]] = {gid: [] for gid in self.kept}
        for i, a in enumerate(lm.activations):
            for gid in {g for d in a.dims for g in w.groups_of(d)}:
                if gid in self.acts_of:
                    self.acts_of[gid].append(i)
        self.layer_share = [self._layer(i, {}) for i in range(len(lm.layers))]
        self.act_share = [self._act(i, {}) for i in range(len(lm.activations))]

    def _w(self, dim: Dim, changed: Dict[Dim, int]) -> int:
        """A dim's width with `changed` applied (a dim no prunable group touches keeps its size)."""
        if dim in changed:
            return changed[dim]
        return self.width[dim] if dim in self.width else self.lm.widths.size(dim)

    def _layer(self, i: int, changed: Dict[Dim, int]) -> float:
        l = self.lm.layers[i]
        return self.lm.layer_share(l, self._w(l.in_dim, changed), self._w(l.out_dim, changed))

    def _act(self, i: int, changed: Dict[Dim, int]) -> float:
        a = self.lm.activations[i]
        f = float(a.numel)
        for d in a.dims:
            f *= self._w(d, changed) / self.lm.widths.size(d)
        return self.lm.calibration.other_scaled * f / self.lm.full_activation

    def fraction(self) -> float:
        return sum(self.layer_share) + sum(self.act_share) + self.lm.calibration.constant

    def trial(self, gid: int, keep: int) -> Tuple[float, Dict[Dim, int], Dict[int, float], Dict[int, float]]:
        """(fraction saved, changed widths, new layer shares, new activation shares) if group gid kept `keep`."""
        now = self.kept[gid]
        width = {}
        for dim in self.dims_of[gid]:
            r = self.ranks[(dim, gid)]
            width[dim] = self.width[dim] - int(np.searchsorted(r, now) - np.searchsorted(r, keep))
        layers = {i: self._layer(i, width) for i in self.layers_of[gid]}
        acts = {i: self._act(i, width) for i in self.acts_of[gid]}
        saved = sum(self.layer_share[i] - v for i, v in layers.items()) + \
            sum(self.act_share[i] - v for i, v in acts.items())
        return saved, width, layers, acts

    def apply(self, gid: int, keep: int, width, layers, acts) -> None:
        self.kept[gid] = keep
        self.width.update(width)
        for i, v in layers.items():
            self.layer_share[i] = v
        for i, v in acts.items():
            self.act_share[i] = v

    def cost(self, gid: int, keep: int) -> float:
        return float(self.cum[gid][self.kept[gid]] - self.cum[gid][keep])


def latency_plan(lm: LatencyModel, groups: Sequence[ChannelGroup], scores: Dict[int, np.ndarray],
                 target_fraction: float, round_to: int = 1, min_channels: int = 1,
                 owner: str = "MagnitudePrune") -> Tuple[Dict[int, np.ndarray], float]:
    """(plan {group id: kept units}, its predicted fraction of the unpruned latency) reaching at most
    `target_fraction`; LatencyUnreachable (a PassError) naming the lowest reachable fraction when none does
    (`owner`: the pass it names)."""
    state = _State(lm, groups, scores)
    allowed = {g.id: allowed_widths(g.size, round_to, min_channels) for g in groups}
    neighbours = {g.id: {h.id for h in groups if set(state.layers_of[g.id]) & set(state.layers_of[h.id])
                         or set(state.acts_of[g.id]) & set(state.acts_of[h.id])} for g in groups}
    best: Dict[int, tuple] = {}

    def candidate(gid: int):
        widths = allowed[gid]
        i = widths.index(state.kept[gid])
        top = None
        for step in STEP_SIZES:
            if i + step >= len(widths):
                break
            keep = widths[i + step]
            saved, *rest = state.trial(gid, keep)
            if saved <= 1e-12:
                continue
            value = state.cost(gid, keep) / saved
            if top is None or value < top[0]:
                top = (value, keep, saved, *rest)
        return top

    for g in groups:
        best[g.id] = candidate(g.id)
    fraction = state.fraction()
    while fraction > target_fraction:
        live = [(c[0], gid) for gid, c in best.items() if c is not None]
        if not live:
            raise LatencyUnreachable(f"{owner} target_latency={target_fraction:.3g} cannot be reached on "
                            f"{lm.runtime.describe()}: removing more channels saves no predicted time below "
                            f"{fraction:.3f} of the unpruned latency ({len(groups)} prunable groups, round_to="
                            f"{round_to}, min_channels={min_channels}). Choose target_latency >= "
                            f"{math.ceil(fraction * 1000) / 1000}, or lower round_to/min_channels.", fraction)
        _, gid = min(live)
        _, keep, _, width, layers, acts = best[gid]
        state.apply(gid, keep, width, layers, acts)
        fraction = state.fraction()
        for h in neighbours[gid] | {gid}:
            best[h] = candidate(h)
    plan = {gid: np.sort(state.order[gid][:k]) for gid, k in state.kept.items() if k < len(state.order[gid])}
    return plan, fraction

"""ResRep's channel masks: which units of which groups are masked, their scores from the compactor rows,
and the global masking step that stops at a MACs target.

The MACs of a mask are those of the model with the masked units removed, predicted from shapes by
`PlanMacs` on the original graph (exact: the MACs rules are functions of shapes; BatchNorm counts no MACs,
so folding it changes nothing), never a stale estimate.

    masks = ChannelMasks(result, placement, compactors, min_channels=1, round_to=1)
    masks.mask_more(macs_of, target, limit=4)     # mask up to 4 more channels, lowest norms first
    masks.mask_toward(goal_plan, limit=4)         # or: toward a plan (a latency target's), lowest norms first
    masks.plan()                                  # {group id: kept units}, what removal applies
"""
from __future__ import annotations

import heapq
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ...graph.keys import ValueKey
from ..groups import ChannelGroupsResult
from .placement import Placement

# (compactor module name, row positions, the units those rows carry)
Rows = Tuple[str, np.ndarray, np.ndarray]


def smallest_width(size: int, min_channels: int, round_to: int) -> int:
    """The fewest units a group may keep: at least min_channels (and 1), a multiple of round_to, or all."""
    floor = max(1, min_channels)
    return min(size, -(-floor // round_to) * round_to)


def floor_plan(result: ChannelGroupsResult, group_ids, min_channels: int, round_to: int) -> Dict[int, np.ndarray]:
    """Every group at its smallest width: the most a mask can remove (what the MACs target must allow)."""
    return {gid: np.arange(smallest_width(result.groups[gid].size, min_channels, round_to)) for gid in group_ids}


class ChannelMasks:
    def __init__(self, result: ChannelGroupsResult, placement: Placement, compactors: Dict[str, nn.Module],
                 min_channels: int = 1, round_to: int = 1, group_score: str = "mean"):
        self.result, self.compactors, self.group_score = result, compactors, group_score
        self.min_channels, self.round_to = min_channels, round_to
        self.groups = list(placement.eligible)
        self.masked = {gid: np.zeros(result.groups[gid].size, dtype=bool) for gid in self.groups}
        self.rows: Dict[int, List[Rows]] = {gid: [] for gid in self.groups}
        members = {}
        for gid in self.groups:
            for m in result.groups[gid].members:
                members.setdefault((m.key, m.dim), []).append((gid, m))
        for site in placement.sites:
            key = ValueKey.of_node(site.attach)
            dim = site.channel_dim % len(result.shapes[key])
            for gid, m in members.get((key, dim), []):
                self.rows[gid].append((site.compactor, m.positions, m.units))
        for gid in self.groups:
            if not self.rows[gid]:
                raise AssertionError(f"group {gid} is eligible but no compactor row carries it")

    # ---- scores and masks
    def scores(self) -> Dict[int, np.ndarray]:
        """Per unit: the compactor row norms that carry it, averaged over the group's producers ("mean", the
        default: a residual group with four producers competes with an inner conv on equal terms) or summed
        ("sum": a residual group then scores about four times as high and is almost never masked; on the CIFAR-10
        ResNet-20 benchmark, 86.79 % against 87.34 % for "mean" at half the MACs)."""
        norms = {name: q.row_norms().double().cpu().numpy() for name, q in self.compactors.items()}
        out = {}
        for gid in self.groups:
            total, count = np.zeros(self.result.groups[gid].size), np.zeros(self.result.groups[gid].size)
            for name, pos, units in self.rows[gid]:
                np.add.at(total, units, norms[name][pos])
                np.add.at(count, units, 1.0)
            out[gid] = total / np.maximum(count, 1.0) if self.group_score == "mean" else total
        return out

    def row_masks(self) -> Dict[str, torch.Tensor]:
        """Per compactor: 1.0 for rows still learning from the task, 0.0 for masked rows."""
        out = {name: torch.ones(q.weight.shape[0]) for name, q in self.compactors.items()}
        for gid in self.groups:
            for name, pos, units in self.rows[gid]:
                out[name][torch.from_numpy(pos[self.masked[gid][units]])] = 0.0
        return out

    def lasso_rows(self) -> Dict[str, torch.Tensor]:
        """Per compactor: 1.0 for rows of groups ResRep may mask (they get the lasso term)."""
        out = {name: torch.zeros(q.weight.shape[0]) for name, q in self.compactors.items()}
        for gid in self.groups:
            for name, pos, _ in self.rows[gid]:
                out[name][torch.from_numpy(pos)] = 1.0
        return out

    def masked_count(self) -> int:
        return int(sum(m.sum() for m in self.masked.values()))

    def plan(self) -> Dict[int, np.ndarray]:
        return {gid: np.nonzero(~m)[0] for gid, m in self.masked.items() if m.any()}

    def widths(self) -> Dict[int, Tuple[int, int]]:
        return {gid: (len(m), int((~m).sum())) for gid, m in self.masked.items()}

    # ---- the masking step
    def _moves(self, gid: int, score: np.ndarray):
        """The group's next masking moves, lowest scores first: chunks that keep the kept count a multiple of
        round_to (or the full size) and at least min_channels. Yields (mean score, gid, units)."""
        mask = self.masked[gid]
        free = np.nonzero(~mask)[0]
        free = free[np.argsort(score[free], kind="stable")]
        kept, size, r = len(free), len(mask), self.round_to
        floor = smallest_width(size, self.min_channels, r)
        done = 0
        while True:
            nxt = ((kept - 1) // r) * r
            if nxt < floor or nxt < 1:
                return
            chunk = free[done:done + kept - nxt]
            yield float(score[chunk].mean()), gid, chunk
            done += len(chunk)
            kept = nxt

    def mask_more(self, macs_of: Callable[[dict], int], target: int, limit: Optional[int] = None) -> dict:
        """Mask the lowest-scoring channels, globally, until the MACs reach `target` or `limit` more channels
        are masked (None: no limit). Returns {"masked": newly masked, "macs": MACs after}."""
        scores = self.scores()
        macs = macs_of(self.plan())
        if macs <= target:
            return {"masked": 0, "macs": macs}
        sequence, count = [], 0
        for _, gid, units in heapq.merge(*(self._moves(g, scores[g]) for g in self.groups), key=lambda m: (m[0], m[1])):
            if limit is not None and count >= limit:
                break
            sequence.append((gid, units))
            count += len(units)
        if not sequence:
            return {"masked": 0, "macs": macs}

        def macs_after(k: int) -> int:
            trial = {gid: m.copy() for gid, m in self.masked.items()}
            for gid, units in sequence[:k]:
                trial[gid][units] = True
            return macs_of({gid: np.nonzero(~m)[0] for gid, m in trial.items() if m.any()})

        lo, hi = 1, len(sequence)   # the shortest prefix that reaches the target (MACs fall with k)
        hi_macs = macs_after(hi)
        if hi_macs <= target:
            while lo < hi:
                mid = (lo + hi) // 2
                mid_macs = macs_after(mid)
                if mid_macs <= target:
                    hi, hi_macs = mid, mid_macs
                else:
                    lo = mid + 1
        for gid, units in sequence[:hi]:
            self.masked[gid][units] = True
        return {"masked": int(sum(len(u) for _, u in sequence[:hi])), "macs": hi_macs}

    def scores_masked_first(self) -> Dict[int, np.ndarray]:
        """scores() with masked units at 0: a plan made from them removes the masked units first (free)."""
        out = self.scores()
        for gid in self.groups:
            out[gid] = np.where(self.masked[gid], 0.0, out[gid])
        return out

    def mask_toward(self, goal: Dict[int, np.ndarray], limit: Optional[int] = None) -> dict:
        """Mask up to `limit` more of the units that the plan `goal` ({group id: kept units}) removes, lowest
        scores first (each over its group's mean, as global ranking compares groups); None: all of them.
        A latency target's goal comes from fxcompress.latency.latency_plan, remade at every step from the
        current scores. Returns {"masked": newly masked}."""
        scores = self.scores()
        candidates = []
        for gid in self.groups:
            keep = np.ones(len(self.masked[gid]), dtype=bool)
            if gid in goal:
                keep[:] = False
                keep[np.asarray(goal[gid], dtype=np.int64)] = True
            units = np.nonzero(~keep & ~self.masked[gid])[0]
            mean = max(float(scores[gid].mean()), 1e-12)
            candidates += [(float(scores[gid][u]) / mean, gid, int(u)) for u in units]
        candidates.sort()
        chosen = candidates if limit is None else candidates[:limit]
        for _, gid, u in chosen:
            self.masked[gid][u] = True
        return {"masked": len(chosen)}

    # ---- checkpoints (weights_only-loadable: tensors, ints, strings)
    def state_dict(self) -> dict:
        return {str(gid): torch.from_numpy(m.copy()) for gid, m in self.masked.items()}

    def load_state_dict(self, state: dict) -> None:
        for gid in self.groups:
            self.masked[gid] = state[str(gid)].numpy().astype(bool).copy()

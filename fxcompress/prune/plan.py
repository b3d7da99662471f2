"""Turning channel scores into pruning plans: per-group or global ranking, rounding, MACs targets.

A plan's MACs are computed from the shapes it predicts (`macs_of_plan`: the op families' MACs rules read
through a PruneState), so a search tries many plans without building one; the pass applies the chosen
plan once, and the manager counts the result's MACs to confirm.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List

import numpy as np
import torch
import torch.fx as fx

from ..core.errors import PassError
from ..graph.macs import node_macs
from ..graph.tracing import node_shape
from .groups import ChannelGroup, ChannelGroupsResult
from .state import PruneState, keep_masks, normalize_plan, tensor_names


def select_groups(gm: fx.GraphModule, result: ChannelGroupsResult, ignore: Iterable[str],
                  owner: str) -> List[ChannelGroup]:
    """The prunable groups that touch no module named in `ignore` (or inside one); `owner` names the pass
    in the error an unknown module name raises."""
    modules = dict(gm.named_modules())
    unknown = [n for n in ignore if n not in modules]
    if unknown:
        raise PassError(f"{owner} option ignore names unknown module(s) {unknown}; use the model's "
                        f"module names, e.g. {[n for n in list(modules)[1:4]]}")

    def ignored(group):
        return any(m.name == n or m.name.startswith(n + ".") for m in group.param_members() for n in ignore)
    return [g for g in result.prunable() if not ignored(g)]


def magnitude_scores(gm: fx.GraphModule, result: ChannelGroupsResult, groups: Iterable[ChannelGroup],
                     norm: float = 1) -> Dict[int, np.ndarray]:
    """Score of each unit: the sum over the group's parameters of the `norm`-norm of the unit's slice."""
    params = dict(gm.named_parameters())
    scores = {}
    for g in groups:
        total = np.zeros(g.size)
        for m in g.param_members():
            t = params.get(m.name)
            if t is None:  # buffers (running statistics) do not vote
                continue
            with torch.no_grad():
                per_pos = t.detach().float().abs().pow(norm).movedim(m.dim, 0).reshape(t.shape[m.dim], -1).sum(1)
            acc = np.bincount(m.units, weights=per_pos.cpu().numpy()[m.positions], minlength=g.size)
            total += acc ** (1.0 / norm)
        scores[g.id] = total
    return scores


def _rounded_keep(size: int, keep: int, round_to: int) -> int:
    keep = max(1, keep)
    return min(size, int(math.ceil(keep / round_to)) * round_to)


def plan_from_scores(groups: List[ChannelGroup], scores: Dict[int, np.ndarray], ratio: float, round_to: int = 1,
                     global_ranking: bool = False, min_channels: int = 1) -> Dict[int, np.ndarray]:
    """Remove `ratio` of the units of each group (or, globally, the lowest `ratio` of all units, scores
    normalised per group), round kept counts up to a multiple of `round_to`, never empty a group."""
    keep_counts = {}
    if global_ranking:
        norm = {g.id: scores[g.id] / max(float(scores[g.id].mean()), 1e-12) for g in groups}
        flat = np.concatenate([norm[g.id] for g in groups]) if groups else np.zeros(0)
        n_remove = int(ratio * len(flat))
        threshold = np.sort(flat)[n_remove - 1] if n_remove > 0 else -np.inf
        for g in groups:
            keep_counts[g.id] = int((norm[g.id] > threshold).sum())
    else:
        for g in groups:
            keep_counts[g.id] = g.size - int(ratio * g.size)
    plan = {}
    for g in groups:
        keep = max(_rounded_keep(g.size, keep_counts[g.id], round_to), min(g.size, min_channels))
        if keep < g.size:
            order = np.argsort(-scores[g.id], kind="stable")
            plan[g.id] = np.sort(order[:keep])
    return plan


class PlanMacs:
    """MACs a plan leaves, predicted from the shapes it implies (exact: the MACs rules are functions of
    shapes).

        macs_of = PlanMacs(gm, result)
        macs_of({group_id: kept_units})
    """

    def __init__(self, gm: fx.GraphModule, result: ChannelGroupsResult):
        self.gm, self.result = gm, result
        self.names = tensor_names(dict(gm.named_modules()))

    def __call__(self, plan) -> int:
        s = PruneState(self.result, keep_masks(self.result, normalize_plan(self.result, plan)))
        names = self.names
        per_node = node_macs(self.gm, shape_of=lambda n: s.node_shape(n) or node_shape(n),
                             param_shape=lambda t: s.param_shape(names.get(id(t), ""), t.shape))
        return sum(per_node.values())


def search_ratio(make_plan: Callable[[float], dict], macs_of: Callable[[dict], int], target_macs: int,
                 steps: int = 10) -> tuple:
    """Smallest ratio (bisection) whose plan brings MACs to at most `target_macs`; (ratio, plan, macs)."""
    lo, hi = 0.0, 0.99
    plan = make_plan(hi)
    best = (hi, plan, macs_of(plan))
    if best[2] > target_macs:
        return best
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan = make_plan(mid)
        macs = macs_of(plan)
        if macs <= target_macs:
            hi, best = mid, (mid, plan, macs)
        else:
            lo = mid
    return best


def refine_to_target(plan: Dict[int, np.ndarray], macs: int, groups: List[ChannelGroup],
                     scores: Dict[int, np.ndarray], round_to: int, macs_of: Callable[[dict], int], target_macs: int,
                     max_rounds: int = 4) -> tuple:
    """Give channels back, `round_to` at a time, while MACs stay within `target_macs`: rounding makes a
    uniform ratio jump past the target (ResNet-20 with round_to=8: every 16-wide layer goes to 8 at once,
    25% of the MACs left for a 50% target). Candidates are tried best first, by the score of the channels
    they restore relative to their group's mean (as in global ranking); each is checked exactly.
    `macs` is the MACs of `plan` (known from the search). Returns (plan, macs)."""
    by_id = {g.id: g for g in groups}
    plan = {gid: np.asarray(kept) for gid, kept in plan.items()}
    for _ in range(max_rounds):
        candidates = []
        for gid, kept in plan.items():
            order = np.argsort(-scores[gid], kind="stable")
            extra = order[len(kept):len(kept) + round_to]
            if len(extra):
                value = float(scores[gid][extra].mean()) / max(float(scores[gid].mean()), 1e-12)
                candidates.append((-value, gid, np.sort(order[:len(kept) + len(extra)])))
        changed = False
        for _, gid, kept in sorted(candidates, key=lambda c: (c[0], c[1])):
            trial = dict(plan)
            if len(kept) >= by_id[gid].size:
                del trial[gid]
            else:
                trial[gid] = kept
            trial_macs = macs_of(trial)
            if trial_macs <= target_macs:
                plan, macs, changed = trial, trial_macs, True
        if not changed:
            break
    return plan, macs

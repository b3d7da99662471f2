"""MagnitudePrune: one-shot structured pruning by the summed norm of every coupled weight."""
from __future__ import annotations

import math
import warnings
from typing import Iterable, Optional

from fxcompress.prune.apply import prune
from fxcompress.core.errors import PassError, VerificationError
from fxcompress.core.pass_base import TransformPass
from fxcompress.graph.macs import count_macs
from fxcompress.latency.target import latency_target_option, prune_to_latency
from fxcompress.prune.plan import (PlanMacs, magnitude_scores, plan_from_scores, refine_to_target, search_ratio,
                                   select_groups)

from .channel_groups import ChannelGroups

LITTLE_PRUNED = 0.10   # below this fraction of the parameters removed, the pass warns and names the blockers


class PruningWarning(UserWarning):
    """A pruning pass removed far less than asked: some op or module fixes most channel groups."""


class MagnitudePrune(TransformPass):
    """Remove `ratio` of the prunable units of each group (or globally with `global_ranking`), scored by
    the summed `norm`-norm of all weights coupled to the unit; kept counts are rounded up to a multiple
    of `round_to`; no group is emptied; model outputs (the classifier width) and modules named in
    `ignore` stay whole. With `target_macs` (fraction of the current MACs to keep, e.g. 0.5), the ratio
    is searched so that the pruned model has at most that many MACs, then (`refine`) channels are given
    back `round_to` at a time, best first, while the MACs stay within the target (rounding otherwise
    overshoots). No group is cut below `min_channels` (16 keeps onnxruntime's fast int8 conv kernel, which
    needs 16 output channels). Checked for exactness like PruneChannels.

    With `target_latency` (a fraction of the unpruned model's latency measured on `runtime`, or on
    `relative_to`), channels are ranked by importance per unit of latency saved, predicted from per-layer
    latency tables measured in onnxruntime at `threads` and `batch` (fxcompress/latency/), so widths land
    where the kernels are fast; the pruned model is measured beside the unpruned one and its measured
    latency reported beside the target (re-planned up to twice when it misses by more than 5 %):

        MagnitudePrune(target_latency=0.33, runtime="onnxruntime-int8", threads=2, batch=32, round_to=8)
        MagnitudePrune(target_latency=0.33, runtime="onnxruntime-int8", relative_to="onnxruntime-fp32")
    """

    requires = (ChannelGroups,)
    writes_in_place = False   # builds the pruned model beside ctx.gm (fxcompress.prune.apply)

    def __init__(self, ratio: float = 0.5, norm: float = 1, round_to: int = 1, global_ranking: bool = False,
                 ignore: Iterable[str] = (), target_macs: Optional[float] = None, refine: bool = True,
                 min_channels: int = 1, target_latency: Optional[float] = None, runtime: str = "onnxruntime-fp32",
                 threads: int = 2, batch: int = 1, relative_to: Optional[str] = None):
        def bad(option, value, want):
            return PassError(f"MagnitudePrune option {option}={value!r} is invalid: {want}")

        def is_number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_number(ratio) or not 0 <= ratio < 1:
            raise bad("ratio", ratio, "give the fraction of each group's channels to remove, in [0, 1)")
        if not is_number(norm) or norm <= 0:
            raise bad("norm", norm, "give a positive number (1 for L1, 2 for L2)")
        if not is_int(round_to) or round_to < 1:
            raise bad("round_to", round_to, "give an integer >= 1 (kept channels are rounded up to a multiple)")
        if target_macs is not None and (not is_number(target_macs) or not 0 < target_macs < 1):
            raise bad("target_macs", target_macs, "give the fraction of the current MACs to keep, in (0, 1), "
                                                  "or None to prune by ratio")
        if not is_int(min_channels) or min_channels < 1:
            raise bad("min_channels", min_channels, "give an integer >= 1 (no group is cut below it)")
        self.latency = latency_target_option("MagnitudePrune", target_latency, runtime, threads, batch, relative_to,
                                             target_macs)
        if isinstance(ignore, str):
            ignore = [ignore]
        self.ratio, self.norm, self.round_to = float(ratio), norm, round_to
        self.global_ranking, self.ignore, self.target_macs = global_ranking, tuple(ignore), target_macs
        self.refine, self.min_channels = refine, min_channels

    def _unreachable(self, result, groups, macs: int, total: int) -> PassError:
        fixed = [g for g in result.groups if not g.prunable]
        reasons = result.summary()["fixed_reasons"]
        top = "; ".join(list(reasons)[:3])
        floor = max(self.round_to, self.min_channels)
        reachable = math.ceil(1000 * macs / max(total, 1)) / 1000   # rounded up: a target that really fits
        return PassError(
            f"MagnitudePrune target_macs={self.target_macs} cannot be reached: even ratio 0.99 keeps "
            f"{macs / max(total, 1):.1%} of the MACs ({macs} of {total}). {len(fixed)} of {len(result.groups)} "
            f"channel groups are fixed (e.g. {top or 'none'}), {len(result.prunable()) - len(groups)} are ignored, "
            f"and every prunable group keeps at least min(its size, {floor}) channels (round_to={self.round_to}, "
            f"min_channels={self.min_channels}). Choose target_macs >= {reachable}, or lower "
            f"round_to/min_channels, or ignore fewer modules.")

    def _plan(self, ctx, result, groups, scores) -> tuple:
        """(ratio, plan, its predicted MACs or None) by the ratio, or searched for target_macs."""
        def make_plan(ratio):
            return plan_from_scores(groups, scores, ratio, self.round_to, self.global_ranking, self.min_channels)

        if self.target_macs is None:
            return self.ratio, make_plan(self.ratio), None
        target = int(self.target_macs * ctx.flops().macs)
        macs_of = PlanMacs(ctx.gm, result)
        ratio, plan, macs = search_ratio(make_plan, macs_of, target)
        if macs > target:  # search_ratio returns its best; going on would silently miss the target
            raise self._unreachable(result, groups, macs, ctx.flops().macs)
        if self.refine:
            plan, macs = refine_to_target(plan, macs, groups, scores, self.round_to, macs_of, target)
        return ratio, plan, macs

    def run(self, ctx) -> dict:
        result = ctx.get(ChannelGroups)
        groups = select_groups(ctx.gm, result, self.ignore, "MagnitudePrune")
        scores = magnitude_scores(ctx.gm, result, groups, self.norm)

        if self.latency is not None:
            ctx.gm, metrics = prune_to_latency(ctx.gm, result, groups, scores, ctx.example_inputs, self.latency,
                                               self.round_to, self.min_channels, ctx.progress)
            metrics["prunable_groups"] = len(groups)
            return metrics
        params_before = sum(p.numel() for p in ctx.gm.parameters())
        whole: dict = {}
        while True:   # groups that must stay whole (prune.apply): the MACs target is planned again without them
            ratio, plan, macs = self._plan(ctx, result, [g for g in groups if g.id not in whole], scores)
            new, metrics = prune(ctx.gm, result, plan, ctx.example_inputs)
            found = metrics.get("groups_kept_whole", {})
            whole.update(found)
            if not found or macs is None:
                break
        if whole:
            metrics["groups_kept_whole"] = whole
        ctx.gm = new
        removed = 1 - sum(p.numel() for p in ctx.gm.parameters()) / max(params_before, 1)
        if removed < LITTLE_PRUNED and (ratio > 0 or self.target_macs is not None):
            # a model that barely prunes says so, with what fixes its largest groups
            blocked = result.largest_fixed()
            metrics["warning"] = (f"only {removed:.1%} of the parameters removed; the largest fixed groups: "
                                  + " | ".join(blocked))
            warnings.warn(f"MagnitudePrune: {metrics['warning']}", PruningWarning, stacklevel=2)
        if macs is not None:   # the one physical apply confirms the MACs the search predicted from shapes
            applied = count_macs(ctx.gm).macs
            if applied != macs:
                raise VerificationError(f"MagnitudePrune predicted {macs} MACs for its plan, the pruned model "
                                        f"has {applied}: a MACs rule in fxcompress.ops does not follow shapes")
            metrics["predicted_macs"] = macs
        metrics["ratio"] = ratio
        metrics["prunable_groups"] = len(groups)
        return metrics

"""MagnitudePrune: one-shot structured pruning by the summed norm of every coupled weight."""
from __future__ import annotations

from typing import Iterable, Optional

from fxcompress.prune.apply import prune
from fxcompress.core.pass_base import TransformPass
from fxcompress.prune.plan import PlanMacs, magnitude_scores, plan_from_scores, refine_to_target, search_ratio

from .channel_groups import ChannelGroups


class MagnitudePrune(TransformPass):
    """Remove `ratio` of the prunable units of each group (or globally with `global_ranking`), scored by
    the summed `norm`-norm of all weights coupled to the unit; kept counts are rounded up to a multiple
    of `round_to`; no group is emptied; model outputs (the classifier width) and modules named in
    `ignore` stay whole. With `target_macs` (fraction of the current MACs to keep, e.g. 0.5), the ratio
    is searched so that the pruned model has at most that many MACs, then (`refine`) channels are given
    back `round_to` at a time, best first, while the MACs stay within the target (rounding otherwise
    overshoots). No group is cut below `min_channels` (16 keeps onnxruntime's fast int8 conv kernel, which
    needs 16 output channels). Checked for exactness like PruneChannels."""

    requires = (ChannelGroups,)

    def __init__(self, ratio: float = 0.5, norm: float = 1, round_to: int = 1, global_ranking: bool = False,
                 ignore: Iterable[str] = (), target_macs: Optional[float] = None, refine: bool = True,
                 min_channels: int = 1):
        if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ValueError(f"MagnitudePrune ratio must be in [0, 1), got {ratio!r}")
        if not isinstance(norm, (int, float)) or norm <= 0:
            raise ValueError(f"MagnitudePrune norm must be a positive number, got {norm!r}")
        if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
            raise ValueError(f"MagnitudePrune round_to must be an integer >= 1, got {round_to!r}")
        if target_macs is not None and not 0 < target_macs < 1:
            raise ValueError(f"MagnitudePrune target_macs is the fraction of MACs to keep, in (0, 1); "
                             f"got {target_macs!r}")
        if not isinstance(min_channels, int) or isinstance(min_channels, bool) or min_channels < 1:
            raise ValueError(f"MagnitudePrune min_channels must be an integer >= 1, got {min_channels!r}")
        if isinstance(ignore, str):
            ignore = [ignore]
        self.ratio, self.norm, self.round_to = float(ratio), norm, round_to
        self.global_ranking, self.ignore, self.target_macs = global_ranking, tuple(ignore), target_macs
        self.refine, self.min_channels = refine, min_channels

    def _groups(self, ctx, result):
        modules = dict(ctx.gm.named_modules())
        unknown = [n for n in self.ignore if n not in modules]
        if unknown:
            raise ValueError(f"MagnitudePrune ignore names unknown module(s) {unknown}; module names look like "
                             f"{[n for n in list(modules)[1:4]]}")

        def ignored(group):
            return any(m.name == n or m.name.startswith(n + ".") for m in group.param_members() for n in self.ignore)
        return [g for g in result.prunable() if not ignored(g)]

    def run(self, ctx) -> dict:
        result = ctx.get(ChannelGroups)
        groups = self._groups(ctx, result)
        scores = magnitude_scores(ctx.gm, result, groups, self.norm)

        def make_plan(ratio):
            return plan_from_scores(groups, scores, ratio, self.round_to, self.global_ranking, self.min_channels)

        ratio = self.ratio
        if self.target_macs is not None:
            target = int(self.target_macs * ctx.flops().macs)
            macs_of = PlanMacs(ctx.gm, result)
            ratio, plan, macs = search_ratio(make_plan, macs_of, target)
            if self.refine and macs <= target:
                plan, _ = refine_to_target(plan, macs, groups, scores, self.round_to, macs_of, target)
        else:
            plan = make_plan(ratio)
        ctx.gm, metrics = prune(ctx.gm, result, plan, ctx.example_inputs)
        metrics["ratio"] = ratio
        metrics["prunable_groups"] = len(groups)
        return metrics

"""ResRep: lossless structured pruning by training compactors (Ding et al., ICCV 2021), on any channel group."""
from __future__ import annotations

import dataclasses
import tempfile
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from fxcompress.core.context import PassContext
from fxcompress.core.errors import PassError, VerificationError
from fxcompress.core.pass_base import TransformPass
from fxcompress.core.verify import compare_exact, compare_outputs, run_eval
from fxcompress.graph.macs import count_macs
from fxcompress.prune.apply import prune
from fxcompress.prune.plan import PlanMacs, select_groups
from fxcompress.prune.resrep import (ChannelMasks, ResRepHook, find_sites, insert_compactors, merge_compactors,
                                     removal_plan, zero_masked_rows)
from fxcompress.prune.resrep.masking import floor_plan
from fxcompress.prune.resrep.latency_goal import LatencyGoal as _LatencyGoal
from fxcompress.latency.target import latency_target_option
from fxcompress.train.loop import TrainConfig, TrainHook, evaluate, fit

from .channel_groups import ChannelGroups


def _check(owner: str, option: str, value, ok: bool, want: str) -> None:
    if not ok:
        raise PassError(f"{owner} option {option}={value!r} is invalid: {want}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class ResRep(TransformPass):
    """Transform: insert an identity compactor after every producer that ends a prunable channel group
    (all producers of one group, e.g. every block output of a residual stream, share one mask), train with
    the ResRep update (task gradient on kept compactor rows, group lasso on all, masked rows decay), mask
    the lowest-norm channels every `mask_interval` steps after `warmup_epochs` until the model's MACs are
    `target_macs` x the current ones, then fold BatchNorms and compactors into the producers and remove the
    masked channels physically. Insertion, merge and removal are each checked for exactness.

        fxcompress.compile(model, [ResRep(target_macs=0.5, epochs=30, lr=0.05)], x,
                           train_loader=train, val_loader=val)

    `loss_fn(outputs, targets)` replaces cross-entropy (detectors, segmenters); `hooks` add losses
    (fxcompress.distill.DistillHook). The report has per-group widths before/after and, per epoch, the
    masked channels and MACs; `final_step_channels` > 0 says training ended before the target was met
    (the rest were masked at once: train longer). A full compactor has C x C weights: `max_full_channels`
    gives producers wider than that a per-channel scale instead (memory for very wide layers).

    With `target_latency` (instead of `target_macs`; the same options as MagnitudePrune's), masking moves
    toward the plan that removes the least compactor norm per unit of latency saved on the runtime, remade
    at every step (fxcompress/prune/resrep/latency_goal.py); the aim is corrected by one measured pruning
    before training, and the final model is timed beside the unpruned one and reported beside the target:

        ResRep(target_latency=0.4, runtime="onnxruntime-int8", batch=32, relative_to="onnxruntime-fp32",
               round_to=8, epochs=30, lr=0.05)"""

    requires = (ChannelGroups, "train_loader")

    def __init__(self, target_macs: Optional[float] = None, lasso_strength: float = 1e-4, epochs: int = 10, lr: float = 0.01,
                 warmup_epochs: float = 1.0, mask_interval: int = 200, step_channels: int = 4, min_channels: int = 1,
                 round_to: int = 1, compactor_momentum: float = 0.99, ignore: Iterable[str] = (),
                 hooks: Sequence[TrainHook] = (), loss_fn: Optional[Callable] = None, weight_decay: float = 5e-4,
                 momentum: float = 0.9, schedule: str = "cosine", seed: int = 0, checkpoint_dir: Optional[str] = None,
                 resume: bool = False, max_steps_per_epoch: Optional[int] = None,
                 max_full_channels: Optional[int] = None, group_score: str = "mean",
                 target_latency: Optional[float] = None, runtime: str = "onnxruntime-fp32", threads: int = 2,
                 batch: int = 1, relative_to: Optional[str] = None):
        n = "ResRep"
        self.latency = latency_target_option(n, target_latency, runtime, threads, batch, relative_to, target_macs)
        if target_macs is None and target_latency is None:
            target_macs = 0.5
        _check(n, "group_score", group_score, group_score in ("sum", "mean"),
               'give "mean" (a unit\'s row norms averaged over its group\'s producers) or "sum"')
        _check(n, "target_macs", target_macs, target_macs is None or (_number(target_macs) and 0 < target_macs < 1),
               "give the fraction of the current MACs to keep, in (0, 1)")
        _check(n, "lasso_strength", lasso_strength, _number(lasso_strength) and lasso_strength >= 0,
               "give a number >= 0 (the paper uses 1e-4)")
        _check(n, "epochs", epochs, _integer(epochs) and epochs >= 1, "give an integer >= 1")
        _check(n, "lr", lr, _number(lr) and lr > 0, "give a positive learning rate")
        _check(n, "warmup_epochs", warmup_epochs, _number(warmup_epochs) and 0 <= warmup_epochs <= epochs,
               f"give the epochs to train before any masking, in [0, epochs={epochs}]")
        for option, value in (("mask_interval", mask_interval), ("step_channels", step_channels),
                              ("min_channels", min_channels), ("round_to", round_to)):
            _check(n, option, value, _integer(value) and value >= 1, "give an integer >= 1")
        _check(n, "compactor_momentum", compactor_momentum, _number(compactor_momentum) and 0 <= compactor_momentum < 1,
               "give a momentum in [0, 1)")
        _check(n, "max_full_channels", max_full_channels,
               max_full_channels is None or (_integer(max_full_channels) and max_full_channels >= 1),
               "give None (full compactors everywhere) or the widest producer to get a full C x C compactor")
        if loss_fn is not None and not callable(loss_fn):
            raise PassError(f"ResRep option loss_fn={loss_fn!r} is invalid: give a function (outputs, targets) -> loss")
        self.target_macs = None if target_macs is None else float(target_macs)
        self.lasso_strength = float(lasso_strength)
        self.warmup_epochs, self.mask_interval, self.step_channels = warmup_epochs, mask_interval, step_channels
        self.min_channels, self.round_to, self.compactor_momentum = min_channels, round_to, compactor_momentum
        self.group_score = group_score
        self.ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
        self.hooks, self.loss_fn = tuple(hooks), loss_fn
        self.max_full_channels = max_full_channels
        self.config = TrainConfig(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                  schedule=schedule, seed=seed, checkpoint_dir=checkpoint_dir, resume=resume,
                                  max_steps_per_epoch=max_steps_per_epoch)

    def run(self, ctx) -> dict:
        result = ctx.get(ChannelGroups)
        groups = select_groups(ctx.gm, result, self.ignore, "ResRep")
        placement = find_sites(ctx.gm, result, [g.id for g in groups], self.max_full_channels)
        if not placement.eligible:
            why = "; ".join(f"group {g}: {r}" for g, r in list(placement.skipped.items())[:3])
            raise PassError(f"ResRep finds no channel group it can prune ({len(groups)} prunable after ignore="
                            f"{list(self.ignore)}{'; ' + why if why else ''}): nothing to train compactors for")
        total = ctx.flops().macs
        macs_of = PlanMacs(ctx.gm, result)
        with tempfile.TemporaryDirectory(prefix="fxcompress_resrep_") as tmp:
            return self._run(ctx, result, placement, total, macs_of, tmp)

    def _run(self, ctx, result, placement, total, macs_of, tmp) -> dict:
        metrics, target, latency = {}, None, None
        if self.latency is None:
            target = int(self.target_macs * total)
            floor = macs_of(floor_plan(result, placement.eligible, self.min_channels, self.round_to))
            if floor > target:
                raise UnreachableTarget(
                    floor / total, f"ResRep target_macs={self.target_macs} cannot be reached: with every prunable "
                    f"group at its floor (min_channels={self.min_channels}, round_to={self.round_to}) the model keeps "
                    f"{floor / total:.1%} of its MACs; choose target_macs >= {np.ceil(1000 * floor / total) / 1000} "
                    f"or lower min_channels/round_to")
        else:
            latency = _LatencyGoal(ctx, result, placement, self, tmp)
            metrics["latency_calibration"] = latency.calibration
        compacted = insert_compactors(ctx.gm, placement.sites)
        insertion = compare_exact(lambda x: run_eval(ctx.gm, x), lambda x: run_eval(compacted, x), (ctx.gm, compacted),
                                  ctx.example_inputs, "ResRep compactor insertion (identity)")
        compactors = {s.compactor: compacted.get_submodule(s.compactor) for s in placement.sites}
        masks = ChannelMasks(result, placement, compactors, self.min_channels, self.round_to, self.group_score)
        if ctx.val_loader:
            metrics["top1_before"] = evaluate(ctx.gm, ctx.val_loader, ctx.device)["top1"]
        hook = ResRepHook(masks, macs_of, target, self.lasso_strength, self.compactor_momentum, self.warmup_epochs,
                          self.mask_interval, self.step_channels,
                          masker=None if latency is None else latency.masker(masks))
        config = self.config if ctx.progress else dataclasses.replace(self.config, progress=False)
        history = fit(compacted, ctx.train_loader, config, loss_fn=self.loss_fn, hooks=[hook, *self.hooks],
                      device=ctx.device, desc=self.name)
        compacted.eval()
        _share_tensors(ctx.gm, compacted)
        final = hook.mask_step(None)   # training ended before the target: mask the rest at once
        predicted = macs_of(masks.plan())   # (on the original graph: before the merge edits it)
        if target is not None and predicted > target:
            raise VerificationError(f"ResRep masks leave {predicted} MACs, above the target {target} that the floor "
                                    f"check said was reachable")
        if ctx.val_loader:
            metrics["top1_trained"] = evaluate(compacted, ctx.val_loader, ctx.device)["top1"]
        before_zero = run_eval(compacted, ctx.example_inputs)
        zeroed = zero_masked_rows(compactors, masks.row_masks())
        zeroing = compare_outputs(run_eval(compacted, ctx.example_inputs), before_zero, float("inf"), "zeroing")
        merge_compactors(ctx.gm, compacted, placement.sites)
        merge = compare_exact(lambda x: run_eval(compacted, x), lambda x: run_eval(ctx.gm, x), (compacted, ctx.gm),
                              ctx.example_inputs, "ResRep merge of BatchNorms and compactors")
        merged_groups = ChannelGroups().run(PassContext(ctx.gm, ctx.example_inputs, device=ctx.device, progress=False))
        plan = removal_plan(merged_groups, masks, placement.sites)
        ctx.gm, removal = prune(ctx.gm, merged_groups, plan, ctx.example_inputs)
        macs = count_macs(ctx.gm).macs
        if macs != predicted:
            raise VerificationError(f"ResRep predicted {predicted} MACs for its masks, the pruned model has {macs}: "
                                    f"a MACs rule in fxcompress.ops does not follow shapes")
        if ctx.val_loader:
            metrics["top1_after"] = evaluate(ctx.gm, ctx.val_loader, ctx.device)["top1"]
        widths = masks.widths()
        if latency is not None:   # the pruned model timed beside the unpruned one, reported beside the target
            metrics.update(latency.result(masks, ctx.gm, ctx.example_inputs))
        metrics.update({
            "target_macs": target, "macs": macs, "compactors": len(placement.sites),
            "compactor_kinds": _kinds(placement),
            "groups_masked": sum(1 for b, a in widths.values() if a < b), "eligible_groups": len(placement.eligible),
            "skipped_groups": {str(g): r for g, r in placement.skipped.items()},
            "masked_channels": masks.masked_count(), "final_step_channels": final["masked"],
            "widths": [{"group": gid, "modules": result.groups[gid].modules()[:4], "before": b, "after": a}
                       for gid, (b, a) in widths.items()],
            "history": [{**h, **m} for h, m in zip(history, hook.history)],
            "insertion_max_rel_error": insertion["max_rel_error"], "merge_max_rel_error": merge["max_rel_error"],
            "zeroing_max_rel_change": zeroing["max_rel_error"], "zeroed_rows": zeroed,
            "removal_max_rel_error": removal.get("max_rel_error"),
        })
        warnings = []
        if final["masked"] and latency is None:
            warnings.append(f"training ended before the MACs target: the last {final['masked']} channels were "
                            f"masked at once after training (train longer or mask more often)")
        if zeroing["max_rel_error"] > ZEROING_WARNING:
            warnings.append(f"zeroing the masked channels changed the output by {zeroing['max_rel_error']:.3g} "
                            f"(relative): their compactor rows had not decayed to zero when training ended; mask "
                            f"earlier (warmup_epochs, mask_interval), train longer or raise lasso_strength")
        if warnings:
            metrics["warning"] = "; ".join(warnings)
        return metrics


# zeroing rows that decayed leaves the output nearly unchanged; beyond this the pruned model is not the trained one
# (CIFAR ResNet-20: 2.02 with residual channels masked 12 epochs before the end, top-1 86.68 -> 17.48 %)
ZEROING_WARNING = 0.3


class UnreachableTarget(PassError):
    """target_macs below what the prunable groups allow; `reachable` is the smallest fraction possible."""

    def __init__(self, reachable: float, message: str):
        super().__init__(message)
        self.reachable = reachable


def _kinds(placement) -> dict:
    kinds = {}
    for s in placement.sites:
        kinds[s.kind.__name__] = kinds.get(s.kind.__name__, 0) + 1
    return kinds


def _share_tensors(target, compacted) -> None:
    """Make `target` use the compacted graph's trained tensors again (moving a model between devices
    replaces buffers rather than updating them in place)."""
    for name, t in list(compacted.named_parameters()) + list(compacted.named_buffers()):
        owner, _, attr = name.rpartition(".")
        try:
            module = target.get_submodule(owner)
        except AttributeError:
            continue   # a compactor
        if attr in module._parameters:
            module._parameters[attr] = t
        elif attr in module._buffers:
            module._buffers[attr] = t

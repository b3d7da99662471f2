"""Removed channels that are not zero where they are consumed: their constant moves into the consumer's bias.

Zeroing a unit's producers silences it only through ops that map 0 to 0. Between producer and consumer a
model may add a constant: timm's StarReLU (`s * relu(x) ** 2 + b`), a hard sigmoid (`relu6(x + 3) / 6`).
There the removed channel reaches the consumer as a constant k, and dropping the consumer's input column
w drops w * k from every output. For a consumer that sees k at every position (a linear layer, an unpadded
ungrouped convolution) that is a constant per output: added to its bias, the pruned model computes exactly
what the unpruned model with the removed channels zeroed computes, which `verify_exactness` then checks.

    reference, constants, unabsorbed = zeroed_run(gm, result, plan, example_inputs, substitute)
    add_to_biases(new, gm, constants, masks)
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ..core.verify import _Substituted, evaluating
from ..graph.keys import ValueKey
from ..ops.reduction import summed_dims
from .groups import CONSUMER, ChannelGroupsResult

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _absorbs_constant(m: nn.Module) -> bool:
    """A consumer that sees a constant input channel as the same constant at every output position (a padded
    convolution sees zeros at the border instead)."""
    if isinstance(m, nn.Linear):
        return True
    if not isinstance(m, CONVS) or m.groups != 1:
        return False
    return m.padding == "valid" if isinstance(m.padding, str) else not any(m.padding)


def _removed(result: ChannelGroupsResult, plan, member_key) -> Dict[object, Tuple[set, set]]:
    """{member_key(member): (the positions the plan removes there, their groups)} over the planned groups'
    members for which member_key gives a key (None: skipped)."""
    out: Dict[object, Tuple[set, set]] = {}
    for gid, kept in plan.items():
        for m in result.groups[gid].members:
            key = member_key(m)
            removed = m.positions[~np.isin(m.units, kept)].tolist() if key is not None else []
            if removed:
                positions, gids = out.setdefault(key, (set(), set()))
                positions.update(removed)
                gids.add(gid)
    return out


def _sites(gm: fx.GraphModule, result: ChannelGroupsResult, plan) -> Dict[str, Tuple[np.ndarray, bool, set]]:
    """consumer module name -> (the input positions the plan removes, whether it can absorb a constant there,
    the groups those positions belong to)."""
    sites = _removed(result, plan, lambda m: m.name.rsplit(".", 1)[0] if m.is_param and m.role == CONSUMER
                     and m.dim == 1 and m.name.endswith(".weight") else None)
    return {k: (np.array(sorted(pos)), _absorbs_constant(gm.get_submodule(k)), gids)
            for k, (pos, gids) in sites.items()}


def _reduction_sites(gm: fx.GraphModule, result: ChannelGroupsResult, plan) -> Dict[str, list]:
    """reduction node name -> [(dim, the positions the plan removes along it, their groups)] for the sums,
    means and p-norms that sum a pruned dim away (ops/reduction.py): removing entries is exact there only if
    they are zero."""
    removed = _removed(result, plan, lambda m: None if m.is_param else (m.key, m.dim))
    sites: Dict[str, list] = {}
    if not removed:
        return sites
    for node in gm.graph.nodes:
        found = summed_dims(node)
        if found is None or not isinstance(found[0], fx.Node):
            continue
        x, dims = found
        for d in dims:
            entry = removed.get((ValueKey.of_node(x), d))
            if entry:
                sites.setdefault(node.name, []).append((d, np.array(sorted(entry[0])), entry[1]))
    return sites


class _Capture(_Substituted):
    """Runs the zeroed model and records, at each consumer, the removed input channels (consumers that can
    absorb a constant) or only their largest magnitude (the others: a diagnosis needs no more, and keeping
    every consumer's removed activations would hold about half the model's activations)."""

    def __init__(self, gm, substitute, sites, reductions):
        super().__init__(gm, substitute)
        self.sites, self.seen, self.largest = sites, {}, {}
        self.reductions, self.reduced = reductions, {}   # reduction node -> largest removed entry it sums

    def run_node(self, n):
        for d, pos, gids in self.reductions.get(n.name, ()):
            x = self.env.get(n.args[0])
            if isinstance(x, torch.Tensor):
                values = x.detach().index_select(d, torch.from_numpy(pos).to(x.device))
                largest = float(values.abs().max()) if values.numel() else 0.0
                if largest > 0:
                    seen = self.reduced.setdefault(n.name, {"groups": set(), "max_abs": 0.0})
                    seen["groups"].update(gids)
                    seen["max_abs"] = max(seen["max_abs"], largest)
        return super().run_node(n)

    def call_module(self, target, args, kwargs):
        if target in self.sites and args and isinstance(args[0], torch.Tensor):
            pos, absorbs, _ = self.sites[target]
            x = args[0]
            dim = x.dim() - 1 if isinstance(self.fetch_attr(target), nn.Linear) else 1
            values = x.detach().index_select(dim, torch.from_numpy(pos).to(x.device))
            if absorbs:
                self.seen.setdefault(target, []).append(values.movedim(dim, -1).reshape(-1, len(pos)))
            elif values.numel():
                self.largest[target] = max(self.largest.get(target, 0.0), float(values.abs().max()))
        return super().call_module(target, args, kwargs)


def zeroed_run(gm: fx.GraphModule, result: ChannelGroupsResult, plan, inputs, substitute: Callable,
               need_outputs: bool = True) -> Tuple[object, Dict[str, Tuple[np.ndarray, torch.Tensor]], Dict[str, dict]]:
    """One run of the zeroed model (`substitute` zeroes the removed producers): (its outputs, the reference
    of the exactness check; {consumer: (removed input positions, their constant values)} where it feeds a
    consumer that can absorb them non-zero constants on removed channels; {consumer: {"groups", "max_abs"}}
    where removed channels reach a consumer that cannot absorb them (a padded or grouped convolution) as
    non-zero values, which no bias can stand in for: what `explain_inexact` names when the exactness check
    fails). Without consumers to look at and `need_outputs` False, nothing runs: (None, {}, {})."""
    sites, reductions = _sites(gm, result, plan), _reduction_sites(gm, result, plan)
    if not sites and not reductions and not need_outputs:
        return None, {}, {}
    capture = _Capture(gm, substitute, sites, reductions)
    with evaluating(gm), torch.no_grad():
        outputs = capture.run(*inputs)
    unabsorbed = {target: {"groups": sorted(sites[target][2]), "max_abs": largest}
                  for target, largest in capture.largest.items() if largest > 0}
    for name, seen in capture.reduced.items():   # a sum over channels that removed non-zero entries would change
        unabsorbed[name] = {"groups": sorted(seen["groups"]), "max_abs": seen["max_abs"], "reduction": True}
    constants = {}
    for target, chunks in capture.seen.items():
        values = torch.cat(chunks).double()
        k = values[0]
        spread = (values - k).abs().amax(0)
        constant = spread <= 1e-6 * (1 + k.abs())
        if len(chunks) == 1 and constant.all() and k.abs().max() > 0:   # called once, the same everywhere
            constants[target] = (sites[target][0], k)
    return outputs, constants, unabsorbed


def _consumer(target: str, info: dict, gm: fx.GraphModule) -> str:
    what = "a sum or mean over them" if info.get("reduction") else type(gm.get_submodule(target)).__name__
    return f"{target} ({what}, groups {info['groups']}, values up to {info['max_abs']:.3g})"


WHY_REDUCED = ("a sum or mean over the channels sees them non-zero (something between subtracts from them: a "
               "hand-written LayerNorm's x - mean), so removing them changes what it computes")


def _why(info: dict) -> str:
    return WHY_REDUCED if info.get("reduction") else WHY_UNABSORBED


WHY_UNABSORBED = ("something between their producers and the consumer adds a constant (a learnable bias or affine "
                  "shift), and a padded or grouped convolution sees it only away from its borders, so no bias "
                  "can stand in for it")


def explain_inexact(unabsorbed: Dict[str, dict], gm: fx.GraphModule) -> str:
    """Why a removal is not exact, when removed channels reach consumers that cannot absorb them."""
    if not unabsorbed:
        return ""
    parts = ", ".join(_consumer(t, info, gm) for t, info in list(unabsorbed.items())[:3])
    return (f"; the removed channels are not zero where they are consumed by {parts}: "
            f"{_why(next(iter(unabsorbed.values())))}. Leave "
            f"those groups unpruned (the pass's ignore= option, naming one of their modules)")


def unabsorbed_reasons(unabsorbed: Dict[str, dict], gm: fx.GraphModule, groups) -> Dict[int, str]:
    """{group id: why it stays whole} for the `groups` whose removed channels reach a consumer that cannot
    absorb them (zeroed_run's third result)."""
    out: Dict[int, str] = {}
    for target, info in unabsorbed.items():
        for g in info["groups"]:
            if g in groups and g not in out:
                out[g] = f"removed channels reach {_consumer(target, info, gm)} as non-zero values: {_why(info)}"
    return out


def add_to_biases(new: fx.GraphModule, old: fx.GraphModule, constants, masks) -> int:
    """Each consumer's new bias += (removed columns of its old weight) @ k, on the output rows it keeps.
    The pruned model gets new bias tensors (the old ones may be the user's). Returns the consumers changed."""
    for target, (pos, k) in constants.items():
        w_old = old.get_submodule(target).weight.detach()
        cols = w_old.index_select(1, torch.from_numpy(pos).to(w_old.device)).double()
        delta = (cols.flatten(2).sum(2) if cols.dim() > 2 else cols) @ k.to(cols.device)
        rows = masks.get((ValueKey.of_param(f"{target}.weight"), 0))
        if rows is not None:
            delta = delta[torch.from_numpy(rows).to(delta.device)]
        m = new.get_submodule(target)
        bias = m.bias.detach() if m.bias is not None else torch.zeros(m.weight.shape[0], dtype=m.weight.dtype,
                                                                     device=m.weight.device)
        m.bias = nn.Parameter((bias.double() + delta).to(m.weight.dtype), requires_grad=m.weight.requires_grad)
    return len(constants)

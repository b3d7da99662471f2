"""Physically removing channels: apply a plan (group -> kept units) to a GraphModule.

Parameters are sliced along every pruned dimension; module attributes (in/out channels, groups,
num_features...) and constants baked into the graph (reshape sizes, slice bounds, split sizes, functional
conv groups, attention head dims) follow through the resize rules of `fxcompress.ops` (registry
`RESIZE`). The new model is built beside the old one (unpruned tensors are shared), then checked: every
node must have the shape the plan predicts, and the output must equal the old model's with the removed
channels zeroed (`verify_exactness`). The old model's tensors are only ever read, the check included: it
may be the user's model (the pruning passes declare `writes_in_place = False`, so the manager does not
copy it first). A group whose removed channels reach a padded or grouped convolution as non-zero values
(a constant added between: no bias can stand in for it, prune/compensate.py) stays whole, and metrics
name it with the reason (`groups_kept_whole`).

    new, metrics = prune(gm, groups_result, {group_id: kept_units, ...}, example_inputs)
"""
from __future__ import annotations

import copy
from typing import Dict, Mapping

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .. import ops  # noqa: F401  (registers every op family's rules)
from ..core.errors import VerificationError
from ..core.verify import as_float64, compare_exact, evaluating, float64_check, run_eval, run_substituted
from ..graph.keys import output_keys
from ..graph.tracing import propagate_shapes
from ..ops.registry import RESIZE
from .compensate import add_to_biases, explain_inexact, unabsorbed_reasons, zeroed_run
from .groups import PRODUCER, ChannelGroupsResult
from .state import PruneState, keep_masks, normalize_plan

MAX_UNABSORBED_ROUNDS = 3   # re-plans leaving groups whole whose removed channels reach a consumer non-zero


def _index(t: torch.Tensor, key, s: PruneState) -> torch.Tensor:
    for d in range(t.dim()):
        m = s.mask(key, d)
        if m is not None and not m.all():
            t = t.index_select(d, torch.from_numpy(np.nonzero(m)[0]).to(t.device))
    return t


def apply_plan(gm: fx.GraphModule, result: ChannelGroupsResult, plan: Mapping, *,
               on_meta: bool = False) -> fx.GraphModule:
    """A new GraphModule with the plan's removed units gone; `gm` is left as it was. Its tensors are gm's
    (those it keeps shared), or with `on_meta` data-less twins on the meta device (shapes only: the probe)."""
    plan = normalize_plan(result, plan)
    masks = keep_masks(result, plan)
    tensors = list(gm.parameters()) + list(gm.buffers())
    memo = {id(t): _meta_twin(t) if on_meta else t for t in tensors}
    new = copy.deepcopy(gm, memo)
    s = PruneState(result, masks)
    names_of: Dict[int, list] = {}
    for name, t in list(new.named_parameters(remove_duplicate=False)) + list(new.named_buffers(remove_duplicate=False)):
        names_of.setdefault(id(t), []).append(name)
    replaced = {}
    for key in {k for k, _ in masks if k.is_param}:
        old = new.get_parameter(key.name) if _is_param(new, key.name) else new.get_buffer(key.name)
        if id(old) in replaced:
            continue
        with torch.no_grad():
            whole = old.detach()
            data = _index(whole, key, s)
            if data is whole:   # index_select makes new tensors (cloning them would double the peak)
                data = data.clone()
        value = nn.Parameter(data, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else data
        replaced[id(old)] = value
        for name in names_of.get(id(old), [key.name]):
            owner, _, attr = name.rpartition(".")
            setattr(new.get_submodule(owner) if owner else new, attr, value)
    new_ids = {id(t) for t in replaced.values()}
    modules = dict(new.named_modules())
    done = set()
    for node in new.graph.nodes:
        if node.op == "call_module" and node.target not in done:
            m = modules[node.target]
            rule = RESIZE.lookup(node, m)
            touched = any(id(t) in new_ids for t in list(m.parameters()) + list(m.buffers())) or \
                s.changed(node) or any(s.changed(a) for a in node.all_input_nodes)
            if rule is not None and touched:
                done.add(node.target)
                replacement = rule(s, node, m)
                if replacement is not None:
                    owner, _, attr = node.target.rpartition(".")
                    setattr(new.get_submodule(owner) if owner else new, attr, replacement)
        elif node.op in ("call_function", "call_method"):
            rule = RESIZE.lookup(node)
            if rule is not None:
                rule(s, node, None)
    new.recompile()
    return new


def _meta_twin(t: torch.Tensor) -> torch.Tensor:
    meta = t.detach().to("meta")
    return nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta


def _is_param(gm, name) -> bool:
    owner, _, attr = name.rpartition(".")
    return attr in (gm.get_submodule(owner) if owner else gm)._parameters


def check_shapes(new: fx.GraphModule, result: ChannelGroupsResult, masks, example_inputs) -> None:
    """Run the pruned graph; every node must have exactly the shape the plan predicts."""
    s = PruneState(result, masks)
    try:
        with evaluating(new):   # new shares the tensors it keeps with the old model: no batch statistics written
            propagate_shapes(new, example_inputs)
    except Exception as e:
        raise VerificationError(f"the pruned model no longer runs: {e}") from e
    for node in new.graph.nodes:
        for key, shape in output_keys(node).items():
            if key in result.shapes and tuple(shape) != s.new_shape(key):
                raise VerificationError(f"after pruning, node {node.name!r} has shape {tuple(shape)}, the plan "
                                        f"predicts {s.new_shape(key)} (was {result.shapes[key]}); an op rule "
                                        f"is wrong for {node.op} {node.target}")


def zero_removed(gm: fx.GraphModule, result: ChannelGroupsResult, plan: Dict[int, np.ndarray], float64: bool):
    """substitute(t) for run_substituted: t with the plan's removed units zeroed where t produces them (weights,
    biases, norm affines), in float64 with `float64`; t itself where it produces none (and not float64)."""
    zeros: Dict[int, list] = {}   # id(tensor) -> [(dim, positions to zero)]
    for gid, kept in plan.items():
        for m in result.groups[gid].members:
            if not m.is_param or m.role != PRODUCER:
                continue
            t = gm.get_parameter(m.name) if _is_param(gm, m.name) else gm.get_buffer(m.name)
            pos = torch.from_numpy(m.positions[~np.isin(m.units, kept)]).to(t.device)
            if len(pos):
                zeros.setdefault(id(t), []).append((m.dim, pos))

    def substitute(t: torch.Tensor) -> torch.Tensor:
        fills = zeros.get(id(t))
        if fills is None:
            return as_float64(t) if float64 else t
        z = t.detach().double() if float64 and t.is_floating_point() else t.detach().clone()
        for dim, pos in fills:
            z.index_fill_(dim, pos, 0.0)
        return z
    return substitute


def zeroed_outputs(gm: fx.GraphModule, result: ChannelGroupsResult, plan: Dict[int, np.ndarray], inputs):
    """The unpruned model's outputs with the removed channels zeroed at their producers (weights, biases,
    norm affines of the removed units). gm's tensors are never written (they may be the user's model's):
    each module runs on zeroed copies of those it holds, made just before it runs (core.verify's
    run_substituted), in float64 inside compare_exact's float64 re-check."""
    with evaluating(gm), torch.no_grad():
        return run_substituted(gm, inputs, zero_removed(gm, result, plan, float64_check()))


def prune(gm: fx.GraphModule, result: ChannelGroupsResult, plan: Mapping, example_inputs,
          verify: bool = True) -> tuple:
    """Apply a plan, check shapes and (with `verify`) exactness. Returns (new gm, metrics)."""
    norm = normalize_plan(result, plan)
    # the reference first: the unpruned model's run needs the most memory for activations, which the
    # pruned model's tensors and runs then reuse rather than adding to
    # one run gives both the reference and the constants reaching removed channels (prune/compensate.py)
    kept_whole = {}
    for round_ in range(MAX_UNABSORBED_ROUNDS + 1):
        reference, constants, unabsorbed = zeroed_run(gm, result, norm, example_inputs,
                                                      zero_removed(gm, result, norm, float64_check()),
                                                      need_outputs=verify)
        # removed channels reaching a padded or grouped conv as non-zero values (a learnable affine shift
        # between: hgnetv2's LearnableAffineBlock): no removal of theirs can be exact, so their groups stay
        # whole, reported, and the rest is pruned (once those are whole, others may show: a few rounds; the
        # last round's plan is the one checked, and explained if it still fails)
        blocked = {g for info in unabsorbed.values() for g in info["groups"]} & set(norm)
        if not blocked or round_ == MAX_UNABSORBED_ROUNDS:
            break
        kept_whole.update(unabsorbed_reasons(unabsorbed, gm, blocked))
        norm = {g: k for g, k in norm.items() if g not in blocked}
    new = apply_plan(gm, result, norm)
    metrics = {"groups_pruned": len(norm),
               "units_removed": int(sum(result.groups[g].size - len(k) for g, k in norm.items())),
               # kept widths by group id: enough to rebuild the plan (magnitude order) and to report it
               "group_widths": {int(g): len(k) for g, k in sorted(norm.items())}}
    if kept_whole:
        metrics["groups_kept_whole"] = kept_whole
    if constants:   # removed channels a constant reaches: moved into the consumers' biases
        metrics["biases_compensated"] = add_to_biases(new, gm, constants, keep_masks(result, norm))
    if verify:
        check_shapes(new, result, keep_masks(result, norm), example_inputs)
        try:
            metrics.update(verify_exactness(gm, new, result, norm, example_inputs, reference))
        except VerificationError as e:
            raise VerificationError(f"{e}{explain_inexact(unabsorbed, gm)}") from e
    return new, metrics


def verify_exactness(gm, new, result, plan, example_inputs, reference=None) -> dict:
    """Pruned output vs the unpruned output with the removed channels zeroed (`reference`: that output on
    example_inputs if already computed; float64 re-check when float32 rounding alone exceeds the
    tolerance: see core.verify.compare_exact)."""
    def expected(x):
        if reference is not None and not float64_check():
            return reference
        return zeroed_outputs(gm, result, plan, x)
    return compare_exact(expected, lambda x: run_eval(new, x), (gm, new), example_inputs,
                         "pruned model vs unpruned model with the removed channels zeroed")

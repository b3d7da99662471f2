"""Physically removing channels: apply a plan (group -> kept units) to a GraphModule.

Parameters are sliced along every pruned dimension; module attributes (in/out channels, groups,
num_features...) follow through one resize rule per module type; constants baked into the graph
(reshape sizes, slice bounds, split sizes, functional conv groups, attention head dims) through one
rewrite rule per function or method. The new model is built beside the old one (unpruned tensors are
shared, never modified), then checked: every node must have the shape the plan predicts, and the
output must equal the old model's with the removed channels zeroed (`verify_exactness`).
"""
from __future__ import annotations

import copy
import math
import operator
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .attention import PrunedMultiheadAttention, window_attention
from .channel_graph import PRODUCER, ChannelGroupsResult, Dim, tensor_metas
from .op_registry import OpRegistry
from .errors import PassError, VerificationError
from .tracing import propagate_shapes
from .verify import compare_exact, run_eval

Plan = Mapping[int, Sequence[int]]


# ============================================================================================ plan
def normalize_plan(result: ChannelGroupsResult, plan: Mapping) -> Dict[int, np.ndarray]:
    """Check a plan and return {group id: sorted kept unit indices}; PassError names the bad entry."""
    out = {}
    for gid, kept in plan.items():
        gid = getattr(gid, "id", gid)
        if not isinstance(gid, (int, np.integer)) or not 0 <= gid < len(result.groups):
            raise PassError(f"plan names group {gid!r}, but the graph has groups 0..{len(result.groups) - 1}")
        group = result.groups[gid]
        kept = np.unique(np.asarray(list(kept), dtype=np.int64))
        if len(kept) == group.size:
            continue
        if not group.prunable:
            raise PassError(f"plan prunes group {gid}, which is fixed ({'; '.join(group.reasons[:2])}); "
                            f"leave it out of the plan")
        if len(kept) == 0:
            raise PassError(f"plan keeps no unit of group {gid} ({group.describe()}); keep at least one")
        if kept.min() < 0 or kept.max() >= group.size:
            raise PassError(f"plan keeps unit {kept.max()} of group {gid}, which has units 0..{group.size - 1}")
        out[int(gid)] = kept
    return out


def keep_masks(result: ChannelGroupsResult, plan: Dict[int, np.ndarray]) -> Dict[Dim, np.ndarray]:
    """(vertex key, dim) -> boolean mask of the positions that stay."""
    masks: Dict[Dim, np.ndarray] = {}
    for gid, kept in plan.items():
        for m in result.groups[gid].members:
            mask = masks.setdefault((m.key, m.dim), np.ones(result.shapes[m.key][m.dim], dtype=bool))
            mask[m.positions[~np.isin(m.units, kept)]] = False
    return masks


class PruneState:
    """What resize and rewrite rules see: old shapes, keep masks and the module being built."""

    def __init__(self, gm: fx.GraphModule, result: ChannelGroupsResult, masks: Dict[Dim, np.ndarray]):
        self.gm, self.result, self.masks = gm, result, masks
        self.attention_dims: Dict[int, tuple] = {}

    def mask(self, key: str, dim: int) -> Optional[np.ndarray]:
        return self.masks.get((key, dim % len(self.result.shapes[key])))

    def new_shape(self, key: str) -> tuple:
        old = self.result.shapes[key]
        return tuple(int(self.masks[(key, d)].sum()) if (key, d) in self.masks else s for d, s in enumerate(old))

    def node_shape(self, node, i: Optional[int] = None) -> Optional[tuple]:
        if not isinstance(node, fx.Node):
            return None
        key = f"n:{node.name}" if i is None else f"n:{node.name}#{i}"
        return self.new_shape(key) if key in self.result.shapes else None

    def changed(self, node, i: Optional[int] = None) -> bool:
        key = f"n:{node.name}" if i is None else f"n:{node.name}#{i}"
        return any((key, d) in self.masks for d in range(len(self.result.shapes.get(key, ()))))

    def kept_count(self, key: str, dim: int, start: int, stop: int) -> int:
        m = self.mask(key, dim)
        return stop - start if m is None else int(m[start:stop].sum())


# ============================================================================================ module resize rules
Resize = Callable[[nn.Module, fx.Node, PruneState], Optional[nn.Module]]
RESIZERS = OpRegistry("module resizing")
REWRITERS = OpRegistry("graph constant rewriting")
MODULE_RESIZERS: Dict[type, Resize] = RESIZERS.modules
NODE_REWRITERS: Dict[object, Callable[[fx.Node, PruneState], None]] = REWRITERS.functions
resizer, rewriter = RESIZERS.module, REWRITERS.function


@resizer(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _resize_conv(m, node, s):
    depthwise = m.groups > 1 and m.groups == m.in_channels
    new_in = s.node_shape(node.args[0])[1]
    if depthwise:
        m.groups = new_in
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    m.in_channels = new_in
    m.out_channels = m.weight.shape[1] * m.groups if transposed else m.weight.shape[0]


@resizer(nn.Linear)
def _resize_linear(m, node, s):
    m.out_features, m.in_features = m.weight.shape


@resizer(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
         nn.InstanceNorm3d)
def _resize_bn(m, node, s):
    m.num_features = s.node_shape(node)[1]


@resizer(nn.GroupNorm)
def _resize_gn(m, node, s):
    per = m.num_channels // m.num_groups
    m.num_channels = s.node_shape(node)[1]
    m.num_groups = m.num_channels // per


@resizer(nn.LayerNorm)
def _resize_ln(m, node, s):
    k = len(m.normalized_shape)
    m.normalized_shape = tuple(s.node_shape(node)[-k:])


@resizer(nn.PReLU)
def _resize_prelu(m, node, s):
    m.num_parameters = m.weight.numel()


@resizer(nn.Embedding)
def _resize_embedding(m, node, s):
    m.embedding_dim = m.weight.shape[1]


@resizer(nn.MultiheadAttention, PrunedMultiheadAttention)
def _resize_mha(m, node, s):
    h = m.num_heads
    rows = m.in_proj_weight.shape[0]
    old_qk = getattr(m, "qk_dim", m.head_dim)
    old_v = getattr(m, "v_dim", m.head_dim)
    new_qk, new_v = s.attention_dims.get(id(m), (old_qk, old_v))
    if isinstance(m, PrunedMultiheadAttention):
        m.qk_dim = m.head_dim = new_qk
        m.v_dim = new_v
        m.embed_dim, m.embed_out = m.in_proj_weight.shape[1], m.out_proj.weight.shape[0]
        m.out_proj.in_features, m.out_proj.out_features = m.out_proj.weight.shape[1], m.out_proj.weight.shape[0]
        return None
    if rows == 3 * m.embed_dim and m.out_proj.weight.shape == (m.embed_dim, m.embed_dim):
        return None
    new = PrunedMultiheadAttention(m.in_proj_weight.shape[1], m.out_proj.weight.shape[0], h, new_qk, new_v,
                                   1.0 / math.sqrt(old_qk), m.batch_first, bias=m.in_proj_bias is not None,
                                   dropout=m.dropout, dtype=m.in_proj_weight.dtype, device=m.in_proj_weight.device)
    new.in_proj_weight = m.in_proj_weight
    new.in_proj_bias = m.in_proj_bias
    new.out_proj.weight, new.out_proj.bias = m.out_proj.weight, m.out_proj.bias
    new.train(m.training)
    return new


# ============================================================================================ graph constant rewrites
def _shape_spec(node: fx.Node, first: int):
    spec = node.args[first:]
    if len(spec) == 1 and isinstance(spec[0], (list, tuple, torch.Size)):
        return list(spec[0]), True
    return list(spec), False


@rewriter("view", "reshape", "expand", torch.reshape)
def _rewrite_shape_args(node, s):
    if not s.changed(node):
        return
    new = s.node_shape(node)
    if node.op == "call_function":
        spec = list(node.args[1] if len(node.args) > 1 else node.kwargs["shape"])
        packed = True
    else:
        spec, packed = _shape_spec(node, 1)
    if len(spec) != len(new):
        return
    spec = [new[i] if isinstance(v, int) and v != -1 else v for i, v in enumerate(spec)]
    if node.op == "call_function":
        node.args = (node.args[0], tuple(spec)) + tuple(node.args[2:])
    else:
        node.args = (node.args[0], tuple(spec)) if packed else (node.args[0], *spec)


@rewriter("unflatten", torch.unflatten)
def _rewrite_unflatten(node, s):
    if not s.changed(node):
        return
    dim, sizes = node.args[1], node.args[2]
    dim = dim % len(s.node_shape(node.args[0]))
    new = s.node_shape(node)
    node.args = (node.args[0], node.args[1], tuple(new[dim:dim + len(sizes)]))


@rewriter(operator.getitem)
def _rewrite_getitem(node, s):
    src, idx = node.args
    if not isinstance(src, fx.Node) or f"n:{src.name}" not in s.result.shapes:
        return
    key = f"n:{src.name}"
    shape = s.result.shapes[key]
    items = idx if isinstance(idx, tuple) else (idx,)
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    new_items, d = [], 0
    for i in items:
        if i is Ellipsis:
            new_items.append(i)
            d += len(shape) - n_real
            continue
        if i is None:
            new_items.append(i)
            continue
        if isinstance(i, slice) and s.mask(key, d) is not None:
            start, stop, _ = i.indices(shape[d])
            i = slice(None if i.start is None else s.kept_count(key, d, 0, start),
                      None if i.stop is None else s.kept_count(key, d, 0, stop), i.step)
        new_items.append(i)
        d += 1
    node.args = (src, tuple(new_items) if isinstance(idx, tuple) else new_items[0])


@rewriter("split", torch.split, "split_with_sizes")
def _rewrite_split(node, s):
    spec = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
    outs = [i for i in range(len(tensor_metas(node)))]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    new = [s.node_shape(node, i)[dim] for i in outs]
    value = new[0] if isinstance(spec, int) else new
    if len(node.args) > 1:
        node.args = (node.args[0], value) + tuple(node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "split_size_or_sections": value}


@rewriter(F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
def _rewrite_conv_groups(node, s):
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    old_in = s.result.shapes[f"n:{node.args[0].name}"][1]
    if groups > 1 and groups == old_in:
        new_in = s.node_shape(node.args[0])[1]
        if len(node.args) > 6:
            node.args = node.args[:6] + (new_in,) + node.args[7:]
        else:
            node.kwargs = {**node.kwargs, "groups": new_in}


def _rewrite_window_attention(node, s):
    """Swin attention: call window_attention with the head dims that are left and the original scale."""
    names = ["input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
             "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training"]
    kw = dict(node.kwargs)
    for i, n in enumerate(names):
        if i < len(node.args):
            kw[n] = node.args[i]
    heads = kw["num_heads"]
    qkv_key = f"n:{kw['qkv_weight'].name}"
    old_rows = s.result.shapes[qkv_key][0]
    old_qk = kw.get("qk_dim", old_rows // 3 // heads)
    old_v = kw.get("v_dim", old_qk)
    m = s.mask(qkv_key, 0)
    if m is None:
        return
    new_qk = int(m[:old_qk]. sum())
    new_v = int(m[2 * heads * old_qk:2 * heads * old_qk + old_v].sum())
    kw["qk_dim"], kw["v_dim"] = new_qk, new_v
    kw.setdefault("scale", 1.0 / math.sqrt(s.result.shapes[f"n:{kw['input'].name}"][-1] // heads))
    node.target = window_attention
    node.args = tuple(kw.pop(n) for n in names[:7])
    node.kwargs = kw


NODE_REWRITERS[window_attention] = _rewrite_window_attention
try:
    from torchvision.models import swin_transformer as _swin
    NODE_REWRITERS[_swin.shifted_window_attention] = _rewrite_window_attention
except ImportError:  # pragma: no cover
    pass


# ============================================================================================ apply
def _index(t: torch.Tensor, key: str, s: PruneState) -> torch.Tensor:
    for d in range(t.dim()):
        m = s.mask(key, d)
        if m is not None and not m.all():
            t = t.index_select(d, torch.from_numpy(np.nonzero(m)[0]).to(t.device))
    return t


def _attention_dims(gm: fx.GraphModule, s: PruneState) -> Dict[int, tuple]:
    """New (qk, v) head dims of every attention module whose packed projection is pruned."""
    dims = {}
    for name, m in gm.named_modules():
        if isinstance(m, (nn.MultiheadAttention, PrunedMultiheadAttention)) and m.in_proj_weight is not None:
            key = f"p:{name}.in_proj_weight"
            mask = s.mask(key, 0) if key in s.result.shapes else None
            if mask is None:
                continue
            qk, v, h = getattr(m, "qk_dim", m.head_dim), getattr(m, "v_dim", m.head_dim), m.num_heads
            dims[id(m)] = (int(mask[:qk].sum()), int(mask[2 * h * qk:2 * h * qk + v].sum()))
    return dims


def apply_plan(gm: fx.GraphModule, result: ChannelGroupsResult, plan: Mapping) -> fx.GraphModule:
    """A new GraphModule with the plan's removed units gone; `gm` is left as it was."""
    plan = normalize_plan(result, plan)
    masks = keep_masks(result, plan)
    tensors = list(gm.parameters()) + list(gm.buffers())
    memo = {id(t): t for t in tensors}
    new = copy.deepcopy(gm, memo)
    s = PruneState(new, result, masks)
    s.attention_dims = _attention_dims(new, s)
    names_of: Dict[int, list] = {}
    for name, t in list(new.named_parameters(remove_duplicate=False)) + list(new.named_buffers(remove_duplicate=False)):
        names_of.setdefault(id(t), []).append(name)
    replaced = {}
    for key in {k for k, _ in masks if k.startswith("p:")}:
        old = new.get_parameter(key[2:]) if _is_param(new, key[2:]) else new.get_buffer(key[2:])
        if id(old) in replaced:
            continue
        with torch.no_grad():
            data = _index(old.detach(), key, s).clone()
        value = nn.Parameter(data, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else data
        replaced[id(old)] = value
        for name in names_of.get(id(old), [key[2:]]):
            owner, _, attr = name.rpartition(".")
            setattr(new.get_submodule(owner) if owner else new, attr, value)
    new_ids = {id(t) for t in replaced.values()}
    modules = dict(new.named_modules())
    done = set()
    for node in new.graph.nodes:
        if node.op == "call_module" and node.target not in done:
            m = modules[node.target]
            fn = next((MODULE_RESIZERS[t] for t in type(m).__mro__ if t in MODULE_RESIZERS), None)
            touched = any(id(t) in new_ids for t in list(m.parameters()) + list(m.buffers())) or \
                s.changed(node) or any(s.changed(a) for a in node.all_input_nodes if f"n:{a.name}" in result.shapes)
            if fn is not None and touched:
                done.add(node.target)
                replacement = fn(m, node, s)
                if replacement is not None:
                    owner, _, attr = node.target.rpartition(".")
                    setattr(new.get_submodule(owner) if owner else new, attr, replacement)
        elif node.op in ("call_function", "call_method"):
            fn = NODE_REWRITERS.get(node.target)
            if fn is not None:
                fn(node, s)
    new.recompile()
    return new


def _is_param(gm, name) -> bool:
    owner, _, attr = name.rpartition(".")
    return attr in (gm.get_submodule(owner) if owner else gm)._parameters


def check_shapes(new: fx.GraphModule, result: ChannelGroupsResult, masks, example_inputs) -> None:
    """Run the pruned graph; every node must have exactly the shape the plan predicts."""
    s = PruneState(new, result, masks)
    try:
        propagate_shapes(new, example_inputs)
    except Exception as e:
        raise VerificationError(f"the pruned model no longer runs: {e}") from e
    for node in new.graph.nodes:
        for key, shape in tensor_metas(node).items():
            if key in result.shapes and tuple(shape) != s.new_shape(key):
                raise VerificationError(f"after pruning, node {node.name!r} has shape {tuple(shape)}, the plan "
                                        f"predicts {s.new_shape(key)} (was {result.shapes[key]}); an op rule "
                                        f"is wrong for {node.op} {node.target}")


def zeroed_outputs(gm: fx.GraphModule, result: ChannelGroupsResult, plan: Dict[int, np.ndarray], inputs):
    """The unpruned model's outputs with the removed channels zeroed at their producers (weights, biases,
    norm affines of the removed units), computed in place and restored afterwards."""
    saved = []
    try:
        with torch.no_grad():
            for gid, kept in plan.items():
                for m in result.groups[gid].members:
                    if not m.is_param or m.role != PRODUCER:
                        continue
                    t = gm.get_parameter(m.name) if _is_param(gm, m.name) else gm.get_buffer(m.name)
                    pos = torch.from_numpy(m.positions[~np.isin(m.units, kept)]).to(t.device)
                    if len(pos) == 0:
                        continue
                    saved.append((t, m.dim, pos, t.index_select(m.dim, pos).clone()))
                    t.index_fill_(m.dim, pos, 0.0)
            was_training = gm.training
            gm.eval()
            out = gm(*inputs)
            gm.train(was_training)
    finally:
        with torch.no_grad():
            for t, d, pos, values in reversed(saved):
                t.index_copy_(d, pos, values)
    return out


def prune(gm: fx.GraphModule, result: ChannelGroupsResult, plan: Mapping, example_inputs,
          verify: bool = True) -> tuple:
    """Apply a plan, check shapes and (with `verify`) exactness. Returns (new gm, metrics)."""
    norm = normalize_plan(result, plan)
    new = apply_plan(gm, result, norm)
    metrics = {"groups_pruned": len(norm),
               "units_removed": int(sum(result.groups[g].size - len(k) for g, k in norm.items()))}
    if verify:
        check_shapes(new, result, keep_masks(result, norm), example_inputs)
        metrics.update(verify_exactness(gm, new, result, norm, example_inputs))
    return new, metrics


def verify_exactness(gm, new, result, plan, example_inputs) -> dict:
    """Pruned output vs the unpruned output with the removed channels zeroed (float64 re-check when
    float32 rounding alone exceeds the tolerance: see verify.compare_exact)."""
    return compare_exact(lambda x: zeroed_outputs(gm, result, plan, x), lambda x: run_eval(new, x), (gm, new),
                         example_inputs, "pruned model vs unpruned model with the removed channels zeroed")


# ============================================================================================ probing the analysis
def _meta_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of gm whose parameters and buffers live on the meta device (shapes only, no memory)."""
    memo = {}
    for t in list(gm.parameters()) + list(gm.buffers()):
        meta = t.detach().to("meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(gm, memo)


def _first_mismatch(gm: fx.GraphModule, result: ChannelGroupsResult, masks, inputs) -> Optional[fx.Node]:
    """Run gm on meta tensors; the first node that fails or whose shape differs from the prediction."""
    s = PruneState(gm, result, masks)

    class Probe(fx.Interpreter):
        failed = None

        def run_node(self, n):
            try:
                out = super().run_node(n)
            except Exception:
                Probe.failed = n
                raise
            items = {f"n:{n.name}": out} if isinstance(out, torch.Tensor) else \
                {f"n:{n.name}#{i}": v for i, v in enumerate(out)} if isinstance(out, (tuple, list)) else {}
            for key, value in items.items():
                if isinstance(value, torch.Tensor) and key in result.shapes and \
                        tuple(value.shape) != s.new_shape(key):
                    Probe.failed = n
                    raise RuntimeError("shape mismatch")
            return out
    try:
        with torch.no_grad():
            Probe(gm).run(*inputs)
    except Exception:
        return Probe.failed or next(iter(gm.graph.nodes))
    return None


SIZE_ARG_OPS = {"view", "reshape", "expand", "new_zeros", "new_ones", "new_empty", "new_full", "repeat",
                torch.reshape, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange}


def _has_dynamic_size(node: fx.Node) -> bool:
    """A shape argument computed in the graph (from some tensor's size), not a constant."""
    if node.op not in ("call_method", "call_function") or node.target not in SIZE_ARG_OPS:
        return False
    args = list(node.args[1:] if node.op == "call_method" or node.target is torch.reshape else node.args)
    flat = [a for x in args for a in (x if isinstance(x, (list, tuple)) else [x])]
    return any(isinstance(a, fx.Node) for a in flat)


def probe_groups(gm: fx.GraphModule, result: ChannelGroupsResult, example_inputs, max_rounds: int = 30) -> int:
    """Check the analysis' predictions symbolically: remove one unit of every prunable group in a meta copy
    of the model and run it on meta tensors. A node that then fails or changes shape unpredictably (a size
    computed from another tensor's shape, say) fixes the groups that reach it. Returns how many groups
    were fixed; does nothing when the model does not run on meta tensors at all."""
    if not any(_has_dynamic_size(n) for n in gm.graph.nodes):
        return 0  # every size in the graph follows its tensors: the rules' predictions are complete
    inputs = tuple(t.to("meta") for t in example_inputs)
    base = _meta_copy(gm)
    if _first_mismatch(base, result, {}, inputs) is not None:
        return 0
    fixed = 0
    for _ in range(max_rounds):
        plan = {g.id: np.arange(1, g.size) for g in result.prunable() if g.size > 1}
        if not plan:
            return fixed
        new = apply_plan(base, result, plan)
        node = _first_mismatch(new, result, keep_masks(result, plan), inputs)
        if node is None:
            return fixed
        keys = {f"n:{node.name}"} | {f"n:{a.name}" for a in node.all_input_nodes}
        culprits = [g for g in result.prunable() if g.id in plan and
                    any(m.key.split("#")[0] in keys for m in g.members)]
        if not culprits:  # cannot tell which group: fix them all rather than guess
            culprits = [result.groups[g] for g in plan]
        for g in culprits:
            g.prunable = False
            g.reasons = [f"pruning it breaks {node.op} {getattr(node.target, '__name__', node.target)} "
                         f"({node.name}): a size there is computed from another tensor"]
        fixed += len(culprits)
    return fixed

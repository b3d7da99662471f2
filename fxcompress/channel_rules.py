"""How each op couples channels: one small rule per module type, function or method, looked up by target.

A rule receives a `RuleCtx` for one fx node and declares couplings between dimensions of the node's
tensor inputs, outputs and parameters. Every dimension the rule leaves untouched is blocked (it cannot
be pruned through this op), so an op with no rule blocks everything it touches: never a wrong prune.
"""
from __future__ import annotations

import builtins
import operator
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .attention import PrunedMultiheadAttention, window_attention
from .channel_graph import CONSUMER, PRODUCER, ChannelGraphBuilder, tensor_metas
from .op_registry import OpRegistry

Rule = Callable[["RuleCtx"], None]
COUPLING = OpRegistry("channel coupling")
MODULE_RULES: Dict[type, Rule] = COUPLING.modules
FUNCTION_RULES: Dict[object, Rule] = COUPLING.functions
METHOD_RULES: Dict[str, Rule] = COUPLING.methods
module_rule, function_rule, method_rule = COUPLING.module, COUPLING.function, COUPLING.method
# ops that read only a tensor's metadata (shape, rank): they constrain no channel
PASSIVE_FUNCTIONS = {builtins.getattr, torch._assert, operator.eq, operator.ne, operator.floordiv, operator.mul,
                     operator.add, operator.sub, operator.getitem, builtins.len}
PASSIVE_METHODS = {"size", "dim", "numel"}


def op_name(node: fx.Node, module: Optional[nn.Module] = None) -> str:
    if node.op == "call_module":
        return f"{type(module).__name__} ({node.target})"
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__qualname__", getattr(t, "__name__", str(t)))


class RuleCtx:
    """What a rule sees of one node, and the verbs it uses to declare couplings."""

    def __init__(self, b: ChannelGraphBuilder, node: fx.Node, module: Optional[nn.Module] = None):
        self.b, self.node, self.module = b, node, module
        self.keys: List[str] = []  # every vertex this node touches (checked for untouched dims afterwards)
        self.local: set = set()     # (key, dim) this rule coupled or blocked
        self.name = op_name(node, module)

    # ---- lookups ----------------------------------------------------------------------------------
    def _track(self, key):
        if key is not None and key not in self.keys:
            self.keys.append(key)
        return key

    def out(self, i: Optional[int] = None) -> Optional[str]:
        key = f"n:{self.node.name}" if i is None else f"n:{self.node.name}#{i}"
        return self._track(key) if key in self.b.base else None

    def key_of(self, value) -> Optional[str]:
        if isinstance(value, fx.Node) and f"n:{value.name}" in self.b.base:
            return self._track(f"n:{value.name}")
        return None

    def raw(self, i: int, name: Optional[str] = None, default=None):
        if i < len(self.node.args):
            return self.node.args[i]
        return self.node.kwargs.get(name, default) if name else default

    def arg(self, i: int, name: Optional[str] = None) -> Optional[str]:
        return self.key_of(self.raw(i, name))

    def tensor_args(self) -> List[str]:
        keys = []
        for a in list(self.node.args) + list(self.node.kwargs.values()):
            for v in (a if isinstance(a, (list, tuple)) else [a]):
                k = self.key_of(v)
                if k is not None and k not in keys:
                    keys.append(k)
        return keys

    def param(self, attr: str) -> Optional[str]:
        t = self.module
        for part in attr.split("."):
            t = getattr(t, part, None)
        if not isinstance(t, torch.Tensor):
            return None
        key = self.b.param_key(t)
        if key is not None:
            self.b.param_users.setdefault(key, []).append(self.node)
        return self._track(key)

    def shape(self, key: str) -> tuple:
        return self.b.shapes[key]

    def rank(self, key: str) -> int:
        return len(self.b.shapes[key])

    # ---- verbs ------------------------------------------------------------------------------------
    def same(self, a, da, b, db, kind="same") -> None:
        if a is None or b is None:
            return
        sa, sb = self.b.shapes[a], self.b.shapes[b]
        da, db = da % len(sa), db % len(sb)
        if sa[da] != sb[db]:
            self.block(a, da, f"{self.name}: sizes differ")
            self.block(b, db, f"{self.name}: sizes differ")
            return
        self.b.couple_whole(a, da, b, db, kind)
        self.local.add((a, da))
        self.local.add((b, db))

    def couple(self, a, da, b, db, pa, pb, kind="map") -> None:
        if a is None or b is None:
            return
        da, db = da % self.rank(a), db % self.rank(b)
        self.b.couple(a, da, b, db, pa, pb, kind)
        self.local.update({(a, da), (b, db)})

    def role(self, key, dim, role) -> None:
        if key is not None:  # a get_attr node stands for its parameter
            self.b.roles[(self.b.attr_of.get(key, key), dim % self.rank(key))] = role

    def block(self, key, dim, reason) -> None:
        if key is not None:
            self.b.block(key, dim % self.rank(key), reason)
            self.local.add((key, dim % self.rank(key)))

    def block_all(self, key, reason) -> None:
        if key is not None:
            for d in range(self.rank(key)):
                self.block(key, d, reason)

    def broadcast(self, src, dst) -> None:
        """Couple dims of `src` with `dst`, aligned from the right; broadcast (size-1) dims are left alone."""
        if src is None or dst is None:
            return
        rs, rd = self.rank(src), self.rank(dst)
        for d in range(rd):
            ds = d - (rd - rs)
            if ds >= 0 and self.shape(src)[ds] == self.shape(dst)[d]:
                self.same(src, ds, dst, d)

    def identity(self, a, b, skip=()) -> None:
        """Couple every dim of a with the same dim of b except those in `skip`."""
        if a is None or b is None:
            return
        skip = {s % self.rank(a) for s in skip}
        for d in range(min(self.rank(a), self.rank(b))):
            if d not in skip:
                self.same(a, d, b, d)


# ============================================================================================ driver
def build_channel_graph(gm: fx.GraphModule) -> ChannelGraphBuilder:
    """Apply the rules to every node of a shape-annotated graph (see tracing.propagate_shapes)."""
    b = ChannelGraphBuilder(gm)
    for node in gm.graph.nodes:
        for key, shape in tensor_metas(node).items():
            b.add_vertex(key, shape)
            b.node_of_key[key] = node
    for node in gm.graph.nodes:
        module = b.modules.get(node.target) if node.op == "call_module" else None
        r = RuleCtx(b, node, module)
        if node.op == "placeholder":
            r.block_all(r.out(), "model input")
            continue
        if node.op == "output":
            for k in r.tensor_args():
                r.block_all(k, "model output")
            _flatten_output_keys(r, node.args[0])
            continue
        if node.op == "get_attr":
            _get_attr(r)
            continue
        rule = _lookup(node, module)
        outs = [k for k in tensor_metas(node)]
        ins = r.tensor_args()
        r.keys = []
        if rule is None:
            if not outs and _passive(node):
                continue
            if not outs and not ins:
                continue
            reason = f"op not understood: {r.name}"
            for k in outs + ins:
                b.block_all(k, reason)
            if module is not None:
                for t in module_tensors(module):
                    k = b.param_key(t)
                    if k:
                        b.block_all(k, reason)
            continue
        try:
            rule(r)
        except Exception as e:  # a rule that cannot handle this instance blocks instead of guessing
            reason = f"{r.name}: rule failed ({type(e).__name__}: {e})"
            for k in set(outs + ins + r.keys):
                b.block_all(k, reason)
            continue
        _block_untouched(r, outs, ins)
    return b


def _flatten_output_keys(r: RuleCtx, value) -> None:
    if isinstance(value, (list, tuple)):
        for v in value:
            _flatten_output_keys(r, v)
    elif isinstance(value, dict):
        for v in value.values():
            _flatten_output_keys(r, v)
    elif isinstance(value, fx.Node):
        for k in tensor_metas(value):
            r.b.block_all(k, "model output")


def _lookup(node: fx.Node, module) -> Optional[Rule]:
    return COUPLING.lookup(node, module)


def _passive(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in PASSIVE_FUNCTIONS
    return node.op == "call_method" and node.target in PASSIVE_METHODS


def _block_untouched(r: RuleCtx, outs, ins) -> None:
    keys = set(outs) | set(ins) | set(r.keys)
    if r.module is not None:
        for t in module_tensors(r.module):
            k = r.b.param_key(t)
            if k:
                keys.add(k)
    for k in keys:
        for d in range(len(r.b.shapes[k])):
            if (k, d) not in r.local:
                r.b.block(k, d, f"{r.name}: dim {d} not carried through")


def module_tensors(module: nn.Module) -> List[torch.Tensor]:
    """Parameters and buffers of a module and its children (a leaf module's own dicts, read directly:
    named_parameters() costs more than the rule that uses it)."""
    if not module._modules:
        return [t for store in (module._parameters, module._buffers) for t in store.values() if t is not None]
    return list(module.parameters()) + list(module.buffers())


def _get_attr(r: RuleCtx) -> None:
    out = r.out()
    if out is None:
        return
    t = r.b.gm
    for part in r.node.target.split("."):
        t = getattr(t, part)
    p = r.b.param_key(t) if isinstance(t, torch.Tensor) else None
    if p is None:
        r.block_all(out, f"constant {r.node.target}")
        return
    r.b.param_users.setdefault(p, []).extend(r.node.users)
    r.b.attr_of[out] = p
    for d in range(r.rank(out)):
        r.b.couple(out, d, p, d, kind="attr")


# ============================================================================================ rules
# ---- element-wise ops and activations: every dim of every tensor input (broadcast) is the output's
ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Hardsigmoid, nn.Hardswish, nn.Tanh,
                       nn.LeakyReLU, nn.ELU, nn.Mish, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                       nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Hardtanh, nn.CELU, nn.SELU)
ELEMENTWISE_FUNCTIONS = (operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd,
                         operator.imul, torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid,
                         torch.tanh, torch.neg, torch.exp, torch.clamp, torch.clip, torch.maximum, torch.minimum,
                         torch.where, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid,
                         F.tanh, F.leaky_relu, F.elu, F.mish, F.dropout, F.dropout1d, F.dropout2d, F.hardtanh,
                         F.softplus, torch.nn.functional.selu)
ELEMENTWISE_METHODS = ("add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "relu", "relu_", "sigmoid",
                       "sigmoid_", "tanh", "clamp", "clamp_", "contiguous", "clone", "detach", "float", "to",
                       "type", "exp", "neg", "abs", "sqrt", "pow", "__add__", "__mul__", "masked_fill")


@module_rule(*ELEMENTWISE_MODULES)
@function_rule(*ELEMENTWISE_FUNCTIONS)
@method_rule(*ELEMENTWISE_METHODS)
def elementwise(r: RuleCtx) -> None:
    out = r.out()
    for k in r.tensor_args():
        r.broadcast(k, out)


try:  # torchvision's wrapped leaf functions
    from torchvision.ops.stochastic_depth import stochastic_depth as _stochastic_depth
    FUNCTION_RULES[_stochastic_depth] = elementwise  # per-sample scaling: channels pass through unchanged
except ImportError:  # pragma: no cover
    pass


# ---- convolutions
def _conv_channels(r: RuleCtx, x, y, w, b, groups: int, transposed: bool) -> None:
    """Channel couplings of a (transposed) convolution with weight w (conv: [Cout, Cin/g, k..];
    transposed: [Cin, Cout/g, k..]). Depthwise convs prune whole groups (groups shrinks);
    other grouped convs prune the same index inside every group (groups is kept)."""
    r.same(x, 0, y, 0)
    cin, cout = r.shape(x)[1], r.shape(y)[1]
    w_in, w_out = (0, 1) if transposed else (1, 0)
    r.role(w, w_out, PRODUCER)
    r.role(w, w_in, CONSUMER)
    if b is not None:
        r.same(y, 1, b, 0)
        r.role(b, 0, PRODUCER)
    if transposed:
        r.same(x, 1, w, 0)
    else:
        r.same(y, 1, w, 0)
    if groups == 1:
        r.same(x, 1, w, w_in) if not transposed else r.same(y, 1, w, w_out)
        return
    cin_g, cout_g = cin // groups, cout // groups
    if cin_g == 1:  # depthwise: input channel c feeds output channels [c*k, (c+1)*k)
        k = cout_g
        r.couple(x, 1, y, 1, np.repeat(np.arange(cin), k), np.arange(cout), kind="depthwise")
        if transposed:  # weight [Cin, k, ...]: whole rows go with their group, the multiplier dim stays
            r.block(w, 1, "depthwise multiplier dim")
        return
    # grouped: position j of every group goes together, so every group keeps the same width
    r.couple(x, 1, x, 1, np.arange(cin), np.arange(cin) % cin_g, kind="group")
    r.couple(y, 1, y, 1, np.arange(cout), np.arange(cout) % cout_g, kind="group")
    if transposed:
        r.couple(y, 1, w, 1, np.arange(cout), np.arange(cout) % cout_g)
    else:
        r.couple(x, 1, w, 1, np.arange(cin), np.arange(cin) % cin_g)


@module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_module(r: RuleCtx) -> None:
    _conv_channels(r, r.arg(0, "input"), r.out(), r.param("weight"), r.param("bias"), r.module.groups, False)


@module_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_transpose_module(r: RuleCtx) -> None:
    if len(r.node.args) > 1 or "output_size" in r.node.kwargs:
        raise ValueError("explicit output_size")
    _conv_channels(r, r.arg(0, "input"), r.out(), r.param("weight"), r.param("bias"), r.module.groups, True)


def _functional_conv(transposed: bool) -> Rule:
    """F.conv*/F.conv_transpose* with the weight (and bias) as graph values."""
    def rule(r: RuleCtx) -> None:
        groups = r.raw(6, "groups", 1)
        if isinstance(groups, fx.Node):
            raise ValueError("dynamic groups")
        _conv_channels(r, r.arg(0, "input"), r.out(), r.arg(1, "weight"), r.arg(2, "bias"), groups, transposed)
    return rule


conv_function = function_rule(F.conv1d, F.conv2d, F.conv3d)(_functional_conv(False))
conv_transpose_function = function_rule(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)(
    _functional_conv(True))


# ---- linear layers
def _linear(r: RuleCtx, x, y, w, b) -> None:
    for d in range(r.rank(y) - 1):
        r.same(x, d, y, d)
    r.same(x, -1, w, 1)
    r.same(y, -1, w, 0)
    r.same(y, -1, b, 0)
    r.role(b, 0, PRODUCER)
    r.role(w, 0, PRODUCER)
    r.role(w, 1, CONSUMER)


@module_rule(nn.Linear)
def linear_module(r: RuleCtx) -> None:
    _linear(r, r.arg(0, "input"), r.out(), r.param("weight"), r.param("bias"))


@function_rule(F.linear)
def linear_function(r: RuleCtx) -> None:
    _linear(r, r.arg(0, "input"), r.out(), r.arg(1, "weight"), r.arg(2, "bias"))


# ---- normalisation
@module_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
             nn.InstanceNorm3d, nn.SyncBatchNorm)
def batch_norm(r: RuleCtx) -> None:
    x, y = r.arg(0, "input"), r.out()
    r.identity(x, y)
    for name in ("weight", "bias", "running_mean", "running_var"):
        p = r.param(name)
        r.same(y, 1, p, 0)
        r.role(p, 0, PRODUCER if name != "running_var" else CONSUMER)


@module_rule(nn.GroupNorm)
def group_norm(r: RuleCtx) -> None:
    """Statistics are per group: only whole groups may go (num_groups shrinks)."""
    x, y = r.arg(0, "input"), r.out()
    r.identity(x, y)
    c = r.shape(y)[1]
    per = c // r.module.num_groups
    r.couple(y, 1, y, 1, np.arange(c), (np.arange(c) // per) * per, kind="norm group")
    for name in ("weight", "bias"):
        p = r.param(name)
        r.same(y, 1, p, 0)
        r.role(p, 0, PRODUCER)


def _layer_norm(r: RuleCtx, x, y, nshape, params) -> None:
    r.identity(x, y)
    k = len(nshape)
    for p in params:
        for d in range(k):
            r.same(y, r.rank(y) - k + d, p, d)
            r.role(p, d, PRODUCER)
    for d in range(r.rank(y) - k, r.rank(y)):
        r.block(y, d, f"normalised by {r.name}: removing channels would change its statistics")


@module_rule(nn.LayerNorm)
def layer_norm_module(r: RuleCtx) -> None:
    _layer_norm(r, r.arg(0, "input"), r.out(), r.module.normalized_shape, [r.param("weight"), r.param("bias")])


@function_rule(F.layer_norm)
def layer_norm_function(r: RuleCtx) -> None:
    _layer_norm(r, r.arg(0, "input"), r.out(), tuple(r.raw(1, "normalized_shape")),
                [r.arg(2, "weight"), r.arg(3, "bias")])


@module_rule(nn.PReLU)
def prelu(r: RuleCtx) -> None:
    x, y = r.arg(0, "input"), r.out()
    r.identity(x, y)
    w = r.param("weight")
    if r.shape(w)[0] > 1:
        r.same(y, 1, w, 0)
        r.role(w, 0, PRODUCER)


@module_rule(nn.Embedding)
def embedding(r: RuleCtx) -> None:
    x, y, w = r.arg(0, "input"), r.out(), r.param("weight")
    for d in range(r.rank(x)):
        r.same(x, d, y, d)
    r.same(y, -1, w, 1)
    r.role(w, 1, PRODUCER)
    r.block(w, 0, "embedding vocabulary")


# ---- pooling: batch and channel dims pass, spatial dims are the op's business
def _pool(r: RuleCtx, spatial: int) -> None:
    x, y = r.arg(0, "input"), r.out()
    if y is None:
        raise ValueError("pooling with indices")
    for d in range(r.rank(y) - spatial):
        r.same(x, d, y, d)


for _n, _types, _fns in ((1, (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d),
                          (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d)),
                         (2, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d),
                          (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                           torch._C._nn.avg_pool2d)),
                         (3, (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d),
                          (F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d))):
    def _make(n):
        return lambda r: _pool(r, n)
    for _t in _types:
        MODULE_RULES[_t] = _make(_n)
    for _f in _fns:
        FUNCTION_RULES[_f] = _make(_n)


@method_rule("mean", "sum", "amax", "max")
@function_rule(torch.mean, torch.sum, torch.amax)
def reduction(r: RuleCtx) -> None:
    """Reduced dims stop here; the others pass. (A mean over channels would change with pruning.)"""
    x, y = r.arg(0, "input"), r.out()
    if y is None:
        raise ValueError("non-tensor result")
    dims = r.raw(1, "dim")
    keepdim = r.raw(2, "keepdim", False)
    if dims is None:
        return
    dims = {d % r.rank(x) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    j = 0
    for d in range(r.rank(x)):
        if d in dims:
            j += 1 if keepdim else 0
            continue
        r.same(x, d, y, j)
        j += 1


@function_rule(F.softmax, torch.softmax, F.log_softmax, torch.log_softmax)
@method_rule("softmax", "log_softmax")
def softmax(r: RuleCtx) -> None:
    x, y = r.arg(0, "input"), r.out()
    dim = r.raw(1, "dim")
    r.identity(x, y, skip=(dim,))
    r.block(y, dim, f"{r.name}: normalised over this dim")


@function_rule(F.normalize)
def normalize(r: RuleCtx) -> None:
    # a zero entry adds nothing to the norm, so channels along the normalised dim may go too
    r.identity(r.arg(0, "input"), r.out())


# ---- shape ops
def _align_blocks(sin: Sequence[int], sout: Sequence[int]):
    """Split a reshape into blocks of consecutive input/output dims with equal products."""
    blocks, i, j = [], 0, 0
    while i < len(sin) or j < len(sout):
        ins, outs, pi, pj = [], [], 1, 1
        if i < len(sin):
            ins.append(i); pi *= sin[i]; i += 1
        if j < len(sout):
            outs.append(j); pj *= sout[j]; j += 1
        while pi != pj:
            if pi < pj and i < len(sin):
                ins.append(i); pi *= sin[i]; i += 1
            elif pj < pi and j < len(sout):
                outs.append(j); pj *= sout[j]; j += 1
            else:
                return None
        blocks.append((ins, outs))
    return blocks


def _index_in_block(shape, dims, d):
    """For flat positions p of the block `dims`, the index along dim d."""
    total = int(np.prod([shape[k] for k in dims]))
    stride = int(np.prod([shape[k] for k in dims[dims.index(d) + 1:]]))
    return (np.arange(total) // stride) % shape[d]


def reshape_between(r: RuleCtx, x, y) -> None:
    """Dims kept whole pass through; where dims fold (flatten, view), the flat dim follows the largest
    folded dim (the channels in NCHW -> N(CHW)), the other folded dims stop here."""
    sin, sout = r.shape(x), r.shape(y)
    blocks = _align_blocks(sin, sout)
    if blocks is None:
        raise ValueError(f"cannot align {sin} -> {sout}")
    for ins, outs in blocks:
        ins_nt = [d for d in ins if sin[d] != 1]
        outs_nt = [d for d in outs if sout[d] != 1]
        if not ins_nt or not outs_nt:
            continue
        if len(ins_nt) == 1 and len(outs_nt) == 1:
            r.same(x, ins_nt[0], y, outs_nt[0], kind="reshape")
            continue
        di = max(ins_nt, key=lambda d: (sin[d], -d))
        do = max(outs_nt, key=lambda d: (sout[d], -d))
        r.couple(x, di, y, do, _index_in_block(sin, ins, di), _index_in_block(sout, outs, do), kind="fold")


@method_rule("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as")
@function_rule(torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten)
@module_rule(nn.Flatten, nn.Unflatten)
def reshape(r: RuleCtx) -> None:
    reshape_between(r, r.arg(0, "input"), r.out())


@method_rule("permute")
@function_rule(torch.permute)
def permute(r: RuleCtx) -> None:
    x, y = r.arg(0, "input"), r.out()
    dims = r.node.args[1:] if r.node.op == "call_method" else [r.raw(1, "dims")]
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    if not dims:
        dims = r.node.kwargs.get("dims")
    for j, d in enumerate(dims):
        r.same(x, d, y, j)


@method_rule("transpose", "swapaxes")
@function_rule(torch.transpose, torch.swapaxes)
def transpose(r: RuleCtx) -> None:
    x, y = r.arg(0, "input"), r.out()
    a, b = r.raw(1, "dim0"), r.raw(2, "dim1")
    a, b = a % r.rank(x), b % r.rank(x)
    perm = list(range(r.rank(x)))
    perm[a], perm[b] = perm[b], perm[a]
    for j, d in enumerate(perm):
        r.same(x, d, y, j)


@method_rule("expand", "expand_as")
def expand(r: RuleCtx) -> None:
    r.broadcast(r.arg(0), r.out())


@function_rule(torch.cat, torch.concat)
def cat(r: RuleCtx) -> None:
    tensors = r.raw(0, "tensors")
    dim = r.raw(1, "dim", 0)
    y = r.out()
    dim = dim % r.rank(y)
    offset = 0
    for t in tensors:
        k = r.key_of(t)
        if k is None:
            raise ValueError("non-tensor in cat")
        n = r.shape(k)[dim]
        for d in range(r.rank(y)):
            if d == dim:
                r.couple(k, d, y, d, np.arange(n), offset + np.arange(n), kind="cat")
            else:
                r.same(k, d, y, d)
        offset += n


def _split_outputs(r: RuleCtx, x, sizes, dim, equal: bool) -> None:
    dim = dim % r.rank(x)
    offset = 0
    for i, n in enumerate(sizes):
        y = r.out(i)
        for d in range(r.rank(x)):
            if d == dim:
                r.couple(x, d, y, d, offset + np.arange(n), np.arange(n), kind="split")
            else:
                r.same(x, d, y, d)
        offset += n
    if equal and len(sizes) > 1:  # equal pieces stay equal after pruning: position j goes in every piece
        total = offset
        r.couple(x, dim, x, dim, np.arange(total), np.arange(total) % sizes[0], kind="equal split")


@method_rule("split", "chunk", "split_with_sizes", "unbind")
@function_rule(torch.split, torch.chunk, torch.unbind)
def split(r: RuleCtx) -> None:
    x = r.arg(0, "input")
    name = r.node.target if isinstance(r.node.target, str) else r.node.target.__name__
    n_out = len([k for k in tensor_metas(r.node)])
    if name == "unbind":
        raise ValueError("unbind removes the dim")
    spec = r.raw(1, "chunks" if name == "chunk" else "split_size_or_sections")
    if spec is None:
        spec = r.raw(1, "split_size")
    dim = r.raw(2, "dim", 0)
    size = r.shape(x)[dim]
    if isinstance(spec, int):
        piece = -(-size // spec) if name == "chunk" else spec
        sizes = [min(piece, size - i * piece) for i in range(n_out)]
        if size % piece:
            raise ValueError("uneven split")
        _split_outputs(r, x, sizes, dim, equal=True)
    else:
        _split_outputs(r, x, list(spec), dim, equal=False)


@function_rule(operator.getitem)
def getitem(r: RuleCtx) -> None:
    src, idx = r.node.args
    y = r.out()
    if y is None:
        return
    if isinstance(src, fx.Node) and f"n:{src.name}#{idx}" in r.b.base and isinstance(idx, int):
        r.identity(r._track(f"n:{src.name}#{idx}"), y)
        return
    x = r.key_of(src)
    if x is None:
        raise ValueError("indexing a non-tensor")
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in idx):
        raise ValueError("advanced or dynamic indexing")
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded = []
    for i in idx:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (r.rank(x) - n_real))
        else:
            expanded.append(i)
    expanded.extend([slice(None)] * (r.rank(x) - sum(1 for i in expanded if i is not None)))
    dx = dy = 0
    for i in expanded:
        if i is None:
            dy += 1
        elif isinstance(i, int):
            dx += 1
        else:
            pos = np.arange(r.shape(x)[dx])[i]
            if i.step not in (None, 1):
                pass  # strided slices stop here (their constants cannot follow pruning)
            elif len(pos) == r.shape(x)[dx]:
                r.same(x, dx, y, dy)
            else:
                r.couple(x, dx, y, dy, pos, np.arange(len(pos)), kind="slice")
            dx += 1
            dy += 1


# ---- matrix products and attention
@function_rule(torch.matmul, operator.matmul, torch.bmm)
@method_rule("matmul", "bmm", "__matmul__")
def matmul(r: RuleCtx) -> None:
    a, b, y = r.arg(0), r.arg(1), r.out()
    if r.rank(a) < 2 or r.rank(b) < 2:
        raise ValueError("vector operand")
    r.same(a, -1, b, -2, kind="contract")
    r.same(a, -2, y, -2)
    r.same(b, -1, y, -1)
    ry = r.rank(y)
    for k in (a, b):
        rk = r.rank(k)
        for d in range(rk - 2):
            dy = d + (ry - rk)
            if r.shape(k)[d] == r.shape(y)[dy]:
                r.same(k, d, y, dy)


@function_rule(torch.einsum, torch.functional.einsum)
def einsum(r: RuleCtx) -> None:
    eq = r.node.args[0].replace(" ", "")
    operands = r.node.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    if "..." in eq or "->" not in eq:
        raise ValueError("implicit or ellipsis einsum")
    lhs, out = eq.split("->")
    letters: Dict[str, list] = {}
    for spec, op in zip(lhs.split(","), operands):
        k = r.key_of(op)
        for d, c in enumerate(spec):
            letters.setdefault(c, []).append((k, d))
    y = r.out()
    for d, c in enumerate(out):
        letters.setdefault(c, []).append((y, d))
    for dims in letters.values():
        first = dims[0]
        for other in dims[1:]:
            r.same(first[0], first[1], other[0], other[1])


def attention_heads(r: RuleCtx, x, y, qkv_w, qkv_b, out_w, out_b, heads: int, qk: int, v: int) -> None:
    """Packed q/k/v projection (rows [q | k | v], each heads x head-dim) and output projection: the same
    q/k head-dim index goes in every head of q and k; the same v index in every head of v and the
    matching output-projection column. num_heads stays, head dims shrink."""
    for d in range(r.rank(y) - 1):
        r.same(x, d, y, d)
    r.same(x, -1, qkv_w, 1)
    r.role(qkv_w, 0, PRODUCER)
    r.role(qkv_w, 1, CONSUMER)
    h = np.arange(heads)[:, None]
    qk_j, v_j = np.arange(qk)[None, :], np.arange(v)[None, :]
    q_rows = (h * qk + qk_j).ravel()
    k_rows = heads * qk + q_rows
    v_rows = 2 * heads * qk + (h * v + v_j).ravel()
    first_q = np.tile(np.arange(qk), heads)
    first_v = 2 * heads * qk + np.tile(np.arange(v), heads)
    r.couple(qkv_w, 0, qkv_w, 0, np.concatenate([q_rows, k_rows]), np.concatenate([first_q, first_q]),
             kind="q/k head dim")
    r.couple(qkv_w, 0, qkv_w, 0, v_rows, first_v, kind="v head dim")
    r.couple(qkv_w, 0, out_w, 1, v_rows, np.arange(heads * v), kind="v -> out proj")
    r.role(out_w, 1, CONSUMER)
    r.role(out_w, 0, PRODUCER)
    if qkv_b is not None:
        r.same(qkv_w, 0, qkv_b, 0)
        r.role(qkv_b, 0, PRODUCER)
    r.same(y, -1, out_w, 0)
    if out_b is not None:
        r.same(y, -1, out_b, 0)
        r.role(out_b, 0, PRODUCER)


@module_rule(nn.MultiheadAttention)
def multihead_attention(r: RuleCtx) -> None:
    m = r.module
    q, k, v = r.arg(0, "query"), r.arg(1, "key"), r.arg(2, "value")
    if not m._qkv_same_embed_dim or m.bias_k is not None or not (q == k == v):
        raise ValueError("only packed self-attention is handled")
    if r.raw(3, "key_padding_mask") is not None or r.raw(5, "attn_mask") is not None:
        raise ValueError("attention masks")
    y = r.out(0)
    if not m.batch_first:
        r.same(q, 0, y, 0)
    qk, v = getattr(m, "qk_dim", m.head_dim), getattr(m, "v_dim", m.head_dim)
    attention_heads(r, q, y, r.param("in_proj_weight"), r.param("in_proj_bias"), r.param("out_proj.weight"),
                    r.param("out_proj.bias"), m.num_heads, qk, v)
    w = r.out(1)
    if w is not None:
        r.block_all(w, "attention weights")


def swin_window_attention(r: RuleCtx) -> None:
    """torchvision's shifted_window_attention(x[B,H,W,C], qkv_weight, proj_weight, rel_pos_bias,
    window_size, num_heads, ...) and its pruned form: head dims pruned like attention_heads; the
    relative position bias is per head and stays."""
    x, y = r.arg(0, "input"), r.out()
    qkv_w, proj_w = r.arg(1, "qkv_weight"), r.arg(2, "proj_weight")
    heads = r.raw(5, "num_heads")
    qk = r.node.kwargs.get("qk_dim", r.shape(qkv_w)[0] // 3 // heads)
    v = r.node.kwargs.get("v_dim", qk)
    attention_heads(r, x, y, qkv_w, r.arg(9, "qkv_bias"), proj_w, r.arg(10, "proj_bias"), heads, qk, v)
    for d in range(3):
        r.same(x, d, y, d)


MODULE_RULES[PrunedMultiheadAttention] = multihead_attention
FUNCTION_RULES[window_attention] = swin_window_attention
try:
    from torchvision.models import swin_transformer as _swin
    FUNCTION_RULES[_swin.shifted_window_attention] = swin_window_attention
except ImportError:  # pragma: no cover
    pass

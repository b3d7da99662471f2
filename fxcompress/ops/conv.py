"""Convolutions: nn.Conv*d, nn.ConvTranspose*d and their functional forms.

MACs: every output element costs one weight row (conv: out * Cin/g * k; transposed conv: every input
element is multiplied into Cout/g * k outputs). Channels: output channels with the weight's output axis
and bias; input channels with the weight's input axis; depthwise convs prune whole groups (groups
shrinks), other grouped convs the same position inside every group (groups stays). INT8: QLinearConv
(int8 weight per output channel). BatchNorm folds into the weight's output axis.

Canonical forms (fxcompress/graph/canonical.py): a convolution padding like TensorFlow's 'SAME' from its
input's size (timm's `Conv2dSame`) becomes, for the traced input size, an nn.Conv2d with that padding
(sharing the weight and bias), after an nn.ZeroPad2d where the padding is uneven. A weight-standardized
convolution (timm's `StdConv2d`, `ScaledStdConv2d` and their 'SAME' twins: NF-ResNets, NFNets, BiT)
standardizes its weight over each filter's fan-in on every call, a function of the weight alone: it
becomes the nn.Conv2d with the standardized weight it computes (a new parameter; the bias shared). Kept
whole, no input channel could be removed (the statistics of every filter would change) and traced
through, its F.batch_norm on the weight is an op no rule reads; rewritten, the layer prunes and folds as
any conv. Training afterwards trains that conv directly, without standardizing again.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .registry import BN_FOLD, CANONICAL, COUPLING, MACS, QUANT, RESIZE, QuantRule, lazy, numel

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CONV_FUNCTIONS = (F.conv1d, F.conv2d, F.conv3d)
CONV_TRANSPOSE_FUNCTIONS = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
GROUPS_ARG = 6   # position of `groups` in F.conv*d and F.conv_transpose*d


# ---- MACs
@MACS.register(*CONVS)
def conv_macs(v) -> int:
    return numel(v.out()) * numel(v.param("weight")[1:])


@MACS.register(*CONV_TRANSPOSES)
def conv_transpose_macs(v) -> int:
    return numel(v.arg(0)) * numel(v.param("weight")[1:])


@MACS.register(*CONV_FUNCTIONS)
def functional_conv_macs(v) -> int:
    w = v.arg(1, "weight")
    return numel(v.out()) * (numel(w[1:]) if w else 0)


# ---- channel coupling
def conv_channels(r, x, y, w, b, groups: int, transposed: bool) -> None:
    """Couplings of a (transposed) convolution with weight w (conv: [Cout, Cin/g, k..]; transposed:
    [Cin, Cout/g, k..])."""
    r.same(x, 0, y, 0)
    cin, cout = r.shape(x)[1], r.shape(y)[1]
    w_in, w_out = (0, 1) if transposed else (1, 0)
    r.produces(w, w_out)
    r.consumes(w, w_in)
    if b is not None:
        r.same(y, 1, b, 0)
        r.produces(b, 0)
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


@COUPLING.register(*CONVS)
def conv_coupling(r) -> None:
    conv_channels(r, r.arg(0, "input"), r.out(), r.param("weight"), r.param("bias"), r.module.groups, False)


@COUPLING.register(*CONV_TRANSPOSES)
def conv_transpose_coupling(r) -> None:
    if len(r.node.args) > 1 or "output_size" in r.node.kwargs:
        raise ValueError("explicit output_size")
    conv_channels(r, r.arg(0, "input"), r.out(), r.param("weight"), r.param("bias"), r.module.groups, True)


def _functional_conv_coupling(transposed: bool):
    """F.conv*/F.conv_transpose* with the weight (and bias) as graph values."""
    def rule(r) -> None:
        groups = r.raw(GROUPS_ARG, "groups", 1)
        if isinstance(groups, fx.Node):
            raise ValueError("dynamic groups")
        conv_channels(r, r.arg(0, "input"), r.out(), r.arg(1, "weight"), r.arg(2, "bias"), groups, transposed)
    return rule


COUPLING.register(*CONV_FUNCTIONS, rule=_functional_conv_coupling(False))
COUPLING.register(*CONV_TRANSPOSE_FUNCTIONS, rule=_functional_conv_coupling(True))


# ---- resizing under pruning
@RESIZE.register(*CONVS, *CONV_TRANSPOSES)
def conv_resize(s, node, m):
    depthwise = m.groups > 1 and m.groups == m.in_channels
    new_in = s.node_shape(node.args[0])[1]
    if depthwise:
        m.groups = new_in
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    m.in_channels = new_in
    m.out_channels = m.weight.shape[1] * m.groups if transposed else m.weight.shape[0]


@RESIZE.register(*CONV_FUNCTIONS, *CONV_TRANSPOSE_FUNCTIONS)
def functional_conv_resize(s, node, _):
    """A depthwise functional conv's `groups` constant follows its input channels."""
    groups = node.args[GROUPS_ARG] if len(node.args) > GROUPS_ARG else node.kwargs.get("groups", 1)
    if groups > 1 and groups == s.old_shape(node.args[0])[1]:
        new_in = s.node_shape(node.args[0])[1]
        if len(node.args) > GROUPS_ARG:
            node.args = node.args[:GROUPS_ARG] + (new_in,) + node.args[GROUPS_ARG + 1:]
        else:
            node.kwargs = {**node.kwargs, "groups": new_in}


# ---- INT8 and BatchNorm folding
QUANT.register(*CONVS, rule=QuantRule("weighted", weight_axis=0))
BN_FOLD.register(*CONVS, rule=lambda m: 0)
# transposed convs keep outputs on weight axis 1, but only ungrouped (grouped layouts interleave)
BN_FOLD.register(*CONV_TRANSPOSES, rule=lambda m: 1 if m.groups == 1 else None)


# ---- canonical form of 'SAME'-padded convolutions
def same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding TensorFlow's 'SAME' adds to a dim of `size` (as timm's pad_same computes it)."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


@CANONICAL.register(lazy("timm.layers", "Conv2dSame"))
def same_conv_canonical(m: nn.Conv2d, input_shape):
    if input_shape is None or len(input_shape) != 4:
        return "input shape unknown"
    ph, pw = (same_padding(input_shape[2 + i], m.kernel_size[i], m.stride[i], m.dilation[i]) for i in range(2))
    even = ph % 2 == 0 and pw % 2 == 0
    conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, (ph // 2, pw // 2) if even else 0,
                     m.dilation, m.groups, m.bias is not None, device="meta")
    conv.weight = m.weight
    conv.bias = m.bias
    conv.train(m.training)
    if even:
        return [(None, conv)]
    return [("pad", nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))), (None, conv)]


# ---- canonical form of weight-standardized convolutions
_STANDARDIZED_CONVS = tuple(lazy("timm.layers", name) for name in
                            ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"))


def standardized_weight(m: nn.Conv2d) -> torch.Tensor:
    """The weight m's forward convolves with: each filter standardized over its fan-in (as timm computes it:
    F.batch_norm over the weight seen as one sample, times gain x scale for the scaled variants)."""
    gain = (m.gain * m.scale).view(-1) if hasattr(m, "gain") else None
    return F.batch_norm(m.weight.reshape(1, m.out_channels, -1), None, None, weight=gain, training=True,
                        momentum=0.0, eps=m.eps).reshape_as(m.weight)


@CANONICAL.register(*_STANDARDIZED_CONVS)
def standardized_conv_canonical(m: nn.Conv2d, input_shape):
    if getattr(m, "same_pad", False):   # the 'SAME' twins pad from the input's size, as Conv2dSame does
        chain = same_conv_canonical(m, input_shape)
        if isinstance(chain, str):
            return chain
        conv = chain[-1][1]
    else:
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                         m.bias is not None, device="meta")
        conv.bias = m.bias
        conv.train(m.training)
        chain = [(None, conv)]
    with torch.no_grad():
        conv.weight = nn.Parameter(standardized_weight(m).clone(), requires_grad=m.weight.requires_grad)
    return chain

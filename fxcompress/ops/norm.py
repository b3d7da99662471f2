"""Normalisation: BatchNorm, InstanceNorm, GroupNorm, LayerNorm (module and functional).

Channels: BatchNorm/InstanceNorm are per channel (affine and running statistics follow the channel);
GroupNorm's statistics are per group, so only whole groups may go (num_groups shrinks); LayerNorm
normalises over its trailing dims, which therefore stay whole (removing a channel would change its
statistics); every other dim passes through.

Canonical forms: a norm layer fused with its activation (timm's `BatchNormAct2d`, `SyncBatchNormAct`,
`GroupNormAct`, `GroupNorm1Act`, `LayerNormAct`) becomes the plain norm layer, sharing its parameters and
buffers, followed by its dropout and activation modules (fxcompress/graph/canonical.py).
"""
from __future__ import annotations

import numpy as np
import torch.nn as nn
import torch.nn.functional as F

from .registry import CANONICAL, COUPLING, RESIZE, lazy

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@COUPLING.register(*BATCH_NORMS, *INSTANCE_NORMS)
def batch_norm_coupling(r) -> None:
    x, y = r.arg(0, "input"), r.out()
    r.identity(x, y)
    for name in ("weight", "bias", "running_mean", "running_var"):
        p = r.param(name)
        r.same(y, 1, p, 0)
        if name == "running_var":
            r.consumes(p, 0)
        else:
            r.produces(p, 0)


@COUPLING.register(nn.GroupNorm)
def group_norm_coupling(r) -> None:
    x, y = r.arg(0, "input"), r.out()
    r.identity(x, y)
    c = r.shape(y)[1]
    per = c // r.module.num_groups
    r.couple(y, 1, y, 1, np.arange(c), (np.arange(c) // per) * per, kind="norm group")
    for name in ("weight", "bias"):
        p = r.param(name)
        r.same(y, 1, p, 0)
        r.produces(p, 0)


def layer_norm_channels(r, x, y, normalized_shape, params) -> None:
    r.identity(x, y)
    k = len(normalized_shape)
    for p in params:
        for d in range(k):
            r.same(y, r.rank(y) - k + d, p, d)
            r.produces(p, d)
    for d in range(r.rank(y) - k, r.rank(y)):
        r.block(y, d, f"normalised by {r.name}: removing channels would change its statistics")


@COUPLING.register(nn.LayerNorm)
def layer_norm_coupling(r) -> None:
    layer_norm_channels(r, r.arg(0, "input"), r.out(), r.module.normalized_shape,
                        [r.param("weight"), r.param("bias")])


@COUPLING.register(F.layer_norm)
def functional_layer_norm_coupling(r) -> None:
    layer_norm_channels(r, r.arg(0, "input"), r.out(), tuple(r.raw(1, "normalized_shape")),
                        [r.arg(2, "weight"), r.arg(3, "bias")])


@RESIZE.register(*BATCH_NORMS, *INSTANCE_NORMS)
def batch_norm_resize(s, node, m):
    m.num_features = s.node_shape(node)[1]


@RESIZE.register(nn.GroupNorm)
def group_norm_resize(s, node, m):
    per = m.num_channels // m.num_groups
    m.num_channels = s.node_shape(node)[1]
    m.num_groups = m.num_channels // per


@RESIZE.register(nn.LayerNorm)
def layer_norm_resize(s, node, m):
    k = len(m.normalized_shape)
    m.normalized_shape = tuple(s.node_shape(node)[-k:])


# ---- canonical forms of norm + activation layers
_NORM_ACT = {   # timm's fused layer -> the torch.nn norm layer it computes before `drop` and `act`
    lazy("timm.layers", "BatchNormAct2d"): nn.BatchNorm2d,
    lazy("timm.layers", "SyncBatchNormAct"): nn.BatchNorm2d,
    lazy("timm.layers", "GroupNormAct"): nn.GroupNorm,
    lazy("timm.layers", "GroupNorm1Act"): nn.GroupNorm,
    lazy("timm.layers", "LayerNormAct"): nn.LayerNorm,
}
_NORM_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _plain_norm(m: nn.Module, cls: type) -> nn.Module:
    """A `cls` layer with m's hyper-parameters whose parameters and buffers are m's own tensors."""
    if cls is nn.BatchNorm2d:
        plain = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, device="meta")
    elif cls is nn.GroupNorm:
        plain = nn.GroupNorm(m.num_groups, m.num_channels, m.eps, m.affine, device="meta")
    else:
        plain = nn.LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine, getattr(m, "bias", None) is not None,
                             device="meta")
    for name in _NORM_STATE:
        store = plain._parameters if name in plain._parameters else plain._buffers
        if name in store or hasattr(m, name):
            store[name] = getattr(m, name, None)
    return plain.train(m.training)


@CANONICAL.register(*_NORM_ACT)
def norm_act_canonical(m: nn.Module, input_shape):
    cls = next(plain for klass in type(m).__mro__ for fused, plain in _NORM_ACT.items()
               if klass.__name__ == fused.name and klass.__module__.startswith(fused.module))
    chain = [(None, _plain_norm(m, cls))]
    for suffix in ("drop", "act"):
        part = getattr(m, suffix, None)
        if part is not None and not isinstance(part, nn.Identity):
            chain.append((suffix, part))
    return chain

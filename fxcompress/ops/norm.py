"""Normalisation: BatchNorm, InstanceNorm, GroupNorm, LayerNorm (module and functional).

Channels: BatchNorm/InstanceNorm are per channel (affine and running statistics follow the channel);
GroupNorm's statistics are per group, so only whole groups may go (num_groups shrinks); LayerNorm
normalises over its trailing dims, which therefore stay whole (removing a channel would change its
statistics); every other dim passes through.
"""
from __future__ import annotations

import numpy as np
import torch.nn as nn
import torch.nn.functional as F

from .registry import COUPLING, RESIZE

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

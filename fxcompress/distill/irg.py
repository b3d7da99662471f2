"""IRG (Liu et al., CVPR 2019, "Knowledge Distillation via Instance Relationship Graph"): match the graph
of instances a network builds, not only its outputs.

Called `loss(student_feats, teacher_feats)` with two equal-length lists of tensors whose last element is
the logits (any number of tapped layers before it):
- vertex: mean squared difference of the logits (each instance's embedding);
- edge: for every element, the batch's pairwise Euclidean distances, divided by their maximum, compared
  by mean squared difference;
- transformation: for consecutive elements, each instance's distance between the two (brought to a common
  size: spatial average pooling to the smaller map, channel average pooling to the fewer channels),
  divided by the batch's largest, compared by mean squared difference.
Zero when the lists are equal.

    irg = IRGLoss(weights=(1.0, 1.0, 1.0))
    loss = irg([s_layer3, s_logits], [t_layer3, t_logits])
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import PassError


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def safe_norm(squared: torch.Tensor) -> torch.Tensor:
    """sqrt with a finite gradient at 0 (two identical instances, a layer equal to the next)."""
    return squared.clamp_min(1e-12).sqrt() * (squared > 1e-12)


def edge_matrix(x: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances between the batch's instances, divided by the largest."""
    f = flat(x)
    sq = f.pow(2).sum(1)
    d = safe_norm(sq[:, None] + sq[None, :] - 2 * f @ f.t())
    return d / d.max().clamp_min(1e-12)


def pool_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    """Average-pool dim 1 of x down to c channels."""
    if x.shape[1] == c:
        return x
    moved = x.movedim(1, -1)
    pooled = F.adaptive_avg_pool1d(moved.reshape(-1, 1, x.shape[1]), c)
    return pooled.reshape(*moved.shape[:-1], c).movedim(-1, 1)


def common_size(a: torch.Tensor, b: torch.Tensor):
    """a and b pooled to one shape: feature maps to the smaller map (a map beside a vector to its channel
    means), then both to the fewer channels."""
    if a.dim() == 4 and b.dim() == 4:
        size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
        a, b = F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)
    else:
        a, b = (x.mean((2, 3)) if x.dim() == 4 else flat(x) for x in (a, b))
    c = min(a.shape[1], b.shape[1])
    return pool_channels(a, c), pool_channels(b, c)


def transformation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per instance: the distance between two layers' features (at a common size), divided by the batch's
    largest (like the edges: the term compares shapes of the relation, not the layers' scales)."""
    a, b = common_size(a, b)
    d = safe_norm((flat(a) - flat(b)).pow(2).sum(1))
    return d / d.max().clamp_min(1e-12)


class IRGLoss(nn.Module):
    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        if len(weights) != 3 or any(not isinstance(w, (int, float)) or w < 0 for w in weights):
            raise PassError(f"IRGLoss weights={weights!r} is invalid: give three non-negative numbers "
                            f"(vertex, edge, transformation)")
        self.weights = tuple(float(w) for w in weights)

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(student_feats) != len(teacher_feats) or not student_feats:
            raise PassError(f"IRGLoss needs two equal-length, non-empty lists (tapped layers then logits); got "
                            f"{len(student_feats)} student and {len(teacher_feats)} teacher tensors")
        teacher_feats = [t.detach() for t in teacher_feats]
        w_vertex, w_edge, w_transform = self.weights
        loss = w_vertex * F.mse_loss(student_feats[-1], teacher_feats[-1])
        for s, t in zip(student_feats, teacher_feats):
            if s.shape[0] != t.shape[0]:
                raise PassError(f"IRGLoss: student batch {s.shape[0]} != teacher batch {t.shape[0]}")
            loss = loss + w_edge * F.mse_loss(edge_matrix(s), edge_matrix(t)) / len(student_feats)
        pairs = len(student_feats) - 1
        for i in range(pairs):
            ts = transformation(student_feats[i], student_feats[i + 1])
            tt = transformation(teacher_feats[i], teacher_feats[i + 1])
            loss = loss + w_transform * F.mse_loss(ts, tt) / pairs
        return loss

    def extra_repr(self) -> str:
        return f"weights={self.weights}"

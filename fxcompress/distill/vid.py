"""VID (Ahn et al., CVPR 2019, "Variational Information Distillation"): maximise a variational lower bound
of the mutual information between teacher and student features, i.e. minimise the negative
log-likelihood of the teacher's feature under a Gaussian whose mean a regressor predicts from the
student's feature and whose per-channel variance is learned (softplus keeps it positive).

    vid = VIDLoss(student_channels=32, teacher_channels=64)   # its parameters train with the student
    loss = vid(student_feat, teacher_feat)                     # (N, C, H, W) or (N, C); maps pooled to match
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import PassError


class VIDLoss(nn.Module):
    def __init__(self, student_channels: int, teacher_channels: int, init_variance: float = 5.0,
                 hidden_channels: int = None, eps: float = 1e-5):
        super().__init__()
        for name, v in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
            if not isinstance(v, int) or v < 1:
                raise PassError(f"VIDLoss {name}={v!r} is invalid: give the feature's channel count")
        if not init_variance > eps:
            raise PassError(f"VIDLoss init_variance={init_variance!r} must exceed eps={eps}")
        hidden = hidden_channels or max(student_channels, teacher_channels)
        self.regressor = nn.Sequential(nn.Conv2d(student_channels, hidden, 1), nn.ReLU(),
                                       nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                                       nn.Conv2d(hidden, teacher_channels, 1))
        # softplus(alpha) + eps == init_variance at the start
        self.alpha = nn.Parameter(torch.full((teacher_channels,), math.log(math.expm1(init_variance - eps))))
        self.eps = eps
        self.student_channels, self.teacher_channels = student_channels, teacher_channels

    def variance(self) -> torch.Tensor:
        return F.softplus(self.alpha) + self.eps

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        if student_feat.shape[1] != self.student_channels or teacher_feat.shape[1] != self.teacher_channels:
            raise PassError(f"VIDLoss was built for {self.student_channels} -> {self.teacher_channels} channels, got "
                            f"{student_feat.shape[1]} -> {teacher_feat.shape[1]}")
        s, t = student_feat, teacher_feat.detach()
        while s.dim() < 4:
            s, t = s.unsqueeze(-1), t.unsqueeze(-1)
        if s.shape[2:] != t.shape[2:]:   # pool both to the smaller map
            size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
            s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
        mean = self.regressor(s)
        var = self.variance().view(1, -1, 1, 1)
        return 0.5 * ((t - mean) ** 2 / var + var.log()).mean()

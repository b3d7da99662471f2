"""Hinton et al.'s distillation: KL(teacher || student) between temperature-softened class distributions.

    loss = KDLoss(temperature=4.0)(student_logits, teacher_logits)
    hook = DistillHook(teacher, KDLoss(temperature=4.0))       # fxcompress.distill.hook: for training passes
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import PassError


def _positive_number(owner: str, option: str, value, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise PassError(f"{owner} option {option}={value!r} is invalid: give a "
                        f"{'non-negative' if allow_zero else 'positive'} number")
    return float(value)


class KDLoss(nn.Module):
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), classes on dim 1, summed over classes (and
    any positions after them), averaged over the batch. The T^2 keeps the gradient's scale independent
    of T (the softened gradients shrink as 1/T^2)."""

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = _positive_number("KDLoss", "temperature", temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape or student_logits.dim() < 2:
            raise PassError(f"KDLoss needs student and teacher logits of one shape (N, classes, ...); got "
                            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}: distil from a "
                            f"teacher with the student's outputs")
        t = self.temperature
        log_student = F.log_softmax(student_logits / t, dim=1)
        log_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
        return t * t * F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

"""Hinton et al.'s distillation: KL(teacher || student) between temperature-softened class distributions.

    hook = DistillHook(teacher, KDLoss(temperature=4.0), weight=1.0)
    fxcompress.compile(pruned, [FineTune(epochs=10, hooks=[hook])], x, train_loader=train)
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import PassError
from ..train.loop import TrainHook


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


class DistillHook(TrainHook):
    """Adds `weight * loss(student outputs, teacher outputs)` to the training loss. The teacher is frozen
    in place: eval mode (its BatchNorm statistics must not follow the student's batches), no gradients,
    run under no_grad, moved to the batch's device on first use."""

    def __init__(self, teacher: nn.Module, loss: Optional[nn.Module] = None, weight: float = 1.0):
        if not isinstance(teacher, nn.Module):
            raise PassError(f"DistillHook teacher must be an nn.Module, got {type(teacher).__name__}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.loss = loss if loss is not None else KDLoss()
        self.weight = _positive_number("DistillHook", "weight", weight, allow_zero=True)

    def teacher_outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.teacher.training:   # something called .train() on it since: BN statistics would drift
            self.teacher.eval()
        self.teacher.to(inputs.device)
        with torch.no_grad():
            out = self.teacher(inputs)
        if not isinstance(out, torch.Tensor):
            raise PassError(f"DistillHook teacher returned {type(out).__name__}; it must return one logits tensor")
        return out

    def extra_loss(self, model, inputs, outputs, targets) -> Optional[torch.Tensor]:
        if not isinstance(outputs, torch.Tensor):
            raise PassError(f"DistillHook needs the student to return one logits tensor, got {type(outputs).__name__}")
        return self.weight * self.loss(outputs, self.teacher_outputs(inputs))

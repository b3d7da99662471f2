"""Knowledge distillation: a loss between student and teacher logits and the TrainHook that adds it to
the shared training loop (`fxcompress.train.loop.fit`, the FineTune pass's `hooks`)."""
from .kd import DistillHook, KDLoss

__all__ = ["DistillHook", "KDLoss"]

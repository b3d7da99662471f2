"""FineTune: train the current model for a few epochs (after pruning, say) with the shared training loop."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from fxcompress.core.pass_base import TransformPass
from fxcompress.train.loop import TrainConfig, TrainHook, evaluate, fit


class FineTune(TransformPass):
    """Train the current model for `epochs` on train_loader (SGD, cosine by default). `hooks` are extra
    fxcompress.train.loop.TrainHook objects, e.g. fxcompress.distill.DistillHook (a teacher's soft targets)."""
    requires = ("train_loader",)

    def __init__(self, epochs: int = 1, lr: float = 0.01, weight_decay: float = 5e-4, schedule: str = "cosine",
                 seed: int = 0, checkpoint_dir: Optional[str] = None, resume: bool = False,
                 max_steps_per_epoch: Optional[int] = None, hooks: Sequence[TrainHook] = ()):
        self.config = TrainConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, schedule=schedule, seed=seed,
                                  checkpoint_dir=checkpoint_dir, resume=resume,
                                  max_steps_per_epoch=max_steps_per_epoch)
        self.hooks = tuple(hooks)

    def run(self, ctx) -> dict:
        metrics = {}
        if ctx.val_loader is not None:
            metrics["top1_before"] = evaluate(ctx.gm, ctx.val_loader, ctx.device)["top1"]
        config = self.config if ctx.progress else dataclasses.replace(self.config, progress=False)
        history = fit(ctx.gm, ctx.train_loader, config, hooks=self.hooks, device=ctx.device, desc=self.name)
        ctx.gm.eval()
        if history:
            metrics["train_loss"] = history[-1]["loss"]
        if ctx.val_loader is not None:
            metrics["top1_after"] = evaluate(ctx.gm, ctx.val_loader, ctx.device)["top1"]
        return metrics

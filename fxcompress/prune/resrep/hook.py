"""ResRep's training hook: the compactor update after backward, and masking on a schedule.

After backward, each compactor row's gradient becomes (Ding et al., 2021, eq. 13)
    grad_row * mask_row + lasso_strength * row / ||row||_2
so a kept row learns from the task and is pulled gently toward zero ("forgetting" on the compactors only),
and a masked row gets the lasso term alone and decays to zero. Rows of groups ResRep leaves alone keep
their task gradient. Compactors train with their own momentum and no weight decay (`optimizer_groups`).
Every `mask_interval` steps after `warmup_steps`, up to `step_channels` more channels are masked (lowest
scores first: row norms averaged over a group's producers, ChannelMasks.scores) until the MACs reach the
target.

    hook = ResRepHook(masks, macs_of, target_macs=..., lasso_strength=1e-4, ...)
    fit(compacted, train_loader, config, hooks=[hook])
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn as nn

from ...train.loop import TrainHook
from .masking import ChannelMasks


class ResRepHook(TrainHook):
    def __init__(self, masks: ChannelMasks, macs_of: Callable[[dict], int], target_macs: int,
                 lasso_strength: float = 1e-4, compactor_momentum: float = 0.99, warmup_epochs: float = 0.0,
                 mask_interval: int = 200, step_channels: int = 4,
                 masker: Optional[Callable[[Optional[int]], dict]] = None):
        # masker(limit): a masking step other than "lowest norms until target_macs" (a latency target's)
        self.masks, self.macs_of, self.target, self.masker = masks, macs_of, target_macs, masker
        self.lasso_strength, self.compactor_momentum = lasso_strength, compactor_momentum
        self.warmup_epochs, self.mask_interval, self.step_channels = warmup_epochs, mask_interval, step_channels
        self.step, self.warmup_steps = 0, 0
        self.history: List[dict] = []
        self._refresh_rows()

    def _refresh_rows(self) -> None:
        self.row_masks = self.masks.row_masks()
        self.lasso = self.masks.lasso_rows()

    def optimizer_groups(self, model: nn.Module) -> List[dict]:
        params = [q.weight for q in self.masks.compactors.values()]
        return [{"params": params, "momentum": self.compactor_momentum, "weight_decay": 0.0, "nesterov": False}]

    def on_train_begin(self, model: nn.Module, steps_per_epoch: int) -> None:
        self.warmup_steps = int(round(self.warmup_epochs * steps_per_epoch))

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        for name, q in self.masks.compactors.items():
            w = q.weight
            rows = w.view(w.shape[0], -1)
            grad = torch.zeros_like(w) if w.grad is None else w.grad
            g = grad.view(w.shape[0], -1)
            keep = self.row_masks[name].to(g.device, g.dtype).unsqueeze(1)
            lasso = (self.lasso_strength * self.lasso[name]).to(g.device, g.dtype).unsqueeze(1)
            w.grad = (g * keep + lasso * rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(w)
        self.step += 1
        if self.step > self.warmup_steps and (self.step - self.warmup_steps) % self.mask_interval == 0:
            self.mask_step(self.step_channels)

    def mask_step(self, limit) -> dict:
        done = self.masker(limit) if self.masker else self.masks.mask_more(self.macs_of, self.target, limit)
        if done["masked"]:
            self._refresh_rows()
        return done

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        self.history.append({"epoch": epoch + 1, "masked_channels": self.masks.masked_count(),
                             "macs": int(self.macs_of(self.masks.plan())),
                             "masked_row_norm_max": self.masked_row_norm_max()})

    @torch.no_grad()
    def masked_row_norm_max(self) -> float:
        """The largest norm among masked rows: how far forgetting is from done (zeroing them at the end
        changes the model unless this has reached about zero)."""
        worst = 0.0
        for name, q in self.masks.compactors.items():
            masked = self.row_masks[name] == 0
            if masked.any():
                worst = max(worst, float(q.row_norms()[masked.to(q.weight.device)].max()))
        return worst

    def state_dict(self) -> dict:
        return {"step": self.step, "masks": self.masks.state_dict(),
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.masks.load_state_dict(state["masks"])
        self.history = [dict(h) for h in state["history"]]
        self._refresh_rows()


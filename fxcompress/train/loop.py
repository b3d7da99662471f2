"""The one training loop every training pass shares (FineTune, QuantizeINT8's QAT).

The loop owns epochs, the learning-rate schedule, checkpoints, resume, DDP and progress; a pass plugs in
through TrainHook: extra loss terms (fxcompress.distill.DistillHook), gradient edits after backward, work
at the end of an epoch.
The schedule is a function of the global step and the data order a function of (seed, epoch), so a run
resumed from the checkpoint of epoch k ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import read_checkpoint, save_checkpoint
from ..data.loader import unpack_batch
from ..core.errors import DataError, PassError

SCHEDULES = ("cosine", "onecycle", "constant")
# one line per epoch at INFO (silent unless the application shows it: the command line does, in logs)
log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 1
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    seed: int = 0
    checkpoint_dir: Optional[str] = None
    resume: bool = False
    progress: bool = True
    max_steps_per_epoch: Optional[int] = None  # for quick runs and tests

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise PassError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.epochs < 0 or self.lr <= 0:
            raise PassError(f"TrainConfig needs epochs >= 0 and lr > 0, got epochs={self.epochs}, lr={self.lr}")


class TrainHook:
    """What a training pass adds to the loop. Every method is optional."""

    def extra_loss(self, model: nn.Module, inputs, outputs, targets) -> Optional[torch.Tensor]:
        return None

    def optimizer_groups(self, model: nn.Module) -> List[dict]:
        """Parameter groups with their own optimizer options (e.g. {"params": [...], "weight_decay": 0.0});
        every other trainable parameter trains with the config's options."""
        return []

    def on_train_begin(self, model: nn.Module, steps_per_epoch: int) -> None:
        pass

    def after_backward(self, model: nn.Module) -> None:
        pass

    def on_train_end(self, model: nn.Module) -> None:
        pass

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate at a global step: linear warm-up, then cosine / one-cycle / constant."""
    steps_per_epoch = max(total_steps / max(config.epochs, 1), 1)
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "onecycle":  # 30% linear ramp to lr, cosine down to ~0
        warmup = max(warmup, int(0.3 * total_steps))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    progress = (step - warmup) / max(total_steps - warmup, 1)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class DistributedInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> DistributedInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1): gloo on CPU, nccl on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedInfo(dist.get_rank(), dist.get_world_size())


def _checkpoint_path(config: TrainConfig) -> Optional[str]:
    return os.path.join(config.checkpoint_dir, "last.pt") if config.checkpoint_dir else None


def evaluate(model: nn.Module, loader: Iterable, device="cpu", loss_fn: Callable = F.cross_entropy) -> dict:
    """Top-1 accuracy and mean loss over a loader of (inputs, targets)."""
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for batch in loader:
            x, y = unpack_batch(batch, "val_loader")
            if y is None:
                raise DataError("evaluation needs (inputs, targets) batches")
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += loss_fn(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            total += y.numel()
    model.train(was_training)
    if total == 0:
        raise DataError("evaluation loader is empty")
    return {"top1": correct / total, "loss": loss_sum / total, "samples": total}


def _optimizer(model: nn.Module, config: TrainConfig, hooks: Sequence[TrainHook]) -> torch.optim.SGD:
    """SGD over the trainable parameters; those a hook claims train with the hook's options."""
    claimed, groups = set(), []
    for hook in hooks:
        for group in hook.optimizer_groups(model):
            params = [p for p in group["params"] if p.requires_grad and id(p) not in claimed]
            claimed.update(id(p) for p in params)
            if params:
                groups.append({**group, "params": params})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
    if not rest and not groups:
        raise PassError("fit: the model has no trainable parameters")
    return torch.optim.SGD(([{"params": rest}] if rest else []) + groups, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov and config.momentum > 0)


def fit(model: nn.Module, train_loader: Iterable, config: TrainConfig, val_loader: Optional[Iterable] = None,
        loss_fn: Optional[Callable] = None, hooks: Sequence[TrainHook] = (), device="cpu",
        desc: str = "train") -> List[dict]:
    """Train `model` in place; returns the per-epoch history [{epoch, loss, lr, top1?}, ...]."""
    device = torch.device(device)
    loss_fn = loss_fn or F.cross_entropy
    dinfo = setup_distributed(device)
    torch.manual_seed(config.seed)
    model.to(device)
    if hasattr(train_loader, "shard") and dinfo.world_size > 1:
        train_loader.shard(dinfo.rank, dinfo.world_size)
    steps_per_epoch = len(train_loader)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise DataError("train_loader is empty")
    total_steps = steps_per_epoch * config.epochs
    for hook in hooks:   # before the optimizer and DDP see the model: a hook may rewrite its graph (taps)
        hook.on_train_begin(model, steps_per_epoch)
    optimizer = _optimizer(model, config, hooks)
    net = nn.parallel.DistributedDataParallel(model) if dinfo.world_size > 1 else model

    history: List[dict] = []
    timing: List[dict] = []   # wall seconds per epoch, kept in the checkpoint (not in the history: runs compare it)
    start_epoch = 0
    ckpt = _checkpoint_path(config)
    if config.resume and ckpt and os.path.isfile(ckpt):
        state = read_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        for hook, hook_state in zip(hooks, state.get("hooks", [])):
            hook.load_state_dict(hook_state)
        history, start_epoch = list(state["history"]), int(state["epoch"])
        timing = list(state.get("timing", []))

    for epoch in range(start_epoch, config.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        net.train()
        loss_sum, seen = 0.0, 0
        epoch_start = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{config.epochs}", leave=False,
                   disable=not (config.progress and dinfo.is_main))
        for i, batch in enumerate(train_loader):
            if i >= steps_per_epoch:
                break
            step = epoch * steps_per_epoch + i
            lr = lr_at(config, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = unpack_batch(batch, "train_loader")
            if y is None:
                raise DataError("training needs (inputs, targets) batches")
            x, y = x.to(device), y.to(device)
            out = net(x)
            loss = loss_fn(out, y)
            for hook in hooks:
                extra = hook.extra_loss(model, x, out, y)
                if extra is not None:
                    loss = loss + extra
            if not torch.isfinite(loss):
                raise PassError(f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, step {i}; "
                                f"lower the learning rate (now {lr:.3g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for hook in hooks:
                hook.after_backward(model)
            optimizer.step()
            loss_sum += loss.item() * y.numel()
            seen += y.numel()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{lr:.3g}")
        bar.close()
        for hook in hooks:
            hook.on_epoch_end(epoch, model)
        record = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "lr": lr}
        train_end = time.perf_counter()
        if val_loader is not None and dinfo.is_main:
            record.update({f"val_{k}": v for k, v in evaluate(model, val_loader, device).items() if k != "samples"})
        history.append(record)
        if dinfo.is_main:
            log.info("%s epoch %d/%d: %s", desc, epoch + 1, config.epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
        timing.append({"epoch": epoch + 1, "steps": steps_per_epoch, "train_seconds": train_end - epoch_start,
                       "val_seconds": time.perf_counter() - train_end, "device": str(device)})
        if ckpt and dinfo.is_main:
            os.makedirs(config.checkpoint_dir, exist_ok=True)
            save_checkpoint({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "rng": torch.get_rng_state(), "history": history,
                             "hooks": [h.state_dict() for h in hooks], "config": asdict(config),
                             "timing": timing}, ckpt)
    for hook in hooks:
        hook.on_train_end(model)
    if dinfo.world_size > 1:
        # DDP keeps parameters equal; buffers (BatchNorm statistics) follow each rank's last batch: every
        # rank leaves with rank 0's, the model rank 0 checkpointed
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    return history

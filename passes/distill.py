"""Distill: train the current model (a pruned or quantized student, say) on its task and a teacher's
knowledge: KD on logits, IRG on instance relations, VID on features."""
from __future__ import annotations

import copy
import dataclasses
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxcompress.core.errors import PassError
from fxcompress.core.pass_base import TransformPass
from fxcompress.core.verify import run_eval
from fxcompress.distill import DistillHook, IRGLoss, KDLoss, VIDLoss, with_features
from fxcompress.graph.tracing import trace
from fxcompress.train.loop import TrainConfig, evaluate, fit

NAMED_LOSSES = ("kd", "irg", "vid")


class Distill(TransformPass):
    """Transform: train on `task_weight * cross-entropy + sum(weight_i * loss_i)`. `teacher=None` is the model
    as it entered `compile` (used as it is: never copied unless it must change mode or device, never
    modified). `losses` are "kd", "irg", "vid" or loss modules; KD reads the logits, IRG the tapped features
    plus the logits, VID one loss per (student, teacher) node pair, built from the tapped widths.
    `student_nodes` / `teacher_nodes` (node or module names; teacher_nodes default to the student's) are
    paired in the order listed; a pair whose maps differ in size is pooled to the smaller, channels are
    bridged by VID's regressor and IRG's pooling, and the report lists each pair's bridge.

        fxcompress.compile(pruned, [Distill(teacher=big, losses=["kd", "irg"], student_nodes=["layers_5"],
                                            epochs=10, lr=0.05)], x, train_loader=train, val_loader=val)
    """
    requires = ("train_loader",)

    def __init__(self, teacher: Optional[nn.Module] = None, losses: Sequence[Union[str, nn.Module]] = ("kd",),
                 student_nodes: Sequence[str] = (), teacher_nodes: Optional[Sequence[str]] = None,
                 weights: Union[float, Sequence[float]] = 1.0, task_weight: float = 1.0, temperature: float = 4.0,
                 epochs: int = 1, lr: float = 0.01, weight_decay: float = 5e-4, schedule: str = "cosine",
                 seed: int = 0, checkpoint_dir: Optional[str] = None, resume: bool = False,
                 max_steps_per_epoch: Optional[int] = None):
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise PassError(f"Distill option teacher={type(teacher).__name__} is invalid: give an nn.Module or None "
                            f"(the model as it entered compile)")
        for loss in losses:
            if isinstance(loss, str) and loss not in NAMED_LOSSES:
                raise PassError(f"Distill option losses names {loss!r}: use {NAMED_LOSSES} or loss modules")
        if not isinstance(task_weight, (int, float)) or task_weight < 0:
            raise PassError(f"Distill option task_weight={task_weight!r} is invalid: give a number >= 0")
        self.teacher, self.losses, self.weights = teacher, list(losses), weights
        self.student_nodes = list(student_nodes)
        self.teacher_nodes = list(teacher_nodes) if teacher_nodes is not None else list(student_nodes)
        if len(self.student_nodes) != len(self.teacher_nodes):
            raise PassError(f"Distill pairs student and teacher nodes in the order given: "
                            f"{len(self.student_nodes)} student nodes vs {len(self.teacher_nodes)} teacher nodes")
        if any(loss == "vid" or isinstance(loss, VIDLoss) for loss in losses) and not self.student_nodes:
            raise PassError("Distill loss 'vid' needs student_nodes (and teacher_nodes) to tap")
        self.task_weight, self.temperature = float(task_weight), temperature
        self.config = TrainConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, schedule=schedule, seed=seed,
                                  checkpoint_dir=checkpoint_dir, resume=resume, max_steps_per_epoch=max_steps_per_epoch)

    def _teacher(self, ctx) -> nn.Module:
        model = self.teacher if self.teacher is not None else ctx.input_model
        if model is None:
            raise PassError("Distill teacher=None needs the model compile was given; pass teacher=...")
        if model.training or any(t.device != torch.device(ctx.device) for t in model.parameters()):
            return copy.deepcopy(model).to(ctx.device).eval()   # must change mode or device: a copy
        return model

    def _pairs(self, ctx, teacher) -> list:
        """Per pair: student and teacher feature shapes, found by one forward of the example inputs."""
        if not self.student_nodes:
            return []
        student = with_features(ctx.gm, self.student_nodes, "Distill student_nodes")
        graph = teacher if isinstance(teacher, torch.fx.GraphModule) else trace(teacher)
        tapped = with_features(graph, self.teacher_nodes, "Distill teacher_nodes")
        s_feats, t_feats = (run_eval(m, [x.to(_device_of(m)) for x in ctx.example_inputs])[1] for m in (student, tapped))
        pairs = []
        for s_name, t_name, s, t in zip(self.student_nodes, self.teacher_nodes, s_feats, t_feats):
            bridge = []
            if s.shape[2:] != t.shape[2:]:
                bridge.append(f"maps {tuple(s.shape[2:])} vs {tuple(t.shape[2:])} pooled to the smaller")
            if s.shape[1] != t.shape[1]:
                bridge.append(f"channels {s.shape[1]} -> {t.shape[1]} bridged by the loss (VID regressor, IRG pooling)")
            pairs.append({"student": s_name, "teacher": t_name, "student_shape": list(s.shape),
                          "teacher_shape": list(t.shape), "bridge": "; ".join(bridge) or "same shape"})
        return pairs

    def _losses(self, pairs) -> list:
        out = []
        for loss in self.losses:
            if loss == "kd":
                out.append(KDLoss(self.temperature))
            elif loss == "irg":
                out.append(IRGLoss())
            elif loss == "vid":
                out.extend(VIDLoss(p["student_shape"][1], p["teacher_shape"][1]) for p in pairs)
            else:
                out.append(loss)
        return out

    def run(self, ctx) -> dict:
        teacher = self._teacher(ctx)
        pairs = self._pairs(ctx, teacher)
        losses = self._losses(pairs)
        weights = self.weights if isinstance(self.weights, (int, float)) else \
            [w for loss, w in zip(self.losses, self.weights) for _ in (pairs if loss == "vid" else [0])]
        hook = DistillHook(teacher, losses, weights, self.student_nodes, self.teacher_nodes)
        before = [p.detach().clone() for p in teacher.parameters()]
        metrics = {"pairs": pairs, "losses": [type(loss).__name__ for loss in losses]}
        if ctx.val_loader is not None:
            metrics["top1_before"] = evaluate(ctx.gm, ctx.val_loader, ctx.device)["top1"]
        config = self.config if ctx.progress else dataclasses.replace(self.config, progress=False)
        task = self.task_weight
        history = fit(ctx.gm, ctx.train_loader, config, loss_fn=lambda out, y: task * F.cross_entropy(out, y),
                      hooks=[hook], device=ctx.device, desc=self.name)
        ctx.gm.eval()
        if any(not torch.equal(a, b) for a, b in zip(before, teacher.parameters())):
            raise PassError("Distill: the teacher's weights changed during training (is it the student itself?)")
        metrics["history"] = history
        if history:
            metrics["train_loss_first"], metrics["train_loss"] = history[0]["loss"], history[-1]["loss"]
        if ctx.val_loader is not None:
            metrics["top1_after"] = evaluate(ctx.gm, ctx.val_loader, ctx.device)["top1"]
        return metrics


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))

"""DistillHook: distillation as a TrainHook, so FineTune, ResRep, QAT and the Distill pass all take it.

Each loss gets what it is defined on: `KDLoss` the logits; `IRGLoss` the tapped features plus the logits;
each `VIDLoss` one tapped (student, teacher) pair, in the order the nodes are listed. Student layers are
tapped for the duration of training (`fxcompress.distill.taps`: the graph's outputs never change) and
paired with the teacher's in the order the user lists them. The teacher is frozen: eval mode, run under
no_grad, never in the optimizer (its requires_grad flags are left as they are); loss modules with parameters (VID's regressor and
variance) train with the student and, under DDP, have their gradients averaged across ranks.

    hook = DistillHook(teacher, [KDLoss(4.0), IRGLoss()], weights=[1.0, 0.5],
                       student_nodes=["layers_5", "layers_8"], teacher_nodes=["layers_5", "layers_8"])
    fxcompress.compile(student, [FineTune(epochs=10, hooks=[hook])], x, train_loader=train)
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.fx as fx
import torch.nn as nn

from ..core.errors import PassError
from ..graph.tracing import trace
from ..train.loop import TrainHook
from .irg import IRGLoss
from .kd import KDLoss, _positive_number
from .taps import Tap, install_taps, remove_taps, with_features
from .vid import VIDLoss


class DistillHook(TrainHook):
    def __init__(self, teacher: nn.Module, losses: Union[nn.Module, Sequence[nn.Module], None] = None,
                 weights: Union[float, Sequence[float]] = 1.0, student_nodes: Sequence[str] = (),
                 teacher_nodes: Sequence[str] = (), weight: Optional[float] = None):
        if not isinstance(teacher, nn.Module):
            raise PassError(f"DistillHook teacher must be an nn.Module, got {type(teacher).__name__}")
        losses = [KDLoss()] if losses is None else [losses] if isinstance(losses, nn.Module) else list(losses)
        if weight is not None:      # the single-loss spelling DistillHook(teacher, KDLoss(), weight=0.5)
            weights = weight
        weights = [weights] * len(losses) if isinstance(weights, (int, float)) else list(weights)
        if len(weights) != len(losses):
            raise PassError(f"DistillHook has {len(losses)} losses but {len(weights)} weights")
        self.weights = [_positive_number("DistillHook", "weight", w, allow_zero=True) for w in weights]
        for loss in losses:
            if not isinstance(loss, (KDLoss, IRGLoss, VIDLoss)):
                raise PassError(f"DistillHook loss {loss!r} is not one of KDLoss, IRGLoss, VIDLoss")
        self.losses = losses
        self.student_nodes, self.teacher_nodes = list(student_nodes), list(teacher_nodes)
        if len(self.student_nodes) != len(self.teacher_nodes):
            raise PassError(f"DistillHook pairs student and teacher layers in the order given: got "
                            f"{len(self.student_nodes)} student nodes {self.student_nodes} and "
                            f"{len(self.teacher_nodes)} teacher nodes {self.teacher_nodes}")
        vids = [loss for loss in losses if isinstance(loss, VIDLoss)]
        if vids and len(vids) != len(self.student_nodes):
            raise PassError(f"DistillHook has {len(vids)} VIDLoss but {len(self.student_nodes)} tapped pairs: "
                            f"give one VIDLoss per pair")
        # frozen by running it in eval mode under no_grad, never by flipping its requires_grad flags: the
        # teacher is often a user's model, which may later be a student itself
        self.teacher = teacher.eval()
        if self.teacher_nodes:
            graph = teacher if isinstance(teacher, fx.GraphModule) else trace(teacher)
            self.teacher = with_features(graph, self.teacher_nodes, "DistillHook teacher_nodes").eval()
        self.taps: List[Tap] = []

    # ---- TrainHook
    def optimizer_groups(self, model: nn.Module) -> List[dict]:
        params = [p for loss in self.losses for p in loss.parameters()]
        return [{"params": params, "weight_decay": 0.0}] if params else []

    def on_train_begin(self, model: nn.Module, steps_per_epoch: int) -> None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for loss in self.losses:
            loss.to(device)
        if self.student_nodes:
            if not isinstance(model, fx.GraphModule):
                raise PassError("DistillHook student_nodes need an fx GraphModule student (fxcompress.compile "
                                "gives one)")
            self.taps = install_taps(model, self.student_nodes, "DistillHook student_nodes")

    def on_train_end(self, model: nn.Module) -> None:
        if self.taps:
            remove_taps(model)
            self.taps = []

    def teacher_outputs(self, inputs: torch.Tensor):
        """(logits, [tapped features]) of the teacher, without gradients."""
        if self.teacher.training:   # something called .train() on it since: BN statistics would drift
            self.teacher.eval()
        self.teacher.to(inputs.device)
        with torch.no_grad():
            out = self.teacher(inputs)
        if self.teacher_nodes:
            return out[0], list(out[1])
        return out, []

    def extra_loss(self, model, inputs, outputs, targets) -> Optional[torch.Tensor]:
        if not isinstance(outputs, torch.Tensor):
            raise PassError(f"DistillHook needs the student to return one logits tensor, got {type(outputs).__name__}")
        t_logits, t_feats = self.teacher_outputs(inputs)
        if not isinstance(t_logits, torch.Tensor):
            raise PassError(f"DistillHook teacher returned {type(t_logits).__name__}; it must return one logits tensor")
        s_feats = [tap.value for tap in self.taps]
        total, vid_index = None, 0
        for loss, w in zip(self.losses, self.weights):
            if isinstance(loss, KDLoss):
                value = loss(outputs, t_logits)
            elif isinstance(loss, IRGLoss):
                value = loss(s_feats + [outputs], t_feats + [t_logits])
            else:
                value = loss(s_feats[vid_index], t_feats[vid_index])
                vid_index += 1
            total = w * value if total is None else total + w * value
        return total

    def after_backward(self, model: nn.Module) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            for p in (p for loss in self.losses for p in loss.parameters()):
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)

    def state_dict(self) -> dict:
        return {f"loss{i}": loss.state_dict() for i, loss in enumerate(self.losses) if list(loss.parameters())}

    def load_state_dict(self, state: dict) -> None:
        for i, loss in enumerate(self.losses):
            if f"loss{i}" in state:
                loss.load_state_dict(state[f"loss{i}"])

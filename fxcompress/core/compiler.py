"""fxcompress.compile: trace, run the passes, return the compressed model, its report and artefacts."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence

import torch
import torch.nn as nn

from .context import PassContext
from .errors import PassError, ShapeError
from .manager import PassManager
from .pass_base import Pass
from .report import Report
from ..graph.capture import capture


@dataclass
class CompileResult:
    model: nn.Module
    report: Report
    artifacts: List[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"CompileResult(model={type(self.model).__name__}, artifacts={self.artifacts})"


def as_input_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs) \
            and len(example_inputs) > 0:
        return tuple(example_inputs)
    raise ShapeError(f"example_inputs must be a tensor or a non-empty tuple of tensors, got "
                     f"{type(example_inputs).__name__}")


def _tensors(model: nn.Module):
    """Every parameter and buffer, in one walk over the modules (parameters() and buffers() walk twice)."""
    for m in model.modules():
        for store in (m._parameters, m._buffers):
            for t in store.values():
                if t is not None:
                    yield t


def compile(model: nn.Module, passes: Sequence[Pass], example_inputs, *, train_loader: Optional[Iterable] = None,
            val_loader: Optional[Iterable] = None, calib_loader: Optional[Iterable] = None, device="cpu",
            leaf_modules: Iterable = (), progress: bool = True) -> CompileResult:
    """Trace `model` and run `passes` over it in order. `model` is never modified: the traced graph shares
    its modules until a transform that writes tensors in place, which works on a copy; the pruning passes
    only read them, building the pruned model beside, whose kept tensors are copied when compile ends. So
    an analysis-only compile copies nothing, and the peak memory is the model plus at most one copy (plus
    the activations of the checking runs). `result.model` shares tensors with `model` when no transform ran.

    A loader is any re-iterable of batches; a batch is an input tensor or `(inputs, targets)`.

        result = fxcompress.compile(torchvision.models.resnet18(), [ChannelGroups(), ExportONNX("r18.onnx")],
                                    torch.randn(1, 3, 224, 224))
    """
    if not isinstance(model, nn.Module):
        raise PassError(f"model must be an nn.Module, got {type(model).__name__}")
    manager = PassManager(passes, progress=progress)
    device = torch.device(device)
    inputs = tuple(t.to(device) for t in as_input_tuple(example_inputs))
    # a model in training mode or elsewhere than `device` needs changing before tracing: copy it now
    shared = not model.training and all(t.device == device for t in _tensors(model))
    gm, capture_info = capture(model if shared else copy.deepcopy(model).to(device).eval(), inputs, leaf_modules)
    ctx = PassContext(gm=gm, example_inputs=inputs, train_loader=train_loader, val_loader=val_loader,
                      calib_loader=calib_loader, device=device, owns_gm=not shared, progress=progress,
                      input_model=model)
    report = Report(model_name=type(model).__name__, capture=capture_info)
    manager.run(ctx, report)
    # a graph still sharing the user's modules is returned as it is (in eval mode at its root, as the model):
    # eval() would set every one of the user's modules to eval mode
    return CompileResult(ctx.gm.eval() if ctx.owns_gm else ctx.gm, report, list(ctx.artifacts))

"""Running calibration data through a fake-quant graph whose quantizers observe, batch by batch."""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from ..core.errors import DataError
from .fake_quant import ActivationQuantizer


def batch_inputs(batch, where: str) -> Tuple[torch.Tensor, ...]:
    """The model inputs of a loader batch: a tensor, or (inputs, targets) with inputs a tensor or tuple."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        if isinstance(first, torch.Tensor):
            return (first,)
        if isinstance(first, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in first):
            return tuple(first)
    raise DataError(f"{where}: a batch must be a tensor or (inputs, targets), got {type(batch).__name__}")


def check_batch(inputs: Sequence[torch.Tensor], where: str) -> None:
    for t in inputs:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise DataError(f"{where} contains NaN or Inf: clean the calibration data")


def model_inputs(loader: Iterable, max_batches: Optional[int] = None, device=None):
    """The model inputs of each loader batch (the first `max_batches`), checked finite, on `device`."""
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        inputs = batch_inputs(batch, f"calib_loader batch {i}")
        check_batch(inputs, f"calib_loader batch {i}")
        yield inputs if device is None else tuple(t.to(device) for t in inputs)


def calibrate(model: torch.nn.Module, loader: Iterable, quantizers: Dict[str, ActivationQuantizer],
              max_batches: Optional[int] = None, device=None, progress: bool = True) -> dict:
    """Feed `loader` through `model` with every quantizer observing; return counts."""
    for q in quantizers.values():
        q.mode = "observe"
    model.eval()
    batches = samples = 0
    total = max_batches if max_batches is not None else (len(loader) if hasattr(loader, "__len__") else None)
    with torch.no_grad():
        bar = tqdm(loader, desc="calibrating", total=total, leave=False, disable=not progress)
        for inputs in model_inputs(bar, max_batches, device):
            model(*inputs)
            batches += 1
            samples += inputs[0].shape[0] if inputs[0].dim() else 1
    if batches == 0:
        raise DataError("calib_loader yielded no batches: give QuantizeINT8 a loader with calibration data")
    unseen = [name for name, q in quantizers.items() if not q.observer.observed]
    if unseen:
        raise DataError(f"calibration never reached {len(unseen)} quantizer(s) (e.g. {unseen[0]}); "
                        f"the calibration inputs do not exercise the whole model")
    for q in quantizers.values():
        q.freeze()
    return {"calib_batches": batches, "calib_samples": samples}

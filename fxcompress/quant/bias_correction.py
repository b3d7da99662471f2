"""Empirical bias correction (Nagel et al., 2019; Finkelstein et al., 2019): rounding the weights to int8
shifts the mean of each output channel; over the calibration data that shift is measured and taken
out of the layer's bias, which the INT8 lowering stores as int32 at no cost.

For a layer y = W x + b with fake-quantized weights W_q, the expected error of channel c is
E[((W_q - W) x)_c], measured on the inputs the quantized model really feeds the layer.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .calibrate import model_inputs


def _weight_error(module: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return module.weight - module.parametrizations.weight.original


def _output_shift(module: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> tuple:
    """Sum over the batch (and positions) of (delta applied to x) per output channel, and the count of
    terms; (None, 0) for layers this does not handle. Linear in x, so it is computed on the batch mean:
    one sample's worth of memory whatever the batch size."""
    batch = x.shape[0] if x.dim() > 1 else 1
    if isinstance(module, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
        y = F.linear(rows.mean(0, keepdim=True), delta)
        return y[0] * rows.shape[0], rows.shape[0]
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(delta.dim() - 2)
    if conv is None or module.padding_mode != "zeros":
        return None, 0   # not measured here (reflect/circular padding): left uncorrected
    y = conv(x.mean(0, keepdim=True), delta, None, module.stride, module.padding, module.dilation, module.groups)
    positions = y[0, 0].numel()
    return y[0].reshape(y.shape[1], -1).sum(1) * batch, positions * batch


def correct_biases(model: nn.Module, modules: Dict[str, nn.Module], loader: Iterable,
                   max_batches: Optional[int] = None, device=None) -> dict:
    """Measure each quantized layer's mean output shift on `loader` and subtract it from its bias (a zero
    bias is added where a layer has none). Returns {"bias_corrected_layers", "max_bias_shift"}."""
    sums: Dict[str, torch.Tensor] = {}
    counts: Dict[str, int] = {}
    deltas = {name: _weight_error(m) for name, m in modules.items()}
    handles = []
    for name, m in modules.items():
        def hook(mod, args, name=name):
            with torch.no_grad():
                s, n = _output_shift(mod, args[0], deltas[name])
            if s is None:
                return
            sums[name] = sums.get(name, 0) + s.double()
            counts[name] = counts.get(name, 0) + n
        handles.append(m.register_forward_pre_hook(hook))
    model.eval()
    try:
        with torch.no_grad():
            for inputs in model_inputs(loader, max_batches, device):
                model(*inputs)
    finally:
        for h in handles:
            h.remove()
    largest = 0.0
    for name, m in modules.items():
        if name not in sums:
            continue
        shift = (sums[name] / max(counts[name], 1)).to(m.parametrizations.weight.original.dtype)
        with torch.no_grad():
            if m.bias is None:
                m.bias = nn.Parameter(torch.zeros_like(shift))
            # the float model's bias, for comparing the quantized model with it (quant.fake_quant.float_mode)
            m.register_buffer("float_bias", m.bias.detach().clone(), persistent=False)
            m.bias -= shift
        largest = max(largest, float(shift.abs().max()))
    return {"bias_corrected_layers": len(sums), "max_bias_shift": largest}

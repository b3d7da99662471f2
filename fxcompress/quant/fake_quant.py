"""Fake-quantization modules: they compute in float what the INT8 model computes, and export to ONNX
as QuantizeLinear/DequantizeLinear (torch.fake_quantize_* with the TorchScript exporter).
Gradients pass straight through inside the clipping range (the straight-through estimator)."""
from __future__ import annotations


import torch
import torch.nn as nn

from .observers import QMAX, QMIN, ActivationObserver, CalibrationConfig

WEIGHT_QMIN, WEIGHT_QMAX = -128, 127   # symmetric scales (max|w| / 127) never reach -128; ONNX export wants the full int8 range
# the codes a weight of `bits` bits takes inside int8: 7 bits keep an int16 pair of u8 x s8 products from
# saturating on AVX2 without VNNI (ort_integer_kernels.py); onnxruntime's reduce_range uses the same [-64, 64]
WEIGHT_CODE_RANGES = {8: (WEIGHT_QMIN, WEIGHT_QMAX), 7: (-64, 64)}
MIN_SCALE = 1e-12


def exporting() -> bool:
    """Whether the module runs under torch.onnx / jit tracing (the emulation of onnxruntime steps aside)."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting()


class ActivationQuantizer(nn.Module):
    """Per-tensor uint8 fake quantization of an activation. Modes: "observe" (collect statistics,
    pass x through) and "quantize". A second call site may reuse the parameters with observe=False
    (ops such as max-pool that keep their input's quantization).
    With `divide` (set by quant.emulate.install_integer_emulation) an eval-mode forward rounds x / scale
    as onnxruntime's QuantizeLinear does, not x * (1 / scale) as torch.fake_quantize_* does: on a float
    tensor (the model's input, the output of a float Sigmoid or Mul) they differ on ~2e-6 of the codes."""

    divide = False

    def __init__(self, config: CalibrationConfig, upper_bound=None, label: str = ""):
        super().__init__()
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.mode = "observe"
        self.upper_bound = upper_bound
        self.label = label
        self.observer = ActivationObserver(config)

    def forward(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "observe":
            if observe:
                self.observer.update(x, self.label)
            return x
        if self.divide and not self.training and not exporting():
            scale, zp = self.scale.to(x.dtype), self.zero_point.to(x.dtype)
            return (torch.clamp(torch.round(x / scale) + zp, QMIN, QMAX) - zp) * scale
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, QMIN, QMAX)

    def freeze(self) -> None:
        """Turn the observed statistics into (scale, zero point) and start quantizing."""
        scale, zero_point = self.observer.qparams(self.upper_bound)
        self.scale.fill_(max(scale, MIN_SCALE))
        self.zero_point.fill_(zero_point)
        self.mode = "quantize"

    def extra_repr(self) -> str:
        return f"{self.label}, mode={self.mode}, scale={self.scale.item():.4g}, zero_point={self.zero_point.item()}"


class WeightQuantizer(nn.Module):
    """A parametrization (torch.nn.utils.parametrize) fake-quantizing a weight to symmetric int8, per
    output channel (`axis`) or per tensor, with codes in WEIGHT_CODE_RANGES[bits] (stored as int8 either
    way). The scale follows the weight while training (QAT) and is frozen in eval mode, so the exported
    graph holds constant scales.

        >>> parametrize.register_parametrization(conv, "weight", WeightQuantizer(conv.weight, axis=0, bits=7))
    """

    def __init__(self, weight: torch.Tensor, axis, symmetric: bool = True, bits: int = 8):
        super().__init__()
        if bits not in WEIGHT_CODE_RANGES:
            raise ValueError(f"weight bits must be one of {sorted(WEIGHT_CODE_RANGES)}, got {bits!r}")
        self.axis = axis
        self.symmetric = symmetric
        self.bits = bits
        shape = (weight.shape[axis],) if axis is not None else ()
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        self.update(weight)

    @torch.no_grad()
    def update(self, weight: torch.Tensor) -> None:
        w = weight.detach().float()
        if self.axis is not None:
            flat = w.transpose(0, self.axis).reshape(w.shape[self.axis], -1)
            lo, hi = flat.amin(dim=1), flat.amax(dim=1)
        else:
            lo, hi = w.min(), w.max()
        qmin, qmax = WEIGHT_CODE_RANGES[self.bits]
        if self.symmetric:
            scale = torch.maximum(lo.abs(), hi.abs()) / min(-qmin, qmax)   # zero point 0, as the u8s8 kernels want
            zero_point = torch.zeros_like(scale, dtype=torch.int32)
        else:  # asymmetric over [min(0, lo), max(0, hi)]
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
            scale = (hi - lo) / float(qmax - qmin)
            zero_point = (qmin - torch.round(lo / scale.clamp(min=MIN_SCALE))).clamp(qmin, qmax).to(torch.int32)
        self.scale.copy_(scale.clamp(min=MIN_SCALE))
        self.zero_point.copy_(zero_point)

    enabled = True   # off in float_mode(): the float weight passes through

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        if self.training:
            self.update(weight)
        qmin, qmax = WEIGHT_QMIN, WEIGHT_QMAX   # the scale keeps the codes within WEIGHT_CODE_RANGES[bits]
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(weight, self.scale, self.zero_point, qmin, qmax)
        return torch.fake_quantize_per_channel_affine(weight, self.scale, self.zero_point, self.axis, qmin, qmax)


@torch.no_grad()
def refresh_weight_scales(gm: nn.Module) -> None:
    """Recompute every weight quantizer's scale from its layer's current weight (after QAT's last optimizer
    step the frozen scales are those of the weights before it, whose codes could leave the range)."""
    for m in gm.modules():
        weights = getattr(m, "parametrizations", None)
        if weights is not None and "weight" in weights:
            for p in weights.weight:
                if isinstance(p, WeightQuantizer):
                    p.update(weights.weight.original)


def is_quantized(gm: nn.Module) -> bool:
    """Whether a graph carries fake-quant modules (QuantizeINT8 ran on it)."""
    return any(isinstance(m, (ActivationQuantizer, WeightQuantizer)) for m in gm.modules())


# onnxruntime's integer kernels accumulate bias + products in int32 and wrap on overflow: a bias stored near
# int32's limit (a channel whose weights are ~0 beside its bias, as timm's zero-initialised last BatchNorms
# leave them: b / (s_x * s_w) beyond 2^31, saturated) plus positive products flips the output's sign
INT32_BIAS_HEADROOM = 2 ** 30


@torch.no_grad()
def fit_bias_to_int32(layer: nn.Module, input_scale: torch.Tensor) -> int:
    """Raise the weight scale of the channels whose int32 bias b / (s_x * s_w) would exceed 2^30 (the
    products of a layer stay far below the other 2^30); returns how many. Their weights, tiny beside the
    bias, round more coarsely; the bias is kept."""
    if getattr(layer, "bias", None) is None:
        return 0
    wq = layer.parametrizations.weight[0]
    need = layer.bias.detach().float().abs() / (input_scale.float() * INT32_BIAS_HEADROOM)
    if wq.scale.dim() == 0:
        raised = int(need.max() > wq.scale)
        wq.scale.copy_(torch.maximum(wq.scale, need.max()))
        return raised
    raised = need > wq.scale
    wq.scale.copy_(torch.where(raised, need, wq.scale))
    return int(raised.sum())

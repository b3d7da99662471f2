"""Pooling (max, average, adaptive; 1-3 spatial dims; module and functional) and upsampling (nn.Upsample,
F.interpolate: the FPN of a detector).

Channels: batch and channel dims pass through; spatial dims are the op's business. INT8: average pools
run as QLinearAveragePool / QLinearGlobalAveragePool (input and output requantized); max-pools only
select values, so they reuse their input's quantization and run on uint8.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import COUPLING, QUANT, QuantRule

POOLS = {  # spatial dims -> (module types, functions)
    1: ((nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d),
        (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d)),
    2: ((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d),
        (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch._C._nn.avg_pool2d)),
    3: ((nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d),
        (F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d)),
}


def pool_coupling(spatial: int):
    def rule(r) -> None:
        x, y = r.arg(0, "input"), r.out()
        if y is None:
            raise ValueError("pooling with indices")
        for d in range(r.rank(y) - spatial):
            r.same(x, d, y, d)
    return rule


for _spatial, (_modules, _functions) in POOLS.items():
    COUPLING.register(*_modules, *_functions, rule=pool_coupling(_spatial))

@COUPLING.register(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, F.interpolate, F.upsample)
def upsample_coupling(r) -> None:
    """Batch and channel dims pass through; the spatial dims are resampled."""
    x, y = r.arg(0, "input"), r.out()
    for d in range(min(2, r.rank(y))):
        r.same(x, d, y, d)


AVERAGE_POOL = QuantRule("requantize")
QUANT.register(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d, F.adaptive_avg_pool2d,
               F.avg_pool2d, rule=AVERAGE_POOL)
QUANT.register(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, F.max_pool2d, rule=QuantRule("passthrough"))

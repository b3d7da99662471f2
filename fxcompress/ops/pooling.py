"""Pooling (max, average, adaptive; 1-3 spatial dims; module and functional) and upsampling (nn.Upsample,
F.interpolate: the FPN of a detector).

Channels: batch and channel dims pass through; spatial dims are the op's business. INT8: average pools
run as QLinearAveragePool / QLinearGlobalAveragePool (input and output requantized), and so does a mean over
H and W (rewritten as the global pool it is, `SpatialMean`); max-pools only
select values, so they reuse their input's quantization and run on uint8. ONNX export: torch's exporter
writes an adaptive pool with an output over 1 only when it can read the input's size, which it loses
behind a Pad or a reshape with computed sizes; the recorded sizes make it a plain pool where they divide,
and an average over uneven windows a product with a constant averaging matrix per spatial dim.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .reduction import reduction_args
from .registry import COUPLING, EXPORT, QUANT, ExportRule, QuantRule, graph_constant, static_shape

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


class SpatialMean(nn.Module):
    """`x.mean((2, 3), keepdim)` of an NCHW map (a squeeze-excitation's squeeze) as the global average pool it
    is. QuantizeINT8 inlines it in place of the mean ("decompose" below), so the mean runs in INT8 as
    QLinearGlobalAveragePool, whose arithmetic the INT8 check emulates exactly; a float ReduceMean between
    DequantizeLinear and QuantizeLinear sums in another order than torch and flips codes (fbnetv3_b).

        y = SpatialMean(keepdim=True)(x)    # == x.mean((2, 3), keepdim=True)
    """

    def __init__(self, keepdim: bool):
        super().__init__()
        self.keepdim = keepdim

    def forward(self, x):
        y = F.adaptive_avg_pool2d(x, 1)
        return y if self.keepdim else y.flatten(1)


def _is_spatial_mean(node, modules=None) -> bool:
    found = reduction_args(node)
    shape = static_shape(found[0]) if found is not None else None
    return shape is not None and len(shape) == 4 and found[1] == (2, 3)


def spatial_mean_as_pool(_, node):
    x, _, keepdim = reduction_args(node)
    return SpatialMean(keepdim), [x]


QUANT.register(torch.mean, "mean", rule=QuantRule("decompose", decompose=spatial_mean_as_pool,
                                                  applies=_is_spatial_mean))
MAX_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
MAX_POOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d)
QUANT.register(*MAX_POOL_MODULES, *MAX_POOL_FUNCTIONS, rule=QuantRule("passthrough"))


def is_max_pool(node, modules) -> bool:
    """Whether an fx node max-pools (a module or a function call)."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), MAX_POOL_MODULES)
    return node.op == "call_function" and node.target in MAX_POOL_FUNCTIONS


def _averaging_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_in, n_out): column i averages adaptive pooling's window i, [floor(i n_in / n_out), ceil((i+1) n_in / n_out))."""
    m = torch.zeros(n_in, n_out)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[lo:hi, i] = 1.0 / (hi - lo)
    return m


def adaptive_export(kind: str, spatial: int):
    def rewrite(gm, node, module):
        x = node.args[0]
        shape = static_shape(x)
        if module is not None:
            size, indices = module.output_size, getattr(module, "return_indices", False)
        else:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            indices = (node.args[2] if len(node.args) > 2 else node.kwargs.get("return_indices", False))
        if shape is None or indices or len(shape) < spatial + 1:
            return None
        size = (size,) * spatial if isinstance(size, int) else tuple(size)
        ins = shape[-spatial:]
        outs = tuple(i if o is None else o for i, o in zip(ins, size))
        if not all(isinstance(o, int) for o in outs) or all(o == 1 for o in outs):
            return None   # a global pool: the exporter writes GlobalAveragePool / GlobalMaxPool itself
        g = gm.graph
        if all(i % o == 0 for i, o in zip(ins, outs)):
            kernel = tuple(i // o for i, o in zip(ins, outs))
            pool = getattr(F, f"{kind}_pool{spatial}d")
            return g.call_function(pool, (x, kernel, kernel))
        if kind != "avg" or spatial > 2:
            return None
        # uneven windows: an average is linear, so per spatial dim (last first) x @ M, M (in, out)
        y = x
        for d in range(spatial):
            axis = len(shape) - 1 - d
            m = graph_constant(gm, _averaging_matrix(ins[-1 - d], outs[-1 - d]), "adaptive_avg")
            if d:
                y = g.call_function(torch.transpose, (y, axis, -1))
            y = g.call_function(torch.matmul, (y, m))
            if d:
                y = g.call_function(torch.transpose, (y, axis, -1))
        return y
    return rewrite


for _spatial, (_modules, _functions) in POOLS.items():
    for _kind, _module, _function in (("avg", _modules[2], _functions[2]), ("max", _modules[3], _functions[3])):
        EXPORT.register(_module, _function, rule=ExportRule(rewrite=adaptive_export(_kind, _spatial)))

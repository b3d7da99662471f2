"""onnxruntime's float kernels, bit for bit, for the float ops left between quantized ones (Sigmoid/SiLU
gates, BatchNorms FoldBatchNorm cannot fold, softmaxes; and QLinearSoftmax, what a softmax between two
quantizers becomes): the fake-quant model must compute their outputs exactly as onnxruntime does, or the next
quantizer's codes can differ by a step (efficientnet_b7, densenet121, YOLOv8's DFL softmax). Which kernel
variant this CPU's onnxruntime runs is probed once per process. Used by `emulate.py`.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F


# MLAS's logistic (onnxruntime/core/mlas/lib/logistic.cpp, Eigen's coefficients): clamp x to [-18, 18],
# p = x * poly_9(x^2), q = poly_10(x^2), sigmoid = p / q + 0.5, in float32 (Horner steps as multiply-adds)
_LOGISTIC = {"range": 18.0, "alpha": (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
                                      8.51377133304701e-03, 2.48287947061529e-01),
             "beta": (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06, 1.70198817374094e-03,
                      1.16817656904453e-01, 9.93151921023180e-01)}
# (fused multiply-adds, upper clamp to 1) of the kernels MLAS dispatches to: AVX2/FMA3 assembly (x86-64 today)
# = (True, False); ARM NEON = (True, True); SSE2 = (False, True); SVE = (True, False)
LOGISTIC_VARIANTS = ((True, False), (True, True), (False, True), (False, False))


_F32_ROUNDING_BITS = (1 << 29) - 1   # the float64 mantissa bits below a (normal) float32's
_F32_MIDPOINT = 1 << 28


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add a * b + c, rounded once, for results in float32's normal range. The
    float64 product of two float32 is exact, and rounding the float64 sum to float32 is then correct unless
    that sum fell on a float32 midpoint while inexact (double rounding): rare, and settled by the sum's
    rounding error (TwoSum) for those elements only."""
    p = a.double() * b.double()
    c = c.double()
    s = p + c
    out = s.float()
    tie = (s.view(torch.int64) & _F32_ROUNDING_BITS) == _F32_MIDPOINT
    if bool(tie.any()):
        pt, ct = torch.broadcast_to(p, s.shape)[tie], torch.broadcast_to(c, s.shape)[tie]
        st = s[tie]
        v = st - pt
        err = (pt - (st - v)) + (ct - v)
        nudged = torch.nextafter(st, torch.where(err > 0, torch.tensor(float("inf"), dtype=torch.float64),
                                                 torch.tensor(float("-inf"), dtype=torch.float64)))
        out[tie] = torch.where(err != 0, nudged, st).float()
    return out


def mlas_logistic(x: torch.Tensor, fused: bool = True, clamp_high: bool = False) -> torch.Tensor:
    """onnxruntime's float Sigmoid, bit for bit (for the variant onnxruntime runs: `ort_logistic_variant`)."""
    def const(v):
        return torch.tensor(v, dtype=torch.float32)
    def madd(a, b, c):
        return fma32(a, b, c) if fused else a * b + c
    bound = _LOGISTIC["range"]
    v = torch.clamp(x.float(), -bound, bound)
    v2 = v * v
    alpha, beta = [const(a) for a in _LOGISTIC["alpha"]], [const(b) for b in _LOGISTIC["beta"]]
    p = madd(v2, alpha[0], alpha[1])
    for a in alpha[2:]:
        p = madd(p, v2, a)
    p = p * v
    q = madd(v2, beta[0], beta[1])
    for b in beta[2:]:
        q = madd(q, v2, b)
    out = (p / q + 0.5).clamp(min=0.0)
    return out.clamp(max=1.0) if clamp_high else out


def probe_session(model, ort):
    """A one-thread CPU session of a one-op probe model (what this CPU's onnxruntime computes for it)."""
    model.ir_version = min(model.ir_version, 8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _logistic_probe() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.linspace(-20.0, 20.0, 40001), torch.randn(40000, generator=g) * 6.0,
                      torch.randn(10000, generator=g) * 1e-3, 18.0 - torch.rand(10000, generator=g) * 4.0])


@functools.lru_cache(maxsize=None)
def ort_logistic_variant() -> Optional[Tuple[bool, bool]]:
    """The `mlas_logistic` variant that reproduces this onnxruntime's Sigmoid and x * Sigmoid(x) (as written for
    SiLU, after its graph optimizations) on probe values, bit for bit; None if none does (or no onnxruntime)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:   # pragma: no cover - onnxruntime is a dependency of the INT8 export
        return None
    nodes = [helper.make_node("Sigmoid", ["x"], ["sig"]), helper.make_node("Mul", ["x", "sig"], ["silu"])]
    graph = helper.make_graph(nodes, "logistic_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None]) for n in ("sig", "silu")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        session = probe_session(model, ort)
        x = _logistic_probe()
        sig, silu = (torch.from_numpy(a) for a in session.run(None, {"x": x.numpy()}))
    except Exception:   # noqa: BLE001 - no probe, no emulation: torch's sigmoid stays
        return None
    for variant in LOGISTIC_VARIANTS:
        ours = mlas_logistic(x, *variant)
        if torch.equal(ours, sig) and torch.equal(x * ours, silu):
            return variant
    return None


def logistic_kind(node: fx.Node, modules) -> Optional[str]:
    """"sigmoid" or "silu" for a node computing one (not in place on a tensor others read), else None."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, nn.Sigmoid):
            return "sigmoid"
        if isinstance(m, nn.SiLU):
            return "silu"
        return None
    if node.op == "call_function" and node.target in (torch.sigmoid, F.sigmoid):
        return "sigmoid"
    if node.op == "call_function" and node.target is F.silu:
        return "silu"
    if node.op == "call_method" and node.target == "sigmoid":
        return "sigmoid"
    return None


# inverse standard deviations as onnxruntime's BatchNormalization may compute Eigen's
# (var + eps).sqrt().inverse() (on this CPU: what torch.rsqrt computes, not 1 / sqrt, measured), and whether
# y = x * scale + bias is one fused multiply-add (here: not)
_INV_STD = {"rsqrt": lambda v: torch.rsqrt(v), "div_sqrt": lambda v: 1.0 / torch.sqrt(v),
            "float64": lambda v: (1.0 / torch.sqrt(v.double())).float()}
BATCH_NORM_VARIANTS = tuple((inv, fused) for inv in _INV_STD for fused in (False, True))


def ort_batch_norm(x: torch.Tensor, bn: nn.Module, inv_std: str = "rsqrt", fused: bool = False) -> torch.Tensor:
    """onnxruntime's float BatchNormalization (inference): scale = inv_std(var + eps) * weight,
    bias' = bias - mean * scale, y = x * scale + bias', all in float32 (eps as the float attribute)."""
    var = bn.running_var.float()
    weight = bn.weight.float() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.float() if bn.bias is not None else torch.zeros_like(var)
    scale = _INV_STD[inv_std](var + torch.tensor(bn.eps, dtype=torch.float32, device=var.device)) * weight
    shift = bias - bn.running_mean.float() * scale
    shape = [1, -1] + [1] * (x.dim() - 2)
    x = x.float()
    scale, shift = scale.reshape(shape).expand_as(x), shift.reshape(shape).expand_as(x)
    return fma32(x, scale, shift) if fused else x * scale + shift


@functools.lru_cache(maxsize=None)
def ort_batch_norm_variant() -> Optional[Tuple[str, bool]]:
    """The `ort_batch_norm` variant that reproduces this onnxruntime's BatchNormalization bit for bit on a
    probe (variances over nine decades, random inputs); None if none does."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:   # pragma: no cover
        return None
    g = torch.Generator().manual_seed(0)
    channels = 256
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.running_var.copy_(torch.logspace(-5, 4, channels) * (1 + torch.rand(channels, generator=g)))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.weight.copy_(1 + 0.3 * torch.randn(channels, generator=g))
        bn.bias.copy_(torch.randn(channels, generator=g))
    x = torch.randn(4, channels, 8, 8, generator=g) * 3
    params = [numpy_helper.from_array(t.detach().numpy(), n) for t, n in
              ((bn.weight, "w"), (bn.bias, "b"), (bn.running_mean, "m"), (bn.running_var, "v"))]
    node = helper.make_node("BatchNormalization", ["x", "w", "b", "m", "v"], ["y"], epsilon=float(bn.eps))
    graph = helper.make_graph([node], "batch_norm_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, channels, None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    try:
        session = probe_session(model, ort)
        y = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    except Exception:   # noqa: BLE001 - no probe, no emulation
        return None
    with torch.no_grad():
        for variant in BATCH_NORM_VARIANTS:
            if torch.equal(ort_batch_norm(x, bn, *variant), y):
                return variant
    return None


def float_batch_norm(node: fx.Node, modules) -> Optional[nn.Module]:
    """The BatchNorm module a node runs, if onnxruntime runs it as a float BatchNormalization (running
    statistics; FoldBatchNorm left it: after a concatenation, a pool, the input)."""
    m = modules.get(node.target) if node.op == "call_module" else None
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None and m.running_mean is not None:
        return m
    return None


# MLAS's softmax (onnxruntime/core/mlas/lib/compute.cpp, MlasComputeSoftmaxThreaded), row by row along the axis
# (opset >= 13 transposes it last; the exporter writes opset 17): max, e = exp(x - max) by
# MLAS's own polynomial (MlasExpConstants), sum of e over SIMD lanes, y = e * fl32(1 / sum) (a multiply,
# not a division). Per kernel (x86_64 TransKernel*.S): the lower clamp of x - max, how 2^m is applied, and the
# accumulator's width; lane j sums elements j, j + width, ... in order, then the lanes are added pairwise.
_EXP = {"lower": -103.9720840454, "lower_sum_exp": -88.3762626647949, "rounding_bias": 12582912.0,
        "log2_reciprocal": 1.44269504088896341, "log2_high": -6.93145752e-1, "log2_low": -1.42860677e-6,
        "poly": tuple(float.fromhex(h) for h in ("0x1.694000p-10", "0x1.125edcp-7", "0x1.555b5ap-5",
                                                  "0x1.555450p-3", "0x1.fffff6p-2", "0x1.0p+0", "0x1.0p+0"))}
# AVX512F: clamp at -103.97, vscalefps (exact 2^m, denormals rounded once), 16 lanes (48 per step, then 16,
# masked); FMA3 (AVX2): clamp at -88.38, 2^m built in the exponent bits, 8 lanes (read from the source, not
# measured: this machine runs AVX512F). The SSE2 / NEON C kernels (4 lanes, scalar tail) are not reproduced.
SOFTMAX_VARIANTS = ("avx512f", "fma3")


def _exp_bits_scale(biased: torch.Tensor) -> torch.Tensor:
    """2^m as MLAS's FMA3 kernel makes it: (bits of m + rounding bias) << 23, + the bits of 1.0, in int32."""
    bits = ((biased.view(torch.int32).long() << 23) + 0x3F800000) & 0xFFFFFFFF
    return torch.where(bits >= 2 ** 31, bits - 2 ** 32, bits).to(torch.int32).view(torch.float32)


def _mlas_sum_exp_terms(v: torch.Tensor, variant: str) -> torch.Tensor:
    """exp(v) for v = x - max <= 0, as MlasComputeSumExpF32Kernel's variant computes it (float32, fused)."""
    def const(c):
        return torch.tensor(c, dtype=torch.float32, device=v.device)
    bias = const(_EXP["rounding_bias"])
    v = torch.maximum(v, const(_EXP["lower" if variant == "avx512f" else "lower_sum_exp"]))
    biased = fma32(v, const(_EXP["log2_reciprocal"]), bias)
    m = biased - bias
    v = fma32(m, const(_EXP["log2_high"]), v)
    v = fma32(m, const(_EXP["log2_low"]), v)
    p = const(_EXP["poly"][0]).expand_as(v)
    for c in _EXP["poly"][1:]:
        p = fma32(p, v, const(c))
    if variant == "avx512f":
        return (p.double() * torch.exp2(m.double())).float()     # exact product, one rounding (vscalefps)
    return p * _exp_bits_scale(biased)


def _lane_sum(e: torch.Tensor, lanes: int) -> torch.Tensor:
    """Row sums of e [rows, D] in the kernel's order: `lanes` accumulators, then halves added pairwise
    (AVX512F: lane i + lane i+8, then vhaddps twice and the two 128-bit halves)."""
    rows, d = e.shape
    e = torch.cat([e, e.new_zeros(rows, (-d) % lanes)], 1).reshape(rows, -1, lanes)
    acc = e[:, 0]
    for k in range(1, e.shape[1]):
        acc = acc + e[:, k]
    if lanes == 16:
        acc = acc[:, 8:] + acc[:, :8]
    pairs = [acc[:, 2 * i] + acc[:, 2 * i + 1] for i in range(4)]
    return (pairs[0] + pairs[1]) + (pairs[2] + pairs[3])


def mlas_softmax(x: torch.Tensor, dim: int, variant: str = "avx512f") -> torch.Tensor:
    """onnxruntime's float Softmax over `dim`, bit for bit (for the variant it runs: `ort_softmax_variant`)."""
    moved = x.float().movedim(dim, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    e = _mlas_sum_exp_terms(rows + (-rows.amax(1, keepdim=True)), variant)
    total = _lane_sum(e, 16 if variant == "avx512f" else 8)
    out = e * (torch.ones_like(total) / total)[:, None]
    return out.reshape(moved.shape).movedim(-1, dim)


def _softmax_probe() -> Tuple[torch.Tensor, ...]:
    """Rows of 16 (YOLOv8's DFL), 37 (a masked tail), 100 (the 48-wide steps), spreads that reach the clamps."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(256, 16, generator=g) * 4.0, torch.randn(128, 37, generator=g) * 30.0,
            torch.randn(64, 100, generator=g) * 2.0)


@functools.lru_cache(maxsize=None)
def ort_softmax_variant() -> Optional[str]:
    """The `mlas_softmax` variant that reproduces this onnxruntime's Softmax (opset 17, last axis) on probe
    rows bit for bit; None if none does (or no onnxruntime)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:   # pragma: no cover
        return None
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "softmax_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        session = probe_session(model, ort)
        probes = [(x, torch.from_numpy(session.run(None, {"x": x.numpy()})[0])) for x in _softmax_probe()]
    except Exception:   # noqa: BLE001 - no probe, no emulation: torch's softmax stays
        return None
    for variant in SOFTMAX_VARIANTS:
        if all(torch.equal(mlas_softmax(x, -1, variant), y) for x, y in probes):
            return variant
    return None


# onnxruntime fuses DequantizeLinear -> Softmax -> QuantizeLinear into QLinearSoftmax (com.microsoft), another
# algorithm on the uint8 codes. As onnxruntime 1.32's library computes it (read from its machine code: the
# source versions differ): a table t[c] = fl32(exp((c - 255 + b) * s_x)), b = max(0, logf(FLT_MAX / D) - 5) / s_x
# (double exp, float logf), read at c + 255 - the row's largest code; sum = the row's t in order, in float32;
# y = clamp(rne(t * Y / sum) + zp_y, 0, 255) in double, with Y = floorf(1 / s_y), not 1 / s_y: codes differ
# from the float softmax's (YOLOv8n's DFL: 5.7e-2 of them).
@functools.lru_cache(maxsize=None)
def _softmax_table(x_scale: float, d: int) -> torch.Tensor:
    ratio = float(torch.tensor(torch.finfo(torch.float32).max) / torch.tensor(float(d)))
    try:   # the C library's logf, as onnxruntime calls it
        import ctypes
        import ctypes.util
        libm = ctypes.CDLL(ctypes.util.find_library("m"))
        libm.logf.restype, libm.logf.argtypes = ctypes.c_float, [ctypes.c_float]
        log_ratio = float(libm.logf(ratio))
    except (OSError, AttributeError, TypeError):   # pragma: no cover - no C library: logf rounded (~always equal)
        log_ratio = float(torch.tensor(math.log(ratio), dtype=torch.float32))
    shift = max(0.0, log_ratio - 5.0) / x_scale
    return torch.tensor([math.exp((c - 255 + shift) * x_scale) for c in range(256)], dtype=torch.float64).float()


def qlinear_softmax(codes: torch.Tensor, dim: int, x_scale: torch.Tensor, y_scale: torch.Tensor,
                    y_zero_point: int) -> torch.Tensor:
    """QLinearSoftmax's uint8 output codes (as float) from its uint8 input codes (as float or int)."""
    moved = codes.movedim(dim, -1)
    rows = moved.reshape(-1, moved.shape[-1]).long()
    table = _softmax_table(float(x_scale.float()), rows.shape[1]).to(codes.device)
    t = table[rows + 255 - rows.amax(1, keepdim=True)]
    total = t[:, 0]
    for k in range(1, t.shape[1]):
        total = total + t[:, k]
    y = torch.floor(torch.ones_like(y_scale.float()) / y_scale.float()).double()
    out = (torch.round(t.double() * y / total.double()[:, None]) + y_zero_point).clamp(0, 255)
    return out.float().reshape(moved.shape).movedim(-1, dim)


@functools.lru_cache(maxsize=None)
def ort_qlinear_softmax_exact() -> bool:
    """Whether `qlinear_softmax` reproduces this onnxruntime's QDQ Softmax codes (fused: QLinearSoftmax)."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:   # pragma: no cover
        return False
    g = torch.Generator().manual_seed(0)
    # ties of equal codes (D = 2, floor(1 / s_y) = 305), a near-uniform row of 16 as YOLOv8's DFL, long rows
    for d, sx, sy, zy, low in ((2, 0.0667, 0.00328, 7, 0), (16, 0.05, 2.7e-4, 0, 120), (37, 0.3, 1 / 255, 3, 0),
                               (100, 0.2, 2e-4, 1, 200)):
        codes = torch.randint(low, 256, (2048, d), generator=g, dtype=torch.uint8)
        inits = [numpy_helper.from_array(np.array(v, t), n) for v, t, n in
                 ((sx, np.float32, "sx"), (128, np.uint8, "zx"), (sy, np.float32, "sy"), (zy, np.uint8, "zy"))]
        nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
                 helper.make_node("Softmax", ["xf"], ["yf"], axis=-1),
                 helper.make_node("QuantizeLinear", ["yf", "sy", "zy"], ["y"])]
        graph = helper.make_graph(nodes, "qlinear_softmax_probe",
                                  [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, d])],
                                  [helper.make_tensor_value_info("y", TensorProto.UINT8, [None, d])], initializer=inits)
        try:
            y = probe_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), ort) \
                .run(None, {"x": codes.numpy()})[0]
        except Exception:   # noqa: BLE001
            return False
        ours = qlinear_softmax(codes, -1, torch.tensor(sx), torch.tensor(sy), zy)
        if not torch.equal(ours, torch.from_numpy(y.astype(np.float32))):
            return False
    return True


_SOFTMAX_FUNCTIONS = (torch.softmax, F.softmax, torch.Tensor.softmax)


def softmax_dim(node: fx.Node, modules) -> Optional[int]:
    """The dim of a node computing a float32 softmax (nn.Softmax, F.softmax, torch.softmax, x.softmax), else
    None (an implicit dim, a dtype given positionally or other than float32)."""
    if node.op == "call_module":
        m = modules.get(node.target)
        dim, dtype = (m.dim, None) if isinstance(m, nn.Softmax) else (None, None)
    elif ((node.op == "call_function" and node.target in _SOFTMAX_FUNCTIONS)
          or (node.op == "call_method" and node.target == "softmax")) and len(node.args) <= 2 \
            and set(node.kwargs) <= {"dim", "dtype", "_stacklevel"}:
        dim, dtype = node.args[1] if len(node.args) == 2 else node.kwargs.get("dim"), node.kwargs.get("dtype")
    else:
        return None
    meta_dtype = getattr(node.meta.get("tensor_meta"), "dtype", torch.float32)
    if not isinstance(dim, int) or dtype not in (None, torch.float32) or meta_dtype != torch.float32:
        return None
    return dim

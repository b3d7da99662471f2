"""Integer emulation: make the fake-quant graph compute, in eval mode, the very codes onnxruntime's integer
kernels produce, so that the fake-quant model is the model that ORT runs (not a float approximation of it).

Float fake quantization differs from the integer kernels in two places that matter (measured: with them
emulated, ORT's INT8 output matches the fake-quant model to ~100 dB; without, deep nets lost 3-10 dB):
- QLinearConv / QGemm with a quantized output: the bias is int32, round(b / fl32(s_x * s_w)), the
  accumulation is exact, and the requantization is rne(fl32(acc) * fl32(fl32(s_x * s_w) / s_y)) + zp_y;
  float conv + float bias + fake_quantize rounds differently for a fraction of the codes (1e-3 .. 1e-2
  from the int32 bias rounding alone);
- QLinearAdd: MLAS computes rne(fma(a, s_a/s_c, fma(b, s_b/s_c, zp_c - (s_a/s_c zp_a + s_b/s_c zp_b))))
  on the uint8 codes (fused multiply-adds in float32), not (a_f + b_f) / s_c.
Ops kept in float between quantizers must match onnxruntime's float kernels bit for bit as well: a value
one ulp away rounds to another code whenever it lies on a rounding boundary, and a deep random-init net
amplifies a single flipped code into noise of the order of quantization's own. onnxruntime's Sigmoid
(and SiLU, exported as x * Sigmoid(x)) is MLAS's rational approximation, not torch.sigmoid: they differ
by one ulp on about half of the values, which flipped 1 code in 245760 at efficientnet_b7's 14th squeeze-excitation
gate and brought onnxruntime vs fake-quant down to 16.5 dB (quantization: 6.7 dB). `mlas_logistic`
computes the approximation as the kernel onnxruntime dispatches to on this CPU does (which one: probed
once per process, `ort_logistic_variant`; the float kernels live in `ort_float_ops.py`); without a bit-exact match torch's own sigmoid is kept. And the
QuantizeLinear that follows a float op rounds x / s (MLAS divides), where torch.fake_quantize_* rounds
x * (1 / s): ~2e-6 of the codes of a float tensor differ (ActivationQuantizer.divide), except for a
constant, which the exporter quantizes itself with torch's rounding. BatchNorms that
FoldBatchNorm leaves (densenet121's after each concatenation) run as onnxruntime's float BatchNormalization,
whose output differs from torch's BatchNorm on ~40% of the values (another reciprocal square root, no fused
multiply-add: `ort_batch_norm`, probed as well): with these emulated densenet121's 251 quantizers agree bit
for bit (33.6 -> 114.8 dB). Its QLinearConcat needs nothing of its own: measured, it gives the codes of the
float concatenation followed by QuantizeLinear's rounding. Average pools run as QLinearAveragePool or
QLinearGlobalAveragePool, emulated in `qlinear_average_pool.py`.
A softmax between two quantizers (DequantizeLinear -> Softmax -> QuantizeLinear, also through Reshape /
Transpose, which onnxruntime moves the DequantizeLinear past) is fused into QLinearSoftmax: a table on the
uint8 codes, requantized with floor(1 / scale) (`qlinear_softmax`); YOLOv8n's DFL softmax, near-uniform at
random init and so quantized with a tiny scale, had 5.7% of its codes one step off the float softmax's. Any
other softmax whose output is quantized runs as MLAS's float kernel (its own exp polynomial, lane-wise sums,
a multiply by 1 / sum: `mlas_softmax`, probed), from which torch's differs on about half of the values.

x * Sigmoid(x) (SiLU) is lowered to QuickGelu (`lower_silu.py`). Where this CPU's QuickGelu is
x * min(Sigmoid(x), 1) with that Sigmoid it is emulated as such ("quick_gelu"; a written-out
x * torch.sigmoid(x) gets the clamped sigmoid, "silu_sigmoid"); where it is x * Sigmoid(x), as the pair.

Each emulated op gets an `IntegerEmulation` node after it that replaces its float result by the emulated
one; in training (QAT) and while exporting to ONNX it returns its input unchanged, so gradients and the
written QDQ graph are those of plain fake quantization.
"""
from __future__ import annotations

import contextlib
import operator
from typing import Dict, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..ops.elementwise import ADD
from ..ops.pooling import AVERAGE_POOL
from .fake_quant import WEIGHT_QMAX, WEIGHT_QMIN, ActivationQuantizer, WeightQuantizer, exporting, fit_bias_to_int32
from .insert import rule_for
from .lower_silu import ort_quick_gelu_form
from .observers import QMAX, QMIN
from .qlinear_add import qlinear_add
from .qlinear_average_pool import (average_pool_variant, covers_whole_map, global_pool, qlinear_average_pool,
                                   qlinear_global_average_pool)
from .ort_float_ops import (mlas_logistic, ort_logistic_variant, logistic_kind, ort_batch_norm, ort_batch_norm_variant,
                            float_batch_norm, mlas_softmax, ort_softmax_variant, softmax_dim, qlinear_softmax,
                            ort_qlinear_softmax_exact)

FLOAT32_EXACT = 2 ** 24   # integer sums below this are exact in float32 whatever the summation order


def _codes(x: torch.Tensor, q: ActivationQuantizer) -> torch.Tensor:
    """Integer values (minus the zero point) of a tensor that `q` fake-quantized, as float."""
    return torch.round(x / q.scale.float())


class IntegerEmulation(nn.Module):
    """forward(result, *inputs) -> the output of the integer kernel that onnxruntime fuses the op into,
    dequantized (the next quantizer then reproduces its codes exactly). The quantizers and the layer are
    referenced, not owned (no parameters or buffers of its own: state_dict and ONNX are unchanged)."""

    def __init__(self, kind: str, inputs, output: Optional[ActivationQuantizer], layer: Optional[nn.Module] = None,
                 variant: Optional[tuple] = None):
        super().__init__()
        object.__setattr__(self, "refs", {"inputs": list(inputs), "output": output, "layer": layer,
                                          "variant": variant})
        self.kind = kind
        self.enabled = True   # off in float_mode()

    def forward(self, result: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        if self.training or not self.enabled or exporting():
            return result
        with torch.no_grad():
            if self.kind == "add":
                out = self._add(*inputs)
            elif self.kind == "global_average_pool":
                out = self._global_average_pool(inputs[0])
            elif self.kind == "average_pool":
                qx, qy = self.refs["inputs"][0], self.refs["output"]
                codes = qlinear_average_pool(_codes(inputs[0], qx) + float(qx.zero_point), self.refs["variant"],
                                             tuple(result.shape[2:]), qx.scale, int(qx.zero_point), qy.scale,
                                             int(qy.zero_point))
                out = (codes - float(qy.zero_point)) * qy.scale.float()
            elif self.kind in ("sigmoid", "silu", "quick_gelu", "silu_sigmoid"):
                out = self._logistic(inputs[0])
            elif self.kind == "batch_norm":
                out = ort_batch_norm(inputs[0], self.refs["layer"], *self.refs["variant"])
            elif self.kind == "softmax":
                out = mlas_softmax(inputs[0], *self.refs["variant"])
            elif self.kind == "qlinear_softmax":
                qx, qy = self.refs["inputs"][0], self.refs["output"]
                codes = qlinear_softmax(_codes(inputs[0], qx) + float(qx.zero_point), self.refs["variant"][0],
                                        qx.scale, qy.scale, int(qy.zero_point))
                out = (codes - float(qy.zero_point)) * qy.scale.float()
            else:
                out = self._weighted(inputs[0])
        return out.to(result.dtype)

    def _requantized(self, value: torch.Tensor, zp_added: bool = False) -> torch.Tensor:
        """Round half to even (as the kernels' cvtps2dq), saturate, dequantize. `value` is in output steps,
        with the zero point already added if `zp_added` (which changes how ties round)."""
        q = self.refs["output"]
        zp = int(q.zero_point)
        if zp_added:
            return (torch.clamp(torch.round(value), QMIN, QMAX) - zp) * q.scale.float()
        return torch.clamp(torch.round(value), QMIN - zp, QMAX - zp) * q.scale.float()

    def _weighted(self, x: torch.Tensor) -> torch.Tensor:
        layer, qx = self.refs["layer"], self.refs["inputs"][0]
        wq = layer.parametrizations.weight[0]
        w = layer.parametrizations.weight.original.float()
        shape = [-1] + [1] * (w.dim() - 1)
        # as fold_weight_quantizers writes them (symmetric weights: zero point 0)
        wc = torch.clamp(torch.round(w * (1.0 / wq.scale.float()).reshape(shape)), WEIGHT_QMIN, WEIGHT_QMAX)
        xc = _codes(x, qx)
        bias_scale = qx.scale.float() * wq.scale.float()              # as quantize_biases computes it
        bias = torch.round(layer.bias.float() / bias_scale).double().clamp(-2 ** 31, 2 ** 31 - 1) \
            if layer.bias is not None else None   # saturated to int32 as quantize_biases stores it
        bound = float(wc.abs().reshape(wc.shape[0], -1).sum(1).max()) * float(xc.abs().max()) \
            + (float(bias.abs().max()) if bias is not None else 0.0)
        dtype = torch.float32 if bound < FLOAT32_EXACT else torch.float64   # exact integer accumulation
        xc, wc = xc.to(dtype), wc.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        if isinstance(layer, nn.Linear):
            acc, cshape = F.linear(xc, wc, bias), [-1]
        else:
            acc, cshape = layer._conv_forward(xc, wc, bias), [-1] + [1] * (xc.dim() - 2)
        multiplier = (bias_scale / self.refs["output"].scale.float()).reshape(cshape)
        return self._requantized(acc.float() * multiplier)

    def _add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        (qa, qb), qc = self.refs["inputs"], self.refs["output"]
        value = qlinear_add(_codes(a, qa) + float(qa.zero_point), qa.scale, int(qa.zero_point),
                            _codes(b, qb) + float(qb.zero_point), qb.scale, int(qb.zero_point), qc.scale,
                            int(qc.zero_point))
        return self._requantized(value, zp_added=True)

    def _logistic(self, x: torch.Tensor) -> torch.Tensor:
        """onnxruntime's float Sigmoid (or x * Sigmoid(x)). On a fake-quantized input it is computed once per
        code (the dequantized values (code - zp) * scale are the 256 values the input can take) and looked up."""
        def f(v):
            y = mlas_logistic(v, *self.refs["variant"])
            if self.kind in ("quick_gelu", "silu_sigmoid"):
                y = y.clamp(max=1.0)    # QuickGelu's sigmoid never overshoots 1 (lower_silu.py)
            return v * y if self.kind in ("silu", "quick_gelu") else y   # x * Sigmoid(x): one float32 product
        if not self.refs["inputs"]:
            return f(x.float())
        q = self.refs["inputs"][0]
        zp = int(q.zero_point)
        table = f((torch.arange(QMIN, QMAX + 1, dtype=torch.float32, device=x.device) - zp) * q.scale.float())
        return table[(_codes(x, q) + zp).clamp(QMIN, QMAX).long() - QMIN]

    def _global_average_pool(self, x: torch.Tensor) -> torch.Tensor:
        qx, qy = self.refs["inputs"][0], self.refs["output"]
        acc, multiplier = qlinear_global_average_pool(_codes(x, qx) + float(qx.zero_point), qx.scale,
                                                      int(qx.zero_point), qy.scale)
        return self._requantized(acc.float() * multiplier)


def _quantizer_of(node, modules) -> Optional[ActivationQuantizer]:
    if isinstance(node, fx.Node) and node.op == "call_module" and isinstance(modules.get(node.target),
                                                                             ActivationQuantizer):
        return modules[node.target]
    return None


_LAYOUT_METHODS = ("view", "reshape", "transpose", "permute", "squeeze", "unsqueeze", "contiguous")
_LAYOUT_FUNCTIONS = (torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze)


def _layout_source(node):
    """The tensor `node` rearranges through ops onnxruntime moves a DequantizeLinear past (Reshape, Transpose,
    Squeeze, Unsqueeze: QDQ propagation), e.g. YOLOv8's DFL x.view(b, 4, 16, a).transpose(2, 1)."""
    while _is_layout(node) and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _is_layout(node) -> bool:
    return isinstance(node, fx.Node) and ((node.op == "call_method" and node.target in _LAYOUT_METHODS)
                                          or (node.op == "call_function" and node.target in _LAYOUT_FUNCTIONS))


def _quantizer_after_layout(node: fx.Node, modules) -> Optional[ActivationQuantizer]:
    """The quantizer that reads `node`'s output alone, directly or through ops that only rearrange it (its
    QuantizeLinear moves up past them: QDQ propagation), e.g. CaiT's talking-heads softmax(-1).permute(0, 2, 3, 1)
    into a linear layer, which onnxruntime runs as QLinearSoftmax on the permuted codes."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        q = _quantizer_of(user, modules)
        if q is not None:
            return q
        if not (_is_layout(user) and user.args[0] is node):
            return None
        node = user
    return None


def _output_quantizer(node: fx.Node, modules) -> Optional[ActivationQuantizer]:
    """The quantizer of `node`'s output, directly or after one ReLU-like op (which the lowering drops)."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    q = _quantizer_of(user, modules)
    if q is not None:
        return q
    rule = rule_for(user, modules)
    relu = rule is not None and rule.role == "activation"
    if relu and user.args and user.args[0] is node and len(user.users) == 1:
        q = _quantizer_of(next(iter(user.users)), modules)
        if q is not None and int(q.zero_point) == 0:
            return q
    return None


def _quantizers_of_constants(gm: fx.GraphModule, modules) -> set:
    """Activation quantizers whose every input is a constant (computed from the module's tensors alone, as
    Swin v2's relative-coordinate table): the exporter folds such a QuantizeLinear into uint8 codes with
    torch's own rounding, x * (1 / s), not onnxruntime's x / s (swin_v2_t: 1.056641697883606 / s = 127.5,
    code 255 in onnxruntime, 254 in the file)."""
    varying = set()
    calls: Dict[str, list] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a in varying for a in node.all_input_nodes):
            varying.add(node)
        if node.op == "call_module" and isinstance(modules.get(node.target), ActivationQuantizer):
            calls.setdefault(node.target, []).append(node)
    return {name for name, nodes in calls.items()
            if all(not any(a in varying for a in n.all_input_nodes) for n in nodes)}


def _sigmoid_of_silu(node: fx.Node) -> bool:
    """Whether the sigmoid's only reader is x * sigmoid(x), x its own input: the exported Sigmoid -> Mul pair
    that lower_silu.py fuses into QuickGelu."""
    if len(node.users) != 1:
        return False
    mul = next(iter(node.users))
    is_mul = (mul.op == "call_function" and mul.target in (operator.mul, torch.mul)) or \
        (mul.op == "call_method" and mul.target == "mul")
    return is_mul and not mul.kwargs and sorted(map(id, mul.args)) == sorted([id(node.args[0]), id(node)])


def install_integer_emulation(gm: fx.GraphModule, weighted: Dict[str, nn.Module]) -> dict:
    """Insert IntegerEmulation nodes after the quantized convs/linears with a quantized output, after the
    adds of two quantized tensors, after global average pools, and after the float ops onnxruntime runs
    between quantizers: sigmoids and SiLUs, BatchNorms left unfolded, softmaxes with a quantized output (its
    float kernels, when `ort_logistic_variant` / `ort_batch_norm_variant` / `ort_softmax_variant` found
    them; QLinearSoftmax for a quantized input too); every activation quantizer rounds as QuantizeLinear does
    (ActivationQuantizer.divide). Returns counts."""
    modules = dict(gm.named_modules())
    counts = {"int32_bias_channels_rescaled": 0, "emulated_layers": 0, "emulated_adds": 0, "emulated_pools": 0,
              "emulated_sigmoids": 0,
              "emulated_batch_norms": 0, "emulated_softmaxes": 0}
    constant_only = _quantizers_of_constants(gm, modules)
    for name, m in modules.items():
        if isinstance(m, ActivationQuantizer):
            m.divide = name not in constant_only
    variant = bn_variant = sm_variant = None
    for node in list(gm.graph.nodes):
        bn = float_batch_norm(node, modules)
        if bn is not None and node.args and isinstance(node.args[0], fx.Node):
            bn_variant = bn_variant or ort_batch_norm_variant()
            if bn_variant is not None:
                _insert(gm, node, IntegerEmulation("batch_norm", [], None, layer=bn, variant=bn_variant),
                        (node.args[0],))
                counts["emulated_batch_norms"] += 1
            continue
        dim = softmax_dim(node, modules)
        if dim is not None and node.args and isinstance(node.args[0], fx.Node):
            qx = _quantizer_of(_layout_source(node.args[0]), modules)
            qy = _quantizer_after_layout(node, modules)
            if qx is not None and qy is not None and ort_qlinear_softmax_exact():   # DQ -> Softmax -> Q
                emulation = IntegerEmulation("qlinear_softmax", [qx], qy, variant=(dim,))
            elif qy is not None or any(_quantizer_of(u, modules) is not None for u in node.users):
                sm_variant = sm_variant or ort_softmax_variant()
                emulation = IntegerEmulation("softmax", [], None, variant=(dim, sm_variant)) if sm_variant else None
            else:
                emulation = None
            if emulation is not None:
                _insert(gm, node, emulation, (node.args[0],))
                counts["emulated_softmaxes"] += 1
            continue
        logistic = logistic_kind(node, modules)
        if logistic is not None and node.args and isinstance(node.args[0], fx.Node):
            variant = variant or ort_logistic_variant()
            if variant is None:
                continue
            m = modules.get(node.target) if node.op == "call_module" else None
            if getattr(m, "inplace", False):
                m.inplace = False      # the emulation reads the input after the op ran
            if node.kwargs.get("inplace"):
                node.kwargs = {**node.kwargs, "inplace": False}
            qx = _quantizer_of(node.args[0], modules)
            if ort_quick_gelu_form() == "clamped":   # the file runs x * Sigmoid(x) as QuickGelu (lower_silu.py)
                logistic = "quick_gelu" if logistic == "silu" else "silu_sigmoid" if _sigmoid_of_silu(node) \
                    else logistic
            _insert(gm, node, IntegerEmulation(logistic, [qx] if qx is not None else [], None, variant=variant),
                    (node.args[0],))
            counts["emulated_sigmoids"] += 1
            continue
        kind = inputs = layer = pool = None
        if node.op == "call_module" and node.target in weighted and node.args:
            qx = _quantizer_of(node.args[0], modules)
            if qx is not None and int(getattr(weighted[node.target].parametrizations.weight[0], "zero_point",
                                               torch.zeros(1)).abs().max()) == 0:
                kind, inputs, layer, args = "weighted", [qx], weighted[node.target], (node.args[0],)
                counts["int32_bias_channels_rescaled"] += fit_bias_to_int32(layer, qx.scale)   # before emulating
        elif node.op in ("call_function", "call_method") and rule_for(node, modules) is ADD \
                and len(node.args) == 2 and not node.kwargs:
            qs = [_quantizer_of(a, modules) for a in node.args]
            if all(q is not None for q in qs):
                kind, inputs, args = "add", qs, tuple(node.args)
        elif rule_for(node, modules) is AVERAGE_POOL and global_pool(node, modules) and node.args:
            qx = _quantizer_of(node.args[0], modules)
            if qx is not None:
                kind, inputs, args = "global_average_pool", [qx], (node.args[0],)
        elif rule_for(node, modules) is AVERAGE_POOL and node.args and average_pool_variant(node, modules):
            qx, pool = _quantizer_of(node.args[0], modules), average_pool_variant(node, modules)
            shape = getattr(node.args[0].meta.get("tensor_meta"), "shape", None)
            if qx is not None and shape is not None:   # QLinearAveragePool, or global where the kernel covers all
                kind = "global_average_pool" if covers_whole_map(pool, tuple(shape[2:])) else "average_pool"
                inputs, args = [qx], (node.args[0],)
        if kind is None:
            continue
        qy = _output_quantizer(node, modules)
        if qy is None:
            continue
        _insert(gm, node, IntegerEmulation(kind, inputs, qy, layer, variant=pool), args)
        counts[{"weighted": "emulated_layers", "add": "emulated_adds"}.get(kind, "emulated_pools")] += 1
    gm.recompile()
    return counts


def _insert(gm: fx.GraphModule, node: fx.Node, emulation: IntegerEmulation, args: tuple) -> None:
    """`emulation(node, *args)` after `node`, in place of it for every other user."""
    name = f"int_emulation_{node.name}"
    gm.add_submodule(name, emulation)
    with gm.graph.inserting_after(node):
        emu = gm.graph.call_module(name, (node,) + args)
    node.replace_all_uses_with(emu, delete_user_cb=lambda u, e=emu: u is not e)
    emu.meta["tensor_meta"] = node.meta.get("tensor_meta")


@contextlib.contextmanager
def float_mode(gm: nn.Module):
    """The fake-quant graph as the float model it came from: quantizers and integer emulation pass values
    through, and biases that bias correction changed are restored (from their `float_bias` buffer)."""
    acts = [(m, m.mode) for m in gm.modules() if isinstance(m, ActivationQuantizer)]
    switches = [m for m in gm.modules() if isinstance(m, (WeightQuantizer, IntegerEmulation))]
    biased = [m for m in gm.modules() if isinstance(getattr(m, "float_bias", None), torch.Tensor)]
    saved = [m.bias.detach().clone() for m in biased]
    try:
        for m, _ in acts:
            m.mode = "off"
        for m in switches:
            m.enabled = False
        with torch.no_grad():
            for m in biased:
                m.bias.copy_(m.float_bias)
        yield gm
    finally:
        for m, mode in acts:
            m.mode = mode
        for m in switches:
            m.enabled = True
        with torch.no_grad():
            for m, b in zip(biased, saved):
                m.bias.copy_(b)

"""Quantizer by quantizer: onnxruntime's INT8 codes against the fake-quant model's, each computed from
onnxruntime's own inputs (teacher forcing).

The end-to-end SNR (check.py) compares the two models' outputs. Where onnxruntime computes float ops between
quantizers (LayerNorm, GELU, softmax, float attention matmuls) with roundings of its own, a value one ulp
away flips a code on a rounding boundary, and a deep random-weight network amplifies the flips into noise
of the order of quantization's own (swin_v2_t: 28 dB end to end, quantization 22 dB), whatever the lowering.
Forcing removes the amplification: the INT8 file runs once with the codes of every activation QuantizeLinear
read out (a DequantizeLinear of scale 1 on its output: an extra reader, so the integer kernels onnxruntime
fuses stay as they are); the fake-quant model then runs with each quantizer's output replaced by
onnxruntime's codes, so that every quantizer quantizes what the fake-quant model computes from onnxruntime's
inputs, and its codes are compared with onnxruntime's. An exactly emulated integer kernel gives the same
codes; a float op may flip a code by one step on a rounding boundary; a wrong scale, zero point or weight
gives other codes on most elements. The model's outputs are compared the same way, from the last forced
codes.

    >>> stats = compare_codes(onnx_model, gm, (x,))   # gm: the fake-quant model, eval mode
    >>> stats["worst_quantizer"], stats["max_code_step"], stats["code_flip_fraction"]
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import TensorProto, helper, numpy_helper

from ..core.verify import flatten_outputs
from ..onnx.runtime import ort_session, run_ort
from .fake_quant import ActivationQuantizer
from .onnx_nodes import is_layout_copy

_SCALE_SUFFIX = ".scale"


def _quantizer_call(node: onnx.NodeProto, quantizers: Dict[str, int]) -> Optional[Tuple[str, Optional[int]]]:
    """(quantizer, call index) a QuantizeLinear was exported from: its node's scope is the quantizer's name for
    the first call (`/act_quant_relu_2/...`) and `<name>_<k>` for call k+1; `q_1` may also be quantizer
    q_1's first call: q must have that many calls (`quantizers`: name -> calls in the graph), and if both
    are possible the scale buffer the node reads (`<name>.scale`) tells. The exporter gives equal
    tensors one name (a concatenation's scale may carry an input's name): the scale alone (call unknown) is
    the last resort."""
    scope = node.name.split("/")[1] if node.name.startswith("/") and node.name.count("/") >= 2 else ""
    base, _, call = scope.rpartition("_")
    candidates = {}
    if scope in quantizers:
        candidates[scope] = 0
    if call.isdigit() and quantizers.get(base, 0) > int(call):
        candidates[base] = int(call)
    scale = node.input[1][:-len(_SCALE_SUFFIX)] if node.input[1].endswith(_SCALE_SUFFIX) else None
    if len(candidates) == 1:
        return next(iter(candidates.items()))
    if candidates:
        return (scale, candidates[scale]) if scale in candidates else None
    return (scale, None) if scale in quantizers else None


def quantizer_calls(gm: fx.GraphModule) -> Dict[str, int]:
    """{activation quantizer: calls in the fx graph} of the quantizers that quantize."""
    modules = dict(gm.named_modules())
    calls: Dict[str, int] = defaultdict(int)
    for node in gm.graph.nodes:
        m = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(m, ActivationQuantizer) and m.mode == "quantize":
            calls[node.target] += 1
    return calls


def file_quantizers(model: onnx.ModelProto, gm: fx.GraphModule) -> set:
    """The activation quantizers of `gm` that have a QuantizeLinear node in the file (not folded away)."""
    quantizers = quantizer_calls(gm)
    found = (_quantizer_call(n, quantizers) for n in model.graph.node
             if n.op_type == "QuantizeLinear" and len(n.input) >= 2 and not is_layout_copy(n))
    return {f[0] for f in found if f is not None}


def probed_model(model: onnx.ModelProto, quantizers: Dict[str, int]) -> tuple:
    """(copy of `model` that also outputs the uint8 codes of every activation QuantizeLinear, as float,
    {quantizer name: {call index: probe output}}) for `quantizers` (name -> calls in the fx graph)."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    inits = {i.name for i in probed.graph.initializer}
    one = "fxcompress_probe_one"
    probed.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
    probes: Dict[str, Dict[int, str]] = defaultdict(dict)
    found = []
    for node in list(probed.graph.node):
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and len(node.input) >= 2 \
                and not is_layout_copy(node):
            which = _quantizer_call(node, quantizers)
            if which is not None:
                found.append((node, *which))
    # calls named by their scope first; a node known by its scale only (a scope the exporter did not name)
    # takes the next call left, in graph order. A lowering's layout copy is skipped: it duplicates a call
    # probed under its own name (coat_tiny: a 7600-code copy was compared with a later 152-code call)
    for node, name, call in sorted(found, key=lambda f: f[2] is None):
        calls = probes[name]
        call = call if call is not None else next(k for k in range(len(calls) + 1) if k not in calls)
        if call in calls or call >= quantizers[name]:
            continue
        out = f"fxcompress_probe_{len(probed.graph.output)}"
        probed.graph.node.append(helper.make_node("DequantizeLinear", [node.output[0], one], [out]))
        probed.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
        calls[call] = out
    return probed, dict(probes)


def onnxruntime_codes(model: onnx.ModelProto, quantizers: Dict[str, int], inputs: Sequence[torch.Tensor],
                      threads: int = 2) -> tuple:
    """({quantizer name: {call index: codes}}, the model's own outputs) from one onnxruntime run."""
    probed, probes = probed_model(model, quantizers)
    session = ort_session(probed.SerializeToString(), threads=threads)
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, run_ort(session, inputs)))
    outputs = [torch.from_numpy(values[o.name]) for o in model.graph.output]
    return {q: {call: values[p] for call, p in calls.items()} for q, calls in probes.items()}, outputs


def snr_db(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """10 log10(|reference|^2 / |actual - reference|^2); inf when they are equal."""
    ref, err = reference.double(), actual.double() - reference.double()
    noise = float(err.pow(2).sum())
    signal = float(ref.pow(2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


class _Forced(fx.Interpreter):
    """Runs the fake-quant model with each probed quantizer's output replaced by onnxruntime's codes,
    recording per call how its own codes differ."""

    def __init__(self, gm: fx.GraphModule, codes: Dict[str, Dict[int, np.ndarray]]):
        super().__init__(gm)
        self.codes = codes
        self.calls: Dict[str, int] = defaultdict(int)
        self.stats: List[dict] = []

    def call_module(self, target, args, kwargs):
        out = super().call_module(target, args, kwargs)
        module = self.fetch_attr(target)
        if not isinstance(module, ActivationQuantizer) or module.mode != "quantize" or target not in self.codes:
            return out
        call = self.calls[target]
        self.calls[target] += 1
        theirs = self.codes[target].get(call)
        if theirs is None:
            return out
        if theirs.size != out.numel():   # the QuantizeLinear found for this call is not its own
            self.stats.append({"quantizer": f"{target} (call {call + 1}: {theirs.size} codes in onnxruntime, "
                                            f"{out.numel()} here)", "max_code_step": math.inf,
                               "flips": out.numel(), "codes": out.numel()})
            return out
        theirs = torch.from_numpy(theirs).to(torch.float64).reshape(out.shape)
        scale, zero_point = module.scale.double(), module.zero_point.double()
        mine = torch.round(out.double() / scale) + zero_point
        step = (mine - theirs).abs()
        self.stats.append({"quantizer": target if call == 0 else f"{target} (call {call + 1})",
                           "max_code_step": float(step.max()) if step.numel() else 0.0,
                           "flips": int((step > 0).sum()), "codes": int(step.numel())})
        return ((theirs - zero_point) * scale).to(out.dtype)


def compare_codes(model: onnx.ModelProto, gm: fx.GraphModule, inputs: Sequence[torch.Tensor],
                  threads: int = 2) -> dict:
    """Per-quantizer comparison (module doc). Returns the worst quantizer, its largest code step, the
    largest fraction of flipped codes of any quantizer, how many quantizer calls were compared and which
    quantizers onnxruntime's file has no QuantizeLinear for (constants the exporter folded), and the
    outputs' SNR from the forced codes (`snr_forced_db`)."""
    quantizers = quantizer_calls(gm)
    codes, ort_outputs = onnxruntime_codes(model, quantizers, inputs, threads)
    forced = _Forced(gm.eval(), codes)
    with torch.no_grad():
        outputs = flatten_outputs(forced.run(*inputs))
    stats = forced.stats
    worst = max(stats, key=lambda s: (s["max_code_step"], s["flips"] / max(s["codes"], 1)), default=None)
    return {"quantizer_calls_compared": len(stats),
            "quantizers_not_in_file": sorted(set(quantizers) - set(codes)),
            "worst_quantizer": worst["quantizer"] if worst else None,
            "max_code_step": worst["max_code_step"] if worst else 0.0,
            "code_flip_fraction": max((s["flips"] / max(s["codes"], 1) for s in stats), default=0.0),
            "snr_forced_db": min((snr_db(o.reshape(-1), g.reshape(-1).to(o.dtype))
                                  for o, g in zip(outputs, ort_outputs)), default=float("inf"))}

"""Checking a lowered INT8 ONNX file against the fake-quant graph it came from.

The rule, the same for every model and caller: quantizer by quantizer, the codes onnxruntime computes in
the file equal the codes the fake-quant model computes from onnxruntime's own inputs (teacher forcing,
quant/codes.py): no code more than `TOLERANCES["int8_code_step"]` step away, at most
`TOLERANCES["int8_code_flip_fraction"]` of any quantizer's codes different at all, and the outputs computed
from the last forced codes at least `TOLERANCES["int8_lowering_floor_db"]` dB SNR against onnxruntime's.
This holds because the fake-quant model emulates the integer kernels exactly (quant/emulate.py); float ops
onnxruntime computes with roundings of its own flip a code by one step on a rounding boundary, rarely. A
wrong scale, zero point or weight layout flips most codes of the layer it is in, and the error names it.
Besides, every quantized layer must run in an integer kernel of onnxruntime's optimized graph.

Reported, not required: the end-to-end SNRs on held-out inputs, every output, of the fake-quant model
against float (`snr_quant_db`: what quantization costs) and of onnxruntime against the fake-quant model
(`snr_lower_db`). End to end, a deep random-weight network amplifies one flipped code into noise of the
order of quantization's own (swin_v2_t: 28 dB, quantization 22 dB, with 4e-5 of a quantizer's codes one
step off), which is why the rule compares quantizer by quantizer. Top-1 agreement (2-D outputs) is
reported too: on near-tied logits one rounding step flips it.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import onnx
import torch
import torch.fx as fx
from torch.nn.utils import parametrize

from ..core.errors import VerificationError
from ..core.verify import TOLERANCES, flatten_outputs
from ..onnx.runtime import optimized_graph, ort_session, run_ort
from .calibrate import batch_inputs
from .codes import compare_codes, file_quantizers, snr_db
from .emulate import float_mode
from .fake_quant import ActivationQuantizer, WeightQuantizer
from .lower import count_ops, integer_kernel_check


def round_constants_as_the_file(gm: fx.GraphModule, model: onnx.ModelProto) -> List[str]:
    """Constant quantizers (quant/emulate.py rounds them as torch does: the exporter folds them) whose
    QuantizeLinear the exporter left in the file, on a Constant node, are computed by onnxruntime (x / s): they
    round as onnxruntime does (timm's Swin v2 tables: 14 % of the codes one step off otherwise). Returns them."""
    in_file = file_quantizers(model, gm)
    switched = []
    for name, m in gm.named_modules():
        if isinstance(m, ActivationQuantizer) and not m.divide and name in in_file:
            m.divide = True
            switched.append(name)
    return switched


def quantized_layers(gm: fx.GraphModule) -> Dict[str, str]:
    """{name of the float weight in the exported file: layer} for every layer with a fake-quant weight
    (torch.onnx names a parametrized weight after its `original` tensor)."""
    return {f"{name}.parametrizations.weight.original": name for name, m in gm.named_modules()
            if parametrize.is_parametrized(m, "weight")
            and any(isinstance(p, WeightQuantizer) for p in m.parametrizations.weight)}


def _outputs(session, gm, batches: Sequence[Tuple[torch.Tensor, ...]]) -> tuple:
    """(float, fake-quant, onnxruntime) outputs, each a list of tensors concatenated over the batches."""
    float_out, fake_out, ort_out = [], [], []
    with torch.no_grad():
        for inputs in batches:
            fake_out.append(flatten_outputs(gm(*inputs)))
            with float_mode(gm):
                float_out.append(flatten_outputs(gm(*inputs)))
            ort_out.append([torch.from_numpy(a) for a in run_ort(session, inputs)])

    def cat(per_batch: List[List[torch.Tensor]]):
        return [torch.cat([b[i].reshape(b[i].shape[0], -1) if b[i].dim() else b[i].reshape(1, 1)
                           for b in per_batch]) for i in range(len(per_batch[0]))]
    return cat(float_out), cat(fake_out), cat(ort_out)


def int8_fidelity(path: str, gm: fx.GraphModule, batches: Sequence[Tuple[torch.Tensor, ...]],
                  model: Optional[onnx.ModelProto] = None) -> dict:
    """SNRs of the fake-quant model vs float and of onnxruntime vs fake-quant on `batches` (worst output), and
    the quantizer-by-quantizer comparison of codes (`compare_codes`) on the first batch. `model`: the file's
    contents when the caller holds them (else read from `path`)."""
    ref, fake, got = _outputs(ort_session(path), gm.eval(), batches)
    if len(got) != len(fake):
        raise VerificationError(f"INT8 ONNX has {len(got)} outputs, the fake-quant model {len(fake)}")
    metrics = {"snr_quant_db": min(snr_db(f, r) for f, r in zip(fake, ref)),
               "snr_lower_db": min(snr_db(g, f) for g, f in zip(got, fake)),
               "check_samples": int(fake[0].shape[0])}
    if fake[0].dim() == 2 and len(fake) == 1 and fake[0].shape[1] > 1:
        metrics["top1_agreement"] = float((got[0].argmax(1) == fake[0].argmax(1)).double().mean())
    metrics.update(compare_codes(model if model is not None else onnx.load(path), gm, batches[0]))
    return metrics


def check_int8_export(path: str, gm: fx.GraphModule, batches: Sequence[Tuple[torch.Tensor, ...]],
                      folded: Dict[str, str], layer_macs: Dict[str, int], total_macs: int,
                      model: Optional[onnx.ModelProto] = None) -> dict:
    """Run by ExportONNX on the written file before it is renamed into place. `folded` maps each int8
    initializer to the float weight it replaced (filled by the lowering); `layer_macs` the layers' MACs.
    """
    layers = quantized_layers(gm)
    names = {q: layers[w] for q, w in folded.items() if w in layers}
    missing = set(layers.values()) - set(names.values())
    if missing:
        raise VerificationError(f"quantized layer(s) {sorted(missing)[:5]} have no int8 weight in the ONNX file")
    model = model if model is not None else onnx.load(path)
    constants_in_file = round_constants_as_the_file(gm, model)   # computed by onnxruntime, not the exporter
    optimized = optimized_graph(path)
    kernels = integer_kernel_check(optimized, names, model)
    metrics = {"int8_layers": len(kernels), "integer_kernels": _histogram(kernels.values()),
               "int8_mac_fraction": sum(layer_macs.get(layer, 0) for layer in kernels) / max(total_macs, 1),
               "float_conv_matmul_left": sum(v for k, v in count_ops(optimized).items()
                                             if k in ("Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul")),
               "constant_quantizers_in_file": len(constants_in_file)}
    metrics.update(int8_fidelity(path, gm, batches, model))
    assert_faithful(metrics, path)
    return metrics


def assert_faithful(metrics: dict, path: str) -> None:
    """The rule of the module doc on `compare_codes`'s metrics: raise VerificationError naming the worst
    quantizer otherwise."""
    step, flips = TOLERANCES["int8_code_step"], TOLERANCES["int8_code_flip_fraction"]
    floor = TOLERANCES["int8_lowering_floor_db"]
    if not (metrics["max_code_step"] <= step and metrics["code_flip_fraction"] <= flips):   # also catches NaN
        raise VerificationError(
            f"INT8 ONNX ({path}) does not compute what the fake-quant model computes: at quantizer "
            f"{metrics['worst_quantizer']!r}, given onnxruntime's own inputs, its codes differ by up to "
            f"{metrics['max_code_step']:g} step(s) (allowed {step}), and {metrics['code_flip_fraction']:.2e} of "
            f"some quantizer's codes differ (allowed {flips:g}). A wrong scale, zero point or weight layout in "
            f"the lowering of the layer that makes it, or an op whose kernel the fake-quant model does not "
            f"emulate (quant/emulate.py)")
    if not metrics["snr_forced_db"] >= floor:
        raise VerificationError(
            f"INT8 ONNX ({path}) does not compute what the fake-quant model computes after its last "
            f"quantizers: outputs from onnxruntime's codes {metrics['snr_forced_db']:.1f} dB SNR against "
            f"onnxruntime's outputs, {floor:g} dB required: the float ops after the last quantized tensor differ")


def _histogram(values) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def held_out_batches(loader, max_samples: int = 64) -> List[tuple]:
    """Up to `max_samples` inputs from `loader` (validation data: never the calibration batches)."""
    batches, seen = [], 0
    for i, batch in enumerate(loader):
        inputs = batch_inputs(batch, f"val_loader batch {i}")
        batches.append(inputs)
        seen += inputs[0].shape[0] if inputs[0].dim() else 1
        if seen >= max_samples:
            break
    return batches


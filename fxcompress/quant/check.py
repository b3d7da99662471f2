"""Checking a lowered INT8 ONNX file against the fake-quant graph it came from.

Two measurements on held-out inputs, for every output tensor whatever its rank: the signal-to-noise
ratio of the fake-quant model against the float model (`snr_quant_db`: what quantization costs) and of
onnxruntime's INT8 model against the fake-quant model (`snr_lower_db`: what the lowering adds). The
lowering must add far less noise than quantization itself: `snr_lower_db >= snr_quant_db + margin`
(or at least the floor that float32 rounding alone allows), `TOLERANCES["int8_lowering_margin_db"]` and
`["int8_lowering_floor_db"]` in core/verify.py, the same for every model and caller. This holds because the
fake-quant model emulates the integer kernels exactly (quant/emulate.py). A wrong scale, zero point or weight layout in the
file brings `snr_lower_db` down to the level of the quantization noise or far below: it fails.
Besides, every quantized layer must run in an integer kernel of onnxruntime's optimized graph.
Top-1 agreement (2-D outputs) is reported, not checked: on near-tied logits one rounding step flips it.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.fx as fx
from torch.nn.utils import parametrize

from ..core.errors import VerificationError
from ..core.verify import TOLERANCES, flatten_outputs
from ..onnx.runtime import optimized_graph, ort_session, run_ort
from .calibrate import batch_inputs
from .emulate import float_mode
from .fake_quant import WeightQuantizer
from .lower import count_ops, integer_kernel_check


def snr_db(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """10 log10(|reference|^2 / |actual - reference|^2); inf when they are equal."""
    ref, err = reference.double(), actual.double() - reference.double()
    noise = float(err.pow(2).sum())
    signal = float(ref.pow(2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


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


def int8_fidelity(path: str, gm: fx.GraphModule, batches: Sequence[Tuple[torch.Tensor, ...]]) -> dict:
    """SNRs of the fake-quant model vs float and of onnxruntime vs fake-quant on `batches` (worst output)."""
    ref, fake, got = _outputs(ort_session(path), gm.eval(), batches)
    if len(got) != len(fake):
        raise VerificationError(f"INT8 ONNX has {len(got)} outputs, the fake-quant model {len(fake)}")
    metrics = {"snr_quant_db": min(snr_db(f, r) for f, r in zip(fake, ref)),
               "snr_lower_db": min(snr_db(g, f) for g, f in zip(got, fake)),
               "check_samples": int(fake[0].shape[0])}
    if fake[0].dim() == 2 and len(fake) == 1 and fake[0].shape[1] > 1:
        metrics["top1_agreement"] = float((got[0].argmax(1) == fake[0].argmax(1)).double().mean())
    return metrics


def check_int8_export(path: str, gm: fx.GraphModule, batches: Sequence[Tuple[torch.Tensor, ...]],
                      folded: Dict[str, str], layer_macs: Dict[str, int], total_macs: int) -> dict:
    """Run by ExportONNX on the written file before it is renamed into place. `folded` maps each int8
    initializer to the float weight it replaced (filled by the lowering); `layer_macs` the layers' MACs."""
    layers = quantized_layers(gm)
    names = {q: layers[w] for q, w in folded.items() if w in layers}
    missing = set(layers.values()) - set(names.values())
    if missing:
        raise VerificationError(f"quantized layer(s) {sorted(missing)[:5]} have no int8 weight in the ONNX file")
    optimized = optimized_graph(path)
    kernels = integer_kernel_check(optimized, names)
    metrics = {"int8_layers": len(kernels), "integer_kernels": _histogram(kernels.values()),
               "int8_mac_fraction": sum(layer_macs.get(layer, 0) for layer in kernels) / max(total_macs, 1),
               "float_conv_matmul_left": sum(v for k, v in count_ops(optimized).items()
                                             if k in ("Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul"))}
    metrics.update(int8_fidelity(path, gm, batches))
    assert_faithful(metrics, path)
    return metrics


def assert_faithful(metrics: dict, path: str) -> None:
    """The lowering must add far less noise than quantization: raise VerificationError otherwise.
    Sets metrics["snr_lower_required_db"]."""
    margin = TOLERANCES["int8_lowering_margin_db"]
    required = min(metrics["snr_quant_db"] + margin, TOLERANCES["int8_lowering_floor_db"])
    metrics["snr_lower_required_db"] = required
    if not metrics["snr_lower_db"] >= required:   # also catches NaN
        raise VerificationError(
            f"INT8 ONNX ({path}) does not compute what the fake-quant model computes: onnxruntime vs fake-quant "
            f"{metrics['snr_lower_db']:.1f} dB SNR where {required:.1f} dB are required (quantization itself: "
            f"{metrics['snr_quant_db']:.1f} dB; the lowering must stay {margin:g} dB above it, or reach "
            f"{TOLERANCES['int8_lowering_floor_db']:g} dB). A wrong scale, zero point or weight layout in the "
            f"lowering, or an op whose integer kernel the fake-quant model does not emulate (quant/emulate.py)")


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


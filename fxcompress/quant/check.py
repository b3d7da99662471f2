"""Checks of a lowered INT8 ONNX file against the fake-quant PyTorch graph it came from."""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import torch

from ..core.errors import VerificationError
from ..core.verify import TOLERANCES, flatten_outputs, relative_error
from .calibrate import batch_inputs
from ..onnx.runtime import optimized_graph
from .lower import count_ops, integer_kernel_check


def compare_int8(got, expected) -> dict:
    """ORT INT8 vs fake-quant outputs on the same inputs: rounding ties may differ by one step in a few
    places, so the bound is a relative error (TOLERANCES['onnx_int8'])."""
    worst_abs = worst_rel = 0.0
    for a, e in zip(flatten_outputs(got), flatten_outputs(expected)):
        ab, rel = relative_error(a, e)
        worst_abs, worst_rel = max(worst_abs, ab), max(worst_rel, rel)
    if not worst_rel <= TOLERANCES["onnx_int8"]:
        raise VerificationError(f"INT8 ONNX vs fake-quant PyTorch: relative error {worst_rel:.3g} exceeds "
                                f"{TOLERANCES['onnx_int8']:g}")
    return {"max_abs_error": worst_abs, "max_rel_error": worst_rel}


def agreement(session, model: torch.nn.Module, loader: Iterable, max_samples: int = 512) -> dict:
    """Top-1 agreement (2-D outputs) and output error between ORT and the fake-quant model on `loader`."""
    from ..onnx.runtime import run_ort
    same = total = 0
    abs_err, ref_scale = [], []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            inputs = batch_inputs(batch, f"calib_loader batch {i}")
            expected = flatten_outputs(model(*inputs))[0].float()
            got = torch.from_numpy(run_ort(session, inputs)[0]).float()
            abs_err.append((got - expected).abs().max().item())
            ref_scale.append(expected.abs().max().item())
            if expected.dim() == 2:
                same += int((got.argmax(1) == expected.argmax(1)).sum())
                total += expected.shape[0]
            if total >= max_samples or (expected.dim() != 2 and i + 1 >= 8):
                break
    result = {"output_max_abs_error": max(abs_err), "output_rel_error": max(abs_err) / max(max(ref_scale), 1e-12)}
    if total:
        result["top1_agreement"] = same / total
        result["agreement_samples"] = total
    return result


def make_export_check(model: torch.nn.Module, loader: Optional[Iterable], quantized_weights: Dict[str, str],
                      layer_macs: Dict[str, int], total_macs: int, folded: Dict[str, str],
                      min_top1_agreement: float = None, max_samples: int = 512) -> Callable[[str], dict]:
    """A check run by ExportONNX on the written file before it is renamed into place."""
    min_top1 = TOLERANCES["int8_top1_agreement"] if min_top1_agreement is None else min_top1_agreement

    def check(path: str) -> dict:
        from ..onnx.runtime import ort_session
        # int8 initializer name -> layer, filled by the weight-folding rewrite during this export
        names = {q: _layer_of(w, quantized_weights) for q, w in folded.items()}
        names = {q: layer for q, layer in names.items() if layer is not None}
        missing = set(quantized_weights.values()) - set(names.values())
        if missing:
            raise VerificationError(f"quantized layer(s) {sorted(missing)[:5]} have no int8 weight in the ONNX file")
        optimized = optimized_graph(path)
        kernels = integer_kernel_check(optimized, names)
        int8_macs = sum(layer_macs.get(layer, 0) for layer in kernels)
        metrics = {"int8_layers": len(kernels), "integer_kernels": _histogram(kernels.values()),
                   "int8_mac_fraction": int8_macs / max(total_macs, 1),
                   "float_conv_matmul_left": sum(v for k, v in count_ops(optimized).items()
                                                 if k in ("Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul"))}
        if loader is not None:
            session = ort_session(path)
            metrics.update(agreement(session, model, loader, max_samples))
            if "top1_agreement" in metrics and metrics["top1_agreement"] < min_top1:
                raise VerificationError(f"INT8 ONNX agrees with the fake-quant model on only "
                                        f"{100 * metrics['top1_agreement']:.2f}% of calibration samples (top-1), "
                                        f"below {100 * min_top1:.0f}%")
        return metrics
    return check


def _layer_of(weight_name: str, quantized_weights: Dict[str, str]) -> Optional[str]:
    return quantized_weights.get(weight_name)


def _histogram(values) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out

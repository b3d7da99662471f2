"""Numerical verification shared by every transform and lowering; all tolerances live here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List

import torch
from torch.utils import _pytree as pytree

from .errors import VerificationError

# Relative error = max|actual - expected| / max|expected|, per output tensor.
TOLERANCES = {
    "exact_transform": 1e-5,   # channel removal, BN folding, identity insertions
    "onnx_fp32": 1e-4,         # ONNX Runtime against PyTorch, FP32
    # INT8 ONNX vs the fake-quant graph, on held-out inputs, every output: the SNR of onnxruntime against the
    # fake-quant model must exceed the SNR of the fake-quant model against float by this many dB (the
    # lowering adds at most a tenth of the noise quantization adds), or reach the floor below. Measured
    # (README, "The INT8 check"): clean models 12.8-111.6 dB above (the emulation is bit-exact on most layers;
    # resnet50 at 224x224 with minmax ranges keeps 16 dB), without the emulation 1.7-8.4 dB; faults that
    # onnxruntime executes (a producer/consumer scale or zero point, a transposed weight) 4-22 dB SNR.
    "int8_lowering_margin_db": 10.0,
    # ... or at least this many dB: enough where quantization itself is nearly lossless (float32 rounding of
    # float outputs alone leaves ~100-117 dB)
    "int8_lowering_floor_db": 60.0,
}


def flatten_outputs(out: Any) -> List[torch.Tensor]:
    leaves, _ = pytree.tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


@dataclass(frozen=True)
class OutputSpec:
    """Structure of a model's outputs: the pytree layout and each tensor's shape and dtype."""
    layout: str
    tensors: tuple

    @classmethod
    def of(cls, out: Any) -> "OutputSpec":
        leaves, spec = pytree.tree_flatten(out)
        return cls(str(spec), tuple((tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
                                    for t in leaves))

    @classmethod
    def from_graph(cls, gm) -> "OutputSpec | None":
        """The spec from the shapes recorded on the graph's nodes (None if an output value has none)."""
        import torch.fx as fx
        output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
        missing = []

        def as_meta(n):
            meta = n.meta.get("tensor_meta")
            if meta is None:
                missing.append(n)
                return None
            return pytree.tree_map(lambda m: torch.empty(m.shape, dtype=m.dtype, device="meta"), meta,
                                   is_leaf=lambda m: hasattr(m, "shape"))
        value = fx.node.map_arg(output.args[0], as_meta)
        return None if missing else cls.of(value)

    def describe(self) -> str:
        return ", ".join(f"{list(s)} {str(d).replace('torch.', '')}" if isinstance(s, tuple) else s
                         for s, d in (x if isinstance(x, tuple) else (x, "") for x in self.tensors))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max abs error relative to the largest |expected|)."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    max_abs = (actual - expected).abs().max().item() if expected.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    return max_abs, max_abs / max(scale, 1e-12)


def compare_outputs(actual: Any, expected: Any, tol: float, what: str) -> dict:
    """Compare two output structures tensor by tensor; raise VerificationError beyond `tol`."""
    a, e = flatten_outputs(actual), flatten_outputs(expected)
    if len(a) != len(e):
        raise VerificationError(f"{what}: {len(a)} output tensors, expected {len(e)}")
    worst_abs, worst_rel = 0.0, 0.0
    for i, (x, y) in enumerate(zip(a, e)):
        if tuple(x.shape) != tuple(y.shape):
            raise VerificationError(f"{what}: output {i} has shape {tuple(x.shape)}, expected {tuple(y.shape)}")
        ab, rel = relative_error(x, y)
        worst_abs, worst_rel = max(worst_abs, ab), max(worst_rel, rel)
    if not worst_rel <= tol:  # also catches NaN
        raise VerificationError(f"{what}: relative error {worst_rel:.3g} (max abs {worst_abs:.3g}) exceeds "
                                f"tolerance {tol:g}")
    return {"max_abs_error": worst_abs, "max_rel_error": worst_rel}


def check_finite(out: Any, what: str) -> None:
    for i, t in enumerate(flatten_outputs(out)):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise VerificationError(f"{what}: output {i} contains NaN or Inf")


def run_eval(module, inputs):
    """Outputs of `module` in eval mode without gradients; its training flag is restored."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(*inputs)
    finally:
        module.train(was_training)


def compare_exact(expected, actual, modules, example_inputs, what: str) -> dict:
    """An exact rewrite: `actual(inputs)` must equal `expected(inputs)` within TOLERANCES["exact_transform"].
    Float32 rounding alone can exceed that on deep random-weight models (BN folding reorders sums; a
    narrower sum differs from a zero-padded wider one); then both are compared again in float64, where
    rounding cannot hide a real error. `modules` (those the two computations use) are converted in
    place: float32 -> float64 -> float32 is exact, so big models need no extra copies."""
    tol = TOLERANCES["exact_transform"]
    try:
        return {**compare_outputs(actual(example_inputs), expected(example_inputs), tol, what),
                "exact_check": "float32"}
    except VerificationError:
        tensors = [t for m in modules for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point()]
        if not tensors or any(t.dtype != torch.float32 for t in tensors):
            raise
    inputs64 = tuple(t.double() if t.is_floating_point() else t for t in example_inputs)
    try:
        for m in modules:
            m.double()
        result = compare_outputs(actual(inputs64), expected(inputs64), tol, what + " (float64)")
    finally:
        for m in modules:
            m.float()
    return {**result, "exact_check": "float64"}

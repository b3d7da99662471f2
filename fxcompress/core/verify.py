"""Numerical verification shared by every transform and lowering; all tolerances live here."""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from .errors import VerificationError

# Relative error = max|actual - expected| / max|expected|, per output tensor.
TOLERANCES = {
    "exact_transform": 1e-5,   # channel removal, BN folding, identity insertions
    "onnx_fp32": 1e-4,         # ONNX Runtime against PyTorch, FP32
    # INT8 ONNX vs the fake-quant graph, quantizer by quantizer with onnxruntime's inputs forced into the
    # fake-quant model (quant/codes.py): no code may differ by more than this many steps, ...
    "int8_code_step": 1,
    # ... and at most this fraction of any quantizer's codes may differ at all. Measured over the 81 models of
    # the INT8 zoo sweep (README, "The INT8 check"): 58 agree code for code; float ops onnxruntime computes with
    # roundings of its own (LayerNorm, GELU, softmax, float attention products) and a few QLinearAdd and conv
    # requantizations flip codes by one step on rounding boundaries, at most 4.0e-4 of a quantizer's codes
    # (efficientnet_b5, at an add); a wrong scale or weight flips 48-72% of them, by up to 255 steps.
    "int8_code_flip_fraction": 1e-3,
    # the model's outputs computed from the last forced codes, against onnxruntime's (SNR, dB): float32
    # rounding of the float ops after the last quantizers alone leaves 79-124 dB (the zoo sweep)
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


# set inside compare_exact's float64 re-check to the substitute of a model's tensors there: run_eval (and
# what else runs a model for a check, through `float64_check()`) then runs models in float64 without
# converting them
_FLOAT64: contextvars.ContextVar[Optional[Callable[[torch.Tensor], torch.Tensor]]] = \
    contextvars.ContextVar("fxcompress_float64_check", default=None)


def float64_check() -> bool:
    """Whether the code runs inside compare_exact's float64 re-check."""
    return _FLOAT64.get() is not None


def as_float64(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.is_floating_point() else t


@contextlib.contextmanager
def evaluating(module):
    """`module` in eval mode, then every submodule's training flag as it was (a model may mix modes, and
    it may be the user's)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def run_eval(module, inputs):
    """Outputs of `module` in eval mode without gradients (`evaluating`). Inside the float64 re-check of
    compare_exact, in float64 on copies of its tensors (`run_substituted`)."""
    with evaluating(module), torch.no_grad():
        return run_substituted(module, inputs, _FLOAT64.get()) if float64_check() else module(*inputs)


class _Substituted(fx.Interpreter):
    """See run_substituted."""

    def __init__(self, gm: fx.GraphModule, substitute: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(gm)
        self.substitute = substitute

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        return _call_substituted(module, self.substitute, args, kwargs)

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        return self.substitute(value) if isinstance(value, torch.Tensor) else value


def _call_substituted(module, substitute, args, kwargs):
    made = {}   # one substitute per tensor: tied names must get the same one
    tensors = {}
    for name, t in list(module.named_parameters(remove_duplicate=False)) + \
            list(module.named_buffers(remove_duplicate=False)):
        new = made.get(id(t))
        if new is None:
            new = made[id(t)] = substitute(t)
        if new is not t:
            tensors[name] = new
    if not tensors:
        return module(*args, **kwargs)
    return torch.func.functional_call(module, tensors, args, kwargs)


def run_substituted(model, inputs, substitute: Callable[[torch.Tensor], torch.Tensor]):
    """model(*inputs) with each of its tensors t replaced by substitute(t) (t itself: kept), no tensor of
    the model written: a GraphModule runs node by node, every module call and get_attr on the substitutes
    of the tensors it holds (torch.func.functional_call), made just before and dropped just after, so the
    substitutes of one module exist at a time (float64 copies of a whole model would double it); another
    module, whole. The caller sets eval mode and no_grad."""
    if isinstance(model, fx.GraphModule):
        return _Substituted(model, substitute).run(*inputs)
    return _call_substituted(model, substitute, inputs, {})


def compare_exact(expected, actual, modules, example_inputs, what: str,
                  exact64: Optional[Callable[[torch.Tensor], Optional[torch.Tensor]]] = None) -> dict:
    """An exact rewrite: `actual(inputs)` must equal `expected(inputs)` within TOLERANCES["exact_transform"].
    Float32 rounding alone can exceed that on deep random-weight models (BN folding reorders sums; a
    narrower sum differs from a zero-padded wider one); then both are compared again in float64, where
    rounding cannot hide a real error: `expected` and `actual` get float64 inputs and run_eval runs the
    models in float64, one module at a time on float64 copies of its tensors (`run_substituted`), so no
    model is converted or written (one may be the user's) and the copies never hold more than a module.
    `modules` are those the two computations use: the re-check is for float32 models. `exact64(t)`, where
    the transform stored t rounded from a float64 value (BN folding), gives that value (None otherwise):
    the re-check then tests the rewrite, not the rounding of its stored weights."""
    tol = TOLERANCES["exact_transform"]
    try:
        return {**compare_outputs(actual(example_inputs), expected(example_inputs), tol, what),
                "exact_check": "float32"}
    except VerificationError:
        tensors = [t for m in modules for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point()]
        if not tensors or any(t.dtype != torch.float32 for t in tensors):
            raise
    inputs64 = tuple(as_float64(t) for t in example_inputs)
    def substitute(t: torch.Tensor) -> torch.Tensor:
        exact = exact64(t) if exact64 is not None else None
        if exact is not None:
            return exact
        return as_float64(t)
    token = _FLOAT64.set(substitute)
    try:
        result = compare_outputs(actual(inputs64), expected(inputs64), tol, what + " (float64)")
    finally:
        _FLOAT64.reset(token)
    return {**result, "exact_check": "float64"}

"""Capturing a model as an fx graph: symbolic tracing, else tracing specialised on the example inputs, then the
canonical forms of composite layers; the graph is checked against the model and the report says how it was
made. Passes never care which capture was used.

    gm, info = capture(model, example_inputs)
    info   # {"method": "symbolic" | "concrete", "canonicalized": {...}, "specialised": [...], "holds_for": {...}}
"""
from __future__ import annotations

import contextlib
import inspect
import io
import operator
import re
import sys
from typing import Dict, Iterable, Sequence, Tuple

import torch
import torch.fx as fx
from torch.fx._symbolic_trace import _assert_is_none as _ASSERT_IS_NONE

from ..core.errors import TraceError, VerificationError
from ..core.verify import TOLERANCES, compare_outputs
from .canonical import canonicalize, has_canonical_form
from .concrete import ConcreteTracer
from .tracing import _failing_module, _graph_module, preserved_state, trace


def capture(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], leaf_modules: Iterable = ()
            ) -> Tuple[fx.GraphModule, Dict]:
    """(graph module, capture report). TraceError when neither tracer can read the model (naming the module
    and line of each attempt), VerificationError when the captured graph does not compute the model."""
    if isinstance(model, fx.GraphModule):
        return model, {"method": "given"}
    leaf_modules = tuple(leaf_modules)
    info: Dict = {"method": "symbolic"}
    defaults = _defaulted_arguments(model, len(example_inputs))
    kept_whole = []   # the layers with a canonical form the tracer met (none: nothing to rewrite)

    def keep_whole(m) -> bool:
        if has_canonical_form(m):
            kept_whole.append(m)
            return True
        return False
    try:
        gm = trace(model, leaf_modules, keep_whole=keep_whole, concrete_args=defaults or None)
    except TraceError as symbolic_error:
        kept_whole.clear()
        gm, specialised = _concrete_trace(model, example_inputs, leaf_modules, symbolic_error, defaults or None,
                                          keep_whole)
        info.update(method="concrete", symbolic_error=str(symbolic_error).split(". Tensor-dependent")[0],
                    specialised=sorted(set(specialised))[:20], specialised_count=len(specialised))
    if defaults:
        _drop_fixed_arguments(gm, defaults)
        info["fixed_arguments"] = {k: repr(v) for k, v in defaults.items()}
    if kept_whole:
        info.update(canonicalize(gm, example_inputs, protected=model.modules()))
    if info["method"] == "concrete":
        info["holds_for"] = _check_against_model(gm, model, example_inputs)
    return gm, info


def _defaulted_arguments(model: torch.nn.Module, n_inputs: int) -> Dict[str, object]:
    """forward's parameters after the example inputs that have default values: the graph computes the model
    called with the example inputs alone, so these are its defaults (timm's `attn_mask=None`,
    `is_causal=False`), never graph inputs that the exporter would turn into tensors."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params[n_inputs:]
            if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _drop_fixed_arguments(gm: fx.GraphModule, defaults: Dict[str, object]) -> None:
    """fx keeps a placeholder for each fixed argument and asserts its value; both go (the value is inlined)."""
    def argument(target: str) -> str:   # fx names the placeholder of a fixed `mask` `mask_1`
        return target if target in defaults else re.sub(r"_\d+$", "", target)
    fixed = [n for n in gm.graph.nodes if n.op == "placeholder" and argument(n.target) in defaults]
    for ph in fixed:
        value = defaults[argument(ph.target)]
        for user in list(ph.users):
            if user.target in (torch._assert, _ASSERT_IS_NONE) or (user.target is operator.eq and all(
                    u.target is torch._assert for u in user.users)):
                for u in list(user.users):
                    gm.graph.erase_node(u)
                gm.graph.erase_node(user)
            else:
                user.args = fx.node.map_arg(user.args, lambda n, ph=ph, value=value: value if n is ph else n)
                user.kwargs = fx.node.map_arg(user.kwargs, lambda n, ph=ph, value=value: value if n is ph else n)
        gm.graph.erase_node(ph)
    gm.graph.lint()
    gm.recompile()


def _concrete_trace(model, example_inputs, leaf_modules, symbolic_error: TraceError, concrete_args=None,
                    keep_whole=has_canonical_form):
    tracer = ConcreteTracer(example_inputs, leaf_modules, keep_whole=keep_whole)
    state = preserved_state(model)
    try:
        graph = tracer.trace(model, concrete_args)
    except Exception as e:  # noqa: BLE001 - any failure of the second tracer is reported with the first's
        state.restore()
        module, where = _failing_module(model, sys.exc_info()[2])
        raise TraceError(f"{symbolic_error}\nTracing specialised on the example inputs failed too: module {module} "
                         f"at {where}: {type(e).__name__}: {e}") from e
    try:
        return _graph_module(tracer.root, graph, type(model).__name__), tracer.specialised
    finally:
        state.restore()


def _variants(example_inputs) -> Dict[str, list]:
    """A second batch size, and a second image size for 4-D inputs (the example's side + 32)."""
    out = {"batch": [torch.cat([t, t.flip(0)]) if t.dim() > 0 else t for t in example_inputs]}
    if all(t.dim() == 4 for t in example_inputs):
        out["size"] = [torch.nn.functional.interpolate(t, size=(t.shape[2] + 32, t.shape[3] + 32)) for t in example_inputs]
    return out


def _check_against_model(gm: fx.GraphModule, model: torch.nn.Module, example_inputs) -> Dict[str, object]:
    """The specialised graph must compute the model on the example; on a second batch and image size it is
    checked too and the report says whether it holds there (a frozen branch or padding may not). The model's
    own state (what its forward caches) is left as it was."""
    with preserved_state(model):
        return _compare_with_model(gm, model, example_inputs)


def _first_line(e: Exception, limit: int) -> str:
    """An exception's message, its first line, cut to `limit` characters ('' for `AssertionError()`)."""
    return (str(e).splitlines() or [""])[0][:limit]


def _compare_with_model(gm: fx.GraphModule, model: torch.nn.Module, example_inputs) -> Dict[str, object]:
    with torch.no_grad():
        try:   # fx prints the generated code of a failing graph to stderr: the error says where instead
            with contextlib.redirect_stderr(io.StringIO()):
                traced = gm(*example_inputs)
        except Exception as e:  # noqa: BLE001 - whatever the graph raises, the capture is what failed
            raise VerificationError(
                f"the graph traced from {type(model).__name__} on the example inputs fails on those very inputs "
                f"({type(e).__name__}: {_first_line(e, 200)}): the specialising "
                f"tracer froze Python that does not hold; pass the module named in the traceback as a leaf "
                f"(leaf_modules=[...])") from e
        compare_outputs(traced, model(*example_inputs), TOLERANCES["exact_transform"],
                        "graph traced on the example inputs vs the model")
    holds = {}
    for what, inputs in _variants(example_inputs).items():
        try:
            with torch.no_grad():
                expected = model(*inputs)
        except Exception:  # noqa: BLE001 - the model itself refuses this size: nothing to check
            holds[what] = "model refuses it"
            continue
        try:   # fx prints the generated code of a failing graph to stderr: the report says it failed
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                compare_outputs(gm(*inputs), expected, TOLERANCES["exact_transform"], what)
            holds[what] = True
        except Exception as e:  # noqa: BLE001 - whatever the graph raises there, it does not hold there
            # a frozen branch may reach a shape assert the model's own branch avoids (crossvit's scale_image
            # skips its resize at the example's size; at another, the patch embedding asserts), or index past
            # a table it did not resize (samvit's relative positions: IndexError)
            holds[what] = f"no: {type(e).__name__}: {_first_line(e, 120)}"
    return holds

"""Shapes without arithmetic: `tensor_meta` on every node of a graph from a run on meta tensors (every
parameter, buffer and input swapped for a data-less twin), falling back to fake tensors, then to a
real forward pass, for graphs that meta tensors cannot run. What analyses that only need shapes use
(the channel groups, MACs of a candidate pruning plan)."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Callable, Dict

import torch
import torch.fx as fx
import torch.nn as nn

from .tracing import propagate_shapes, record_node_meta


@dataclass(frozen=True)
class ShapeRecord:
    """How `record_shapes` got the shapes: `method` is "meta", "fake" or "real"; `failures` maps each
    method tried before it to the first line of its error (why the cheaper method could not run)."""
    method: str
    failures: Dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        why = "; ".join(f"{m} failed: {e}" for m, e in self.failures.items())
        return self.method + (f" ({why})" if why else "")


def _first_line(e: BaseException) -> str:
    def line(x):
        text = str(x).strip().splitlines()
        return f"{type(x).__name__}: {text[0] if text else ''}".rstrip(": ")
    # ShapeProp wraps the op's error in its own (naming the node): keep both
    return line(e) + (f" <- {line(e.__cause__)}" if e.__cause__ is not None else "")


def record_shapes(gm: fx.GraphModule, example_inputs) -> ShapeRecord:
    """Record `tensor_meta` on every node without computing anything. First on the meta device (every
    parameter, buffer and input swapped for a data-less twin: shapes only, a few ms for a ResNet-50);
    a graph that meta tensors cannot run (data-dependent ops, tensors made on the CPU inside forward)
    falls back to fake tensors, then to a real forward pass. Returns the ShapeRecord, also kept in
    gm.meta["shape_record"] for callers that only hold the graph."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.shape_prop import ShapeProp

    failures: Dict[str, str] = {}
    training = [m for m in gm.modules() if m.training]
    for m in training:   # eval mode, touching only the modules that need it (nn.Module.eval walks them all)
        m.training = False
    try:
        try:
            run_on_meta(gm, example_inputs, record_node_meta)
            method = "meta"
        except Exception as e:   # kept, not swallowed: the record says why the fallback ran
            failures["meta"] = _first_line(e)
            try:
                prop = ShapeProp(gm)
                # the real parameters take part as they are (no fake copy of the module): only inputs are fake
                prop.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
                # ShapeProp prints a traceback before raising: the record keeps the error instead
                with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                    prop.propagate(*example_inputs)
                method = "fake"
            except Exception as e:
                failures["fake"] = _first_line(e)
                propagate_shapes(gm, example_inputs)   # a failure here raises ShapeError naming the node
                method = "real"
    finally:
        for m in training:
            m.training = True
    record = ShapeRecord(method, failures)
    gm.meta["shape_record"] = record
    return record


def ensure_shapes(gm: fx.GraphModule, example_inputs) -> None:
    """Record shapes unless every node already carries them (the manager records them after each transform).
    A recorded node has a "type" (every way of recording sets it); `tensor_meta` only where the value holds
    tensors: a node computing a size (`x.shape[0]`) has none, and asking for it re-recorded every graph
    with one (vit_b_16: twice per compile)."""
    if any("type" not in n.meta for n in gm.graph.nodes if n.op not in ("output", "get_attr")):
        record_shapes(gm, example_inputs)


# modules whose output has the input's shape and dtype: skipped on meta tensors (torch runs BatchNorm's
# meta kernel through Python decompositions, ~1.5 ms a call: most of DenseNet's shape time)
SHAPE_PRESERVING = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish,
                    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Identity, nn.LayerNorm)


class MetaRunError(RuntimeError):
    """A graph failed to run on meta tensors; `node` is where."""

    def __init__(self, node: fx.Node, cause: BaseException):
        super().__init__(f"node {node.name!r} ({node.op} {node.target}): {type(cause).__name__}: {cause}")
        self.node = node


def run_on_meta(gm: fx.GraphModule, example_inputs, on_value: Callable[[fx.Node, object], None]) -> None:
    """Run the graph node by node on meta tensors (parameters, buffers and inputs swapped for data-less
    twins, restored afterwards) and call `on_value(node, value)` after each node. A plain loop, not
    fx.Interpreter: its per-node bookkeeping costs more than a meta op. A failing node (or an exception
    from `on_value`) raises MetaRunError naming the node. The caller sets eval mode if it matters."""
    modules = dict(gm.named_modules())
    env: Dict[fx.Node, object] = {}
    inputs = iter([_meta_twin(x) for x in example_inputs])
    load = env.__getitem__
    with _MetaSwap(gm) as swap, torch.no_grad():
        for n in gm.graph.nodes:
            try:
                if n.op == "placeholder":
                    value = next(inputs)
                elif n.op == "output":
                    value = fx.node.map_arg(n.args[0], load)
                elif n.op == "get_attr":
                    swap.now()
                    owner, _, attr = n.target.rpartition(".")
                    value = getattr(modules[owner], attr)
                else:
                    args, kwargs = fx.node.map_arg(n.args, load), fx.node.map_arg(n.kwargs, load)
                    if n.target in _CAT:
                        value = _cat_on_meta(*args, **kwargs)
                    elif n.op == "call_function":
                        value = n.target(*args, **kwargs)
                    elif n.op == "call_method":
                        value = getattr(args[0], n.target)(*args[1:], **kwargs)
                    else:
                        module = modules[n.target]
                        x = args[0] if len(args) == 1 and not kwargs else None
                        if isinstance(module, SHAPE_PRESERVING) and isinstance(x, torch.Tensor) \
                                and x.is_floating_point():
                            value = x
                        elif type(module) is nn.Linear and isinstance(x, torch.Tensor) and x.dim() >= 1 \
                                and x.shape[-1] == module.weight.shape[1]:
                            # addmm's meta kernel runs through Python decompositions (most of ViT's time)
                            value = x.new_empty((*x.shape[:-1], module.weight.shape[0]))
                        elif type(module) is nn.Conv2d and isinstance(x, torch.Tensor) and _plain_conv(module, x):
                            value = x.new_empty(_conv2d_shape(module, x.shape))   # a third of DenseNet's meta time
                        else:
                            swap.before_call(module)
                            value = module(*args, **kwargs)
                env[n] = value
                on_value(n, value)
            except Exception as e:
                raise MetaRunError(n, e) from e


_CAT = (torch.cat, torch.concat, torch.concatenate)


def _plain_conv(m: nn.Conv2d, x: torch.Tensor) -> bool:
    """A conv whose output shape is plain arithmetic: zero padding given as numbers, matching channels."""
    return m.padding_mode == "zeros" and not isinstance(m.padding, str) and x.dim() == 4 \
        and x.shape[1] == m.in_channels and x.is_floating_point()


def _conv2d_shape(m: nn.Conv2d, shape) -> tuple:
    spatial = tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                    for size, p, d, k, s in zip(shape[2:], m.padding, m.dilation, m.kernel_size, m.stride))
    return (shape[0], m.out_channels, *spatial)


def _cat_on_meta(tensors, dim=0, *, out=None):
    """torch.cat's result on meta tensors, shape arithmetic only (its meta kernel runs through Python
    references, ~0.4 ms a call: most of DenseNet's shape time). Anything unusual goes to torch.cat."""
    tensors = list(tensors)
    first = tensors[0] if tensors else None
    if out is not None or first is None or any(t.dtype != first.dtype or t.dim() != first.dim() or t.numel() == 0
                                               for t in tensors):
        return torch.cat(tensors, dim) if out is None else torch.cat(tensors, dim, out=out)
    d = dim % first.dim()
    shape = list(first.shape)
    if any(list(t.shape[:d]) + list(t.shape[d + 1:]) != shape[:d] + shape[d + 1:] for t in tensors):
        return torch.cat(tensors, dim)   # let torch raise its own error
    shape[d] = sum(t.shape[d] for t in tensors)
    return torch.empty(shape, dtype=first.dtype, device="meta")


def _meta_twin(value):
    return torch.empty_like(value, device="meta") if isinstance(value, torch.Tensor) else value


class _MetaSwap:
    """Swaps every parameter and buffer of gm for a meta tensor of the same shape and dtype (restored on
    exit), but only once the run may read one: at a get_attr node, or before calling a module that holds
    a parameter or buffer (itself or a child). The swap costs 2 ms on a DenseNet, whose run on meta tensors
    never needs it: convolutions, linears and norms get their shapes by arithmetic, pools hold no tensor."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.saved = None

    def __enter__(self) -> "_MetaSwap":
        return self

    def before_call(self, module: nn.Module) -> None:
        if self.saved is None and any(t is not None for m in module.modules()
                                      for store in (m._parameters, m._buffers) for t in store.values()):
            self.now()

    def now(self) -> None:
        if self.saved is not None:
            return
        self.saved = []
        for module in self.gm.modules():
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is not None:
                        self.saved.append((store, name, t))
                        store[name] = _meta_twin(t)

    def __exit__(self, *exc) -> None:
        for store, name, t in self.saved or ():
            store[name] = t

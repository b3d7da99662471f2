"""Tracing a model into a torch.fx GraphModule, with shapes and dtypes recorded on every node."""
from __future__ import annotations

import collections
import sys
import traceback
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata
from torch.fx.proxy import Scope
from torch.utils import _pytree as pytree

from ..core.errors import ShapeError, TraceError


class LeafTracer(fx.Tracer):
    """A symbolic tracer that keeps the given module types or qualified names as single call_module nodes.
    Besides, two shortcuts through fx's per-node bookkeeping, each giving what fx gives (a tenth of the
    time of tracing a DenseNet each; tests/graph/test_tracing.py compares graphs and node metadata)."""

    def __init__(self, leaf_modules: Iterable = (), keep_whole=None):
        super().__init__()
        self.keep_whole = keep_whole   # f(module) -> True for more leaves (layers with a canonical form)
        self.leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
        self.leaf_names = {m for m in leaf_modules if isinstance(m, str)}
        # fx copies these with copy.copy at every node (module stack) and module call (scope); copy.copy
        # of an OrderedDict or a plain object goes through __reduce_ex__, a constructor call is 5x cheaper
        self.module_stack = _ModuleStack()
        self.scope = _Scope("", None)

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        if self.keep_whole is not None and self.keep_whole(m):
            return True
        return super().is_leaf_module(m, qualname)

    def create_arg(self, a):
        """fx's Tracer.create_arg tests every argument against Parameter (a Python-level isinstance),
        Tensor, Module, NamedTuple and opaque types before its base class looks up the common types in a
        table; for the exact types below none of those tests can match, so answer as that table does."""
        t = type(a)
        if t is fx.Proxy:
            return a.node
        if t is tuple:
            return tuple([self.create_arg(e) for e in a])
        if t is list:
            return [self.create_arg(e) for e in a]
        if t in _ATOMS:
            return a
        return super().create_arg(a)


_ATOMS = frozenset({int, float, bool, str, type(None)})


class _ModuleStack(collections.OrderedDict):
    def __copy__(self):
        return collections.OrderedDict(self)   # what copy.copy of fx's OrderedDict returns


class _Scope(Scope):
    def __copy__(self):
        return Scope(self.module_path, self.module_type)   # fx only reads the two fields back


def _failing_module(model: torch.nn.Module, tb) -> tuple[str, str]:
    """Find the innermost user-module frame in a traceback: (module qualname, 'file:line')."""
    names = {id(m): (n or "<root>") for n, m in model.named_modules()}
    culprit = ("<unknown module>", "<unknown line>")
    for frame, lineno in traceback.walk_tb(tb):
        code = frame.f_code  # the module is the frame's first argument, whatever it is called
        owner = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if owner is not None and id(owner) in names:
            culprit = (f"{names[id(owner)]} ({type(owner).__name__})", f"{frame.f_code.co_filename}:{lineno}")
    return culprit


def trace(model: torch.nn.Module, leaf_modules: Iterable = (), keep_whole=None, concrete_args=None) -> fx.GraphModule:
    """Symbolically trace `model`. Raises TraceError naming the module and source line that failed.
    `keep_whole(module)`: True for further modules to keep as single call_module nodes; `concrete_args`:
    forward's arguments fixed to a value (fx's own option)."""
    if isinstance(model, fx.GraphModule):
        return model
    tracer = LeafTracer(leaf_modules, keep_whole)
    state = preserved_state(model)
    try:
        graph = tracer.trace(model, concrete_args)
    except Exception as e:
        state.restore()  # torch.fx raises several types (TraceError, TypeError, RuntimeError, ...)
        module, where = _failing_module(model, sys.exc_info()[2])
        raise TraceError(
            f"cannot trace {type(model).__name__}: module {module} at {where} failed: "
            f"{type(e).__name__}: {e}. Tensor-dependent Python control flow (if/for on tensor values) "
            f"cannot be traced: pass that module as a leaf, e.g. leaf_modules=[{module.split(' ')[0]!r}] "
            f"or its class, or rewrite the branch with torch.where."
        ) from e
    try:
        return _graph_module(tracer.root, graph, type(model).__name__)
    finally:
        state.restore()   # after the GraphModule took fx's tensor constants from the root


class preserved_state:
    """Tracing runs the model's Python with proxies, and some of it caches state on its modules (a detection
    head storing its anchors and the input shape it saw): every module's plain attributes and buffers, and
    the contents of the dicts, lists and sets among its attributes (timm's attention_bias_cache), are put back
    as they were by `restore()` (or when the block ends), whether tracing succeeded or not; so are fx's
    tensor constants (`_tensor_constant0`...), which it stores on the root. (A forward that assigns
    parameters or submodules is not provided for: none was seen.)"""

    def __init__(self, model: torch.nn.Module):
        # torch.nn's own layers keep no Python state from a forward: the root (fx's constants) and the model's
        # own modules are saved
        self.saved = [(m, m.__dict__.copy(), m._buffers.copy()) for m in model.modules()
                      if m is model or not type(m).__module__.startswith("torch.nn.")]
        self.contents = [(v, v.copy()) for _, attrs, _ in self.saved for v in attrs.values()
                         if type(v) in (dict, list, set)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
        return False

    def restore(self) -> None:
        for m, attrs, buffers in self.saved:
            for now, then in ((m.__dict__, attrs), (m._buffers, buffers)):
                if _changed(now, then):
                    now.clear()
                    now.update(then)
        for container, saved in self.contents:
            if _changed(container, saved):
                container.clear()
                container.update(saved) if isinstance(container, (dict, set)) else container.extend(saved)


_MISSING = object()


def _changed(now, then) -> bool:
    """Whether a container's items differ from a copy's, by identity (== on tensors compares elements)."""
    if len(now) != len(then):
        return True
    if isinstance(now, dict):
        return any(now.get(k, _MISSING) is not v for k, v in then.items())
    if isinstance(now, list):
        return any(a is not b for a, b in zip(now, then))
    return now != then   # a set holds hashable values


def _graph_module(root: torch.nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """A GraphModule whose Python code is generated on its first call, not here (a third of the time of
    tracing a DenseNet; analyses read only the graph). torch's lazy module is private API: without it,
    a plain GraphModule. It is made around an empty graph (of the same tracer), then gets the modules its
    graph calls from `_install_targets` and the graph itself: what GraphModule(root, graph) does, faster."""
    try:
        from torch.fx._lazy_graph_module import _make_graph_module, _use_lazy_graph_module
    except ImportError:
        return fx.GraphModule(root, graph, name)
    with _use_lazy_graph_module(True):
        gm = _make_graph_module(root, fx.Graph(tracer_cls=graph._tracer_cls, tracer_extras=graph._tracer_extras),
                                name)
        _install_targets(root, gm, graph)
        gm.graph = graph
    return gm


def _install_targets(root: torch.nn.Module, gm: fx.GraphModule, graph: fx.Graph) -> None:
    """GraphModule(root, graph) copies the object at the path of every call_module and get_attr target
    from root (torch's _copy_attr: an empty module for each container on the way, the shared object at the
    end), calling nn.Module's __getattr__ and __setattr__ (Python functions) at every step of every path:
    a sixth of the time of tracing a DenseNet. Here each container path is walked once (most targets share
    them) through the `_modules` dicts, where every step is a plain submodule; any other target goes to
    torch's _copy_attr."""
    from torch.fx.graph_module import _copy_attr
    from torch.nn.modules.module import _global_module_registration_hooks

    walked: Dict[str, Optional[tuple]] = {}
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            # global registration hooks see (and may replace) every module set: leave those to torch
            if _global_module_registration_hooks or not _copy_module_path(root, gm, node.target, walked):
                walked.clear()   # what torch's steps change is walked again
                _copy_attr(root, gm, node.target)


def _copy_module_path(root: torch.nn.Module, gm: fx.GraphModule, target: str, walked: dict) -> bool:
    """torch's _copy_attr(root, gm, target) where every step is a plain submodule; False, having done only
    steps that _copy_attr would also do, where one is not (a parameter, a buffer, a name an attribute
    shadows, a custom __getattr__...)."""
    parent, _, field = target.rpartition(".")
    if parent:
        pair = _walk(root, gm, parent, walked)
        if pair is None or pair is False:
            return pair is None   # None: a module on the path is installed itself, all below it with it
        src, dst = pair
    else:
        src, dst = root, gm
    orig = _plain_submodule(src, field)
    if orig is None or not _plain_name(dst, field):
        return False
    if target in walked:   # the empty container walked here gives way to the module itself
        walked.clear()
    dst._modules[field] = orig   # setattr(dst, field, orig), the name being plain
    return True


def _walk(root: torch.nn.Module, gm: fx.GraphModule, path: str, walked: dict):
    """(root's module, gm's container) at `path`, making gm's empty containers on the way as _copy_attr
    does; None where gm holds root's module itself at a step (_copy_attr stops there), False where a step
    is not plain. Remembered in `walked`."""
    if path in walked:
        return walked[path]
    parent, _, item = path.rpartition(".")
    if parent:
        pair = _walk(root, gm, parent, walked)
        if pair is None or pair is False:
            return pair
        src, dst = pair
    else:
        src, dst = root, gm
    f = _plain_submodule(src, item)
    if f is None or not _plain_name(dst, item):
        return False
    t = dst._modules.get(item)   # getattr(dst, item, None), the name being plain
    if t is f:
        walked[path] = None
        return None
    if t is None:
        t = dst._modules[item] = torch.nn.Module()   # setattr(dst, item, Module()), the name being plain
    walked[path] = (f, t)
    return walked[path]


def _plain_submodule(m: torch.nn.Module, name: str):
    """m._modules[name] where that is surely what getattr(m, name) gives, else None."""
    cls = type(m)
    if cls.__getattr__ is not torch.nn.Module.__getattr__ or cls.__getattribute__ is not object.__getattribute__ \
            or name in m.__dict__ or name in m._parameters or name in m._buffers or hasattr(cls, name):
        return None
    return m._modules.get(name)


def _plain_name(m: torch.nn.Module, name: str) -> bool:
    """Whether getattr(m, name, None) is m._modules.get(name) and setattr(m, name, module) only stores
    the module there (nn.Module.__setattr__ would otherwise clear the name from the other dicts)."""
    cls = type(m)
    return cls.__getattr__ is torch.nn.Module.__getattr__ and cls.__setattr__ is torch.nn.Module.__setattr__ \
        and cls.__getattribute__ is object.__getattribute__ and name not in m.__dict__ \
        and name not in m._parameters and name not in m._buffers and name not in m._non_persistent_buffers_set \
        and not hasattr(cls, name)


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph and records each node's tensor metadata; a failing node raises ShapeError naming it."""

    def run_node(self, n: fx.Node):
        try:
            result = super().run_node(n)
        except Exception as e:
            shapes = [tuple(v.shape) for v in (self.env.get(a) for a in n.all_input_nodes)
                      if isinstance(v, torch.Tensor)]
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ShapeError(
                f"node {n.name!r} ({n.op} {_target_name(n)}) failed on inputs of shapes {shapes}: "
                f"{type(e).__name__}: {message}. Check that example_inputs have the shape the model expects."
            ) from e
        record_node_meta(n, result)
        return result


def record_node_meta(n: fx.Node, value) -> None:
    """Store fx's `tensor_meta` (one TensorMetadata, or a structure of them for tuple outputs) and `type`."""
    if isinstance(value, torch.Tensor):   # the common case, without pytree's walk
        n.meta["tensor_meta"] = tensor_metadata(value)
    else:
        meta = pytree.tree_map(lambda v: tensor_metadata(v) if isinstance(v, torch.Tensor) else None, value)
        if meta is not None:
            n.meta["tensor_meta"] = meta
    n.meta["type"] = type(value)


def tensor_metadata(t: torch.Tensor) -> TensorMetadata:
    """fx's TensorMetadata; the common contiguous dense case without fx's three memory-format probes."""
    if t.layout == torch.strided and not t.is_quantized and t.is_contiguous():
        return TensorMetadata(t.shape, t.dtype, t.requires_grad, t.stride(), torch.contiguous_format, False, {})
    return _extract_tensor_metadata(t)


def _target_name(n: fx.Node) -> str:
    t = n.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]):
    """Run gm on example_inputs, record `tensor_meta` (shape, dtype) on each node, return the outputs."""
    with torch.no_grad():
        try:
            return _ShapeRecorder(gm).run(*example_inputs)
        except ShapeError as e:  # fx's interpreter appends the node dump to the message: keep ours short
            raise ShapeError(str(e.args[0]).split("\n\nWhile executing")[0]) from e.__cause__


def node_shape(n: fx.Node):
    """The recorded output shape of a node (None if it is not a single tensor)."""
    meta = n.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

"""Tracing that specialises on the example inputs, for models whose Python reads tensor shapes or values.

`torch.fx.symbolic_trace` gives up on `list(x.chunk(2, 1))` (iterating a proxy), `len(x)`, `if H % p:`,
`math.ceil(H / s)` or `int(x.shape[1])`: the Python needs a value a proxy does not have. `ConcreteTracer`
records the same fx graph while running the model on the example inputs alongside: every node's value is
computed as the node is created, so wherever Python needs a value it gets the example's. What only moves
data stays symbolic: iterating the 2 chunks of `x.chunk(2, 1)` gives 2 getitem nodes, valid for every input.
What Python decides from a shape is frozen into the graph: a branch taken on `H % p` holds for inputs of the
example's shape (fx records `math` calls on sizes as graph nodes, so arithmetic alone stays symbolic) (`capture` then checks the graph on a second batch
size and a second image size and reports which it holds for). Python that reads tensor *values* (`if
x.mean() > 0`, `int(x.sum())`) is refused: a graph frozen on one example's data would be wrong on others.

    graph = ConcreteTracer(example_inputs).trace(model)   # a graph where symbolic tracing raised
"""
from __future__ import annotations

import contextlib
import operator
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch.fx._symbolic_trace import _orig_module_call, _orig_module_getattr
from torch.fx.proxy import Attribute, Proxy

from .tracing import LeafTracer


class _ConcreteValues:
    """What a concrete proxy answers from its node's value on the example inputs."""

    def _value(self, how: str):
        return self.tracer.concrete(self, how)

    def __len__(self) -> int:   # a tensor's length is metadata, a sequence's too
        return len(self.tracer.metadata(self, "len"))

    def __int__(self) -> int:
        return int(self._value("int"))

    def __index__(self) -> int:
        return int(self._value("index"))

    def __float__(self) -> float:
        return float(self._value("float"))

    def __setitem__(self, key, value) -> None:   # `t[..., 2] = v` on a tensor made inside the model
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def __getattr__(self, k: str):
        if k in _CONSTANT_ATTRIBUTES:   # device, dtype...: the same for every input of the model
            return getattr(self.tracer.metadata(self, k), k)
        return ConcreteAttribute(self, k)


class ConcreteProxy(_ConcreteValues, Proxy):
    pass


class ConcreteAttribute(_ConcreteValues, Attribute):
    pass


class ConcreteTracer(LeafTracer):
    """A LeafTracer whose proxies carry their value on `example_inputs` (see the module doc)."""

    def __init__(self, example_inputs: Sequence[torch.Tensor], leaf_modules=(), keep_whole=None):
        super().__init__(leaf_modules, keep_whole)
        self.example_inputs = list(example_inputs)
        self.values: dict = {}
        self._placeholders = 0
        self.specialised: list = []   # where Python read a value: "bool <node>", "len <node>", ...
        self.data_dependent: set = set()   # nodes whose value depends on tensor values, not only on shapes
        self._tensor_targets: dict = {}     # id of a buffer read as a graph node: its qualified name, while tracing

    def trace(self, root, concrete_args=None):
        self.values.clear()
        self._placeholders = 0
        try:
            with torch.no_grad(), _tensor_attributes_as_buffers(root):
                self._tensor_targets = _traced_tensors(root)
                return super().trace(root, concrete_args)
        finally:
            self.values.clear()   # the example's activations are not kept
            self._tensor_targets = {}

    def getattr(self, attr: str, attr_val, parameter_proxy_cache):
        """A buffer or plain tensor attribute of a module whose Python is traced (`_traced_tensors`) is read as
        a get_attr node, so its methods become nodes too; fx itself proxies parameters only."""
        target = self._tensor_targets.get(id(attr_val)) if isinstance(attr_val, torch.Tensor) else None
        if target is None:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if target not in parameter_proxy_cache:
            parameter_proxy_cache[target] = self.create_proxy("get_attr", target, (), {})
        return parameter_proxy_cache[target]

    def proxy(self, node: fx.Node) -> Proxy:
        return ConcreteProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        if node not in self.values:
            self.values[node] = self._evaluate(node)
            self._mark_data_dependence(node)
        return proxy

    def _mark_data_dependence(self, node: fx.Node) -> None:
        value = self.values[node]
        if isinstance(value, torch.Tensor):
            self.data_dependent.add(node)
        elif not _reads_metadata(node) and any(a in self.data_dependent for a in node.all_input_nodes):
            self.data_dependent.add(node)

    def metadata(self, proxy: Proxy, how: str):
        """The example's value of `proxy`, for reading its metadata (shape, device, dtype) only."""
        self.specialised.append(f"{how}({proxy.node.name})")
        return self.values[proxy.node]

    def concrete(self, proxy: Proxy, how: str):
        """The example's value of `proxy` where Python needs it; refused when it depends on tensor values."""
        node = proxy.node
        if node in self.data_dependent:
            raise fx.proxy.TraceError(f"{how}() of {node.name}, which depends on tensor values, not only on shapes: "
                                      "the graph would hold for this example's data only")
        self.specialised.append(f"{how}({node.name})")
        return self.values[node]

    def _value_of(self, node: fx.Node) -> Any:
        if node not in self.values:   # fx makes get_attr nodes of tensor constants without a proxy
            self.values[node] = self._evaluate(node)
        return self.values[node]

    def _evaluate(self, node: fx.Node) -> Any:
        args = fx.node.map_arg(node.args, self._value_of)
        kwargs = fx.node.map_arg(node.kwargs, self._value_of)
        with _unpatched_modules():
            return self._run(node, args, kwargs)

    def _run(self, node: fx.Node, args, kwargs) -> Any:
        if node.op == "placeholder":
            if str(node.target).startswith("**"):   # forward(x, *args, **kwargs): called with x alone
                return {}
            if str(node.target).startswith("*"):
                return ()
            i = self._placeholders
            self._placeholders += 1
            if i < len(self.example_inputs):
                return self.example_inputs[i]
            return args[0] if args else None   # a parameter with a default value
        if node.op == "get_attr":
            value = self.root
            for part in node.target.split("."):
                value = getattr(value, part)
            return value
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":
            return self.root.get_submodule(node.target)(*args, **kwargs)
        return None   # output

    # ---- where fx's tracer gives up, answer from the value
    def to_bool(self, obj: Proxy) -> bool:
        return bool(self.concrete(obj, "bool"))

    def iter(self, obj: Proxy):
        value = self.values[obj.node]
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            self.specialised.append(f"iter({obj.node.name}) over dim 0 of size {len(value)}")
        return iter([obj[i] for i in range(len(value))])

    def keys(self, obj: Proxy):
        return self.values[obj.node].keys()


_CONSTANT_ATTRIBUTES = {"device", "dtype", "is_cuda", "layout", "ndim", "is_sparse", "is_quantized"}
_METADATA_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "type", "get_device", "is_contiguous"}
_METADATA_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad"}


def _reads_metadata(node: fx.Node) -> bool:
    """Whether the node reads only a tensor's metadata (its value does not depend on the tensor's data)."""
    if node.op == "call_method":
        return node.target in _METADATA_METHODS
    if node.op == "call_function":
        return (node.target is getattr and node.args[1] in _METADATA_ATTRIBUTES) or node.target is len
    return False


def _python_modules(root: torch.nn.Module):
    """(qualified name, module) of the modules whose forward the tracer reads: the root and every module not
    of torch.nn's own layers (whose buffers only their own forward reads)."""
    return [(q, m) for q, m in root.named_modules() if m is root or not type(m).__module__.startswith("torch.nn.")]


def _traced_tensors(root: torch.nn.Module) -> dict:
    """{id: qualified name} of those modules' buffers: convit's GPSA keeps `rel_indices` as a buffer and calls
    `rel_indices.expand(B, -1, -1, -1)` with a traced `B`, which a constant tensor cannot take."""
    out = {}
    for qualname, m in _python_modules(root):
        for name, value in m._buffers.items():
            if value is not None:
                out.setdefault(id(value), f"{qualname}.{name}".lstrip("."))
    return out


@contextlib.contextmanager
def _tensor_attributes_as_buffers(root: torch.nn.Module):
    """Tensors kept as plain module attributes (neither parameters nor buffers: convit's `rel_indices`, cached by
    its first forward) are invisible to fx, which reads module attributes through nn.Module.__getattr__, called
    for parameters, buffers and submodules only: such a tensor's methods run eagerly, and
    `rel_indices.expand(B, -1, -1, -1)` with a traced `B` fails. While tracing, those of the modules whose
    Python is traced are non-persistent buffers, read as get_attr nodes (`_traced_tensors`); then they are
    plain attributes again."""
    moved = []
    for _, m in _python_modules(root):
        for name, value in list(vars(m).items()):
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                del m.__dict__[name]
                m._buffers[name] = value
                m._non_persistent_buffers_set.add(name)
                moved.append((m, name))
    try:
        yield
    finally:
        for m, name in moved:
            value = m._buffers.pop(name, None)
            m._non_persistent_buffers_set.discard(name)
            m.__dict__[name] = value


@contextlib.contextmanager
def _unpatched_modules():
    """While fx traces, nn.Module's __getattr__ and __call__ make proxies; the example's values are computed
    with the originals."""
    saved = torch.nn.Module.__getattr__, torch.nn.Module.__call__
    torch.nn.Module.__getattr__, torch.nn.Module.__call__ = _orig_module_getattr, _orig_module_call
    try:
        yield
    finally:
        torch.nn.Module.__getattr__, torch.nn.Module.__call__ = saved

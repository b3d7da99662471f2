"""Op knowledge, registered one way: for each aspect (MACs, channel coupling, resizing under pruning,
quantization, BatchNorm folding), one rule per module type, function or method name, looked up by what
an fx node calls. Every rule of one op family lives in that family's module (`ops/conv.py`,
`ops/attention.py`, ...), the way onnxruntime's `quantization/operators/` keeps one file per op.

    from fxcompress.ops.registry import MACS, optional

    @MACS.register(nn.Conv2d, F.conv2d, "conv2d", optional("torchvision.ops", "deform_conv2d"))
    def conv_macs(v): ...

A target is a module type (matched along the MRO, so subclasses inherit the rule), a function, or a
method name (a string); `optional(module, name)` names a target of an optional package (None when it is
not installed: skipped). `register(*targets, rule=value)` registers a value instead of decorating.
"""
from __future__ import annotations

import importlib
import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch.fx as fx
import torch.nn as nn


class OpRegistry:
    """One aspect of op knowledge: rules keyed by module type, function or method name."""

    def __init__(self, aspect: str):
        self.aspect = aspect
        self.modules: Dict[type, Any] = {}
        self.functions: Dict[Any, Any] = {}
        self.methods: Dict[str, Any] = {}
        self.pending: list = []   # (lazy target, rule): resolved once their package is imported
        self._modules_seen = 0

    def register(self, *targets, rule: Any = None):
        """Register `rule` (or, used as a decorator, the decorated function) for every target."""
        def add(value):
            for t in targets:
                if t is None:       # an optional target whose package is missing
                    continue
                if isinstance(t, lazy):
                    self.pending.append((t, value))
                elif isinstance(t, str):
                    self.methods[t] = value
                elif isinstance(t, type) and issubclass(t, nn.Module):
                    self.modules[t] = value
                elif callable(t):
                    self.functions[t] = value
                else:
                    raise TypeError(f"{self.aspect}: cannot register a rule for {t!r}")
            return value
        return add(rule) if rule is not None else add

    def _resolve_pending(self) -> None:
        """Lazy targets whose package the user has imported since (a model can only hold layers of an imported
        package) join the table; checked again only when sys.modules has grown."""
        if len(sys.modules) == self._modules_seen:
            return
        self._modules_seen = len(sys.modules)
        still = []
        for target, rule in self.pending:
            module = sys.modules.get(target.module)
            cls = getattr(module, target.name, None) if module is not None else None
            if cls is None:
                still.append((target, rule))
            else:
                self.modules[cls] = rule
        self.pending = still

    def for_type(self, cls: type) -> Optional[Any]:
        """The rule of a module type: its own, else that of its nearest registered base class."""
        if self.pending:
            self._resolve_pending()
        table = self.modules
        for t in cls.__mro__:
            rule = table.get(t)
            if rule is not None:
                return rule
        return None

    def lookup(self, node: fx.Node, module: Optional[nn.Module] = None) -> Optional[Any]:
        """The rule for what `node` calls (`module`: the called module of a call_module node)."""
        if node.op == "call_module":
            return self.for_type(type(module))
        if node.op == "call_function":
            return self.functions.get(node.target)
        if node.op == "call_method":
            return self.methods.get(node.target)
        return None


@dataclass(frozen=True)
class lazy:
    """A module type of a package fxcompress does not import itself (timm's layers): its rules apply once the
    user has imported the package. Importing timm here would slow every trace: fx patches nn.Module's
    methods while tracing, and each patch invalidates the type caches of every nn.Module subclass loaded."""
    module: str
    name: str


def optional(module: str, name: str):
    """`module.name` if that module imports (torchvision's wrapped leaf functions, say), else None."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


@dataclass(frozen=True)
class QuantRule:
    """How the INT8 lowering treats an op (see fxcompress/quant/insert.py for the roles):
    - "weighted": conv / linear: int8 weight per output channel (`weight_axis`), uint8 input and output;
    - "requantize": ops with integer kernels of their own (add, average pools, concat); with `shared_scale`
      the inputs take the output's quantizer where that is safe (concat: QLinearConcat then copies bytes
      instead of requantizing each input through a table; quant/concat_scale.py);
    - "activation": ReLU-like ops after a quantized op: the quantizer moves after them;
    - "passthrough": ops that only move or select values: they reuse their input's quantization;
    - "decompose": modules that hide their linear layers (nn.MultiheadAttention's packed projection):
      `decompose(module, node)` returns (an equivalent module built from nn.Linear layers, the nodes its
      forward takes) or the reason it cannot (a string), and QuantizeINT8 inlines the module
      (quant/decompose.py) before planning.
    `applies` narrows a rule to the calls that fit it (a pad is a pass-through when its padding value is one the
    codes hold); for the other calls the op has no rule."""
    role: str
    weight_axis: Optional[int] = None
    upper_bound: Optional[Callable] = None        # activation: f(module or node) -> bound, None, or False (not ReLU-like)
    float_output_ok: Optional[Callable] = None    # weighted: f(node) -> True if the output may stay float
    min_tensor_inputs: int = 1                    # requantize: fewer float tensor operands -> left in float
    shared_scale: bool = False                    # requantize: inputs may reuse the output's quantizer
    decompose: Optional[Callable] = None          # decompose: f(module, node) -> (nn.Module, inputs) or a reason
    applies: Optional[Callable] = None            # f(node, modules) -> False where this call does not fit the role
    own_quantizer: Optional[Callable] = None      # passthrough: f(node, modules) -> False where the output may only
                                                  # share its input's quantizer (a -inf pad), never have its own


@dataclass(frozen=True)
class ExportRule:
    """How an op reaches torch's TorchScript ONNX exporter (fxcompress/onnx/exportable.py), which reads sizes
    from its own shape inference and loses them behind a Pad or a reshape with computed sizes ("input size
    not accessible"). On a copy of the graph only (the model is never changed), with every node's shape
    recorded (`node.meta["tensor_meta"]`; only the batch dim stays dynamic in the file):
    - rewrite(gm, node, module) -> a node computing the same values from ops the exporter handles whatever
      it knows of their sizes (the sizes read from the recorded shapes), or None to leave the node as it is;
    - min_opset: the first opset with the op (Col2Im: 18), used when the caller named no opset."""
    rewrite: Optional[Callable] = None
    min_opset: Optional[int] = None


# MACs: rule(view) -> int, view a fxcompress.graph.macs.MacView (shapes of the node, its inputs and params)
MACS = OpRegistry("MACs")
# channel coupling: rule(r) declares couplings through r, a fxcompress.prune.coupling.RuleCtx;
# PASSIVE marks ops that read only metadata (sizes, rank) and constrain no channel
COUPLING = OpRegistry("channel coupling")
# resizing under pruning: rule(state, node, module) -> replacement module or None; module attributes
# (in/out channels, groups...) follow the sliced parameters, graph constants (view sizes...) the masks
RESIZE = OpRegistry("resizing")
# quantization: a QuantRule value per op
QUANT = OpRegistry("quantization")
# canonical forms: rule(module, input_shape) -> [(suffix, standard module), ...] replacing a composite layer
# right after tracing (timm's norm+activation layers, same-padding convs; fxcompress/graph/canonical.py), or
# a string saying why it cannot; a layer type with a rule stays one call_module node when traced
CANONICAL = OpRegistry("canonical form")
# ONNX export: an ExportRule per op that torch's exporter needs rewritten (or a newer opset) to handle
EXPORT = OpRegistry("ONNX export")
# BatchNorm folding: rule(module) -> the weight axis holding output channels, or None (cannot absorb BN)
BN_FOLD = OpRegistry("BatchNorm folding")


def numel(shape) -> int:
    """Elements of a tensor of this shape; 0 when the shape is unknown (MACs rules count nothing then)."""
    return int(math.prod(shape)) if shape is not None else 0


def static_shape(node) -> Optional[tuple]:
    """The recorded shape of a node's tensor output (export rules' sizes), None where unknown."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(int(v) for v in shape) if shape is not None else None


def graph_constant(gm: fx.GraphModule, tensor, hint: str) -> fx.Node:
    """A get_attr node reading `tensor`, registered as a buffer of gm under a fresh name (the index and
    averaging tables an export rule builds); inserted where the graph's insertion point is."""
    i = 0
    while hasattr(gm, f"_export_{hint}_{i}"):
        i += 1
    name = f"_export_{hint}_{i}"
    gm.register_buffer(name, tensor)
    return gm.graph.get_attr(name)


def PASSIVE(r) -> None:
    """Coupling rule of ops that read only a tensor's metadata: they constrain no channel."""

"""OpRegistry: op knowledge as one small rule per module type, function or method, looked up by what an
fx node calls (instead of if-chains). MACs counting, channel coupling and channel removal each keep one."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch.fx as fx


class OpRegistry:
    def __init__(self, name: str):
        self.name = name
        self.modules: Dict[type, Callable] = {}
        self.functions: Dict[Any, Callable] = {}
        self.methods: Dict[str, Callable] = {}

    @staticmethod
    def _register(table: dict, keys):
        def deco(fn):
            for k in keys:
                table[k] = fn
            return fn
        return deco

    def module(self, *types):
        """Decorator: the rule for these module types (and their subclasses)."""
        return self._register(self.modules, types)

    def function(self, *targets):
        """Decorator: the rule for call_function nodes with these targets."""
        return self._register(self.functions, targets)

    def method(self, *names):
        """Decorator: the rule for call_method nodes with these method names."""
        return self._register(self.methods, names)

    def lookup(self, node: fx.Node, module=None) -> Optional[Callable]:
        if node.op == "call_module":
            return next((self.modules[t] for t in type(module).__mro__ if t in self.modules), None)
        if node.op == "call_function":
            return self.functions.get(node.target)
        if node.op == "call_method":
            return self.methods.get(node.target)
        return None

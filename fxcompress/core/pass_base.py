"""The three kinds of pass. A pass declares what it needs; the pass manager enforces it.

`requires` lists analysis pass classes (run on demand through the context's cache) and context
resources by name ("train_loader", "val_loader", "calib_loader"). A transform lists in `preserves`
the analyses it leaves valid; every other cached analysis is dropped after it runs.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Tuple

RESOURCES = ("train_loader", "val_loader", "calib_loader")


class Pass:
    kind: ClassVar[str] = "pass"
    requires: ClassVar[Tuple[Any, ...]] = ()

    @property
    def name(self) -> str:
        return type(self).__name__

    def run(self, ctx) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.name}()"


class AnalysisPass(Pass):
    """Reads the graph; its result is cached in the context until a transform invalidates it."""
    kind = "analysis"

    def cache_key(self):
        return type(self)

    def summarize(self, result: Any) -> Dict[str, Any]:
        """What of the result goes into the report row."""
        return {}


class TransformPass(Pass):
    """Rewrites ctx.gm (graph or weights). Returns a dict of metrics for the report (or None)."""
    kind = "transform"
    preserves: ClassVar[Tuple[type, ...]] = ()
    # Whether the manager must see the same outputs after the pass (True for exact rewrites).
    # Shapes and structure are always checked.
    verify_exact: ClassVar[bool] = False
    # Whether the pass may write ctx.gm's tensors in place (train them, fold into them...): then the
    # manager gives it a graph of its own first, a copy while ctx.gm shares the user's model. False for
    # a pass that builds its result beside ctx.gm and only reads ctx.gm's tensors (the pruning passes:
    # new tensors for what they cut, the rest shared): it needs no copy, and a result that still shares
    # the user's tensors when compile ends gets its own copy of those, the cut ones never duplicated.
    writes_in_place: ClassVar[bool] = True

    def exact_values(self, before, after):
        """For the exactness check's float64 re-check (core.verify.compare_exact's `exact64`): None, or a
        function giving, for a tensor of `after` that this pass stored rounded from a float64 value, that
        value (None for any other tensor). `before` is the model the pass started from."""
        return None


class LoweringPass(Pass):
    """Writes an artefact from ctx.gm. Returns metrics; registers paths with ctx.add_artifact."""
    kind = "lowering"

    def output_path(self) -> Optional[str]:
        return None

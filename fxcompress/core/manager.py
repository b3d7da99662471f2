"""The pass manager: runs passes in order, enforces requirements, invalidates analyses, checks transforms."""
from __future__ import annotations

import copy
import os
import time
from typing import Sequence

from tqdm.auto import tqdm

from .context import PassContext
from .errors import PassError, VerificationError
from .pass_base import RESOURCES, AnalysisPass, LoweringPass, Pass, TransformPass
from .report import PassRecord, Report
from ..graph.shapes import ensure_shapes
from .verify import OutputSpec, check_finite, compare_exact, run_eval


class PassManager:
    def __init__(self, passes: Sequence[Pass], progress: bool = True):
        for i, p in enumerate(passes):
            if not isinstance(p, Pass):
                hint = " (a class: instantiate it, e.g. ExportONNX('model.onnx'))" if isinstance(p, type) else ""
                raise PassError(f"passes[{i}] is {p!r}, not a pass instance{hint}")
        self.passes = list(passes)
        self.progress = progress

    def _check_requirements(self, p: Pass, ctx: PassContext) -> None:
        for req in p.requires:
            if isinstance(req, str):
                if req not in RESOURCES:
                    raise PassError(f"{p.name} declares unknown requirement {req!r}")
                if getattr(ctx, req) is None:
                    raise PassError(f"{p.name} needs {req}: pass {req}=... to fxcompress.compile()")
            elif isinstance(req, type) and issubclass(req, AnalysisPass):
                ctx.get(req)
            else:
                raise PassError(f"{p.name} declares requirement {req!r}, neither a resource name nor an analysis")

    def run(self, ctx: PassContext, report: Report) -> None:
        spec = self._output_spec(ctx)
        user = None   # ids of the user's tensors, while ctx.gm shares them (found at the first transform)
        transformed = False
        bar = tqdm(self.passes, desc="fxcompress", unit="pass", disable=not self.progress or len(self.passes) < 2,
                   leave=False)
        for p in bar:
            bar.set_postfix_str(p.name)
            self._check_requirements(p, ctx)
            before = ctx.flops()
            start = time.perf_counter()
            metrics = {}
            if isinstance(p, AnalysisPass):
                result = ctx.get(p)
                metrics = p.summarize(result) or {}
            elif isinstance(p, TransformPass):
                if user is None:   # never written, and not left in a transformed result
                    user = set() if ctx.owns_gm else {id(t) for t in _tensors(ctx.gm)}
                snapshot = self._own_graph(ctx, p, user)
                metrics = p.run(ctx) or {}
                transformed = True
                metrics.update(self._check_transform(p, ctx, spec, snapshot))
            elif isinstance(p, LoweringPass):
                metrics = p.run(ctx) or {}
            else:
                raise PassError(f"{p.name} is neither an analysis, a transform nor a lowering pass")
            seconds = time.perf_counter() - start
            after = ctx.flops()
            path = p.output_path() if isinstance(p, LoweringPass) else None
            report.add(PassRecord(p.name, p.kind, seconds, before.params, after.params, before.macs, after.macs,
                                  os.path.getsize(path) if path and os.path.exists(path) else None, metrics))
        if transformed and not ctx.owns_gm:   # a result built beside the user's model: its own tensors now
            ctx.gm, ctx.owns_gm = _copy_tensors(ctx.gm, user), True

    @staticmethod
    def _output_spec(ctx: PassContext) -> OutputSpec:
        """The outputs' structure from shapes recorded without computing (meta tensors where the model
        allows; a model that fails on the example inputs raises ShapeError naming the node)."""
        ensure_shapes(ctx.gm, ctx.example_inputs)
        spec = OutputSpec.from_graph(ctx.gm)
        return spec if spec is not None else OutputSpec.of(ctx.refresh_shapes())

    @staticmethod
    def _own_graph(ctx: PassContext, p: TransformPass, user: set):
        """Before a transform; returns the exactness reference if the pass asks for one. A pass that builds
        its result beside ctx.gm needs no copy, and ctx.gm stays as it is: the reference. One that writes
        in place gets ctx.gm to itself: while ctx.gm shares the user's model, a copy of it (the shared
        graph is then the reference, for free), else, if a reference is asked for, a copy of that."""
        if not p.writes_in_place:
            return ctx.gm if p.verify_exact else None
        if not ctx.owns_gm:
            shared = ctx.gm
            # without a reference to keep, only the user's tensors need copying (ctx.gm may hold new ones
            # from a pass that built beside it: the old graph is dropped, they move to the new one)
            ctx.gm = copy.deepcopy(shared) if p.verify_exact else _copy_tensors(shared, user)
            ctx.owns_gm = True
            return shared if p.verify_exact else None
        return copy.deepcopy(ctx.gm) if p.verify_exact else None

    def _check_transform(self, p: TransformPass, ctx: PassContext, spec: OutputSpec, before) -> dict:
        ctx.gm.graph.lint()
        ctx.gm.recompile()
        ctx.invalidate(keep=[k for k in ctx.analyses if k in p.preserves])
        try:
            out = ctx.refresh_shapes()
        except Exception as e:
            raise VerificationError(f"after {p.name}, the model no longer runs on the example inputs: {e}") from e
        got = OutputSpec.of(out)
        if got != spec:
            raise VerificationError(f"after {p.name}, outputs changed from [{spec.describe()}] to [{got.describe()}]")
        check_finite(out, f"after {p.name}")
        if before is not None:
            return compare_exact(lambda x: run_eval(before, x), lambda x: run_eval(ctx.gm, x), (before, ctx.gm),
                                 ctx.example_inputs, f"{p.name} exactness", p.exact_values(before, ctx.gm))
        return {}


def _tensors(gm) -> list:
    """Every parameter and buffer of gm, shared ones once per holder (one walk over the modules)."""
    return [t for m in gm.modules() for store in (m._parameters, m._buffers) for t in store.values() if t is not None]


def _copy_tensors(gm, which: set):
    """A copy of gm (graph and modules) in which the tensors whose ids are in `which` are copied and every
    other tensor is shared with gm."""
    return copy.deepcopy(gm, {id(t): t for t in _tensors(gm) if id(t) not in which})

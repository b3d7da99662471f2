"""ShapeAnalysis: the output shape and dtype of every node of the current graph."""
from __future__ import annotations

from fxcompress.core.pass_base import AnalysisPass
from fxcompress.graph.tracing import node_shape


class ShapeAnalysis(AnalysisPass):
    def run(self, ctx) -> dict:
        ctx.refresh_shapes()
        return {n.name: node_shape(n) for n in ctx.gm.graph.nodes}

    def summarize(self, result: dict) -> dict:
        return {"nodes": len(result)}

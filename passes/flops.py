"""CountFlops: MACs and parameters of the current graph, with the heaviest nodes, for the report."""
from __future__ import annotations

from fxcompress.graph.macs import FlopsResult
from fxcompress.core.pass_base import AnalysisPass


class CountFlops(AnalysisPass):
    def __init__(self, top: int = 5):
        self.top = top

    def run(self, ctx) -> FlopsResult:
        return ctx.flops()

    def summarize(self, result: FlopsResult) -> dict:
        heaviest = sorted(result.per_node.items(), key=lambda kv: -kv[1])[: self.top]
        return {"macs": result.macs, "params": result.params, "heaviest": dict(heaviest)}

"""The pass context: what every pass sees. Analyses are cached here and invalidated by transforms."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.fx as fx

from ..graph.macs import FlopsResult, count_macs
from ..graph.tracing import propagate_shapes


@dataclass
class PassContext:
    gm: fx.GraphModule
    example_inputs: Tuple[torch.Tensor, ...]
    train_loader: Optional[Iterable] = None
    val_loader: Optional[Iterable] = None
    calib_loader: Optional[Iterable] = None
    device: torch.device = torch.device("cpu")
    progress: bool = True   # compile(progress=False) silences every pass's progress bars
    # False while gm shares its modules with the user's model: the manager copies it before a transform
    owns_gm: bool = True
    # the model as the user passed it to compile (never modified; the default distillation teacher)
    input_model: Optional[torch.nn.Module] = None
    analyses: Dict[Any, Any] = field(default_factory=dict)
    artifacts: List[str] = field(default_factory=list)

    def get(self, analysis) -> Any:
        """The cached result of an analysis pass (instance or class), running it if needed."""
        if isinstance(analysis, type):
            analysis = analysis()
        key = analysis.cache_key()
        if key not in self.analyses:
            self.analyses[key] = analysis.run(self)
        return self.analyses[key]

    def invalidate(self, keep: Iterable[Any] = ()) -> None:
        keep = set(keep)
        self.analyses = {k: v for k, v in self.analyses.items() if k in keep}

    def flops(self) -> FlopsResult:
        """MACs and params of the current graph (cached like an analysis)."""
        if "flops" not in self.analyses:
            self.analyses["flops"] = count_macs(self.gm)
        return self.analyses["flops"]

    def refresh_shapes(self):
        """Re-run the graph on the example inputs, record node shapes, return the outputs."""
        was_training = self.gm.training
        self.gm.eval()
        try:
            return propagate_shapes(self.gm, self.example_inputs)
        finally:
            self.gm.train(was_training)

    def add_artifact(self, path: str) -> None:
        self.artifacts.append(path)

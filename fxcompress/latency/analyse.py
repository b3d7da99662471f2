"""A model's traced graph and channel groups as the pruning passes see them, for building a LatencyModel
outside a pass (benchmarks, notebooks).

    gm, groups = traced_groups(torchvision.models.resnet18(), (torch.randn(1, 3, 224, 224),))
    lm = LatencyModel.build(gm, groups, example_inputs, Runtime("onnxruntime-fp32"))
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.fx as fx

from ..prune.groups import ChannelGroupsResult


def traced_groups(model: torch.nn.Module,
                  example_inputs: Sequence[torch.Tensor]) -> Tuple[fx.GraphModule, ChannelGroupsResult]:
    """(the GraphModule compile traces, with shapes recorded; its ChannelGroups result). The graph shares
    the model's modules, as an analysis-only compile leaves it."""
    # the compiler and passes sit above this module; imported here, where a whole model is analysed
    from ..core.compiler import compile as compile_model
    from ..core.pass_base import AnalysisPass
    from fxcompress.passes.channel_groups import ChannelGroups   # the module, not the package: no cycle

    class _Capture(AnalysisPass):
        def run(self, ctx):
            self.gm, self.result = ctx.gm, ctx.get(ChannelGroups)
            return self.result

    capture = _Capture()
    compile_model(model, [capture], tuple(example_inputs), progress=False)
    return capture.gm, capture.result

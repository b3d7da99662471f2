"""ChannelScale: its channel coupling makes its weight a producer of the scaled channels, so pruning through
it is exact, and it exports to ONNX."""
import torch
import torch.nn as nn

import fxcompress
from fxcompress.core.context import PassContext
from fxcompress.graph.tracing import trace
from fxcompress.ops.scale import ChannelScale
from fxcompress.passes import ChannelGroups, ExportONNX, PruneChannels


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.s, self.b = nn.Conv2d(3, 6, 3, padding=1), ChannelScale(6, 1, 4), nn.Conv2d(6, 4, 1)
        self.fc, self.t = nn.Linear(4, 5), ChannelScale(5, dim=-1, rank=2)

    def forward(self, x):
        y = self.b(torch.relu(self.s(self.a(x)))).mean((2, 3))
        return self.t(self.fc(y))


def test_channel_scale_couples_its_weight_and_prunes_exactly(tmp_path):
    model = Scaled().eval()
    with torch.no_grad():
        model.s.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 8, 8)
    result = PassContext(trace(model), (x,), progress=False).get(ChannelGroups)
    group = next(g for g in result.groups if any(m.name == "s.weight" for m in g.param_members()))
    roles = {m.name: m.role for m in group.param_members()}
    assert group.prunable and roles["s.weight"] == "producer" and roles["a.weight"] == "producer"
    out = fxcompress.compile(model, [PruneChannels({group.id: [0, 2, 5]}), ExportONNX(str(tmp_path / "s.onnx"))],
                             x, progress=False)
    prune, export = out.report.records
    assert prune.metrics["max_rel_error"] < 1e-5 and export.metrics["max_rel_error"] < 1e-4
    assert out.model.get_submodule("s").weight.shape == (3,)

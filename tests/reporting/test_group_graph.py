"""The group-graph figure: layers as edges between the groups of their input and output channels."""
import os

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from fxcompress.reporting.channel_groups import explain_model
from fxcompress.reporting.group_graph import group_graph_figure, layer_edges, save_figure


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1), nn.Conv2d(12, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.b(torch.relu(self.a(x)))
        return self.fc(x.mean((2, 3)))


def test_edges_follow_the_layers_and_the_figure_is_drawn(tmp_path):
    explained = explain_model(Residual().eval(), (torch.randn(1, 3, 8, 8),))
    group = {p: r.id for r in explained.channel_rows() for p in r.producers}
    stream, inner = group["stem"], group["a"]
    assert group["b"] == stream                       # the add: b writes the stem's channels
    edges = {(a, b): layer for a, b, layer in layer_edges(explained)}
    entry = next(r.id for r in explained.rows if r.reason.startswith("model input"))
    assert edges == {(entry, stream): "stem", (stream, inner): "a", (inner, stream): "b", (stream, group["fc"]): "fc"}
    path = save_figure(group_graph_figure(explained, title="residual"), str(tmp_path / "g.png"))
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.std() > 10 and os.listdir(tmp_path) == ["g.png"]   # no temporary file left beside it

"""python -m fxcompress explain: the channel-groups table and the group graph, on torchvision models (random
weights) and on a model whose groups are fixed by ops the reasons must name."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torchvision
from PIL import Image

from fxcompress.cli.explain import default_figure_path, main
from fxcompress.core.errors import ExportError, ModelNotFoundError, PassError

UNPRUNABLE = textwrap.dedent('''
    import torch, torch.nn as nn, torch.nn.functional as F

    class Blocked(nn.Module):
        """Each stage's channels are fixed by a different op: roll, channel padding, LayerNorm over channels."""
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.c, self.d = nn.Conv2d(8, 6, 1), nn.Conv2d(8, 4, 1)
            self.e = nn.Conv2d(4, 5, 1)
            self.norm = nn.LayerNorm(5)
            self.f, self.fc = nn.Conv2d(5, 7, 1), nn.Linear(7, 10)

        def forward(self, x):
            x = torch.roll(self.b(torch.relu(self.a(x))), 1, dims=1)
            x = self.d(F.pad(self.c(x), (0, 0, 0, 0, 1, 1)))
            x = self.norm(self.e(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return self.fc(torch.relu(self.f(x)).mean((2, 3)))

    def blocked():
        return Blocked()
''')


def explain(tmp_path, capsys, *args):
    """Run the CLI in process; returns (stdout, rows from --json, figure path)."""
    fig, rows = tmp_path / "groups.png", tmp_path / "groups.json"
    assert main([*args, "--figure", str(fig), "--json", str(rows)]) == 0
    return capsys.readouterr().out, json.loads(rows.read_text())["groups"], fig


def assert_real_figure(path):
    """A PNG someone can look at: not blank, both colours of node drawn."""
    img = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert img.shape[0] > 200 and img.shape[1] > 400 and img.std() > 10
    green = ((img[..., 1] > 150) & (img[..., 0] < 120)).sum()
    assert green > 50   # prunable nodes


def row_of(rows, module):
    """The group holding `module`'s output channels."""
    return next(r for r in rows if module in r["producers"])


def test_resnet50_every_group_but_the_input_and_output_is_prunable(tmp_path, capsys):
    out, rows, fig = explain(tmp_path, capsys, "--model", "resnet50")
    model = torchvision.models.resnet50()
    fixed = [r for r in rows if not r["prunable"]]
    assert [(r["modules"], r["width"], r["reason"]) for r in fixed] == [
        (["conv1"], 3, "model input (x)"), (["fc"], model.fc.out_features, "model output (from fc)")]
    inner = row_of(rows, "layer2.1.conv1")
    assert inner["prunable"] and inner["width"] == model.layer2[1].conv1.out_channels
    assert inner["modules"] == ["layer2.1.conv1", "layer2.1.bn1", "layer2.1.conv2"]   # producer, norm, reader
    # every conv and linear layer counts once for its input and once for its output channels
    assert sum(r["macs_share"] for r in rows) == pytest.approx(2.0, abs=1e-6)
    assert "| group | members | width | MACs share | prunable | why not |" in out
    assert "model input (x)" in out and f"wrote {fig}" in out
    assert_real_figure(fig)


def test_densenet121_concatenated_channels_group_with_their_readers(tmp_path, capsys):
    _, rows, fig = explain(tmp_path, capsys, "--model", "densenet121")
    growth = row_of(rows, "features.denseblock1.denselayer1.conv2")
    assert growth["prunable"] and growth["width"] == 32
    # the layer's 32 new channels are read, through every later concatenation, by each later layer's norm1/conv1
    for later in range(2, 7):
        assert f"features.denseblock1.denselayer{later}.conv1" in growth["modules"]
    assert {r["reason"] for r in rows if not r["prunable"]} == {"model input (x)", "model output (from classifier)"}
    assert sum(r["macs_share"] for r in rows) == pytest.approx(2.0, abs=1e-6)
    assert_real_figure(fig)


def test_vit_b_16_residual_stream_is_fixed_by_layernorm(tmp_path, capsys):
    out, rows, fig = explain(tmp_path, capsys, "--model", "vit_b_16")
    stream = row_of(rows, "conv_proj")
    assert not stream["prunable"] and stream["width"] == 768
    assert stream["reason"].startswith("normalised by LayerNorm (encoder.layers.encoder_layer_0.ln_1)")
    mlp = [r for r in rows if any(m.endswith("mlp.0") for m in r["producers"])]
    assert len(mlp) == 12 and all(r["prunable"] and r["width"] == 3072 for r in mlp)
    assert "fixed groups with the largest MACs share" in out
    assert_real_figure(fig)


def test_each_fixed_group_names_the_op_that_blocks_it(tmp_path, capsys):
    path = tmp_path / "blocked.py"
    path.write_text(UNPRUNABLE)
    out, rows, fig = explain(tmp_path, capsys, "--model", f"{path}:blocked", "--input-shape", "1,3,16,16")
    assert "torch.roll" in row_of(rows, "b")["reason"]     # b's output channels go through roll
    assert "pad" in row_of(rows, "c")["reason"]            # c's are padded along the channel dim
    assert "LayerNorm (norm)" in row_of(rows, "e")["reason"]
    assert row_of(rows, "fc")["reason"] == "model output (from fc)"
    assert row_of(rows, "a")["prunable"] and row_of(rows, "f")["prunable"]   # a->b and f->fc are free
    assert all(r["reason"] for r in rows if not r["prunable"]) and "torch.roll" in out
    assert_real_figure(fig)


def test_layer_filter_and_svg_figure(tmp_path, capsys):
    svg = tmp_path / "g.svg"
    assert main(["--model", "resnet20", "--layer", "layers.4.conv1", "--members", "9", "--figure", str(svg)]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ") and "group" not in line]
    assert len(table) == 2 and all("layers.4.conv1" in line for line in table)   # its input and output groups
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    with pytest.raises(PassError, match="no_such_layer"):
        main(["--model", "resnet20", "--layer", "no_such_layer", "--figure", "none"])


def test_bad_input_fails_before_writing_anything(tmp_path):
    fig = tmp_path / "missing_dir" / "g.png"
    with pytest.raises(ExportError, match="missing_dir"):
        main(["--model", "resnet20", "--figure", str(fig)])
    with pytest.raises(ModelNotFoundError, match="no_such_model"):
        main(["--model", "no_such_model", "--figure", str(tmp_path / "g.png")])
    assert list(tmp_path.iterdir()) == []
    assert default_figure_path("path/to/net.py:factory") == "factory_groups.png"


def test_command_line_error_is_one_line_and_exit_code_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fxcompress.cli.explain", "--model", "no_such_model"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no_such_model" in done.stderr
    assert list(tmp_path.iterdir()) == []

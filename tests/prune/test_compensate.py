"""A removed channel that a constant reaches (StarReLU's `+ b`) is compensated in the consumer's bias: pruning
stays exact; a padded convolution, which sees zeros at the border instead, is not compensated: its group stays
whole, reported, and the rest is pruned."""
import pytest
import torch
import torch.nn as nn

import fxcompress
from fxcompress.core.errors import VerificationError
from fxcompress.passes import MagnitudePrune


class StarMlp(nn.Module):
    """timm's MetaFormer MLP: fc1 -> StarReLU (s * relu(x) ** 2 + b) -> fc2 (here as `kind` consumers)."""

    def __init__(self, kind="linear"):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 8, bias=False)
        else:
            self.fc1, self.fc2 = nn.Conv2d(8, 32, 1), nn.Conv2d(32, 8, 3, padding=1 if kind == "padded" else 0)
        self.scale, self.bias = nn.Parameter(torch.tensor([0.8])), nn.Parameter(torch.tensor([0.3]))

    def forward(self, x):
        y = self.scale * torch.relu(self.fc1(x)) ** 2 + self.bias
        return self.fc2(y)


@pytest.mark.parametrize("kind,shape", [("linear", (2, 5, 8)), ("conv", (2, 8, 6, 6))])
def test_constant_on_removed_channels_moves_into_the_bias(kind, shape):
    model, x = StarMlp(kind).eval(), torch.randn(*shape)
    result = fxcompress.compile(model, [MagnitudePrune(0.5)], x, progress=False)
    metrics = result.report.records[0].metrics
    assert metrics["biases_compensated"] == 1 and metrics["max_rel_error"] < 1e-5
    assert result.model.fc2.weight.shape[1] == 16 and model.fc2.weight.shape[1] == 32   # the user's model kept


class StemStarConv(nn.Module):
    """A plain conv stem (its channels prune exactly) before StarMlp's padded form (fc1's cannot)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(8, 16, 1)
        self.mlp = StarMlp("padded")
        self.mlp.fc1 = nn.Conv2d(16, 32, 1)

    def forward(self, x):
        return self.mlp(torch.relu(self.stem(x)))


def test_groups_a_constant_reaches_through_a_padded_conv_stay_whole_and_the_rest_is_pruned():
    model, x = StemStarConv().eval(), torch.randn(2, 8, 6, 6)
    result = fxcompress.compile(model, [MagnitudePrune(0.5)], x, progress=False)
    metrics = result.report.records[0].metrics
    (gid, why), = metrics["groups_kept_whole"].items()
    assert f"mlp.fc2 (Conv2d, groups [{gid}]" in why and "values up to 0.3" in why
    out = result.model
    assert out.stem.out_channels == 8 and out.mlp.fc1.out_channels == 32   # stem halved, fc1's group whole
    assert metrics["max_rel_error"] < 1e-5
    assert "biases_compensated" not in metrics


def test_padded_convolution_is_not_compensated_and_the_error_names_it(monkeypatch):
    from fxcompress.prune import apply
    monkeypatch.setattr(apply, "MAX_UNABSORBED_ROUNDS", 0)   # no re-plan: the check fails and says why
    model, x = StarMlp("padded").eval(), torch.randn(2, 8, 6, 6)
    with pytest.raises(VerificationError, match="removed channels zeroed") as info:
        fxcompress.compile(model, [MagnitudePrune(0.5)], x, progress=False)
    # the removed channels reach fc2 as the StarReLU's bias, 0.3: the error says where and what to do
    message = str(info.value)
    assert "fc2 (Conv2d, groups [" in message and "values up to 0.3" in message and "ignore=" in message

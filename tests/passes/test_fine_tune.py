import pytest
import torch

import fxcompress
from fxcompress.data import digits
from fxcompress.models import get_model
from fxcompress.passes import FineTune


def test_fine_tune_trains_the_graph_module():
    model = get_model("small_cnn", width=8)
    result = fxcompress.compile(model, [FineTune(epochs=2, lr=0.05)], torch.randn(1, 1, 8, 8),
                                train_loader=digits("train"), val_loader=digits("test"))
    metrics = result.report.records[0].metrics
    assert metrics["top1_after"] > 0.85 > metrics["top1_before"]
    assert not result.model.training


def test_fine_tune_needs_a_train_loader():
    with pytest.raises(fxcompress.PassError, match="FineTune needs train_loader"):
        fxcompress.compile(get_model("small_cnn"), [FineTune()], torch.randn(1, 1, 8, 8))

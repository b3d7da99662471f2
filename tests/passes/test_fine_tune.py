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


def test_fine_tune_adds_the_losses_of_its_hooks():
    from fxcompress.train.loop import TrainHook

    class CountingPenalty(TrainHook):
        calls = 0

        def extra_loss(self, model, inputs, outputs, targets):
            CountingPenalty.calls += 1
            return 0.0 * outputs.sum() + 1.0   # a constant: visible in the loss, no effect on gradients

    model = get_model("small_cnn", width=8)
    plain = fxcompress.compile(model, [FineTune(epochs=1, lr=0.05, max_steps_per_epoch=3)], torch.randn(1, 1, 8, 8),
                               train_loader=digits("train"))
    hooked = fxcompress.compile(model, [FineTune(epochs=1, lr=0.05, max_steps_per_epoch=3, hooks=[CountingPenalty()])],
                                torch.randn(1, 1, 8, 8), train_loader=digits("train"))
    assert CountingPenalty.calls == 3
    loss_plain = plain.report.records[0].metrics["train_loss"]
    loss_hooked = hooked.report.records[0].metrics["train_loss"]
    assert loss_hooked == pytest.approx(loss_plain + 1.0, abs=1e-4)

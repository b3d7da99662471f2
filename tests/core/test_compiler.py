"""compile(): the user's model is never modified, and it is copied only when a transform needs it."""
import copy

import torch
import torch.nn as nn

import fxcompress
from fxcompress import TransformPass
from fxcompress.core import manager as manager_module
from fxcompress.passes import ChannelGroups, CountFlops, FoldBatchNorm


def net():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).eval()


X = torch.randn(2, 3, 6, 6)


def count_deepcopies(monkeypatch):
    calls = []
    real = copy.deepcopy

    def counting(obj, memo=None):
        if isinstance(obj, nn.Module):
            calls.append(type(obj).__name__)
        return real(obj, memo)
    monkeypatch.setattr(manager_module.copy, "deepcopy", counting)
    monkeypatch.setattr(fxcompress.core.compiler.copy, "deepcopy", counting)
    return calls


def test_analysis_only_compile_copies_nothing(monkeypatch):
    model = net()
    calls = count_deepcopies(monkeypatch)
    result = fxcompress.compile(model, [CountFlops(), ChannelGroups()], X, progress=False)
    assert calls == []
    assert result.model.get_submodule("0").weight is model[0].weight   # a view of the user's model


def test_first_transform_copies_once_and_checks_against_the_untouched_model(monkeypatch):
    model = net()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = count_deepcopies(monkeypatch)
    result = fxcompress.compile(model, [ChannelGroups(), FoldBatchNorm()], X, progress=False)
    assert len(calls) == 1                       # exact transform: the shared graph is the reference
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert result.report.records[1].metrics["max_rel_error"] < 1e-5
    assert "1" not in dict(result.model.named_modules())   # BN folded in the copy only
    assert isinstance(model[1], nn.BatchNorm2d)


def test_a_model_in_training_mode_is_copied_before_tracing(monkeypatch):
    model = net().train()
    result = fxcompress.compile(model, [CountFlops()], X, progress=False)
    assert model.training and all(m.training for m in model.modules())
    assert result.model.get_submodule("0").weight is not model[0].weight


def test_a_transform_that_changes_values_leaves_the_user_model_alone():
    class Scale(TransformPass):
        def run(self, ctx):
            with torch.no_grad():
                ctx.gm.get_submodule("4").weight.mul_(2)
    model = net()
    w = model[4].weight.clone()
    result = fxcompress.compile(model, [Scale()], X, progress=False)
    assert torch.equal(model[4].weight, w)
    assert torch.equal(result.model.get_submodule("4").weight, 2 * w)


def test_tracing_leaves_no_tensor_constants_on_the_user_model():
    class WithConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x) * torch.tensor([2.0])   # fx stores this constant on the traced root
    model = WithConstant().eval()
    names = set(model.__dict__) | set(model._buffers) | set(model._parameters)
    result = fxcompress.compile(model, [CountFlops()], X, progress=False)
    assert set(model.__dict__) | set(model._buffers) | set(model._parameters) == names
    assert torch.allclose(result.model(X), model(X))


def test_progress_false_silences_every_bar(capsys):
    from fxcompress.passes import FineTune, QuantizeINT8
    model = net()
    data = [(torch.randn(4, 3, 6, 6), torch.randint(0, 3, (4,))) for _ in range(2)]
    fxcompress.compile(model, [FineTune(epochs=1), QuantizeINT8()], X, train_loader=data, calib_loader=data,
                       progress=False)
    err = capsys.readouterr().err
    assert "calibrating" not in err and "FineTune" not in err and "it/s" not in err

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


def _storages(module) -> set:
    return {t.untyped_storage().data_ptr() for t in list(module.parameters()) + list(module.buffers())}


def test_pruning_reads_the_user_model_in_place_and_returns_a_model_of_its_own(monkeypatch):
    """The pruning passes build beside ctx.gm: no copy of the model before them, none of the user's tensors
    written (not even for the zeroed reference of the exactness check), and the result holds no tensor of
    the user's model."""
    from fxcompress.passes import MagnitudePrune, PruneChannels
    real = copy.deepcopy
    for passes in ([ChannelGroups(), MagnitudePrune(0.5)], [PruneChannels({1: [0, 2, 5]})]):
        model = net()
        with torch.no_grad():
            model[1].running_var.uniform_(0.5, 2)
        model[1].train()   # a mix of modes (the root in eval mode: the model is shared): the BN is not updated
        modes = [m.training for m in model.modules()]
        tensors = {k: (v, v._version, v.clone()) for k, v in model.state_dict(keep_vars=True).items()}
        copied = []

        def spy(obj, memo=None):   # what a deepcopy of a module copies: the tensors the memo does not hold
            if isinstance(obj, nn.Module):
                copied.append(sum(t.numel() for t in list(obj.parameters()) + list(obj.buffers())
                                  if id(t) not in (memo or {})))
            return real(obj, memo)
        monkeypatch.setattr(manager_module.copy, "deepcopy", spy)
        result = fxcompress.compile(model, passes, X, progress=False)
        # the pruned model, built beside (sharing what it keeps), then a copy of the user's tensors it kept:
        # never a copy of the whole model
        assert len(copied) == 2 and copied[0] == 0
        assert 0 < copied[1] < sum(t.numel() for t in model.state_dict().values())
        for k, v in model.state_dict(keep_vars=True).items():
            t, version, value = tensors[k]
            assert v is t and v._version == version and torch.equal(v, value), k
        assert [m.training for m in model.modules()] == modes
        assert not _storages(result.model) & _storages(model)
        assert result.model.get_submodule("0").weight.shape[0] < 8
        assert result.report.records[-1].metrics["max_rel_error"] < 1e-5


class _NewHead(TransformPass):
    """Builds beside ctx.gm: a new graph whose head has a new weight, every other tensor shared."""
    writes_in_place = False
    seen = {}

    def run(self, ctx):
        _NewHead.seen["user_weight_in_ctx"] = ctx.gm.get_submodule("0").weight
        new = copy.deepcopy(ctx.gm, {id(t): t for t in list(ctx.gm.parameters()) + list(ctx.gm.buffers())})
        head = new.get_submodule("4")
        head.weight = nn.Parameter(head.weight.detach() * 2)
        _NewHead.seen["new_weight"] = head.weight
        ctx.gm = new


def test_a_pass_building_beside_keeps_its_new_tensors_and_the_rest_is_copied_at_the_end():
    model = net()
    result = fxcompress.compile(model, [_NewHead()], X, progress=False)
    assert _NewHead.seen["user_weight_in_ctx"] is model[0].weight        # not copied before the pass
    assert result.model.get_submodule("4").weight is _NewHead.seen["new_weight"]   # not copied again
    assert not _storages(result.model) & _storages(model)                 # the rest copied at the end
    assert torch.equal(result.model.get_submodule("0").weight, model[0].weight)

    # a later pass that writes in place gets a graph of its own without copying the new weight once more
    class Scale(TransformPass):
        def run(self, ctx):
            with torch.no_grad():
                ctx.gm.get_submodule("0").weight.mul_(3)
    w = model[0].weight.clone()
    result = fxcompress.compile(model, [_NewHead(), Scale()], X, progress=False)
    assert torch.equal(model[0].weight, w) and torch.equal(result.model.get_submodule("0").weight, 3 * w)
    assert result.model.get_submodule("4").weight is _NewHead.seen["new_weight"]


def test_an_analysis_only_compile_leaves_the_modes_of_the_user_modules():
    model = net()
    model[1].train()   # the user's own mix: the root in eval mode, one BatchNorm training
    result = fxcompress.compile(model, [ChannelGroups()], X, progress=False)
    assert model[1].training and not model.training and not result.model.training

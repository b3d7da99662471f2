"""ResRep end to end on digits: half the MACs without loss, a verified ONNX file; typed errors before any
training; resume after a kill ends where an uninterrupted run ends; two DDP processes end identical."""
import os
import sys

import pytest
import torch
import torch.nn as nn

import fxcompress
from fxcompress.data import digits
from fxcompress.passes import ExportONNX, ResRep
from fxcompress.passes import resrep as resrep_pass
from fxcompress.train.loop import TrainHook

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "prune", "resrep"))
from resrep_models import ResNetDigits  # noqa: E402

X = torch.randn(1, 1, 8, 8)
HERE = os.path.dirname(os.path.abspath(__file__))


def fast_resrep(**kw):
    options = dict(target_macs=0.5, epochs=4, lr=0.03, lasso_strength=1e-2, warmup_epochs=0.5, mask_interval=1,
                   step_channels=8)
    options.update(kw)
    return ResRep(**options)


def test_resrep_halves_the_macs_without_loss_and_exports(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "r.onnx")
    result = fxcompress.compile(ResNetDigits(), [fast_resrep(), ExportONNX(path)], X, progress=False,
                                train_loader=digits("train", batch_size=16), val_loader=digits("test"))
    rec, export = result.report.records
    m = rec.metrics
    assert rec.macs_after <= 0.5 * rec.macs_before and m["macs"] == rec.macs_after
    assert m["final_step_channels"] == 0 and "warning" not in m
    assert m["top1_trained"] > 0.9
    # masked rows decayed during training: zeroing them and removing the channels loses (almost) nothing
    assert m["top1_after"] >= m["top1_trained"] - 0.01 and m["zeroing_max_rel_change"] < 0.3   # (0.7-1.0 undecayed)
    assert m["insertion_max_rel_error"] == 0 and m["merge_max_rel_error"] < 1e-5 and m["removal_max_rel_error"] < 1e-5
    assert [h["masked_channels"] for h in m["history"]][-1] == m["masked_channels"] > 0
    assert all(h["macs"] <= m["target_macs"] for h in m["history"])
    assert export.metrics["max_rel_error"] < 1e-4 and os.path.isfile(path)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in result.model.modules())


def test_training_too_short_for_the_target_masks_the_rest_and_says_so(monkeypatch):
    # 3 steps: the rows masked at once change the output by ~0.1 here; the warning's bar lowered to see it fire
    monkeypatch.setattr(resrep_pass, "ZEROING_WARNING", 0.05)
    torch.manual_seed(0)
    rr = fast_resrep(epochs=1, warmup_epochs=1, max_steps_per_epoch=3)
    result = fxcompress.compile(ResNetDigits(), [rr], X, progress=False, train_loader=digits("train"))
    m = result.report.records[0].metrics
    assert m["final_step_channels"] > 0 and "train longer" in m["warning"]
    assert m["zeroing_max_rel_change"] > 0.05 and "had not decayed" in m["warning"]
    assert result.report.records[0].macs_after <= 0.5 * result.report.records[0].macs_before


@pytest.mark.parametrize("option,value", [("target_macs", 0), ("target_macs", 1), ("target_macs", 1.5),
                                          ("target_macs", "half"), ("lasso_strength", -1e-4), ("epochs", 0),
                                          ("mask_interval", 0), ("round_to", 0), ("compactor_momentum", 1.0),
                                          ("group_score", "max"), ("warmup_epochs", 20), ("loss_fn", "mse")])
def test_bad_options_name_the_option(option, value):
    with pytest.raises(fxcompress.PassError, match=f"ResRep option {option}="):
        ResRep(**{option: value})


def test_missing_train_loader_and_unprunable_models_fail_before_training():
    with pytest.raises(fxcompress.PassError, match="ResRep needs train_loader"):
        fxcompress.compile(ResNetDigits(), [ResRep()], X, progress=False)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))   # its only channels are input and output
    with pytest.raises(fxcompress.PassError, match="no channel group it can prune"):
        fxcompress.compile(linear, [ResRep()], X, progress=False, train_loader=digits("train"))
    with pytest.raises(fxcompress.PassError, match="cannot be reached"):
        fxcompress.compile(ResNetDigits(), [ResRep(target_macs=0.3, min_channels=16)], X, progress=False,
                           train_loader=digits("train"))


def test_loss_fn_replaces_cross_entropy():
    calls = []

    def loss_fn(outputs, targets):
        calls.append(1)
        return nn.functional.cross_entropy(outputs, targets)
    fxcompress.compile(ResNetDigits(), [fast_resrep(epochs=1, max_steps_per_epoch=2, loss_fn=loss_fn)], X,
                       progress=False, train_loader=digits("train"))
    assert len(calls) == 2


class Kill(TrainHook):
    """Stands in for a killed process: raises at a given global step."""

    def __init__(self, at_step):
        self.at, self.step = at_step, 0

    def after_backward(self, model):
        self.step += 1
        if self.step == self.at:
            raise KeyboardInterrupt("killed")


def test_a_killed_run_resumes_to_the_same_model(tmp_path):
    def run(ckpt, hooks=(), resume=False):
        torch.manual_seed(0)
        rr = fast_resrep(epochs=2, mask_interval=2, step_channels=2, checkpoint_dir=str(ckpt), resume=resume,
                         hooks=hooks, max_steps_per_epoch=12)
        return fxcompress.compile(ResNetDigits(), [rr], X, progress=False, train_loader=digits("train"))

    whole = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", hooks=[Kill(at_step=12 + 5)])   # in the second epoch, after epoch 1's checkpoint
    assert os.path.isfile(tmp_path / "b" / "last.pt")
    resumed = run(tmp_path / "b", resume=True)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = whole.report.records[0].metrics, resumed.report.records[0].metrics
    assert ma["widths"] == mb["widths"] and ma["history"] == mb["history"]


def test_two_ddp_processes_end_with_the_same_masks_and_weights(tmp_path, torchrun):
    torchrun(os.path.join(HERE, "resrep_worker.py"), tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["widths"] == r1["widths"] and r0["history"] == r1["history"] and r0["history"][-1] > 0
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert os.path.isfile(tmp_path / "ckpt" / "last.pt")   # rank 0 checkpoints

import pytest
import torch

from fxcompress import DataError, PassError
from fxcompress.data import digits
from fxcompress.models import get_model
from fxcompress.train.loop import TrainConfig, TrainHook, evaluate, fit, lr_at


def train(epochs=3, **kw):
    torch.manual_seed(0)
    model = get_model("small_cnn", width=8)
    fit(model, digits("train"), TrainConfig(epochs=epochs, lr=0.05, progress=False, **kw))
    return model


def test_learns_digits():
    model = train(epochs=4)
    assert evaluate(model, digits("test"))["top1"] > 0.9


def test_seeded_runs_are_identical():
    a, b = train(), train()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class StopAfter(TrainHook):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, model):
        if epoch == self.epoch:
            raise KeyboardInterrupt  # simulates a killed job after this epoch's checkpoint... before it


def test_resume_reaches_the_same_weights(tmp_path):
    full = train(checkpoint_dir=str(tmp_path / "full"))
    torch.manual_seed(0)
    model = get_model("small_cnn", width=8)
    config = TrainConfig(epochs=3, lr=0.05, progress=False, checkpoint_dir=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        fit(model, digits("train"), config, hooks=[StopAfter(2)])  # dies in epoch 3: checkpoint of epoch 2
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 2
    torch.manual_seed(123)  # a different process state must not matter
    fresh = get_model("small_cnn", width=8)
    config.resume = True
    history = fit(fresh, digits("train"), config)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(torch.equal(x, y) for x, y in zip(full.state_dict().values(), fresh.state_dict().values()))


def test_schedules():
    cfg = TrainConfig(epochs=10, lr=0.1, warmup_epochs=1)
    assert lr_at(cfg, 0, 100) == pytest.approx(0.01) and lr_at(cfg, 9, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 99, 100) < 1e-3
    assert lr_at(TrainConfig(epochs=1, lr=0.2, schedule="onecycle"), 29, 100) == pytest.approx(0.2)
    with pytest.raises(PassError, match="schedule"):
        TrainConfig(schedule="step")


def test_bad_batches():
    with pytest.raises(DataError, match="targets"):
        fit(get_model("small_cnn"), [torch.randn(4, 1, 8, 8)], TrainConfig(progress=False))


DDP_SCRIPT = """
import sys, torch
from fxcompress.data import digits
from fxcompress.models import get_model
from fxcompress.train.loop import TrainConfig, fit
torch.set_num_threads(1)
torch.manual_seed(0)
model = get_model("small_cnn", width=8)
fit(model, digits("train"), TrainConfig(epochs=1, lr=0.05, progress=False, checkpoint_dir=sys.argv[1] + "/ckpt"))
torch.save(model.state_dict(), f"{sys.argv[1]}/rank{torch.distributed.get_rank()}.pt")
torch.distributed.destroy_process_group()
"""


def test_torchrun_ddp_gloo_two_ranks_stay_in_sync(tmp_path, torchrun):
    script = tmp_path / "train.py"
    script.write_text(DDP_SCRIPT)
    torchrun(script, tmp_path)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # parameters through all-reduced gradients, BatchNorm statistics broadcast from rank 0 at the end
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "ckpt" / "last.pt").exists()   # rank 0 wrote the checkpoint
    untrained = get_model("small_cnn", width=8)
    assert not torch.allclose(a["classifier.3.weight"], untrained.state_dict()["classifier.3.weight"])


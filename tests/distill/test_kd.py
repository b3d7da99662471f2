"""Distillation: the KD loss by hand, and the hook's teacher stays frozen through a training step."""
import copy
import math

import pytest
import torch
import torch.nn as nn

from fxcompress.core.errors import PassError
from fxcompress.data import digits
from fxcompress.distill import DistillHook, KDLoss
from fxcompress.models import get_model
from fxcompress.train.loop import TrainConfig, fit


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(4, 10)
    assert KDLoss()(logits, logits.clone()).item() == pytest.approx(0, abs=1e-6)
    assert KDLoss()(logits + 3.0, logits).item() == pytest.approx(0, abs=1e-5)   # a shift changes no softmax
    assert KDLoss()(torch.randn(4, 10), logits).item() > 0


def test_kd_loss_matches_a_hand_computation():
    student, teacher, t = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]], 2.0

    def softmax(row):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]
    kl = [sum(p * math.log(p / q) for p, q in zip(softmax(tr), softmax(sr))) for sr, tr in zip(student, teacher)]
    expected = t * t * sum(kl) / len(kl)
    got = KDLoss(temperature=t)(torch.tensor(student), torch.tensor(teacher))
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("bad", [0, -1.0, "4", True])
def test_bad_temperature_raises_pass_error(bad):
    with pytest.raises(PassError, match="KDLoss option temperature"):
        KDLoss(temperature=bad)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(PassError, match=r"\(2, 10\) and \(2, 5\)"):
        KDLoss()(torch.randn(2, 10), torch.randn(2, 5))


def _models():
    torch.manual_seed(0)
    teacher = get_model("small_cnn", width=8)
    return teacher, get_model("small_cnn", width=4)


def test_hook_loss_has_gradients_on_the_student_only():
    teacher, student = _models()
    teacher.train()
    hook = DistillHook(teacher, KDLoss(4.0), weight=0.5)
    flags = [p.requires_grad for p in teacher.parameters()]
    assert not teacher.training
    assert [p.requires_grad for p in teacher.parameters()] == flags   # left alone: it may be a user's model
    x = torch.randn(8, 1, 8, 8)
    loss = hook.extra_loss(student, x, student(x), None)
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    with torch.no_grad():
        assert loss.item() == pytest.approx(0.5 * KDLoss(4.0)(student(x), teacher(x)).item(), rel=1e-6)


def test_teacher_is_unchanged_by_a_fit_step():
    teacher, student = _models()
    teacher.train()   # the hook must put it in eval: BN statistics would otherwise follow the batches
    before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    fit(student, digits("train"), TrainConfig(epochs=1, lr=0.05, progress=False, max_steps_per_epoch=2),
        hooks=[DistillHook(teacher)])
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())


def test_hook_rejects_a_non_module_teacher_and_a_negative_weight():
    with pytest.raises(PassError, match="teacher must be an nn.Module"):
        DistillHook(lambda x: x)
    with pytest.raises(PassError, match="DistillHook option weight"):
        DistillHook(nn.Linear(2, 2), weight=-1)

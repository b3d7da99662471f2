"""Distill end to end on digits: the student's loss goes down, the teacher is bit-identical and never
trained, each loss gets what it is defined on, taps pair in the order listed, errors name the culprit;
the hook form trains ResRep; two DDP ranks end identical (student and VID parameters)."""
import copy
import os

import pytest
import torch

import fxcompress
from fxcompress.data import digits
from fxcompress.distill import DistillHook, KDLoss
from fxcompress.models import get_model
from fxcompress.passes import Distill, MagnitudePrune, ResRep
from fxcompress.train.loop import TrainConfig, fit

X = torch.randn(1, 1, 8, 8)
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = get_model("small_cnn", width=16)
    fit(model, digits("train"), TrainConfig(epochs=3, lr=0.05, progress=False))
    return model.eval()


@pytest.mark.parametrize("losses,nodes", [(["kd"], []), (["kd", "irg"], ["features_5", "features_9"]),
                                          (["vid"], ["features_5"]), (["kd", "irg", "vid"], ["features_9"])])
def test_distillation_trains_the_student_and_leaves_the_teacher(teacher, losses, nodes):
    before = copy.deepcopy(teacher.state_dict())
    torch.manual_seed(0)
    student = get_model("small_cnn", width=8)
    result = fxcompress.compile(student, [Distill(teacher, losses=losses, student_nodes=nodes, epochs=2, lr=0.05)],
                                X, progress=False, train_loader=digits("train"), val_loader=digits("test"))
    m = result.report.records[0].metrics
    assert m["train_loss"] < m["train_loss_first"] and m["top1_after"] > m["top1_before"]
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert len(m["pairs"]) == len(nodes) and m["losses"].count("VIDLoss") == len(nodes) * losses.count("vid")
    assert not any("tap" in n.name for n in result.model.graph.nodes)   # taps removed after training


def test_pairs_follow_the_listed_order_and_report_bridges(teacher):
    d = Distill(teacher, losses=["irg"], student_nodes=["features_9", "features_5"],
                teacher_nodes=["features_5", "features_9"], epochs=1, max_steps_per_epoch=2)
    m = fxcompress.compile(get_model("small_cnn", width=8), [d], X, progress=False,
                           train_loader=digits("train")).report.records[0].metrics
    assert [(p["student"], p["teacher"]) for p in m["pairs"]] == [("features_9", "features_5"), ("features_5", "features_9")]
    assert m["pairs"][0]["student_shape"][1:] == [16, 4, 4] and m["pairs"][0]["teacher_shape"][1:] == [16, 8, 8]
    assert m["pairs"][0]["bridge"] == "maps (4, 4) vs (8, 8) pooled to the smaller"
    assert "channels 8 -> 32" in m["pairs"][1]["bridge"]


def test_the_default_teacher_is_the_model_compile_was_given_untouched():
    torch.manual_seed(0)
    model = get_model("small_cnn", width=8).eval()
    flags = [p.requires_grad for p in model.parameters()]
    weights = copy.deepcopy(model.state_dict())
    result = fxcompress.compile(model, [MagnitudePrune(ratio=0.5), Distill(epochs=1, max_steps_per_epoch=3)], X,
                                progress=False, train_loader=digits("train"))
    assert result.report.records[1].metrics["losses"] == ["KDLoss"]
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_a_given_teacher_in_training_mode_is_copied_not_changed(teacher):
    # a given teacher gets the default teacher's rule: a copy when its mode (or device, on a GPU) must change;
    # before, it was used as given and moved onto the training device in place
    user_teacher = copy.deepcopy(teacher).train()
    weights = copy.deepcopy(user_teacher.state_dict())
    torch.manual_seed(0)
    result = fxcompress.compile(get_model("small_cnn", width=8),
                                [Distill(user_teacher, losses=["kd", "irg"], student_nodes=["features_9"], epochs=1,
                                         max_steps_per_epoch=3)], X, progress=False, train_loader=digits("train"))
    assert user_teacher.training and result.report.records[0].metrics["pairs"][0]["teacher"] == "features_9"
    assert all(torch.equal(weights[k], v) for k, v in user_teacher.state_dict().items())


def test_bad_input_names_the_culprit(teacher):
    with pytest.raises(fxcompress.PassError, match=r"close matches"):
        fxcompress.compile(get_model("small_cnn", width=8), [Distill(teacher, student_nodes=["feature_5x"])], X,
                           progress=False, train_loader=digits("train"))
    with pytest.raises(fxcompress.PassError, match="1 student nodes vs 2 teacher nodes"):
        Distill(teacher, student_nodes=["features_5"], teacher_nodes=["features_5", "features_9"])
    with pytest.raises(fxcompress.PassError, match="'vid' needs student_nodes"):
        Distill(teacher, losses=["vid"])
    with pytest.raises(fxcompress.PassError, match="losses names 'fitnets'"):
        Distill(teacher, losses=["fitnets"])


def test_the_hook_form_distils_inside_resrep(teacher):
    calls = []

    class Counting(DistillHook):
        def extra_loss(self, *args):
            calls.append(1)
            return super().extra_loss(*args)
    rr = ResRep(target_macs=0.6, epochs=1, max_steps_per_epoch=3, hooks=[Counting(copy.deepcopy(teacher), KDLoss())])
    fxcompress.compile(get_model("small_cnn", width=8), [rr], X, progress=False, train_loader=digits("train"))
    assert len(calls) == 3


def test_two_ddp_processes_end_with_the_same_student_and_loss_parameters(tmp_path, torchrun):
    torchrun(os.path.join(HERE, "distill_worker.py"), tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("student", "vid"):
        assert all(torch.equal(r0[part][k], r1[part][k]) for k in r0[part])

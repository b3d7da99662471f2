"""Pruning to a measured latency target: MagnitudePrune(target_latency=...) options and run, the relative
target, the unreachable target."""
import dataclasses

import pytest
import torch

import fxcompress
from fxcompress.core.errors import FxCompressError, PassError
from fxcompress.latency import LatencyTarget, LatencyUnreachable, Runtime, RuntimeSpecError, prune_to_latency
from fxcompress.passes import ExportONNX, MagnitudePrune
from fxcompress.prune.plan import magnitude_scores
from latency_models import BATCH, X, tiny_model


@pytest.mark.parametrize("kwargs, option", [
    ({"target_latency": 0}, "target_latency"), ({"target_latency": 1}, "target_latency"),
    ({"target_latency": 1.5}, "target_latency"), ({"target_latency": "fast"}, "target_latency"),
    ({"target_latency": 0.5, "target_macs": 0.5}, "target_latency"),
    ({"target_latency": 0.5, "runtime": "tensorrt"}, "runtime"),
    ({"target_latency": 0.5, "relative_to": "onnxruntime-fp16"}, "relative_to"),
    ({"target_latency": 0.5, "threads": 0}, "threads"), ({"target_latency": 0.5, "batch": 2.5}, "batch")])
def test_bad_latency_options_raise_pass_error_naming_the_option(kwargs, option):
    with pytest.raises(PassError, match=rf"MagnitudePrune option {option}=.*is invalid"):
        MagnitudePrune(**kwargs)


def test_runtime_names_the_choices():
    with pytest.raises(RuntimeSpecError, match=r"runtime='tensorrt' is unknown; choose one of \['onnxruntime-fp32', "
                                               r"'onnxruntime-int8'\]") as e:
        Runtime("tensorrt")
    assert isinstance(e.value, FxCompressError)
    with pytest.raises(RuntimeSpecError, match="batch=0 is invalid"):
        Runtime("onnxruntime-int8", 2, 0)


def test_magnitude_prune_to_a_latency_target(tmp_path):
    path = str(tmp_path / "pruned.onnx")
    prune = MagnitudePrune(target_latency=0.6, runtime="onnxruntime-fp32", batch=BATCH, round_to=8)
    assert prune.latency == LatencyTarget(0.6, Runtime("onnxruntime-fp32", 2, BATCH))
    prune.latency = dataclasses.replace(prune.latency, points=3, measure_budget_s=1.0)   # a test-sized measurement
    result = fxcompress.compile(tiny_model(), [prune, ExportONNX(path)], X, progress=False)
    record = result.report.records[0]
    m = record.metrics
    assert record.macs_after < record.macs_before
    assert m["target_latency"] == 0.6 and m["runtime"] == "onnxruntime-fp32" and m["batch"] == BATCH
    assert m["relative_to"] == "onnxruntime-fp32" and m["threads"] == 2
    assert 0 < m["predicted_latency"] < 1 and 0 < m["measured_latency"] < 1
    pruned, unpruned = m["measured_ms"]["pruned"], m["measured_ms"]["unpruned"]
    assert m["measured_latency"] == pytest.approx(pruned["ms"] / unpruned["ms"])
    assert pruned["ms"] == min(pruned["wall_ms"], pruned["quiet_ms"])
    assert m["met_target"] == (m["measured_latency"] <= 0.6 * 1.05)
    assert 1 <= len(m["latency_rounds"]) <= 3 and m["latency_rounds"][0]["aimed"] == 0.6
    assert m["latency_model"]["layers"] == 4 and m["latency_model"]["unmatched_layers"] == []
    assert m["groups_pruned"] >= 1 and m["max_rel_error"] < 1e-5   # removal checked exact
    assert result.model(X).shape == (1, 10)


def test_target_relative_to_another_runtime(tiny):
    """A target of FP32's latency that the unpruned INT8 model already meets prunes nothing."""
    _, gm, groups = tiny
    prunable = groups.prunable()
    target = LatencyTarget(0.95, Runtime("onnxruntime-int8", 2, BATCH), Runtime("onnxruntime-fp32", 2, BATCH),
                           points=3, measure_budget_s=1.0)
    new, m = prune_to_latency(gm, groups, prunable, magnitude_scores(gm, groups, prunable), (X,), target, round_to=8,
                              progress=False)
    rounds = m["latency_rounds"]
    fp32_over_int8 = rounds[0]["measured_ms"]["reference"]["ms"] / rounds[0]["measured_ms"]["unpruned"]["ms"]
    if fp32_over_int8 < 1.1:
        pytest.skip(f"INT8 is not faster than FP32 here ({fp32_over_int8:.2f}x): nothing to test")
    assert rounds[0]["aimed"] > 1 and rounds[0]["groups_pruned"] == 0 and len(rounds) == 1
    assert m["relative_to"] == "onnxruntime-fp32" and m["runtime"] == "onnxruntime-int8"
    assert m["measured_latency"] < 0.95 and m["met_target"]
    assert sum(p.numel() for p in new.parameters()) == sum(p.numel() for p in gm.parameters())


def test_unreachable_target_is_named_in_the_user_s_terms():
    with pytest.raises(LatencyUnreachable, match=r"MagnitudePrune target_latency=0.01 \(of the unpruned model's "
                                                 r"latency on onnxruntime-fp32\) cannot be reached on onnxruntime-fp32, "
                                                 r"2 thread\(s\), batch 32: .* Choose target_latency >= 0\.\d+") as e:
        fxcompress.compile(tiny_model(), [MagnitudePrune(target_latency=0.01, batch=BATCH, round_to=8)], X,
                           progress=False)
    assert 0.01 < e.value.reachable < 1
    assert isinstance(e.value, PassError)


def test_resrep_to_a_latency_target():
    """ResRep plans its masks by latency per importance: the aim is corrected by a measurement before
    training, and the merged, pruned model is timed beside the unpruned one and reported beside the target."""
    from fxcompress.passes import ResRep
    torch.manual_seed(0)
    loader = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(6)]
    rr = ResRep(target_latency=0.6, runtime="onnxruntime-fp32", batch=BATCH, round_to=8, epochs=2, lr=0.01,
                lasso_strength=1e-2, warmup_epochs=0.5, mask_interval=1, step_channels=8)
    assert rr.latency == LatencyTarget(0.6, Runtime("onnxruntime-fp32", 2, BATCH)) and rr.target_macs is None
    rr.latency = dataclasses.replace(rr.latency, points=3, measure_budget_s=1.0)
    result = fxcompress.compile(tiny_model(), [rr], X, progress=False, train_loader=loader)
    record = result.report.records[0]
    m = record.metrics
    assert record.macs_after < record.macs_before and m["masked_channels"] > 0
    assert m["target_latency"] == 0.6 and m["runtime"] == "onnxruntime-fp32" and m["relative_to"] == "onnxruntime-fp32"
    assert 0 < m["latency_calibration"]["aim"] < 1.5 and 0 < m["predicted_latency"] < 1
    assert 0 < m["measured_latency"] < 1 and m["met_target"] == (m["measured_latency"] <= 0.6 * 1.05)
    assert m["measured_latency"] == pytest.approx(m["measured_ms"]["pruned"]["ms"] / m["measured_ms"]["unpruned"]["ms"])
    assert all(w["after"] % 8 == 0 for w in m["widths"])   # round_to holds for the latency plan too
    assert m["merge_max_rel_error"] < 1e-5 and m["removal_max_rel_error"] < 1e-5
    assert result.model(X).shape == (1, 10)


def test_resrep_latency_options_are_checked():
    from fxcompress.passes import ResRep
    with pytest.raises(PassError, match=r"ResRep option target_latency=0.5 is invalid: give either"):
        ResRep(target_latency=0.5, target_macs=0.5)
    with pytest.raises(PassError, match=r"ResRep option runtime='tflite' is invalid"):
        ResRep(target_latency=0.5, runtime="tflite")
    assert ResRep().target_macs == 0.5 and ResRep().latency is None

import copy
import os
import sys

import pytest

# headless.py (the browser driver) is shared by the tests in this folder
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SUMMARY = {
    "title": "ResNet-20 on CIFAR-10: ResRep + KD + INT8",
    "recipe": {"model": "resnet20", "passes": [{"ResRep": {"target_macs": 0.5}}, {"Distill": {"losses": ["kd"]}},
                                               "FoldBatchNorm", {"QuantizeINT8": {"method": "kl"}}]},
    "model": "resnet20", "data": "cifar10",
    "stages": [
        {"name": "baseline", "top1": 0.9167, "params": 272474, "macs": 40553472, "onnx_bytes": 1090361,
         "precision": "fp32", "latency_ms": {"b1": 0.91, "b32": 11.2}},
        {"name": "ResRep", "top1": 0.905, "params": 150112, "macs": 20250112, "onnx_bytes": 601234,
         "precision": "fp32", "latency_ms": {"b1": 0.62, "b32": 6.3}},
        {"name": "Distill", "top1": 0.9121, "params": 150112, "macs": 20250112, "onnx_bytes": 601234,
         "precision": "fp32", "latency_ms": {"b1": 0.61, "b32": 6.2}},
        {"name": "QuantizeINT8", "top1": 0.9102, "params": 150112, "macs": 20250112, "onnx_bytes": 181003,
         "precision": "int8", "latency_ms": {"b1": 0.33, "b32": 2.4}},
    ],
    "widths": {"layers": [f"layers.{i}.conv1" for i in range(9)], "before": [16] * 3 + [32] * 3 + [64] * 3,
               "after": [8, 9, 7, 20, 17, 22, 40, 33, 48]},
    "curves": {
        "ResRep": [{"epoch": e, "loss": 1.6 / (e + 1), "val_top1": 0.6 + 0.03 * e, "masked_channels": 12 * e,
                    "macs": 40553472 - 2000000 * e} for e in range(10)],
        "Distill": [{"epoch": e, "loss": 0.4 / (e + 1), "val_top1": 0.89 + 0.01 * e} for e in range(3)],
    },
    "provenance": {"git_commit": "0123abc", "versions": {"torch": "2.14.1", "onnxruntime": "1.32"}, "threads": 2},
}


@pytest.fixture
def summary():
    return copy.deepcopy(SUMMARY)

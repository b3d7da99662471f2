import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torchvision

import fxcompress
from fxcompress import ExportError, VerificationError
from fxcompress.models import get_model
from fxcompress.models.random_init import recalibrate_batchnorm
from fxcompress.onnx.runtime import ort_session, run_ort
from fxcompress.passes import CountFlops, ExportONNX

ZOO = [("resnet18", 224), ("resnet50", 224), ("mobilenet_v2", 224), ("mobilenet_v3_small", 224),
       ("densenet121", 224), ("efficientnet_b0", 224), ("regnet_x_400mf", 224), ("convnext_tiny", 224),
       ("vit_b_16", 224)]
CIFAR = ["resnet20", "resnet32", "resnet56", "resnet110", "resnet20_half"]


def export_and_check(model, shape, path):
    x = torch.randn(*shape)
    result = fxcompress.compile(model, [CountFlops(), ExportONNX(path)], (x,), progress=False)
    record = result.report.records[-1]
    assert os.path.isfile(path) and record.file_bytes == os.path.getsize(path)
    assert record.metrics["max_rel_error"] < 1e-4
    # an independent check, outside the pass: ORT and PyTorch agree on a fresh batch of another size
    x2 = torch.randn(3, *shape[1:])
    got = run_ort(ort_session(path), (x2,))[0]
    with torch.no_grad():
        want = model.eval()(x2).numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    assert np.abs(want).max() > 1e-2  # outputs are not trivially zero
    return result


@pytest.mark.parametrize("name,res", ZOO, ids=[z[0] for z in ZOO])
def test_torchvision_parity(name, res, tmp_path):
    model = recalibrate_batchnorm(torchvision.models.get_model(name, weights=None), (1, 3, res, res), batches=1)
    result = export_and_check(model, (1, 3, res, res), str(tmp_path / f"{name}.onnx"))
    assert result.report.records[0].macs_after > 0


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_resnet_parity(name, tmp_path):
    model = recalibrate_batchnorm(get_model(name), (1, 3, 32, 32), batches=1)
    export_and_check(model, (1, 3, 32, 32), str(tmp_path / f"{name}.onnx"))


def test_report_shows_params_macs_size_time(tmp_path):
    result = fxcompress.compile(get_model("resnet20"), [ExportONNX(str(tmp_path / "m.onnx"))], torch.randn(1, 3, 32, 32))
    row = result.report.records[0]
    assert row.params_after == 272_474 and row.macs_after > 40e6 and row.file_bytes > 1e6 and row.seconds > 0
    assert result.artifacts == [str(tmp_path / "m.onnx")]
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))


def test_dynamic_batch_off_fixes_the_batch(tmp_path):
    path = str(tmp_path / "static.onnx")
    fxcompress.compile(get_model("resnet20"), [ExportONNX(path, dynamic_batch=False)], torch.randn(2, 3, 32, 32))
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 2


def test_unwritable_path_is_a_typed_error_and_leaves_nothing(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        fxcompress.compile(get_model("resnet20"), [ExportONNX(str(tmp_path / "missing" / "m.onnx"))],
                           torch.randn(1, 3, 32, 32))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
        target = str(tmp_path / "afile" / "m.onnx")
        (tmp_path / "afile").write_text("x")
    else:
        target = str(locked / "m.onnx")
    with pytest.raises(ExportError):
        fxcompress.compile(get_model("resnet20"), [ExportONNX(target)], torch.randn(1, 3, 32, 32))
    assert not os.path.exists(target)


class OnnxDiffers(nn.Module):
    """Exports to something that computes differently from PyTorch: a verification failure on purpose."""

    def forward(self, x):
        if torch.onnx.is_in_onnx_export():
            return x * 2
        return x * 3


def test_verification_failure_leaves_no_file(tmp_path):
    path = tmp_path / "bad.onnx"
    model = nn.Sequential(nn.Conv2d(3, 3, 1), OnnxDiffers())
    with pytest.raises(VerificationError, match="ONNX Runtime vs PyTorch"):
        fxcompress.compile(model, [ExportONNX(str(path))], torch.randn(1, 3, 4, 4), leaf_modules=[OnnxDiffers])
    assert not path.exists() and os.listdir(tmp_path) == []


def test_existing_file_survives_a_failed_export(tmp_path):
    path = tmp_path / "keep.onnx"
    path.write_bytes(b"previous")
    model = nn.Sequential(nn.Conv2d(3, 3, 1), OnnxDiffers())
    with pytest.raises(VerificationError):
        fxcompress.compile(model, [ExportONNX(str(path))], torch.randn(1, 3, 4, 4), leaf_modules=[OnnxDiffers])
    assert path.read_bytes() == b"previous"

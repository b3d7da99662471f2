"""onnx/write.py: models over protobuf's 2 GiB (vit_h_14, regnet_y_128gf) export through a file with external
data; a file that cannot be written says so and leaves nothing behind. The limits are lowered here: the
same code paths, without 2 GiB of weights."""
import os

import pytest
import torch
import torch.nn as nn

from fxcompress.core.errors import ExportError
from fxcompress.onnx import write
from fxcompress.onnx.runtime import ort_session, run_ort


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()


def test_a_model_over_the_protobuf_limit_exports_through_external_data(monkeypatch, tmp_path):
    model, x = _model(), torch.randn(2, 3, 8, 8)
    small = write.to_onnx_proto(model, (x,))
    monkeypatch.setattr(write, "_PROTOBUF_LIMIT", 1000)    # this model's 5 kB of weights count as "large"
    large = write.to_onnx_proto(model, (x,))
    assert {i.name for i in large.graph.initializer} == {i.name for i in small.graph.initializer}
    assert all(not i.external_data for i in large.graph.initializer)   # read back whole, in memory
    path = str(tmp_path / "m.onnx")
    write.save_checked(large, path)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(run_ort(ort_session(path), (x,))[0]), model(x), atol=1e-5)


def test_a_file_over_two_gib_is_refused_and_nothing_is_written(monkeypatch, tmp_path):
    proto = write.to_onnx_proto(_model(), (torch.randn(2, 3, 8, 8),))
    monkeypatch.setattr(write, "_PROTOBUF_MAX", 1000)
    path = str(tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="over protobuf's 2 GiB.*quantize it to INT8 first"):
        write.save_checked(proto, path)
    assert os.listdir(tmp_path) == []

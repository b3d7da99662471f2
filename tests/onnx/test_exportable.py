"""The graph handed to torch's exporter: rewritten on a copy (the model stays as traced), with the opset an
op needs (F.fold's Col2Im: 18) when the caller named none."""
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxcompress.onnx.exportable import exportable
from fxcompress.onnx.write import DEFAULT_OPSET, to_onnx_proto


class Fold(nn.Module):
    def forward(self, x):
        return F.fold(F.unfold(x, 2, stride=2), (x.shape[2], x.shape[3]), 2, stride=2)


class Plain(nn.Module):
    def forward(self, x):
        return F.adaptive_avg_pool2d(x.relu(), 1)


def test_fold_is_rewritten_on_a_copy_and_needs_opset_18():
    gm = fx.symbolic_trace(Fold())
    before = gm.code
    x = torch.randn(1, 3, 6, 6)
    out, opset = exportable(gm, (x,))
    assert opset == 18 and out is not gm and gm.code == before
    torch.testing.assert_close(out(x), gm(x))
    assert to_onnx_proto(gm, (x,)).opset_import[0].version == 18


def test_a_graph_without_rules_is_exported_as_it_is():
    gm = fx.symbolic_trace(Plain())    # a global pool: the exporter writes GlobalAveragePool itself
    out, opset = exportable(gm, (torch.randn(1, 3, 6, 6),))
    assert out is gm and opset is None
    assert to_onnx_proto(gm, (torch.randn(1, 3, 6, 6),)).opset_import[0].version == DEFAULT_OPSET

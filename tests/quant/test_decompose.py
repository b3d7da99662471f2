"""Attention decomposed for INT8: nn.MultiheadAttention's packed q/k/v projection becomes an nn.Linear in
the graph (exactly the same function), so QuantizeINT8 quantizes both projections and onnxruntime runs them
as QGemm; calls that cannot be decomposed are kept whole with the reason."""
import pytest
import torch
import torch.nn as nn

import fxcompress
from fxcompress.graph.tracing import trace
from fxcompress.passes import ExportONNX, MagnitudePrune, QuantizeINT8
from fxcompress.quant.decompose import decompose_modules


class Block(nn.Module):
    """A ViT encoder block on [batch, tokens, features] (or [tokens, batch, features])."""

    def __init__(self, d=32, heads=4, batch_first=True, mask=False, cross=False):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=batch_first)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, 10)
        self.batch_first, self.cross = batch_first, cross
        self.attn_mask = torch.zeros(6, 6) if mask else None   # 6 tokens

    def forward(self, x):
        x = x if self.batch_first else x.transpose(0, 1)
        h = self.norm1(x)
        kv = h.flip(1) if self.cross else h
        a, _ = self.attn(h, kv, kv, need_weights=False, attn_mask=self.attn_mask)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        x = x if self.batch_first else x.transpose(0, 1)
        return self.head(x.mean(1))


X = torch.randn(4, 6, 32)


@pytest.mark.parametrize("batch_first", [True, False])
def test_decomposition_is_the_same_function(batch_first):
    torch.manual_seed(0)
    model = Block(batch_first=batch_first).eval()
    gm = trace(model)
    report = decompose_modules(gm)
    assert report == {"decomposed": ["attn"], "kept": {}}
    assert not any(isinstance(m, nn.MultiheadAttention) for m in gm.modules())
    assert isinstance(gm.get_submodule("attn.in_proj"), nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(gm(X), model(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,reason", [({"mask": True}, "masked attention"),
                                           ({"cross": True}, "not self-attention")])
def test_calls_that_cannot_be_decomposed_are_kept_with_the_reason(kwargs, reason):
    gm = trace(Block(**kwargs).eval())
    report = decompose_modules(gm)
    assert report["decomposed"] == [] and reason in report["kept"]["attn"]
    assert isinstance(gm.get_submodule("attn"), nn.MultiheadAttention)


def _int8(model, path):
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 6, 32, generator=g) for _ in range(4)]
    held = [torch.randn(8, 6, 32, generator=g) for _ in range(2)]
    return fxcompress.compile(model.eval(), [QuantizeINT8(progress=False), ExportONNX(path)], (X,),
                              calib_loader=calib, val_loader=held, progress=False)


def test_both_attention_projections_run_as_qgemm(tmp_path):
    torch.manual_seed(0)
    result = _int8(Block(), str(tmp_path / "b.onnx"))
    quant, export = result.report.records[0].metrics, result.report.records[-1].metrics
    assert quant["decomposed"] == ["attn"]
    assert quant["unquantized_layers"] == []
    # in_proj, out_proj, two MLP layers as 1x1 QLinearConv over the tokens; the head (2-D, float logits) QGemm
    assert export["integer_kernels"] == {"QLinearConv": 4, "QGemm": 1}
    assert export["int8_mac_fraction"] > 0.9           # the attention products stay float
    assert export["max_code_step"] <= 1


def test_pruned_attention_decomposes_too(tmp_path):
    torch.manual_seed(0)
    result = fxcompress.compile(Block().eval(), [MagnitudePrune(0.5)], X, progress=False)
    assert type(result.model.get_submodule("attn")).__name__ == "PrunedMultiheadAttention"
    quant = _int8(result.model, str(tmp_path / "p.onnx")).report.records[0].metrics
    assert quant["decomposed"] == ["attn"] and quant["unquantized_layers"] == []


class SwinStage(nn.Module):
    """Two torchvision Swin blocks (the second shifted) and a classifier, on [batch, H, W, C]."""

    def __init__(self, v2=False, d=16):
        super().__init__()
        from torchvision.models.swin_transformer import SwinTransformerBlock, SwinTransformerBlockV2
        block = SwinTransformerBlockV2 if v2 else SwinTransformerBlock
        self.blocks = nn.Sequential(block(d, 2, [4, 4], [0, 0]), block(d, 2, [4, 4], [2, 2]))
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        return self.head(self.blocks(x).mean((1, 2)))


SWIN_X = torch.randn(2, 8, 8, 16)


@pytest.mark.parametrize("v2", [False, True])
def test_swin_window_attention_decomposes_exactly_and_runs_its_projections_as_qgemm(v2, tmp_path):
    torch.manual_seed(0)
    model = SwinStage(v2).eval()
    gm = trace(model)
    from fxcompress.graph.shapes import record_shapes
    record_shapes(gm, (SWIN_X,))
    report = decompose_modules(gm)
    assert len(report["decomposed"]) == 2 and report["kept"] == {}
    with torch.no_grad():
        torch.testing.assert_close(gm(SWIN_X), model(SWIN_X), rtol=1e-5, atol=1e-6)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 8, 8, 16, generator=g) for _ in range(3)]
    result = fxcompress.compile(model, [QuantizeINT8(progress=False), ExportONNX(str(tmp_path / "s.onnx"))],
                                (SWIN_X,), calib_loader=calib, val_loader=calib[:1], progress=False)
    quant, export = result.report.records[0].metrics, result.report.records[-1].metrics
    assert len(quant["decomposed"]) == 2 and quant["unquantized_layers"] == []
    # per block: qkv, proj, two MLP layers (+ Swin v2's relative-position MLP, two layers: the second has 2
    # outputs, a QGemm); the head QGemm
    kernels = export["integer_kernels"]
    assert kernels.get("QLinearConv", 0) + kernels.get("QGemm", 0) == 2 * (4 + 2 * v2) + 1
    # the attention products stay float: 12% of the MACs at 16 features and 16 tokens a window (swin_t: 5%)
    assert export["int8_mac_fraction"] > 0.85 and export["max_code_step"] <= 1

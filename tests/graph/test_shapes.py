"""Shape recording on meta tensors, with its fallbacks."""
import torch
import torch.nn as nn
import torchvision

from fxcompress.graph.shapes import _cat_on_meta, record_shapes
from fxcompress.graph.tracing import propagate_shapes, trace


def _shapes(gm):
    return {n.name: (tuple(m.shape), m.dtype) if hasattr((m := n.meta.get("tensor_meta")), "shape") else None
            for n in gm.graph.nodes}


def _record_both(model, x):
    meta_gm, real_gm = trace(model.eval()), trace(model.eval())
    record_shapes(meta_gm, (x,))
    propagate_shapes(real_gm, (x,))
    return _shapes(meta_gm), _shapes(real_gm)


def test_meta_shapes_equal_a_real_run():
    for name in ("densenet121", "mobilenet_v3_small", "shufflenet_v2_x0_5"):
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
        meta, real = _record_both(model, torch.randn(2, 3, 64, 64))
        assert meta == real, name


def test_meta_run_leaves_parameters_real_and_modes_unchanged():
    model = torchvision.models.resnet18(weights=None, num_classes=10).train()
    gm = trace(model)
    gm.train()
    weights = {n: p for n, p in gm.named_parameters()}
    record_shapes(gm, (torch.randn(1, 3, 32, 32),))
    assert all(p.device.type == "cpu" and p is weights[n] for n, p in gm.named_parameters())
    assert all(m.training for m in gm.modules())


def test_data_dependent_graph_falls_back_to_a_real_run():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y * (y.abs().max().item() > 0)   # .item() has no value on meta tensors

    meta, real = _record_both(DataDependent(), torch.randn(1, 3, 8, 8))
    assert meta == real and meta["conv"] == ((1, 8, 8, 8), torch.float32)


def test_cat_on_meta_matches_torch_cat():
    cases = [([(1, 3, 4, 4), (1, 5, 4, 4)], 1), ([(2, 3), (4, 3)], 0), ([(1, 2, 5), (1, 2, 7)], -1),
             ([(1, 3, 4, 4)], 1)]
    for shapes, dim in cases:
        real = torch.cat([torch.randn(s) for s in shapes], dim)
        meta = _cat_on_meta([torch.empty(s, device="meta") for s in shapes], dim)
        assert meta.shape == real.shape and meta.dtype == real.dtype


class _MovesToCpu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y + y.cpu()   # a meta tensor has no data to copy to the CPU; a fake one can pretend


class _ItemInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * (y.abs().max().item() > 0)   # no value on meta or fake tensors


def test_record_says_which_method_ran_and_why_the_others_failed():
    x = torch.randn(1, 3, 8, 8)
    gm = trace(nn.Sequential(nn.Conv2d(3, 8, 3)).eval())
    rec = record_shapes(gm, (x,))
    assert rec.method == "meta" and rec.failures == {} and gm.meta["shape_record"] is rec

    gm = trace(_MovesToCpu().eval())
    rec = record_shapes(gm, (x,))
    assert rec.method == "fake" and list(rec.failures) == ["meta"]
    assert "meta tensor" in rec.failures["meta"] and "\n" not in rec.failures["meta"]
    assert gm.meta["shape_record"] is rec and "meta failed" in rec.describe()
    assert _shapes(gm)["add"] == ((1, 8, 8, 8), torch.float32)

    gm = trace(_ItemInForward().eval())
    rec = record_shapes(gm, (x,))
    assert rec.method == "real" and list(rec.failures) == ["meta", "fake"]
    assert all(rec.failures.values()) and all("\n" not in v for v in rec.failures.values())
    assert _shapes(gm)["conv"] == ((1, 8, 8, 8), torch.float32)


def test_fallbacks_print_nothing(capsys):
    # torch's ShapeProp prints a traceback before raising; the CLI promises one line on errors
    rec = record_shapes(trace(_ItemInForward().eval()), (torch.randn(1, 3, 8, 8),))
    assert rec.method == "real" and "<- DataDependentOutputException" in rec.failures["fake"]
    assert capsys.readouterr().err == ""


def test_conv_shapes_by_arithmetic_match_a_real_run():
    """Conv2d output shapes on the meta path are computed, not run: strides, dilations, paddings, groups
    and odd sizes must give what a real forward gives."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 5, dilation=2, padding=3, groups=4),
                        nn.Conv2d(8, 6, (3, 1), stride=(1, 3)), nn.Conv2d(6, 6, 1, padding="same"),
                        nn.Conv2d(6, 4, 2, padding=2, padding_mode="reflect")).eval()
    x = torch.randn(2, 3, 23, 17)
    fast, real = trace(net), trace(net)
    record_shapes(fast, (x,))
    propagate_shapes(real, (x,))
    shape = lambda gm: [tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if n.op != "output"]  # noqa: E731
    assert shape(fast) == shape(real)


class _ReadsParameters(nn.Module):
    """Parameters read on the meta run: a get_attr node (the class token) and a module run for real
    (attention), between modules whose shapes are computed."""

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, 8))
        self.proj = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        x = torch.cat([self.token.expand(x.shape[0], -1, -1), self.proj(x)], dim=1)
        return self.attn(x, x, x, need_weights=False)[0]


def test_parameters_swapped_only_when_read_and_always_restored():
    """The swap for meta twins happens at the first node that may read a tensor, and every tensor is back
    afterwards, on success and on failure."""
    from fxcompress.graph import shapes

    swapped = []
    original = shapes._MetaSwap.now

    def spy(self):
        swapped.append(self.saved is None)
        original(self)

    for model, x, expect_swap in ((_ReadsParameters(), torch.randn(2, 5, 8), True),
                                  (torchvision.models.resnet18(weights=None, num_classes=10), torch.randn(1, 3, 32, 32),
                                   False)):
        gm = trace(model.eval())
        tensors = {n: t for n, t in list(gm.named_parameters()) + list(gm.named_buffers())}
        swapped.clear()
        shapes._MetaSwap.now = spy
        try:
            rec = record_shapes(gm, (x,))
        finally:
            shapes._MetaSwap.now = original
        assert rec.method == "meta" and any(swapped) == expect_swap
        assert all(t is tensors[n] and t.device.type == "cpu"
                   for n, t in list(gm.named_parameters()) + list(gm.named_buffers()))
        real = trace(model.eval())
        propagate_shapes(real, (x,))
        assert _shapes(gm) == _shapes(real)

    gm = trace(_ReadsParameters().eval())
    tensors = dict(gm.named_parameters())
    try:
        shapes.run_on_meta(gm, (torch.randn(2, 5, 7),), lambda n, v: None)   # 7 features: proj fails
    except shapes.MetaRunError:
        pass
    assert all(t is tensors[n] for n, t in gm.named_parameters())


def test_ensure_shapes_does_not_record_a_graph_with_size_nodes_again(monkeypatch):
    """A node computing a size (`x.size(0)`) holds no tensor: recorded (it has a type) without tensor_meta."""
    from fxcompress.graph import shapes

    class Sized(nn.Module):
        def forward(self, x):
            return x.view(x.size(0), -1)

    gm = trace(Sized())
    runs = []
    real = shapes.record_shapes
    monkeypatch.setattr(shapes, "record_shapes", lambda *a: (runs.append(1), real(*a))[1])
    shapes.ensure_shapes(gm, (torch.randn(2, 3, 4),))
    shapes.ensure_shapes(gm, (torch.randn(2, 3, 4),))
    size = next(n for n in gm.graph.nodes if n.target == "size")
    assert len(runs) == 1 and "tensor_meta" not in size.meta and size.meta["type"] is int

"""Tracing specialised on the example inputs: shape-dependent Python resolves, data-dependent Python is refused,
and the capture report says which inputs the graph holds for."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxcompress
from fxcompress.graph.capture import capture
from fxcompress.passes import ChannelGroups, ExportONNX, MagnitudePrune


class ChunkList(nn.Module):
    """C2f-like: `list(y.chunk(2, 1))` iterates a proxy; a branch on the input's size."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(12, 6, 1)

    def forward(self, x):
        h = x.shape[-1]
        if h % 3:                             # a branch on a shape: taken as for the example
            x = F.pad(x, (0, 3 - h % 3, 0, 3 - h % 3))
        parts = list(self.a(x).chunk(2, 1))
        parts.append(self.b(parts[-1]))
        return self.c(torch.cat(parts, 1)).mean((2, 3))


def test_shape_dependent_python_is_traced_on_the_example_and_prunes():
    model, x = ChunkList().eval(), torch.randn(1, 3, 10, 10)
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)
    gm, info = capture(model, (x,))
    assert info["method"] == "concrete" and "cannot trace ChunkList" in info["symbolic_error"]
    assert info["holds_for"]["batch"] is True          # the chunks stayed symbolic: any batch size works
    assert info["holds_for"]["size"].startswith("no")   # 10 % 3 padded; 42 % 3 == 0 would not
    assert "bool(mod)" in info["specialised"]
    torch.testing.assert_close(gm(x), model(x))
    chunk = next(n for n in gm.graph.nodes if n.target == "chunk")
    assert len(chunk.users) == 2                       # two getitem nodes, not two frozen tensors
    result = fxcompress.compile(model, [ChannelGroups(), MagnitudePrune(0.5)], x, progress=False)
    assert result.report.capture["method"] == "concrete"
    assert result.report.records[1].params_after < result.report.records[1].params_before


class ResizeThenAssert(nn.Module):
    """crossvit's scale_image + patch embedding: a resize skipped when the input already has the expected
    size, then an assert on that size. Traced at the expected size, the resize is frozen out, and at another
    size the graph reaches the assert that the model's own resize avoids."""

    def __init__(self, size=12, message="Input image size doesn't match model"):
        super().__init__()
        self.size, self.conv, self.message = size, nn.Conv2d(3, 4, 3), message

    def forward(self, x):
        parts = list(x.chunk(1, 0))                     # symbolic tracing gives up here
        x = parts[0]
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        torch._assert(x.shape[-1] == self.size, self.message)
        return self.conv(x)


@pytest.mark.parametrize("message", ["Input image size doesn't match model", ""])
def test_a_frozen_branch_that_reaches_an_assert_is_reported_not_raised(message):
    model, x = ResizeThenAssert(message=message).eval(), torch.randn(1, 3, 12, 12)
    gm, info = capture(model, (x,))
    assert info["method"] == "concrete"
    assert info["holds_for"]["batch"] is True
    assert info["holds_for"]["size"].startswith("no: AssertionError")
    torch.testing.assert_close(gm(x), model(x))


class CachedTable(nn.Module):
    """convit's GPSA: a table kept as a plain tensor attribute (not a buffer) once a first forward made it,
    expanded to the traced batch size; a branch on its shape sends symbolic tracing to the specialising one."""

    def __init__(self, n=16):
        super().__init__()
        self.table = None
        self.proj = nn.Linear(n, n)

    def forward(self, x):
        if self.table is None or self.table.shape[1] != x.shape[1]:
            self.table = torch.linspace(0, 1, x.shape[1] * x.shape[2]).reshape(1, x.shape[1], x.shape[2])
        return self.proj(x + self.table.expand(x.shape[0], -1, -1))


def test_a_plain_tensor_attribute_is_read_as_a_graph_constant_and_put_back():
    model, x = CachedTable().eval(), torch.randn(2, 16, 16)
    model(x)                                      # the first forward caches the table as a plain attribute
    table = model.table
    gm, info = capture(model, (x,))
    assert info["method"] == "concrete"
    assert info["holds_for"]["batch"] is True     # expand follows the batch size
    torch.testing.assert_close(gm(x), model(x))
    assert model.table is table and "table" not in dict(model.named_buffers())   # as it was
    assert any(n.op == "get_attr" and n.target == "table" for n in gm.graph.nodes)


class DataBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:                      # data-dependent: a graph frozen on it is wrong for other data
            return y
        return -y


def test_python_on_tensor_values_is_refused_naming_the_module():
    with pytest.raises(fxcompress.TraceError) as info:
        capture(DataBranch().eval(), (torch.randn(1, 3, 4, 4),))
    msg = str(info.value)
    assert "depends on tensor values" in msg and "DataBranch" in msg


class SetItemAndDevice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        n = len(x)                                           # a tensor's length is its batch size
        table = torch.zeros(n, 4, 1, 1, device=x.device, dtype=x.dtype)
        table[:, 1] = 1.0                                    # item assignment on a tensor made inside
        return self.conv(x) + table


def test_item_assignment_and_metadata_attributes():
    model, x = SetItemAndDevice().eval(), torch.randn(2, 3, 5, 5)
    gm, info = capture(model, (x,))
    assert info["method"] == "concrete"
    torch.testing.assert_close(gm(x), model(x))


class Defaults(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)

    def forward(self, x, attn_mask=None, is_causal=False):
        q = self.q(x).unsqueeze(1)
        return F.scaled_dot_product_attention(q, q, q, attn_mask=attn_mask, is_causal=is_causal).squeeze(1)


def test_arguments_after_the_example_inputs_take_their_defaults(tmp_path):
    """timm's ViTs take `attn_mask=None, is_causal=False`: as graph inputs the exporter made `is_causal` a
    tensor and failed; they are the model's defaults, inlined."""
    model, x = Defaults().eval(), torch.randn(2, 5, 8)
    result = fxcompress.compile(model, [ExportONNX(str(tmp_path / "d.onnx"))], x, progress=False)
    assert result.report.capture["fixed_arguments"] == {"attn_mask": "None", "is_causal": "False"}
    assert [n.target for n in result.model.graph.nodes if n.op == "placeholder"] == ["x"]
    assert (tmp_path / "d.onnx").exists()


class CachesShape(nn.Module):
    """Like ultralytics' Detect head: caches the input shape it saw (here a proxy while tracing) and iterates
    its *args (a placeholder fx cannot iterate)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.shape = None
        self.cache = {}   # filled in place, like timm's attention_bias_cache

    def forward(self, x, *args, **kwargs):
        if self.shape != x.shape:
            self.shape = x.shape
            self.cache[str(x.device)] = x.shape[-1]
        for extra in args:
            x = x + extra
        return self.conv(x)


def test_tracing_leaves_the_models_own_state_as_it_was():
    model, x = CachesShape().eval(), torch.randn(1, 3, 4, 4)
    before = dict(model.__dict__)
    gm, info = capture(model, (x,))
    assert model.__dict__.keys() == before.keys() and model.shape is None     # no proxy left behind
    assert model.cache == {}
    assert not any(k.startswith("_tensor_constant") for k in vars(model))
    torch.testing.assert_close(gm(x), model(x))


def test_a_sequential_root_gets_no_tensor_constants():
    """fx stores tensor constants on the root while tracing: a torch.nn container root must lose them too."""
    class AddConst(nn.Module):
        def forward(self, x):
            return x + torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)

    model = nn.Sequential(nn.Conv2d(3, 3, 1), AddConst()).eval()
    gm, _ = capture(model, (torch.randn(1, 3, 4, 4),))
    assert not any(k.startswith("_tensor_constant") for k in vars(model))
    assert any(k.startswith("_tensor_constant") for k in dict(gm.named_buffers()) | vars(gm))


def test_a_graph_failing_on_its_own_example_is_a_verification_error_naming_the_model():
    from fxcompress.graph.capture import _check_against_model

    class Asserts(nn.Module):
        def forward(self, x):
            torch._assert(x.shape[0] == 5, "batch of 5 only")
            return x + 1

    class Model(nn.Module):
        def forward(self, x):
            return x + 1

    gm = torch.fx.symbolic_trace(Asserts())
    with pytest.raises(fxcompress.VerificationError) as info:
        _check_against_model(gm, Model(), (torch.randn(2, 3),))
    assert "traced from Model" in str(info.value) and "AssertionError: batch of 5 only" in str(info.value)


class FrozenTableResize(nn.Module):
    """samvit's relative positions: a table resized to the input's size unless it already fits, then indexed by
    positions computed from the input. Traced at the table's size, the resize is frozen out; at another size
    the graph indexes past the table's end (IndexError)."""

    def __init__(self, size=12):
        super().__init__()
        self.size, self.table, self.conv = size, nn.Parameter(torch.randn(size)), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        parts = list(x.chunk(1, 0))                     # symbolic tracing gives up here
        x = parts[0]
        table = self.table
        if x.shape[-1] != self.size:
            table = F.interpolate(table[None, None], size=x.shape[-1], mode="linear")[0, 0]
        positions = torch.ones_like(x[0, 0, 0]).cumsum(0).long() - 1
        return self.conv(x) * table[positions]


def test_a_graph_that_raises_any_error_at_another_size_is_reported_not_raised():
    model, x = FrozenTableResize().eval(), torch.randn(1, 3, 12, 12)
    gm, info = capture(model, (x,))
    assert info["method"] == "concrete"
    assert info["holds_for"]["batch"] is True
    assert info["holds_for"]["size"].startswith("no: IndexError"), info["holds_for"]
    torch.testing.assert_close(gm(x), model(x))

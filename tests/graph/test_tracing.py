import pytest
import torch
import torch.nn as nn
import torchvision

import fxcompress
from fxcompress.graph.tracing import node_shape, propagate_shapes, trace


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:  # data-dependent: untraceable
            return y
        return -y


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.body = Branchy()

    def forward(self, x):
        return self.body(self.stem(x)) + 1


def test_shapes_and_dtypes_recorded_on_every_node():
    gm = trace(Wrapper().eval(), leaf_modules=["body"])
    propagate_shapes(gm, (torch.randn(2, 3, 8, 8),))
    for n in gm.graph.nodes:
        if n.op != "output":
            assert node_shape(n) == (2, 4, 8, 8) if n.name in ("body", "add") else node_shape(n) is not None
            assert n.meta["tensor_meta"].dtype == torch.float32


def test_untraceable_model_names_module_and_line_and_suggests_leaf():
    with pytest.raises(fxcompress.TraceError) as info:
        fxcompress.compile(Wrapper(), [], torch.randn(1, 3, 8, 8))
    msg = str(info.value)
    assert "body (Branchy)" in msg and "test_tracing.py:" in msg and "leaf_modules=['body']" in msg
    assert info.value.__cause__ is not None  # the raw torch.fx error stays chained


@pytest.mark.parametrize("leaf", ["body", Branchy])
def test_leaf_module_fix_traces(leaf):
    result = fxcompress.compile(Wrapper(), [], torch.randn(1, 3, 8, 8), leaf_modules=[leaf])
    assert [n.target for n in result.model.graph.nodes if n.op == "call_module"] == ["stem", "body"]


def test_wrong_input_shape_names_the_node():
    with pytest.raises(fxcompress.ShapeError) as info:
        fxcompress.compile(Wrapper(), [], torch.randn(1, 5, 8, 8), leaf_modules=["body"])
    msg = str(info.value)
    assert "'stem'" in msg and "(1, 5, 8, 8)" in msg and "While executing" not in msg


def test_traced_module_is_a_full_graph_module_with_code_generated_on_demand():
    import copy
    import io

    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    gm = trace(model)
    x = torch.randn(2, 3, 32, 32)
    assert isinstance(gm, torch.fx.GraphModule) and "def forward" in gm.code
    clone = copy.deepcopy(gm)
    buffer = io.BytesIO()
    torch.save(gm.state_dict(), buffer)
    buffer.seek(0)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        assert torch.equal(gm(x), model(x)) and torch.equal(clone(x), model(x))


@pytest.mark.parametrize("name", ["densenet121", "vit_b_16", "mobilenet_v3_small", "googlenet"])
def test_tracer_shortcuts_give_fx_graph_and_metadata(name):
    """LeafTracer answers create_arg for plain types itself and copies the module stack and scope more
    cheaply than fx: the graph, every node's arguments and metadata must be fx's own tracer's."""
    from fxcompress.graph.tracing import LeafTracer

    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    ours, theirs = LeafTracer().trace(model), torch.fx.Tracer().trace(model)
    assert str(ours) == str(theirs)
    for a, b in zip(ours.nodes, theirs.nodes):
        assert (a.name, a.op, a.target, repr(a.args), repr(a.kwargs), a.meta) == \
               (b.name, b.op, b.target, repr(b.args), repr(b.kwargs), b.meta)
        assert type(a.meta.get("nn_module_stack")) is type(b.meta.get("nn_module_stack"))
        assert [type(v) for v in a.args] == [type(v) for v in b.args]


class _Odd(nn.Module):
    """Paths the fast module copy leaves to torch: parameters and buffers read by get_attr (one of them
    non-persistent), a container with its own __getattr__, a leaf module also reached below (its child
    called directly), and a module called twice."""

    class Lookup(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Conv2d(4, 4, 1)

        def __getattr__(self, name):
            return super().__getattr__(name)

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.lookup = _Odd.Lookup()
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.register_buffer("shift", torch.zeros(1, 4, 1, 1), persistent=False)

    def forward(self, x):
        x = self.stem(x)
        x = self.lookup.inner(x) * self.scale + self.shift
        return self.block(x) + self.block[0](x) + self.stem[1](x)


@pytest.mark.parametrize("name", ["densenet121", "googlenet", "vit_b_16", "maxvit_t", "odd"])
def test_fast_module_install_builds_what_graph_module_builds(name):
    """trace() installs the graph's modules itself (fast path for plain submodule paths): the module tree,
    every parameter and buffer (shared, with their persistence), the tracer class and the code must be those
    of torch's GraphModule(root, graph)."""
    from fxcompress.graph.tracing import LeafTracer

    model = _Odd().eval() if name == "odd" else \
        torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    leaf = ["block"] if name == "odd" else []
    ours = trace(model, leaf)
    tracer = LeafTracer(leaf)
    theirs = torch.fx.GraphModule(model, tracer.trace(model), type(model).__name__)

    def tree(gm):
        return [(n, type(m).__name__, m.training, sorted(m._non_persistent_buffers_set),
                 id(m) if n and type(m) is not nn.Module else None)
                for n, m in gm.named_modules(remove_duplicate=False)]

    assert tree(ours) == tree(theirs)
    def same(n, a, b):   # the model's tensors are shared; constants made while tracing are made per trace
        return a is b or n.rpartition(".")[2].startswith("_tensor_constant") and torch.equal(a, b)

    for named in ("named_parameters", "named_buffers"):
        a, b = getattr(ours, named)(remove_duplicate=False), getattr(theirs, named)(remove_duplicate=False)
        assert all(na == nb and same(na, x, y) for (na, x), (nb, y) in zip(a, b, strict=True))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert (ours._tracer_cls, ours._tracer_extras, ours.training, type(ours).__name__) == \
           (theirs._tracer_cls, theirs._tracer_extras, theirs.training, type(theirs).__name__)
    assert ours.code == theirs.code and ours.graph.owning_module is ours

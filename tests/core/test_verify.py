"""The exactness check's float64 re-check and the substituted runs it is made of: nothing converted or
written, one module's copies at a time."""
import copy
import weakref

import pytest
import torch
import torch.nn as nn

from fxcompress.core.errors import VerificationError
from fxcompress.core.verify import compare_exact, run_eval, run_substituted
from fxcompress.graph.tracing import trace

X = (torch.randn(4, 16),)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.LayerNorm(32), nn.Linear(32, 8)).eval()


def _state(gm):
    return [(t.dtype, t.data_ptr(), t._version) for t in list(gm.parameters()) + list(gm.buffers())]


def test_substituted_run_matches_and_holds_one_module_of_copies():
    gm = trace(mlp())
    live, most = set(), [0]

    def substitute(t):
        copy64 = t.double()
        live.add(id(copy64))
        weakref.finalize(copy64, live.discard, id(copy64))
        most[0] = max(most[0], len(live))
        return copy64

    before = _state(gm)
    with torch.no_grad():
        out = run_substituted(gm, (X[0].double(),), substitute)
    assert out.dtype == torch.float64 and torch.allclose(out.float(), gm(*X), atol=1e-5)
    assert most[0] == 2 and not live      # a Linear's weight and bias, dropped after the call
    assert _state(gm) == before


def test_float64_recheck_converts_and_writes_no_model():
    """A rewrite exact in real arithmetic that float32 rounding breaks ((y + 3e3) - 3e3): the float64
    re-check accepts it without touching either model's tensors; a real error still fails it."""
    gm = trace(mlp())
    shifted = copy.deepcopy(gm)
    graph = shifted.graph
    out = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(out):
        value = graph.call_function(torch.sub, (graph.call_function(torch.add, (out.args[0], 3e3)), 3e3))
    out.args = (value,)
    shifted.recompile()
    states = _state(gm), _state(shifted)
    result = compare_exact(lambda x: run_eval(gm, x), lambda x: run_eval(shifted, x), (gm, shifted), X, "shift")
    assert result["exact_check"] == "float64" and (_state(gm), _state(shifted)) == states

    value.args = (value.args[0], 3e3 - 1e-3)
    shifted.recompile()
    with pytest.raises(VerificationError, match="float64"):
        compare_exact(lambda x: run_eval(gm, x), lambda x: run_eval(shifted, x), (gm, shifted), X, "wrong")
    assert (_state(gm), _state(shifted)) == states

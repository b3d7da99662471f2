"""QLinearAdd as onnxruntime computes it: every pair of uint8 codes, under 60 random scale and zero-point sets,
gives the code onnxruntime's own kernel gives (the fixed part rounded as MLAS's fused multiply-add does). Code
for code: MLAS's AVX2/FMA kernel, the one every x86-64 CPU with AVX2 runs (AVX2-only, VNNI and AMX alike)."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from fxcompress.core.provenance import cpu_features
from fxcompress.quant.qlinear_add import qlinear_add

N = 256 * 256


def _session(sa, za, sb, zb, sc, zc):
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("sa", sa), ("sb", sb), ("sc", sc))]
    inits += [helper.make_tensor(n, TensorProto.UINT8, [], [v]) for n, v in (("za", za), ("zb", zb), ("zc", zc))]
    node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["c"],
                            domain="com.microsoft")
    graph = helper.make_graph([node], "add", [helper.make_tensor_value_info("a", TensorProto.UINT8, [N]),
                                              helper.make_tensor_value_info("b", TensorProto.UINT8, [N])],
                              [helper.make_tensor_value_info("c", TensorProto.UINT8, [N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.skipif("avx2 fma" not in cpu_features(), reason="MLAS's QLinearAdd without AVX2/FMA rounds otherwise")
def test_every_code_pair_matches_onnxruntime():
    a = np.repeat(np.arange(256, dtype=np.uint8), 256)
    b = np.tile(np.arange(256, dtype=np.uint8), 256)
    rng = np.random.default_rng(0)
    differing = 0
    for _ in range(60):
        sa, sb, sc = (float(np.float32(v)) for v in rng.uniform(0.001, 0.1, 3))
        za, zb, zc = (int(v) for v in rng.integers(0, 256, 3))
        expected = _session(sa, za, sb, zb, sc, zc).run(None, {"a": a, "b": b})[0]
        value = qlinear_add(torch.from_numpy(a).float(), torch.tensor(sa), za, torch.from_numpy(b).float(),
                            torch.tensor(sb), zb, torch.tensor(sc), zc)
        got = torch.clamp(torch.round(value), 0, 255).to(torch.uint8).numpy()
        differing += int((got != expected).sum())
    assert differing == 0

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

from fxcompress.cli.export import main
from fxcompress.models import load_model


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fxcompress.export", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def assert_matches(path, model, shape, batch=2):
    """The file passes onnx.checker, runs in onnxruntime (at another batch size: the axis is dynamic) and
    gives the PyTorch model's outputs."""
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *shape[1:])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(x).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_model_the_project_did_not_write(shared_dir, tmp_path):
    out = tmp_path / "r20.onnx"
    models = os.path.join(shared_dir, "models")
    if not os.path.isfile(os.path.join(models, "cifar_resnet20.pt")):
        pytest.skip(f"the reference checkpoint cifar_resnet20.pt is not in {models}")
    proc = run_cli("--model", os.path.join(models, "cifar_resnet.py") + ":cifar_resnet", "--checkpoint",
                   os.path.join(models, "cifar_resnet20.pt"), "--input-shape", "1,3,32,32", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "ExportONNX" in proc.stdout and "max_rel_error" in proc.stdout
    onnx.checker.check_model(onnx.load(str(out)))
    # the exported weights are the checkpoint's, not a fresh initialisation
    state = torch.load(os.path.join(models, "cifar_resnet20.pt"), weights_only=True)
    inits = {i.name: i for i in onnx.load(str(out)).graph.initializer}
    fc = onnx.numpy_helper.to_array(inits["fc.weight"])
    assert torch.allclose(torch.from_numpy(fc.copy()), state["fc.weight"])
    model = load_model(os.path.join(models, "cifar_resnet.py") + ":cifar_resnet")
    model.load_state_dict(state)
    assert_matches(out, model, (1, 3, 32, 32))


def _checkpoint(model, path):
    """Random weights (BN statistics too, so that they matter) saved for --checkpoint."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t).abs() * 0.1 + 0.5 if t.dim() == 1 else torch.randn_like(t) * 0.1)
    torch.save(model.state_dict(), path)
    return model


def test_registry_and_torchvision_names(tmp_path):
    torch.manual_seed(0)
    r20 = _checkpoint(load_model("resnet20"), tmp_path / "r20.pt")
    assert main(["--model", "resnet20", "--checkpoint", str(tmp_path / "r20.pt"), "--output", str(tmp_path / "a.onnx"),
                 "--report-json", str(tmp_path / "a.json")]) == 0
    assert (tmp_path / "a.json").exists()
    assert_matches(tmp_path / "a.onnx", r20, (1, 3, 32, 32))
    mobilenet = _checkpoint(torchvision.models.mobilenet_v3_small(), tmp_path / "mb.pt")
    assert main(["--model", "mobilenet_v3_small", "--checkpoint", str(tmp_path / "mb.pt"), "--input-shape",
                 "1,3,64,64", "--output", str(tmp_path / "b.onnx")]) == 0
    assert_matches(tmp_path / "b.onnx", mobilenet, (1, 3, 64, 64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.onnx", "b.onnx", "mb.pt", "r20.pt"]


UNEXPORTABLE = """import torch, torch.nn as nn


class SvdHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.linalg.svdvals(self.conv(x).flatten(2))   # traces and runs; ONNX has no SVD


def make():
    return SvdHead()
"""


@pytest.mark.parametrize("args,expect", [
    (["--model", "no_such_model"], "ModelNotFoundError: unknown model 'no_such_model'"),
    (["--model", "missing.py:make"], "model file missing.py does not exist"),
    (["--model", "resnet20", "--input-shape", "1,3,x"], "bad shape '1,3,x'"),
    (["--model", "resnet20", "--input-shape", "1,4,32,32"], "ShapeError: node 'conv1'"),
    (["--model", "resnet20", "--checkpoint", "nonexistent.pt"], "checkpoint nonexistent.pt does not exist"),
    (["--model", "resnet20", "--checkpoint", "CORRUPT"],
     "checkpoint CORRUPT cannot be read with torch.load(weights_only=True)"),
    (["--model", "resnet20", "--checkpoint", "WRONG"], "checkpoint WRONG does not fit CifarResNet"),
    (["--model", "resnet20", "--output", "no/such/dir/x.onnx"], "output folder"),
    (["--model", "resnet20", "--output", "."], "is a directory"),
    # fails inside the export itself, after the temporary file exists: it must be removed
    (["--model", "unexportable.py:make", "--input-shape", "1,3,8,8"], "ExportError: torch.onnx.export failed for "
                                                                        "SvdHead"),
])
def test_bad_arguments_exit_2_without_traceback_or_output(args, expect, tmp_path):
    (tmp_path / "CORRUPT").write_bytes(b"\x00not a checkpoint")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "WRONG")
    (tmp_path / "unexportable.py").write_text(UNEXPORTABLE)
    before = set(os.listdir(tmp_path))
    if "--output" not in args:
        args = args + ["--output", "out.onnx"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    # one line naming the culprit (argparse's own errors come after its usage text)
    *usage, line = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and "fxcompress.export: error: " in line, proc.stderr
    assert not usage or usage[0].startswith("usage: "), proc.stderr
    assert expect in line, proc.stderr
    left = {p.name for p in tmp_path.rglob("*")} - before - {"__pycache__"}
    assert not {n for n in left if not n.endswith(".pyc")}, left


def test_recipe_exports_the_compressed_model(tmp_path):
    """--recipe runs the recipe (here: pretraining, then INT8) and writes its final ONNX file at --output;
    the run folder is temporary unless --run-dir keeps it."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: small_cnn, pretrain: {epochs: 1}}\ndata: {kind: digits, calib_images: 64}\n"
                      "pipeline: [FoldBatchNorm, QuantizeINT8]\nsettings: {latency_runs: 0, threads: 1}\n")
    out = tmp_path / "int8.onnx"
    assert main(["--recipe", str(recipe), "--output", str(out)]) == 0
    model = onnx.load(str(out))
    assert any(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer)
    assert any(n.op_type == "QLinearConv" or n.op_type == "DequantizeLinear" for n in model.graph.node)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx", "r.yaml"]
    # a kept run folder holds the report and checkpoints; the same file comes out again when resumed
    assert main(["--recipe", str(recipe), "--output", str(tmp_path / "again.onnx"), "--run-dir",
                 str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report.json").exists() and (tmp_path / "run" / "checkpoints").is_dir()
    assert (tmp_path / "again.onnx").read_bytes() == out.read_bytes()


@pytest.mark.parametrize("args,expect", [
    (["--recipe", "digits", "--checkpoint", "w.pt"],
     "--checkpoint is for --model; with --recipe, set it in the recipe"),
    (["--recipe", "digits", "--resume"], "--resume needs the --run-dir of the interrupted run"),
    (["--recipe", "nope.yaml"], "RecipeError: recipe nope.yaml does not exist"),
    (["--recipe", "digits", "--set", "pipeline.ResRep.epochs=0"],
     "--set pipeline.ResRep.epochs=0: 0 is out of range: give an integer >= 1"),
    (["--model", "resnet20", "--recipe", "digits"], "argument --recipe: not allowed with argument --model"),
])
def test_bad_recipe_arguments_exit_2(args, expect, tmp_path, monkeypatch, capsys):
    from fxcompress.cli.common import guarded
    monkeypatch.chdir(tmp_path)
    try:
        code = guarded("fxcompress.export", main, [*args, "--output", "out.onnx"])
    except SystemExit as e:   # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and expect in err.strip().splitlines()[-1], err
    assert os.listdir(tmp_path) == []

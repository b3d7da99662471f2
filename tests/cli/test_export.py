import os
import subprocess
import sys

import onnx
import pytest
import torch

from fxcompress.cli.export import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fxcompress.export", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_model_the_project_did_not_write(shared_dir, tmp_path):
    out = tmp_path / "r20.onnx"
    models = os.path.join(shared_dir, "models")
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


def test_registry_and_torchvision_names(tmp_path):
    assert main(["--model", "resnet20", "--output", str(tmp_path / "a.onnx"), "--report-json",
                 str(tmp_path / "a.json")]) == 0
    assert (tmp_path / "a.json").exists()
    assert main(["--model", "mobilenet_v3_small", "--input-shape", "1,3,64,64", "--output",
                 str(tmp_path / "b.onnx")]) == 0


@pytest.mark.parametrize("args,expect", [
    (["--model", "no_such_model"], "ModelNotFoundError: unknown model 'no_such_model'"),
    (["--model", "missing.py:make"], "model file missing.py does not exist"),
    (["--model", "resnet20", "--input-shape", "1,3,x"], "bad shape '1,3,x'"),
    (["--model", "resnet20", "--input-shape", "1,4,32,32"], "ShapeError: node 'conv1'"),
    (["--model", "resnet20", "--checkpoint", "nonexistent.pt"], "checkpoint nonexistent.pt does not exist"),
    (["--model", "resnet20", "--checkpoint", "CORRUPT"], "cannot be read with torch.load(weights_only=True)"),
    (["--model", "resnet20", "--checkpoint", "WRONG"], "does not fit CifarResNet"),
    (["--model", "resnet20", "--output", "no/such/dir/x.onnx"], "output folder"),
])
def test_bad_arguments_exit_2_without_traceback_or_output(args, expect, tmp_path):
    (tmp_path / "CORRUPT").write_bytes(b"\x00not a checkpoint")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "WRONG")
    if "--output" not in args:
        args = args + ["--output", "out.onnx"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert expect in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(p.suffix == ".onnx" or ".tmp" in p.name for p in tmp_path.iterdir())

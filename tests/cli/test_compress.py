import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fxcompress.cli.common import guarded
from fxcompress.cli.main import main
from fxcompress.recipes import load_recipe
from fxcompress.train.checkpoint import read_checkpoint

# a tiny digits run: 2 epochs of pretraining, ResRep for 6 epochs (masking every 4 steps), 3 of distillation
ARGS = ["compress", "--model", "small_cnn", "--pretrain-epochs", "2", "--data", "digits", "--prune", "resrep",
        "--target-macs", "0.5", "--distill", "kd", "--int8", "kl", "--epochs", "6", "--lr", "0.005",
        "--set", "pipeline.ResRep.mask_interval=4", "--set", "pipeline.ResRep.step_channels=8",
        "--set", "pipeline.ResRep.lasso_strength=0.03", "--set", "pipeline.Distill.epochs=3",
        "--set", "data.calib_images=128", "--set", "settings.latency_runs=0", "--set", "settings.threads=1"]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def compress(out, *extra, wait=True, launcher=(sys.executable,)):
    cmd = [*launcher, "-m", "fxcompress", *ARGS, "--output", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def initializers(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def descendants(pid):
    """Process ids of `pid`'s children, grandchildren..., from /proc."""
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        found = children.get(todo.pop(), [])
        out += found
        todo += found
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_during_resrep(out, launcher):
    """Start the run and SIGKILL it (all its processes) as soon as ResRep has checkpointed an epoch;
    returns the epochs ResRep had saved."""
    proc = compress(out, wait=False, launcher=launcher)
    resrep = out / "checkpoints" / "01_ResRep" / "last.pt"
    deadline = time.time() + 240
    while not resrep.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    pids = [proc.pid, *descendants(proc.pid)]   # torchrun starts its workers in sessions of their own
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    time.sleep(1)   # nothing is left running to write more checkpoints
    epochs_done = read_checkpoint(str(resrep))["epoch"]
    assert not [pid for pid in pids if alive(pid)] and epochs_done < 6
    assert not (out / "compressed.onnx").exists() and not (out / "report.json").exists()
    return epochs_done


def same_weights(a_path, b_path):
    a, b = initializers(a_path), initializers(b_path)
    assert a.keys() == b.keys() and any(v.dtype == np.int8 for v in a.values())
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


def test_killed_run_resumes_to_the_same_int8_weights(tmp_path):
    whole = compress(tmp_path / "whole")
    killed = tmp_path / "killed"
    epochs_done = kill_during_resrep(killed, (sys.executable,))
    pretrain = killed / "checkpoints" / "00_pretrain" / "last.pt"
    stamp = pretrain.stat().st_mtime_ns

    resumed = compress(killed, "--resume")
    # it went on from the checkpoints: no pretraining again, ResRep from the epoch after the last one saved
    assert "pretrain epoch" not in resumed.stderr and pretrain.stat().st_mtime_ns == stamp
    assert f"ResRep epoch {epochs_done + 1}/6" in resumed.stderr
    assert f"ResRep epoch {epochs_done}/6" not in resumed.stderr
    assert "pretrain epoch 2/2" in whole.stderr and "ResRep epoch 1/6" in whole.stderr
    same_weights(tmp_path / "whole" / "compressed.onnx", killed / "compressed.onnx")
    # the recipe it ran is written beside the outputs, and runs as it is
    assert load_recipe(str(killed / "recipe.yaml")).data == load_recipe(str(tmp_path / "whole" / "recipe.yaml")).data


@pytest.mark.slow
def test_killed_torchrun_resumes_to_the_same_int8_weights(tmp_path):
    """The same under `torchrun --nproc_per_node=2` (DDP, gloo): rank 0 checkpoints, every rank resumes."""
    whole = compress(tmp_path / "whole", launcher=TORCHRUN)
    assert whole.stderr.count("ResRep epoch 6/6") == 1   # one rank reports
    epochs_done = kill_during_resrep(tmp_path / "killed", TORCHRUN)
    resumed = compress(tmp_path / "killed", "--resume", launcher=TORCHRUN)
    assert f"ResRep epoch {epochs_done + 1}/6" in resumed.stderr and "pretrain epoch" not in resumed.stderr
    same_weights(tmp_path / "whole" / "compressed.onnx", tmp_path / "killed" / "compressed.onnx")
    assert sorted(os.listdir(tmp_path / "killed")) == sorted(os.listdir(tmp_path / "whole"))


@pytest.mark.parametrize("args,expect", [
    (["--model", "small_cnn", "--data", "nowhere/"], "--data: data path {tmp}/nowhere does not exist"),
    (["--model", "small_cnn", "--data", "digits", "--target-macs", "2"],
     "--target-macs: 2.0 is out of range: give a number in (0, 1)"),
    (["--model", "small_cnn", "--data", "digits", "--distill", "vid"],
     "--distill: the vid loss needs student_nodes (the layers to match, e.g. [layer3]); add student_nodes"),
    (["--model", "small_cnn", "--data", "digits", "--checkpoint", "w.pt"], "--checkpoint: checkpoint {tmp}/w.pt does "
                                                                          "not exist"),
    (["--model", "small_cnn", "--data", "digits", "--epochs", "0"], "--epochs: 0 is out of range"),
])
def test_bad_flags_name_the_flag(args, expect, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert guarded("fxcompress", main, ["compress", *args, "--output", str(tmp_path / "out")]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and expect.replace("{tmp}", str(tmp_path)) in line, line
    assert os.listdir(tmp_path) == []

import json
import os
import subprocess
import sys

import pytest
import torch

from fxcompress.cli.common import guarded
from fxcompress.cli.main import main

GOOD = "model: {name: small_cnn}\ndata: {kind: digits}\npipeline: [FoldBatchNorm, ExportONNX]\n" \
       "settings: {latency_runs: 0}\n"

UNTRACEABLE = """import torch.nn as nn


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:   # Python on a tensor's value: no graph holds it
            y = -y
        return self.fc(y.flatten(1))


def make():
    return Branchy()
"""


def _with(old, new):
    return GOOD.replace(old, new)


# (recipe text, extra arguments, what the one line must say); r.yaml's lines: 1 model, 2 data, 3 pipeline, 4 settings
BAD_RECIPES = {
    "yaml syntax": ("model: {name: small_cnn\ndata: [\n", [],
                    "r.yaml line 2, column 5: not valid YAML: expected ',' or '}'"),
    "empty file": ("# nothing yet\n", [], "r.yaml: a recipe is a mapping with model, data and pipeline keys; got an "
                                         "empty file"),
    "unknown top-level key": (GOOD + "modle: {}\n", [], "r.yaml line 5: modle: unknown top-level key 'modle'; did "
                                                        "you mean model?"),
    "missing section": ("model: {name: small_cnn}\ndata: {kind: digits}\n", [], "missing the 'pipeline' section"),
    "unknown pass": (_with("[FoldBatchNorm", "[ResRepp"), [], "r.yaml line 3: pipeline[0]: unknown pass 'ResRepp'; "
                     "did you mean ResRep? valid: CountFlops, ResRep, MagnitudePrune, FineTune, Distill, FoldBatchNorm,"
                     " QuantizeINT8, ExportONNX"),
    "unknown option": (_with("[FoldBatchNorm", "[{ResRep: {target_mac: 0.4}}"), [],
                       "r.yaml line 3: pipeline[0].ResRep.target_mac: unknown ResRep option 'target_mac'; did you mean "
                       "target_macs? valid: target_macs, lasso_strength, epochs,"),
    "wrong type": (_with("[FoldBatchNorm", "[{ResRep: {epochs: ten}}"), [],
                   "r.yaml line 3: pipeline[0].ResRep.epochs: expected an integer, got str 'ten'"),
    "out-of-range value": (_with("[FoldBatchNorm", "[{ResRep: {target_macs: 1.5}}"), [],
                           "pipeline[0].ResRep.target_macs: 1.5 is out of range: give a number in (0, 1)"),
    "invalid choice": (_with("[FoldBatchNorm", "[{QuantizeINT8: {method: entropy}}"), [],
                       "pipeline[0].QuantizeINT8.method: str 'entropy' is not one of kl, minmax, percentile"),
    "duplicate key": (GOOD + "data: {kind: cifar10}\n", [], "r.yaml line 5: duplicate key 'data' (first at line 2)"),
    "pass after quantization": (_with("[FoldBatchNorm", "[QuantizeINT8, FineTune"), [],
                                "pipeline[1].FineTune: FineTune cannot follow QuantizeINT8"),
    "option the pass refuses": (_with("[FoldBatchNorm", "[{QuantizeINT8: {num_bins: 1000}}"), [],
                                "r.yaml line 3: pipeline[0].QuantizeINT8: num_bins must be a power of two"),
    "unknown data kind": (_with("digits", "imagenet"), [],
                          "r.yaml line 2: data.kind: str 'imagenet' is not one of cifar10, image_folder, digits"),
    "missing data path": (_with("{kind: digits}", "{kind: image_folder, path: nowhere}"), [],
                          "r.yaml line 2: data.path: data path {tmp}/nowhere does not exist"),
    "empty data set": (_with("{kind: digits}", "{kind: image_folder, path: empty}"), [],
                       "DataError: {tmp}/r.yaml line 2: data.path: no images found in {tmp}/empty/train"),
    "unknown model": (_with("small_cnn", "no_such_net"), [],
                      "ModelNotFoundError: {tmp}/r.yaml line 1: model.name: unknown model 'no_such_net'"),
    "missing model file": (_with("small_cnn", "missing.py:make"), [],
                           "r.yaml line 1: model.name: model file {tmp}/missing.py does not exist"),
    "missing checkpoint": (_with("small_cnn}", "small_cnn, checkpoint: nope.pt}"), [],
                           "r.yaml line 1: model.checkpoint: checkpoint {tmp}/nope.pt does not exist"),
    "unreadable checkpoint": (_with("small_cnn}", "small_cnn, checkpoint: CORRUPT}"), [],
                              "CheckpointError: {tmp}/r.yaml line 1: model.checkpoint: checkpoint {tmp}/CORRUPT cannot "
                              "be read with torch.load(weights_only=True)"),
    "checkpoint of another model": (_with("small_cnn}", "small_cnn, checkpoint: WRONG}"), [],
                                    "model.checkpoint: checkpoint {tmp}/WRONG does not fit SmallCNN"),
    "untraceable model": (_with("small_cnn", "branchy.py:make"), [], "TraceError: {tmp}/r.yaml line 1: model.name: "),
    "model that does not take the data": (_with("small_cnn", "resnet20"), [],
                                          "ShapeError: {tmp}/r.yaml line 1: model.name: "),
    "unset environment variable": (_with("small_cnn}", "small_cnn, checkpoint: \"${FXC_UNSET_VARIABLE}/w.pt\"}"), [],
                                   "model.checkpoint: environment variable FXC_UNSET_VARIABLE is not set"),
    "bad device": (_with("latency_runs: 0", "device: tpu"), [],
                   "r.yaml line 4: settings.device: 'tpu' is not a device"),
    "output is a file": (GOOD, ["--output", "afile"], "ExportError: output {tmp}/afile is a file; give a folder"),
    "output under a file": (GOOD, ["--output", "afile/run"], "output {tmp}/afile/run cannot be created: {tmp}/afile "
                                                             "is a file"),
    "bad --set": (GOOD, ["--set", "pipeline.FoldBatchNorm"], "--set pipeline.FoldBatchNorm: write --set key=value"),
    "--set of a missing pass": (GOOD, ["--set", "pipeline.ResRep.epochs=2"],
                                "--set pipeline.ResRep.epochs=2: the pipeline has no ResRep pass"),
    "missing recipe file": (None, [], "recipe {tmp}/r.yaml does not exist"),
    "resume without a run": (GOOD, ["--resume"], "--resume: {tmp}/out holds no run to resume (recipe.yaml is "
                                                 "missing)"),
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FXC_UNSET_VARIABLE", raising=False)
    (tmp_path / "CORRUPT").write_bytes(b"\x00not a checkpoint")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "WRONG")
    (tmp_path / "branchy.py").write_text(UNTRACEABLE)
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "cat").mkdir(parents=True)
    (tmp_path / "afile").write_text("")
    return tmp_path


def _files(root):
    return {str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("kind", list(BAD_RECIPES))
def test_bad_recipe_one_line_exit_2_nothing_written(kind, workdir, capsys):
    text, extra, expect = BAD_RECIPES[kind]
    if text is not None:
        (workdir / "r.yaml").write_text(text)
    before = _files(workdir)
    args = ["run", str(workdir / "r.yaml"), *extra]
    code = guarded("fxcompress", main, args if "--output" in extra else args + ["--output", str(workdir / "out")])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fxcompress: error: "), err
    assert expect.replace("{tmp}", str(workdir)) in lines[0], lines[0]
    assert _files(workdir) == before


def test_kinds_of_bad_recipe():
    assert len(BAD_RECIPES) >= 15


def test_through_the_real_entry_point(workdir):
    (workdir / "r.yaml").write_text(_with("[FoldBatchNorm", "[ResRepp"))
    for args, expect in (([str(workdir / "r.yaml")], "unknown pass 'ResRepp'"),):
        proc = subprocess.run([sys.executable, "-m", "fxcompress", "run", *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and expect in proc.stderr, proc.stderr
    assert guarded("fxcompress", main, ["bogus"]) == 2


def test_a_run_writes_outputs_report_and_the_recipe_and_resumes_only_the_same_recipe(workdir, capsys):
    text = ("model: {name: small_cnn, pretrain: {epochs: 1}}\ndata: {kind: digits, calib_images: 64}\n"
            "pipeline: [{FineTune: {epochs: 1}}, FoldBatchNorm, QuantizeINT8, ExportONNX]\nsettings: {latency_runs: 2, "
            "threads: 1}\n")
    (workdir / "r.yaml").write_text(text)
    out = workdir / "run"
    assert guarded("fxcompress", main, ["run", "r.yaml", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert {"baseline.onnx", "compressed_fp32.onnx", "compressed.onnx", "recipe.yaml", "report.json", "report.md",
            "report.html", "checkpoints/00_pretrain/last.pt", "checkpoints/01_FineTune/last.pt"} <= _files(out)
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert [s["name"] for s in stages] == ["baseline", "FineTune", "FoldBatchNorm", "QuantizeINT8", "ExportONNX"]
    assert [s["precision"] for s in stages] == ["fp32"] * 3 + ["int8"] * 2
    for s in stages:   # a file's row has its size and latency, the others neither
        has_file = s["name"] in ("baseline", "FoldBatchNorm", "ExportONNX")
        assert (s["onnx_bytes"] is not None) == has_file and (s["latency_ms"] is not None) == has_file
        row = [line for line in printed.splitlines() if line.startswith(f"| {s['name']} | {s['precision']} |")][-1]
        assert f"{100 * s['top1']:.2f}%" in row
    assert stages[-1]["onnx_bytes"] == os.path.getsize(out / "compressed.onnx")
    assert set(report["curves"]) == {"baseline", "FineTune"} and report["widths"] is None
    assert report["recipe"]["pipeline"][0]["FineTune"]["epochs"] == 1 and report["provenance"]["torch_num_threads"]
    # --resume with the same recipe finishes from the checkpoints; with another one it refuses
    assert guarded("fxcompress", main, ["run", "r.yaml", "--output", str(out), "--resume",
                                        "--set", "settings.latency_runs=0"]) == 0
    assert json.loads((out / "report.json").read_text())["stages"][-1]["top1"] == stages[-1]["top1"]
    capsys.readouterr()
    assert guarded("fxcompress", main, ["run", "r.yaml", "--output", str(out), "--resume",
                                        "--set", "pipeline.FineTune.epochs=2"]) == 2
    assert "ran a different recipe (pipeline[0].FineTune.epochs differs)" in capsys.readouterr().err

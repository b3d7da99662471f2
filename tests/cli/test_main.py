import json
import subprocess
import sys
import time

from fxcompress.recipes import load_recipe


def test_main_job_runs_the_full_pipeline_fast_and_prints_its_table(tmp_path):
    """`python -m fxcompress` with no command: the shipped digits recipe (ResRep -> KD -> FoldBatchNorm ->
    QuantizeINT8 -> ExportONNX) and its report, in under two minutes."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "fxcompress", "--out-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    elapsed = time.time() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 120
    assert "| stage | precision | top-1 | params | MACs | ONNX size | ORT latency b1 | ORT latency b32 |" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["baseline", "ResRep", "Distill", "FoldBatchNorm", "QuantizeINT8", "ExportONNX"]
    baseline, final = stages["baseline"], stages["ExportONNX"]
    assert final["precision"] == "int8" and baseline["top1"] > 0.9
    # the compressed model is the point of the job: it keeps the baseline's accuracy in onnxruntime
    assert final["top1"] >= 0.95 and final["top1"] >= baseline["top1"] - 0.02, (baseline, final)
    assert final["macs"] <= 0.55 * baseline["macs"] and final["onnx_bytes"] < baseline["onnx_bytes"]
    for s in (baseline, stages["FoldBatchNorm"], final):
        assert s["latency_ms"]["b1"] > 0 and s["latency_ms"]["b32"] > 0
    # the training curves, ResRep's with masking and MACs, and the widths it chose
    assert report["curves"]["ResRep"][-1]["macs"] == stages["ResRep"]["macs"]
    assert report["curves"]["ResRep"][-1]["masked_channels"] > 0 and len(report["curves"]["Distill"]) == 5
    assert any(a < b for a, b in zip(report["widths"]["after"], report["widths"]["before"]))
    assert report["recipe"] == load_recipe("digits").data
    # the printed table says what the report says
    for s in report["stages"]:
        printed = [line for line in proc.stdout.splitlines() if line.startswith(f"| {s['name']} | {s['precision']} |")]
        cells = [c.strip() for c in printed[-1].strip("|").split("|")]
        assert cells[2] == f"{100 * s['top1']:.2f}%"
    for name in ("baseline.onnx", "compressed_fp32.onnx", "compressed.onnx", "report.md", "report.html",
                 "recipe.yaml"):
        assert (tmp_path / name).exists(), name
    # one line per epoch in a log (no terminal here), and no per-step bars
    assert proc.stderr.count("ResRep epoch ") == 20 and "it/s" not in proc.stderr


def test_commands_are_dispatched(capsys):
    import pytest

    from fxcompress.cli.main import main
    assert main(["--help"]) == 0 and "python -m fxcompress run RECIPE" in capsys.readouterr().out
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'; commands: run, compress, explain" in capsys.readouterr().err
    for command in ("run", "compress", "explain"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0 and f"python -m fxcompress {command}" in capsys.readouterr().out

import json
import subprocess
import sys
import time


def test_main_job_runs_fast_and_prints_its_table(tmp_path):
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "fxcompress", "--out-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    elapsed = time.time() - start
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 120
    assert "| model | params | MACs | ONNX size | top-1 PyTorch | top-1 ONNX |" in proc.stdout
    summary = json.loads((tmp_path / "report.json").read_text())["summary"]
    baseline, compressed = summary
    assert baseline["model"] == "baseline" and compressed["model"] == "compressed"
    assert baseline["top1_torch"] > 0.9 and abs(baseline["top1_onnx"] - baseline["top1_torch"]) < 0.01
    # the compressed model is the point of the job: it must keep the baseline's accuracy in both runtimes
    for key in ("top1_torch", "top1_onnx"):
        assert compressed[key] >= 0.95, (key, compressed)
        assert compressed[key] >= baseline[key] - 0.02, (key, baseline[key], compressed[key])
    assert compressed["macs"] <= 0.55 * baseline["macs"], (compressed["macs"], baseline["macs"])
    assert compressed["onnx_bytes"] < baseline["onnx_bytes"]
    # the printed table says what the report says
    for row in summary:
        printed = next(line for line in proc.stdout.splitlines() if line.startswith(f"| {row['model']} |"))
        cells = [c.strip() for c in printed.strip("|").split("|")]
        assert int(cells[2].replace(",", "")) == row["macs"]
        assert cells[4] == f"{row['top1_torch']:.2%}" and cells[5] == f"{row['top1_onnx']:.2%}"
    assert (tmp_path / "baseline.onnx").exists() and (tmp_path / "compressed.onnx").exists()

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
    baseline = summary[0]
    assert baseline["top1_torch"] > 0.9 and abs(baseline["top1_onnx"] - baseline["top1_torch"]) < 0.01
    assert (tmp_path / "baseline.onnx").exists() and (tmp_path / "compressed.onnx").exists()

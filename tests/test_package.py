import subprocess
import sys


def test_passes_installs_under_fxcompress_only(tmp_path):
    code = ("import importlib.util, fxcompress, fxcompress.passes;"
            "print(importlib.util.find_spec('passes') is None, fxcompress.passes.ExportONNX.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "fxcompress.passes.export_onnx"]


def test_public_api_names():
    import fxcompress
    for name in ("compile", "CompileResult", "TraceError", "VerificationError", "ExportError", "CheckpointError",
                 "AnalysisPass", "TransformPass", "LoweringPass", "PassContext"):
        assert hasattr(fxcompress, name), name

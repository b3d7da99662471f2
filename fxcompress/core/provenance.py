"""Where a result came from: commit, library versions, threads, CPU and date, recorded in every results file
(a run's report, a benchmark's JSON). No machine paths are recorded.

    info = provenance(ort_threads=2)     # {"git_commit": ..., "versions": {...}, "torch_num_threads": 2, ...}
"""
from __future__ import annotations

import datetime
import importlib
import os
import platform
import subprocess
from typing import Optional

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # above the package


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=SOURCE, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(module: str) -> Optional[str]:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:  # noqa: BLE001 - a missing or broken package is recorded as absent
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(ort_threads: Optional[int] = None, extra_modules=(), **extra) -> dict:
    """A JSON-able record of the code, libraries and machine behind a result. `ort_threads`: the onnxruntime
    intra-op thread count used (None when no onnxruntime session ran)."""
    import torch

    from .. import __version__
    # a commit only for a checkout of this package (not for a copy installed inside some other repository)
    tracked = _git("ls-files", "--error-unmatch", "fxcompress/__init__.py") is not None
    status = _git("status", "--porcelain", "--untracked-files=no") if tracked else None
    info = {
        "fxcompress": __version__,
        "git_commit": _git("rev-parse", "HEAD") if tracked else None,
        "git_dirty": None if status is None else bool(status),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     **{m: _version(m) for m in ("torchvision", "onnxruntime", "onnx", "numpy", *extra_modules)}},
        "torch_num_threads": torch.get_num_threads(),
        "onnxruntime_threads": ort_threads,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    info.update(extra)
    return info

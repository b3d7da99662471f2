"""Where a benchmark figure came from: commit, library versions, threads, CPU and date.

Every benchmark that writes a results file stores `provenance(...)` under its "provenance" key. No machine
paths are recorded (no home directory, venv or checkout location)."""
from __future__ import annotations

import datetime
import importlib
import os
import platform
import subprocess
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
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


def provenance(ort_threads: Optional[int] = None, **extra) -> dict:
    """A JSON-able record of the code, libraries and machine behind a result. `ort_threads`: the
    onnxruntime intra-op thread count the benchmark used (None when it runs no onnxruntime session)."""
    import torch

    status = _git("status", "--porcelain", "--untracked-files=no")
    info = {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     **{m: _version(m) for m in ("torchvision", "onnxruntime", "onnx", "numpy", "torch_pruning")}},
        "torch_num_threads": torch.get_num_threads(),
        "onnxruntime_threads": ort_threads,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    info.update(extra)
    return info


if __name__ == "__main__":
    import json
    print(json.dumps(provenance(), indent=1))


def scrub_paths(text: str) -> str:
    """A results file names no machine path: installed packages as `site-packages/...`, the checkout and
    temporary folders dropped."""
    import re
    text = re.sub(r"/[^\s'\"]*?/site-packages/", "site-packages/", text)
    text = re.sub(r"/tmp/[^\s'\"/]+/", "", text)
    return text.replace(REPO + "/", "")

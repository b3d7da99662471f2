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


# the instruction sets onnxruntime's kernels dispatch on: they decide which INT8 kernels run and how fast (VNNI
# sums u8 x s8 products exactly in int32; AVX2 alone saturates int16 pairs: quant/ort_integer_kernels.py)
KERNEL_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
                   "asimddp", "i8mm", "sve")


def cpu_features() -> str:
    """The KERNEL_FEATURES this CPU has, with its family/model/stepping ("avx2 fma | 25/1/1"): "AMD EPYC" names
    both an AVX2-only and an AVX-512 VNNI machine of this workplace."""
    flags, ident = set(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("flags", "features") and not flags:
                    flags = set(value.split())
                elif key in ("cpu family", "model", "stepping") and key not in ident:
                    ident[key] = value.strip()
    except OSError:
        pass
    names = " ".join(f for f in KERNEL_FEATURES if f in flags) or "unknown"
    return f"{names} | {'/'.join(ident.get(k, '?') for k in ('cpu family', 'model', 'stepping'))}"


def code_state() -> dict:
    """The checkout's commit and whether tracked files differ from it, now (None for an installed copy)."""
    # a commit only for a checkout of this package (not for a copy installed inside some other repository)
    tracked = _git("ls-files", "--error-unmatch", "fxcompress/__init__.py") is not None
    status = _git("status", "--porcelain", "--untracked-files=no") if tracked else None
    return {"git_commit": _git("rev-parse", "HEAD") if tracked else None,
            "git_dirty": None if status is None else bool(status)}


_STARTED_AT: Optional[dict] = None


def record_code_state() -> dict:
    """The code state when this process first asked, kept for its results: a long run computes with the code
    it imported, whatever the checkout holds when it writes its results (a sweep that ran an hour while
    commits landed beside it recorded the later commit). Benchmarks ask when they start."""
    global _STARTED_AT
    if _STARTED_AT is None:
        _STARTED_AT = code_state()
    return _STARTED_AT


def provenance(ort_threads: Optional[int] = None, extra_modules=(), **extra) -> dict:
    """A JSON-able record of the code, libraries and machine behind a result. `ort_threads`: the onnxruntime
    intra-op thread count used (None when no onnxruntime session ran). The commit is the one the process
    started with (`record_code_state`); where the checkout changed since, `checkout_at_write` says to what."""
    import torch

    from .. import __version__
    started, now = record_code_state(), code_state()
    info = {
        "fxcompress": __version__,
        **started,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     **{m: _version(m) for m in ("torchvision", "onnxruntime", "onnx", "numpy", *extra_modules)}},
        "torch_num_threads": torch.get_num_threads(),
        "onnxruntime_threads": ort_threads,
        "cpu_model": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
    }
    if now != started:
        info["checkout_at_write"] = now
    info.update(extra)
    return info

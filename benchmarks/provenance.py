"""Where a benchmark figure came from: commit, library versions, threads, CPU and date
(`fxcompress.core.provenance`, with Torch-Pruning's version too, which some benchmarks compare against).

Every benchmark that writes a results file stores `provenance(...)` under its "provenance" key. No machine
paths are recorded (no home directory, venv or checkout location). The commit is the one the benchmark
started from (taken when it imports this module), not the one the checkout holds when it writes."""
from __future__ import annotations

import os
from typing import Optional

from fxcompress.core.provenance import cpu_model, provenance as _provenance, record_code_state

record_code_state()   # imported when a benchmark starts: its results name the commit it started from

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
__all__ = ["cpu_model", "provenance", "scrub_paths", "REPO"]


def provenance(ort_threads: Optional[int] = None, **extra) -> dict:
    """A JSON-able record of the code, libraries and machine behind a result. `ort_threads`: the
    onnxruntime intra-op thread count the benchmark used (None when it runs no onnxruntime session)."""
    return _provenance(ort_threads, extra_modules=("torch_pruning",), **extra)


def scrub_paths(text: str) -> str:
    """A results file names no machine path: installed packages as `site-packages/...`, the checkout and
    temporary folders dropped."""
    import re
    text = re.sub(r"/[^\s'\"]*?/site-packages/", "site-packages/", text)
    text = re.sub(r"/tmp/[^\s'\"/]+/", "", text)
    return text.replace(REPO + "/", "")


if __name__ == "__main__":
    import json
    print(json.dumps(provenance(), indent=1))

"""write_report: report.json, report.md and report.html from a run summary, each written whole or not at all.

    paths = write_report(summary, "out/")   # {"json": "out/report.json", "md": ..., "html": ...}
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict

from ..core.errors import ExportError
from ..core.files import atomic_write_text, check_writable
from .charts import all_charts
from .html_page import html_report
from .markdown import markdown_report
from .summary import validate_summary

FILES = {"json": "report.json", "md": "report.md", "html": "report.html"}


def json_safe(value):
    """NaN and infinities (a diverged loss) become null: strict JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_report(summary: dict, out_dir: str) -> Dict[str, str]:
    """Validate `summary` (see `fxcompress.reporting.summary`), draw the figures, write the three files into
    `out_dir` (created if missing) and return their paths by kind. Everything is rendered before the first
    file is written, so a bad summary or a failing figure leaves no report behind."""
    clean = validate_summary(summary)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"report folder {out_dir} is a file; give a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the report folder {out_dir}: {e.strerror}; choose another output") from e
    paths = {kind: check_writable(os.path.join(out_dir, name)) for kind, name in FILES.items()}
    texts = {"json": json.dumps(json_safe(clean), indent=2, default=str, allow_nan=False) + "\n",
             "md": markdown_report(clean),
             "html": html_report(clean, all_charts(clean))}
    for kind, path in paths.items():
        atomic_write_text(path, texts[kind])
    return paths

"""report.md: the report's tables in Markdown (the figures are in report.html beside it).

    text = markdown_report(validate_summary(summary))
"""
from __future__ import annotations

import json

from .tables import curve_rows, flat_items, markdown_table, stage_rows, width_rows


def markdown_report(summary: dict) -> str:
    parts = [f"# {summary['title']}", "",
             f"Model `{summary['model']}` on `{summary['data']}`; figures in `report.html`.", "",
             "## Stages", "", markdown_table(stage_rows(summary["stages"])), "",
             "Latencies: onnxruntime, measured side by side in one run; speed-ups are their ratios."]
    widths = width_rows(summary["widths"])
    if widths:
        parts += ["", "## Widths per layer", "", markdown_table(widths)]
    curves = curve_rows(summary["curves"])
    if curves:
        parts += ["", "## Training", "", markdown_table(curves)]
    parts += ["", "## Recipe", "", "```json", json.dumps(summary["recipe"], indent=2, default=str), "```",
              "", "## Provenance", "", markdown_table([["key", "value"], *flat_items(summary["provenance"])]), ""]
    return "\n".join(parts)

"""report.html: one self-contained page (inline CSS, figures as base64 PNG data URIs, no script, nothing
fetched from the network), readable offline and attachable to an e-mail or a CI artefact.

    page = html_report(validate_summary(summary), all_charts(summary))
"""
from __future__ import annotations

import base64
import json
from html import escape
from typing import Dict, Optional

from .tables import Rows, curve_rows, flat_items, stage_rows, width_rows

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #555; } .note { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f2f4f7; } td:first-child, th:first-child { text-align: left; }
tr.int8 td { background: #fdf3ea; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""

MISSING = {  # why a figure can be absent, shown in its place
    "accuracy vs latency per stage": "no stage has both a top-1 and a latency measured",
    "widths per layer, before and after pruning": "no pruning stage: the widths did not change",
}


def table_html(rows: Rows, row_classes=None) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in rows[0])
    body = []
    for i, r in enumerate(rows[1:]):
        cls = f' class="{row_classes[i]}"' if row_classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure_html(caption: str, png: Optional[bytes]) -> str:
    if png is None:
        why = MISSING.get(caption, "nothing recorded")
        return f'<p class="note">{escape(caption)}: not drawn ({escape(why)}).</p>'
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def html_report(summary: dict, charts: Dict[str, Optional[bytes]]) -> str:
    stages = summary["stages"]
    parts = [f"<h1>{escape(summary['title'])}</h1>",
             f'<p class="meta">model <code>{escape(summary["model"])}</code> on <code>{escape(summary["data"])}'
             f"</code>, {len(stages)} stages</p>",
             "<h2>Stages</h2>", table_html(stage_rows(stages), [s["precision"] for s in stages]),
             '<p class="note">Latencies: onnxruntime, measured side by side in one run; speed-ups are their '
             "ratios against the first stage. INT8 rows are shaded.</p>",
             "<h2>Accuracy and latency</h2>", figure_html("accuracy vs latency per stage",
                                                          charts.get("accuracy vs latency per stage")),
             "<h2>Widths per layer</h2>", figure_html("widths per layer, before and after pruning",
                                                      charts.get("widths per layer, before and after pruning"))]
    widths = width_rows(summary["widths"])
    if widths:
        parts.append(f"<details><summary>the widths as a table ({len(widths) - 1} layers)</summary>"
                     f"{table_html(widths)}</details>")
    parts.append("<h2>Training</h2>")
    curve_charts = [(c, png) for c, png in charts.items() if c.startswith("training curves: ")]
    if curve_charts:
        parts.append(table_html(curve_rows(summary["curves"])))
        parts += [figure_html(c, png) for c, png in curve_charts]
    else:
        parts.append('<p class="note">no stage trained.</p>')
    parts += ["<h2>Recipe</h2>", f"<pre>{escape(json.dumps(summary['recipe'], indent=2, default=str))}</pre>",
              "<h2>Provenance</h2>", table_html([["key", "value"], *flat_items(summary["provenance"])])]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(summary['title'])}</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")

"""write_report: three files from one summary, each whole; a bad summary or a failing figure writes none."""
import json
import os

import pytest

from fxcompress.core.errors import ExportError
from fxcompress.reporting import ReportError, write_report
from fxcompress.reporting import write as write_module


def test_writes_json_markdown_and_html(summary, tmp_path):
    paths = write_report(summary, str(tmp_path / "out"))
    assert sorted(os.path.basename(p) for p in paths.values()) == ["report.html", "report.json", "report.md"]
    data = json.loads(open(paths["json"]).read())
    assert data["stages"] == summary["stages"] and data["curves"] == summary["curves"]
    md = open(paths["md"]).read()
    base, int8 = summary["stages"][0], summary["stages"][-1]
    speedup = f"{base['latency_ms']['b32'] / int8['latency_ms']['b32']:.2f}x"
    row = next(line for line in md.splitlines() if line.startswith("| QuantizeINT8 |"))
    assert "| INT8 | 91.02% |" in row and row.rstrip(" |").endswith(speedup)
    assert "| layers.4.conv1 | 32 | 17 | 53% |" in md and '"target_macs": 0.5' in md
    html = open(paths["html"]).read()
    assert html.count('<img alt="') == 4 and html.count("data:image/png;base64,") == 4
    assert "http://" not in html and "https://" not in html and "<script" not in html   # nothing fetched


def test_text_from_the_summary_is_escaped(summary, tmp_path):
    summary["title"] = "<b>net</b> & co"
    summary["stages"][1]["name"] = "<img src=x onerror=alert(1)>"
    html = open(write_report(summary, str(tmp_path))["html"]).read()
    assert "<title>&lt;b&gt;net&lt;/b&gt; &amp; co</title>" in html and "<b>net</b>" not in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_absent_measurements_are_said_not_drawn(summary, tmp_path):
    for s in summary["stages"]:
        s["latency_ms"] = None
    summary["widths"], summary["curves"] = None, {}
    summary["stages"][0]["top1"] = None
    paths = write_report(summary, str(tmp_path))
    html = open(paths["html"]).read()
    assert "<img" not in html and "not drawn (no stage has both a top-1 and a latency measured)" in html
    assert "no stage trained" in html
    assert "| baseline | FP32 | - |" in open(paths["md"]).read()


def test_a_diverged_loss_is_null_in_json(summary, tmp_path):
    summary["curves"]["Distill"][2]["loss"] = float("nan")
    data = json.loads(open(write_report(summary, str(tmp_path))["json"]).read())   # strict JSON parses
    assert data["curves"]["Distill"][2]["loss"] is None


def test_nothing_is_written_when_the_summary_or_a_figure_fails(summary, tmp_path, monkeypatch):
    bad = dict(summary, stages=[dict(summary["stages"][0], precision="fp16")])
    with pytest.raises(ReportError, match="stages.0..precision"):
        write_report(bad, str(tmp_path))
    assert list(tmp_path.iterdir()) == []

    def broken(clean_summary):
        raise RuntimeError("figure failed")
    monkeypatch.setattr(write_module, "all_charts", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        write_report(summary, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_file_is_refused(summary, tmp_path):
    target = tmp_path / "taken"
    target.write_text("")
    with pytest.raises(ExportError, match="taken"):
        write_report(summary, str(target))

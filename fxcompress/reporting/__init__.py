"""Presenting results: the run report (JSON, Markdown, self-contained HTML) and the channel-groups explanation."""
from .summary import ReportError, validate_summary
from .write import write_report

__all__ = ["ReportError", "validate_summary", "write_report"]

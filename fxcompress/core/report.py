"""The compile report: data first (dataclasses and dicts), rendered as Markdown tables and JSON at the edge."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class PassRecord:
    name: str
    kind: str
    seconds: float
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    file_bytes: Optional[int] = None
    metrics: Dict[str, Any] = field(default_factory=dict)


def human(n: Optional[float], unit: str = "") -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}" if isinstance(n, int) or float(n).is_integer() else f"{n:.3g}{unit}"


def _metric(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


@dataclass
class Report:
    model_name: str = "model"
    records: List[PassRecord] = field(default_factory=list)
    capture: dict = field(default_factory=dict)   # how the graph was made (fxcompress.graph.capture)

    def add(self, record: PassRecord) -> None:
        self.records.append(record)

    def to_dict(self) -> dict:
        return {"model": self.model_name, "capture": self.capture, "passes": [asdict(r) for r in self.records]}

    def save_json(self, path: str) -> None:
        from .files import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, default=str))

    def table(self) -> str:
        head = "| pass | kind | time | params | MACs | file | details |\n|---|---|---|---|---|---|---|"
        rows = []
        for r in self.records:
            params = human(r.params_after) if r.params_before == r.params_after else \
                f"{human(r.params_before)} -> {human(r.params_after)}"
            macs = human(r.macs_after) if r.macs_before == r.macs_after else \
                f"{human(r.macs_before)} -> {human(r.macs_after)}"
            details = ", ".join(f"{k}={_metric(v)}" for k, v in r.metrics.items() if not isinstance(v, (dict, list)))
            rows.append(f"| {r.name} | {r.kind} | {r.seconds:.2f}s | {params} | {macs} | "
                        f"{human(r.file_bytes, 'B')} | {details} |")
        return "\n".join([head, *rows])

    def __str__(self) -> str:
        return f"## fxcompress report: {self.model_name}\n\n{self.table()}"

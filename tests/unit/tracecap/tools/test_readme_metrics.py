"""The README's metric table and lists of causes say what tracecap/tools/metrics.py serves."""

from __future__ import annotations

import re
from pathlib import Path

from tracecap.tools import metrics

README = Path(__file__).resolve().parents[4] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n### {title}\n")
    return text[start : text.index("\n### ", start + 1)]


def rows(text: str, columns: int) -> list[list[str]]:
    found = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == columns and not set(cells[0]) <= {"-"}:
            found.append(cells)
    return found[1:]  # without the header


def test_the_metric_table_is_the_declared_metric_set():
    table = rows(section("Metrics").split("Causes of")[0], 4)
    assert [(name, kind, labels, help_) for name, kind, labels, help_ in table] == [
        (f"`{m.name}`", m.type, ", ".join(f"`{label}`" for label in m.labels) or "-", m.help)
        for m in metrics.METRICS
    ]


def test_the_causes_table_names_every_cause_the_tables_serve():
    served = {
        template[-1]
        for table in (metrics.KERNEL_COUNTERS, metrics.COLLECTOR_COUNTERS, metrics.WRITER_COUNTERS)
        for metric, template in table.values()
        if "cause" in metric.labels
    }
    causes_text = section("Metrics").split("Causes of")[1].split("Tracee's metrics")[0]
    listed = {c for cells in rows(causes_text, 4) for c in re.findall(r"`([a-z_]+)`", cells[0])}
    assert listed == served

"""The README's table of artifact kinds says what tracecap/kinds.py declares."""

from __future__ import annotations

import re
from pathlib import Path

from tracecap import kinds

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_rows() -> dict[str, list[str]]:
    text = README.read_text()
    section = text[text.index("## Artifact kinds") :]
    section = section[: section.index("\n## ", 3)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("kind", "---"):
            rows[cells[0]] = cells
    return rows


def words(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell.split("(")[0])


def test_every_kind_has_its_row_and_nothing_else() -> None:
    assert list(readme_rows()) == [kind.name for kind in kinds.KINDS]


def test_each_row_names_the_registry_facts() -> None:
    rows = readme_rows()
    for kind in kinds.KINDS:
        _, capture, topics, writer, events = rows[kind.name]
        assert words(capture) == [w for s in kind.sources for w in s.words], kind.name
        assert words(topics) == [t.decode() for t in kind.topics], kind.name
        assert words(writer) == [kind.writer], kind.name
        listed = [e.strip() for e in events.split("(")[0].split(",") if e.strip()]
        assert listed == list(kind.events), kind.name
        event_topics = {s.event_topic.decode() for s in kind.sources if s.event_topic}
        for topic in event_topics:
            assert f"`{topic}`" in topics, kind.name

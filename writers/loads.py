"""Object writers whose every index record is one load attempt: kernel modules, BPF programs.

Each such record also goes to ``events.jsonl`` (``writers.events.attempt_record``), at the moment
it goes to the index: the timeline then has every attempt, failed or not, with the artifact that
holds its image (``path`` for the attempt that stored it, ``duplicate_of`` for the others).
"""

from __future__ import annotations

from typing import Any

from writers.events import attempt_record, events_file
from writers.objects import ObjectWriter


class LoadWriter(ObjectWriter):
    """An ``ObjectWriter`` that records every attempt, duplicates included, in the index and in
    ``events.jsonl`` (the kind must be in ``writers.events.LOAD_ATTEMPTS``)."""

    records_duplicates = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._events = events_file(self._out, self._index)
        self.counters.update(events_written=0, events_errors=0)

    def _append(self, record: dict[str, Any]) -> None:
        super()._append(record)
        attempt = attempt_record(record)
        if attempt is not None and self._events.append_or_count(
            attempt, self.counters, self._log, f"{attempt['event']} event", "events_errors"
        ):
            self.counters["events_written"] += 1

    def close(self) -> None:
        super().close()
        self._events.close()

"""The memory writer: one artifact per content per region and process, occurrences counted on it
(the writer's sha256 and the kernel's repeats), alerts aggregated, budget reports, zero pages;
and the pure bookkeeping of writers/memevents.py."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.support.envelopes import mem_env
from tests.support.writer_harness import FakeClock, WriterHarness
from writers import memevents
from writers.memevents import AlertLog, Occurrences, budget_record
from writers.memory import MemoryWriter

W_TO_E = "Protection changed from W to E!"
CODE = b"\x55\x48\x89\xe5" + bytes(4092)  # push rbp; mov rbp, rsp; then zeros: one page


class Harness(WriterHarness[MemoryWriter]):
    """Each message is a whole object: ``obj_len`` is the payload's."""

    def __init__(self, root: Path) -> None:
        clock = self.clock = FakeClock()
        super().__init__(root, lambda out, index: MemoryWriter(out, index, clock=clock))

    def dump(self, payload: bytes, obj_id: int, ts: int, **env: Any) -> None:
        self.send(payload, mem_env(obj_id=obj_id, ts=ts, obj_len=len(payload),
                                   size=len(payload), **env))  # fmt: skip

    def event(self, obj_id: int, ts: int, **env: Any) -> None:
        """A message of no bytes (an alert, a repeat, a skipped dump, a report)."""
        self.send(None, mem_env(obj_id=obj_id, ts=ts, obj_len=0, **env))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["kind"] == kind]


@pytest.fixture
def h(tmp_path: Path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_the_same_bytes_at_the_same_address_are_one_artifact_with_occurrences(h: Harness) -> None:
    for n in range(3):
        h.dump(CODE, obj_id=n, ts=1000 + n)
    (first,) = h.of("mem")
    assert first["path"] == "host/mem.pid-100.ts-1000" and first["occurrences"] == 1
    assert h.listing() == ["mem.pid-100.ts-1000"]
    h.clock.now += memevents.AGGREGATE_SECONDS
    h.writer.tick(h.clock.now)
    first, again = h.of("mem")
    assert again["path"] == first["path"] and again["sha256"] == hashlib.sha256(CODE).hexdigest()
    assert (again["occurrences"], again["occurrence_ts"], again["last_ts"]) == (
        3, [1000, 1001, 1002], 1002,
    )  # fmt: skip
    assert h.writer.counters["repeats"] == 2 and h.writer.counters["artifacts"] == 1


def test_changed_bytes_another_address_or_process_are_new_artifacts(h: Harness) -> None:
    h.dump(CODE, obj_id=1, ts=1)
    h.dump(CODE[:-1] + b"\xc3", obj_id=2, ts=2)  # the region's content changed
    h.dump(CODE, obj_id=3, ts=3, addr=0x7F0000010000)
    h.dump(CODE, obj_id=4, ts=4, pid=101)
    assert [r["occurrences"] for r in h.of("mem")] == [1, 1, 1, 1]
    assert len(h.listing()) == 4 and h.writer.counters["repeats"] == 0


def test_an_incomplete_dump_is_never_the_reference_of_a_later_one(h: Harness) -> None:
    h.send(CODE[:100], mem_env(obj_id=1, ts=1, obj_len=len(CODE), size=len(CODE),
                               lost=[[100, len(CODE)]]))  # fmt: skip
    h.dump(CODE[:100] + bytes(len(CODE) - 100), obj_id=2, ts=2)  # what the holes read as
    assert [r["complete"] for r in h.of("mem")] == [False, True]


def test_a_kernel_repeat_counts_on_the_artifact_it_names(h: Harness) -> None:
    h.dump(CODE, obj_id=7, ts=10)
    h.event(8, 11, dump="repeat", same_as=7)
    h.event(9, 12, dump="repeat", same_as=7)
    h.writer.close()
    first, again = h.of("mem")
    assert (again["path"], again["occurrences"], again["occurrence_ts"]) == (
        first["path"], 3, [10, 11, 12],
    )  # fmt: skip
    assert h.of("mem_alert") == []


def test_a_repeat_of_an_object_deduplicated_by_the_writer_reaches_the_artifact(h: Harness) -> None:
    """The kernel names the last dump it sent; the writer may have found it a duplicate."""
    h.dump(CODE, obj_id=1, ts=1)
    h.dump(CODE, obj_id=2, ts=2)  # the kernel's memory of the region was gone: sent again
    h.event(3, 3, dump="repeat", same_as=2)
    h.writer.close()
    assert h.of("mem")[-1]["occurrences"] == 3


def test_a_repeat_of_an_unknown_object_is_an_alert_record(h: Harness) -> None:
    h.event(5, 50, dump="repeat", same_as=4)
    h.writer.close()
    (rec,) = h.of("mem_alert")
    assert (rec["dump"], rec["same_as"], rec["alert"], rec["occurrences"]) == (
        "repeat", 4, W_TO_E, 1,
    )  # fmt: skip


def test_alerts_without_bytes_are_aggregated_per_region_and_outcome(h: Harness) -> None:
    mmap = {"syscall": "mmap", "alert": "Mmaped region with W+E permissions!", "dump": "none",
            "prot_before": 0, "prot_after": 7}  # fmt: skip
    h.event(1, 100, **mmap)
    for n in range(5):
        h.event(10 + n, 200 + n, dump="budget", addr=0x7F0000020000)
    h.event(20, 300, dump="budget", addr=0x7F0000030000)
    assert h.of("mem_alert") == []  # held for a second
    h.clock.now += memevents.AGGREGATE_SECONDS
    h.writer.tick(h.clock.now)
    recs = h.of("mem_alert")
    assert [(r["syscall"], r["dump"], r["address"], r["occurrences"]) for r in recs] == [
        ("mmap", "none", 0x7F0000000000, 1),
        ("mprotect", "budget", 0x7F0000020000, 5),
        ("mprotect", "budget", 0x7F0000030000, 1),
    ]
    assert recs[0]["alert"] == "Mmaped region with W+E permissions!"
    assert recs[0]["prot_after_rwx"] == "rwx" and recs[0]["path"] is None
    assert recs[1]["occurrence_ts"] == [200, 201, 202, 203, 204]
    assert not (h.root / "host").exists() and h.writer.counters["alert_records"] == 3


def test_skips_are_reported_once_per_object(h: Harness) -> None:
    skipped = {"skipped_events": 500, "skipped_dumps": 510, "skipped_bytes": 510 << 16}
    h.send(CODE[:2048], mem_env(obj_id=1, ts=1, obj_len=4096, size=4096, last=False, **skipped))
    h.send(CODE[2048:], mem_env(obj_id=1, ts=1, obj_off=2048, obj_len=4096, size=4096,
                                **skipped))  # fmt: skip
    h.event(2, 2, syscall="exit", alert="", dump="none", skipped_events=3, skipped_dumps=0,
            skipped_bytes=0)  # fmt: skip
    budget = h.of("mem_budget")
    assert [(r["skipped_events"], r["skipped_dumps"], r["skipped_bytes"]) for r in budget] == [
        (500, 510, 510 << 16), (3, 0, 0),
    ]  # fmt: skip
    assert [r["reported_by"] for r in budget] == ["mprotect", "exit"]
    assert h.of("mem_alert") == []  # an exit's report is no alert
    assert len(h.of("mem")) == 1


def test_zero_ranges_are_in_the_record(h: Harness) -> None:
    region = CODE + bytes(8192)
    h.dump(region, obj_id=1, ts=1, zero=[[4096, 12288]])
    (rec,) = h.of("mem")
    assert rec["zero_ranges"] == [[4096, 12288]] and rec["complete"] is True
    assert (h.root / rec["path"]).read_bytes() == region
    h.dump(region, obj_id=2, ts=2, zero=[[4096, 12288]])  # an occurrence: nothing kept of it
    assert h.writer.counters["repeats"] == 1 and h.writer._zero == {}


@pytest.mark.parametrize("zero", [[[5, 1]], [[0]], "no", [[-1, 4]], [[0, 1]] * 20000])
def test_bad_zero_ranges_are_refused_and_the_region_still_stored(h: Harness, zero: Any) -> None:
    h.dump(CODE, obj_id=1, ts=1, zero=zero)
    (rec,) = h.of("mem")
    assert rec["zero_ranges"] == [] and h.writer.counters["rejected"] == 1


def test_occurrence_times_are_bounded_and_the_count_goes_on() -> None:
    seen = Occurrences(0)
    for ts in range(1, 100):
        seen.add(ts)
    fields = seen.fields()
    assert fields["occurrences"] == 100 and fields["last_ts"] == 99
    assert fields["occurrence_ts"] == list(range(memevents.MAX_OCCURRENCE_TS))
    assert fields["occurrence_ts_truncated"] is True


def test_the_alert_log_writes_its_oldest_early_past_its_bound(monkeypatch) -> None:
    monkeypatch.setattr(memevents, "MAX_AGGREGATES", 2)
    log = AlertLog()
    env = dict(mem_env(), epoch=1, dump="budget")
    assert log.add(dict(env, addr=1), 0.0) == [] and log.add(dict(env, addr=2), 0.0) == []
    (early,) = log.add(dict(env, addr=3), 0.0)
    assert early["address"] == 1 and len(log) == 2


def test_budget_record_is_none_without_skips() -> None:
    assert budget_record(dict(mem_env(), epoch=1)) is None

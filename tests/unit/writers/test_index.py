"""index.jsonl: a record is appended whole or not at all, whatever the disk does; lost records
are counted; the last line about a path is found again from the end."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

import writers.index as index_mod
from writers.index import Index, chunk_lines, encode_record, last_line_matching
from writers.outdir import OutputDir


@pytest.fixture
def out(tmp_path: Path):
    od = OutputDir(str(tmp_path / "out"))
    yield od
    od.close()


def lines(tmp_path: Path) -> list[dict]:
    """Every line of the index, each of which must be a JSON object."""
    data = (tmp_path / "out" / "index.jsonl").read_bytes()
    assert not data or data.endswith(b"\n")
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def short_by(n: int):
    """A write that takes all but ``n`` bytes, as a disk that fills mid-record."""

    def write(fd: int, data: bytes) -> int:
        return os.write(fd, data[: max(0, len(data) - n)])

    return write


def test_a_short_write_is_cut_back_and_the_next_record_is_whole(out, tmp_path) -> None:
    Index(out).append({"n": 1})
    torn = Index(out, write=short_by(3))
    with pytest.raises(OSError) as info:
        torn.append({"n": 2, "pad": "x" * 50})
    assert info.value.errno == errno.ENOSPC
    Index(out).append({"n": 3})
    assert lines(tmp_path) == [{"n": 1}, {"n": 3}]


def test_a_failed_write_leaves_the_file_as_it_was(out, tmp_path) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    Index(out).append({"n": 1})
    before = (tmp_path / "out" / "index.jsonl").read_bytes()
    with pytest.raises(OSError):
        Index(out, write=full).append({"n": 2})
    assert (tmp_path / "out" / "index.jsonl").read_bytes() == before


def test_a_cut_that_fails_is_done_before_the_next_record(out, tmp_path) -> None:
    cuts: list[int] = []

    def failing_truncate(fd: int, length: int) -> None:
        cuts.append(length)
        if len(cuts) == 1:
            raise OSError(errno.EIO, "I/O error")
        os.ftruncate(fd, length)

    writes = iter([short_by(4), os.write])
    index = Index(out, write=lambda fd, data: next(writes)(fd, data), truncate=failing_truncate)
    with pytest.raises(OSError):
        index.append({"n": 1, "pad": "y" * 20})
    index.append({"n": 2})
    assert cuts == [0, 0]
    assert lines(tmp_path) == [{"n": 2}]


def test_lost_records_are_counted_as_index_errors(out, tmp_path) -> None:
    index = Index(out, write=short_by(1))
    counters: dict[str, int] = {}
    logged: list[str] = []
    assert not index.append_or_count({"n": 1}, counters, lambda k, m: logged.append(k), "rec")
    assert counters == {"index_errors": 1} and logged == ["index_error"]
    assert (tmp_path / "out" / "index.jsonl").read_bytes() == b""


def test_records_appended_together_go_whole_or_not_at_all(out, tmp_path) -> None:
    """A batch is one write: a record that is not JSON is left out alone; a short write takes
    none of them (one error: one append failed), and the next batch is whole."""
    counters: dict[str, int] = {}
    logged: list[str] = []

    def log(kind: str, msg: str) -> None:
        logged.append(kind)

    index = Index(out)
    batch = [{"n": 1}, {"n": float("nan")}, {"n": 3}]
    assert index.append_all_or_count(batch, counters, log, "recs") == [True, False, True]
    torn = Index(out, write=short_by(2))
    assert torn.append_all_or_count([{"n": 4}, {"n": 5}], counters, log, "recs") == [False] * 2
    assert index.append_all_or_count([{"n": 6}], counters, log, "recs") == [True]
    assert lines(tmp_path) == [{"n": 1}, {"n": 3}, {"n": 6}]
    assert counters == {"index_errors": 2} and logged == ["index_error"] * 2


@pytest.mark.parametrize("errors", ["index_errors", "events_errors"])
def test_single_and_batch_appends_count_the_same_way(out, tmp_path, errors: str) -> None:
    """One record goes through the batch path: its line is the batch's line, and a record that
    is not JSON, a short write and a closed fd (ValueError from flock(-1)) are each counted
    once under ``errors`` and logged, never raised, on either path."""
    counters: dict[str, int] = {}
    logged: list[tuple[str, str]] = []

    def log(kind: str, msg: str) -> None:
        logged.append((kind, msg))

    index = Index(out)
    assert index.append_or_count({"n": 1, "s": "\u00e9"}, counters, log, "one", errors)
    assert index.append_all_or_count([{"n": 2}], counters, log, "many", errors) == [True]
    assert (tmp_path / "out" / "index.jsonl").read_bytes() == (
        b'{"n": 1, "s": "\\u00e9"}\n{"n": 2}\n'
    )
    assert counters == {} and logged == []
    nan = {"n": float("nan")}
    assert not index.append_or_count(nan, counters, log, "one", errors)
    assert index.append_all_or_count([nan], counters, log, "many", errors) == [False]
    torn = Index(out, write=short_by(1))
    assert not torn.append_or_count({"n": 3}, counters, log, "one", errors)
    assert torn.append_all_or_count([{"n": 4}], counters, log, "many", errors) == [False]
    index.close()
    assert not index.append_or_count({"n": 5}, counters, log, "one", errors)
    assert index.append_all_or_count([{"n": 6}, {"n": 7}], counters, log, "many", errors) == [
        False,
        False,
    ]
    assert counters == {errors: 6}
    assert [kind for kind, _ in logged] == [errors.removesuffix("s")] * 6
    assert [msg.split(" not written: ")[0] for _, msg in logged] == ["one", "many"] * 3
    assert "negative" in logged[-1][1]  # the closed fd's ValueError, not an OSError
    assert lines(tmp_path) == [{"n": 1, "s": "\u00e9"}, {"n": 2}]


def test_a_batch_is_cut_where_the_rotation_size_would_be_passed() -> None:
    """Appends of at most the limit, so segments keep to their size; a line over the limit is
    an append of its own; records left out (None) are in none; no limit: one append."""
    lines = [b"a" * 400, None, b"b" * 400, b"c" * 400, b"d" * 1500, b"e" * 10]
    assert chunk_lines(lines, 1024) == [[0, 2], [3], [4], [5]]
    assert chunk_lines(lines, None) == [[0, 2, 3, 4, 5]]
    assert chunk_lines([None, None], 1024) == []


def test_several_processes_share_the_index(out, tmp_path) -> None:
    a, b = Index(out), Index(out, write=short_by(2))
    for n in range(20):
        a.append({"a": n})
        with pytest.raises(OSError):
            b.append({"b": n})
    assert lines(tmp_path) == [{"a": n} for n in range(20)]
    assert stat.S_IMODE((tmp_path / "out" / "index.jsonl").stat().st_mode) == 0o640


def test_a_reader_holding_the_lock_only_delays_appends(out, tmp_path) -> None:
    """A reader of the index (the group may read it) holds its lock: a record still goes out
    after ``lock_timeout``, later ones without waiting for a while, and a torn one is cut back
    only when nothing was appended after it."""
    import fcntl

    index = Index(out, write=short_by(2), lock_timeout=0.05)
    holder = os.open(tmp_path / "out" / "index.jsonl", os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_SH)
    try:
        with pytest.raises(OSError):
            index.append({"n": 1, "pad": "z" * 10})
        with pytest.raises(OSError):
            index.append({"n": 2, "pad": "z" * 10})
        assert index.unlocked_appends == 2
        other = Index(out, lock_timeout=0.0)
        other.append({"n": 3})
        assert other.unlocked_appends == 1
    finally:
        os.close(holder)
    assert lines(tmp_path) == [{"n": 3}]


def test_encode_record_is_one_ascii_line() -> None:
    data = encode_record({"comm": "a\nb\u2028\xff", "n": 1})
    assert data.endswith(b"\n") and data.count(b"\n") == 1 and data.isascii()
    with pytest.raises(ValueError):
        encode_record({"x": float("inf")})


def _reader(data: bytes):
    return len(data), lambda length, off: data[off : off + length]


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
def test_last_line_matching_reads_backwards_across_blocks(monkeypatch, block: int) -> None:
    monkeypatch.setattr(index_mod, "_SCAN_BLOCK", block)
    records = [{"path": f"host/f{i % 3}", "n": i} for i in range(10)]
    lines = [encode_record(r) for r in records]
    lines.insert(9, b'{"path": "host/f1", "n": 99\n')  # torn: skipped, never taken as a record
    data = b"".join(lines)
    size, read_at = _reader(data)
    found = last_line_matching(read_at, size, b'"host/f1"', lambda r: r["path"] == "host/f1")
    assert found == {"path": "host/f1", "n": 7}
    first = last_line_matching(read_at, size, b'"n": 0', lambda r: r["n"] == 0)
    assert first == {"path": "host/f0", "n": 0}
    assert last_line_matching(read_at, size, b"host/f9", lambda r: True) is None


def test_last_line_matching_stops_at_max_bytes() -> None:
    old = encode_record({"path": "old"})
    data = old + b"".join(encode_record({"path": "new", "n": i}) for i in range(50))
    size, read_at = _reader(data)
    assert last_line_matching(read_at, size, b"old", lambda r: True, max_bytes=len(data)) == {
        "path": "old"
    }
    cut = len(data) - 1
    assert last_line_matching(read_at, size, b"old", lambda r: True, max_bytes=cut) is None


def test_find_last_reads_the_index_back(out) -> None:
    index = Index(out)
    for n in range(5):
        index.append({"path": "host/a" if n % 2 else "host/b", "n": n})
    assert index.find_last(b"host/a", lambda r: r["path"] == "host/a") == {"path": "host/a", "n": 3}
    index.close()

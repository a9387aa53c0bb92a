"""The journal of open artifacts: encoding, replay after a crash, torn lines, compaction."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from writers.journal import Journal, encode_closed, encode_state, journal_name, replay, split_lines
from writers.outdir import OutputDir


@pytest.fixture
def out(tmp_path: Path):
    od = OutputDir(str(tmp_path / "out"))
    yield od
    od.close()


def test_replay_keeps_the_latest_state_of_what_is_still_open() -> None:
    lines = [
        encode_state("host/a", {"v": 1}),
        encode_state("host/b", {"v": 1}),
        encode_state("host/a", {"v": 2}),
        encode_closed("host/b"),
        encode_state("host/c", {"v": 1}),
    ]
    states, bad = replay(lines)
    assert states == {"host/a": {"v": 2}, "host/c": {"v": 1}} and bad == 0
    assert list(states) == ["host/a", "host/c"]  # earliest opened first


def test_replay_counts_what_it_cannot_read() -> None:
    whole = encode_state("host/a", {"v": 1})
    lines = [
        whole,
        whole[: len(whole) // 2],  # torn by a crash mid-write
        b"[1, 2]",
        b'{"op": "open", "path": 3, "state": {}}',
        b'{"op": "open", "path": "host/x", "state": []}',
        b'{"op": "rename", "path": "host/a"}',
        b"",
        b"   ",
    ]
    states, bad = replay(lines)
    assert states == {"host/a": {"v": 1}} and bad == 5


def test_split_lines_turns_an_overlong_line_into_a_bad_one() -> None:
    data = encode_state("host/a", {"v": 1}) + b"x" * 500 + b"\n"
    assert replay(split_lines(data, max_line=200)) == ({"host/a": {"v": 1}}, 1)
    assert replay(split_lines(data))[1] == 1  # not JSON either way


def test_the_journal_survives_its_writer(out, tmp_path: Path) -> None:
    j = Journal(out, "file")
    assert j.opened("host/a", {"v": 1}) and j.opened("host/b", {"v": 1})
    assert j.closed("host/a")
    j.close()  # the process died (the kernel closes its fds); its successor reads what it left
    again = Journal(out, "file")
    assert again.load() == {"host/b": {"v": 1}} and again.bad_lines == 0
    assert (tmp_path / "out" / journal_name("file")).exists()


def test_a_short_journal_write_is_reported_and_does_not_tear_the_next(out) -> None:
    calls: list[int] = []

    def write(fd: int, data: bytes) -> int:
        calls.append(len(data))
        return os.write(fd, data[:10] if len(calls) == 1 else data)

    j = Journal(out, "file", write=write)
    assert not j.opened("host/a", {"v": 1})
    assert j.opened("host/b", {"v": 2})
    j.close()
    again = Journal(out, "file")
    assert again.load() == {"host/b": {"v": 2}} and again.bad_lines == 1


def test_compaction_keeps_only_the_open_states(out, tmp_path: Path) -> None:
    j = Journal(out, "file", compact_bytes=200)
    for n in range(10):
        j.opened(f"host/{n}", {"v": n})
        j.closed(f"host/{n}")
    j.opened("host/open", {"v": 1})
    assert j.wants_compaction()
    assert j.compact({"host/open": {"v": 1}})
    assert not j.wants_compaction()
    j.opened("host/later", {"v": 3})  # appends go to the new file
    j.close()
    assert Journal(out, "file").load() == {"host/open": {"v": 1}, "host/later": {"v": 3}}
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if "journal" in p.name) == [
        ".journal.file"
    ]


def test_a_planted_symlink_at_the_journal_is_refused(out, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "out" / ".journal.file").symlink_to(victim)
    with pytest.raises(OSError):
        Journal(out, "file")
    assert victim.read_bytes() == b"precious"


def test_a_planted_symlink_at_the_temporary_name_fails_compaction_safely(out, tmp_path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    j = Journal(out, "file")
    j.opened("host/a", {"v": 1})
    (tmp_path / "out" / ".journal.file.tmp").symlink_to(victim)
    assert not j.compact({"host/a": {"v": 1}})
    assert victim.read_bytes() == b"precious"
    j.close()
    assert Journal(out, "file").load() == {"host/a": {"v": 1}}


def test_a_second_live_writer_of_the_kind_gets_no_journal(out) -> None:
    first = Journal(out, "file")
    with pytest.raises(OSError) as info:
        Journal(out, "file")
    assert info.value.errno == errno.EBUSY
    first.compact({"host/a": {"v": 1}})  # the replacement is held too
    with pytest.raises(OSError):
        Journal(out, "file")
    first.close()
    assert Journal(out, "file").load() == {"host/a": {"v": 1}}

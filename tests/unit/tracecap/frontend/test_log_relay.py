"""LogRelay: the programs' log lines reach stderr whole, once each, and a log with nothing new
is not opened (the front end's loop asks every LOOP_MS)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from tracecap.frontend import supervise
from tracecap.frontend.supervise import LogRelay


def test_whole_lines_once_each_and_a_partial_line_when_it_ends(tmp_path: Path) -> None:
    log = tmp_path / "collector.log"
    log.write_bytes(b"one\ntw")
    err = io.StringIO()
    relay = LogRelay([str(log), str(tmp_path / "not-yet.log")], err)
    relay.pump()
    relay.pump()
    assert err.getvalue() == "one\n"
    with log.open("ab") as f:
        f.write(b"o\nthree\n")
    relay.pump()
    assert err.getvalue() == "one\ntwo\nthree\n"


def test_a_truncated_log_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "writer-file.log"
    log.write_bytes(b"a long first line\n")
    err = io.StringIO()
    relay = LogRelay([str(log)], err)
    relay.pump()
    log.write_bytes(b"new\n")
    relay.pump()
    assert err.getvalue() == "a long first line\nnew\n"


def test_a_log_with_nothing_new_is_not_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    log = tmp_path / "writer-mem.log"
    log.write_bytes(b"started\n")
    relay = LogRelay([str(log)], io.StringIO())
    relay.pump()
    opened: list[Any] = []
    monkeypatch.setattr(supervise, "open", lambda *a: opened.append(a), raising=False)
    relay.pump()
    assert opened == []

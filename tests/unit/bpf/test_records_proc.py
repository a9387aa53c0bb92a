"""Decoding of fork and exit records (bpf/procs.bpf.h)."""

import pytest

from bpf import records
from tests.support.records import proc_event


def test_fork_names_parent_in_header_and_child_in_fields():
    raw = proc_event(pid=100, tid=101, ppid=1, comm=b"sh\0", ts=5, child_pid=200,
                     child_ns_pid=7, child_start=123_456, exit_code=99)  # fmt: skip
    ev = records.decode_proc_event(raw)
    assert ev.event == "fork"
    assert (ev.hdr.pid, ev.hdr.tid, ev.hdr.ppid, ev.hdr.comm) == (100, 101, 1, b"sh")
    assert (ev.child_pid, ev.child_ns_pid, ev.child_start) == (200, 7, 123_456)
    assert ev.exit_code == 0  # a fork has no exit code, whatever the record's bytes say


def test_exit_carries_the_wait_status_signed():
    ev = records.decode_proc_event(proc_event(kind=records.REC_EXIT, pid=300, exit_code=3 << 8))
    assert (ev.event, ev.hdr.pid, ev.exit_code, ev.child_pid) == ("exit", 300, 768, 0)
    ev = records.decode_proc_event(proc_event(kind=records.REC_EXIT, exit_code=-1))
    assert ev.exit_code == -1


def test_short_or_foreign_record_is_an_error():
    raw = proc_event()
    with pytest.raises(records.RecordError, match="process event of"):
        records.decode_proc_event(raw[:-1])
    with pytest.raises(records.RecordError, match="record kind 4"):
        records.decode_proc_event(proc_event(kind=records.REC_EXEC_EVENT))


def test_layout_is_small():
    """One fixed record per fork or exit: the ring cost the README states."""
    assert records.TC_PROC_EVENT.size == 112

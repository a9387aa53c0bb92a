"""Reading back the bytes of transfers that passed no user buffer: which file to read, opening
it only when it is the file the kernel named and unchanged, and streaming it in bounded messages
whose every byte is either the transfer's or listed lost. Real files in tmp_path; the kernel's
view of them is built from their stat."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bpf import records
from collector.readback import MESSAGE_BYTES, Readback, candidates, open_end
from tests.support import records as build
from tracecap import bus

PID = 4242


def kernel_dev(st_dev: int) -> int:
    return os.major(st_dev) << 20 | os.minor(st_dev)


def end_of(path: Path, *, fd: int = 5, pos: int = 0, **changes: int) -> records.XferEnd:
    """``path`` as the kernel would report it at a transfer's exit (``changes`` override)."""
    st = os.stat(path)
    values = {
        "inode": st.st_ino, "pos": pos, "size": st.st_size, "mtime": st.st_mtime_ns,
        "ctime": st.st_ctime_ns, "dev": kernel_dev(st.st_dev), "mode": st.st_mode,
        "generation": 0, "fd": fd,
    } | changes  # fmt: skip
    return records.XferEnd(**values)


def xfer(
    src: records.XferEnd,
    dst: records.XferEnd,
    *,
    io_len: int,
    direction: int = records.DIR_WRITE,
    path: bytes = b"/tmp/dst",
    other_path: bytes = b"/tmp/src",
    append: bool = False,
) -> records.FileXfer:
    """A transfer as records.decode_file_xfer returns it, through the real decoder."""
    ends = dst if direction == records.DIR_WRITE else src
    raw = build.file_xfer(
        ts=1, pid=PID, tid=PID, io_id=7, io_len=io_len, pos=ends.pos, inode=ends.inode,
        dev=ends.dev, mode=ends.mode, fd=ends.fd, direction=direction,
        syscall=records.SYSCALLS.index("copy_file_range"),
        flags=records.EV_APPEND if append else 0, path=path, other_path=other_path,
        src=src._asdict(), dst=dst._asdict(),
    )  # fmt: skip
    return records.decode_file_xfer(raw)


ENV = {"path": b"/tmp/dst", "append": False}


def test_the_record_decodes_both_ends_and_the_other_path(tmp_path: Path) -> None:
    (tmp_path / "s").write_bytes(b"abc")
    src = end_of(tmp_path / "s", fd=3, pos=1)
    dst = records.XferEnd(9, 100, 4096, 5, 6, 0x800001, 0o100600, 77, 4)
    x = xfer(src, dst, io_len=2, path=b"/d/dst", other_path=b"/d/src")
    assert (x.src, x.dst, x.other_path) == (src, dst, b"/d/src")
    assert (x.event.path, x.event.syscall, x.event.io_len, x.event.pos) == (
        b"/d/dst", "copy_file_range", 2, 100,
    )  # fmt: skip
    assert x.event.hdr.pid == PID


def test_a_short_transfer_record_is_refused() -> None:
    raw = build.file_xfer(io_len=1)
    with pytest.raises(records.RecordError, match="file transfer of"):
        records.decode_file_xfer(raw[:-1])


def test_the_source_is_read_first_then_the_destination(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    reg = end_of(tmp_path / "f", fd=3)
    sock = reg._replace(mode=stat.S_IFSOCK | 0o777, fd=4)
    x = xfer(reg, reg._replace(fd=4), io_len=1, path=b"/w/dst", other_path=b"/w/src")
    assert candidates(x) == [
        ([f"/proc/{PID}/fd/3", "/w/src"], reg),
        ([f"/proc/{PID}/fd/4", "/w/dst"], reg._replace(fd=4)),
    ]
    # read capture: the artifact's file (the event's path) is the source
    x = xfer(reg, reg._replace(fd=4), io_len=1, direction=records.DIR_READ,
             path=b"/w/src", other_path=b"/w/dst")  # fmt: skip
    assert candidates(x)[0] == ([f"/proc/{PID}/fd/3", "/w/src"], reg)
    # a socket is never read; relative and /proc paths are not opened by name
    x = xfer(reg, sock, io_len=1, path=b"TCP", other_path=b"/proc/self/fd/0")
    assert candidates(x) == [([f"/proc/{PID}/fd/3"], reg)]


def test_open_end_refuses_a_file_it_cannot_tell_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    end = end_of(path)
    for other in (end._replace(size=4), end._replace(mtime=1), end._replace(ctime=1)):
        fd, why = open_end([str(path)], other)
        assert fd is None and "the file changed since the syscall" in why
    fd, why = open_end([str(path)], end._replace(mtime=0, ctime=0))
    assert fd is None and "no times" in why
    link = tmp_path / "link"
    link.symlink_to(path)
    fd, why = open_end([str(link)], end)  # a path through a symbolic link is refused
    assert fd is None


def test_open_end_takes_the_first_candidate_that_is_the_file(tmp_path: Path) -> None:
    good, other = tmp_path / "good", tmp_path / "other"
    good.write_bytes(b"payload")
    other.write_bytes(b"payload")
    fd, why = open_end([str(tmp_path / "gone"), str(other), str(good)], end_of(good))
    assert fd is not None and why == ""
    try:
        assert os.pread(fd, 100, 0) == b"payload"
        assert os.fstat(fd).st_ino == good.stat().st_ino
    finally:
        os.close(fd)
    fd, why = open_end([str(other)], end_of(good))
    assert fd is None and "another file now" in why


def test_open_end_never_opens_a_fifo_put_in_the_files_place(tmp_path: Path) -> None:
    """Opening a FIFO for reading would block the collector until a writer came: the path is
    looked at through O_PATH, which opens nothing."""
    good, fifo = tmp_path / "good", tmp_path / "fifo"
    good.write_bytes(b"x")
    end = end_of(good)
    good.unlink()
    os.mkfifo(fifo)
    fd, why = open_end([str(fifo)], end)
    # the FIFO may get the freed inode number: then it is refused for its type
    assert fd is None and ("another file now" in why or "not a regular file" in why)


def test_open_end_refuses_a_file_changed_since(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"before")
    end = end_of(path)
    path.write_bytes(b"after!")
    fd, why = open_end([str(path)], end)
    assert fd is None and "the file changed since the syscall" in why


class Opener:
    """Opens what the test says, records what it was asked."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.asked: list[list[str]] = []

    def __call__(self, tries: list[str], end: records.XferEnd) -> tuple[int | None, str]:
        self.asked.append(tries)
        for path in tries:
            if path in self.files:
                return os.open(self.files[path], os.O_RDONLY), ""
        return None, f"{tries[0]}: gone"


def payload(out: list) -> bytes:
    return b"".join(bytes(m.payload) for m in out if m.payload is not None)


def test_a_transfer_is_streamed_in_bounded_messages_at_the_artifacts_offsets(
    tmp_path: Path,
) -> None:
    data = os.urandom(3 * MESSAGE_BYTES + 100)
    (tmp_path / "src").write_bytes(b"pre" + data + b"post")
    src = end_of(tmp_path / "src", fd=3, pos=3)
    rb = Readback(Opener({f"/proc/{PID}/fd/3": tmp_path / "src"}))
    dst = src._replace(pos=1000, fd=4)
    assert rb.add(xfer(src, dst, io_len=len(data)), bus.TOPIC_FILE_WRITE, ENV, 55) == []
    assert rb.pending == 1
    out = rb.pump(MESSAGE_BYTES + 10)  # the budget bounds a pump
    assert [len(m.payload) for m in out] == [MESSAGE_BYTES, 10]
    out += rb.pump(1 << 30)
    assert rb.pending == 0 and payload(out) == data
    assert [m.env["off"] - m.env["io_off"] for m in out] == [1000] * len(out)
    assert {(m.env["io_id"], m.env["io_len"], m.env["source"], m.env["ts"]) for m in out} == {
        (7, len(data), "readback", 55)
    }
    assert all("lost" not in m.env and len(m.payload) <= MESSAGE_BYTES for m in out)
    assert rb.stats()["readback_bytes"] == len(data)


def test_a_source_changed_while_read_loses_the_rest(tmp_path: Path) -> None:
    data = os.urandom(2 * MESSAGE_BYTES)
    (tmp_path / "src").write_bytes(data)
    src = end_of(tmp_path / "src", fd=3)
    rb = Readback(Opener({f"/proc/{PID}/fd/3": tmp_path / "src"}))
    rb.add(xfer(src, src._replace(fd=4), io_len=len(data)), bus.TOPIC_FILE_WRITE, ENV, 1)
    first = rb.pump(MESSAGE_BYTES)
    with open(tmp_path / "src", "r+b") as f:
        f.write(b"changed")
    rest = rb.pump(1 << 30)
    assert payload(first) == data[:MESSAGE_BYTES]
    [lost] = rest
    assert lost.payload is None and lost.env["lost"] == [[MESSAGE_BYTES, 2 * MESSAGE_BYTES]]
    assert lost.env["readback_error"].startswith("changed since the transfer: ")
    assert rb.pending == 0 and rb.lost_bytes == MESSAGE_BYTES


def test_a_file_shorter_than_the_transfer_loses_the_rest(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"0123456789")
    src = end_of(tmp_path / "src", fd=3, pos=4)
    rb = Readback(Opener({f"/proc/{PID}/fd/3": tmp_path / "src"}))
    rb.add(xfer(src, src._replace(fd=4, pos=0), io_len=10), bus.TOPIC_FILE_WRITE, ENV, 1)
    [lost] = rb.pump(1 << 20)
    assert lost.env["lost"] == [[0, 10]] and "ends before" in lost.env["readback_error"]


def test_a_transfer_with_nothing_to_read_is_lost_at_once_saying_why(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"abc")
    src = end_of(tmp_path / "src", fd=3, pos=0)
    sock = src._replace(mode=stat.S_IFSOCK | 0o777, fd=9)
    rb = Readback(Opener({}))
    [lost] = rb.add(
        xfer(src, sock, io_len=3, path=b"TCP", append=True), bus.TOPIC_FILE_WRITE,
        {"path": b"TCP", "append": True}, 1,
    )  # fmt: skip
    assert (lost.payload, lost.env["lost"], lost.env["io_off"]) == (None, [[0, 3]], 0)
    assert lost.env["readback_error"] == f"/proc/{PID}/fd/3: gone"
    assert rb.pending == 0 and rb.stats()["readback_unreadable"] == 1
    # neither end a regular file: nothing to ask for
    pipe = src._replace(mode=stat.S_IFIFO | 0o600)
    [lost] = rb.add(xfer(pipe, sock, io_len=3, append=True), bus.TOPIC_FILE_WRITE, ENV, 1)
    assert lost.env["readback_error"] == "neither end is a regular file"


def test_the_destination_is_read_when_the_source_is_gone(tmp_path: Path) -> None:
    (tmp_path / "dst").write_bytes(b"....copied")
    dst = end_of(tmp_path / "dst", fd=4, pos=4)
    src = dst._replace(inode=dst.inode + 1, fd=3, pos=0)
    opener = Opener({str(tmp_path / "dst"): tmp_path / "dst"})
    rb = Readback(opener)
    rb.add(xfer(src, dst, io_len=6, path=os.fsencode(tmp_path / "dst")), b"file.write.", ENV, 1)
    out = rb.pump(1 << 20)
    assert payload(out) == b"copied" and out[0].env["off"] == 4
    assert opener.asked == [[f"/proc/{PID}/fd/3", "/tmp/src"],
                            [f"/proc/{PID}/fd/4", str(tmp_path / "dst")]]  # fmt: skip


def test_close_releases_every_fd(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"abc")
    src = end_of(tmp_path / "src", fd=3)
    rb = Readback(Opener({f"/proc/{PID}/fd/3": tmp_path / "src"}))
    rb.add(xfer(src, src._replace(fd=4), io_len=3), bus.TOPIC_FILE_WRITE, ENV, 1)
    fd = rb._jobs[0].fd
    rb.close()
    assert rb.pending == 0
    with pytest.raises(OSError):
        os.fstat(fd)


def test_abandoned_transfers_are_lost_from_where_they_stood(tmp_path: Path) -> None:
    data = os.urandom(MESSAGE_BYTES + 5)
    (tmp_path / "src").write_bytes(data)
    src = end_of(tmp_path / "src", fd=3)
    rb = Readback(Opener({f"/proc/{PID}/fd/3": tmp_path / "src"}))
    rb.add(xfer(src, src._replace(fd=4), io_len=len(data)), bus.TOPIC_FILE_WRITE, ENV, 1)
    rb.pump(MESSAGE_BYTES)
    [lost] = rb.abandon("stopped")
    assert lost.env["lost"] == [[MESSAGE_BYTES, MESSAGE_BYTES + 5]]
    assert (lost.env["readback_error"], rb.pending) == ("stopped", 0)

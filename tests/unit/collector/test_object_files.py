"""collector/object_files.py on real files: what the collector opens as root, and the reads
that fill an init_module image from the file it was mapped from."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from collector.object_files import (
    MESSAGE_BYTES,
    FileIdentity,
    FileJob,
    FileStreamer,
    FillJob,
    is_same_file,
    open_unchanged,
    open_verified,
)
from tracecap import bus


def kernel_dev(path: Path) -> int:
    """The file's st_dev as the kernel's s_dev (MAJOR << 20 | MINOR)."""
    st = path.stat()
    return os.major(st.st_dev) << 20 | os.minor(st.st_dev)


def kernel_view(path: Path) -> tuple[int, int, int]:
    """The file's (dev, inode, ctime) as the kernel reports them where stat's device is the
    superblock's."""
    st = path.stat()
    return kernel_dev(path), st.st_ino, st.st_ctime_ns


def identity(path: Path) -> FileIdentity:
    st = path.stat()
    return FileIdentity(kernel_dev(path), st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size)


def read_fd(fd: int | None) -> bytes:
    assert fd is not None
    try:
        return os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)


@pytest.fixture
def ko(tmp_path: Path) -> Path:
    path = tmp_path / "m.ko"
    path.write_bytes(b"\x7fELF module")
    return path


# --- opening ------------------------------------------------------------------------------------


def test_the_named_file_is_opened_for_reading(ko: Path) -> None:
    fd, why = open_verified([str(ko)], *kernel_view(ko))
    assert (read_fd(fd), why) == (b"\x7fELF module", "")


def stat_with(path: Path, **fields: int) -> os.stat_result:
    """``path``'s stat with some fields replaced (st_dev, st_ino, st_ctime_ns)."""
    st = path.stat()
    values = list(st[:10])
    for name, value in fields.items():
        if name != "st_ctime_ns":
            values[["st_mode", "st_ino", "st_dev"].index(name)] = value
    ctime = fields.get("st_ctime_ns", st.st_ctime_ns)
    return os.stat_result(values, {"st_ctime_ns": ctime})


def test_the_same_device_and_inode_are_the_same_file(ko: Path) -> None:
    dev, inode, ctime = kernel_view(ko)
    assert is_same_file(ko.stat(), dev, inode, ctime + 1)


def test_another_device_is_the_same_file_when_inode_and_ctime_agree(ko: Path) -> None:
    """btrfs (a subvolume's anonymous device) and 9p (dev 42 against s_dev 40, measured)."""
    _, inode, ctime = kernel_view(ko)
    assert is_same_file(stat_with(ko, st_dev=os.makedev(0, 42)), 40, inode, ctime)


@pytest.mark.parametrize(
    "fields",
    [
        {"st_dev": os.makedev(0, 42), "st_ctime_ns": 7},  # another device, another ctime
        {"st_ino": 12345},  # another inode, same device
        {"st_dev": os.makedev(0, 42), "st_ino": 12345},  # another inode, same ctime
    ],
)
def test_another_file_is_not_the_same(ko: Path, fields: dict[str, int]) -> None:
    dev, inode, ctime = kernel_view(ko)
    assert not is_same_file(stat_with(ko, **fields), dev, inode, ctime)


def test_an_unread_ctime_never_stands_in_for_the_device(ko: Path) -> None:
    _, inode, _ = kernel_view(ko)
    assert not is_same_file(stat_with(ko, st_dev=os.makedev(0, 42), st_ctime_ns=0), 40, inode, 0)


def test_another_file_at_the_path_is_refused(ko: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_bytes(b"x")
    fd, why = open_verified([str(other)], *kernel_view(ko))
    assert fd is None and why.startswith(f"{other}: another file now")


def test_a_symlink_on_the_way_is_refused(ko: Path, tmp_path: Path) -> None:
    (tmp_path / "dir").symlink_to(tmp_path)
    fd, why = open_verified([str(tmp_path / "dir" / "m.ko")], *kernel_view(ko))
    assert fd is None and "Too many levels of symbolic links" in why


def test_our_proc_links_are_followed_even_so(ko: Path) -> None:
    with open(ko, "rb") as f:
        link = f"/proc/{os.getpid()}/fd/{f.fileno()}"
        fd, _ = open_verified([link], *kernel_view(ko))
        assert read_fd(fd) == b"\x7fELF module"


def test_a_mapped_file_is_opened_through_map_files(ko: Path) -> None:
    with open(ko, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        [line] = [m for m in Path("/proc/self/maps").read_text().splitlines() if str(ko) in m]
        link = f"/proc/{os.getpid()}/map_files/{line.split()[0]}"
        fd, why = open_verified([link], *kernel_view(ko))
        assert read_fd(fd) == b"\x7fELF module", why
        assert mapped[:4] == b"\x7fELF"


def test_after_a_proc_link_no_symlink_is_followed(ko: Path, tmp_path: Path) -> None:
    """``/proc/PID/cwd/NAME``: the kernel's link to the directory, then NAME as it is there."""
    (tmp_path / "alias.ko").symlink_to(ko)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        here = f"/proc/{os.getpid()}/cwd"
        assert read_fd(open_verified([f"{here}/./m.ko"], *kernel_view(ko))[0]) == b"\x7fELF module"
        fd, why = open_verified([f"{here}/alias.ko"], *kernel_view(ko))
    finally:
        os.chdir(cwd)
    assert fd is None and "Too many levels of symbolic links" in why


def test_a_fifo_is_never_opened(tmp_path: Path) -> None:
    """O_PATH opens nothing: a FIFO with no writer would block a real open forever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd, why = open_verified([str(fifo)], *kernel_view(fifo))
    assert fd is None and why == f"{fifo}: not a regular file"


def test_the_next_candidate_is_tried(ko: Path, tmp_path: Path) -> None:
    fd, _ = open_verified([str(tmp_path / "gone"), str(ko)], *kernel_view(ko))
    assert read_fd(fd) == b"\x7fELF module"


def test_a_file_changed_since_the_syscall_is_refused(ko: Path) -> None:
    seen = identity(ko)
    assert read_fd(open_unchanged([str(ko)], seen)[0]) == b"\x7fELF module"
    ko.write_bytes(b"\x7fELF module, patched")
    fd, why = open_unchanged([str(ko)], seen)
    assert fd is None
    assert why.startswith("the file changed since the syscall: ") and "size 11 -> 20" in why


# --- filling an image from its file ---------------------------------------------------------------


ENV = {"obj_id": 5, "obj_len": 40, "obj_off": 0, "last": True}


def fill(path: Path, ranges: list[tuple[int, int, int]], lost: list[list[int]] | None = None,
         seen: FileIdentity | None = None) -> FillJob:  # fmt: skip
    fd = os.open(path, os.O_RDONLY)
    return FillJob(fd, bus.TOPIC_MODULE, dict(ENV), ranges, lost or [], seen or identity(path))


def drain(job: FillJob | FileJob, budget: int = MESSAGE_BYTES) -> list:
    streamer = FileStreamer()
    streamer.add(job)
    out = []
    while streamer.pending:
        out += streamer.pump(budget)
    # what the summary calls captured: every byte sent, none twice
    assert streamer.read_bytes == sum(len(m.payload or b"") for m in out)
    return out


def test_a_whole_file_is_streamed_and_counted(tmp_path: Path) -> None:
    """An executed binary: every byte once, in messages of at most the budget."""
    path = tmp_path / "bin"
    path.write_bytes(os.urandom(3 * MESSAGE_BYTES + 5))
    job = FileJob(os.open(path, os.O_RDONLY), bus.TOPIC_EXEC, dict(ENV), path.stat().st_size)
    out = drain(job)
    assert b"".join(m.payload for m in out if m.payload) == path.read_bytes()
    assert out[-1].env["last"] and out[-1].env["obj_len"] == 3 * MESSAGE_BYTES + 5


def test_the_ranges_are_read_at_their_file_offsets(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(100)))
    out = drain(fill(path, [(0, 4, 10), (20, 30, 50)], lost=[[30, 40]]), budget=6)
    pieces = [(m.env["obj_off"], m.payload) for m in out[:-1]]
    assert pieces == [  # at most 6 bytes a pump
        (0, bytes(range(10, 14))), (20, bytes(range(50, 52))), (22, bytes(range(52, 58))),
        (28, bytes(range(58, 60))),
    ]  # fmt: skip
    last = out[-1].env
    assert (last["last"], last["lost"], last["from_file"]) == (True, [[30, 40]], [[0, 4], [20, 30]])
    assert "fill_error" not in last and all(not m.env["last"] for m in out[:-1])


def test_a_file_shorter_than_the_mapping_gives_what_it_has(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abcdef")
    last = drain(fill(path, [(0, 10, 2), (20, 30, 0)]))[-1].env
    assert last["from_file"] == [[0, 4]] and last["lost"] == [[4, 10], [20, 30]]
    assert last["fill_error"] == "the file ends before the mapping"


def test_a_file_that_changes_while_read_gives_nothing_more(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(100))
    job = fill(path, [(0, 10, 0), (10, 20, 10)])
    first, _, _ = job.step(10)
    assert first[0].payload == bytes(10)
    with open(path, "r+b") as f:
        f.write(b"patched")
    out = drain(job)
    assert [m.payload for m in out] == [None]
    last = out[0].env
    assert last["from_file"] == [[0, 10]] and last["lost"] == [[10, 20]]
    assert last["fill_error"].startswith("the file changed while it was read: ")


def test_nothing_to_fill_ends_at_once(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    out = drain(fill(path, [], lost=[[0, 40]]))
    assert len(out) == 1 and out[0].env == ENV | {"lost": [[0, 40]]}

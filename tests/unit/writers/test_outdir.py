"""The output tree is only ever reached through fds that refuse planted symlinks."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from writers.index import Index
from writers.outdir import OutputDir, UnsafePath, clear_out_dir

#: the unprivileged user a child process becomes (present on every Debian)
NOBODY = 65534


@pytest.fixture
def out(tmp_path: Path):
    od = OutputDir(str(tmp_path / "out"))
    yield od
    od.close()


def test_creates_missing_out_dir_with_mode_0750(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out"
    od = OutputDir(str(target))
    od.close()
    assert stat.S_IMODE(target.stat().st_mode) == 0o750


def test_refuses_a_symlinked_out_dir(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePath):
        OutputDir(str(tmp_path / "out"))


def test_artifact_is_0640_and_not_executable(out: OutputDir, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        fd = out.open_artifact("host", "write.dev-1.inode-2", append=False)
    finally:
        os.umask(old)
    os.write(fd, b"data")
    os.close(fd)
    path = tmp_path / "out" / "host" / "write.dev-1.inode-2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "out" / "host").stat().st_mode) & 0o007 == 0


def test_existing_file_is_reopened_without_truncation(out: OutputDir, tmp_path: Path) -> None:
    fd = out.open_artifact("host", "f", append=False)
    os.pwrite(fd, b"hello", 0)
    os.close(fd)
    fd = out.open_artifact("host", "f", append=True)
    os.write(fd, b"!")
    os.close(fd)
    assert (tmp_path / "out" / "host" / "f").read_bytes() == b"hello!"


@pytest.mark.parametrize("umask", [0o077, 0o027, 0])
def test_a_created_artifact_is_new_and_0640(out: OutputDir, tmp_path: Path, umask: int) -> None:
    """create_artifact makes the file in one call, whatever the umask (read at the first
    creation) leaves of 0640; anything already at the name, even a dangling symlink, is
    EEXIST and left alone."""
    old = os.umask(umask)
    try:
        fd = out.create_artifact("host", "new", append=True)
    finally:
        os.umask(old)
    os.write(fd, b"ab")
    os.write(fd, b"c")
    os.close(fd)
    path = tmp_path / "out" / "host" / "new"
    assert path.read_bytes() == b"abc" and stat.S_IMODE(path.stat().st_mode) == 0o640
    with pytest.raises(FileExistsError):
        out.create_artifact("host", "new", append=False)
    (tmp_path / "out" / "host" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        out.create_artifact("host", "link", append=False)
    assert not (tmp_path / "elsewhere").exists() and path.read_bytes() == b"abc"


def test_planted_symlink_file_is_not_followed(out: OutputDir, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "out" / "host").mkdir()
    (tmp_path / "out" / "host" / "write.dev-1.inode-2").symlink_to(victim)
    with pytest.raises(OSError) as info:
        out.open_artifact("host", "write.dev-1.inode-2", append=False)
    assert info.value.errno == errno.ELOOP
    assert victim.read_bytes() == b"precious"


def test_planted_symlink_dir_is_not_followed(out: OutputDir, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out" / "host").symlink_to(elsewhere)
    with pytest.raises(OSError):
        out.open_artifact("host", "f", append=False)
    assert list(elsewhere.iterdir()) == []


def test_planted_fifo_does_not_block(out: OutputDir, tmp_path: Path) -> None:
    (tmp_path / "out" / "host").mkdir()
    os.mkfifo(tmp_path / "out" / "host" / "f")
    with pytest.raises(OSError):
        out.open_artifact("host", "f", append=True)


def test_planted_hard_link_is_refused(out: OutputDir, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "out" / "host").mkdir()
    os.link(victim, tmp_path / "out" / "host" / "f")
    with pytest.raises(UnsafePath):
        out.open_artifact("host", "f", append=False)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\0b"])
def test_components_are_validated(out: OutputDir, name: str) -> None:
    with pytest.raises(ValueError):
        out.dir_fd(name)
    with pytest.raises(ValueError):
        out.open_artifact("host", name, append=False)
    with pytest.raises(ValueError):
        out.open_file(("pcap", name), "f", append=True)


def test_a_file_needs_a_directory(out: OutputDir) -> None:
    with pytest.raises(ValueError):
        out.open_file((), "index.jsonl", append=True)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_nested_directories_are_made_and_their_fds_closed(out: OutputDir, tmp_path: Path) -> None:
    out.dir_fd("pcap")  # held open by the output dir, like every first-level directory
    before = open_fds()
    fd = out.open_file(("pcap", "processes", "host"), "a.pcap", append=True)
    os.write(fd, b"one")
    os.close(fd)
    assert open_fds() == before
    fd = out.open_file(("pcap", "processes", "host"), "a.pcap", append=True)
    os.write(fd, b"two")  # appended: existing content is kept
    os.close(fd)
    path = tmp_path / "out" / "pcap" / "processes" / "host" / "a.pcap"
    assert path.read_bytes() == b"onetwo"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o007 == 0


def test_a_planted_symlink_deep_in_the_path_is_not_followed(out: OutputDir, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out" / "pcap").mkdir()
    (tmp_path / "out" / "pcap" / "processes").symlink_to(elsewhere)
    before = open_fds()
    with pytest.raises(OSError) as info:
        out.open_file(("pcap", "processes", "host"), "a.pcap", append=True)
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert list(elsewhere.iterdir()) == []
    assert open_fds() == before + 1  # only the output dir's own fd of pcap/


def test_index_lines_survive_hostile_strings(out: OutputDir, tmp_path: Path) -> None:
    index = Index(out)
    hostile = ["a\nb", '"}\n{"kind": "forged"', "\u2028\u2029", "\x00\x1b[31m", "caf\\xe9"]
    for value in hostile:
        index.append({"kind": "write", "comm": value})
    index.close()
    path = tmp_path / "out" / "index.jsonl"
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line)["comm"] for line in lines[:-1]] == hostile
    assert all(line.isascii() for line in lines)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_index_refuses_a_planted_symlink(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "index.jsonl").symlink_to(tmp_path / "victim")
    od = OutputDir(str(tmp_path / "out"))
    try:
        with pytest.raises(OSError):
            Index(od)
    finally:
        od.close()
    assert not (tmp_path / "victim").exists()


def test_clear_out_dir_does_not_follow_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep").write_bytes(b"keep")
    (outside / "sub" / "keep2").write_bytes(b"keep")
    out = tmp_path / "out"
    (out / "host" / "deep").mkdir(parents=True)
    (out / "host" / "deep" / "artifact").write_bytes(b"x")
    (out / "index.jsonl").write_bytes(b"{}\n")
    (out / "link-dir").symlink_to(outside)
    (out / "host" / "link-file").symlink_to(outside / "keep")
    (out / "host" / "dangling").symlink_to(tmp_path / "nowhere")

    clear_out_dir(str(out))

    assert out.is_dir() and list(out.iterdir()) == []
    assert (outside / "keep").read_bytes() == b"keep"
    assert (outside / "sub" / "keep2").read_bytes() == b"keep"


def test_clear_out_dir_refuses_a_symlinked_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep")
    (tmp_path / "out").symlink_to(outside)
    with pytest.raises(UnsafePath):
        clear_out_dir(str(tmp_path / "out"))
    assert (outside / "keep").exists()


def test_clear_out_dir_of_a_missing_dir_is_a_no_op(tmp_path: Path) -> None:
    clear_out_dir(str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()


def test_an_index_line_that_cannot_be_written_is_counted_and_logged(
    out: OutputDir, tmp_path: Path
) -> None:
    index = Index(out)
    counters: dict[str, int] = {}
    logged: list[tuple[str, str]] = []
    assert index.append_or_count({"a": 1}, counters, lambda k, m: logged.append((k, m)), "x")
    assert counters == {}
    assert not index.append_or_count(
        {"nan": float("nan")}, counters, lambda k, m: logged.append((k, m)), "path: record"
    )
    index.close()  # now every write fails with EBADF
    assert not index.append_or_count({"b": 2}, counters, lambda k, m: logged.append((k, m)), "gap")
    assert counters == {"index_errors": 2}
    assert [k for k, _ in logged] == ["index_error", "index_error"]
    assert logged[0][1].startswith("path: record not written: ")
    assert logged[1][1].startswith("gap not written: ")
    assert (tmp_path / "out" / "index.jsonl").read_text().splitlines() == ['{"a": 1}']


@pytest.mark.parametrize("mode", [0o2750, 0o770, 0o757])
def test_an_unsafe_container_directory_is_not_reused(
    out: OutputDir, tmp_path: Path, mode: int
) -> None:
    host = tmp_path / "out" / "host"
    host.mkdir()
    host.chmod(mode)
    with pytest.raises(UnsafePath, match="not reused"):
        out.open_artifact("host", "f", append=False)
    assert list(host.iterdir()) == []


def test_a_directory_of_another_user_is_not_reused(out: OutputDir, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    nested = tmp_path / "out" / "pcap" / "processes"
    nested.mkdir(parents=True, mode=0o750)
    os.chown(nested, 65534, 65534)
    with pytest.raises(UnsafePath, match="is owned by uid 65534"):
        out.open_file(("pcap", "processes", "host"), "a.pcap", append=True)
    assert list(nested.iterdir()) == []


def test_an_unsafe_output_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o2770)
    with pytest.raises(UnsafePath, match="not reused"):
        OutputDir(str(tmp_path / "out"))


@pytest.mark.skipif(os.geteuid() != 0, reason="acts as another user: needs root")
def test_a_parent_the_writer_may_only_pass_through_is_enough() -> None:
    """root's dir: at 0711 (what the front end's refusal advises) lets the writers' user reach
    ``out`` without listing dir:; the root is opened with O_PATH, not for reading."""
    top = Path(tempfile.mkdtemp(prefix="tcod-", dir="/tmp"))
    try:
        top.chmod(0o711)
        out = top / "out"
        out.mkdir(mode=0o750)
        os.chown(out, NOBODY, NOBODY)
        pid = os.fork()
        if pid == 0:  # the child becomes the writer's user; it reports by its exit status only
            status = 1
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                OutputDir(str(out)).open_file(["host"], "probe", append=True)
                status = 0
            finally:
                os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == 0
        assert (out / "host" / "probe").stat().st_uid == NOBODY
    finally:
        shutil.rmtree(top)

"""Directories reached through fds that never follow a symlink, and the pure decisions on them."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tracecap import fsutil
from tracecap.fsutil import (
    Dir,
    Opener,
    UnsafePath,
    ancestor_problem,
    can_traverse,
    components,
    file_problem,
    owned_dir_problem,
    read_bounded,
    walk,
)


def st(mode: int, uid: int = 0, gid: int = 0, size: int = 0) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 2, uid, gid, size, 0, 0, 0))


DIR = stat.S_IFDIR


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (st(DIR | 0o755), None),
        (st(DIR | 0o1777), None),  # /tmp: root's and sticky
        (st(DIR | 0o775, gid=0), None),  # writable by group root only
        (st(DIR | 0o755, uid=1000), "is owned by uid 1000, not root"),
        (st(DIR | 0o1777, uid=1000), "is owned by uid 1000, not root"),
        (st(DIR | 0o777), "is writable by every user"),
        (st(DIR | 0o775, gid=1000), "is writable by group 1000"),
        (st(stat.S_IFREG | 0o644), "is not a directory"),
    ],
)
def test_ancestor_problem(result: os.stat_result, expected: str | None) -> None:
    assert ancestor_problem(result) == expected


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (st(DIR | 0o750, uid=999), None),
        (st(DIR | 0o755, uid=999), None),
        (st(DIR | 0o750, uid=1000), "is owned by uid 1000, not 999"),
        (st(DIR | 0o770, uid=999), "has group write permission (mode 0770)"),
        (st(DIR | 0o757, uid=999), "has other write permission (mode 0757)"),
        (st(DIR | 0o2750, uid=999), "has setgid permission (mode 2750)"),
        (st(DIR | 0o2777, uid=999), "has group write, other write, setgid permission (mode 2777)"),
        (st(stat.S_IFLNK | 0o777, uid=999), "is not a directory"),
    ],
)
def test_owned_dir_problem(result: os.stat_result, expected: str | None) -> None:
    assert owned_dir_problem(result, (999,)) == expected


def test_owned_dir_problem_names_every_allowed_owner() -> None:
    assert owned_dir_problem(st(DIR | 0o750, uid=5), (0, 999)) == "is owned by uid 5, not 0 or 999"
    assert owned_dir_problem(st(DIR | 0o750, uid=0), (0, 999)) is None


def test_can_traverse_uses_the_matching_class_only() -> None:
    assert can_traverse(st(DIR | 0o700, uid=7), 7, set())
    assert not can_traverse(st(DIR | 0o077, uid=7), 7, {0})  # the owner class decides
    assert can_traverse(st(DIR | 0o750, gid=8), 7, {8})
    assert not can_traverse(st(DIR | 0o705, gid=8), 7, {8})
    assert can_traverse(st(DIR | 0o701), 7, set())
    assert not can_traverse(st(DIR | 0o750), 7, set())


def test_file_problem() -> None:
    assert file_problem(st(stat.S_IFREG | 0o640, size=10), 10) is None
    assert file_problem(st(stat.S_IFREG | 0o640, size=11), 10) == "is 11 bytes, more than 10"
    assert file_problem(st(stat.S_IFIFO | 0o640), 10) == "is not a regular file"


def test_components() -> None:
    assert components("/a//b/") == ["a", "b"]
    assert components("/") == []
    for bad in ("a/b", "/a/../b", "/a/./b"):
        with pytest.raises(ValueError):
            components(bad)


@pytest.fixture(params=[True, False], ids=["openat2", "nofollow"])
def opener(request: pytest.FixtureRequest) -> Opener:
    return Opener(use_openat2=request.param)


def test_the_kernel_has_openat2() -> None:
    """Linux 5.6 added it; the fallback is for older kernels, not this one."""
    opener = Opener()
    with Dir.root(opener) as root:
        os.close(opener.open(root.fd, "tmp", fsutil.DIR_FLAGS))
    assert opener.has_openat2 is True


def test_a_symlink_is_never_opened(opener: Opener, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file-link").symlink_to(tmp_path / "real" / "f")
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as info:
            opener.open(parent, "link", fsutil.DIR_FLAGS)
        assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)  # O_DIRECTORY is checked first
        with pytest.raises(OSError) as info:
            opener.open(parent, "file-link", os.O_WRONLY | os.O_CREAT, 0o600)
        assert info.value.errno == errno.ELOOP
        assert not (tmp_path / "real" / "f").exists()
        os.close(opener.open(parent, "real", fsutil.DIR_FLAGS))
        fd = opener.open(parent, "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.close(fd)
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o640 & ~current_umask()
    finally:
        os.close(parent)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_walk_refuses_a_symlinked_component(opener: Opener, tmp_path: Path) -> None:
    (tmp_path / "real" / "out").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePath) as info:
        walk(str(tmp_path / "link" / "out"), opener=opener)
    assert info.value.errno == errno.ELOOP
    assert str(tmp_path / "link") in str(info.value)
    with pytest.raises(UnsafePath):
        walk(str(tmp_path / "link" / "new"), create_mode=0o755, opener=opener)
    assert not (tmp_path / "real" / "new").exists()


def test_walk_creates_and_reports_each_step(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    with pytest.raises(FileNotFoundError):
        walk(str(target))
    directory, steps = walk(str(target), create_mode=0o755, last_mode=0o750)
    with directory:
        assert directory.path == str(target)
        assert os.path.samestat(directory.stat(), target.stat())
    assert steps[0].path == "/"
    assert [s.path for s in steps[-2:]] == [str(tmp_path / "a"), str(target)]
    assert [s.created for s in steps[-3:]] == [False, True, True]
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    directory, again = walk(str(target), create_mode=0o755)
    directory.close()
    assert not again[-1].created


def test_a_directory_swapped_in_as_it_is_created_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_mkdir = os.mkdir

    def mkdir_then_plant(name: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(name, mode, dir_fd=dir_fd)
        made = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
        os.close(os.open("planted", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=made))
        os.close(made)

    with Dir(os.open(tmp_path, fsutil.DIR_FLAGS), str(tmp_path)) as parent:
        monkeypatch.setattr(fsutil.os, "mkdir", mkdir_then_plant)
        with pytest.raises(UnsafePath, match="replaced as it was created"):
            parent.make_dir("out", 0o750)


def test_clear_removes_links_not_their_targets(opener: Opener, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep").write_bytes(b"keep")
    (outside / "sub" / "keep2").write_bytes(b"keep")
    tree = tmp_path / "tree"
    (tree / "host" / "deep").mkdir(parents=True)
    (tree / "host" / "deep" / "artifact").write_bytes(b"x")
    (tree / "link-dir").symlink_to(outside)
    (tree / "host" / "link-file").symlink_to(outside / "keep")
    os.link(outside / "keep", tree / "hard")
    os.mkfifo(tree / "host" / "fifo")
    with Dir(os.open(tree, fsutil.DIR_FLAGS), str(tree), opener) as directory:
        directory.clear()
    assert list(tree.iterdir()) == []
    assert (outside / "keep").read_bytes() == b"keep"
    assert (outside / "sub" / "keep2").read_bytes() == b"keep"


def test_clear_refuses_a_tree_deeper_than_its_limit(tmp_path: Path) -> None:
    deep = tmp_path / "tree"
    path = deep
    for _ in range(4):
        path = path / "d"
    path.mkdir(parents=True)
    with (
        Dir(os.open(deep, fsutil.DIR_FLAGS), str(deep)) as directory,
        pytest.raises(UnsafePath, match="nested too deep"),
    ):
        directory.clear(depth=3)
    with Dir(os.open(deep, fsutil.DIR_FLAGS), str(deep)) as directory:
        directory.clear(depth=5)
    assert list(deep.iterdir()) == []


def test_read_bounded_refuses_fifos_links_and_large_files(opener: Opener, tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"12345")
    (tmp_path / "big").write_bytes(b"x" * 6)
    os.mkfifo(tmp_path / "fifo")  # opened O_NONBLOCK: no writer, yet no hang
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    fd = os.open(tmp_path, fsutil.DIR_FLAGS)
    try:
        assert read_bounded(fd, "ok", 5, opener) == b"12345"
        with pytest.raises(UnsafePath, match="more than 5"):
            read_bounded(fd, "big", 5, opener)
        with pytest.raises(UnsafePath, match="not a regular file"):
            read_bounded(fd, "fifo", 5, opener)
        with pytest.raises(OSError) as info:
            read_bounded(fd, "link", 5, opener)
        assert info.value.errno == errno.ELOOP
    finally:
        os.close(fd)

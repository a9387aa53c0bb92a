"""The directories `tracecap run` prepares for the writers, as root, on paths others may change."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracecap.frontend.rundir import (
    OutDirError,
    prepare_out_dir,
    prepare_stats_dir,
    refuse_reuse_message,
    unreachable_parent,
    unsafe_component,
    write_options,
)
from tracecap.fsutil import Step
from tracecap.options import parse_args

USER = "tracecap"


def st(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 1, 1, 2, uid, gid, 0, 0, 0, 0))


def test_unsafe_component_names_the_first_directory_others_control() -> None:
    steps = [
        Step("/", st(0o755), False),
        Step("/tmp", st(0o1777), False),
        Step("/tmp/x", st(0o755, uid=1000), False),
        Step("/tmp/x/y", st(0o777), False),
    ]
    assert unsafe_component(steps) == "/tmp/x is owned by uid 1000, not root"
    assert unsafe_component(steps[:2]) is None


def test_directories_created_by_tracecap_are_not_suspect() -> None:
    steps = [Step("/", st(0o755), False), Step("/tmp/x", st(0o777, uid=1000), True)]
    assert unsafe_component(steps) is None


def test_unreachable_parent_names_the_directory_that_blocks() -> None:
    nobody = 65534
    steps = [
        Step("/", st(0o755), False),
        Step("/a", st(0o700), False),
        Step("/a/b", st(0o750, gid=nobody), False),
    ]
    assert unreachable_parent(steps, nobody, {nobody}) == "/a"
    steps[1] = Step("/a", st(0o711), False)
    assert unreachable_parent(steps, nobody, {nobody}) is None
    assert unreachable_parent(steps, nobody, set()) == "/a/b"


def test_the_refusal_says_what_to_do() -> None:
    text = refuse_reuse_message("/tmp/x/out", "/tmp/x is owned by uid 1000, not root")
    assert "/tmp/x is owned by uid 1000" in text
    assert "remove /tmp/x/out" in text
    assert "/var/lib/tracecap" in text


# --- as root, on the real file system ---------------------------------------------------------


@pytest.fixture
def base() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("prepares directories for the tracecap user: needs root")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        pytest.skip("the tracecap user does not exist: run `make setup`")
    path = Path(tempfile.mkdtemp(prefix="tc-rundir-", dir="/tmp"))  # pytest's tmp is 0700
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def config_for(root: Path, *extra: str):
    return parse_args(["--capture", f"dir:{root}", *extra])


def owner() -> tuple[int, int]:
    pw = pwd.getpwnam(USER)
    return pw.pw_uid, pw.pw_gid


def test_a_new_dir_is_root_group_tracecap_and_out_belongs_to_the_writers(base: Path) -> None:
    root = base / "new" / "cap"
    prepare_out_dir(config_for(root))
    st_root = root.stat()
    assert (st_root.st_uid, st_root.st_gid) == (0, grp.getgrnam(USER).gr_gid)
    assert stat.S_IMODE(st_root.st_mode) == 0o750
    assert stat.S_IMODE((base / "new").stat().st_mode) == 0o755
    st_out = (root / "out").stat()
    assert (st_out.st_uid, st_out.st_gid) == owner()
    assert stat.S_IMODE(st_out.st_mode) == 0o750


def test_a_symlinked_component_is_refused_and_its_target_untouched(base: Path) -> None:
    target = base / "target"
    target.mkdir(mode=0o700)
    (base / "link").symlink_to(target)
    with pytest.raises(OutDirError, match="is a symlink"):
        prepare_out_dir(config_for(base / "link"))
    assert list(target.iterdir()) == []
    assert target.stat().st_uid == 0


def test_an_existing_out_under_another_users_directory_is_refused(base: Path) -> None:
    user_dir = base / "user"
    (user_dir / "out").mkdir(parents=True)
    os.chown(user_dir, 65534, 65534)
    os.chown(user_dir / "out", 65534, 65534)
    with pytest.raises(OutDirError, match="is owned by uid 65534, not root"):
        prepare_out_dir(config_for(user_dir))
    assert (user_dir / "out").stat().st_uid == 65534


def test_a_fresh_out_under_another_users_directory_is_made_safely(base: Path) -> None:
    user_dir = base / "user"
    user_dir.mkdir(mode=0o755)
    os.chown(user_dir, 65534, 65534)
    prepare_out_dir(config_for(user_dir))
    assert (user_dir / "out").stat().st_uid == owner()[0]


@pytest.mark.parametrize(
    ("mode", "uid", "why"),
    [
        (0o2750, None, "setgid"),
        (0o770, None, "group write"),
        (0o750, 65534, "is owned by uid 65534"),
    ],
)
def test_an_unsafe_subdirectory_of_out_is_not_reused(
    base: Path, mode: int, uid: int | None, why: str
) -> None:
    prepare_out_dir(config_for(base / "cap"))
    host = base / "cap" / "out" / "host"
    host.mkdir()
    os.chown(host, uid if uid is not None else owner()[0], owner()[1])
    host.chmod(mode)
    with pytest.raises(OutDirError, match=why):
        prepare_out_dir(config_for(base / "cap"))
    prepare_out_dir(config_for(base / "cap", "--capture", "clear-dir"))
    assert list((base / "cap" / "out").iterdir()) == []


def test_clear_dir_removes_planted_links_but_not_their_targets(base: Path) -> None:
    prepare_out_dir(config_for(base / "cap"))
    victim = base / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "f").write_bytes(b"keep")
    out = base / "cap" / "out"
    (out / "link").symlink_to(victim)
    (out / "host").mkdir(mode=0o750)
    (out / "host" / "f").symlink_to(victim / "sub" / "f")
    prepare_out_dir(config_for(base / "cap", "--capture", "clear-dir"))
    assert list(out.iterdir()) == []
    assert (victim / "sub" / "f").read_bytes() == b"keep"


def test_an_out_writable_by_others_is_refused(base: Path) -> None:
    prepare_out_dir(config_for(base / "cap"))
    (base / "cap" / "out").chmod(0o777)
    with pytest.raises(OutDirError, match="other write"):
        prepare_out_dir(config_for(base / "cap"))


def test_the_stats_dir_is_emptied_without_following_what_was_planted(base: Path) -> None:
    run_dir = base / "run"
    stats = run_dir / "stats"
    stats.mkdir(parents=True)
    victim = base / "victim"
    victim.mkdir()
    (victim / "f").write_bytes(b"keep")
    (stats / "writer-file.json").symlink_to(victim / "f")
    os.mkfifo(stats / "fifo")
    (stats / "dir").symlink_to(victim)
    prepare_stats_dir(str(stats), USER)
    assert list(stats.iterdir()) == []
    assert (victim / "f").read_bytes() == b"keep"
    assert (stats.stat().st_uid, stats.stat().st_gid) == owner()
    assert stat.S_IMODE(stats.stat().st_mode) == 0o750


def test_options_are_written_afresh_never_through_a_link(base: Path) -> None:
    victim = base / "victim"
    victim.write_bytes(b"keep")
    (base / "options").symlink_to(victim)
    write_options(str(base / "options"), "--capture write\n", USER)
    assert victim.read_bytes() == b"keep"
    st_opt = os.lstat(base / "options")
    assert stat.S_ISREG(st_opt.st_mode)
    assert (st_opt.st_uid, st_opt.st_gid) == (0, grp.getgrnam(USER).gr_gid)
    assert stat.S_IMODE(st_opt.st_mode) == 0o640
    assert (base / "options").read_text() == "--capture write\n"

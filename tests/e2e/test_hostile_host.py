"""A local user attacks the output tree and the run directory that root prepares (README "Where
artifacts go"): every attack must leave each file outside the output tree as it was (owner, mode,
content) and no captured byte readable by that user.

The attacker is a real unprivileged user created for the test (useradd) and removed after. The
world-writable sticky directory ``pub`` stands in for ``/tmp``; ``victim`` is root's.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pipeline import artifact_name
from tests.support.workloads import WORKLOAD_TIMEOUT_S, python, python_as

pytestmark = pytest.mark.ebpf

#: A refused `tracecap run` stops before anything starts: seconds, not the pipeline's start-up.
REFUSAL_TIMEOUT_S = 60


@pytest.fixture
def attacker() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.skip("creates a user: needs root")
    name = f"tce-atk-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        subprocess.run(["userdel", name], check=True, capture_output=True)
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            subprocess.run(["groupdel", name], check=False, capture_output=True)


def as_user(user: pwd.struct_passwd, code: str, timeout: float = WORKLOAD_TIMEOUT_S) -> str:
    """Run ``code`` as ``user`` (no supplementary groups); its stdout."""
    return python_as(code, timeout, user=user.pw_uid, group=user.pw_gid, extra_groups=[])


def tracecap_user() -> pwd.struct_passwd:
    return pwd.getpwnam("tracecap")


@pytest.fixture
def pub(workdir: Path) -> Path:
    """A directory like /tmp: root's, world-writable, sticky."""
    path = workdir / "pub"
    path.mkdir()
    path.chmod(0o1777)
    return path


@pytest.fixture
def victim(workdir: Path) -> Path:
    """Root's files an attacker would like root to chown, fill or delete: a directory named
    ``out`` among them, so that a redirected ``<dir>/out`` lands on it."""
    path = workdir / "victim"
    (path / "out" / "sub").mkdir(parents=True)
    path.chmod(0o700)
    (path / "out").chmod(0o700)
    (path / "precious").write_bytes(b"root's precious file\n")
    (path / "out" / "secret").write_bytes(b"root's secret\n")
    (path / "out" / "sub" / "deep").write_bytes(b"deep\n")
    for file in (path / "precious", path / "out" / "secret"):
        file.chmod(0o600)
    return path


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Owner, mode and content of everything under ``roots``, never following a link."""
    found: dict[str, tuple] = {}
    for root in roots:
        for parent, dirnames, filenames in os.walk(root, followlinks=False):
            for name in [".", *dirnames, *filenames]:
                path = os.path.normpath(os.path.join(parent, name))
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                elif stat.S_ISLNK(st.st_mode):
                    content = os.readlink(path)
                else:
                    content = None
                found[path] = (st.st_uid, st.st_gid, st.st_mode, content)
    return found


def refused_run(*args: str) -> subprocess.CompletedProcess:
    """`tracecap run` that must refuse to start; its result."""
    run_dir = tempfile.mkdtemp(prefix="tcr-", dir="/run")
    try:
        return subprocess.run(
            ["tracecap", "run", "--run-dir", run_dir, *args],
            capture_output=True,
            text=True,
            timeout=REFUSAL_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def assert_refused(result: subprocess.CompletedProcess, why: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "tracecap: error: " in result.stderr and why in result.stderr, result.stderr
    assert "tracecap: ready" not in result.stderr


def readable_secrets(user: pwd.struct_passwd, roots: list[Path], secret: bytes) -> list[str]:
    """Every file under ``roots`` that ``user`` can read and that holds ``secret``."""
    return as_user(
        user,
        f"""
        import os
        def nonblocking(path, flags):
            return os.open(path, flags | os.O_NONBLOCK)  # a FIFO must not stall the search
        for root in {[str(r) for r in roots]!r}:
            for parent, _, names in os.walk(root):
                for name in names:
                    path = os.path.join(parent, name)
                    try:
                        with open(path, "rb", opener=nonblocking) as f:
                            data = f.read()
                    except OSError:
                        continue
                    if {secret!r} in data:
                        print(path)
        """,
    ).splitlines()


def capture_secret(tracecap, wdir: Path, out_root: Path, attacker: pwd.struct_passwd, *args: str):
    """Run the real pipeline, let a workload write a secret into a captured file, stop; the
    run, the secret and the file it was written to."""
    wdir.mkdir(mode=0o755, exist_ok=True)
    run = tracecap("--capture", f"write={wdir}/*", *args, out_root=out_root)
    secret = f"typed password {secrets.token_hex(8)}".encode()
    target = wdir / "typed"
    python(f"open({str(target)!r}, 'wb').write({secret!r})")
    run.stop()
    assert run.returncode == 0, run.stderr
    assert run.artifact(artifact_name("write", target)) == secret  # the capture did happen
    # The search finds the secret where the attacker may read it (the workload's own 0644
    # file), so that finding nothing afterwards means something.
    assert readable_secrets(attacker, [wdir], secret) == [str(target)]
    target.unlink()  # only the captured copy is left to find
    return run, secret


# --- refused before anything starts -----------------------------------------------------------


def test_a_symlinked_dir_component_is_refused(
    attacker: pwd.struct_passwd, pub: Path, victim: Path, workdir: Path
) -> None:
    """``dir:<pub>/cap`` where the attacker made ``cap`` a link to root's directory: root would
    create, chown and fill ``victim/out`` (clear-dir: empty it) if it followed the link."""
    as_user(attacker, f"import os; os.symlink({str(victim)!r}, {str(pub / 'cap')!r})")
    before = snapshot(victim)
    result = refused_run("--capture", f"dir:{pub}/cap", "--capture", "clear-dir")
    assert_refused(result, f"{pub}/cap is a symlink")
    assert snapshot(victim) == before


def test_a_symlinked_out_is_refused(attacker: pwd.struct_passwd, pub: Path, victim: Path) -> None:
    """``dir:<pub>`` (a /tmp-like directory is a fine dir:) with ``out`` planted as a link."""
    as_user(attacker, f"import os; os.symlink({str(victim / 'out')!r}, {str(pub / 'out')!r})")
    before = snapshot(victim)
    result = refused_run("--capture", f"dir:{pub}", "--capture", "clear-dir")
    assert_refused(result, f"{pub}/out is a symlink")
    assert snapshot(victim) == before


RACE_CODE = """
    import ctypes, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_renameat2, AT_FDCWD, RENAME_EXCHANGE = 316, -100, 2
    cap = {cap!r}
    os.mkdir(os.path.join(cap, "out"))
    os.symlink({target!r}, os.path.join(cap, "alt"))
    a, b = os.path.join(cap, "out").encode(), os.path.join(cap, "alt").encode()
    swaps, deadline = 0, time.monotonic() + {seconds}
    while time.monotonic() < deadline and not os.path.exists({stop!r}):
        if libc.syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0:
            swaps += 1
        else:
            sys.exit(f"renameat2: {{os.strerror(ctypes.get_errno())}}")
    print(swaps)
"""


def test_a_rename_exchange_race_never_redirects_root(
    attacker: pwd.struct_passwd, pub: Path, victim: Path, workdir: Path
) -> None:
    """The attacker swaps ``cap/out`` between a directory of theirs and a link to root's
    ``victim/out`` as fast as renameat2(RENAME_EXCHANGE) goes, while root prepares ``cap/out``:
    a check of the path followed by a chown of the path would chown root's directory."""
    cap = pub / "cap"
    as_user(attacker, f"import os; os.mkdir({str(cap)!r}, 0o755)")
    stop = workdir / "stop-race"
    code = RACE_CODE.format(
        cap=str(cap), target=str(victim / "out"), seconds=REFUSAL_TIMEOUT_S * 4, stop=str(stop)
    )
    before = snapshot(victim)
    racer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        user=attacker.pw_uid,
        group=attacker.pw_gid,
        extra_groups=[],
    )
    try:
        results = [refused_run("--capture", f"dir:{cap}") for _ in range(8)]
    finally:
        stop.touch()
        out, err = racer.communicate(timeout=60)
    assert racer.returncode == 0, err
    assert int(out) > 1000, "the race loop hardly ran"
    for result in results:
        assert result.returncode == 2, result.stderr
        assert f"{cap}" in result.stderr, result.stderr
    assert snapshot(victim) == before


def test_an_out_prepared_by_another_user_is_refused(
    attacker: pwd.struct_passwd, pub: Path, workdir: Path
) -> None:
    """The attacker's own ``cap`` with a setgid, world-writable ``out/host`` of theirs: reused,
    the writers' artifacts would land in it with the attacker's group."""
    cap = pub / "cap"
    as_user(
        attacker,
        f"""
        import os
        os.makedirs({str(cap / "out" / "host")!r})
        os.chmod({str(cap / "out" / "host")!r}, 0o2777)
        os.chmod({str(cap / "out")!r}, 0o777)
        """,
    )
    before = snapshot(cap)
    result = refused_run("--capture", f"dir:{cap}")
    assert_refused(result, f"{cap} is owned by uid {attacker.pw_uid}, not root")
    assert snapshot(cap) == before


# --- the pipeline runs, and the attacker reads nothing ----------------------------------------


def test_a_fresh_out_under_the_attackers_directory_is_safe(
    tracecap, attacker: pwd.struct_passwd, pub: Path, workdir: Path
) -> None:
    """A dir: the attacker owns is acceptable while ``out`` does not exist yet: root creates it
    through its fd and gives it to the writers, so the attacker reads nothing in it."""
    cap = pub / "mine"
    as_user(attacker, f"import os; os.mkdir({str(cap)!r}, 0o777)")
    run, secret = capture_secret(tracecap, workdir / "w", cap, attacker)
    st = os.lstat(run.out_dir)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (tracecap_user().pw_uid, 0o750)
    assert readable_secrets(attacker, [workdir], secret) == []


def test_unsafe_subdirectories_of_out_are_refused_then_cleared(
    tracecap, attacker: pwd.struct_passwd, workdir: Path, victim: Path
) -> None:
    """An ``out/`` of the writers holding a directory of the attacker's and a setgid one of the
    attacker's group: refused as they are, removed (not reused) by clear-dir."""
    root = workdir / "cap"
    out = root / "out"
    out.mkdir(parents=True, mode=0o750)
    tc = tracecap_user()
    os.chown(out, tc.pw_uid, tc.pw_gid)
    for name, uid, gid, mode in (
        ("host", attacker.pw_uid, attacker.pw_gid, 0o2777),
        ("pcap", tc.pw_uid, attacker.pw_gid, 0o2770),
    ):
        (out / name).mkdir()
        os.chown(out / name, uid, gid)
        (out / name).chmod(mode)
    before = snapshot(victim)
    result = refused_run("--capture", f"dir:{root}")
    assert_refused(result, f"refusing to reuse {out}/host: it is owned by uid {attacker.pw_uid}")
    os.chown(out / "host", tc.pw_uid, tc.pw_gid)
    result = refused_run("--capture", f"dir:{root}")
    assert_refused(result, f"refusing to reuse {out}/host: it has group write, other write, setgid")

    run, secret = capture_secret(tracecap, workdir / "w", root, attacker, "--capture", "clear-dir")
    for path in [run.out_dir, *[p for p in run.out_dir.rglob("*") if p.is_dir()]]:
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (tc.pw_uid, tc.pw_gid), path
        assert stat.S_IMODE(st.st_mode) == 0o750, (path, oct(st.st_mode))
    assert readable_secrets(attacker, [workdir], secret) == []
    assert snapshot(victim) == before


def test_links_planted_in_out_are_removed_by_clear_dir_not_followed(
    tracecap, workdir: Path, victim: Path, attacker: pwd.struct_passwd
) -> None:
    """Links the writers' user left in ``out/`` (a compromised writer could): clear-dir, as
    root, unlinks them and never empties, chowns or writes what they point to."""
    root = workdir / "cap"
    out = root / "out"
    out.mkdir(parents=True, mode=0o750)
    tc = tracecap_user()
    os.chown(out, tc.pw_uid, tc.pw_gid)
    as_user(
        tc,
        f"""
        import os
        out = {str(out)!r}
        os.mkdir(os.path.join(out, "host"), 0o750)
        os.symlink({str(victim)!r}, os.path.join(out, "dir-link"))
        os.symlink({str(victim / "out")!r}, os.path.join(out, "host", "out-link"))
        os.symlink({str(victim / "precious")!r}, os.path.join(out, "host", "file-link"))
        os.symlink({str(victim / "out")!r}, os.path.join(out, "pcap"))
        os.mkfifo(os.path.join(out, "host", "fifo"))
        """,
    )
    before = snapshot(victim)
    run, secret = capture_secret(tracecap, workdir / "w", root, attacker, "--capture", "clear-dir")
    left = {p.name for p in run.out_dir.rglob("*")}
    assert not left & {"dir-link", "out-link", "file-link", "fifo"}, left
    assert not (run.out_dir / "pcap").is_symlink()
    assert snapshot(victim) == before
    assert readable_secrets(attacker, [workdir], secret) == []


def test_a_fifo_and_a_link_in_the_stats_dir_neither_hang_nor_redirect_root(
    tracecap, workdir: Path, victim: Path, attacker: pwd.struct_passwd
) -> None:
    """The writers' user plants a FIFO and a link to a root-only file among the stats files:
    `tracecap status` and `tracecap run`'s summary, both root, read neither."""
    secret_json = workdir / "root-secret.json"
    marker = f"root-only-{secrets.token_hex(8)}"
    secret_json.write_text(f'{{"counters": {{"{marker}": 1}}}}')
    secret_json.chmod(0o600)
    wdir = workdir / "w"
    wdir.mkdir(mode=0o755)
    run = tracecap("--capture", f"write={wdir}/*")
    stats = run.run_dir / "stats"
    as_user(
        tracecap_user(),
        f"""
        import os
        os.mkfifo({str(stats / "writer-fifo.json")!r})
        os.symlink({str(secret_json)!r}, {str(stats / "writer-link.json")!r})
        """,
    )
    before = snapshot(victim, secret_json)
    started = time.monotonic()
    status = subprocess.run(
        ["tracecap", "status", "--run-dir", str(run.run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 30
    assert status.returncode == 0, status.stderr
    assert marker not in status.stdout
    assert '"writer-fifo"' in status.stdout and "not a regular file" in status.stdout
    assert '"writer-link"' in status.stdout and "symlink (not followed)" in status.stdout
    assert '"writer-file"' in status.stdout  # the real writer's stats are still read

    secret = f"typed password {secrets.token_hex(8)}".encode()
    python(f"open({str(wdir / 'typed')!r}, 'wb').write({secret!r})")
    run.stop(timeout=60)  # the summary reads the stats dir: a blocking open would hang here
    assert run.returncode == 0, run.stderr
    assert "tracecap: summary:" in run.stderr
    assert marker not in run.stderr
    assert snapshot(victim, secret_json) == before
    (wdir / "typed").unlink()
    assert readable_secrets(attacker, [workdir, run.run_dir], secret) == []

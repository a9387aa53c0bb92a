"""The real `tracecap` command line: what can be checked before anything starts is refused then.

`tracecap run` with a bad option exits 2 naming the option, and leaves nothing behind: no run
directory (so no socket), no output directory, no process started for the run, no BPF program
loaded. `tracecap tap` and `status` run by a user outside group `tracecap` against a live
capture say "permission denied" (exit 77), not "no collector"; with the group they work, and
"no collector" (exit 1) stays the answer once the capture is gone.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.pipeline import artifact_name, pid_of, tracecap_program_ids, wait_until
from tests.support.workloads import python

pytestmark = pytest.mark.ebpf

COMMAND_TIMEOUT_S = 60
HINT = "(run as root or a member of group tracecap)"
ABSENT_IFACE = "tcnoif0"


def tracecap_exe() -> str:
    exe = shutil.which("tracecap")
    if exe is None:
        pytest.skip("tracecap is not installed: run `make setup`")
    return exe


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (this test's own excluded)."""
    found = []
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        if needle in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def bad_runs(workdir: Path) -> list[tuple[list[str | bytes], str]]:
    """(options of `tracecap run`, a fragment of the one error line it must print)."""
    return [
        (
            ["--capture", b"dir:" + os.fsencode(workdir) + b"/caf\xe9"],
            f"capture output dir is not valid UTF-8: 'dir:{workdir}/caf\\xe9' has byte 0xe9",
        ),
        (
            ["--capture", f"dir:{workdir}/{'n' * 256}"],
            "capture output dir has a name of 256 bytes, over the 255 the kernel allows",
        ),
        (
            ["--capture", f"dir:{workdir}/" + "/".join(["d" * 200] * 19)],
            "would pass PATH_MAX (4096)",
        ),
        (
            ["--capture", f"dir:{workdir}/cap", "--capture", "write", "--ring-mb", "4096"],
            "--ring-mb '4096': expected a power of two from 1 to 2048 (MiB)",
        ),
        (
            ["--capture", f"dir:{workdir}/cap", "--capture", f"net={ABSENT_IFACE}"],
            f"'net={ABSENT_IFACE}': no such network interface on this host",
        ),
    ]


def test_bad_options_exit_2_before_anything_starts(workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("`tracecap run` refuses to start at all without root")
    exe = tracecap_exe()
    with pytest.raises(OSError):
        socket.if_nametoindex(ABSENT_IFACE)
    programs_before = tracecap_program_ids()
    run_dir = f"/run/tcr-{secrets.token_hex(4)}"
    long_run_dir = "/run/" + "r" * 87  # 92 bytes: supervisor.sock would not fit sun_path
    cases = [
        *((["--run-dir", run_dir, *argv], fragment) for argv, fragment in bad_runs(workdir)),
        (
            ["--run-dir", long_run_dir, "--capture", f"dir:{workdir}/cap", "--capture", "write"],
            f"--run-dir '{long_run_dir}' is 92 bytes: at most 91",
        ),
    ]
    for argv, fragment in cases:
        result = subprocess.run(
            [exe, "run", *argv],
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        stderr = result.stderr.decode(errors="replace")
        assert result.returncode == 2, (argv, stderr)
        assert result.stdout == b"", argv
        assert stderr.startswith("tracecap run: error: "), stderr
        assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
        assert fragment in stderr, (fragment, stderr)
        for path in (run_dir, long_run_dir, workdir / "cap"):
            assert not os.path.lexists(path), (argv, path)
        assert not processes_mentioning(run_dir), argv
        assert not processes_mentioning(long_run_dir), argv
    assert sorted(os.listdir(workdir)) == []
    assert tracecap_program_ids() == programs_before


def run_as_nobody(argv: list[str], *groups: int) -> subprocess.CompletedProcess[str]:
    """``argv`` as user nobody, primary group nogroup, supplementary ``groups`` only."""
    nobody = pwd.getpwnam("nobody")
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
        cwd="/",
        stdin=subprocess.DEVNULL,
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=list(groups),
    )


def first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line in time"
    return proc.stdout.readline()


def test_tap_and_status_tell_a_user_outside_the_group_permission_denied(
    tracecap, workdir: Path
) -> None:
    exe = tracecap_exe()
    run = tracecap("--capture", f"write={workdir}/*")
    run_dir = str(run.run_dir)
    tracecap_gid = grp.getgrnam("tracecap").gr_gid
    assert tracecap_gid not in os.getgrouplist("nobody", pwd.getpwnam("nobody").pw_gid)

    for command in ("status", "tap"):
        result = run_as_nobody([exe, command, "--run-dir", run_dir])
        assert result.returncode == 77, (command, result.stderr)
        assert result.stdout == ""
        assert result.stderr == f"tracecap {command}: permission denied: {run_dir} {HINT}\n"

    # The same user in group tracecap is let in: the refusal above was the permission.
    member = run_as_nobody([exe, "status", "--run-dir", run_dir], tracecap_gid)
    assert member.returncode == 0, member.stderr
    assert '"collector"' in member.stdout
    nobody = pwd.getpwnam("nobody")
    tap = subprocess.Popen(
        [exe, "tap", "--topic", "stats.", "--run-dir", run_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        stdin=subprocess.DEVNULL,
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[tracecap_gid],
    )
    try:
        assert first_line(tap, 30).startswith('{"'), tap.stderr
    finally:
        tap.terminate()
        tap.wait(COMMAND_TIMEOUT_S)

    run.stop()
    assert run.returncode == 0, run.stderr
    # No collector any more: that is what both commands say, with exit 1, even as root.
    for command in ("status", "tap"):
        result = subprocess.run(
            [exe, command, "--run-dir", run_dir],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr.startswith(
            f"tracecap {command}: no collector publishing on ipc://{run_dir}/bus.sock ("
        ), result.stderr


def test_a_second_run_on_a_live_captures_run_dir_is_refused_and_changes_nothing(
    tracecap, workdir: Path
) -> None:
    """Refused before it writes anything: unclaimed, the second run rewrote the live capture's
    options and deleted its logs before its supervisord failed (its socket taken), and the live
    capture's file writer, restarted later, wrote into the second run's dir:. With clear-dir
    and the same dir: it would empty the live capture's output."""
    wdir = workdir / "w"
    wdir.mkdir(mode=0o755)
    run = tracecap("--capture", f"write={wdir}/*")
    python(f"open({str(wdir / 'before')!r}, 'wb').write(b'written before')")
    options = (run.run_dir / "options.conf").read_bytes()
    wait_until("the first artifact", lambda: any(run.out_dir.glob("host/write.*")), 10)
    first_artifacts = sorted(run.out_dir.glob("host/write.*"))
    second = subprocess.run(
        [tracecap_exe(), "run", "--run-dir", str(run.run_dir), "--capture",
         f"dir:{run.out_dir.parent}", "--capture", "clear-dir", "--capture", "write"],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
        check=False,
    )  # fmt: skip
    assert second.returncode == 2, second.stderr
    assert f"another `tracecap run` is using the run directory {run.run_dir}" in second.stderr
    assert "tracecap: ready" not in second.stderr
    assert sorted(run.out_dir.glob("host/write.*")) == first_artifacts  # not cleared
    assert (run.run_dir / "options.conf").read_bytes() == options
    assert (run.run_dir / "writer-file.log").exists()
    # the live capture's writer, restarted, still writes where its own options say
    old = pid_of(run, "writer-file")
    os.kill(old, signal.SIGKILL)
    wait_until("the file writer's restart", lambda: pid_of(run, "writer-file") not in (0, old), 30)
    written: list[Path] = []

    def captured_after() -> bool:
        """Write a file; whether any written so far is in the live capture's output (the
        restarted writer subscribes a moment after it starts: earlier ones are gaps)."""
        after = wdir / f"after-{len(written)}"
        python(f"open({str(after)!r}, 'wb').write(b'written after')")
        written.append(after)
        time.sleep(0.3)
        found = (run.out_dir / "host" / artifact_name("write", p) for p in written)
        return any(f.is_file() and f.read_bytes() == b"written after" for f in found)

    wait_until("a write captured by the restarted writer", captured_after, 30)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert run.artifact(artifact_name("write", wdir / "before")) == b"written before"

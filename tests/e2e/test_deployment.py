"""The deployments `make setup` installs, run as an operator runs them.

- The README's static deployment: its shell blocks are read from the README and run as
  written, from the repository, with root's login PATH (no virtual environment on it), and
  each command's result is checked; a real write is captured meanwhile.
- tracecap.service: `systemd-analyze verify` accepts the installed unit, and the deployment runs
  in the sandbox the unit describes (tests/support/unit_sandbox.py: its capability bounding
  set, no-new-privileges, Nice= and read-only file system; this machine has no systemd as PID 1
  to start it) and still captures a write and a memfd binary run by root, byte for byte.

Both use the deployment's own paths (/run/tracecap, /etc/tracecap, /var/lib/tracecap), so
another static deployment must not be running.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import unit_sandbox
from tracecap import cli, options

pytestmark = pytest.mark.ebpf

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
STATIC_CONF = ROOT / "supervisord.conf"
UNIT = Path("/etc/systemd/system/tracecap.service")
RUN_DIR = Path(cli.DEFAULT_RUN_DIR)
OUT_DIR = Path(options.DEFAULT_DIR) / "out"
#: What root's login shell has on Debian (/etc/profile): what "as root, as written" means.
ROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
READY_TIMEOUT_S = 90
STOP_TIMEOUT_S = 90


def readme_blocks(heading: str) -> list[list[str]]:
    """The commands of each ```sh block under ``heading`` (up to the next heading), one per
    line, with trailing comments removed."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n#", start + len(heading) + 2)
    blocks = re.findall(r"```sh\n(.*?)```", text[start:end], re.S)
    return [
        [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
        for block in blocks
    ]


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command],
        cwd=ROOT,
        env=ROOT_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def static_programs() -> dict[str, bool]:
    """Each program of supervisord.conf and whether it starts with the deployment."""
    parser = configparser.RawConfigParser()
    parser.read(STATIC_CONF)
    return {
        section.removeprefix("program:"): parser[section].getboolean("autostart", True)
        for section in parser.sections()
        if section.startswith("program:")
    }


def status_report() -> dict | None:
    done = sh("tracecap status")
    return json.loads(done.stdout) if done.returncode == 0 else None


def wait_ready(proc: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"supervisord exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        report = status_report()
        if report and report["collector"].get("state") == "ready":
            return report
        time.sleep(0.5)
    pytest.fail(f"not ready within {READY_TIMEOUT_S} s:\n{logs()}")


def logs() -> str:
    parts = []
    for path in sorted(RUN_DIR.glob("*.log")):
        with contextlib.suppress(OSError):
            parts.append(f"--- {path}\n{path.read_text(errors='replace')[-2000:]}")
    return "\n".join(parts)


def deployment_processes() -> list[int]:
    """Pids of a static deployment's supervisord (its pid file) and of the programs it starts
    (their argv names its configuration)."""
    pids = []
    with contextlib.suppress(OSError, ValueError):
        pid = int((RUN_DIR / "supervisord.pid").read_text())
        if b"supervisord" in Path(f"/proc/{pid}/cmdline").read_bytes():
            pids.append(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"/etc/tracecap/tracecap.conf" in argv or b"/etc/tracecap/supervisord.conf" in argv:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def deployment_slot() -> Iterator[None]:
    """No static deployment before the test, and none left behind after it."""
    if not shutil.which("tracecap", path=ROOT_ENV["PATH"]):
        pytest.skip("tracecap is not installed: run `make setup`")
    running = deployment_processes()
    if running:
        pytest.fail(f"a static deployment is already running (pids {running}): stop it first")
    yield
    left = deployment_processes()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the deployment outlived its stop: {left}"


def write_probe(workdir: Path) -> tuple[Path, bytes]:
    data = secrets.token_bytes(48 * 1024)
    path = workdir / "probe.bin"
    path.write_bytes(data)
    return path, data


def run_memfd_binary(name: str) -> bytes:
    """Execute a copy of /bin/sleep from a memfd as root: it has no path to open, so only
    /proc/PID/exe leads to it."""
    binary = Path("/bin/sleep").read_bytes()
    fd = os.memfd_create(name)
    try:
        os.write(fd, binary)
        subprocess.run([f"/proc/self/fd/{fd}", "1"], pass_fds=(fd,), check=True)
    finally:
        os.close(fd)
    return binary


def index_records() -> list[dict]:
    return [json.loads(line) for line in (OUT_DIR / "index.jsonl").read_bytes().splitlines()]


def captured(records: list[dict], **match: object) -> bytes:
    """The bytes of the last complete artifact whose index record matches."""
    found = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    assert found, f"no index record with {match}"
    record = found[-1]
    assert record["complete"] is True, record
    return (OUT_DIR / record["path"]).read_bytes()


# --- the README's static deployment ---


def slow_starters() -> set[str]:
    """Programs that supervisord calls STARTING for more than a second (startsecs > 1: the
    exporter, so that one whose address is taken ends FATAL instead of restarting forever)."""
    parser = configparser.RawConfigParser()
    parser.read(STATIC_CONF)
    return {
        section.removeprefix("program:")
        for section in parser.sections()
        if section.startswith("program:") and parser[section].getint("startsecs", 1) > 1
    }


def check_programs(done: subprocess.CompletedProcess[str]) -> None:
    """`supervisorctl status`: each program RUNNING (a slow starter may still be STARTING) or,
    when it does not start with the deployment (autostart=false), STOPPED; exit 3 then, as
    supervisorctl says some program is not running."""
    programs = static_programs()
    states = dict(line.split()[:2] for line in done.stdout.splitlines())
    for name in slow_starters():
        if states.get(name) == "STARTING":
            states[name] = "RUNNING"
    assert states == {n: "RUNNING" if on else "STOPPED" for n, on in programs.items()}, done
    assert done.returncode == (0 if all(programs.values()) else 3), done


def check_status(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done
    report = json.loads(done.stdout)
    assert report["collector"]["state"] == "ready"
    started = {name for name, on in static_programs().items() if on and name.startswith("writer-")}
    assert started <= set(report["writers"]), report["writers"]


def check_shutdown(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done
    assert "Shut down" in done.stdout, done


#: What each command the README shows must do; a command not listed here fails the test.
CHECKS = {
    "supervisorctl -c supervisord.conf status": check_programs,
    "tracecap status": check_status,
    "supervisorctl -c supervisord.conf shutdown": check_shutdown,
}


def niceness(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])


def test_the_readme_static_deployment_works_as_written(deployment_slot, workdir: Path) -> None:
    blocks = readme_blocks("### The static deployment")
    assert len(blocks) == 2, f"expected a start block and a block of commands: {blocks}"
    (start,), commands = blocks
    assert start == "nice -n -10 supervisord -c supervisord.conf"
    unknown = [c for c in commands if c not in CHECKS]
    assert not unknown, f"the README shows commands this test does not check: {unknown}"
    assert commands[-1].endswith(" shutdown"), "the block must end by stopping the deployment"

    log = workdir / "supervisord.out"
    with open(log, "wb") as out:
        # its own session, as a shell's job: a failure below stops all of it, as Ctrl-C would
        proc = subprocess.Popen(
            ["sh", "-c", start],
            cwd=ROOT,
            env=ROOT_ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(proc, log)
        supervisord = int((RUN_DIR / "supervisord.pid").read_text())
        assert niceness(supervisord) == -10
        assert niceness(collector_pid()) == -10  # inherited
        probe, data = write_probe(workdir)
        for command in commands:
            CHECKS[command](sh(command))
        assert proc.wait(STOP_TIMEOUT_S) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(STOP_TIMEOUT_S)
    assert captured(index_records(), source_path=str(probe)) == data


# --- tracecap.service ---


def test_the_installed_unit_is_the_shipped_one_and_systemd_accepts_it() -> None:
    if not UNIT.parent.is_dir():
        pytest.skip("no /etc/systemd/system: set-up installs no unit on this machine")
    assert UNIT.read_text() == (ROOT / "packaging" / "tracecap.service").read_text()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run([analyze, "verify", str(UNIT)], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def cap_mask(names: str) -> int:
    """The capability set a unit line names, as /proc/PID/status prints it (CapEff)."""
    listed = subprocess.run(["setpriv", "--list-caps"], capture_output=True, text=True).stdout
    bits = {f"CAP_{name.upper()}": i for i, name in enumerate(listed.split())}
    return sum(1 << bits[name] for name in names.split())


def collector_pid() -> int:
    """Both deployments share the run directory, so either configuration reaches either."""
    done = sh("supervisorctl -c /etc/tracecap/supervisord.conf pid collector")
    return int(done.stdout)


def test_the_unit_sandbox_still_captures(deployment_slot, workdir: Path) -> None:
    spec = unit_sandbox.spec_of(UNIT)
    for command in spec["ExecStartPre"]:  # '+': outside the sandbox, as systemd runs them
        subprocess.run(command.removeprefix("+").split(), check=True)
    log = workdir / "service.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            unit_sandbox.command(UNIT, spec["ExecStart"][0].split()),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(proc, log)
        pid = collector_pid()
        # the sandbox is in force on the collector
        status = proc_status(pid)
        assert int(status["CapEff"], 16) == cap_mask(spec["CapabilityBoundingSet"][-1])
        assert int(status["CapBnd"], 16) == cap_mask(spec["CapabilityBoundingSet"][-1])
        assert status["NoNewPrivs"] == "1"
        assert niceness(pid) == int(spec["Nice"][-1])
        mounts = {
            line.split()[4]: line.split()[5].split(",")
            for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        }
        assert "ro" in mounts["/"] and "rw" in mounts[str(OUT_DIR.parent)], mounts
        probe, data = write_probe(workdir)
        name = f"tc-{secrets.token_hex(4)}"
        binary = run_memfd_binary(name)
        time.sleep(1.5)  # the writers index an artifact once it has been idle for a second
        proc.send_signal(signal.SIGTERM)  # KillMode=mixed: supervisord alone gets SIGTERM
        assert proc.wait(STOP_TIMEOUT_S) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(STOP_TIMEOUT_S)
    records = index_records()
    assert captured(records, source_path=str(probe)) == data
    execs = [r for r in records if r.get("kind") == "exec" and f"memfd_{name}" in (r["path"] or "")]
    assert execs, f"the memfd binary was not captured:\n{logs()}"
    assert (OUT_DIR / execs[-1]["path"]).read_bytes() == binary

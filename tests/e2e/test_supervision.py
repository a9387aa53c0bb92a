"""supervisord running the real pipeline: status, killed writer, collector restart, stop order.

Everything here goes through the supervisord that `tracecap run` starts in its run directory,
driven with the real supervisorctl, with real processes writing real files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from tests.support.pipeline import (
    RESTART_TIMEOUT_S,
    Run,
    artifact_name,
    ctl,
    pid_of,
    wait_until,
)
from tests.support.workloads import WORKLOAD_TIMEOUT_S, python
from tests.support.writer_harness import read_index
from tracecap import bus

pytestmark = pytest.mark.ebpf

#: How long a write may take to reach the index (writers flush after 1 s idle).
CAPTURE_TIMEOUT_S = 30


def status(run: Run) -> dict[str, str]:
    """Program name -> state, from `supervisorctl status`."""
    out = ctl(run, "status").stdout
    states = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            states[fields[0]] = fields[1]
    return states


def live_index(run: Run) -> list[dict]:
    """The index as it is now, while the writers run (a line being appended is skipped)."""
    path = run.out_dir / "index.jsonl"
    records = []
    if path.exists():
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


def write_record(records: list[dict], path: Path) -> dict | None:
    """The current index line of the write artifact of ``path``, if any."""
    name = f"host/{artifact_name('write', path)}"
    found = [r for r in records if r.get("kind") == "write" and r.get("path") == name]
    return found[-1] if found else None


def write_files(paths: list[Path]) -> None:
    """One child process writing each file's own name into it."""
    python(f"for p in {[str(p) for p in paths]!r}:\n    open(p, 'wb').write(p.encode())\n")


def wait_captured(run: Run, paths: list[Path]) -> None:
    wait_until(
        f"{[p.name for p in paths]} in the index",
        lambda: all(write_record(live_index(run), p) for p in paths),
        CAPTURE_TIMEOUT_S,
    )


def capture_three_files(tracecap: Callable[..., Run], workdir: Path) -> tuple[Run, Path]:
    """A write capture of ``<workdir>/w`` whose file writer has already recorded three files
    there: the writer is up, subscribed and writing its index."""
    wdir = workdir / "w"
    wdir.mkdir(mode=0o755)
    run = tracecap("--capture", f"write={wdir}/*")
    before = [wdir / f"before-{i}" for i in range(3)]
    write_files(before)
    wait_captured(run, before)
    return run, wdir


def wait_subscribed(run: Run, wdir: Path, label: str) -> None:
    """Write probe files until one is captured: the writer is then connected and subscribed."""
    probes: list[Path] = []
    deadline = time.monotonic() + CAPTURE_TIMEOUT_S
    while time.monotonic() < deadline:
        probe = wdir / f"probe-{label}-{len(probes)}"
        write_files([probe])
        probes.append(probe)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            records = live_index(run)
            if any(write_record(records, p) for p in probes):
                return
            time.sleep(0.1)
    pytest.fail(f"no probe write was captured within {CAPTURE_TIMEOUT_S}s ({label})")


def gap_records(run: Run) -> list[dict]:
    return [r for r in run.index if r.get("kind") == "gap"]


def summary_gaps(stderr: str) -> int:
    match = re.search(r"tracecap: summary: .*bus gaps (\d+) messages", stderr)
    assert match, f"no summary line with bus gaps in:\n{stderr}"
    return int(match.group(1))


def test_status_shows_collector_and_every_writer_running(tracecap, workdir: Path) -> None:
    run = tracecap("--capture", f"write={workdir}/*", "--capture", "exec")
    result = ctl(run, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    states = status(run)
    assert states == {
        "collector": "RUNNING",
        "writer-events": "RUNNING",  # events.jsonl, whatever is captured
        "writer-exec": "RUNNING",
        "writer-file": "RUNNING",
    }, result.stdout
    pids = {name: pid_of(run, name) for name in states}
    assert all(pid > 0 and os.path.exists(f"/proc/{pid}") for pid in pids.values()), pids
    assert len(set(pids.values())) == 4, pids
    run.stop()
    assert run.returncode == 0, run.stderr


def test_killed_writer_is_restarted_and_its_loss_is_a_recorded_gap(tracecap, workdir: Path) -> None:
    run, wdir = capture_three_files(tracecap, workdir)

    old_pid = pid_of(run, "writer-file")
    assert old_pid > 0
    # A child keeps writing files in the filter through the kill window.
    loop = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                end = time.monotonic() + 4.0
                i = 0
                while time.monotonic() < end:
                    p = {str(wdir)!r} + f"/during-{{i}}"
                    open(p, "wb").write(p.encode())
                    i += 1
                    time.sleep(0.01)
                print(i)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        os.kill(old_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        new_pid = wait_until(
            "writer-file to come back with a new pid",
            lambda: (pid := pid_of(run, "writer-file")) not in (0, old_pid) and pid,
            RESTART_TIMEOUT_S,
        )
        wait_until(
            "writer-file RUNNING again",
            lambda: status(run).get("writer-file") == "RUNNING",
            RESTART_TIMEOUT_S,
        )
        restart_s = time.monotonic() - killed_at
    finally:
        during_count = int(loop.communicate(timeout=WORKLOAD_TIMEOUT_S)[0])
    assert during_count > 50
    assert not os.path.exists(f"/proc/{old_pid}")
    assert os.path.exists(f"/proc/{new_pid}")
    assert restart_s < RESTART_TIMEOUT_S

    wait_subscribed(run, wdir, "restarted")
    after = [wdir / f"after-{i}" for i in range(5)]
    write_files(after)
    wait_captured(run, after)
    assert pid_of(run, "writer-file") == new_pid, "the writer restarted again"
    run.stop()
    assert run.returncode == 0, run.stderr

    sup_log = (run.run_dir / "supervisord.log").read_text()
    assert "exited: writer-file (terminated by SIGKILL" in sup_log, sup_log

    gaps = gap_records(run)
    assert gaps, f"no gap record in the index after a writer was killed:\n{run.stderr}"
    for gap in gaps:
        assert gap["writer"] == "file", gap
        assert gap["topic"].startswith("file.write."), gap
        assert 0 <= gap["from_seq"] <= gap["to_seq"], gap
        assert isinstance(gap["epoch"], int), gap
    assert len({g["epoch"] for g in gaps}) == 1, gaps  # one collector, one epoch

    # After the restart the writer captures normally: complete, exact contents.
    for path in after:
        record = write_record(run.index, path)
        assert record is not None, path
        assert record["complete"] is True and record["missing"] == [], record
        assert run.artifact(artifact_name("write", path)) == str(path).encode()

    assert summary_gaps(run.stderr) > 0, run.stderr


class StatsTap(threading.Thread):
    """A subscriber of the collector's stats: (epoch, seq) of every stats message it sees.

    It listens to stats. only, so its subscription can never stand in for a writer's when a
    restarted collector waits for its subscribers.
    """

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.seen: list[tuple[int, int]] = []
        self.halt = threading.Event()
        self.connected = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        sock.setsockopt(zmq.SUBSCRIBE, bus.TOPIC_STATS)
        sock.connect(self.endpoint)
        self.connected.set()
        try:
            while not self.halt.is_set():
                if sock.poll(100):
                    msg = bus.decode(sock.recv_multipart())
                    self.seen.append((msg.env["epoch"], msg.env["seq"]))
        finally:
            sock.close()
            ctx.term()

    def epochs(self) -> list[int]:
        out: list[int] = []
        for epoch, _ in list(self.seen):
            if epoch not in out:
                out.append(epoch)
        return out


def test_collector_restart_starts_a_new_epoch_without_a_false_gap(tracecap, workdir: Path) -> None:
    wdir = workdir / "w"
    wdir.mkdir(mode=0o755)
    run = tracecap("--capture", f"write={wdir}/*", "--capture", "exec")
    tap = StatsTap(f"ipc://{run.run_dir}/bus.sock")
    tap.start()
    try:
        wait_until("a stats message", lambda: tap.seen, 30)
        writers = {name: pid_of(run, name) for name in ("writer-file", "writer-exec")}
        old_collector = pid_of(run, "collector")

        before = [wdir / f"before-{i}" for i in range(3)]
        write_files(before)
        wait_captured(run, before)

        result = ctl(run, "restart", "collector")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "collector: started" in result.stdout, result.stdout
        new_collector = pid_of(run, "collector")
        assert new_collector not in (0, old_collector)
        wait_until(
            "the restarted collector to attach",
            lambda: (run.run_dir / "collector.log").read_text().count("attached") >= 2,
            60,
        )
        wait_until("stats of a second epoch", lambda: len(tap.epochs()) >= 2, 30)
        assert status(run) == {
            "collector": "RUNNING",
            "writer-events": "RUNNING",
            "writer-exec": "RUNNING",
            "writer-file": "RUNNING",
        }

        after = [wdir / f"after-{i}" for i in range(3)]
        write_files(after)
        wait_captured(run, after)
        # The writers carried on: same processes, never restarted.
        assert {name: pid_of(run, name) for name in writers} == writers
    finally:
        tap.halt.set()
        tap.join(10)
    run.stop()
    assert run.returncode == 0, run.stderr

    epochs = tap.epochs()
    assert len(epochs) == 2, epochs
    new_seqs = [seq for epoch, seq in tap.seen if epoch == epochs[1]]
    assert min(new_seqs) == 0, new_seqs  # numbering restarts at 0 in the new epoch

    for path in before + after:
        record = write_record(run.index, path)
        assert record is not None, path
        assert run.artifact(artifact_name("write", path)) == str(path).encode()
    assert gap_records(run) == [], "a collector restart was recorded as a loss"
    assert summary_gaps(run.stderr) == 0, run.stderr
    assert "gap:" not in run.stderr, run.stderr


def _state(pid: int) -> str | None:
    """The process state letter, or None once it is gone; a zombie has exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def test_stop_stops_collector_before_writers(tracecap, workdir: Path) -> None:
    wdir = workdir / "w"
    wdir.mkdir(mode=0o755)
    run = tracecap("--capture", f"write={wdir}/*", "--capture", "exec")
    pids = {name: pid_of(run, name) for name in ("collector", "writer-file", "writer-exec")}
    assert all(pids.values()), pids
    exited: dict[str, float] = {}
    halt = threading.Event()

    def watch() -> None:
        while not halt.is_set() and len(exited) < len(pids):
            for name, pid in pids.items():
                if name not in exited and _state(pid) in (None, "Z", "X"):
                    exited[name] = time.monotonic()
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    last = wdir / "last"
    write_files([last])  # and stop at once: the collector must hand it on before it exits
    try:
        run.stop()
    finally:
        halt.set()
        watcher.join(10)
    assert run.returncode == 0, run.stderr
    assert set(exited) == set(pids), exited
    assert exited["collector"] < exited["writer-file"], exited
    assert exited["collector"] < exited["writer-exec"], exited
    assert run.artifact(artifact_name("write", last)) == str(last).encode()
    assert write_record(run.index, last) is not None


def summary_artifacts(stderr: str) -> int:
    match = re.search(r"tracecap: summary: .* (\d+) artifacts;", stderr)
    assert match, f"no summary line with artifacts in:\n{stderr}"
    return int(match.group(1))


def test_summary_counts_what_a_killed_writer_captured(tracecap, workdir: Path) -> None:
    run, wdir = capture_three_files(tracecap, workdir)
    stats = run.run_dir / "stats" / "writer-file.json"
    wait_until(
        "the writer's counters to show its artifacts",
        lambda: stats.exists() and json.loads(stats.read_text())["counters"]["artifacts"] == 3,
        10,
    )

    old_pid = pid_of(run, "writer-file")
    os.kill(old_pid, signal.SIGKILL)
    wait_until(
        "writer-file to come back with a new pid",
        lambda: pid_of(run, "writer-file") not in (0, old_pid),
        RESTART_TIMEOUT_S,
    )
    wait_subscribed(run, wdir, "restarted")
    after = [wdir / f"after-{i}" for i in range(3)]
    write_files(after)
    wait_captured(run, after)
    run.stop()
    assert run.returncode == 0, run.stderr

    in_index = {r["path"] for r in run.index if r.get("kind") == "write"}
    assert len(in_index) >= 6  # before, after and at least one probe
    assert summary_artifacts(run.stderr) >= len(in_index), (run.stderr, sorted(in_index))


def test_a_stop_during_start_up_stops_everything(workdir: Path) -> None:
    """SIGINT while `tracecap run` is still starting (here from a parent that ignores SIGINT,
    as a shell's background job does, which children inherit): the run still stops, and
    leaves no supervisord, collector or writer behind."""
    run_dir = Path(f"/run/tcr-early-{os.getpid()}")
    argv = ["tracecap", "run", "--run-dir", str(run_dir), "--capture", f"dir:{workdir}/early",
            "--capture", "exec"]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        # as soon as it writes supervisord's configuration: nothing is running or ready yet
        deadline = time.monotonic() + 30
        while not (run_dir / "supervisord.conf").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
        left = subprocess.run(
            ["pgrep", "-f", "--", str(run_dir)], capture_output=True, text=True
        ).stdout.split()
        assert left == [], f"left running: {left}\n{err.decode(errors='replace')}"
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["pkill", "-9", "-f", "--", str(run_dir)], check=False)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_a_killed_supervisord_takes_the_collector_and_writers_with_it(
    tracecap, workdir: Path
) -> None:
    """`tracecap run` and its supervisord SIGKILLed (as the OOM killer or a closed terminal's
    SIGPIPE would end them): the root collector, probes attached, and the writers must not run
    on as orphans. Each gets SIGTERM from the kernel when supervisord goes
    (tracecap/lifetime.py) and stops as supervisord would have stopped it: the file writer
    flushes, so a file written before the kill has its index line."""
    wdir = workdir / "w"
    wdir.mkdir(mode=0o755)
    run = tracecap("--capture", f"write={wdir}/*")
    before = wdir / "before"
    write_files([before])
    art = run.out_dir / "host" / artifact_name("write", before)
    # its bytes reached the writer; its index line waits for the idle flush (or the stop's)
    wait_until(
        "the artifact's bytes",
        lambda: art.exists() and art.read_bytes() == str(before).encode(),
        30,
    )
    pids = {name: pid_of(run, name) for name in ("collector", "writer-file", "writer-events")}
    supervisord = int(ctl(run, "pid").stdout.strip())
    assert all(pids.values()) and supervisord, (pids, supervisord)
    run.proc.kill()
    os.kill(supervisord, signal.SIGKILL)
    run.proc.wait(10)
    try:
        left = wait_until(
            "the collector and writers to exit",
            lambda: not [n for n, pid in pids.items() if _state(pid) not in (None, "Z", "X")],
            30,
        )
    finally:
        for pid in pids.values():  # never leave them running for the next test
            with contextlib.suppress(ProcessLookupError):
                if _state(pid) not in (None, "Z", "X"):
                    os.kill(pid, signal.SIGKILL)
    assert left
    run.returncode = run.proc.returncode
    index = read_index(run.out_dir)
    assert write_record(index, before) is not None, index

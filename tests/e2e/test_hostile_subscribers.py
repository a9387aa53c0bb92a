"""Hostile subscribers, as root over the real pipeline: a member of group ``tracecap`` who floods
the bus with subscriptions, or subscribes to everything and never reads, costs the collector
bounded memory and the writers nothing (tracecap/subscribers.py)."""

from __future__ import annotations

import grp
import io
import os
import pwd
import random
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.support.pipeline import Run, pid_of, whole_messages_lost, written_files
from tests.support.workloads import WORKLOAD_TIMEOUT_S, python
from tests.support.writer_harness import byte_equation
from tracecap import bus

#: What the collector may grow by under attack. Before, the subscription flood grew it from
#: 38 MB to 4.5 GB (each prefix kept forever and repeated in every stats message).
RSS_GROWTH_LIMIT_KIB = 64 * 1024


def collector_pid(run: Run) -> int:
    out = subprocess.check_output(["pgrep", "-f", f"collector .*--run-dir {run.run_dir}"])
    return int(out.split()[0])


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


class StatsFeed:
    """The collector's ``stats.`` messages as a consumer sees them, each through the bus's own
    decoder (which refuses envelopes over bus.MAX_ENVELOPE_BYTES)."""

    def __init__(self, run: Run) -> None:
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, bus.TOPIC_STATS)
        self._sock.connect(f"ipc://{run.run_dir}/bus.sock")
        self.received: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(100):
                frames = self._sock.recv_multipart()
                try:
                    self.received.append(bus.decode(frames).env)
                except bus.BadMessage as exc:
                    self.refused.append(str(exc))

    def next(self, timeout: float = 10) -> dict[str, Any]:
        """The first stats message after now."""
        seen, deadline = len(self.received), time.monotonic() + timeout
        while len(self.received) <= seen:
            assert time.monotonic() < deadline, f"no stats within {timeout} s: {self.refused}"
            time.sleep(0.05)
        return self.received[-1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def as_group_member(code: str, run: Run, user: str) -> subprocess.Popen:
    """Start ``code`` (with ``endpoint`` defined) as ``user`` with group ``tracecap``: what any
    member of the group, or the writers' own user, can run."""
    entry = pwd.getpwnam(user)
    gid = grp.getgrnam("tracecap").gr_gid
    prologue = f"endpoint = {f'ipc://{run.run_dir}/bus.sock'!r}\n"
    return subprocess.Popen(
        [sys.executable, "-c", prologue + textwrap.dedent(code)],
        user=entry.pw_uid,
        group=gid,
        extra_groups=[gid],
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return err


FLOOD = """
    import signal, sys, time, zmq
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ctx = zmq.Context()
    socks = []
    # 100 connections of 600 distinct prefixes each (60,000), and the SUB sockets send them
    # all again each time they reconnect
    for c in range(100):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        for i in range(600):
            s.setsockopt(zmq.SUBSCRIBE, b"flood.%d.%d." % (c, i))
        socks.append(s)
    print("flooding", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)
"""


@pytest.mark.parametrize("user", ["nobody", "tracecap"])
def test_a_subscription_flood_costs_bounded_memory_and_blinds_nothing(
    tracecap, workdir: Path, user: str
) -> None:
    target = workdir / "w-during-flood"
    run = tracecap("--capture", f"write={workdir}/w-*")
    collector = collector_pid(run)
    feed = StatsFeed(run)
    before = rss_kib(collector)
    peak = before
    flood = as_group_member(FLOOD, run, user)
    try:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            assert flood.poll() is None, flood.stderr.read() if flood.stderr else ""
            peak = max(peak, rss_kib(collector))
            time.sleep(0.2)
        stats = feed.next()
        python(f"""
            with open({str(target)!r}, "wb") as f:
                for i in range(64):
                    f.write(bytes([i]) * 65536)
        """)
        peak = max(peak, rss_kib(collector))
    finally:
        err = stop(flood)
        feed.close()
    assert "flooding" in err, err
    assert feed.refused == []
    coll = stats["collector"]
    assert sum(coll["bus_peers_dropped"].values()) > 0, coll
    assert coll["bus_subscriptions_ignored"] > 0, coll
    assert not any(prefix.startswith("flood") for prefix in stats["subscriptions"]), stats
    assert stats["subscriptions"].get("file.write.", 0) >= 1, stats["subscriptions"]
    print(f"flood as {user}: collector VmRSS {before} -> peak {peak} KiB; {coll}")
    assert peak - before < RSS_GROWTH_LIMIT_KIB, f"collector grew from {before} to {peak} KiB"
    run.stop()
    assert run.returncode == 0, run.stderr
    (record,) = run.records("write")
    assert record["complete"] is True and record["missing"] == [], record
    expected = b"".join(bytes([i]) * 65536 for i in range(64))
    assert (run.out_dir / record["path"]).read_bytes() == expected


STALLED = """
    import signal, sys, time, zmq
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 1)
    s.connect(endpoint)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    print("subscribed", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)  # never reads
"""


@pytest.mark.parametrize("user", ["nobody", "tracecap"])
def test_a_stalled_subscriber_costs_the_writers_nothing(tracecap, workdir: Path, user: str) -> None:
    """A group member, or a paused `tracecap tap` (the writers' user, but not started by the
    writers' supervisord), subscribes to everything and never reads while 256 MiB are written:
    the file writer's artifact is complete and byte-exact, no payload went out as a loss
    notice, and the collector did not hold what the stalled subscriber did not take."""
    target, source = workdir / "w-big", workdir / "big.src"
    source.write_bytes(os.urandom(256 << 20))
    run = tracecap("--ring-mb", "64", "--capture", f"write={target}*")
    collector = collector_pid(run)
    feed = StatsFeed(run)
    before = rss_kib(collector)
    stalled = as_group_member(STALLED, run, user)
    peak = before
    try:
        deadline = time.monotonic() + 10
        while "subscribed" not in (line := stalled.stderr.readline() if stalled.stderr else ""):
            assert time.monotonic() < deadline and line, "the stalled subscriber did not start"
        time.sleep(0.5)
        done = threading.Event()
        writer = threading.Thread(
            target=lambda: (
                python(f"""
                    import os, time
                    src = os.open({str(source)!r}, os.O_RDONLY)
                    dst = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT, 0o644)
                    start, done = time.monotonic(), 0
                    while chunk := os.read(src, 1 << 20):
                        done += os.write(dst, chunk)
                        ahead = start + done / 150e6 - time.monotonic()
                        if ahead > 0.001:
                            time.sleep(ahead)
                """),
                done.set(),
            )
        )
        writer.start()
        while not done.is_set():
            peak = max(peak, rss_kib(collector))
            time.sleep(0.05)
        writer.join()
        time.sleep(1.5)
        stats = feed.next()
    finally:
        stop(stalled)
        feed.close()
    run.stop()
    assert run.returncode == 0, run.stderr
    coll = stats["collector"]
    print(f"stalled subscriber: collector VmRSS {before} -> peak {peak} KiB; {coll}")
    assert coll["bus_peers_dropped"].get("stalled", 0) >= 1, coll
    assert coll["bus_dropped_messages"] == 0, coll
    assert re.search(r"bus backlog full 0 messages", run.stderr), run.stderr
    assert peak - before < RSS_GROWTH_LIMIT_KIB, f"collector grew from {before} to {peak} KiB"
    (record,) = run.records("write")
    assert record["complete"] is True and record["missing"] == [], record
    assert (run.out_dir / record["path"]).read_bytes() == source.read_bytes()


def rss_anon_kib(pid: int) -> int:
    """Anonymous resident memory: the heap and ZeroMQ's queues, not the ring buffers (mapped
    from the kernel, they count in VmRSS as the collector reads them)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"RssAnon:\s+(\d+) kB", status).group(1))


#: What the collector may grow by behind a stalled file writer that 50,000 small files are
#: written for: the bus budget (publisher.BACKLOG_BYTES, 16 MiB, which now counts copied
#: messages too: 12.6 MB were counted held at the end) and the collector's own state for the
#: files (measured: 37 MiB of growth in all). Before, ZeroMQ held every 4 KiB message with its
#: envelope: over 200 MiB for these 50,000.
STALLED_WRITER_GROWTH_KIB = 64 * 1024
#: How long the file writer stays stopped at least.
STALL_S = 8.0
#: One file written in 4 KiB pieces every 10 ms until a flag file appears: argv[1], argv[2].
STREAMER = textwrap.dedent(
    """
    import os, random, sys, time
    rng = random.Random(5)
    with open(sys.argv[1], "wb", buffering=0) as f:
        while not os.path.exists(sys.argv[2]):
            f.write(rng.randbytes(4096))
            time.sleep(0.01)
    """
)


def test_a_stalled_file_writer_behind_small_files_costs_bounded_memory(
    tracecap, workdir: Path
) -> None:
    """The file writer is stopped (SIGSTOP) while tar extracts 50,000 files of 4 KiB, each
    one small (copied) bus message: the collector's memory grows by the bus budget at most,
    and after SIGCONT every file is its bytes exactly, or its line lists what is missing
    (bytes written = present + listed), or it has no line and a counted loss covers it. A
    process writing one file in 4 KiB pieces all along (continuations of one stream, some
    left in the ring for longer than the collector keeps a stream) gets the same."""
    count, size = 50_000, 4096
    archive = workdir / "small.tar"
    rng = random.Random(31)
    with tarfile.open(archive, "w") as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"f{i}")
            info.size, info.mode = size, 0o644
            tar.addfile(info, io.BytesIO(rng.randbytes(size)))
    wdir = workdir / "w"
    wdir.mkdir(mode=0o755)
    run = tracecap("--capture", f"write={wdir}/*")
    collector, writer = collector_pid(run), pid_of(run, "writer-file")
    feed = StatsFeed(run)
    before = peak = rss_anon_kib(collector)
    stream, enough = wdir / "stream", workdir / "enough"
    os.kill(writer, signal.SIGSTOP)
    stalled = time.monotonic()
    try:
        streamer = subprocess.Popen([sys.executable, "-c", STREAMER, str(stream), str(enough)])
        tar_x = subprocess.Popen(["tar", "-xf", str(archive), "-C", str(wdir)])
        deadline = time.monotonic() + WORKLOAD_TIMEOUT_S
        while tar_x.poll() is None:
            assert time.monotonic() < deadline, "tar did not finish"
            peak = max(peak, rss_anon_kib(collector))
            time.sleep(0.05)
        assert tar_x.returncode == 0
        # what the collector still drains from its ring; the stall outlasts the collector's
        # 5 s for a stream (collector/file_assembly.py STREAM_TIMEOUT_NS)
        while time.monotonic() - stalled < STALL_S:
            peak = max(peak, rss_anon_kib(collector))
            time.sleep(0.05)
        enough.touch()
        assert streamer.wait(timeout=30) == 0
        stats = feed.next()
    finally:
        os.kill(writer, signal.SIGCONT)
        feed.close()
    index = run.out_dir / "index.jsonl"
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 3.0:  # the writer catches up, then the index is quiet
        size_now = index.stat().st_size if index.exists() else 0
        if size_now != last:
            last, since = size_now, time.monotonic()
        time.sleep(0.2)
    assert pid_of(run, "writer-file") == writer, "the writer was restarted"
    run.stop()
    assert run.returncode == 0, run.stderr[-2000:]
    coll = stats["collector"]
    print(f"stalled file writer: collector RssAnon {before} -> peak {peak} KiB; {coll}")
    complete = listed = unrecorded = missing = 0
    short: list[dict[str, Any]] = []  # lines that know of fewer bytes than were written
    for data, record, artifact in written_files(run, wdir, count, size, seed=31):
        if record is None:
            unrecorded += 1
            continue
        try:
            figures = byte_equation(data, artifact, record["missing"])
        except AssertionError:
            short.append(record)
            continue
        if record["complete"]:
            assert artifact == data, record
            complete += 1
        else:
            listed += 1
            missing += figures["listed"]
    counted = whole_messages_lost(run.stderr)
    print(f"{complete} complete, {listed} listed ({missing} bytes), {unrecorded} without a line")
    wrote = stream.read_bytes()
    [line] = [r for r in run.records("write") if r["source_path"] == str(stream)][-1:]
    kept = (run.out_dir / line["path"]).read_bytes()
    figures = byte_equation(wrote, kept, line["missing"])
    print(f"the stream: {figures}, complete {line['complete']}")
    assert line["complete"] is (figures["present"] == len(wrote)), line
    summary = re.search(r"tracecap: summary: .*", run.stderr)
    print(f"{len(short)} lines short of the bytes written: {short[:3]}; {summary and summary[0]}")
    assert complete + listed + unrecorded + len(short) == count
    # a line that knows of fewer bytes than were written never says it is complete: a loss
    # notice that overtook the file's first bytes once left `complete: true` at 512 of 4096
    # (collector/drop_notices.py); such a line is covered by a counted loss, as a file with no
    # line at all
    assert not [r for r in short if r["complete"]], short[:3]
    assert unrecorded + len(short) <= counted, run.stderr[-2000:]
    # the writer held far more than the budget back: the budget, not the HWM, bounded it
    assert listed + unrecorded > 0, coll
    # what the collector replaced by loss notices is among what the lines list
    assert missing >= coll["bus_dropped_bytes"], coll
    assert peak - before < STALLED_WRITER_GROWTH_KIB, f"collector grew {before} -> {peak} KiB"

"""The fleet on NATS JetStream with real servers on 127.0.0.1 (Debian's nats-server): capture
hosts' bridges publishing into one stream, a remote file writer consuming it, and the faults
it must survive with nothing lost: the writer killed and restarted, NATS stopped and started
again, one node of a three-node cluster (replicas 3) lost. Each ends byte-exact with no gap
record; a duplicate publish is stored once; `tracecap status --nats` lists the hosts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_remote_writer import Proc, free_port, index, side, tracecap_owned
from tests.support.pipeline import artifact_name, pid_of, wait_until

pytestmark = pytest.mark.ebpf
__all__ = ["side"]  # the fixture, imported for this module's tests

#: The workload: SIZE bytes in 64 KiB positional writes, paced so that faults land mid-file.
SIZE = 24 << 20
CHUNK = 64 << 10
WRITE_SECONDS = 6.0
WORKLOAD = f"""
import os, sys, time
src, dst, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
data = open(src, "rb").read()
fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for off in range(0, len(data), {CHUNK}):
    os.pwrite(fd, data[off:off + {CHUNK}], off)
    time.sleep(pause)
os.close(fd)
"""
DONE_TIMEOUT_S = 90


@dataclass
class Node:
    name: str
    port: int
    cluster_port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


class Nats:
    """nats-server processes with JetStream (one, or a cluster of three), on 127.0.0.1."""

    def __init__(self, base: Path, count: int) -> None:
        self.base = base
        self.nodes = [
            Node(f"n{i}", free_port("127.0.0.1"), free_port("127.0.0.1")) for i in range(count)
        ]
        for node in self.nodes:
            self.start(node)
        for node in self.nodes:
            wait_until(f"{node.name} listening", lambda n=node: self._ready(n), 20)
        if count > 1:
            wait_until("a JetStream meta leader", self._meta_leader, 30)

    @property
    def urls(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def _config(self, node: Node) -> Path:
        lines = [
            f"listen: 127.0.0.1:{node.port}",
            f"server_name: {node.name}",
            f'jetstream {{ store_dir: "{self.base / node.name}" }}',
            "max_payload: 8MB",
        ]
        if len(self.nodes) > 1:
            routes = ", ".join(
                f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node
            )
            lines.append(
                f"cluster {{ name: tc, listen: 127.0.0.1:{node.cluster_port}, routes: [{routes}] }}"
            )
        path = self.base / f"{node.name}.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, node: Node) -> None:
        log = open(self.base / f"{node.name}.log", "ab")  # noqa: SIM115 - the server's
        node.proc = subprocess.Popen(
            ["nats-server", "-c", str(self._config(node))], stdout=log, stderr=log
        )

    def stop(self, node: Node, sig: int = signal.SIGTERM) -> None:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)
            node.proc.wait(30)
        node.proc = None

    def _ready(self, node: Node) -> bool:
        return "Server is ready" in (self.base / f"{node.name}.log").read_text(errors="replace")

    def _meta_leader(self) -> bool:
        logs = "".join((self.base / f"{n.name}.log").read_text() for n in self.nodes)
        return "JetStream cluster new metadata leader" in logs or "meta leader" in logs

    def close(self) -> None:
        for node in self.nodes:
            self.stop(node, signal.SIGKILL)


@pytest.fixture
def nats_dir(side: Path) -> Iterator[Path]:
    path = side / "nats"
    path.mkdir()
    yield path


def js(urls: str, coro: Callable) -> object:
    """Run ``coro(jetstream)`` against the servers (the test's own client)."""
    import nats

    async def main() -> object:
        nc = await nats.connect(urls.split(","))
        try:
            return await coro(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())


def bridge(run, urls: str, host: str, side: Path, *extra: str) -> Proc:
    proc = Proc(
        [
            "tracecap", "bridge", "--nats", urls, "--host", host,
            "--run-dir", str(run.run_dir), *extra,
        ],
        side, f"bridge-{host}",
    )  # fmt: skip
    proc.wait_for("publishing")
    return proc


def remote_writer(urls: str, side: Path, name: str = "writer") -> Proc:
    run_dir = tracecap_owned(side / "run-w")
    tracecap_owned(run_dir / "stats")
    proc = Proc(
        [
            "tracecap", "writer", "file", "--connect", urls,
            "--capture", f"dir:{tracecap_owned(side / 'remote')}", "--run-dir", str(run_dir),
        ],
        side, name,
    )  # fmt: skip
    proc.wait_for("consuming")
    return proc


def workload(side: Path, target: Path, tag: str) -> tuple[bytes, subprocess.Popen]:
    data = os.urandom(SIZE)
    source = side / f"source-{tag}.bin"  # outside the captured tree
    source.write_bytes(data)
    pause = WRITE_SECONDS / (SIZE // CHUNK)
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(source), str(target), str(pause)])
    return data, proc


def remote_done(side: Path, host: str, target: Path) -> dict | None:
    """The remote writer's current line for ``target`` once it holds all of it, else None."""
    path = f"host/{artifact_name('write', target)}"
    mine = [r for r in index(side / "remote" / "out" / host) if r.get("path") == path]
    if mine and mine[-1]["size"] == SIZE and mine[-1]["complete"]:
        return mine[-1]
    return None


def check_exact(side: Path, host: str, target: Path, data: bytes) -> dict:
    """Byte-exact, complete, and no gap record in the host's index."""
    out = side / "remote" / "out" / host
    record = remote_done(side, host, target)
    assert record is not None, index(out)[-3:]
    assert record["missing"] == [] and "interrupted" not in record and "bus_gaps" not in record
    assert (out / record["path"]).read_bytes() == data
    gaps = [r for r in index(out) if r.get("kind") == "gap"]
    assert gaps == [], gaps
    return record


def finish(procs: list[Proc]) -> None:
    for proc in procs:
        proc.stop(signal.SIGKILL if proc.proc.poll() is None else signal.SIGTERM)


def test_two_hosts_one_stream_a_killed_remote_writer_and_a_duplicate(
    tracecap, workdir: Path, side: Path, nats_dir: Path
) -> None:
    server = Nats(nats_dir, 1)
    procs: list[Proc] = []
    try:
        (workdir / "a").mkdir()
        (workdir / "b").mkdir()
        run_a = tracecap("--capture", f"write={workdir}/a/*", out_root=workdir / "cap-a")
        run_b = tracecap("--capture", f"write={workdir}/b/*", out_root=workdir / "cap-b")
        procs.append(bridge(run_a, server.urls, "alpha", side))
        procs.append(bridge(run_b, server.urls, "beta", side))
        writer = remote_writer(server.urls, side)
        procs.append(writer)
        time.sleep(1.0)  # the bridges' subscriptions reach the collectors
        target_a, target_b = workdir / "a" / "big.bin", workdir / "b" / "big.bin"
        data_a, work_a = workload(side, target_a, "a")
        data_b, work_b = workload(side, target_b, "b")
        time.sleep(WRITE_SECONDS / 3)
        writer.proc.kill()  # SIGKILL mid-stream: nothing flushed, nothing acknowledged since
        writer.proc.wait()
        assert work_a.poll() is None and work_b.poll() is None  # the files are still written
        assert remote_done(side, "alpha", target_a) is None
        time.sleep(1.0)
        procs.append(restarted := remote_writer(server.urls, side, "writer-again"))
        assert work_a.wait(60) == 0 and work_b.wait(60) == 0
        for host, target in (("alpha", target_a), ("beta", target_b)):
            wait_until(f"{host}'s file", lambda h=host, t=target: remote_done(side, h, t), 60)

        # a duplicate publish (same Nats-Msg-Id) is stored once
        async def duplicate(jet) -> tuple[bool, int, int]:
            info = await jet.stream_info("TRACECAP")
            last = await jet.get_msg("TRACECAP", info.state.last_seq)
            again = await jet.publish(last.subject, last.data, headers=last.headers)
            after = await jet.stream_info("TRACECAP")
            return again.duplicate, info.state.messages, after.state.messages

        was_duplicate, before, after = js(server.urls, duplicate)
        assert was_duplicate and before == after

        status = subprocess.run(
            ["tracecap", "status", "--nats", server.urls], capture_output=True, text=True
        )
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        hosts = {h["host"]: h for h in report["hosts"]}
        assert set(hosts) == {"alpha", "beta"}, report
        for h in hosts.values():
            assert h["collector"]["state"] == "ready" and h["bridge"]["dropped_messages"] == 0
            assert h["age_s"] < 10
        assert restarted.stop() == 0, restarted.stderr()
        run_a.stop()
        run_b.stop()
    finally:
        finish(procs)
        server.close()
    for host, target, data in (("alpha", target_a, data_a), ("beta", target_b, data_b)):
        check_exact(side, host, target, data)
    print(writer.stderr()[-1500:], restarted.stderr()[-1500:], sep="\n")


def test_nats_stopped_and_started_again_mid_stream(
    tracecap, workdir: Path, side: Path, nats_dir: Path
) -> None:
    server = Nats(nats_dir, 1)
    procs: list[Proc] = []
    try:
        run = tracecap("--capture", f"write={workdir}/*")
        procs.append(relay := bridge(run, server.urls, "alpha", side))
        procs.append(writer := remote_writer(server.urls, side))
        time.sleep(1.0)
        target = workdir / "big.bin"
        data, work = workload(side, target, "a")
        time.sleep(WRITE_SECONDS / 3)
        server.stop(server.nodes[0])  # the connection is cut for both the bridge and writer
        time.sleep(3.0)
        server.start(server.nodes[0])
        assert work.wait(60) == 0
        wait_until("the file", lambda: remote_done(side, "alpha", target), DONE_TIMEOUT_S)
        assert relay.stop() == 0 and writer.stop() == 0
        run.stop()
    finally:
        finish(procs)
        server.close()
    check_exact(side, "alpha", target, data)
    assert "NATS disconnected; spooling" in relay.stderr()
    assert "dropped 0 (0 bytes)" in relay.stderr()
    assert "NATS reconnected" in writer.stderr()


def test_a_three_node_cluster_loses_a_node_mid_stream(
    tracecap, workdir: Path, side: Path, nats_dir: Path
) -> None:
    cluster = Nats(nats_dir, 3)
    procs: list[Proc] = []
    try:
        run = tracecap("--capture", f"write={workdir}/*")
        # the bridge and the writer each start on a different node
        urls = cluster.urls
        procs.append(relay := bridge(run, urls, "alpha", side, "--replicas", "3"))
        procs.append(writer := remote_writer(urls, side))

        async def replicas(jet) -> int:
            return (await jet.stream_info("TRACECAP")).config.num_replicas

        assert js(urls, replicas) == 3
        time.sleep(1.0)
        target = workdir / "big.bin"
        data, work = workload(side, target, "a")
        time.sleep(WRITE_SECONDS / 3)
        cluster.stop(cluster.nodes[0], signal.SIGKILL)  # node loss, no goodbye
        assert work.wait(60) == 0
        try:
            wait_until("the file", lambda: remote_done(side, "alpha", target), DONE_TIMEOUT_S)
        except BaseException:
            print(relay.stderr()[-3000:], writer.stderr()[-3000:], sep="\n")
            print(index(side / "remote" / "out" / "alpha")[-3:])
            raise
        assert relay.stop() == 0 and writer.stop() == 0
        run.stop()
    finally:
        finish(procs)
        cluster.close()
    check_exact(side, "alpha", target, data)
    assert "dropped 0 (0 bytes)" in relay.stderr()


#: The burst: 48 MiB in 64 KiB writes at 32 MB/s, during which both bridges stop for
#: STALL_S. What piles up meanwhile (about 13 MB) is past the collector's pressure mark (4 MiB:
#: an ordinary subscriber that takes nothing for 20 ms is then disconnected) and within its
#: payload budget (16 MiB: the local writer loses nothing).
BURST = 48 << 20
BURST_RATE = 32e6
STALL_AT_S = 0.5
STALL_S = 0.4


def stored_messages(urls: str, subject: str) -> list:
    """Every message the stream holds on ``subject``, in stream order."""

    async def fetch(jet) -> list:
        info = await jet.stream_info("TRACECAP", subjects_filter=subject)
        want = (info.state.subjects or {}).get(subject, 0)
        sub = await jet.pull_subscribe(subject, stream="TRACECAP")
        got: list = []
        while len(got) < want:
            for msg in await sub.fetch(min(64, want - len(got)), timeout=10):
                await msg.ack()
                got.append(msg)
        await sub.unsubscribe()
        return got

    return js(urls, fetch)  # type: ignore[return-value]


def seqs_of(urls: str, host: str) -> tuple[list[int], int]:
    """The bus seq of every file.write. message the stream holds for ``host`` (a message
    standing for lost bytes, a loss notice, counts as missing), and their payload bytes."""
    from tracecap import bus, fleet

    messages = stored_messages(urls, fleet.subject(host, bus.TOPIC_FILE_WRITE))
    seqs, payload = [], 0
    for m in messages:
        frames = fleet.frames(bus.TOPIC_FILE_WRITE, m.headers, m.data)
        env = bus.decode(frames).env
        if "lost" not in env:
            seqs.append(env["seq"])
            payload += len(frames[2]) if len(frames) > 2 else 0
    return seqs, payload


def test_the_bridge_tracecap_run_starts_is_never_disconnected_for_a_stall(
    tracecap, workdir: Path, side: Path, nats_dir: Path
) -> None:
    """`tracecap run --nats` runs the bridge as the writers run (the tracecap user, under the
    run's supervisord), so the collector never disconnects it for being slow: both it and a
    `tracecap bridge --nats` started by hand stop reading for STALL_S mid-burst; the hand-started
    one is disconnected and its stream has a hole in seq, the run's has every message, and the
    local writer keeps the whole burst."""
    server = Nats(nats_dir, 1)
    procs: list[Proc] = []
    try:
        run = tracecap("--capture", f"write={workdir}/*", "--nats", server.urls, "--host", "alpha")
        wait_until("the run's bridge publishing", lambda: "publishing" in run.logs(), 30)
        procs.append(by_hand := bridge(run, server.urls, "beta", side))
        time.sleep(1.0)  # its subscription reaches the collector
        relay = pid_of(run, "bridge-nats")
        assert relay > 0
        target = workdir / "burst.bin"
        data = os.urandom(BURST)
        source = side / "burst-source.bin"
        source.write_bytes(data)
        pause = str(CHUNK / BURST_RATE)
        work = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(source), str(target), pause])
        time.sleep(STALL_AT_S)
        for pid in (relay, by_hand.proc.pid):
            os.kill(pid, signal.SIGSTOP)
        time.sleep(STALL_S)
        for pid in (relay, by_hand.proc.pid):
            os.kill(pid, signal.SIGCONT)
        assert work.wait(60) == 0
        time.sleep(2.0)  # the idle flush indexes the local copy; the bridges catch up
        status = subprocess.run(
            ["tracecap", "status", "--nats", server.urls], capture_output=True, text=True
        )
        run.stop()
        by_hand.stop()
        alpha_seqs, beta_seqs = seqs_of(server.urls, "alpha"), seqs_of(server.urls, "beta")
    finally:
        finish(procs)
        server.close()
    local = run.records("write")
    assert len(local) == 1 and local[0]["complete"], "the local writer lost part of the burst"
    assert run.artifact(local[0]["path"].removeprefix("host/")) == data
    hosts = {h["host"]: h for h in json.loads(status.stdout)["hosts"]}
    dropped = hosts["alpha"]["collector"]["collector"].get("bus_peers_dropped") or {}
    assert dropped.get("stalled", 0) >= 1, dropped  # the hand-started bridge
    (alpha, alpha_bytes), (beta, _) = alpha_seqs, beta_seqs
    assert alpha == list(range(len(alpha))) and alpha_bytes == BURST
    assert beta != list(range(len(beta))), "the control: the hand-started one missed nothing"
    assert hosts["alpha"]["bridge"]["dropped_messages"] == 0
    bridge_log = (run.run_dir / "bridge-nats.log").read_text()
    assert "dropped 0 (0 bytes)" in bridge_log, bridge_log[-2000:]

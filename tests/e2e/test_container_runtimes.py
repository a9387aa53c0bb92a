"""Real containers of real runtimes (tests/support/runtimes.py: Podman, Docker, containerd's `ctr`)
through the whole pipeline: attribution, scope for containers started before and after
`ready`, `--rm` containers gone before the paused collector reads their events, nested cgroup
parents, pods, per-container and per-command pcaps, namespace and host pids."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import dpkt
import pytest

from collector.cgroup_rules import classify_path
from collector.containers import DEFAULT, cgroup2_root
from tests.support.pipeline import Run, artifact_name, pid_of, wait_until
from tests.support.runtimes import Runtime, new_id

pytestmark = pytest.mark.ebpf

CGROOT = Path(cgroup2_root(Path("/proc/mounts").read_text()) or "/sys/fs/cgroup")
LAYOUT = {
    "podman": "/libpod_parent/libpod-{id}",
    "docker": "/docker/{id}",
    "containerd": "/tctest/{id}",
}


def test_each_runtime_runs_a_container_in_its_cgroup(runtime: Runtime) -> None:
    """The layouts tests/unit/collector/cgroup_paths.txt records, as the runtimes make them."""
    c = runtime.run(["/bin/sh", "-c", "grep ^0:: /proc/self/cgroup"])
    path = LAYOUT[runtime.name].format(id=c.id)
    assert c.stdout.strip() == "0::" + path
    assert classify_path(path, DEFAULT).container_id == c.id


def _write(target: Path, text: str) -> list[str]:
    """A container command: write ``text`` to ``target`` (a bind-mounted host path)."""
    return ["/bin/sh", "-c", f"echo {text} > {target}"]


def _writers(run: Run, workdir: Path) -> dict[str, str]:
    """Each captured file of ``workdir`` (by its name) and the container it is filed under."""
    out = {}
    for r in run.records("write"):
        name = r["source_path"].rsplit("/", 1)[-1]
        assert r["path"].startswith(f"{r['container_id'] or 'host'}/"), r
        out[name] = r["container_id"]
    return out


@pytest.mark.parametrize("scope", ["container", "container=ID", "host"])
def test_scope_for_containers_started_before_and_after_ready(
    tracecap, workdir: Path, runtime: Runtime, scope: str
) -> None:
    """Before: a container running when tracecap starts. After: one made before but started
    after `ready` (its id known, its cgroup new) and one made and started after. Each writes
    a file at once; the host writes one too."""
    go = workdir / "go"
    before = runtime.run(
        ["/bin/sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done; echo b > {workdir}/before"],
        rm=False, detach=True, extra=runtime.bind(workdir),
    )  # fmt: skip
    later = runtime.create(_write(workdir / "later", "l"), extra=runtime.bind(workdir))
    scope_arg = f"container={later[:12]}" if scope == "container=ID" else scope
    run = tracecap(
        "--scope", scope_arg, "--capture", f"write={workdir}/*", "--capture", "exec",
    )  # fmt: skip
    runtime.start(later)
    fresh = runtime.run(_write(workdir / "fresh", "f"), extra=runtime.bind(workdir))
    go.write_text("go")  # the test process: on the host
    wait_until("the first container's write", (workdir / "before").exists, 30)
    run.stop()
    assert run.returncode == 0, run.stderr
    expected = {
        "container": {"before": before.id, "later": later, "fresh": fresh.id},
        "container=ID": {"later": later},
        "host": {"go": ""},
    }[scope]
    assert _writers(run, workdir) == expected
    # a container started after ready is in scope from its first instruction: the exec of
    # its command (busybox) is captured, under its own id
    execs = {r["container_id"] for r in run.records("exec")}
    if scope == "host":
        assert execs <= {""}
    else:
        assert later in execs
        assert (fresh.id in execs) is (scope == "container")


def _tcp_sink() -> socket.socket:
    """A listening socket on the host (busybox's nc has no UDP)."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sink.bind(("127.0.0.1", 0))
    sink.listen(1)
    sink.settimeout(30)
    return sink


def _serve_once(sink: socket.socket, size: int) -> concurrent.futures.Future[bytes]:
    """Accept one connection, read ``size`` bytes and close it (so that nc, which waits for
    the server's end, exits), in a thread: the container runs meanwhile."""

    def serve() -> bytes:
        conn, _ = sink.accept()
        with conn:
            conn.settimeout(30)
            data = b""
            while len(data) < size and (chunk := conn.recv(size - len(data))):
                data += chunk
        return data

    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(serve)
    finally:
        pool.shutdown(wait=False)


def test_a_rm_container_gone_while_the_collector_is_paused_is_attributed(
    tracecap, workdir: Path, runtime: Runtime
) -> None:
    """The collector is stopped (SIGSTOP) while a `--rm` container writes, executes and sends
    a packet, exits and is removed with its cgroup; its events, read after that, are still
    filed under its id, with its pcaps per container and per command."""
    sink = _tcp_sink()
    port = sink.getsockname()[1]
    run = tracecap(
        "--capture", f"write={workdir}/*", "--capture", "exec", "--capture", "network",
        "--capture", "pcap:container,command", "--capture", "pcap-snaplen:max",
    )  # fmt: skip
    collector = pid_of(run, "collector")
    assert collector > 0
    payload = f"TC-RM-{new_id()[:12]}"
    received = _serve_once(sink, len(payload) + 1)
    os.kill(collector, signal.SIGSTOP)
    try:
        c = runtime.run(
            ["/bin/sh", "-c",
             f"echo {payload} > {workdir}/rm.txt && echo {payload} | nc 127.0.0.1 {port}"],
            extra=runtime.bind(workdir),
        )  # fmt: skip
        assert received.result(30) == f"{payload}\n".encode()
        # the container and its cgroup are gone before the collector reads a byte
        path = LAYOUT[runtime.name].format(id=c.id)
        wait_until("the cgroup's removal", lambda: not (CGROOT / path.lstrip("/")).exists(), 30)
        time.sleep(0.2)
    finally:
        os.kill(collector, signal.SIGCONT)
    run.stop()
    assert run.returncode == 0, run.stderr

    assert _writers(run, workdir) == {"rm.txt": c.id}
    assert run.artifact(artifact_name("write", workdir / "rm.txt"), c.id) == f"{payload}\n".encode()
    # its command's exec is filed under its id (the bytes are gone with the container: their
    # capture after the process exits is issue 20's part 2, the record says why they are not)
    (ran,) = [
        r
        for r in run.index
        if r.get("kind") == "exec" and r["argv"][:1] == ["/bin/sh"] and payload in r["argv"][-1]
    ]
    assert ran["container_id"] == c.id, ran
    assert ran["path"] is None or ran["path"].startswith(f"{c.id}/"), ran

    def tcp(pcap: Path) -> list[bytes]:
        """The TCP payloads in a pcap (the handshake's and the ends' segments are empty)."""
        with open(pcap, "rb") as f:
            # IPv4 only: the bridge's own IPv6 (a router solicitation) may be there too
            frames = [dpkt.ip.IP(bytes(d)) for _, d in dpkt.pcapng.Reader(f) if d[0] >> 4 == 4]
        return [bytes(ip.data.data) for ip in frames if ip.p == dpkt.ip.IP_PROTO_TCP]

    cid11, data = c.id[:11], f"{payload}\n".encode()
    # loopback: the container's socket sends it (egress), the test's socket receives it
    assert tcp(run.out_dir / "pcap" / "containers" / f"{cid11}.pcap").count(data) == 1
    assert tcp(run.out_dir / "pcap" / "commands" / cid11 / "nc.pcap").count(data) == 1
    host = run.out_dir / "pcap" / "containers" / "host.pcap"
    assert tcp(host).count(data) == 1  # the host's receive only


def _remove_cgroups(*paths: str) -> None:
    """The parents a runtime made for --cgroup-parent/--cgroup (it removes only its own)."""
    for rel in paths:
        with contextlib.suppress(FileNotFoundError):
            (CGROOT / rel.lstrip("/")).rmdir()


def _events(run: Run) -> list[dict]:
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("layout", ["docker-parent", "containerd-cgroup", "podman-pod"])
def test_nested_parents_and_pods_with_namespace_and_host_pids(
    tracecap, workdir: Path, request: pytest.FixtureRequest, layout: str
) -> None:
    """Docker's `--cgroup-parent /a/b` (cgroupfs: `/a/b/<id>`), ctr's `--cgroup /a/b/<id>`, a
    Podman pod's container (`/libpod_parent/<pod>/libpod-<id>`): a container made after
    `ready` in each is attributed, and its events carry its namespace pid (1: the container's
    first process) and its host pid."""
    top = f"tctest-{new_id()[:8]}"
    parent = f"/{top}/b"
    request.addfinalizer(lambda: _remove_cgroups(f"{parent}", f"/{top}"))
    rt: Runtime = request.getfixturevalue(layout.split("-")[0])
    target = workdir / "nested.txt"
    run = tracecap("--output", "json", "--capture", f"write={workdir}/*")
    if layout == "docker-parent":
        extra = ["--cgroup-parent", parent]
    elif layout == "containerd-cgroup":
        extra = []
    else:
        extra = ["--pod", rt.pod_create()]  # type: ignore[attr-defined]
    script = f"grep ^0:: /proc/self/cgroup; echo $$ > {target}"
    if layout == "containerd-cgroup":
        cid = new_id()
        rt.made.append(cid)
        out = rt.ctr(  # type: ignore[attr-defined]
            "run", "--rm", "--net-host", "--env", "PATH=/bin", "--cgroup", f"{parent}/{cid}",
            *rt.bind(workdir), "--rootfs", str(rt.rootfs), cid,  # type: ignore[attr-defined]
            "/bin/sh", "-c", script,
        ).stdout  # fmt: skip
    else:
        c = rt.run(["/bin/sh", "-c", script], extra=[*extra, *rt.bind(workdir)])
        cid, out = c.id, c.stdout
    run.stop()
    assert run.returncode == 0, run.stderr
    path = out.splitlines()[0].removeprefix("0::")
    if layout == "podman-pod":
        assert path.startswith("/libpod_parent/") and path.endswith(f"/libpod-{cid}"), path
    else:
        assert path == f"{parent}/{cid}"
    assert _writers(run, workdir) == {"nested.txt": cid}
    (event,) = [e for e in _events(run) if e["args"][0]["value"] == str(target)]
    assert event["containerId"] == cid
    assert event["processId"] == 1 == int(target.read_text())  # the container's pid 1
    assert event["hostProcessId"] > 1

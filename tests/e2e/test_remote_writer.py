"""A writer on "another box": a network namespace with its own address on a veth pair, fed by
`tracecap bridge` over tcp with CURVE. Its artifacts must be identical to the local writer's, a
client whose key is not on the allow-list (or that does not speak CURVE) must get nothing, and
an allowed client that floods prefixes and never reads must cost the remote writer nothing."""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.pipeline import artifact_name
from tests.support.workloads import python
from tracecap import keys

pytestmark = pytest.mark.ebpf

#: An allowed remote peer gone bad: thousands of prefixes, then everything, and no reading.
FLOODER = """
import sys, time, zmq
from tracecap import keys
endpoint, server_key, secret = sys.argv[1:4]
sock = zmq.Context().socket(zmq.XSUB)
sock.curve_serverkey = keys.load_public(server_key)
sock.curve_publickey, sock.curve_secretkey = keys.load_secret(secret)
sock.connect(endpoint)
sock.send(b"\\x01")
for i in range(5000):
    sock.send(b"\\x01zz%d" % i)
print("flooded", file=sys.stderr, flush=True)
time.sleep(600)
"""

READY_TIMEOUT_S = 30


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class NetNs:
    name: str
    host_addr: str  # the root namespace's end of the veth pair
    addr: str  # the "other box"

    def exec(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


@pytest.fixture
def netns() -> Iterator[NetNs]:
    """A namespace ``tcw-<rand>`` joined to the root namespace by a veth pair (10.231.X.0/24)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to make a network namespace")
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    subnet = next(x for x in random.sample(range(1, 255), 254) if f" 10.231.{x}." not in used)
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"tcw-{tag}", f"tcw{tag}h", f"tcw{tag}n"
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"10.231.{subnet}.1/24", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"10.231.{subnet}.2/24", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield NetNs(ns, f"10.231.{subnet}.1", f"10.231.{subnet}.2")
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def side() -> Iterator[Path]:
    """Where the bridge's and remote writers' files live: outside the captured tree, so the
    test's own log files are not artifacts, and owned by `tracecap` (they drop to it)."""
    path = Path(tempfile.mkdtemp(prefix="tcw-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def tracecap_owned(path: Path) -> Path:
    user = pwd.getpwnam("tracecap")
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


def free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


class Proc:
    """A background process whose stdout and stderr go to files (pipes could fill and block)."""

    def __init__(self, argv: list[str], logdir: Path, name: str) -> None:
        self.out, self.err = logdir / f"{name}.out", logdir / f"{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"no {text!r} (exit {self.proc.returncode}):\n{self.stderr()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def index(out_dir: Path) -> list[dict]:
    path = out_dir / "index.jsonl"
    lines = path.read_bytes().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


def current(records: list[dict], path: str) -> dict:
    """The last index line of artifact ``path`` (a changed artifact gets a later line)."""
    mine = [r for r in records if r.get("kind") == "write" and r.get("path") == path]
    assert mine, f"no index record for {path}: {records}"
    return mine[-1]


def test_remote_writer_matches_the_local_one(
    tracecap, workdir: Path, side: Path, netns: NetNs
) -> None:
    keydir = side / "keys"
    for name in ("server", "remote", "stranger", "flooder"):
        made = subprocess.run(
            ["tracecap", "keys", str(keydir), "--name", name], capture_output=True, text=True
        )
        assert made.returncode == 0, made.stderr
    user = pwd.getpwnam("tracecap")
    for secret in keydir.glob("*.key_secret"):
        assert secret.stat().st_mode & 0o777 == 0o600
        os.chown(secret, user.pw_uid, user.pw_gid)  # the bridge and writers read it as tracecap
    allow = side / "allow"
    allow.mkdir()
    shutil.copy(keydir / "remote.key", allow / "remote.key")
    shutil.copy(keydir / "flooder.key", allow / "flooder.key")
    stranger_public = keys.load_public(str(keydir / "stranger.key")).decode()

    run = tracecap("--capture", f"write={workdir}/*")
    port = free_port(netns.host_addr)
    endpoint = f"tcp://{netns.host_addr}:{port}"
    procs: list[Proc] = []
    try:
        bridge = Proc(
            [
                "tracecap", "bridge", "--listen", endpoint,
                "--server-key", str(keydir / "server.key_secret"),
                "--allow", str(allow), "--run-dir", str(run.run_dir),
            ],
            side, "bridge",
        )  # fmt: skip
        procs.append(bridge)
        bridge.wait_for("relaying")

        def remote(name: str, key: str) -> Proc:
            run_dir = tracecap_owned(side / f"run-{name}")
            tracecap_owned(run_dir / "stats")
            proc = Proc(
                netns.exec(
                    "tracecap", "writer", "file", "--connect", endpoint,
                    "--server-key", str(keydir / "server.key"),
                    "--client-key", str(keydir / f"{key}.key_secret"),
                    "--capture", f"dir:{tracecap_owned(side / name)}", "--run-dir", str(run_dir),
                ),
                side, name,
            )  # fmt: skip
            procs.append(proc)
            return proc

        writer = remote("remote", "remote")
        stranger = remote("stranger", "stranger")
        # a client without CURVE at all: tap speaks plain ZMTP
        plain = Proc(netns.exec("tracecap", "tap", "--connect", endpoint), side, "plain")
        procs.append(plain)

        flooder = Proc(
            netns.exec(
                sys.executable, "-c", FLOODER, endpoint, str(keydir / "server.key"),
                str(keydir / "flooder.key_secret"),
            ),
            side, "flooder",
        )  # fmt: skip
        procs.append(flooder)
        flooder.wait_for("flooded")
        bridge.wait_for("remote subscription +'file.write.'")
        bridge.wait_for(f"refused client key {stranger_public} from {netns.addr}")
        bridge.wait_for("refused a handshake")
        time.sleep(1.0)  # the subscription travels on from the bridge to the collector

        target = workdir / "remote-me.bin"
        data = b"".join(bytes([i % 251]) * 4096 for i in range(64)) + b"tail"
        source = side / "source.bin"  # outside the captured tree: only the copy is captured
        source.write_bytes(data)
        python(
            f"src, f = open({str(source)!r}, 'rb'), open({str(target)!r}, 'wb')\n"
            "while chunk := src.read(10000):\n"
            "    f.write(chunk)\n"
            "f.close()"
        )
        time.sleep(2.0)  # idle flush on both sides
        status = subprocess.run(
            ["tracecap", "status", "--run-dir", str(run.run_dir)], capture_output=True, text=True
        )
        assert status.returncode == 0, status.stderr
        collector = json.loads(status.stdout)["collector"]
        flooder.stop(signal.SIGKILL)
        run.stop()
        assert run.returncode == 0, run.stderr
        time.sleep(1.0)
        assert writer.stop() == 0, writer.stderr()
        assert stranger.stop() == 0, stranger.stderr()
        plain.stop()
        assert bridge.stop() == 0, bridge.stderr()
    finally:
        for proc in procs:
            proc.stop(signal.SIGKILL if proc.proc.poll() is None else signal.SIGTERM)

    name = artifact_name("write", target)
    assert target.read_bytes() == data
    local_bytes = run.artifact(name)
    assert local_bytes == data
    remote_out = side / "remote" / "out"
    assert (remote_out / "host" / name).read_bytes() == local_bytes
    local_record = current(run.index, f"host/{name}")
    remote_record = current(index(remote_out), f"host/{name}")
    for key in ("sha256", "size", "complete", "missing", "dev", "inode", "path"):
        assert remote_record[key] == local_record[key], key
    assert remote_record["complete"] is True

    # the stranger and the plain client received nothing
    assert not (side / "stranger" / "out" / "host").exists()
    assert [r for r in index(side / "stranger" / "out") if r.get("kind") == "write"] == []
    assert "refused our handshake" in stranger.stderr()
    assert plain.out.read_text() == ""
    # the bridge counted and logged, and stopped cleanly on SIGTERM
    log = bridge.stderr()
    assert "refused keys" in log and "relayed 0 messages" not in log
    # the flooder was cut off by the bridge; the bridge itself never by the collector
    assert re.search(r"remote peers disconnected: .*\d+ subscriptions", log), log[-2000:]
    assert collector["collector"]["bus_peers_dropped"] == {}, collector
    # what the flooder subscribed left with it (b"" would take every topic over the link)
    assert not [p for p in collector["subscriptions"] if p == "" or p.startswith("zz")], collector

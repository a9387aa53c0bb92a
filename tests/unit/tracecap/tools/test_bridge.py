"""`tracecap bridge` with real sockets: a fake collector on ipc, the bridge on 127.0.0.1, and
CURVE clients with and without a key on the allow-list (and one without CURVE at all)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from tracecap import bus, cli, keys
from tracecap.tools.bridge import Bridge, BridgeConfig
from writers.base import Subscriber, Writer

TOPIC = bus.TOPIC_FILE_WRITE


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def env(seq: int) -> dict[str, Any]:
    return {
        "v": bus.VERSION,
        "epoch": 7,
        "seq": seq,
        "ts": 1,
        "pid": 1,
        "tid": 1,
        "ppid": 0,
        "uid": 0,
        "comm": b"sh",
        "cgroup_id": 1,
        "container_id": "",
        "syscall": "write",
        "fd": 3,
        "path": b"/tmp/f",
        "dev": 1,
        "inode": 2,
        "mode": 0o100644,
        "io_id": seq,
        "io_len": 5,
        "io_off": 0,
        "off": 5 * seq,
        "append": False,
    }


class Setup:
    """Keys, a fake collector (an XPUB, so the test sees subscriptions arrive), the bridge."""

    def __init__(self, tmp_path: Path) -> None:
        self.keydir, self.allow = tmp_path / "keys", tmp_path / "allow"
        self.allow.mkdir()
        keys.make_keypair(str(self.keydir), "server")
        for name in ("good", "bad"):
            keys.make_keypair(str(self.keydir), name)
        shutil.copy(self.keydir / "good.key", self.allow / "good.key")
        self.server_public = keys.load_public(str(self.keydir / "server.key"))
        self.sockdir = tempfile.mkdtemp(prefix="tcbr")  # ipc paths must stay short
        self.upstream = f"ipc://{self.sockdir}/bus.sock"
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.pub.bind(self.upstream)
        self.upstream_subscriptions: list[bytes] = []
        self.lines: list[str] = []
        self.sockets: list[zmq.Socket] = []
        self.stop = threading.Event()
        self.bridge: Bridge | None = None
        self.status: list[int] = []
        built = threading.Event()

        def run() -> None:
            config = BridgeConfig(
                listen="tcp://127.0.0.1:0",
                server_key=str(self.keydir / "server.key_secret"),
                allow_dir=str(self.allow),
                upstream=self.upstream,
            )
            try:
                self.bridge = Bridge(config, log=self.lines.append)
            finally:
                built.set()
            self.status.append(self.bridge.run(self.stop))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert built.wait(10) and self.bridge is not None
        self.endpoint = self.bridge.endpoint

    def client(self, name: str | None, topic: bytes = TOPIC) -> zmq.Socket:
        """A SUB connected to the bridge: CURVE with ``name``'s key pair, or plain (None)."""
        sock = self.socket(zmq.SUB)
        if name is not None:
            public, secret = keys.load_secret(str(self.keydir / f"{name}.key_secret"))
            sock.curve_serverkey = self.server_public
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(self.endpoint)
        return sock

    def socket(self, kind: int) -> zmq.Socket:
        """A client socket, closed at teardown even when the test fails (else term() hangs)."""
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self.sockets.append(sock)
        return sock

    def pump_upstream(self) -> None:
        while self.pub.poll(0):
            self.upstream_subscriptions.append(self.pub.recv())

    def wait_subscribed(self, frame: bytes) -> None:
        def seen() -> bool:
            self.pump_upstream()
            return frame in self.upstream_subscriptions

        wait_until(seen)

    def publish(self, count: int, topic: bytes = TOPIC) -> None:
        for seq in range(count):
            self.pub.send_multipart(bus.encode(topic, env(seq), b"hello"))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for sock in self.sockets:
            sock.close(linger=0)
        self.pub.close(linger=0)
        self.ctx.term()
        shutil.rmtree(self.sockdir, ignore_errors=True)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    yield s
    s.close()


def receive_all(sock: zmq.Socket, timeout_ms: int) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    while sock.poll(timeout_ms):
        got.append(sock.recv_multipart())
        timeout_ms = 200
    return got


def test_only_a_listed_key_gets_data_and_refusals_are_logged(setup: Setup) -> None:
    bad = setup.client("bad")
    plain = setup.client(None)
    wait_until(lambda: setup.bridge is not None and setup.bridge.counters.refused_keys >= 1)
    wait_until(lambda: setup.bridge is not None and setup.bridge.counters.refused_handshakes >= 1)
    good = setup.client("good")
    setup.wait_subscribed(b"\x01" + TOPIC)  # the good client's subscription reached upstream
    setup.publish(20)
    got = receive_all(good, 5000)
    assert len(got) == 20
    assert [bus.decode(m).env["seq"] for m in got] == list(range(20))
    assert got[0][2] == b"hello"
    assert receive_all(bad, 500) == [] and receive_all(plain, 100) == []
    # bad and plain never subscribed anything upstream: only the good client's one frame
    assert setup.upstream_subscriptions == [b"\x01" + TOPIC]
    bad_public = keys.load_public(str(setup.keydir / "bad.key")).decode()
    refusals = [line for line in setup.lines if "refused client key" in line]
    assert refusals and bad_public in refusals[0] and "from 127.0.0.1" in refusals[0]
    # the plain client: libzmq reports a mechanism mismatch, or (when the client hung up first
    # on seeing it) a connection lost mid-handshake; either way a refusal line and no data
    handshakes = [line for line in setup.lines if line.startswith("refused a handshake")]
    assert handshakes, "\n".join(setup.lines)
    for sock in (good, bad, plain):
        sock.close(linger=0)
    setup.stop.set()
    setup.thread.join(10)
    assert setup.status == [0]
    summary = setup.lines[-1]
    assert "relayed 20 messages" in summary and "refused keys" in summary


def test_a_client_with_the_wrong_server_key_gets_nothing(setup: Setup) -> None:
    sock = setup.socket(zmq.SUB)
    public, secret = keys.load_secret(str(setup.keydir / "good.key_secret"))
    sock.curve_serverkey = zmq.curve_keypair()[0]  # an impostor's idea of the server
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(setup.endpoint)
    wait_until(lambda: setup.bridge is not None and setup.bridge.counters.refused_handshakes >= 1)
    setup.publish(3)
    assert receive_all(sock, 300) == []
    sock.close(linger=0)


def test_subscriptions_are_forwarded_and_filter_upstream(setup: Setup) -> None:
    good = setup.client("good", topic=bus.TOPIC_EXEC)
    setup.wait_subscribed(b"\x01" + bus.TOPIC_EXEC)
    setup.publish(3, topic=TOPIC)  # not subscribed by anyone: must not reach the client
    setup.pub.send_multipart([bus.TOPIC_EXEC, b"x"])
    got = receive_all(good, 5000)
    assert got == [[bus.TOPIC_EXEC, b"x"]]
    good.close(linger=0)
    setup.wait_subscribed(b"\x00" + bus.TOPIC_EXEC)  # a remote that leaves unsubscribes upstream
    assert any("remote subscription +'exec.'" in line for line in setup.lines)


def xsub_client(setup: Setup, name: str = "good") -> zmq.Socket:
    """A raw XSUB with ``name``'s key: it sends whatever frames a test wants."""
    sock = setup.socket(zmq.XSUB)
    public, secret = keys.load_secret(str(setup.keydir / f"{name}.key_secret"))
    sock.curve_serverkey = setup.server_public
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.connect(setup.endpoint)
    return sock


def dropped(setup: Setup, why: str) -> int:
    assert setup.bridge is not None
    return setup.bridge.counters.peers_dropped.get(why, 0)


def test_a_remote_that_sends_data_upstream_is_disconnected(setup: Setup) -> None:
    sock = xsub_client(setup)
    sock.send(b"\x01" + TOPIC)
    setup.wait_subscribed(b"\x01" + TOPIC)
    sock.send_multipart([b"\x02not a subscription", b"more"])
    wait_until(lambda: dropped(setup, "messages") == 1)
    assert setup.bridge is not None and setup.bridge.counters.dropped_inbound >= 1
    # its subscription went with it; the data never went upstream
    setup.wait_subscribed(b"\x00" + TOPIC)
    assert setup.upstream_subscriptions == [b"\x01" + TOPIC, b"\x00" + TOPIC]


def test_upstream_holds_one_subscription_per_prefix_while_any_remote_does(setup: Setup) -> None:
    first, second = setup.client("good"), setup.client("good")
    setup.wait_subscribed(b"\x01" + TOPIC)
    wait_until(lambda: setup.bridge is not None and setup.bridge.counters.subscriptions == 2)
    first.close(linger=0)
    setup.publish(3)
    assert len(receive_all(second, 5000)) == 3
    setup.pump_upstream()
    assert setup.upstream_subscriptions == [b"\x01" + TOPIC]  # the second still holds it
    second.close(linger=0)
    setup.wait_subscribed(b"\x00" + TOPIC)


def test_a_remote_flooding_prefixes_is_cut_off_and_the_others_keep_their_data(
    setup: Setup,
) -> None:
    """Thousands of prefixes from one allowed key: that connection is disconnected past the
    bound, the collector never sees a prefix that cannot match a topic, and another remote
    writer goes on receiving everything."""
    reader = setup.client("good")
    setup.wait_subscribed(b"\x01" + TOPIC)
    flood = xsub_client(setup)
    for i in range(5000):
        flood.send(b"\x01zz%d" % i)
    wait_until(lambda: dropped(setup, "subscriptions") + dropped(setup, "penalty") >= 1)
    setup.publish(50)
    got = receive_all(reader, 5000)
    assert [bus.decode(m).env["seq"] for m in got] == list(range(50))
    setup.pump_upstream()
    assert setup.upstream_subscriptions == [b"\x01" + TOPIC]


def test_a_remote_that_stops_reading_is_disconnected_and_costs_the_others_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracecap.tools import bridge as bridge_mod

    monkeypatch.setattr(bridge_mod, "REMOTE_STALL_MAX_NS", 300_000_000)
    setup = Setup(tmp_path)
    try:
        stalled = setup.client("good")
        stalled.setsockopt(zmq.RCVHWM, 1)
        reader = setup.client("good")
        setup.wait_subscribed(b"\x01" + TOPIC)
        wait_until(lambda: setup.bridge is not None and setup.bridge.counters.subscriptions == 2)
        big = os.urandom(256 << 10)
        got = 0
        for seq in range(400):  # 100 MiB: far more than the stalled peer's socket buffers
            setup.pub.send_multipart(bus.encode(TOPIC, env(seq), big))
            while reader.poll(0):
                reader.recv_multipart()
                got += 1
            if seq % 50 == 0:
                time.sleep(0.1)
        deadline = time.monotonic() + 10
        while got < 400 and time.monotonic() < deadline:
            if reader.poll(100):
                reader.recv_multipart()
                got += 1
        assert got == 400
        wait_until(lambda: dropped(setup, "stalled") >= 1)
    finally:
        setup.close()


def test_revoking_a_key_and_reloading_refuses_it(setup: Setup) -> None:
    assert setup.bridge is not None
    os.unlink(setup.allow / "good.key")
    setup.bridge.request_reload()
    wait_until(lambda: any("allow-list reloaded: 0 keys" in line for line in setup.lines))
    good = setup.client("good")
    wait_until(lambda: setup.bridge is not None and setup.bridge.counters.refused_keys >= 1)
    setup.publish(3)
    assert receive_all(good, 300) == []
    good.close(linger=0)


class Collect(Writer):
    name = "collect"
    topics = (TOPIC,)

    def __init__(self) -> None:
        super().__init__()
        self.seqs: list[int] = []

    def handle(self, msg: bus.Message) -> None:
        self.seqs.append(msg.env["seq"])


def test_a_writer_subscriber_is_a_curve_client(setup: Setup) -> None:
    """The writer side: Subscriber/BusLink with CurveClient keys, fed through the bridge."""
    curve = keys.load_client(
        str(setup.keydir / "server.key"), str(setup.keydir / "good.key_secret")
    )
    writer = Collect()
    sub = Subscriber(writer, setup.endpoint, curve=curve)
    stop = threading.Event()
    thread = threading.Thread(target=sub.run, args=(stop,), daemon=True)
    thread.start()
    try:
        setup.wait_subscribed(b"\x01" + TOPIC)
        setup.publish(5)
        wait_until(lambda: writer.seqs == [0, 1, 2, 3, 4])
        assert sub.counters["malformed"] == 0 and sub.counters["gaps"] == 0
    finally:
        stop.set()
        thread.join(10)


def test_a_refused_writer_counts_failed_handshakes(setup: Setup) -> None:
    curve = keys.load_client(str(setup.keydir / "server.key"), str(setup.keydir / "bad.key_secret"))
    writer = Collect()
    sub = Subscriber(writer, setup.endpoint, curve=curve, log=lambda *a: None)  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=sub.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: sub._handshake_failures >= 1)
        setup.publish(3)
        time.sleep(0.3)
        assert writer.seqs == []
    finally:
        stop.set()
        thread.join(10)


def test_an_unsafe_server_secret_is_refused(tmp_path: Path) -> None:
    keys.make_keypair(str(tmp_path), "server")
    os.chmod(tmp_path / "server.key_secret", 0o644)
    config = BridgeConfig(
        "tcp://127.0.0.1:0", str(tmp_path / "server.key_secret"), str(tmp_path), "ipc:///x"
    )
    with pytest.raises(keys.KeyFileError, match="accessible by others"):
        Bridge(config, log=lambda _line: None)


def test_cli_writer_over_tcp_needs_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["writer", "file", "--connect", "tcp://127.0.0.1:5555"]) == 2
    assert "tcp endpoints need --server-key and --client-key" in capsys.readouterr().err
    argv = ["writer", "file", "--connect", "tcp://127.0.0.1:5555", "--server-key", "/x"]
    assert cli.main(argv) == 2
    assert "tcp endpoints need --server-key and --client-key" in capsys.readouterr().err
    assert cli.main(["writer", "file", "--server-key", "/x", "--client-key", "/y"]) == 2
    assert "tcp:// endpoints only" in capsys.readouterr().err


def test_cli_bridge_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bridge", "--listen", "tcp://127.0.0.1:0"]) == 2
    assert "bridge needs --server-key" in capsys.readouterr().err
    argv = ["bridge", "--listen", "ipc:///tmp/x", "--server-key", "/k", "--allow", "/a"]
    assert cli.main(argv) == 2
    assert "expected tcp://" in capsys.readouterr().err

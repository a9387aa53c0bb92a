"""Starting a writer process: kinds, privileges, and a clean stop."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
import zmq

import writers.base as writers_base
from tracecap import bus, kinds, privileges
from tracecap.privileges import PrivilegeError, drop_privileges
from writers.base import Writer
from writers.index import Index
from writers.outdir import OutputDir
from writers.runner import (
    WRITER_KINDS,
    OutputDirRefused,
    _install_signals,
    _restore_signals,
    run_writer,
    writer_class,
)


def test_unknown_kind_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file"):
        run_writer("nope", str(tmp_path / "out"), "ipc:///x", None, drop_to=None)
    assert "file" in WRITER_KINDS


def test_an_output_directory_that_cannot_be_opened_is_refused_with_its_reason(
    tmp_path: Path,
) -> None:
    """A refusal (exit 2, not restarted), not a traceback that supervisord restarts for ever."""
    out_dir = tmp_path / "out"
    out_dir.symlink_to(tmp_path)
    with pytest.raises(OutputDirRefused) as refused:
        run_writer("file", str(out_dir), "ipc:///x", None, drop_to=None)
    assert str(refused.value) == (
        f"the file writer (uid {os.geteuid()}) cannot open the output directory {out_dir}: "
        f"{out_dir} is a symlink or not a directory"
    )


@pytest.fixture(autouse=True)
def _keep_the_test_process_privileges(monkeypatch: pytest.MonkeyPatch) -> None:
    """no_new_privs is for good: the test process must not set it on itself."""
    monkeypatch.setattr(privileges, "set_no_new_privs", lambda: None)


def test_not_root_means_nothing_to_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(privileges.os, "setuid", pytest.fail)
    drop_privileges("tracecap")


def test_a_missing_user_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> pwd.struct_passwd:
        raise KeyError(name)

    monkeypatch.setattr(privileges.os, "geteuid", lambda: 0)
    monkeypatch.setattr(privileges.pwd, "getpwnam", missing)
    monkeypatch.setattr(privileges.os, "setuid", pytest.fail)
    with pytest.raises(PrivilegeError, match="make setup"):
        drop_privileges("tracecap")


def test_run_writer_persists_and_stops_cleanly(tmp_path: Path) -> None:
    sockdir = tempfile.mkdtemp(prefix="tcrun")
    endpoint = f"ipc://{sockdir}/bus.sock"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    stop = threading.Event()
    result: list[int] = []
    out, run = tmp_path / "out", tmp_path / "run"
    thread = threading.Thread(
        target=lambda: result.append(
            run_writer("file", str(out), endpoint, str(run), stop=stop, drop_to=None)
        )
    )
    thread.start()
    try:
        env = {
            "v": 1, "epoch": 1, "seq": 0, "ts": 1, "pid": 1, "tid": 1, "ppid": 0, "uid": 0,
            "comm": b"sh", "cgroup_id": 1, "container_id": "", "syscall": "write", "fd": 1,
            "path": b"/tmp/f", "dev": 1, "inode": 9, "mode": 0o100644, "io_id": 1,
            "io_len": 5, "io_off": 0, "off": 0, "append": False,
        }  # fmt: skip
        stats = run / "writer-file.json"
        deadline = time.monotonic() + 10
        while not (stats.exists() and json.loads(stats.read_text())["counters"]["messages"]):
            assert time.monotonic() < deadline, "writer never received anything"
            pub.send_multipart(bus.encode(bus.TOPIC_FILE_WRITE, env, b"hello"))
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(5)
        pub.close(0)
        ctx.term()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert result == [0]
    assert (out / "host" / "write.dev-1.inode-9").read_bytes() == b"hello"
    records = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "write" and records[-1]["complete"] is True


def test_a_stop_signal_ends_the_wait_for_messages_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (supervisord's stop) ends the writer's wait for messages when it comes, not at
    the end of the wait (an hour here: SIGALRM fails the test long before)."""
    monkeypatch.setattr(writers_base, "POLL_MS", 3_600_000)
    sockdir = tempfile.mkdtemp(prefix="tcrun")

    def watchdog(_signum: int, _frame: object) -> None:
        raise TimeoutError("the stop signal did not end the wait for messages")

    before_alarm = signal.signal(signal.SIGALRM, watchdog)
    before_term = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    signal.alarm(30)
    timer.start()
    try:
        endpoint = f"ipc://{sockdir}/bus.sock"  # no publisher: nothing to drain at the stop
        assert run_writer("file", str(tmp_path / "out"), endpoint, None, drop_to=None) == 0
    finally:
        signal.alarm(0)
        timer.cancel()
        signal.signal(signal.SIGALRM, before_alarm)
        shutil.rmtree(sockdir, ignore_errors=True)
    assert signal.getsignal(signal.SIGTERM) is before_term
    assert signal.set_wakeup_fd(-1) == -1  # the wakeup fd was given back


@pytest.mark.parametrize("kind", kinds.KINDS, ids=lambda kind: kind.name)
def test_every_kind_resolves_to_a_writer_of_its_topics(tmp_path: Path, kind: kinds.Kind) -> None:
    """The registry's class path names a real Writer, whose name and subscriptions are the
    kind's: the front end plans programs and waits for topics from the registry alone."""
    assert issubclass(writer_class(kind.writer), Writer)
    out = OutputDir(str(tmp_path / "out"))
    index = Index(out)
    try:
        writer = WRITER_KINDS[kind.name](out, index)
        assert type(writer) is writer_class(kind.writer)
        assert writer.name == kind.name
        assert writer.topics == kind.topics
        writer.close()
    finally:
        index.close()
        out.close()


def test_the_writer_kinds_are_the_registrys() -> None:
    assert list(WRITER_KINDS) == [kind.name for kind in kinds.KINDS]


@pytest.mark.parametrize("path", ["writers.file:NoSuchWriter", "writers.index:Index"])
def test_a_class_path_that_is_not_a_writer_is_refused(path: str) -> None:
    with pytest.raises((AttributeError, TypeError)):
        writer_class(path)


def test_a_kind_takes_only_its_own_options(tmp_path: Path) -> None:
    """pcap's split is its option; another kind's, or a writer parameter the registry does not
    declare, is an error before anything starts."""
    for kind, option in (("file", {"split": ("single",)}), ("pcap", {"max_open": 3})):
        with pytest.raises(ValueError, match=f"writer kind '{kind}' takes no option"):
            run_writer(kind, str(tmp_path / "out"), "ipc:///x", None, drop_to=None, options=option)
    assert not (tmp_path / "out").exists()
    out = OutputDir(str(tmp_path / "out"))
    index = Index(out)
    try:
        with pytest.raises(TypeError):
            WRITER_KINDS["pcap"](out, index, max_open=3)
        writer = WRITER_KINDS["pcap"](out, index, split=("process",))
        assert writer.split == ("process",)
        writer.close()
    finally:
        index.close()
        out.close()


def test_the_shippers_signals_need_no_wakeup_fd() -> None:
    """`tracecap writer ship` routes SIGTERM to its stop event without a wakeup fd (it waits on
    the event, not on a bus link); the previous handler and wakeup fd come back after."""
    before = signal.getsignal(signal.SIGTERM)
    stop = threading.Event()
    previous = _install_signals(stop)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
        assert signal.set_wakeup_fd(-1) == -1  # none was installed
    finally:
        _restore_signals(previous)
    assert signal.getsignal(signal.SIGTERM) is before

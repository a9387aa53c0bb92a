"""The `tracecap run` loop's verdicts, over a fake supervisord, its RPC, the bus and a clock.

Each scenario runs the real loop: the fakes stand for the system only, so a wrong verdict (an
error missed, a run stopped for nothing, supervisord left running) fails here without root.
"""

from __future__ import annotations

import io
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.envelopes import file_env
from tracecap import bus, options, segments
from tracecap.frontend.events_file import open_events_file
from tracecap.frontend.plan import Plan, make_plan
from tracecap.frontend.supervise import (
    LOOP_MS,
    READY_TIMEOUT_ENV,
    READY_TIMEOUT_S,
    Frontend,
    ready_timeout,
    stopped_program,
)
from tracecap.frontend.supervisor_conf import REFUSED_EXIT
from tracecap.privileges import RunDirError

EXE = "/opt/tracecap/venv/bin/tracecap"


def stats(state: str = "ready", epoch: int = 1, **kernel: int) -> list[bytes]:
    """A collector's stats message, as its publisher sends it."""
    env = {
        "v": bus.VERSION, "epoch": epoch, "seq": 0, "ts": 1_000, "pid": 10, "tid": 10,
        "ppid": 1, "uid": 0, "comm": b"tracecap", "cgroup_id": 0, "container_id": "",
        "state": state, "kernel": kernel, "collector": {}, "published": {},
    }  # fmt: skip
    return bus.encode(bus.TOPIC_STATS, env)


class FakeClock:
    """Time that moves ``step`` seconds every time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 1_000.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class FakeSupervisord:
    """Exits when signalled (as supervisord does once its programs stopped), or by itself
    after ``exits_after`` polls; ``on_poll`` runs at every poll."""

    def __init__(self, clock: FakeClock, exits_after: int = 10_000) -> None:
        self.returncode: int | None = None
        self.signals: list[tuple[int, float]] = []
        self.polls = 0
        self.exits_after = exits_after
        self.on_poll: Callable[[int], None] = lambda _polls: None
        self._clock = clock

    def poll(self) -> int | None:
        self.polls += 1
        self.on_poll(self.polls)
        if self.returncode is None and self.polls >= self.exits_after:
            self.returncode = 0
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append((sig, self._clock.now))
        self.returncode = 0

    def wait(self, timeout: float | None = None) -> int:
        assert self.returncode is not None, "waited for a supervisord that was never stopped"
        return self.returncode


class FakeLauncher:
    def __init__(self, sup: FakeSupervisord) -> None:
        self.sup = sup
        self.prepared: list[Plan] = []
        self.on_prepare: Callable[[], None] = lambda: None
        self.started = False

    def prepare(self, plan: Plan) -> None:
        self.prepared.append(plan)
        self.on_prepare()

    def start(self, plan: Plan) -> FakeSupervisord:
        assert self.prepared == [plan], "started before the run directory was prepared"
        self.started = True
        return self.sup


class FakeRpc:
    """supervisord's answers: each program's state, from ``states(clock time)``."""

    def __init__(self, clock: FakeClock, states: Callable[[float], dict[str, str]]) -> None:
        self._clock = clock
        self._states = states

    def process_infos(self) -> list[dict[str, Any]] | None:
        return [
            {"name": name, "statename": state, "exitstatus": 0 if state == "RUNNING" else 1}
            for name, state in self._states(self._clock.now).items()
        ]

    def start_all(self) -> bool:
        return True


class FakeFeed:
    """The bus: ``batches[i]`` arrives at the i-th receive, then nothing."""

    def __init__(self, batches: list[list[list[bytes]]]) -> None:
        self.batches = list(batches)
        self.subscribed: tuple[str, tuple[bytes, ...]] | None = None
        self.closed = False
        self.timeouts: list[int] = []

    def __call__(self, endpoint: str, topics: tuple[bytes, ...]) -> FakeFeed:
        self.subscribed = (endpoint, topics)
        return self

    def receive(self, timeout_ms: int) -> list[list[bytes]]:
        self.timeouts.append(timeout_ms)
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        self.closed = True


def all_running(_now: float) -> dict[str, str]:
    return {"writer-file": "RUNNING", "collector": "RUNNING"}


class Scenario:
    """One `tracecap run --capture write` over the fakes; ``run()`` gives its exit status."""

    def __init__(
        self,
        tmp_path: Path,
        states: Callable[[float], dict[str, str]] = all_running,
        batches: list[list[list[bytes]]] | None = None,
        step: float = 0.5,
        exits_after: int = 10_000,
    ) -> None:
        self.config = options.parse_args(["--capture", "write"])
        self.plan = make_plan(self.config, ["--capture", "write"], str(tmp_path), exe=EXE)
        self.clock = FakeClock(step)
        self.sup = FakeSupervisord(self.clock, exits_after)
        self.launcher = FakeLauncher(self.sup)
        self.feed = FakeFeed(batches or [])
        self.rpc = FakeRpc(self.clock, states)
        self.started_at = self.clock.now

    def run(self) -> int:
        frontend = Frontend(
            self.config,
            self.plan,
            io.StringIO(),
            launcher=self.launcher,
            rpc=self.rpc,
            subscribe=self.feed,
            clock=self.clock,
        )
        return frontend.run()


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("tracecap: error:")]


@pytest.mark.parametrize("state", ["EXITED", "FATAL", "BACKOFF"])
def test_a_collector_that_stops_before_it_is_ready_ends_the_run(tmp_path, capsys, state):
    run = Scenario(tmp_path, states=lambda _now: {"writer-file": "RUNNING", "collector": state})
    assert run.run() == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [
        f"tracecap: error: collector stopped ({state}, exit status 1); its messages are above "
        f"and in {tmp_path}/collector.log"
    ]
    assert "tracecap: ready" not in err
    assert [sig for sig, _ in run.sup.signals] == [signal.SIGTERM]
    assert run.sup.signals[0][1] - run.started_at < 5, "the verdict waited for the deadline"
    assert run.feed.closed


def test_a_collector_that_dies_after_it_was_ready_ends_the_run(tmp_path, capsys):
    def states(now: float) -> dict[str, str]:
        alive = now - 1_000 < 10
        return {"writer-file": "RUNNING", "collector": "RUNNING" if alive else "EXITED"}

    run = Scenario(tmp_path, states=states, batches=[[stats("ready", **{"write.events": 3})]])
    assert run.run() == 1
    err = capsys.readouterr().err
    assert err.index("tracecap: ready") < err.index("tracecap: error: collector stopped (EXITED")
    assert len(error_lines(err)) == 1
    assert [sig for sig, _ in run.sup.signals] == [signal.SIGTERM]
    assert "tracecap: summary: 3 events" in err


def test_a_collector_not_ready_by_the_deadline_ends_the_run(tmp_path, capsys):
    run = Scenario(tmp_path, batches=[[stats("starting")]], step=1.0)
    assert run.run() == 1
    err = capsys.readouterr().err
    assert error_lines(err) == ["tracecap: error: capture not ready after 60s"]
    [(sig, when)] = run.sup.signals
    assert sig == signal.SIGTERM
    assert 60 < when - run.started_at <= 63


def test_a_collector_ready_in_time_is_left_alone(tmp_path, capsys):
    """Ready at 30 s, so the 60 s deadline does not apply; supervisord exits by itself later."""
    run = Scenario(tmp_path, batches=[[]] * 60 + [[stats("ready")]], step=0.5, exits_after=400)
    assert run.run() == 0
    err = capsys.readouterr().err
    assert "tracecap: ready" in err
    assert error_lines(err) == []
    assert run.sup.signals == []
    assert run.clock.now - run.started_at > 150


def test_a_writer_supervisord_gave_up_on_ends_the_run(tmp_path, capsys):
    run = Scenario(
        tmp_path,
        states=lambda _now: {"writer-file": "FATAL", "collector": "RUNNING"},
        batches=[[stats("ready")]],
    )
    assert run.run() == 1
    assert error_lines(capsys.readouterr().err) == [
        f"tracecap: error: writer-file stopped (FATAL, exit status 1); its messages are above "
        f"and in {tmp_path}/writer-file.log"
    ]
    assert [sig for sig, _ in run.sup.signals] == [signal.SIGTERM]


@pytest.mark.parametrize("state", ["BACKOFF", "EXITED", "STARTING"])
def test_a_writer_being_restarted_is_no_reason_to_stop(tmp_path, capsys, state):
    """supervisord restarts a writer that died (autorestart); only FATAL means it gave up."""
    run = Scenario(
        tmp_path,
        states=lambda _now: {"writer-file": state, "collector": "RUNNING"},
        batches=[[stats("ready")]],
        exits_after=50,
    )
    assert run.run() == 0
    assert error_lines(capsys.readouterr().err) == []
    assert run.sup.signals == []


def test_an_unsafe_run_directory_is_a_usage_error_and_starts_nothing(tmp_path, capsys):
    run = Scenario(tmp_path)

    def refuse() -> None:
        raise RunDirError(f"{tmp_path} is a symlink")

    run.launcher.on_prepare = refuse
    assert run.run() == 2
    assert not run.launcher.started
    assert error_lines(capsys.readouterr().err) == [f"tracecap: error: {tmp_path} is a symlink"]


def test_supervisord_failing_is_a_failed_run(tmp_path, capsys):
    run = Scenario(tmp_path, batches=[[stats("ready")]])
    run.sup.on_poll = lambda polls: setattr(run.sup, "returncode", 2) if polls >= 5 else None
    assert run.run() == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("when", ["running", "starting"])
def test_a_stop_signal_stops_supervisord(tmp_path, capsys, signum, when):
    """Also one that comes while the run directory is being prepared, before supervisord
    exists: it must be stopped as soon as it is. The stats it sends as it stops still count."""
    reached_the_previous_handler: list[int] = []

    def previous_handler(sig: int, _frame: Any) -> None:
        reached_the_previous_handler.append(sig)

    def kill() -> None:
        os.kill(os.getpid(), signum)

    before = signal.signal(signum, previous_handler)
    try:
        run = Scenario(
            tmp_path, batches=[[stats("ready")], [stats("stopped", **{"write.events": 4})]]
        )
        if when == "running":
            run.sup.on_poll = lambda polls: kill() if polls == 3 else None
        else:
            run.launcher.on_prepare = kill
        assert run.run() == 0
        handler_after = signal.getsignal(signum)
    finally:
        signal.signal(signum, before)
    assert reached_the_previous_handler == []
    assert [sig for sig, _ in run.sup.signals] == [signal.SIGTERM]
    assert run.sup.polls <= 5, "supervisord was not stopped at once"
    assert handler_after is previous_handler, "the previous handler was not restored"
    err = capsys.readouterr().err
    assert error_lines(err) == []
    assert "tracecap: summary: 4 events" in err


def test_a_stopping_supervisord_is_woken_until_it_exits(tmp_path, capsys):
    """supervisord notices its programs' exits only when its poll ends: requests on its socket
    end it, so the front end asks after its programs at every turn of a stop, and only then."""
    run = Scenario(tmp_path, batches=[[stats("ready")]], exits_after=200)
    asked: list[bool] = []
    stopped: list[bool] = []
    infos = run.rpc.process_infos

    def process_infos() -> list[dict[str, Any]] | None:
        asked.append(bool(stopped))
        if len(stopped) and asked.count(True) == 3:
            run.sup.returncode = 0  # woken by the third request after the stop
        return infos()

    def send_signal(sig: int) -> None:  # supervisord stops its programs, then exits later
        run.sup.signals.append((sig, run.clock.now))
        stopped.append(True)

    run.rpc.process_infos = process_infos  # type: ignore[method-assign]
    run.sup.send_signal = send_signal  # type: ignore[method-assign]
    run.sup.on_poll = lambda polls: os.kill(os.getpid(), signal.SIGTERM) if polls == 4 else None
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert run.run() == 0
    finally:
        signal.signal(signal.SIGTERM, before)
    assert [sig for sig, _ in run.sup.signals] == [signal.SIGTERM]
    assert asked.count(True) == 3 and run.sup.polls < 10, "supervisord was not woken"
    assert asked.count(False) <= 2  # before the stop, only the periodic check
    # a stop signal only sets a flag: the loop notices it after at most one wait on the bus
    # (the last wait is the final stats' drain, once supervisord has exited)
    assert max(run.feed.timeouts[:-1]) <= LOOP_MS


def test_the_front_end_subscribes_to_stats_and_printed_events_on_the_runs_bus(tmp_path):
    run = Scenario(tmp_path, exits_after=3)
    run.config = options.parse_args(["--capture", "exec", "--output", "json"])
    run.plan = make_plan(run.config, [], str(tmp_path), exe=EXE)
    run.run()
    assert run.feed.subscribed == (f"ipc://{tmp_path}/bus.sock", (bus.TOPIC_PROC,))


def test_stopped_program_names_the_first_dead_one():
    infos = [
        {"name": "writer-file", "statename": "BACKOFF", "exitstatus": 1},
        {"name": "writer-exec", "statename": "FATAL", "exitstatus": 2},
        {"name": "collector", "statename": "RUNNING", "exitstatus": 0},
    ]
    assert stopped_program(infos, "/run/tc") == (
        "writer-exec stopped (FATAL, exit status 2); its messages are above and in "
        "/run/tc/writer-exec.log"
    )
    assert stopped_program(infos[:1] + infos[2:], "/run/tc") is None


@pytest.mark.parametrize(("status", "stopped"), [(REFUSED_EXIT, True), (0, False), (1, False)])
def test_a_writer_that_refused_its_configuration_ends_the_run(status, stopped):
    """Left EXITED by ``autorestart=unexpected``: a restart would refuse again."""
    infos = [{"name": "writer-file", "statename": "EXITED", "exitstatus": status}]
    assert (stopped_program(infos, "/run/tc") is not None) == stopped


def test_events_go_to_the_events_file_not_stdout(tmp_path, capsys):
    """--output json:/path: the loop writes each event line to the events file (rotating it),
    stdout stays empty, and the summary says how many were written."""
    argv = ["--capture", "write", "--output", f"json:{tmp_path}/ev/e.json",
            "--output", "option:rotate-size=1kb"]  # fmt: skip
    config = options.parse_args(argv)
    plan = make_plan(config, argv, str(tmp_path), exe=EXE)
    writes = [bus.encode(bus.TOPIC_FILE_WRITE, file_env(seq=n, io_len=10, io_id=n), b"x" * 10)
              for n in range(20)]  # fmt: skip
    clock = FakeClock(0.5)
    sup = FakeSupervisord(clock, 10)
    out = io.StringIO()
    events = open_events_file(config.output_file, config.output_rotation)
    frontend = Frontend(config, plan, out, launcher=FakeLauncher(sup), rpc=FakeRpc(clock,
                        all_running), subscribe=FakeFeed([[stats("ready"), *writes]]),
                        clock=clock, events_file=events)  # fmt: skip
    assert frontend.run() == 0
    events.close()
    assert out.getvalue() == ""
    lines = [line for _, line in _segment_lines(tmp_path / "ev", "e.json")]
    assert len(lines) == 20 and events.rotations >= 5
    assert "tracecap: events file: 20 events written" in capsys.readouterr().err


def _segment_lines(directory: Path, base: str) -> list[tuple[str, bytes]]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return list(segments.iter_lines(fd, base))
    finally:
        os.close(fd)


def test_the_ready_timeout_is_the_environments_when_it_is_a_positive_number():
    assert ready_timeout({}) == READY_TIMEOUT_S
    assert ready_timeout({READY_TIMEOUT_ENV: "720"}) == 720.0
    assert ready_timeout({READY_TIMEOUT_ENV: "0.5"}) == 0.5
    for bad in ("", "0", "-3", "nan", "inf", "ten"):
        with pytest.raises(ValueError, match=READY_TIMEOUT_ENV):
            ready_timeout({READY_TIMEOUT_ENV: bad})

"""`tracecap run`: the one-shot front end.

It prepares the output and run directories, starts supervisord in the foreground with the
collector and the writers the options need, prints ``tracecap: ready`` once the collector
reports its probes attached, prints events with ``--output json``, and on SIGINT/SIGTERM stops
everything through supervisord and prints a summary of what was captured and lost.

The loop reaches the system through objects it is given, so that its verdicts can be tested
without root: a launcher (prepares the run directory, starts supervisord), an RPC client (how
supervisord's programs are), a bus feed (stats and events) and a clock. The production ones are
the defaults.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import pwd
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from tracecap import bus
from tracecap.frontend.events_file import EventsFileError, open_events_file
from tracecap.frontend.plan import Plan, make_plan
from tracecap.frontend.rundir import (
    OutDirError,
    prepare_out_dir,
    prepare_stats_dir,
    write_options,
)
from tracecap.frontend.runlock import claim_run_dir
from tracecap.frontend.summary import merge_epochs, status_line, summary_line, unseen_tail
from tracecap.frontend.supervisor_conf import REFUSED_EXIT
from tracecap.options import RING_FLOOR_MB, Config
from tracecap.privileges import RunDirError
from tracecap.segments import Rotated, SegmentedFile
from tracecap.stats import read_writer_stats

if TYPE_CHECKING:
    import xmlrpc.client

    from tracecap.frontend import tracee_json

READY_TIMEOUT_S = 60.0
#: The environment's override of READY_TIMEOUT_S, in seconds, for a machine where loading takes
#: longer: the kernel matrix's guests under QEMU's TCG (the collector alone took about 100 s).
READY_TIMEOUT_ENV = "TRACECAP_READY_TIMEOUT"
#: How often supervisord is asked how its programs are.
CHECK_INTERVAL_S = 1.0
#: The longest wait on the bus in one turn of the loop. A stop signal only sets a flag (it does
#: not end the wait), so this is also how late supervisord is told to stop (measured 204 ms
#: with 200). While it stops, supervisord is asked about its programs at every turn: its loop
#: polls its fds with a 1 s timeout that SIGCHLD does not cut short (Python retries the poll
#: after a signal), and a program's pipes close before the program can be reaped, so it may
#: notice an exit up to 1 s late at each of its stop steps (measured: 1.03 s between the last
#: writer's exit and its own). A request on its socket ends that poll.
LOOP_MS = 50

#: Niceness of supervisord, and so of the programs it starts. The capture competes for the CPU
#: with the very workload it captures; when it falls behind, data is lost (the kernel drops what
#: does not fit the ring buffer, the bus what a writer cannot take), so it gets the larger share
#: whenever it is runnable, and sleeps when there is nothing to capture. Every program, not the
#: collector alone: with the collector alone raised, the pcap writer lost half of a 50k
#: packets/s flood (its queue filled while it waited for the CPU).
PIPELINE_NICE = -10


class Supervisord(Protocol):
    """The running supervisord, as subprocess.Popen offers it."""

    returncode: int | None

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class SupervisorRpc(Protocol):
    """supervisord's RPC interface, reduced to what the front end asks."""

    def process_infos(self) -> list[dict[str, Any]] | None:
        """Every program's state (getAllProcessInfo); None while supervisord does not answer
        (still starting, or busy)."""
        ...

    def start_all(self) -> bool:
        """Start every program now; False if supervisord did not answer."""
        ...


class Launcher(Protocol):
    """Starts the run's process tree."""

    def prepare(self, plan: Plan) -> None:
        """Write what the programs read into the run directory, before the bus is joined."""
        ...

    def start(self, plan: Plan) -> Supervisord:
        """Start supervisord on the plan's configuration."""
        ...


class BusFeed(Protocol):
    """The front end's subscription to the bus."""

    def receive(self, timeout_ms: int) -> Iterable[list[bytes]]:
        """The messages waiting, after waiting up to ``timeout_ms`` for the first."""
        ...

    def close(self) -> None: ...


class XmlRpcSupervisor:
    """supervisord's XML-RPC interface on the run directory's unix socket.

    The modules behind it (xmlrpc.client, http.client, supervisor's transport), like zmq and
    the event printer's dpkt, are imported once supervisord is being started rather than
    before: they are 0.1 s of the front end's start (python -X importtime), and supervisord's
    own start overlaps them.
    """

    def __init__(self, run_dir: str) -> None:
        self._socket = f"unix://{run_dir}/supervisor.sock"

    def _proxy(self) -> xmlrpc.client.ServerProxy:
        import xmlrpc.client

        from supervisor.xmlrpc import SupervisorTransport

        # a fresh connection each time: a failed request leaves the old one unusable
        return xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, self._socket)
        )

    def process_infos(self) -> list[dict[str, Any]] | None:
        import http.client
        import xmlrpc.client

        try:
            return self._proxy().supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Fault, http.client.HTTPException):
            return None

    def start_all(self) -> bool:
        import http.client
        import xmlrpc.client

        try:
            self._proxy().supervisor.startAllProcesses(False)
        except (OSError, xmlrpc.client.Fault, http.client.HTTPException):
            return False
        return True


def raise_pipeline_priority() -> None:
    """For the processes started from here on (nice is inherited across fork and setuid)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, PIPELINE_NICE)
    except OSError as exc:
        print(
            f"tracecap: warning: cannot set niceness {PIPELINE_NICE}: {exc}; under load the "
            "traced processes may starve the capture, which then loses more",
            file=sys.stderr,
        )


def kick_start(
    rpc: SupervisorRpc,
    sup: Supervisord,
    timeout: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Start the programs now rather than at supervisord's first one-second tick.

    Autostart would start them anyway; asking over its socket as soon as it listens saves
    most of a second of `tracecap run`'s start. Programs start in priority order (writers
    first) either way.
    """
    deadline = clock() + timeout
    while clock() < deadline and sup.poll() is None:
        if rpc.start_all():
            return
        sleep(0.02)


class SupervisordLauncher:
    """Writes the run's files into its (claimed) run directory as root and starts supervisord
    in its own session, at PIPELINE_NICE, with its output on our stderr."""

    def __init__(self, rpc: SupervisorRpc) -> None:
        self._rpc = rpc

    def prepare(self, plan: Plan) -> None:
        """Write the run's files into its run directory, which ``run`` has claimed."""
        prepare_stats_dir(plan.stats_dir)
        write_options(plan.options_path, plan.options)
        # the run directory is root's all the way down (prepare_run_dir); O_NOFOLLOW anyway
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(plan.conf_path, flags, 0o640), "w") as f:
            f.write(plan.supervisord_conf)
        for log in plan.log_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(log)

    def start(self, plan: Plan) -> Supervisord:
        raise_pipeline_priority()
        sup = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "supervisord"), "-c", plan.conf_path],
            stdout=sys.stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        kick_start(self._rpc, sup)
        return sup


class ZmqFeed:
    """A SUB socket on the bus: stats, and the topics whose events are printed."""

    def __init__(self, endpoint: str, topics: tuple[bytes, ...]) -> None:
        import zmq

        self._zmq = zmq
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 200_000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, bus.TOPIC_STATS)
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(endpoint)
        self._sock = sock

    def receive(self, timeout_ms: int) -> Iterator[list[bytes]]:
        if not self._sock.poll(timeout_ms):
            return
        while True:
            try:
                yield self._sock.recv_multipart(self._zmq.NOBLOCK)
            except self._zmq.Again:
                return

    def close(self) -> None:
        self._sock.close()


class LogRelay:
    """Copies new lines of the programs' log files to our stderr, so errors are seen at once.

    supervisord could write to /dev/stderr itself, but it reopens that path with its own file
    offset, which garbles a redirected stderr.
    """

    def __init__(self, paths: list[str], err: TextIO) -> None:
        self._offsets = dict.fromkeys(paths, 0)
        self._err = err

    def pump(self) -> None:
        for path, offset in self._offsets.items():
            try:
                if os.stat(path).st_size == offset:
                    continue  # nothing new: one stat a turn, not an open, a read and a close
                with open(path, "rb") as f:
                    if os.fstat(f.fileno()).st_size < offset:
                        offset = 0  # rotated
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1
            if end:
                if self._err.isatty():
                    self._err.write("\r\x1b[K")  # over the live status line
                self._err.write(data[:end].decode("utf-8", errors="backslashreplace"))
                self._err.flush()
                self._offsets[path] = offset + end


def stopped_program(infos: list[dict[str, Any]], run_dir: str) -> str | None:
    """Why the run cannot go on: a collector that stopped, a writer supervisord gave up
    restarting, or one that refused its configuration (left EXITED with REFUSED_EXIT) ends it
    with its reason instead of a wait for a readiness that will not come."""
    for info in infos:
        dead = ("EXITED", "FATAL", "BACKOFF") if info["name"] == "collector" else ("FATAL",)
        refused = info["statename"] == "EXITED" and info["exitstatus"] == REFUSED_EXIT
        if info["statename"] in dead or refused:
            return (
                f"{info['name']} stopped ({info['statename']}, exit status "
                f"{info['exitstatus']}); its messages are above and in "
                f"{run_dir}/{info['name']}.log"
            )
    return None


class Frontend:
    """The `tracecap run` loop: starts the plan's programs, relays their logs, prints events
    and readiness, stops everything on a signal or a problem, and prints the summary.

    A collector that stops, a writer in FATAL state, or no readiness within ``ready_timeout``
    seconds end the run with status 1.
    """

    def __init__(
        self,
        config: Config,
        plan: Plan,
        out: TextIO,
        *,
        launcher: Launcher | None = None,
        rpc: SupervisorRpc | None = None,
        subscribe: Callable[[str, tuple[bytes, ...]], BusFeed] = ZmqFeed,
        clock: Callable[[], float] = time.monotonic,
        ready_timeout: float = READY_TIMEOUT_S,
        events_file: SegmentedFile | None = None,
    ) -> None:
        self.config = config
        #: ``--output json:/path``: events go there instead of ``out``.
        self.events_file = events_file
        self.events_written = 0
        self.events_lost = 0
        self.plan = plan
        self.out = out
        self.rpc = rpc or XmlRpcSupervisor(plan.run_dir)
        self.launcher = launcher or SupervisordLauncher(self.rpc)
        self.subscribe = subscribe
        self.clock = clock
        self.ready_timeout = ready_timeout
        self.last_stats: dict[str, Any] = {}
        self.stats_by_epoch: dict[int, dict[str, Any]] = {}
        self.ready = False
        self.stopping = False
        self.live = sys.stderr.isatty()

    @functools.cached_property
    def printer(self) -> tracee_json.EventPrinter:
        """Built at the first event to print (it imports dpkt and the schemas)."""
        from tracecap.frontend import tracee_json

        return tracee_json.EventPrinter(merged=self.config.merged_io)

    def _handle(self, frames: list[bytes]) -> None:
        try:
            msg = bus.decode(frames)
        except bus.BadMessage as exc:
            print(f"tracecap: dropped a malformed bus message: {exc}", file=sys.stderr)
            return
        if msg.topic == bus.TOPIC_STATS:
            self._show_status(msg.env)
            self.last_stats = msg.env
            self.stats_by_epoch[msg.env["epoch"]] = msg.env
            if msg.env.get("state") == "ready" and not self.ready:
                self.ready = True
                print("tracecap: ready", file=sys.stderr, flush=True)
            return
        try:
            events = self.printer.events_for(msg, self.config.events)
        except bus.BadMessage as exc:  # a packet batch whose parts do not add up
            print(f"tracecap: dropped a malformed bus message: {exc}", file=sys.stderr)
            return
        if not events:
            return
        text = "".join(json.dumps(event) + "\n" for event in events)
        if self.events_file is None:
            self.out.write(text)
            self.out.flush()
            return
        try:
            self.events_file.write(text.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            if not self.events_lost:
                print(f"tracecap: error: events file: {exc}; counting lost events", file=sys.stderr)
            self.events_lost += len(events)
            return
        self.events_written += len(events)

    def _pump_bus(self, feed: BusFeed, timeout_ms: int) -> int:
        """Handle what arrives within ``timeout_ms``; how many messages that was."""
        count = 0
        for frames in feed.receive(timeout_ms):
            self._handle(frames)
            count += 1
        return count

    def _show_status(self, stats: dict[str, Any]) -> None:
        """A live line on a terminal (never into a file or a pipe, where it would be noise)."""
        if not self.live or stats.get("state") != "ready" or not self.last_stats:
            return
        seconds = (stats["ts"] - self.last_stats["ts"]) / 1e9
        writers = read_writer_stats(self.plan.stats_dir)
        artifacts = sum(int(w.get("counters", {}).get("artifacts", 0)) for w in writers.values())
        sys.stderr.write("\r\x1b[K" + status_line(stats, self.last_stats, seconds, artifacts))
        sys.stderr.flush()

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        # Before supervisord exists: a stop asked for during start-up must stop it too, not
        # raise KeyboardInterrupt past it (it runs in its own session and would be orphaned)
        # or, where the parent ignores SIGINT, be lost.
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        try:
            self.launcher.prepare(self.plan)
        except (RunDirError, OutDirError, OSError) as exc:
            print(f"tracecap: error: {exc}", file=sys.stderr)
            return 2
        relay = LogRelay(self.plan.log_paths, sys.stderr)
        sup = self.launcher.start(self.plan)
        # Joined after supervisord's start (see XmlRpcSupervisor) and before the collector can
        # publish: the collector binds the bus after its own start, and the first stats it
        # publishes, the one that says ready, come after it has loaded the probes. A later
        # stats message says ready too.
        feed = self.subscribe(self.plan.bus_endpoint, self.plan.printer_topics)
        started = self.clock()
        status = 0
        next_check = started + CHECK_INTERVAL_S
        stop_sent = False
        try:
            while sup.poll() is None:
                if self.stopping and not stop_sent:
                    sup.send_signal(signal.SIGTERM)
                    stop_sent = True
                if stop_sent:
                    self.rpc.process_infos()  # wakes supervisord (see LOOP_MS)
                self._pump_bus(feed, LOOP_MS)
                relay.pump()
                now = self.clock()
                if not stop_sent and now >= next_check:
                    next_check = now + CHECK_INTERVAL_S
                    problem = self._problem(now - started)
                    if problem:
                        print(f"tracecap: error: {problem}", file=sys.stderr)
                        status = 1
                        self.stopping = True
            # Final stats published by the collector as it stopped.
            while self._pump_bus(feed, 100):
                pass
            relay.pump()
        finally:
            if sup.poll() is None:
                sup.send_signal(signal.SIGTERM)
                sup.wait(60)
            feed.close()
        if sup.returncode not in (0, None) and status == 0:
            status = 1
        if self.live:
            sys.stderr.write("\r\x1b[K")
        totals = merge_epochs(self.stats_by_epoch)
        writers = read_writer_stats(self.plan.stats_dir)
        tail = unseen_tail(self.stats_by_epoch, writers)
        print(summary_line(totals, writers, tail), file=sys.stderr)
        if self.events_file is not None:
            print(
                f"tracecap: events file: {self.events_written} events written, "
                f"{self.events_file.rotations} rotations, {self.events_lost} events lost to "
                "write errors",
                file=sys.stderr,
            )
            if self.events_lost:
                status = status or 1
        return status

    def _problem(self, elapsed: float) -> str | None:
        infos = self.rpc.process_infos()
        problem = stopped_program(infos, self.plan.run_dir) if infos is not None else None
        if problem is None and not self.ready and elapsed > self.ready_timeout:
            problem = f"capture not ready after {self.ready_timeout:.0f}s"
        return problem


def ready_timeout(environ: Mapping[str, str]) -> float:
    """The seconds to wait for readiness: READY_TIMEOUT_ENV's, else READY_TIMEOUT_S; ValueError
    when the variable is no finite number above 0."""
    value = environ.get(READY_TIMEOUT_ENV)
    if value is None:
        return READY_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ValueError(f"{READY_TIMEOUT_ENV}={value!r}: wanted a number of seconds above 0")
    return seconds


def run(
    config: Config,
    argv: list[str],
    run_dir: str,
    ring_mb: int = RING_FLOOR_MB,
    bridge: Sequence[str] = (),
) -> int:
    if os.geteuid() != 0:
        print(
            "tracecap: error: `tracecap run` must be started as root (it loads eBPF programs)",
            file=sys.stderr,
        )
        return 2
    try:
        pwd.getpwnam("tracecap")
    except KeyError:
        print(
            "tracecap: error: the tracecap user does not exist; run `make setup`", file=sys.stderr
        )
        return 2
    print(f"tracecap: starting: {shlex.join(['tracecap', 'run', *argv])}", file=sys.stderr)
    try:
        timeout = ready_timeout(os.environ)
    except ValueError as exc:
        print(f"tracecap: error: {exc}", file=sys.stderr)
        return 2
    try:
        # before anything is written, into the run directory or the output (clear-dir)
        run_lock = claim_run_dir(run_dir)
    except (RunDirError, OSError) as exc:
        print(f"tracecap: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run_claimed(config, argv, run_dir, ring_mb, bridge, timeout)
    finally:
        os.close(run_lock)


def _run_claimed(
    config: Config,
    argv: list[str],
    run_dir: str,
    ring_mb: int,
    bridge: Sequence[str],
    timeout: float,
) -> int:
    try:
        prepare_out_dir(config)
    except (OutDirError, OSError) as exc:
        print(f"tracecap: error: {exc}", file=sys.stderr)
        return 2
    plan = make_plan(config, argv, run_dir, ring_mb, bridge=bridge)
    events_file = None
    if config.output_file is not None:
        try:
            events_file = open_events_file(
                config.output_file, config.output_rotation, _rotated, _rotation_failed
            )
        except EventsFileError as exc:
            print(f"tracecap: error: {exc}", file=sys.stderr)
            return 2
    try:
        return Frontend(
            config, plan, sys.stdout, events_file=events_file, ready_timeout=timeout
        ).run()
    finally:
        if events_file is not None:
            events_file.close()


def _rotated(done: Rotated) -> None:
    """Say on stderr what a rotation of the events file did (the file holds events only)."""
    removed = f", removed {', '.join(done.removed)}" if done.removed else ""
    print(f"tracecap: events file: closed segment {done.previous}{removed}", file=sys.stderr)
    for problem in done.problems:
        print(f"tracecap: warning: events file: {problem}", file=sys.stderr)


def _rotation_failed(problem: str) -> None:
    print(f"tracecap: warning: events file: {problem}", file=sys.stderr)

"""`tracecap run`: the one-shot front end.

It prepares the output and run directories, starts supervisord in the foreground with the
collector and the writers the options need, prints ``tracecap: ready`` once the collector
reports its probes attached, prints events with ``--output json``, and on SIGINT/SIGTERM stops
everything through supervisord and prints a summary of what was captured and lost.
"""

from __future__ import annotations

import contextlib
import grp
import http.client
import json
import os
import pwd
import shlex
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections import Counter
from typing import Any, TextIO

import zmq
from supervisor.xmlrpc import SupervisorTransport

from tracecap import bus
from tracecap.frontend import supervisor_conf, tracee_json
from tracecap.options import Config
from tracecap.privileges import prepare_run_dir
from tracecap.stats import read_writer_stats
from writers.outdir import clear_out_dir

READY_TIMEOUT_S = 60.0


def tracecap_exe() -> str:
    """The console script, so that every child's command line names tracecap (see process_tree)."""
    return os.path.join(os.path.dirname(sys.executable), "tracecap")


def writer_kinds(config: Config) -> list[str]:
    kinds = ["file"] if (config.write.enabled or config.read.enabled) else []
    kinds += [k for k in ("exec", "mem", "module", "bpf") if getattr(config, k)]
    return kinds + (["pcap"] if config.pcap.enabled else [])


def printer_topics(config: Config) -> tuple[bytes, ...]:
    """What the front end reads to print events: exec events come on proc., not with the
    binaries on exec."""
    if config.output != "json":
        return ()
    topics = [bus.TOPIC_PROC if t == bus.TOPIC_EXEC else t for t in config.topics()]
    if bus.TOPIC_NET_PACKET in topics and not any(
        e.startswith("net_packet_") for e in config.events
    ):
        topics.remove(bus.TOPIC_NET_PACKET)  # packets are events only when asked for by name
    return tuple(topics)


def wait_for_topics(config: Config) -> Counter[bytes]:
    """Subscriptions the collector must see before attaching: writers' and our own."""
    wanted: Counter[bytes] = Counter(config.topics())  # one writer per topic
    wanted.update(printer_topics(config))
    wanted[bus.TOPIC_STATS] += 1
    return wanted


def options_path(run_dir: str) -> str:
    return os.path.join(run_dir, "options.conf")


def write_options(run_dir: str, argv: list[str], group: str = "tracecap") -> None:
    """The run's options, for every program, as a --config file (0640, group tracecap).

    A file rather than the supervisord command lines, which cannot carry arbitrary text.
    """
    path = options_path(run_dir)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("# written by `tracecap run` for the programs it starts\n")
        f.write(shlex.join(argv) + "\n")
    os.chown(path, 0, grp.getgrnam(group).gr_gid)
    os.chmod(path, 0o640)


def programs(config: Config, run_dir: str, ring_mb: int = 8) -> list[supervisor_conf.Program]:
    exe = tracecap_exe()
    common = ["--run-dir", run_dir, "--config", options_path(run_dir)]
    progs = [
        supervisor_conf.Program(
            f"writer-{kind}",
            [exe, "writer", kind, *common],
            "tracecap",
            supervisor_conf.WRITER_PRIORITY,
            "true",
        )
        for kind in writer_kinds(config)
    ]
    wait = [f"--wait-for={t.decode()}={n}" for t, n in sorted(wait_for_topics(config).items())]
    progs.append(
        supervisor_conf.Program(
            "collector",
            [exe, "collector", *wait, f"--ring-mb={ring_mb}", *common],
            "root",
            supervisor_conf.COLLECTOR_PRIORITY,
            "false",
        )
    )
    return progs


class OutDirError(RuntimeError):
    pass


def unreachable_parent(path: str, uid: int, gids: set[int]) -> str | None:
    """The first directory above ``path`` that ``uid`` cannot pass through, if any."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        st = os.stat(parent)
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in gids:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return parent
        if parent == "/":
            return None
        parent = os.path.dirname(parent)


def prepare_out_dir(config: Config, user: str = "tracecap") -> None:
    """Create ``<dir>/out`` for the unprivileged writers, emptied first with clear-dir."""
    pw = pwd.getpwnam(user)
    os.makedirs(config.dir, mode=0o755, exist_ok=True)
    if os.path.islink(config.out_dir):
        raise RuntimeError(f"{config.out_dir} is a symlink: refusing to write through it")
    os.makedirs(config.out_dir, mode=0o750, exist_ok=True)
    if config.clear_dir:
        clear_out_dir(config.out_dir)
    os.chown(config.out_dir, pw.pw_uid, pw.pw_gid)
    os.chmod(config.out_dir, 0o750)
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    blocked = unreachable_parent(config.out_dir, pw.pw_uid, gids)
    if blocked:
        raise OutDirError(
            f"the {user} user, which the writers run as, cannot enter {blocked} to reach "
            f"{config.out_dir}: choose another dir: or let others pass (chmod o+x {blocked})"
        )


def prepare_stats_dir(run_dir: str, user: str = "tracecap") -> str:
    pw = pwd.getpwnam(user)
    stats = os.path.join(run_dir, "stats")
    os.makedirs(stats, exist_ok=True)
    for name in os.listdir(stats):
        os.unlink(os.path.join(stats, name))
    os.chown(stats, pw.pw_uid, pw.pw_gid)
    os.chmod(stats, 0o750)
    return stats


def unseen_tail(
    last_by_epoch: dict[int, dict[str, Any]], writers: dict[str, dict[str, Any]]
) -> int:
    """Messages published at the end of an epoch that a writer never received: a subscriber
    sees a drop only as a gap before a later message, so the last ones need the collector's
    count (``published``) beside the writer's last seq of each epoch and topic."""
    missing = 0
    for writer in writers.values():
        for key, last_seq in writer.get("last_seq", {}).items():
            epoch, _, topic = str(key).partition(":")
            stats = last_by_epoch.get(int(epoch)) if epoch.isdecimal() else None
            if stats and isinstance(last_seq, int):
                published = stats.get("published", {}).get(topic, 0)
                missing += max(0, published - 1 - last_seq)
    return missing


def merge_epochs(last_by_epoch: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Counters of every collector run (epoch) added up: a restarted collector starts from 0."""
    merged: dict[str, Any] = {"kernel": {}, "collector": {}}
    for stats in last_by_epoch.values():
        for part in ("kernel", "collector"):
            for key, value in stats.get(part, {}).items():
                if isinstance(value, int):
                    merged[part][key] = merged[part].get(key, 0) + value
    return merged


def summary_line(
    collector: dict[str, Any], writers: dict[str, dict[str, Any]], tail: int = 0
) -> str:
    """One line that says what was captured and every place something was lost."""
    kernel = collector.get("kernel", {})
    coll = collector.get("collector", {})

    def kernel_sum(*suffixes: str) -> int:
        return sum(v for k, v in kernel.items() if k.endswith(suffixes))

    def writer_sum(*names: str) -> int:
        return sum(int(w.get("counters", {}).get(n, 0)) for w in writers.values() for n in names)

    return (
        f"tracecap: summary: {kernel_sum('.events')} events, {kernel_sum('.bytes')} bytes "
        f"captured, {writer_sum('artifacts')} artifacts; losses: kernel ring buffer "
        f"{kernel_sum('.event_drops', '.chunk_drops')} records "
        f"({kernel_sum('.dropped_bytes')} bytes), syscall table full "
        f"{kernel_sum('.pending_full')}, collector decode errors "
        f"{coll.get('decode_errors', 0)}, bus gaps {writer_sum('gap_messages') + tail} "
        "messages, "
        f"malformed messages {writer_sum('malformed')}, writer errors "
        f"{writer_sum('write_errors', 'handler_errors', 'index_errors')}, disk budget "
        f"{writer_sum('budget_refused_bytes')} bytes refused, bus backlog full "
        f"{coll.get('bus_dropped_messages', 0)} messages ({coll.get('bus_dropped_bytes', 0)} "
        "bytes)"
    )


def status_line(now: dict[str, Any], before: dict[str, Any], seconds: float, artifacts: int) -> str:
    """One terminal line: event rate, bytes, artifacts and losses so far."""
    kernel, prev = now.get("kernel", {}), before.get("kernel", {})
    events = sum(v for k, v in kernel.items() if k.endswith(".events"))
    events_before = sum(v for k, v in prev.items() if k.endswith(".events"))
    rate = (events - events_before) / seconds if seconds > 0 else 0.0
    captured = sum(v for k, v in kernel.items() if k.endswith(".bytes"))
    lost = sum(v for k, v in kernel.items() if k.endswith(("event_drops", "chunk_drops")))
    return (
        f"tracecap: {rate:,.0f} events/s, {captured / 1e6:,.1f} MB captured, "
        f"{artifacts} artifacts, {lost} records lost"
    )


def supervisor_rpc(run_dir: str) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(
        "http://127.0.0.1",
        transport=SupervisorTransport(None, None, f"unix://{run_dir}/supervisor.sock"),
    )


#: Niceness of supervisord, and so of the programs it starts. The capture competes for the CPU
#: with the very workload it captures; when it falls behind, data is lost (the kernel drops what
#: does not fit the ring buffer, the bus what a writer cannot take), so it gets the larger share
#: whenever it is runnable, and sleeps when there is nothing to capture. Every program, not the
#: collector alone: with the collector alone raised, the pcap writer lost half of a 50k
#: packets/s flood (its queue filled while it waited for the CPU).
PIPELINE_NICE = -10


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


def kick_start(run_dir: str, sup: subprocess.Popen, timeout: float = 5.0) -> None:
    """Start the programs now rather than at supervisord's first one-second tick.

    Autostart would start them anyway; asking over its socket as soon as it listens saves
    most of a second of `tracecap run`'s start. Programs start in priority order (writers
    first) either way.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sup.poll() is None:
        try:  # a fresh connection each time: a failed request leaves the old one unusable
            supervisor_rpc(run_dir).supervisor.startAllProcesses(False)
            return
        except (OSError, xmlrpc.client.Fault, http.client.HTTPException):
            time.sleep(0.02)


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


class Frontend:
    def __init__(
        self, config: Config, argv: list[str], run_dir: str, out: TextIO, ring_mb: int = 8
    ) -> None:
        self.ring_mb = ring_mb
        self.config = config
        self.argv = argv
        self.run_dir = run_dir
        self.out = out
        self.last_stats: dict[str, Any] = {}
        self.stats_by_epoch: dict[int, dict[str, Any]] = {}
        self.printer = tracee_json.EventPrinter()
        self.ready = False
        self.stopping = False
        self.live = sys.stderr.isatty()

    def _subscribe(self, ctx: zmq.Context) -> zmq.Socket:
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 200_000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, bus.TOPIC_STATS)
        for topic in printer_topics(self.config):
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(f"ipc://{self.run_dir}/bus.sock")
        return sock

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
        events = self.printer.events_for(msg, self.config.events)
        for event in events:
            self.out.write(json.dumps(event) + "\n")
        if events:
            self.out.flush()

    def _show_status(self, stats: dict[str, Any]) -> None:
        """A live line on a terminal (never into a file or a pipe, where it would be noise)."""
        if not self.live or stats.get("state") != "ready" or not self.last_stats:
            return
        seconds = (stats["ts"] - self.last_stats["ts"]) / 1e9
        writers = read_writer_stats(os.path.join(self.run_dir, "stats"))
        artifacts = sum(int(w.get("counters", {}).get("artifacts", 0)) for w in writers.values())
        sys.stderr.write("\r\x1b[K" + status_line(stats, self.last_stats, seconds, artifacts))
        sys.stderr.flush()

    def run(self) -> int:
        def on_signal(_signum: int, _frame: Any) -> None:
            self.stopping = True

        # Before supervisord exists: a stop asked for during start-up must stop it too, not
        # raise KeyboardInterrupt past it (it runs in its own session and would be orphaned)
        # or, where the parent ignores SIGINT, be lost.
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        prepare_run_dir(self.run_dir)
        stats_dir = prepare_stats_dir(self.run_dir)
        conf_path = os.path.join(self.run_dir, "supervisord.conf")
        write_options(self.run_dir, self.argv)
        progs = programs(self.config, self.run_dir, self.ring_mb)
        with open(conf_path, "w") as f:
            f.write(supervisor_conf.render(self.run_dir, progs))
        logs = [os.path.join(self.run_dir, f"{p.name}.log") for p in progs]
        for log in logs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(log)
        relay = LogRelay(logs, sys.stderr)
        ctx = zmq.Context.instance()
        sock = self._subscribe(ctx)
        raise_pipeline_priority()
        sup = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "supervisord"), "-c", conf_path],
            stdout=sys.stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        kick_start(self.run_dir, sup)
        started = time.monotonic()
        status = 0
        next_check = started + 1.0
        stop_sent = False
        try:
            while sup.poll() is None:
                if self.stopping and not stop_sent:
                    sup.send_signal(signal.SIGTERM)
                    stop_sent = True
                if sock.poll(200):
                    while True:
                        try:
                            self._handle(sock.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                relay.pump()
                now = time.monotonic()
                if not stop_sent and now >= next_check:
                    next_check = now + 1.0
                    problem = self._check_collector()
                    if problem is None and not self.ready and now - started > READY_TIMEOUT_S:
                        problem = f"capture not ready after {READY_TIMEOUT_S:.0f}s"
                    if problem:
                        print(f"tracecap: error: {problem}", file=sys.stderr)
                        status = 1
                        self.stopping = True
            # Final stats published by the collector as it stopped.
            while sock.poll(100):
                self._handle(sock.recv_multipart())
            relay.pump()
        finally:
            if sup.poll() is None:
                sup.send_signal(signal.SIGTERM)
                sup.wait(60)
            sock.close()
        if sup.returncode not in (0, None) and status == 0:
            status = 1
        if self.live:
            sys.stderr.write("\r\x1b[K")
        totals = merge_epochs(self.stats_by_epoch)
        writers = read_writer_stats(stats_dir)
        tail = unseen_tail(self.stats_by_epoch, writers)
        print(summary_line(totals, writers, tail), file=sys.stderr)
        return status

    def _check_collector(self) -> str | None:
        """A collector that stopped, or a writer that keeps dying, ends the run with its reason
        instead of a wait for a readiness that will not come."""
        try:
            infos = supervisor_rpc(self.run_dir).supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Fault, http.client.HTTPException):
            return None  # supervisord still starting, or busy
        for info in infos:
            dead = ("EXITED", "FATAL", "BACKOFF") if info["name"] == "collector" else ("FATAL",)
            if info["statename"] in dead:
                return (
                    f"{info['name']} stopped ({info['statename']}, exit status "
                    f"{info['exitstatus']}); its messages are above and in "
                    f"{self.run_dir}/{info['name']}.log"
                )
        return None


def run(config: Config, argv: list[str], run_dir: str, ring_mb: int = 8) -> int:
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
        prepare_out_dir(config)
    except (OutDirError, OSError) as exc:
        print(f"tracecap: error: {exc}", file=sys.stderr)
        return 2
    return Frontend(config, argv, run_dir, sys.stdout, ring_mb).run()

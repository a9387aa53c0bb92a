"""The `tracecap` command: run | collector | writer KIND | bridge | keys | tap | status, with
`tracecap help [COMMAND]`, `--help`/`-h` on every command and `--version`.

Each subcommand is one ``Command`` in COMMANDS (at the end): its summary, its description, its
own flags and the function that runs it. That entry is the only description of the command:
``split_own`` separates its flags by it, and tracecap/usage.py renders its ``--help``, its part
of tracecap(8) and its bash completion from it (scripts/render_docs.py, run by `make setup`).
Adding a subcommand is one function and one entry.

Each subcommand that captures takes the capture options of `tracecap run` (so that supervisord
can hand the same options to every process) plus a few of its own, which are split off here
before the pure option parser sees the rest.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import socket
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tracecap import __version__, bus, kinds, options, usage
from tracecap.frontend import supervisor_conf
from tracecap.lifetime import follow_supervisor
from tracecap.usage import Command, Flag

if TYPE_CHECKING:
    from tracecap.natsconn import NatsOptions
    from tracecap.tools.nats_bridge import NatsBridgeConfig

WRITER_KINDS = ", ".join(kinds.BY_NAME)
#: ``tracecap writer ship``: not a bus writer, the shipper of what the writers stored.
SHIP = "ship"
SHIP_FLAGS = ("--bucket", "--prefix", "--endpoint-url", "--delete-after-upload")
DEFAULT_RUN_DIR = "/run/tracecap"
#: ``sun_path`` of ``struct sockaddr_un`` is 108 bytes; libzmq's ipc transport refuses a path
#: that does not fit with its NUL (ENAMETOOLONG, ipc_address.cpp), as supervisord's bind would.
SUN_PATH_MAX = 108
#: The longest name of a socket in the run dir: ``supervisor.sock`` (supervisor_conf.render;
#: the bus is ``bus.sock``). tests/unit/tracecap/test_cli.py checks the plan against it.
LONGEST_SOCKET_NAME = len("supervisor.sock")
#: The longest --run-dir whose sockets fit ``sun_path``: 91 bytes.
MAX_RUN_DIR_BYTES = SUN_PATH_MAX - 1 - len("/") - LONGEST_SOCKET_NAME


class UsageError(ValueError):
    """A command line the console script refuses (a missing or repeated flag, an unreadable
    --config, a bad --run-dir or --ring-mb, a net=IFACE this host does not have); ``main``
    prints it and exits with 2."""


def split_own(
    argv: Sequence[str], own: dict[str, bool], switches: frozenset[str] = frozenset()
) -> tuple[dict[str, list[str]], list[str]]:
    """Separate a subcommand's own flags (``--flag VALUE`` or ``--flag=VALUE``) from the rest.

    ``own`` maps each flag to whether it is repeatable; ``switches`` are those of them that
    take no value (found as ``[""]``). Returns ({flag: [values]}, rest).
    """
    found: dict[str, list[str]] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in switches:
            if eq or name in found:
                raise UsageError(f"{name} takes no value" if eq else f"{name} given twice")
            found[name] = [""]
        elif name in own:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"{name} needs a value")
                i += 1
                value = argv[i]
            if name in found and not own[name]:
                raise UsageError(f"{name} given twice")
            found.setdefault(name, []).append(value)
        else:
            rest.append(arg)
        i += 1
    return found, rest


def expand_config(found: dict[str, list[str]], rest: list[str]) -> list[str]:
    """Options from --config FILE first, then the command line's (which add to them)."""
    tokens: list[str] = []
    for path in found.get("--config", []):
        try:
            # Undecodable bytes become surrogate escapes, as in argv: `tracecap run` writes a
            # non-UTF-8 comm= or path filter into the options file its programs read this way.
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as exc:
            raise UsageError(f"--config {path}: {exc.strerror}") from None
        tokens += options.expand_config_file(text)
    return tokens + rest


def parse_wait_for(values: list[str]) -> Counter[bytes]:
    wanted: Counter[bytes] = Counter()
    for value in values:
        topic, eq, count = value.partition("=")
        count = count if eq else "1"
        if not topic.endswith(".") or not count.isdecimal():
            raise UsageError(
                f"--wait-for {value!r}: expected TOPIC. or TOPIC.=N (topics end with '.')"
            )
        wanted[topic.encode()] += int(count)
    return wanted


def run_dir_of(found: dict[str, list[str]]) -> str:
    """The --run-dir: absolute, short enough for its sockets (MAX_RUN_DIR_BYTES), and made of
    characters supervisord's configuration file can carry (check_safe: ASCII, so characters are
    bytes)."""
    run_dir = found.get("--run-dir", [DEFAULT_RUN_DIR])[0]
    try:
        supervisor_conf.check_safe(run_dir, "--run-dir")
    except supervisor_conf.UnsafeValue as exc:
        raise UsageError(str(exc)) from None
    if not run_dir.startswith("/"):
        raise UsageError(f"--run-dir {run_dir!r}: expected an absolute path")
    if len(run_dir) > MAX_RUN_DIR_BYTES:
        raise UsageError(
            f"--run-dir {run_dir!r} is {len(run_dir)} bytes: at most {MAX_RUN_DIR_BYTES}, so that "
            f"its sockets ({run_dir}/supervisor.sock) fit a unix socket address "
            f"({SUN_PATH_MAX} bytes with the NUL)"
        )
    return run_dir


def host_mem_total_kib(path: str = "/proc/meminfo") -> int | None:
    """This host's MemTotal, or None when /proc/meminfo cannot be read."""
    try:
        with open(path) as f:
            return options.mem_total_kib(f.read())
    except OSError:
        return None


def ring_mb_of(
    found: dict[str, list[str]], mem_total: Callable[[], int | None] = host_mem_total_kib
) -> int:
    """``--ring-mb`` as given, or sized from the host's memory (options.RING_MEM_SHARE)."""
    if "--ring-mb" in found:
        return options.parse_ring_mb(found["--ring-mb"][0])
    return options.ring_mb_for_memory(mem_total())


def check_interfaces(
    config: options.Config, index_of: Callable[[str], int] = socket.if_nametoindex
) -> None:
    """Refuse a net=IFACE this host does not have before anything starts (the collector would
    find out only once supervisord had started it). ``index_of`` raises OSError for an unknown
    name, as ``socket.if_nametoindex`` does."""
    iface = config.pcap.iface
    if iface is None:
        return
    try:
        index_of(iface)
    except OSError:
        raise UsageError(
            f"'net={iface}': no such network interface on this host (`ip link` lists them)"
        ) from None


def _config(argv: list[str]) -> options.Config:
    return options.parse_args(argv)


# --- the subcommands ---------------------------------------------------------------------------
# Each runs with its own flags split off (``found``) and the rest of its arguments (``rest``);
# main() has already answered --help and checked the required flags.


def _run(found: dict[str, list[str]], rest: list[str]) -> int:
    argv = expand_config(found, rest)
    config = _config(argv)
    run_dir, ring_mb = run_dir_of(found), ring_mb_of(found)
    check_interfaces(config)
    bridge = _run_bridge_argv(found)
    from tracecap.frontend.supervise import run

    return run(config, argv, run_dir, ring_mb, bridge)


#: `tracecap run`'s flags that go to the NATS bridge it then starts (README Fleet).
_RUN_BRIDGE_FLAGS = ("--nats", "--creds", "--nkey", "--tlscert", "--tlskey", "--tlsca",
                     "--stream", "--host", "--replicas")  # fmt: skip


def _run_bridge_argv(found: dict[str, list[str]]) -> list[str]:
    """The flags of the bridge `tracecap run --nats` starts, checked as `tracecap bridge` checks
    them (a bad one is a usage error before anything starts); none without --nats."""
    given = [flag for flag in _RUN_BRIDGE_FLAGS if flag in found]
    if "--nats" not in found:
        if given:
            raise UsageError(f"{given[0]} goes with --nats")
        return []
    _nats_bridge_config(found)
    argv: list[str] = []
    for flag in given:
        try:
            argv += [flag, supervisor_conf.check_safe(found[flag][0], flag)]
        except supervisor_conf.UnsafeValue as exc:
            raise UsageError(str(exc)) from None
    return argv


def _collector(found: dict[str, list[str]], rest: list[str]) -> int:
    config = _config(expand_config(found, rest))
    wait = parse_wait_for(found.get("--wait-for", []))
    ring_mb = ring_mb_of(found)
    from collector.service import run_collector

    run_dir = run_dir_of(found)
    return run_collector(config, run_dir, wait, ring_mb << 20)


def _writer(found: dict[str, list[str]], rest: list[str]) -> int:
    if not rest or rest[0].startswith("-"):
        raise UsageError(f"writer needs a KIND ({WRITER_KINDS})")
    kind, rest = rest[0], rest[1:]
    config = _config(expand_config(found, rest))
    run_dir = run_dir_of(found)
    ship_flags = [flag for flag in SHIP_FLAGS if flag in found]
    if kind == SHIP:
        return _ship(found, config, run_dir)
    if ship_flags:
        raise UsageError(f"{ship_flags[0]} is for writer {SHIP} only")
    endpoint = found.get("--connect", [f"ipc://{run_dir}/bus.sock"])[0]
    if endpoint.startswith(("nats://", "tls://")):
        return _nats_writer(kind, config, found, endpoint, run_dir)
    if any(flag in found for flag in (*_NATS_ONLY, "--stream", "--host")):
        raise UsageError("--creds, --nkey, --tls*, --stream and --host are for nats:// only")
    # The bridge serves only CURVE clients: a plain tcp connection would wait in silence.
    server_key = found.get("--server-key", [None])[0]
    client_key = found.get("--client-key", [None])[0]
    curve_keys: tuple[str, str] | None = None
    if endpoint.startswith("tcp://"):
        if server_key is None or client_key is None:
            raise UsageError("tcp endpoints need --server-key and --client-key")
        curve_keys = (server_key, client_key)
    elif server_key is not None or client_key is not None:
        raise UsageError("--server-key and --client-key are for tcp:// endpoints only")
    from tracecap.keys import KeyFileError
    from writers.runner import OutputDirRefused, run_writer

    writer_options = (
        {"split": tuple(sorted(config.pcap.split)), "rotation": config.pcap.rotation}
        if kind == "pcap"
        else None
    )
    try:
        return run_writer(
            kind,
            config.out_dir,
            endpoint,
            f"{run_dir}/stats",
            options=writer_options,
            curve_keys=curve_keys,
            limit_bytes=config.limit_bytes,
            floor_bytes=config.floor_bytes,
            index_rotation=config.index_rotation,
        )
    except (KeyFileError, OutputDirRefused) as exc:
        raise UsageError(str(exc)) from None


def _ship(found: dict[str, list[str]], config: options.Config, run_dir: str) -> int:
    if "--bucket" not in found:
        raise UsageError(f"writer {SHIP} needs --bucket")
    for flag in ("--connect", "--server-key", "--client-key"):
        if flag in found:
            raise UsageError(f"{flag} is not for writer {SHIP}: it reads <dir>/out")
    from tracecap.privileges import PrivilegeError
    from writers.shipper import run_shipper

    try:
        return run_shipper(
            config.out_dir,
            found["--bucket"][0],
            prefix=found.get("--prefix", [""])[0],
            endpoint_url=found.get("--endpoint-url", [None])[0],
            delete_after_upload="--delete-after-upload" in found,
            stats_dir=f"{run_dir}/stats",
        )
    except PrivilegeError as exc:
        raise UsageError(str(exc)) from None


#: The NATS connection's flags besides the servers (tracecap.natsconn).
_NATS_ONLY = ("--creds", "--nkey", "--tlscert", "--tlskey", "--tlsca")


def _nats_options(found: dict[str, list[str]], servers: str) -> NatsOptions:
    from tracecap.natsconn import options_from

    try:
        return options_from({**found, "--nats": [servers]})
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _stream_of(found: dict[str, list[str]]) -> str:
    from tracecap import fleet

    stream = found.get("--stream", [fleet.DEFAULT_STREAM])[0]
    if not stream or any(c in stream for c in " .*>\t/\\"):
        raise UsageError(f"--stream {stream!r}: a JetStream stream name (no spaces, . * > / \\)")
    return stream


def _nats_writer(
    kind: str, config: options.Config, found: dict[str, list[str]], servers: str, run_dir: str
) -> int:
    from tracecap import fleet
    from writers.nats_source import NatsWriterConfig, run_nats_writer

    if kind not in kinds.BY_NAME:
        raise UsageError(f"unknown writer kind {kind!r} ({WRITER_KINDS})")
    if "--server-key" in found or "--client-key" in found:
        raise UsageError("--server-key and --client-key are for tcp:// endpoints only")
    hosts = found.get("--host", ["*"])[0]
    if hosts != "*":
        try:
            fleet.check_host(hosts)
        except ValueError as exc:
            raise UsageError(f"--host: {exc}") from None
    writer_config = NatsWriterConfig(
        kind=kind,
        out_dir=config.out_dir,
        nats=_nats_options(found, servers),
        stats_dir=f"{run_dir}/stats",
        stream=_stream_of(found),
        hosts=hosts,
        options={"split": tuple(sorted(config.pcap.split))} if kind == "pcap" else None,
        limit_bytes=config.limit_bytes,
        floor_bytes=config.floor_bytes,
    )
    return run_nats_writer(writer_config)


def _bridge(found: dict[str, list[str]], rest: list[str]) -> int:
    if ("--nats" in found) == ("--listen" in found):
        raise UsageError("bridge needs one of --listen tcp://ADDR:PORT and --nats nats://HOST:PORT")
    if "--nats" in found:
        return _nats_bridge(found)
    if any(flag in found for flag in (*_NATS_ONLY, "--stream", "--host", "--replicas")):
        raise UsageError("--creds, --nkey, --tls*, --stream, --host and --replicas go with --nats")
    for flag in ("--server-key", "--allow"):
        if flag not in found:
            raise UsageError(f"bridge needs {flag} with --listen")
    listen = found["--listen"][0]
    if not listen.startswith("tcp://"):
        raise UsageError(f"--listen {listen!r}: expected tcp://ADDR:PORT")
    import zmq

    from tracecap.keys import KeyFileError
    from tracecap.tools.bridge import BridgeConfig, run_bridge

    bridge_config = BridgeConfig(
        listen=listen,
        server_key=found["--server-key"][0],
        allow_dir=found["--allow"][0],
        upstream=f"ipc://{run_dir_of(found)}/bus.sock",
    )
    try:
        return run_bridge(bridge_config)
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    except zmq.ZMQError as exc:
        raise UsageError(f"--listen {listen}: {exc}") from None


def _nats_bridge(found: dict[str, list[str]]) -> int:
    from tracecap.tools.nats_bridge import run_nats_bridge

    return run_nats_bridge(_nats_bridge_config(found))


def _nats_bridge_config(found: dict[str, list[str]]) -> NatsBridgeConfig:
    from tracecap.tools.nats_bridge import NatsBridgeConfig, host_name

    if "--server-key" in found or "--allow" in found:
        raise UsageError("--server-key and --allow are for --listen")
    replicas = found.get("--replicas", ["1"])[0]
    if not replicas.isdecimal() or not 1 <= int(replicas) <= 5:
        raise UsageError(f"--replicas {replicas!r}: 1 to 5 (JetStream's limit)")
    try:
        host = host_name(found.get("--host", [None])[0])
    except ValueError as exc:
        raise UsageError(f"--host: {exc}") from None
    return NatsBridgeConfig(
        nats=_nats_options(found, found["--nats"][0]),
        upstream=f"ipc://{run_dir_of(found)}/bus.sock",
        host=host,
        stream=_stream_of(found),
        replicas=int(replicas),
    )


def _keys(found: dict[str, list[str]], rest: list[str]) -> int:
    if len(rest) != 1 or rest[0].startswith("-"):
        raise UsageError("keys needs one DIR (and optionally --name NAME)")
    from tracecap.keys import KeyFileError, keys_command

    try:
        return keys_command(rest[0], found.get("--name", [None])[0])
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None


def _tap(found: dict[str, list[str]], rest: list[str]) -> int:
    run_dir = run_dir_of(found)
    endpoint = found.get("--connect", [f"ipc://{run_dir}/bus.sock"])[0]
    from tracecap.tools.tap import tap

    return tap(endpoint, [t.encode() for t in found.get("--topic", [""])])


def _status(found: dict[str, list[str]], rest: list[str]) -> int:
    if "--nats" in found:
        from tracecap.tools.fleet_status import fleet_status

        return fleet_status(_nats_options(found, found["--nats"][0]), _stream_of(found))
    if any(flag in found for flag in (*_NATS_ONLY, "--stream")):
        raise UsageError("--creds, --nkey, --tls* and --stream go with --nats")
    from tracecap.tools.status import status

    return status(run_dir_of(found))


def _exporter(found: dict[str, list[str]], rest: list[str]) -> int:
    config = _config(expand_config(found, rest))
    if not config.server.enabled:
        raise UsageError("exporter needs --server metrics or --server healthz")
    from tracecap.tools.exporter import run_exporter

    return run_exporter(config, run_dir_of(found))


def _report(found: dict[str, list[str]], rest: list[str]) -> int:
    if len(rest) != 1 or rest[0].startswith("-"):
        raise UsageError("report needs one OUT_DIR (and optionally -o FILE.html)")
    from tracecap.tools.report.build import main as report_main

    output = found.get("-o", []) + found.get("--output-file", [])
    if len(output) > 1:
        raise UsageError("-o given twice")
    return report_main(rest[0], output[0] if output else None)


# --- the usage table ---------------------------------------------------------------------------

_TOPICS = tuple(topic.decode() for topic in bus.TOPICS)

CONFIG = Flag(
    ("--config",),
    "FILE",
    "Options read from FILE first, in the command line's syntax (several per line, shell "
    "quoting, # comments); the command line adds to them.",
    repeatable=True,
    complete="file",
)
RUN_DIR = Flag(
    ("--run-dir",),
    "DIR",
    "Where the bus socket, supervisord's files, the program logs and the writers' counters "
    f"live (default {DEFAULT_RUN_DIR}): absolute, at most {MAX_RUN_DIR_BYTES} bytes, letters, "
    "digits and _./:=@+,- only.",
    complete="dir",
)
RING_MB = Flag(
    ("--ring-mb",),
    "N",
    f"The file-contents ring buffer, {options.RING_MB_FORMS}; default 1/"
    f"{options.RING_MEM_SHARE} of MemTotal as a power of two, from {options.RING_FLOOR_MB} to "
    f"{options.RING_CAP_MB}. A larger ring absorbs longer write bursts without loss, and costs "
    "its size in resident memory.",
)
WAIT_FOR = Flag(
    ("--wait-for",),
    "TOPIC[=N]",
    "Attach the probes only once TOPIC (ending in .) has N subscribers (default 1).",
    repeatable=True,
    words=_TOPICS,
)
CONNECT = Flag(
    ("--connect",),
    "ENDPOINT",
    "The bus to subscribe to (default ipc://<run-dir>/bus.sock); a tcp:// endpoint (a "
    "tracecap bridge) needs --server-key and --client-key; nats://HOST:PORT[,...] consumes "
    "the JetStream stream (tracecap bridge --nats), artifacts under <dir>/out/<host>.",
    words=("ipc://", "tcp://", "nats://"),
)
WRITER_SERVER_KEY = Flag(
    ("--server-key",),
    "FILE",
    "The bridge's public key (server.key), for a tcp:// endpoint.",
    complete="file",
)
CLIENT_KEY = Flag(
    ("--client-key",),
    "FILE",
    "This writer's secret key (NAME.key_secret), for a tcp:// endpoint; read after the "
    "writer drops to the tracecap user.",
    complete="file",
)
LISTEN = Flag(
    ("--listen",),
    "tcp://ADDR:PORT",
    "Where remote writers connect (CURVE-encrypted).",
    words=("tcp://",),
)
BRIDGE_SERVER_KEY = Flag(
    ("--server-key",),
    "FILE",
    "The bridge's secret key (server.key_secret, made by tracecap keys); with --listen.",
    complete="file",
)
ALLOW = Flag(
    ("--allow",),
    "DIR",
    "The directory of the client public keys (NAME.key) that get data; any other key gets "
    "nothing. SIGHUP re-reads it. With --listen.",
    complete="dir",
)
NATS = Flag(
    ("--nats",),
    "nats://HOST:PORT[,...]",
    "NATS servers (tls:// for TLS); with it the bridge publishes into JetStream instead of "
    "listening on tcp (README Fleet).",
    words=("nats://", "tls://"),
)
RUN_NATS = Flag(
    ("--nats",),
    "nats://HOST:PORT[,...]",
    "Also start tracecap bridge --nats under the run's supervisord (as the tracecap user, "
    "like the writers: the collector never disconnects it for being slow); with it --creds, "
    "--nkey, --tls*, --stream, --host and --replicas go to the bridge (README Fleet).",
    words=("nats://", "tls://"),
)
STATUS_NATS = Flag(
    ("--nats",),
    "nats://HOST:PORT[,...]",
    "Show the hosts seen in the JetStream stream with their last stats instead (README Fleet).",
    words=("nats://", "tls://"),
)
CREDS = Flag(
    ("--creds",), "FILE", "NATS user credentials file (JWT and nkey seed).", complete="file"
)
NKEY = Flag(("--nkey",), "FILE", "NATS nkey seed file.", complete="file")
TLSCERT = Flag(("--tlscert",), "FILE", "TLS client certificate for NATS.", complete="file")
TLSKEY = Flag(("--tlskey",), "FILE", "Its private key.", complete="file")
TLSCA = Flag(
    ("--tlsca",), "FILE", "CA certificate the NATS servers' are checked with.", complete="file"
)
STREAM = Flag(("--stream",), "NAME", "The JetStream stream (default TRACECAP).")
BRIDGE_HOST = Flag(
    ("--host",),
    "NAME",
    "This capture host's name in subjects (default: the short host name; letters, digits, _ -).",
)
WRITER_HOST = Flag(
    ("--host",),
    "NAME",
    "With nats://, persist only this capture host's messages (default: every host).",
)
REPLICAS = Flag(
    ("--replicas",),
    "N",
    "Replicas of the stream when the bridge creates it (default 1; 3 on a three-node cluster).",
)
#: How a NATS client of tracecap connects and authenticates (as the NATS ecosystem names it).
NATS_CLIENT = (CREDS, NKEY, TLSCERT, TLSKEY, TLSCA, STREAM)
#: What the bridge publishes into JetStream, with ``tracecap run --nats`` or ``tracecap bridge``.
BRIDGE_NATS = (*NATS_CLIENT, BRIDGE_HOST, REPLICAS)
KIND = Flag(
    (),
    "KIND",
    f"The artifact kind: {WRITER_KINDS}; or {SHIP}: put what the writers stored into an "
    "S3-compatible bucket.",
    required=True,
    words=(*kinds.BY_NAME, SHIP),
)
BUCKET = Flag(
    ("--bucket",),
    "BUCKET",
    f"writer {SHIP}: the bucket; objects are <prefix>/<host>/<path in out/>, the index lines "
    "<prefix>/<host>/index/*.jsonl.",
)
PREFIX = Flag(("--prefix",), "PREFIX", f"writer {SHIP}: the keys' first part (default none).")
ENDPOINT_URL = Flag(
    ("--endpoint-url",),
    "URL",
    f"writer {SHIP}: the store's URL (default: AWS_ENDPOINT_URL, ~/.aws/config, else AWS S3); "
    "credentials and region come from boto3's chain (AWS_ACCESS_KEY_ID, ...).",
    words=("http://", "https://"),
)
DELETE_AFTER_UPLOAD = Flag(
    ("--delete-after-upload",),
    "",
    f"writer {SHIP}: remove each local copy once stored and final.",
)
KEYS_DIR = Flag((), "DIR", "Where the pair is written.", required=True, complete="dir")
NAME = Flag(("--name",), "NAME", "The key pair's name (default: the short host name).")
TOPIC = Flag(
    ("--topic",),
    "PREFIX",
    "Print only the messages whose topic starts with PREFIX (default: every message).",
    repeatable=True,
    words=_TOPICS,
)

REPORT_DIR = Flag(
    (),
    "OUT_DIR",
    "The capture's output directory (holding index.jsonl), or its dir: (holding out/).",
    required=True,
    complete="dir",
)
REPORT_FILE = Flag(
    ("-o", "--output-file"),
    "FILE.html",
    "Where the page is written (default OUT_DIR/report.html); its links to artifacts are "
    "relative, so copy it with the directory.",
    complete="file",
)

COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "run",
            "capture: the collector and the writers under supervisord, until Ctrl-C",
            "Start the collector and the writer of every enabled capture kind under "
            "supervisord, in the foreground at nice -10; print tracecap: ready on stderr once "
            "every probe is attached and every writer subscribed, events on stdout with "
            "--output json, and on Ctrl-C or SIGTERM stop everything, flush and print a "
            "summary of what was captured and lost. Runs as root.",
            (
                CONFIG,
                RUN_DIR,
                RING_MB,
                RUN_NATS,
                *BRIDGE_NATS,
            ),
            options=True,
            handler=_run,
        ),
        Command(
            "collector",
            "the privileged process alone: load, attach, publish on the bus",
            "Load and attach the eBPF programs of the enabled capture kinds and publish what "
            "they see on the bus (ipc://<run-dir>/bus.sock). Runs as root; supervisord starts "
            "it (tracecap run, supervisord.conf).",
            (CONFIG, RUN_DIR, RING_MB, WAIT_FOR),
            options=True,
            handler=_collector,
        ),
        Command(
            "writer",
            "one unprivileged writer: persist one artifact kind",
            "Subscribe to one artifact kind on the bus and persist it under <dir>/out, with "
            "index.jsonl; or, as writer ship, follow index.jsonl and put each stored artifact "
            "and the index lines into an S3-compatible bucket once, resuming after a restart. "
            "Runs as the tracecap user (started as root, it drops to it before opening "
            "anything).",
            (
                CONFIG,
                RUN_DIR,
                CONNECT,
                WRITER_SERVER_KEY,
                CLIENT_KEY,
                BUCKET,
                PREFIX,
                ENDPOINT_URL,
                DELETE_AFTER_UPLOAD,
                *NATS_CLIENT,
                WRITER_HOST,
            ),
            options=True,
            operand=KIND,
            handler=_writer,
        ),
        Command(
            "bridge",
            "relay the bus to remote writers over CURVE-encrypted tcp, or into JetStream",
            "Relay the bus to tcp:// with CURVE encryption (--listen; only the client keys in "
            "--allow get data), or republish it into a NATS JetStream stream (--nats), spooling "
            "while NATS is away. Started as root, it drops to the tracecap user before anything "
            "else.",
            (
                LISTEN,
                BRIDGE_SERVER_KEY,
                ALLOW,
                RUN_DIR,
                NATS,
                *BRIDGE_NATS,
            ),
            handler=_bridge,
        ),
        Command(
            "keys",
            "make a CURVE key pair for the bridge or a remote writer",
            "Write NAME.key (public, 0644) and NAME.key_secret (0600) into DIR, in pyzmq's "
            "certificate format; never overwrites.",
            (NAME,),
            operand=KEYS_DIR,
            handler=_keys,
        ),
        Command(
            "tap",
            "print bus messages as JSON lines",
            "Print the bus's messages as JSON lines (kernel strings with invalid UTF-8 escaped "
            "as \\xNN), for people and scripts. Run as root or a member of group tracecap.",
            (RUN_DIR, CONNECT, TOPIC),
            handler=_tap,
        ),
        Command(
            "status",
            "the collector's and the writers' live counters, as JSON",
            "Print the collector's next message on the stats. topic and the writers' counters "
            "as JSON. Run as root or a member of group tracecap.",
            (RUN_DIR, STATUS_NATS, CREDS, NKEY, TLSCERT, TLSKEY, TLSCA, STREAM),
            handler=_status,
        ),
        Command(
            "exporter",
            "serve /metrics and /healthz for Prometheus from the bus and the writers' stats",
            "Serve Prometheus metrics (/metrics) and a health check (/healthz) on the "
            "--server http-address (default 127.0.0.1:3366), from the stats. topic and the "
            "writers' stats files. Runs as the tracecap user; supervisord starts it when "
            "--server metrics or --server healthz is given.",
            (CONFIG, RUN_DIR),
            options=True,
            handler=_exporter,
        ),
        Command(
            "report",
            "one self-contained HTML page of a capture: processes, timeline, artifacts, losses",
            "Read OUT_DIR's index.jsonl, events.jsonl and pcap files and write one HTML page "
            "that needs nothing else: an overview with the losses and their causes, the "
            "process tree, a timeline to zoom in, and tables of the files, binaries, memory "
            "regions, modules, BPF programs and network flows, each linked to its artifact. "
            "Every capture string is escaped and the page's Content-Security-Policy forbids "
            "network access. Needs only read access to OUT_DIR.",
            (REPORT_FILE,),
            operand=REPORT_DIR,
            handler=_report,
        ),
    )
}

SHARED = usage.Shared(
    options.OPTIONS,
    (("capture forms (--capture)", options.CAPTURE_HELP),
     ("scope expressions (--scope)", options.SCOPE_HELP)),
)  # fmt: skip

USAGE = usage.overview(
    tuple(COMMANDS.values()),
    SHARED,
    (
        f"writer kinds: {WRITER_KINDS}",
        "capture options (run, collector, writer): tracecap help run lists the capture forms "
        "and scope expressions; man 8 tracecap tells it all.",
    ),
)

PAGE = usage.Page(
    __version__,
    "tracecap - capture the artifacts of running Linux programs with eBPF",
    (
        "tracecap captures what running programs write and read, the binaries they execute, "
        "memory they make executable, kernel modules, BPF programs and network packets, with "
        "eBPF, the way Aqua Tracee's --capture does. A small privileged collector attaches "
        "CO-RE eBPF programs and publishes msgpack events on a ZeroMQ bus; unprivileged "
        "writers, running as the tracecap user, persist the artifacts under <dir>/out with an "
        "index (index.jsonl); supervisord runs them together.",
        "Every loss is counted and every incomplete artifact says which bytes it lacks. Options "
        "are never silently ignored: anything not understood exits with status 2, naming the "
        "token and what it accepts, before anything is attached.",
    ),
    (
        (
            "files",
            (
                ("/etc/tracecap/tracecap.conf", "The capture options of the static deployment "
                 "and of tracecap.service (installed from conf/tracecap.conf by make setup)."),
                ("/etc/tracecap/supervisord.conf", "The supervisord configuration "
                 "tracecap.service runs."),
                ("/etc/systemd/system/tracecap.service", "The systemd unit (make setup "
                 "installs it where systemd is)."),
                (f"{options.DEFAULT_DIR}/out", "Artifacts and index.jsonl (the default dir:)."),
                (DEFAULT_RUN_DIR, "The bus socket, supervisord's socket and logs, the writers' "
                 "counters (the default --run-dir)."),
            ),
        ),
        (
            "exit status",
            (
                ("0", "Success (run: stopped by Ctrl-C or SIGTERM, every program well)."),
                ("1", "run: a program of the capture stopped or never got ready (the message "
                 "says which); tap, status: no collector publishing on the bus; report: OUT_DIR "
                 "could not be read or the page written (the message says why)."),
                ("2", "Refused before anything was attached: a bad command line (the message "
                 "names the token and what it accepts), or for run, not root or an output or "
                 "run directory it may not use."),
                ("77", "tap, status: permission denied on the run directory or the bus (run "
                 "as root or a member of group tracecap)."),
            ),
        ),
        (
            "signals",
            (
                ("SIGINT, SIGTERM", "Stop: the collector first, then the writers, which flush "
                 "and index what they hold."),
                ("SIGUSR1", "Print every thread's stack to the process's stderr (the logs "
                 "under the run directory)."),
            ),
        ),
        ("see also", (("", "supervisord(1), systemd.exec(5), tcpdump(8), tshark(1)."),)),
    ),
)  # fmt: skip


def command_help(name: str) -> str:
    return usage.command_help(COMMANDS[name], SHARED)


def man_page() -> str:
    return usage.man_page(tuple(COMMANDS.values()), SHARED, PAGE)


def bash_completion() -> str:
    return usage.bash_completion(tuple(COMMANDS.values()), SHARED)


# --- the console script ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(USAGE, end="", file=sys.stderr)
        return 2
    cmd, rest = args[0], args[1:]
    if cmd in ("-h", "--help") or (cmd == "help" and not rest):
        print(USAGE, end="")
        return 0
    if cmd == "--version":
        print(f"tracecap {__version__}")
        return 0
    # `kill -USR1` makes any tracecap process print every thread's stack to its stderr (the
    # supervisord logs under the run dir): how to see where a process is stuck.
    with contextlib.suppress(OSError, ValueError):  # no stderr file (embedded, under a test)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        return _dispatch(cmd, rest)
    except (options.OptionError, UsageError) as exc:
        print(f"tracecap {cmd}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(cmd: str, rest: list[str]) -> int:
    if cmd == "help":
        if len(rest) != 1 or rest[0] not in COMMANDS:
            raise UsageError(f"help takes one command of: {', '.join(COMMANDS)}")
        print(command_help(rest[0]), end="")
        return 0
    command = COMMANDS.get(cmd)
    if command is None or command.handler is None:
        raise UsageError(f"unknown command {cmd!r}; commands: {', '.join(COMMANDS)}")
    if "--help" in rest or "-h" in rest:
        print(command_help(cmd), end="")
        return 0
    found, rest = split_own(rest, command.own_flags(), command.switches())
    if rest and not command.options and command.operand is None:
        raise UsageError(f"{cmd} takes no option {rest[0]!r}")
    for flag in command.flags:
        if flag.required and flag.names[0] not in found:
            raise UsageError(f"{cmd} needs {flag.names[0]}")
    follow_supervisor()  # the collector, writers, bridge, exporter: none outlives supervisord
    return command.handler(found, rest)


if __name__ == "__main__":
    sys.exit(main())

"""The `tracecap` command: run | collector | writer KIND | bridge | keys | tap | status.

Each subcommand takes the capture options of `tracecap run` (so that supervisord can hand the
same options to every process) plus a few of its own, which are split off here before the
pure option parser sees the rest.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import socket
import sys
from collections import Counter
from collections.abc import Callable, Sequence

from tracecap import kinds, options
from tracecap.frontend import supervisor_conf

COMMANDS = ("run", "collector", "writer", "bridge", "keys", "tap", "status", "exporter")
WRITER_KINDS = ", ".join(kinds.BY_NAME)

USAGE = f"""\
usage: tracecap run [--capture OPT]... [--scope EXPR]... [--events NAME,...] [--output json|none]
                    [--config FILE] [--run-dir DIR] [--ring-mb N]
       tracecap collector [same options] [--wait-for TOPIC[=N]]... [--ring-mb N]
       tracecap writer KIND [same options] [--connect ENDPOINT]
                    [--server-key DIR/server.key --client-key DIR/NAME.key_secret]  (tcp://)
       tracecap bridge --listen tcp://ADDR:PORT --server-key DIR/server.key_secret
                    --allow DIR_OF_CLIENT_PUBLIC_KEYS [--run-dir DIR]
       tracecap keys DIR [--name NAME]
       tracecap tap [--topic PREFIX]... [--run-dir DIR | --connect ENDPOINT]
       tracecap status [--run-dir DIR]
       tracecap exporter [same options] --server metrics|healthz|http-address=HOST:PORT...

writer kinds: {WRITER_KINDS}
capture options (repeatable):
  write[=/p*|:path=/p*|:type=regular|pipe|socket|elf|:fd=stdin|stdout|stderr], read[...],
  {options.WORD_KINDS}, pcap:single,process,container,command,
  pcap-options:filtered|none, pcap-snaplen:default|headers|max|<N>b|<N>kb, net=<iface>,
  dir:/path, clear-dir, limit:<N>mb|gb
scope (repeatable, all must hold): comm=a,b  comm!=x  pid=N,M  uid=N  follow  container  host
older forms: --trace for --scope (--trace event=NAME for --events), --output format:json,
  --output option:parse-arguments, --output option:detect-syscall
"""

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


def split_own(argv: Sequence[str], own: dict[str, bool]) -> tuple[dict[str, list[str]], list[str]]:
    """Separate a subcommand's own flags (``--flag VALUE`` or ``--flag=VALUE``) from the rest.

    ``own`` maps each flag to whether it is repeatable. Returns ({flag: [values]}, rest).
    """
    found: dict[str, list[str]] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in own:
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


def ring_mb_of(found: dict[str, list[str]]) -> int:
    return options.parse_ring_mb(found.get("--ring-mb", [str(options.DEFAULT_RING_MB)])[0])


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


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
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
    if cmd == "run":
        found, rest = split_own(rest, {"--config": True, "--run-dir": False, "--ring-mb": False})
        argv = expand_config(found, rest)
        config = _config(argv)
        run_dir, ring_mb = run_dir_of(found), ring_mb_of(found)
        check_interfaces(config)
        from tracecap.frontend.supervise import run

        return run(config, argv, run_dir, ring_mb)
    if cmd == "collector":
        found, rest = split_own(
            rest, {"--config": True, "--run-dir": False, "--wait-for": True, "--ring-mb": False}
        )
        config = _config(expand_config(found, rest))
        wait = parse_wait_for(found.get("--wait-for", []))
        ring_mb = ring_mb_of(found)
        from collector.service import run_collector

        run_dir = run_dir_of(found)
        return run_collector(config, run_dir, wait, ring_mb << 20)
    if cmd == "writer":
        if not rest or rest[0].startswith("-"):
            raise UsageError(f"writer needs a KIND ({WRITER_KINDS})")
        kind, rest = rest[0], rest[1:]
        found, rest = split_own(
            rest,
            {
                "--config": True,
                "--run-dir": False,
                "--connect": False,
                "--server-key": False,
                "--client-key": False,
            },
        )
        config = _config(expand_config(found, rest))
        run_dir = run_dir_of(found)
        endpoint = found.get("--connect", [f"ipc://{run_dir}/bus.sock"])[0]
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
        from writers.runner import run_writer

        writer_options = {"split": tuple(sorted(config.pcap.split))} if kind == "pcap" else None
        try:
            return run_writer(
                kind,
                config.out_dir,
                endpoint,
                f"{run_dir}/stats",
                options=writer_options,
                curve_keys=curve_keys,
                limit_bytes=config.limit_bytes,
            )
        except KeyFileError as exc:
            raise UsageError(str(exc)) from None
    if cmd == "bridge":
        found, rest = split_own(
            rest,
            {"--listen": False, "--server-key": False, "--allow": False, "--run-dir": False},
        )
        if rest:
            raise UsageError(f"bridge takes no option {rest[0]!r}")
        for flag in ("--listen", "--server-key", "--allow"):
            if flag not in found:
                raise UsageError(f"bridge needs {flag}")
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
    if cmd == "keys":
        found, rest = split_own(rest, {"--name": False})
        if len(rest) != 1 or rest[0].startswith("-"):
            raise UsageError("keys needs one DIR (and optionally --name NAME)")
        from tracecap.keys import KeyFileError, keys_command

        try:
            return keys_command(rest[0], found.get("--name", [None])[0])
        except KeyFileError as exc:
            raise UsageError(str(exc)) from None
    if cmd == "tap":
        found, rest = split_own(rest, {"--topic": True, "--run-dir": False, "--connect": False})
        if rest:
            raise UsageError(f"tap takes no option {rest[0]!r}")
        run_dir = run_dir_of(found)
        endpoint = found.get("--connect", [f"ipc://{run_dir}/bus.sock"])[0]
        from tracecap.tools.tap import tap

        return tap(endpoint, [t.encode() for t in found.get("--topic", [""])])
    if cmd == "status":
        found, rest = split_own(rest, {"--run-dir": False})
        if rest:
            raise UsageError(f"status takes no option {rest[0]!r}")
        from tracecap.tools.status import status

        return status(run_dir_of(found))
    if cmd == "exporter":
        found, rest = split_own(rest, {"--config": True, "--run-dir": False})
        config = _config(expand_config(found, rest))
        if not config.server.enabled:
            raise UsageError("exporter needs --server metrics or --server healthz")
        from tracecap.tools.exporter import run_exporter

        return run_exporter(config, run_dir_of(found))
    raise UsageError(f"unknown command {cmd!r}; commands: {', '.join(COMMANDS)}")


if __name__ == "__main__":
    sys.exit(main())

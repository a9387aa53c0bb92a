"""Connecting to NATS, with the options named as the `nats` CLI names them.

``--nats nats://HOST:PORT[,...]`` (the servers, tried in turn), ``--creds FILE`` (a user
credentials file: JWT and nkey seed), ``--nkey FILE`` (an nkey seed file), ``--tlscert``,
``--tlskey``, ``--tlsca`` (client certificate, its key, the CA that signed the servers'). One
source of truth for the bridge, the remote writers and ``tracecap status --nats``.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

#: Reconnect forever, every RECONNECT_WAIT_S: a capture host outlives any NATS outage.
RECONNECT_WAIT_S = 0.5
CONNECT_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class NatsOptions:
    """Where and how to connect."""

    servers: tuple[str, ...]
    creds: str | None = None
    nkey: str | None = None
    tlscert: str | None = None
    tlskey: str | None = None
    tlsca: str | None = None


def parse_servers(value: str) -> tuple[str, ...]:
    """``nats://a:4222,nats://b:4222`` as a tuple; ValueError on anything else."""
    servers = tuple(s.strip() for s in value.split(",") if s.strip())
    if not servers:
        raise ValueError("--nats needs at least one nats://HOST:PORT")
    for server in servers:
        if not server.startswith(("nats://", "tls://")) or "@" in server:
            raise ValueError(
                f"--nats {server!r}: expected nats://HOST:PORT or tls://HOST:PORT "
                "(credentials go in --creds or --nkey, never in the URL)"
            )
    return servers


def options_from(found: dict[str, list[str]]) -> NatsOptions:
    """The options given on a command line (the flags ``FLAGS`` names)."""

    def one(flag: str) -> str | None:
        return found.get(flag, [None])[0]

    tlscert, tlskey = one("--tlscert"), one("--tlskey")
    if (tlscert is None) != (tlskey is None):
        raise ValueError("--tlscert and --tlskey go together")
    if one("--creds") and one("--nkey"):
        raise ValueError("--creds and --nkey are two ways of signing in: give one")
    return NatsOptions(
        servers=parse_servers(found["--nats"][0]),
        creds=one("--creds"),
        nkey=one("--nkey"),
        tlscert=tlscert,
        tlskey=tlskey,
        tlsca=one("--tlsca"),
    )


def _tls(options: NatsOptions) -> ssl.SSLContext | None:
    if not (
        options.tlsca or options.tlscert or any(s.startswith("tls://") for s in options.servers)
    ):
        return None
    context = ssl.create_default_context(cafile=options.tlsca)
    if options.tlscert and options.tlskey:
        context.load_cert_chain(options.tlscert, options.tlskey)
    return context


async def connect(
    options: NatsOptions,
    name: str,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    log: Callable[[str], None] = lambda _line: None,
    reconnect: bool = True,
) -> Any:
    """A connected ``nats.aio.client.Client`` that reconnects forever (``reconnect``)."""
    import nats

    async def error_cb(exc: Exception) -> None:
        log(f"nats: {exc.__class__.__name__}: {exc}")

    kwargs: dict[str, Any] = {
        "servers": list(options.servers),
        "name": name,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "reconnect_time_wait": RECONNECT_WAIT_S,
        "max_reconnect_attempts": -1 if reconnect else 0,
        "allow_reconnect": reconnect,
        "error_cb": error_cb,
        # what publish() buffers while disconnected: the spool holds the rest, counted
        "pending_size": 64 << 20,
    }
    if on_disconnect is not None:
        kwargs["disconnected_cb"] = on_disconnect
    if on_reconnect is not None:
        kwargs["reconnected_cb"] = on_reconnect
    if options.creds:
        kwargs["user_credentials"] = options.creds
    if options.nkey:
        kwargs["nkeys_seed"] = options.nkey
    tls = _tls(options)
    if tls is not None:
        kwargs["tls"] = tls
    return await nats.connect(**kwargs)


def run_until_signalled(
    body: Callable[[asyncio.Event], Awaitable[int]], stop: threading.Event | None = None
) -> int:
    """Run ``body(done)`` in a new event loop; ``done`` is set by SIGTERM/SIGINT (when called
    from the main thread, where asyncio can take signals) or once ``stop`` is set (tests)."""

    async def main() -> int:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, done.set)
        if stop is not None:
            loop.run_in_executor(None, lambda: (stop.wait(), loop.call_soon_threadsafe(done.set)))
        return await body(done)

    return asyncio.run(main())

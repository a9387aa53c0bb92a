"""Container names, images and pods on the bus envelope, looked up off the hot path.

The collector's loop drains ring buffers; a runtime's API answers in milliseconds, or never
(a hung daemon). So the loop only reads a cache (:meth:`ContainerEnricher.keys`, a dict
lookup) and queues ids it has not seen; one thread asks the runtimes (collector/runtimes.py;
containerd's task bundles, collector/containerd_bundles.py) with timeouts and fills the
cache. At start that thread asks for the containers already running, and a thread per
runtime with an event stream (Docker, Podman) follows it and queues each container as it is
created (before its first process starts), so events carry names from the first. A
container no stream announced (containerd's, or the stream was broken, the runtime
restarted) is asked at its first event: that event and those of the next few milliseconds
go out with its id only.

The cache is bounded (entries past ``cache_size`` are evicted oldest first, then asked again
when seen again); an id no runtime knows is asked again at most every ``retry_s``, so a
runtime that is not asked (CRI-O) costs one lookup per container per ``retry_s``, in the
thread.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from collector.containerd_bundles import CONTAINERD_STATE_DIRS, ContainerdBundles
from collector.runtimes import (
    RUNTIME_SOCKETS,
    LookupFailed,
    PodmanClient,
    RuntimeClient,
    bus_keys,
)

__all__ = ["ContainerEnricher", "default_clients"]

CACHE_SIZE = 4096
QUEUE_SIZE = 1024
RETRY_S = 10.0
#: How often a runtime's event stream is tried again while it cannot be followed.
FOLLOW_RETRY_S = 5.0
_EMPTY: dict[str, str] = {}
_STOP = ""


#: Who is asked: a runtime's API socket, or containerd's bundles (the same methods).
Client = RuntimeClient | ContainerdBundles
#: The client for each runtime's socket (Podman's also asks its own API for pods).
_CLIENTS = {"podman": PodmanClient}


def default_clients() -> list[Client]:
    """Docker's and Podman's sockets, then containerd's bundles (a Docker container is in
    containerd too, when dockerd uses the system's containerd: Docker names it better)."""
    sockets = [_CLIENTS.get(rt, RuntimeClient)(rt, path) for rt, path in RUNTIME_SOCKETS]
    return [*sockets, *(ContainerdBundles(d) for d in CONTAINERD_STATE_DIRS)]


@dataclass(frozen=True)
class _Entry:
    keys: dict[str, str]
    #: monotonic time after which an id no runtime knew is asked again (inf for a hit)
    retry_at: float


class ContainerEnricher:
    """Bus keys per container id, from the runtimes' APIs (see the module docstring).

    ``keys`` is called from the collector's loop only; the cache is written by the lookup
    thread only (dict operations are atomic under the GIL, so the reader takes no lock).
    """

    def __init__(
        self,
        clients: Sequence[Client] | None = None,
        *,
        cache_size: int = CACHE_SIZE,
        queue_size: int = QUEUE_SIZE,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = list(default_clients() if clients is None else clients)
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._cache_size = cache_size
        self._queue: queue.Queue[str] = queue.Queue(queue_size)
        self._pending: set[str] = set()
        self._retry_s = retry_s
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._followers: list[threading.Thread] = []
        self._stopping = threading.Event()
        #: lookups (ids asked), found, not_found (no runtime knew it), errors, queue_full,
        #: evicted; errors per reason in ``errors``
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.last_error = ""

    # -- the collector's loop ------------------------------------------------------------------

    def keys(self, container_id: str) -> dict[str, str]:
        """The envelope keys known for ``container_id`` now (maybe none); never blocks."""
        entry = self._cache.get(container_id)
        if entry is not None and self._clock() < entry.retry_at:
            return entry.keys
        if self._thread is not None:
            self._ask(container_id)
        return entry.keys if entry is not None else _EMPTY

    def stats(self) -> dict[str, int]:
        """Flat counters for the collector's ``stats.`` message."""
        names = ("lookups", "found", "not_found", "errors", "queue_full", "evicted")
        return {f"container_{name}": self.counters[name] for name in names}

    # -- the lookup thread ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the lookup thread; it first learns the containers running now."""
        if self._thread is not None or not self._clients:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="container-lookups", daemon=True)
        self._thread.start()
        for client in self._clients:
            if not client.follows:
                continue
            follower = threading.Thread(
                target=self._follow, args=(client,), name=f"{client.runtime}-events", daemon=True
            )
            follower.start()
            self._followers.append(follower)

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the thread to end (a lookup in progress ends by its timeout at the latest; the
        thread is a daemon, so a hung runtime never holds the collector's exit)."""
        if self._thread is None:
            return
        self._stopping.set()
        for client in self._clients:
            client.stop_following()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)
        self._thread.join(timeout)
        self._thread = None
        self._followers.clear()

    def _follow(self, client: Client) -> None:
        """Learn containers as the runtime creates them (its event stream), so that even their
        first process's events carry names; reconnect every FOLLOW_RETRY_S while the socket is
        missing or the stream breaks (the runtime restarted)."""
        while not self._stopping.is_set():
            why = client.available()
            if why is None:
                try:
                    client.created(self._ask, self._stopping.is_set)
                except LookupFailed as exc:
                    if not self._stopping.is_set():
                        self._failed(exc)
            elif why:
                self._failed(LookupFailed("untrusted_socket", why))
            self._stopping.wait(FOLLOW_RETRY_S)

    def _ask(self, container_id: str) -> None:
        """Queue a lookup of ``container_id`` unless one is pending (from the loop's ``keys`` and
        the follower threads)."""
        if container_id in self._pending:
            return
        self._pending.add(container_id)
        try:
            self._queue.put_nowait(container_id)
        except queue.Full:
            self._pending.discard(container_id)
            self.counters["queue_full"] += 1

    def _run(self) -> None:
        self.prefetch()
        while True:
            container_id = self._queue.get()
            if container_id == _STOP:
                return
            try:
                self.lookup(container_id)
            finally:
                self._pending.discard(container_id)

    def prefetch(self) -> None:
        """Look up every container the runtimes say is running."""
        for client in self._clients:
            if client.available() is not None:
                continue
            try:
                ids = client.running()
            except LookupFailed as exc:
                self._failed(exc)
                continue
            for container_id in ids[: self._cache_size]:
                if container_id not in self._cache:
                    self.lookup(container_id)

    def lookup(self, container_id: str) -> None:
        """Ask each runtime with a trusted socket, in order, until one knows the container;
        store the answer (or that none knew it)."""
        self.counters["lookups"] += 1
        for client in self._clients:
            why = client.available()
            if why is not None:
                if why:  # there, but not trusted: counted, never asked
                    self._failed(LookupFailed("untrusted_socket", why))
                continue
            try:
                info = client.inspect(container_id)
                if info is None:
                    continue
            except LookupFailed as exc:
                self._failed(exc)
                continue
            try:
                digest = client.image_digest(info.image_id)
                if digest:
                    info = replace(info, image_digest=digest)
            except LookupFailed as exc:  # the container's answer still stands
                self._failed(exc)
            self.counters["found"] += 1
            # a container its runtime knows is not asked again, even when it names nothing
            # (a `ctr run` container without labels): its spec and labels do not change
            self._store(container_id, _Entry(bus_keys(info), math.inf))
            return
        self.counters["not_found"] += 1
        self._store(container_id, _Entry(_EMPTY, self._clock() + self._retry_s))

    def _failed(self, exc: LookupFailed) -> None:
        self.counters["errors"] += 1
        self.errors[exc.reason] += 1
        self.last_error = str(exc)

    def _store(self, container_id: str, entry: _Entry) -> None:
        self._cache[container_id] = entry
        self._cache.move_to_end(container_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
            self.counters["evicted"] += 1

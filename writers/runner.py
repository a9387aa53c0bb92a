"""Running one writer process: build the writer, drop root, subscribe, stop on a signal."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import signal
import threading
from collections.abc import Mapping
from inspect import Parameter, Signature
from typing import Any

from tracecap import keys, kinds
from tracecap.privileges import drop_privileges
from tracecap.rotation import Rotation
from writers.base import Subscriber, Writer
from writers.budget import DEFAULT_FLOOR_BYTES, DiskBudget
from writers.index import Index
from writers.outdir import OutputDir


class OutputDirRefused(ValueError):
    """The output directory cannot be opened as the writer's user: a restart cannot fix it."""


def writer_class(path: str) -> type[Writer]:
    """The class a registry entry names as ``module:Class``.

    The registry names writers by string so that the contract never imports them.
    """
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Writer)):
        raise TypeError(f"{path} is not a Writer class")
    return cls


class WriterFactory:
    """Builds one kind's writer from the open output directory and its index, the kind's options
    (``Kind.writer_options``) as keyword arguments, and the process's disk budget (None:
    unlimited, as in unit tests of a kind).

    Its signature names exactly those, so a caller can check options before anything starts.

    The class's module is imported on first use: a writer process runs one kind, and the
    others' modules (the pcap writer's dpkt among them) cost 0.1-0.2 s of its start
    (python -X importtime), which the collector's readiness waits for on a 2-core host.
    """

    def __init__(self, kind: kinds.Kind) -> None:
        self._kind = kind

    @functools.cached_property
    def cls(self) -> type[Writer]:
        return writer_class(self._kind.writer)

    @functools.cached_property
    def __signature__(self) -> Signature:
        own = inspect.signature(self.cls).parameters
        return Signature(
            [
                Parameter("out", Parameter.POSITIONAL_OR_KEYWORD),
                Parameter("index", Parameter.POSITIONAL_OR_KEYWORD),
                *(
                    own[name].replace(kind=Parameter.KEYWORD_ONLY)
                    for name in self._kind.writer_options
                ),
                Parameter("budget", Parameter.KEYWORD_ONLY, default=None),
            ]
        )

    def __call__(
        self, out: OutputDir, index: Index, *, budget: DiskBudget | None = None, **options: Any
    ) -> Writer:
        self.__signature__.bind(out, index, budget=budget, **options)  # TypeError if not its own
        return self.cls(out, index, budget=budget, **options)


#: Writer kinds by name, from the registry.
WRITER_KINDS: dict[str, WriterFactory] = {kind.name: WriterFactory(kind) for kind in kinds.KINDS}


def run_writer(
    kind: str,
    out_dir: str,
    endpoint: str,
    stats_dir: str | None,
    stop: threading.Event | None = None,
    drop_to: str | None = "tracecap",
    options: Mapping[str, Any] | None = None,
    curve_keys: tuple[str, str] | None = None,
    limit_bytes: int | None = None,
    floor_bytes: int = DEFAULT_FLOOR_BYTES,
    index_rotation: Rotation | None = None,
) -> int:
    """Run the ``kind`` writer until SIGTERM/SIGINT (or ``stop``), flush it, return 0.

    Privileges go first, before the output directory is opened, so every artifact is created by
    (and owned by) the unprivileged user. Signal handlers only set ``stop``: the loop notices
    within one poll period and the writer flushes on the normal path. ``options`` are the kind's
    own settings (pcap: ``split``, the set of ``--capture pcap:`` modes), checked against the
    factory's parameters before anything happens, so a wrong one is an error, not a crash later.
    ``curve_keys`` (server public key file, client secret key file) make the SUB socket a CURVE
    client, for a tcp endpoint served by `tracecap bridge`; they are read after the drop, as the
    unprivileged user (keys.KeyFileError if that user cannot read them or they are unsafe).
    ``limit_bytes`` (``--capture limit:``) and ``floor_bytes`` make the disk budget every write of
    artifact data asks first; each writer process measures the shared output tree itself.
    ``index_rotation`` (``--capture index-rotate:``) rotates ``index.jsonl``; every writer of a
    run is given the same, since whichever appends past the size rotates it.
    """
    factory = WRITER_KINDS.get(kind)
    if factory is None:
        raise ValueError(f"unknown writer kind {kind!r}; known kinds: {', '.join(WRITER_KINDS)}")
    options = dict(options or {})
    try:
        inspect.signature(factory).bind(None, None, budget=None, **options)
    except TypeError:
        raise ValueError(f"writer kind {kind!r} takes no option among {sorted(options)}") from None
    if drop_to is not None:
        drop_privileges(drop_to)
    curve = keys.load_client(*curve_keys) if curve_keys is not None else None
    stop = stop or threading.Event()
    try:
        out = OutputDir(out_dir)
    except OSError as exc:  # UnsafePath included: a planted link stays planted
        raise OutputDirRefused(
            f"the {kind} writer (uid {os.geteuid()}) cannot open the output directory "
            f"{out_dir}: {exc.strerror or exc}"
        ) from None
    try:
        index = Index(out, rotation=index_rotation)
        try:
            budget = DiskBudget(out.root_fd, limit_bytes, floor_bytes, index=index, name=kind)
            writer = factory(out, index, budget=budget, **options)
            wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                subscriber = Subscriber(
                    writer,
                    endpoint,
                    index=index,
                    stats_dir=stats_dir,
                    name=kind,
                    curve=curve,
                    wake_fd=wake_r,
                )
                previous = _install_signals(stop, wake_w)
                try:
                    subscriber.run(stop)
                finally:
                    _restore_signals(previous)
            finally:
                os.close(wake_r)
                os.close(wake_w)
        finally:
            index.close()
    finally:
        out.close()
    return 0


_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: The key under which ``_install_signals`` keeps the previous wakeup fd (no signal is 0).
_WAKEUP = 0


def _install_signals(stop: threading.Event, wake_fd: int | None = None) -> dict[int, object]:
    """Route SIGTERM/SIGINT to ``stop``; only possible (and only wanted) in the main thread.
    With ``wake_fd`` (the writers' bus link polls it), the signal's arrival also writes a byte
    there (``signal.set_wakeup_fd``, from the C handler), which ends the wait for messages at
    once: the Python handler alone would run only after it (pyzmq polls again after a signal,
    up to POLL_MS, measured 100-230 ms). The shipper waits on ``stop`` itself: no fd."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, object] = {}
    for signum in _SIGNALS:
        previous[signum] = signal.signal(signum, lambda _signum, _frame: stop.set())
    if wake_fd is not None:
        previous[_WAKEUP] = signal.set_wakeup_fd(wake_fd, warn_on_full_buffer=False)
    return previous


def _restore_signals(previous: dict[int, object]) -> None:
    wakeup = previous.pop(_WAKEUP, None)
    if isinstance(wakeup, int):
        signal.set_wakeup_fd(wakeup)
    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]

"""A writer's journal of open artifacts: how a restarted writer learns what its killed
predecessor left half-written.

An artifact is *open* from the first byte of data a writer puts into it until its index line is
written. Before that first byte, the writer appends the artifact's state (its index record so
far, the byte ranges known to be in the file, how far its coordinates reach) to
``.journal.<writer>`` in the output root; while it writes, it appends newer states (each one
only after the writes it describes returned); once the index line is written it appends a
``closed`` entry. A writer that dies (SIGKILL, OOM, a crash) leaves its open artifacts without
``closed``: its successor replays the journal and reports each of them with everything not
known to be written listed as missing. Bytes written after the last state entry are then
listed missing although they may be on disk: the journal errs toward "not captured", never
toward "captured".

The journal is rewritten (a temporary file renamed over it, in the output root, never following
a symlink) when it grows past ``compact_bytes``, so it holds about the open artifacts only.
Encoding and replay are pure; ``Journal`` is the I/O.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterable
from typing import Any

from writers.index import encode_record, parse_line
from writers.outdir import OutputDir, check_component, open_regular

#: Rewrite the journal once it is this large (it then holds only the open artifacts' states).
COMPACT_BYTES = 4 << 20
#: The most of an existing journal read at start; beyond it states are lost (counted).
MAX_READ_BYTES = 256 << 20
#: Longest journal line considered (a state carries an index record: pids, missing ranges).
MAX_LINE = 4 << 20

State = dict[str, Any]
WriteFn = Callable[[int, bytes], int]


def journal_name(writer: str) -> str:
    name = f".journal.{writer}"
    check_component(name)
    return name


def encode_state(path: str, state: State) -> bytes:
    """The line saying ``path`` is open with ``state`` (a JSON object)."""
    return encode_record({"op": "open", "path": path, "state": state})


def encode_closed(path: str) -> bytes:
    """The line saying ``path``'s index line is written: nothing of it is open any more."""
    return encode_record({"op": "closed", "path": path})


def replay(lines: Iterable[bytes]) -> tuple[dict[str, State], int]:
    """The artifacts a journal leaves open, each with its latest state, and how many lines
    could not be read (torn by a crash mid-write, or tampered with). Order is kept: the
    earliest opened first."""
    open_: dict[str, State] = {}
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        entry = parse_line(line)
        path = entry.get("path") if entry is not None else None
        if not isinstance(path, str):
            bad += 1
            continue
        if entry.get("op") == "closed":
            open_.pop(path, None)
        elif entry.get("op") == "open" and isinstance(entry.get("state"), dict):
            open_[path] = entry["state"]
        else:
            bad += 1
    return open_, bad


def split_lines(data: bytes, max_line: int = MAX_LINE) -> list[bytes]:
    """Lines of a journal read whole. An overlong line (never written by us) becomes one that
    ``replay`` counts as bad; a last line without its newline is kept (replay judges it)."""
    return [line if len(line) <= max_line else b"?" for line in data.split(b"\n")]


class Journal:
    """``.journal.<writer>`` in the output root, appended one whole line per ``write``.

    ``write`` is injectable for tests. A line that cannot be written is reported False, for
    the caller to count; it goes on (the data still matters more than the journal). The file
    is held under an exclusive ``flock``: a second live writer of the same kind on the same
    output tree gets OSError (EBUSY) instead of taking over the first one's open artifacts.
    """

    def __init__(
        self,
        out: OutputDir,
        writer: str,
        *,
        write: WriteFn = os.write,
        compact_bytes: int = COMPACT_BYTES,
    ) -> None:
        self._out = out
        self.name = journal_name(writer)
        self._tmp = f"{self.name}.tmp"
        self._write = write
        self._compact_bytes = compact_bytes
        self._fd = self._locked(open_regular(self.name, os.O_RDWR | os.O_APPEND, out.root_fd))
        #: Lines of the journal found at start that could not be read (torn, tampered).
        self.bad_lines = 0

    def _locked(self, fd: int) -> int:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                raise OSError(errno.EBUSY, f"{self.name} is held by another process") from None
            raise
        return fd

    def load(self) -> dict[str, State]:
        """What the previous process of this writer left open (read once, at start)."""
        size = os.fstat(self._fd).st_size
        data = os.pread(self._fd, min(size, MAX_READ_BYTES), 0)
        if size > MAX_READ_BYTES:
            self.bad_lines += 1
        states, bad = replay(split_lines(data))
        self.bad_lines += bad
        return states

    def _append(self, data: bytes) -> bool:
        try:
            written = self._write(self._fd, data)
        except OSError:
            return False
        if written != len(data):
            # a torn line is counted bad at replay; a newline lets the next start on its own
            with contextlib.suppress(OSError):
                self._write(self._fd, b"\n")
            return False
        return True

    def opened(self, path: str, state: State) -> bool:
        """``path`` is (still) open with ``state``: call before writing the bytes that are not
        in ``state``, and again after writes so a successor knows they are there."""
        return self._append(encode_state(path, state))

    def closed(self, *paths: str) -> bool:
        """The index lines of ``paths`` are written (one append for them all)."""
        return self._append(b"".join(encode_closed(path) for path in paths))

    def wants_compaction(self) -> bool:
        return os.fstat(self._fd).st_size >= self._compact_bytes

    def compact(self, states: dict[str, State]) -> bool:
        """Replace the journal by one holding only ``states`` (the artifacts open now): a
        temporary file in the output root renamed over it, so a crash leaves one or the
        other, never half of each. False when it could not be done; the old journal then stays
        and is still right."""
        root = self._out.root_fd
        try:
            fd = self._locked(open_regular(self._tmp, os.O_RDWR | os.O_APPEND | os.O_TRUNC, root))
        except OSError:
            return False
        try:
            for path, state in states.items():
                data = encode_state(path, state)
                if self._write(fd, data) != len(data):
                    raise OSError("short journal write")
            os.replace(self._tmp, self.name, src_dir_fd=root, dst_dir_fd=root)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._tmp, dir_fd=root)
            return False
        os.close(self._fd)
        self._fd = fd
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

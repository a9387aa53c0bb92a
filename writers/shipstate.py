"""What the shipper has stored, kept across restarts in ``out/.ship-state.jsonl``.

An append-only journal of JSON lines, replayed at start:

- ``{"index": ID, "number": N}``: following the index from its file N (a rotated index's
  oldest segment, or the live file; 1 when absent) from its start; ID is that file's inode. A
  later one starts over (``clear-dir`` replaced the index), keeping what was shipped.
- ``{"follow": N, "id": ID}``: file N-1 was read and its lines all went up as index objects;
  following file N (ID: its inode, with ``-NNNNNN`` for N > 1, names its index objects).
- ``{"shipped": PATH, "sha256": S}``: that content of that artifact is in the store; shipping
  it again would be a duplicate.
- ``{"deleted": PATH}``: its local copy was removed once stored (``--delete-after-upload``);
  a later version of it is a new artifact and goes up under another key.
- ``{"resolved": P}``: every index line before position P is dealt with (shipped, superseded,
  gone or refused), so a restart reads the index from P. A position is ``(N - 1) << 40 | byte``
  (``position``): byte offsets of file 1 as they are, and later files after every earlier one.
- ``{"chunk": [A, B]}`` then ``{"chunk_done": B}``: the index lines in bytes ``[A, B)`` of the
  file followed are going up as one object, then are up. A chunk begun and not done is sent
  again with the same bounds (the same key), so no index line is ever stored twice.

A torn last line (a crash mid-append) is ignored. Past ``COMPACT_BYTES`` the journal is rewritten
as the state it describes (a new file renamed over the old one).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from writers.index import parse_line
from writers.outdir import FILE_MODE, open_regular

STATE_NAME = ".ship-state.jsonl"
#: A position's byte offset within its index file takes the low bits (a segment of 1 TiB).
OFFSET_BITS = 40
#: Rewrite the journal when it grows past this (a compact state line per artifact shipped).
COMPACT_BYTES = 4 << 20
#: Longest journal read at start.
MAX_STATE_BYTES = 256 << 20


@dataclass
class ShipState:
    """The replayed journal."""

    index_id: str | None = None
    #: The index file followed: its segment number once closed (README "Rotation").
    number: int = 1
    resolved: int = 0
    chunk_done: int = 0
    #: A chunk begun and not known to be stored: (start, end).
    chunk_open: tuple[int, int] | None = None
    shipped: dict[str, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    #: Lines that were not JSON objects (a torn tail), skipped.
    bad_lines: int = 0

    def apply(self, entry: dict[str, Any]) -> None:
        """One journal entry; an entry of unknown shape is ignored (counted by ``replay``)."""
        if "index" in entry:
            number = int(entry.get("number", 1))
            if (entry["index"], number) != (self.index_id, self.number):
                self.index_id, self.number = str(entry["index"]), number
                self.resolved = position(number, 0)
                self.chunk_done = 0
                self.chunk_open = None
        elif "follow" in entry:
            self.number, self.index_id = int(entry["follow"]), str(entry["id"])
            self.chunk_done = 0
            self.chunk_open = None
        elif "shipped" in entry:
            sha = entry.get("sha256")
            if sha is None:  # what went up was not what its line said, and was removed
                self.shipped.pop(str(entry["shipped"]), None)
            else:
                self.shipped[str(entry["shipped"])] = str(sha)
        elif "deleted" in entry:
            self.deleted.add(str(entry["deleted"]))
        elif "resolved" in entry:
            self.resolved = max(self.resolved, int(entry["resolved"]))
        elif "chunk" in entry:
            start, end = entry["chunk"]
            self.chunk_open = (int(start), int(end))
        elif "chunk_done" in entry:
            self.chunk_done = max(self.chunk_done, int(entry["chunk_done"]))
            if self.chunk_open is not None and self.chunk_open[1] <= self.chunk_done:
                self.chunk_open = None
        else:
            raise ValueError(f"unknown state entry {entry!r}")

    def entries(self) -> list[dict[str, Any]]:
        """The journal lines that rebuild this state (for compaction)."""
        out: list[dict[str, Any]] = []
        if self.index_id is not None:
            out.append({"index": self.index_id, "number": self.number})
        out += [{"shipped": path, "sha256": sha} for path, sha in sorted(self.shipped.items())]
        out += [{"deleted": path} for path in sorted(self.deleted)]
        out += [{"resolved": self.resolved}, {"chunk_done": self.chunk_done}]
        if self.chunk_open is not None:
            out.append({"chunk": list(self.chunk_open)})
        return out


def position(number: int, offset: int) -> int:
    """Where byte ``offset`` of index file ``number`` is in the journal's order."""
    return (number - 1) << OFFSET_BITS | offset


def split_position(pos: int) -> tuple[int, int]:
    """(number, offset) of a position."""
    return (pos >> OFFSET_BITS) + 1, pos & ((1 << OFFSET_BITS) - 1)


def replay(data: bytes) -> ShipState:
    """The state a journal's bytes describe."""
    state = ShipState()
    for line in data.split(b"\n"):
        if not line:
            continue
        entry = parse_line(line)
        if entry is None:
            state.bad_lines += 1
            continue
        try:
            state.apply(entry)
        except (ValueError, TypeError, KeyError):
            state.bad_lines += 1
    return state


def encode(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, ensure_ascii=True, sort_keys=True) + "\n").encode("ascii")


class StateJournal:
    """The journal file in ``out/`` (opened without following a symlink, as every file there)."""

    def __init__(self, root_fd: int, name: str = STATE_NAME) -> None:
        self._root_fd = root_fd
        self._name = name
        self._fd = open_regular(name, os.O_RDWR | os.O_APPEND, root_fd)
        size = os.fstat(self._fd).st_size
        if size > MAX_STATE_BYTES:
            raise OSError(f"{name} is {size} bytes, more than {MAX_STATE_BYTES}")
        self.state = replay(os.pread(self._fd, size, 0))
        self._size = size
        if size > COMPACT_BYTES:
            self.compact()

    def record(self, entry: dict[str, Any]) -> None:
        """Append and apply one entry. The append is durable before the caller acts on it only
        as far as the page cache is: a crash of the machine can lose the last entries, which
        then ship again under the same keys."""
        data = encode(entry)
        os.write(self._fd, data)
        self._size += len(data)
        self.state.apply(entry)
        if self._size > COMPACT_BYTES:
            self.compact()

    def compact(self) -> None:
        """Rewrite the journal as the current state, atomically (write a temporary, rename)."""
        tmp = f".{self._name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self._root_fd)
        fd = open_regular(tmp, os.O_WRONLY | os.O_EXCL, self._root_fd)
        try:
            data = b"".join(encode(entry) for entry in self.state.entries())
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self._name, src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd)
        os.close(self._fd)
        self._fd = open_regular(self._name, os.O_RDWR | os.O_APPEND, self._root_fd)
        os.fchmod(self._fd, FILE_MODE)
        self._size = len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

"""The writer side of a unit test: a fresh output tree with its index, a writer over it fed
decoded bus messages (no socket), a clock that moves when the test says, and the index read
back. A test file subclasses ``WriterHarness`` only for what its kind adds (how a message is
built from the test's arguments). ``byte_equation`` checks an artifact against what was written
(unit and end-to-end reconciliation tests)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from tests.support.envelopes import message
from tracecap import segments
from writers.base import Writer
from writers.index import INDEX_NAME, Index
from writers.outdir import OutputDir
from writers.ranges import RangeSet

W = TypeVar("W", bound=Writer)


class FakeClock:
    """A monotonic clock that only moves when the test moves ``now``."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def read_index(root: Path, name: str = INDEX_NAME) -> list[dict[str, Any]]:
    """Every line of the index under ``root``, parsed: its rotated segments in order, then the
    live file (tracecap.segments, as the product reads it)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return [json.loads(line) for _, line in segments.iter_lines(fd, name)]
    finally:
        os.close(fd)


class OutputTree:
    """``<tmp>/out`` opened as a writer process opens it, with its index (``index_name``:
    another file, for tests that plant something at the real index's name)."""

    def __init__(self, tmp: Path, index_name: str = INDEX_NAME) -> None:
        self.root = tmp / "out"
        self.out = OutputDir(str(self.root))
        self.index = Index(self.out, name=index_name)
        self._index_name = index_name

    def records(self) -> list[dict[str, Any]]:
        return read_index(self.root, self._index_name)

    def listing(self, subdir: str = "host") -> list[str]:
        return sorted(os.listdir(self.root / subdir))

    def close(self) -> None:
        self.index.close()
        self.out.close()

    def __enter__(self) -> OutputTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WriterHarness(OutputTree, Generic[W]):
    """A writer built by ``make(out, index)`` over a fresh output tree.

    ``send`` hands it one message of its first topic (or ``topic``) as the bus would deliver
    it; ``restart`` closes it and builds another over the same tree, as supervisord restarts a
    writer process; ``close`` closes the writer, then the tree, once.
    """

    def __init__(
        self, tmp: Path, make: Callable[[OutputDir, Index], W], index_name: str = INDEX_NAME
    ) -> None:
        super().__init__(tmp, index_name)
        self._make = make
        self.writer = make(self.out, self.index)
        self.closed = False

    @property
    def topic(self) -> bytes:
        return self.writer.topics[0]

    def send(self, payload: bytes | None, env: dict[str, Any], topic: bytes | None = None) -> None:
        self.writer.handle(message(topic or self.topic, env, payload))

    def restart(self) -> None:
        self.writer.close()
        self.writer = self._make(self.out, self.index)

    def kill(self) -> None:
        """Build another writer over the same tree without closing this one, as supervisord
        restarts a writer killed with SIGKILL (nothing flushed). The kernel would drop a dead
        process's locks: the old writer's journal, if it has one, is closed without a word."""
        journal = getattr(self.writer, "_journal", None)
        if journal is not None:
            journal.close()
        self.writer = self._make(self.out, self.index)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()
            super().close()


def byte_equation(
    wrote: bytes, artifact: bytes, missing: list[list[int]], block: int = 4096
) -> dict[str, int]:
    """Check the index's claim about one artifact against what the workload ``wrote`` (at
    offsets 0..len), block by block: every byte not listed in ``missing`` is in the artifact
    and equal to what was written (so a byte listed present is never a hole). Returns the
    figures: ``wrote`` = ``present`` (correct, not listed missing) + ``listed`` (missing,
    within what was written); AssertionError names the first block that breaks the claim."""
    listed = RangeSet()
    for start, end in missing:
        listed.add(start, min(end, len(wrote)))
    present = 0
    for start in range(0, len(wrote), block):
        end = min(start + block, len(wrote))
        for s, e in listed.holes(start, end):  # the bytes this block claims are present
            assert artifact[s:e] == wrote[s:e], (
                f"bytes {s}..{e} are not listed missing but differ from what was written "
                f"(artifact is {len(artifact)} bytes)"
            )
            present += e - s
    figures = {"wrote": len(wrote), "present": present, "listed": listed.total()}
    assert figures["present"] + figures["listed"] == figures["wrote"], figures
    return figures

"""What the index says about one whole object: the bookkeeping half of the object writer.

Pure: it is told which bytes arrived, which were reported lost and which could not be written,
and answers whether the object is finished, what is missing, what makes it a duplicate, which
names to try for it and what its index record is; it also turns index lines back into dedup
keys. The I/O half (temporary files, fds, renames, reading the index) is ``writers.objects``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import IO, Any

from tracecap.bus import container_fields
from tracecap.text import text_fields
from writers.index import MAX_LINE, parse_line
from writers.ranges import RangeSet

MAX_ERROR_CHARS = 1024
#: ``.1`` ... ``.<n>`` tried when a final name is taken (fits naming.COLLISION_ROOM).
MAX_COLLISIONS = 1000
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMON = ("pid", "tid", "ppid", "uid", "cgroup_id")

Meta = dict[str, Any]
DedupKey = tuple[Any, ...]
ObjectKey = tuple[int, int]  # (epoch, obj_id): unique per collector start


class BadIndexLine(ValueError):
    """An index line that cannot be read back: torn, tampered with, or of this kind and
    complete but without the fields its dedup key is made of."""


def error_text(value: object) -> str:
    """The collector's reason an object could not be read, bounded for the index."""
    if value is None:
        return "unreadable"
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_ERROR_CHARS] or "unreadable"


class ObjectAssembly:
    """What arrived of one object, and what the index will say about it.

    ``received`` holds bytes that reached the temporary file; ``accounted`` also holds bytes the
    collector reported lost or that could not be written, so that an object whose every byte is
    either here or known to be gone can be finished as soon as its ``last`` message is seen, in
    whatever order the messages came.
    """

    def __init__(self, env: Meta, now: float) -> None:
        self.meta: Meta = dict(env)
        #: Keys that only the object's last message carries (what the collector learnt at the
        #: end: ``lost``, a module image's ``from_file``...).
        self.late: Meta = {}
        self.key: ObjectKey = (env["epoch"], env["obj_id"])
        self.obj_len: int = env["obj_len"]
        self.first_ts: int = env["ts"]
        self.last_ts: int = env["ts"]
        self.received = RangeSet()
        self.accounted = RangeSet()
        self.saw_last = False
        #: Why the object could not be read at all (``ok`` false): no artifact, only a record.
        self.error: str | None = None
        #: Why reading stopped early (an ``error`` without ``ok`` false): the missing ranges say
        #: what it cost, this says why.
        self.read_error: str | None = None
        self.last_activity = now

    def observe(self, env: Meta, now: float) -> bool:
        """Note one message; return whether it made the object bigger.

        The size is the largest ``obj_len`` seen: the collector reads a file until EOF, so a
        binary that grows while it is read arrives with a growing ``obj_len``, and taking the
        maximum gives the same result whatever order the messages come in.
        """
        self.first_ts = min(self.first_ts, env["ts"])
        self.last_ts = max(self.last_ts, env["ts"])
        self.last_activity = now
        if env["last"]:
            self.saw_last = True
            self.late = {k: v for k, v in env.items() if k not in self.meta}
        if isinstance(env.get("error"), str) and self.read_error is None:
            self.read_error = error_text(env["error"])
        grown = env["obj_len"] > self.obj_len
        self.obj_len = max(self.obj_len, env["obj_len"])
        return grown

    @staticmethod
    def clip(off: int, length: int, obj_len: int) -> int:
        """How many of ``length`` bytes at ``off`` lie inside an object of ``obj_len`` bytes
        (the message's own ``obj_len``: bytes beyond what it announced are refused)."""
        return max(0, min(off + length, obj_len) - off)

    def wrote(self, start: int, end: int) -> None:
        self.received.add(start, end)
        self.accounted.add(start, end)

    def gone(self, start: int, end: int) -> None:
        """Bytes that will never arrive: reported lost, or not writable here. Not clipped to
        the current size, which may still grow."""
        self.accounted.add(max(0, start), end)

    def fail(self, error: str) -> None:
        self.error = error

    def done(self) -> bool:
        return self.error is not None or (self.saw_last and self.accounted.covers(0, self.obj_len))

    def missing(self) -> list[tuple[int, int]]:
        return self.received.holes(0, self.obj_len)

    def naming_meta(self) -> Meta:
        """The metadata names and index fields are built from: the first message's envelope
        and the keys only the last one carries, with ``ts`` the earliest timestamp of any of
        the object's messages."""
        return {**self.late, **self.meta, "ts": self.first_ts}

    def record(
        self,
        kind: str,
        fields: dict[str, Any],
        path: str | None,
        size: int,
        sha256: str | None,
    ) -> dict[str, Any]:
        """The index line: the kind's own ``fields`` and what every object's record says. An
        object that could not be read at all is missing whole, and ``path`` is then None."""
        if self.error is not None:
            missing = [[0, self.obj_len]] if self.obj_len else []
        else:
            missing = [[s, e] for s, e in self.missing()]
        meta = self.meta
        record = {
            **fields,
            "path": path,
            "kind": kind,
            "size": size,
            "sha256": sha256,
            "complete": self.error is None and not missing,
            "missing": missing,
            **{k: meta[k] for k in _COMMON},
            **text_fields("comm", meta["comm"]),
            "container_id": meta["container_id"],
            # the last message may know the container's names when the first did not
            **container_fields({**self.late, **meta}),
            "ts": self.first_ts,
            "last_ts": self.last_ts,
            "epoch": self.key[0],
            "obj_id": self.key[1],
            "obj_len": self.obj_len,
        }
        if self.error is not None or self.read_error is not None:
            record["error"] = self.error or self.read_error
        return record


def final_names(name: str) -> Iterator[str]:
    """The names an artifact may take, in order: ``name``, then ``name.1`` ... while taken."""
    yield name
    for n in range(1, MAX_COLLISIONS + 1):
        yield f"{name}.{n}"


def content_key(sha256: str | None) -> DedupKey | None:
    """The dedup key of kinds captured once per content (modules, BPF programs)."""
    return None if sha256 is None else ("sha256", sha256)


def content_key_from_record(record: dict[str, Any]) -> DedupKey | None:
    sha256 = record.get("sha256")
    if isinstance(sha256, str) and _SHA256.fullmatch(sha256):
        return ("sha256", sha256)
    return None


def read_lines(stream: IO[bytes], max_line: int = MAX_LINE) -> Iterator[bytes | None]:
    """Lines of ``stream``, each at most ``max_line`` bytes; None stands for a longer line,
    skipped without ever holding it in memory."""
    while True:
        line = stream.readline(max_line + 1)
        if not line:
            return
        if len(line) > max_line:
            while line and not line.endswith(b"\n"):
                line = stream.readline(max_line)
            yield None
        else:
            yield line


def dedup_entry_of_line(
    line: bytes | None,
    kind: str,
    key_from_record: Callable[[dict[str, Any]], DedupKey | None],
) -> tuple[DedupKey, str] | None:
    """The dedup key one index line (None: an overlong one) gives ``kind`` and the path of the
    artifact it records, or None when it gives none: a blank line, another kind's record, an
    incomplete capture (which is to be retried, so it must not count) or a duplicate's record
    (no artifact of its own). Raises BadIndexLine for a line that should and cannot."""
    record = None if line is None else parse_line(line)
    if record is None:
        if line is None or line.strip():
            raise BadIndexLine("not a JSON object")
        return None
    if (
        record.get("kind") != kind
        or record.get("complete") is not True
        or not isinstance(record.get("path"), str)
    ):
        return None
    try:
        key = key_from_record(record)
    except (KeyError, TypeError, ValueError):
        key = None
    if key is None:
        raise BadIndexLine(f"a complete {kind} record without its dedup key")
    return key, record["path"]

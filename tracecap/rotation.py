"""Size rotation of tracecap's append-only files: the events file, ``index.jsonl``, pcaps (pure).

One scheme for all three, so that one reader follows them all (README "Rotation"):

* the live file keeps its name (``index.jsonl``, ``pcap/single.pcap``, ``/var/log/events.json``):
  a consumer that tails it, and every tool told its name, still finds it;
* a closed segment is renamed once, to ``<stem>.<NNNNNN><suffix>`` (``index.000001.jsonl``,
  ``single.000003.pcap``), numbered from 1 upwards and never renamed again, so that a reader
  listing the directory never races a shift of ``.1`` to ``.2`` (logrotate's scheme), and the
  suffix stays last so that Wireshark and ``jq`` still recognise the file; compressed, it gains
  ``.gz`` (``index.000001.jsonl.gz``);
* the order is the number's, the live file last.

A file is rotated before a write that would take it past the size (a record is never split
across segments), and never when empty: one record larger than the size makes one segment of its
own. ``count`` closed segments are kept (Tetragon's ``--export-file-max-backups``; ``None``: all,
the default, since what is removed is evidence lost).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Digits of a segment's number: a million segments sort by name as they sort by number.
SEGMENT_DIGITS = 6
GZIP_SUFFIX = ".gz"
#: The smallest size accepted: below it every pcap segment would hold one packet.
MIN_SIZE = 1024
#: ``<N>kb|mb|gb`` in binary units, as ``limit:`` and ``floor:``.
_SIZE = re.compile(r"([0-9]{1,20})(kb|mb|gb)")
_UNITS = {"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}
_COUNT = re.compile(r"[0-9]{1,9}")
SIZE_FORMS = "<N>kb, <N>mb, <N>gb (binary units, at least 1kb)"


@dataclass(frozen=True)
class Rotation:
    """When a file is rotated and what is kept: segments of at most ``size`` bytes (unless one
    record is larger), the newest ``count`` closed ones (None: all), gzip-compressed or not."""

    size: int
    count: int | None = None
    compress: bool = False


def parse_size(text: str) -> int | None:
    """``100mb`` in bytes; None when it is not ``<N>kb|mb|gb`` of at least MIN_SIZE bytes."""
    match = _SIZE.fullmatch(text.lower())
    if match is None:
        return None
    size = int(match[1]) * _UNITS[match[2]]
    return size if size >= MIN_SIZE else None


def parse_count(text: str) -> int | None:
    """A segment count: a positive integer (0 would keep nothing of what was closed)."""
    return int(text) if _COUNT.fullmatch(text) and int(text) > 0 else None


def split_name(base: str) -> tuple[str, str]:
    """``index.jsonl`` as (``index``, ``.jsonl``): the suffix is from the last dot that is not
    the name's first character (``.hidden`` has none), so that it stays last in a segment."""
    dot = base.rfind(".")
    if dot <= 0:
        return base, ""
    return base[:dot], base[dot:]


def segment_name(base: str, number: int, compressed: bool = False) -> str:
    """The name of closed segment ``number`` of the live file ``base``."""
    stem, suffix = split_name(base)
    name = f"{stem}.{number:0{SEGMENT_DIGITS}d}{suffix}"
    return name + GZIP_SUFFIX if compressed else name


def _segment_pattern(base: str) -> re.Pattern[str]:
    stem, suffix = split_name(base)
    return re.compile(
        rf"{re.escape(stem)}\.([0-9]{{{SEGMENT_DIGITS},}}){re.escape(suffix)}({re.escape(GZIP_SUFFIX)})?"
    )


def segment_number(base: str, name: str) -> tuple[int, bool] | None:
    """(number, compressed) of a closed segment of ``base`` named ``name``; None for any other
    name (the live file included)."""
    match = _segment_pattern(base).fullmatch(name)
    if match is None:
        return None
    return int(match[1]), match[2] is not None


def closed_segments(base: str, names: Iterable[str]) -> dict[int, str]:
    """The closed segments of ``base`` among ``names``, by number. A number present both plain
    and compressed is being compressed (the ``.gz`` is written before the plain one is removed):
    the plain one is whole, the ``.gz`` may not be yet, so the plain one is the segment."""
    found: dict[int, str] = {}
    for name in names:
        parsed = segment_number(base, name)
        if parsed is None:
            continue
        number, compressed = parsed
        if number not in found or not compressed:
            found[number] = name
    return found


def ordered_segments(base: str, names: Iterable[str]) -> list[str]:
    """Every segment of ``base`` among ``names`` in the order they were written: the closed
    ones by number, then the live file if present."""
    names = list(names)
    closed = closed_segments(base, names)
    ordered = [closed[number] for number in sorted(closed)]
    return [*ordered, base] if base in names else ordered


def live_number(base: str, first: object) -> int:
    """The number the live file ``base`` gets once closed, from its first record: one past the
    segment its rotation record names; 1 for a file that starts otherwise (the first file, or
    one begun again from nothing)."""
    if not isinstance(first, dict) or first.get("kind") != "rotation":
        return 1
    segment = first.get("segment")
    if first.get("file") != base or type(segment) is not int or segment < 1:
        return 1
    return segment + 1


def next_number(base: str, names: Iterable[str]) -> int:
    """The number the next closed segment gets: one past the highest there (numbers are never
    reused, even after the oldest segments were removed)."""
    return max(closed_segments(base, names), default=0) + 1


def due(size: int, incoming: int, limit: int) -> bool:
    """Whether a file of ``size`` bytes is rotated before ``incoming`` more are appended: when
    they would take it past ``limit``, unless it is empty (a record larger than the limit then
    fills a segment alone rather than being refused or split)."""
    return size > 0 and size + incoming > limit


def expired(base: str, names: Iterable[str], count: int | None) -> list[str]:
    """The files of the closed segments beyond the newest ``count`` (every file of such a
    number: a half-compressed one has two), oldest first; none when ``count`` is None."""
    if count is None:
        return []
    names = list(names)
    numbers = sorted(closed_segments(base, names))
    old = set(numbers[: max(0, len(numbers) - count)])
    found = ((segment_number(base, name), name) for name in names)
    return [name for parsed, name in sorted(found, key=_by_number) if parsed and parsed[0] in old]


def _by_number(item: tuple[tuple[int, bool] | None, str]) -> tuple[int, str]:
    parsed, name = item
    return (parsed[0] if parsed else -1, name)


def rotation_record(
    file: str, previous: str, number: int, removed: Iterable[str], ts: int
) -> dict[str, object]:
    """The index record of one rotation: ``file`` (the live file, relative to the output
    directory) was closed as ``previous`` (its segment ``number``, with ``.gz`` when
    compressed), and ``removed`` were deleted to keep the count."""
    return {
        "kind": "rotation",
        "file": file,
        "previous": previous,
        "segment": number,
        "removed": list(removed),
        "ts": ts,
    }

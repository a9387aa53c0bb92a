"""How far each recently written file artifact reaches, announced when capture stops (pure).

A writer lists as missing the bytes it knows were lost; bytes lost after the last message it
received (it was killed, or its subscription dropped, while the workload finished the file)
are unknown to it: no later message names them. The collector knows every artifact's end, the
offset after the last byte it published or reported lost. At stop it announces that end, on
the artifact's own topic, for the MAX_EXTENTS artifacts written most recently, so that a writer
holding less lists the rest as missing (bytes written = bytes present + bytes listed missing).

An artifact is what a writer names: direction, file (dev, inode, generation) and container,
so an end reached by one container's writes is never announced for another's artifact.
Streams (pipes, sockets, O_APPEND files) carry collector-defined offsets and are not tracked.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from collector.envelopes import Outgoing

#: Artifacts remembered, least recently written forgotten first. Each entry holds a reference to
#: its stream's envelope (shared with the assembler while the stream lives): about 1.5 KB with a
#: short path, 6 MB at the bound.
MAX_EXTENTS = 4096

#: Envelope keys of a loss notice that an announcement must not repeat.
_LOSS_KEYS = ("lost", "lost_bytes", "lost_ios")

_Key = tuple[bytes, int, int, Any, str]  # (topic, dev, inode, generation, container_id)


class FileExtents:
    """The end of each positional file artifact written recently (MAX_EXTENTS of them)."""

    def __init__(self, limit: int = MAX_EXTENTS) -> None:
        self._limit = limit
        #: key -> [envelope of its latest message's stream, end, ts of that message]
        self._ends: OrderedDict[_Key, list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ends)

    def note(self, topic: bytes, env: dict[str, Any], end: int, ts: int) -> None:
        """A message of ``topic`` whose envelope (or its stream's) is ``env`` named bytes up to
        ``end`` (arrived or lost), at ``ts``. Streams are ignored."""
        if env["append"]:
            return
        key = (topic, env["dev"], env["inode"], env.get("generation"), env["container_id"])
        entry = self._ends.get(key)
        if entry is None:
            self._ends[key] = [env, end, ts]
            if len(self._ends) > self._limit:
                self._ends.popitem(last=False)
            return
        self._ends.move_to_end(key)
        entry[0] = env
        if end > entry[1]:
            entry[1] = end
        if ts > entry[2]:
            entry[2] = ts

    def announce(self, next_io_id: int) -> list[Outgoing]:
        """One message per artifact, oldest first: its envelope with ``extent`` (= ``off``) set to
        its end, no payload, an empty transfer (``io_len`` 0, ``io_count`` 0) numbered from
        ``next_io_id`` up, ``ts`` its last message's. Forgets them."""
        out = []
        for io_id, ((topic, *_), (env, end, ts)) in enumerate(self._ends.items(), next_io_id):
            announced = {k: v for k, v in env.items() if k not in _LOSS_KEYS}
            announced.update(
                ts=ts, ts_last=ts, io_id=io_id, io_len=0, io_count=0, io_off=0, off=end, extent=end
            )
            out.append(Outgoing(topic, announced, None))
        self._ends.clear()
        return out

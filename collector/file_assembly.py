"""Turn file-I/O ring-buffer records into bus messages (pure: no I/O, clock passed in).

Per syscall the kernel sends either a full event (who, which file) or, when the syscall
continues its thread's previous one on the same open file, a short continuation naming that
one and carrying the first chunk; then the (other) bytes in chunks. This joins them and turns
every byte that did not arrive (ring buffer full, unreadable user memory, the per-syscall loop
cap) into an explicit ``lost`` range, so that writers can say exactly which bytes of an
artifact are missing.

Bus messages are few and large because a message costs far more than its bytes: the chunks of
one syscall are merged, and whole syscalls that follow each other on one stream are gathered
into a run (``io_count`` of them) until the payload reaches MAX_MESSAGE_PAYLOAD or the
collector calls ``flush_runs`` after each ring-buffer poll. Every message for an artifact first
flushes that artifact's run, so a stream's bytes are published in the order they were written.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from typing import Any

from bpf import records
from collector.envelopes import Outgoing, context_env
from collector.file_extents import FileExtents
from tracecap import bus

#: Bytes gathered before they are published as one message.
MAX_MESSAGE_PAYLOAD = 256 * 1024
#: Syscalls gathered into one message at most: a run lists each in ``ios`` (about 20 bytes of
#: envelope each), so that tiny writes keep the envelope under bus.MAX_ENVELOPE_BYTES
#: (1024 of them: about 20 KiB, beside a path of up to 4 KiB).
MAX_RUN_IOS = 1024
#: An io whose bytes have not all arrived after this long is closed with the rest marked lost.
IO_TIMEOUT_NS = 1_000_000_000
#: A stream not continued for this long is forgotten (the kernel sends a full event at least
#: every second, so a continuation never names a syscall this old).
STREAM_TIMEOUT_NS = 5_000_000_000
#: Streams (threads) remembered for continuations at most: as many as the kernel's io_streams
#: map, which holds one per thread, so the collector needs no more. Past it the least recently
#: started is forgotten and counted (``streams_evicted``); a continuation of it is then an
#: orphan, counted lost.
MAX_STREAMS = 16384
#: Past MAX_STREAMS, tables are copied afresh after this many evictions: a dict keeps the
#: slots of entries deleted from its front until it grows, and finding its oldest entry walks
#: them all (in a microbenchmark, 15 us a record with 20,000 threads writing, 7 to 10 with
#: this, 4 with a few threads).
_COMPACT_EVERY = 256

_ArtifactKey = tuple[int, int, int]  # (direction, dev, inode)


@dataclass
class _Stream:
    """Who does I/O on which open file: what a full event says and continuations repeat."""

    env: dict[str, Any]  # the envelope keys its syscalls share
    topic: bytes
    append: bool
    key: _ArtifactKey
    seen_ns: int
    io_id: int = 0  # its last syscall's, under which _streams holds it


@dataclass
class _PendingIo:
    """One syscall whose bytes are still arriving: ``buf`` holds the contiguous bytes since the
    last flush, never more than MAX_MESSAGE_PAYLOAD, and ``next_off`` is where the next chunk
    must start (a chunk further on means the ones between were lost)."""

    stream: _Stream
    ts: int  # ns since the epoch
    io_id: int
    io_len: int
    pos: int
    started_ns: int
    next_off: int = 0  # io-relative offset of the next expected byte
    buf: bytearray = field(default_factory=bytearray)
    buf_off: int = 0  # io-relative offset of buf[0]
    whole: bool = True  # nothing flushed or lost yet: it may join a run
    req: int = 0  # what the syscall asked for (bytes, or iovecs)


@dataclass
class _Run:
    """Whole syscalls of one stream, back to back, gathered into one message."""

    first: _PendingIo
    buf: bytearray
    end: int  # file offset after the last syscall
    ts_last: int
    io_count: int = 1
    #: [ts, bytes, asked] of each syscall once a second joins, so that consumers can tell
    #: them apart (Tracee prints one event per syscall)
    ios: list[list[int]] | None = None

    def join(self, data: bytes | memoryview, ts: int, req: int) -> None:
        """Append the next whole syscall of the stream."""
        if self.ios is None:
            self.ios = [[self.first.ts, len(self.buf), self.first.req]]
        self.ios.append([ts, len(data), req])
        self.buf += data
        self.end += len(data)
        self.ts_last = ts
        self.io_count += 1


def display_path(ev: records.FileEvent) -> bytes:
    """Pipes and sockets have no name in the dentry tree; name them as /proc/PID/fd does."""
    if ev.path:
        return ev.path
    if stat.S_ISFIFO(ev.mode):
        return b"pipe:[%d]" % ev.inode
    if stat.S_ISSOCK(ev.mode):
        return b"socket:[%d]" % ev.inode
    return b""


def file_env(
    ev: records.FileEvent, boot_to_epoch: int, container_id: str
) -> tuple[bytes, dict[str, Any]]:
    """The topic of a file event and the envelope keys all its messages share (with ``ts``)."""
    env = context_env(ev.hdr, boot_to_epoch, container_id) | {
        "syscall": ev.syscall,
        "fd": ev.fd,
        "path": display_path(ev),
        "path_truncated": bool(ev.flags & records.EV_PATH_TRUNCATED),
        "dev": ev.dev,
        "inode": ev.inode,
        "generation": ev.generation,
        "mode": ev.mode,
        "append": ev.append,
    }
    if ev.syscall in records.MAPPING_SYSCALLS:
        env["source"] = bus.SOURCE_MAPPING
    topic = bus.TOPIC_FILE_WRITE if ev.direction == records.DIR_WRITE else bus.TOPIC_FILE_READ
    return topic, env


def _forget_oldest(table: dict[int, _Stream], evicted: int) -> dict[int, _Stream]:
    """``table`` without its oldest entry, copied afresh every _COMPACT_EVERY ``evicted``."""
    del table[next(iter(table))]
    return dict(table) if evicted % _COMPACT_EVERY == 0 else table


#: io_ids of loss notices, above the kernel's.
NOTICE_IO_ID_BASE = 1 << 56


class FileAssembler:
    """Joins one run's file-I/O records (events, continuations, chunks, drop notices) into bus
    messages, one instance per collector. Every table it keeps is bounded: pending syscalls by
    the one-per-thread rule and IO_TIMEOUT_NS, runs by one per artifact until the next
    ``flush_runs``, streams by one per thread (MAX_STREAMS, STREAM_TIMEOUT_NS).

    One stream per thread, not per file: the kernel's io_streams map holds each thread's last
    syscall only, and a full event replaces it, so a continuation can only ever name the
    thread's latest stream (the thread's records reach the one file ring in the order it made
    them). The stream a full event replaces is forgotten at once; keeping every file's stream
    until STREAM_TIMEOUT_NS held about 1 KB per file written in the last 5 s, 16 MB at the
    bound, and the collector's heap kept that high-water mark."""

    def __init__(self, boot_to_epoch_ns: int, container_of: Any = None) -> None:
        self._boot_to_epoch = boot_to_epoch_ns
        self._container_of = container_of or (lambda cgroup_id: "")
        self._pending: dict[int, _PendingIo] = {}
        self._streams: dict[int, _Stream] = {}  # by the io_id of the stream's last syscall
        self._runs: dict[_ArtifactKey, _Run] = {}
        self._stream_of_tid: dict[int, _Stream] = {}
        self.orphan_chunks = 0
        self.orphan_ios = 0
        self.lost_bytes = 0
        #: Transfers lost whose byte count could not be read (not in ``lost_bytes``).
        self.lost_unsized = 0
        self.streams_evicted = 0
        self._threads_evicted = 0
        self._next_notice = NOTICE_IO_ID_BASE
        self._extents = FileExtents()

    def on_dropped(self, drop: records.DroppedIo, now_ns: int) -> Outgoing:
        """A loss notice for syscalls the kernel could not even announce (ring buffer full).

        Who did them is unknown; the file and the span of offsets they touched are known, so
        the artifact is marked incomplete over that span rather than silently holding zeros.
        Transfers whose byte count could not be read (``drop.unsized``) cannot be a range: the
        notice says how many (``lost_unsized``), and the writer marks the artifact incomplete.
        """
        self._next_notice += 1
        self.lost_bytes += drop.bytes
        self.lost_unsized += drop.unsized
        if not drop.bytes:
            lo = hi = 0  # unsized transfers only: no range to name
        elif drop.append:
            lo, hi = 0, drop.bytes
        else:
            lo, hi = drop.lo, max(drop.hi, drop.lo + 1)
        env = {
            "ts": now_ns,
            "pid": 0,
            "tid": 0,
            "ppid": 0,
            "uid": 0,
            "comm": b"",
            "cgroup_id": drop.cgroup_id,
            "container_id": self._container_of(drop.cgroup_id),
            "syscall": "unknown",
            "fd": -1,
            "path": b"",
            "dev": drop.dev,
            "inode": drop.inode,
            "mode": 0,
            "io_id": self._next_notice,
            "io_len": hi - lo,
            "io_off": 0,
            "off": lo,
            "append": drop.append,
            "lost": [[lo, hi]] if hi > lo else [],
            "lost_bytes": drop.bytes,
            "lost_ios": drop.ios,
        }
        if drop.unsized:
            env["lost_unsized"] = drop.unsized
        topic = bus.TOPIC_FILE_WRITE if drop.direction == records.DIR_WRITE else bus.TOPIC_FILE_READ
        self._extents.note(topic, env, hi, now_ns)
        return Outgoing(topic, env, None)

    def on_event(self, ev: records.FileEvent, now_ns: int) -> list[Outgoing]:
        h = ev.hdr
        topic, env = file_env(ev, self._boot_to_epoch, self._container_of(h.cgroup_id))
        del env["ts"]
        stream = _Stream(env, topic, ev.append, (ev.direction, ev.dev, ev.inode), now_ns)
        out = self._replace_stream(h.tid, stream)
        self._remember(ev.io_id, stream)
        ts = h.ts + self._boot_to_epoch
        self._pending[ev.io_id] = _PendingIo(
            stream, ts, ev.io_id, ev.io_len, ev.pos, now_ns, req=ev.req
        )
        return out

    def on_cont(self, cont: records.FileCont, now_ns: int) -> list[Outgoing]:
        """A syscall continuing ``prev_io_id``'s stream."""
        first = cont.first
        if (
            first.io_off == 0
            and len(first.data) == cont.io_len
            and self._join_whole(
                cont.ts, cont.io_id, cont.prev_io_id, cont.pos, cont.req, first.data, now_ns
            )
        ):
            return []
        return self._start_cont(cont, now_ns)

    def on_cont_record(self, raw: bytes | memoryview, now_ns: int) -> list[Outgoing]:
        """A continuation record as the ring holds it. Under load nearly every one carries its
        whole syscall and joins the open run; that case skips building record objects, which
        takes a record from 3.2 to 2.45 us in a microbenchmark (the ring reader hands over a
        view of ring memory, without a copy)."""
        whole = records.whole_file_cont(raw)
        if whole is not None and self._join_whole(*whole, now_ns):
            return []
        return self._start_cont(records.decode_file_cont(raw), now_ns)

    def _join_whole(
        self,
        ts: int,
        io_id: int,
        prev_io_id: int,
        pos: int,
        req: int,
        data: bytes | memoryview,
        now_ns: int,
    ) -> bool:
        """The common case under load: a syscall whose bytes all came with its continuation
        joins its stream's open run, when no syscall waits for bytes (so none is left to
        settle). False, with nothing changed, when it cannot."""
        if self._pending:
            return False
        stream = self._streams.get(prev_io_id)
        if stream is None:
            return False
        run = self._joinable_run(stream, pos, len(data))
        if run is None:
            return False
        del self._streams[prev_io_id]
        stream.seen_ns = now_ns
        self._remember(io_id, stream)
        run.join(data, ts + self._boot_to_epoch, req)
        return True

    def _start_cont(self, cont: records.FileCont, now_ns: int) -> list[Outgoing]:
        """A continuation that does not simply join a run: it becomes a pending io. Its stream
        is unknown only when forgotten (see MAX_STREAMS): its bytes cannot be attributed and
        count as lost."""
        stream = self._streams.pop(cont.prev_io_id, None)
        if stream is None:
            self.orphan_ios += 1
            self.lost_bytes += cont.io_len
            self.orphan_chunks += 1  # the first chunk, carried by the continuation
            return []
        stream.seen_ns = now_ns
        self._remember(cont.io_id, stream)
        prev = self._pending.pop(cont.prev_io_id, None)
        out = [] if prev is None else self._close(prev)  # see _replace_stream
        ts = cont.ts + self._boot_to_epoch
        self._pending[cont.io_id] = _PendingIo(
            stream, ts, cont.io_id, cont.io_len, cont.pos, now_ns, req=cont.req
        )
        return out + self.on_data(cont.first, now_ns)

    def _replace_stream(self, tid: int, stream: _Stream) -> list[Outgoing]:
        """Make ``stream`` the thread's, forgetting the one it replaces (no continuation can
        name that any more), and close the thread's previous syscall if bytes of it are still
        missing: all of its records precede this one's in the ring buffer, so what has not
        arrived never will. This keeps the wait for lost chunks (and the buffers held
        meanwhile) to one syscall."""
        old = self._stream_of_tid.pop(tid, None)
        self._stream_of_tid[tid] = stream
        if len(self._stream_of_tid) > MAX_STREAMS:
            self._threads_evicted += 1
            self._stream_of_tid = _forget_oldest(self._stream_of_tid, self._threads_evicted)
        if old is None:
            return []
        if self._streams.get(old.io_id) is old:
            del self._streams[old.io_id]
        io = self._pending.pop(old.io_id, None)
        return [] if io is None else self._close(io)

    def _close(self, io: _PendingIo) -> list[Outgoing]:
        out = self._flush(io)
        if io.next_off < io.io_len:
            out += self._lost(io, io.next_off, io.io_len)
        return out

    def _remember(self, io_id: int, stream: _Stream) -> None:
        """``stream`` as the one a continuation of syscall ``io_id`` names."""
        stream.io_id = io_id
        self._streams[io_id] = stream
        if len(self._streams) > MAX_STREAMS:
            self.streams_evicted += 1
            self._streams = _forget_oldest(self._streams, self.streams_evicted)

    def on_data(self, chunk: records.FileData, now_ns: int) -> list[Outgoing]:
        """Bytes of a pending syscall. ``chunk.data`` may view ring memory that the kernel reuses
        after this call: whatever is kept is copied (into the io's buffer or its run)."""
        io = self._pending.get(chunk.io_id)
        if io is None:
            self.orphan_chunks += 1
            return []
        out: list[Outgoing] = []
        if chunk.io_off > io.next_off:  # the chunks in between were dropped by the kernel
            out += self._flush(io)
            out += self._lost(io, io.next_off, chunk.io_off)
            io.next_off = chunk.io_off
        if chunk.unreadable or len(chunk.data) < chunk.want:
            out += self._flush(io)
            end = chunk.io_off + chunk.want
            out += self._lost(io, chunk.io_off + len(chunk.data), end)
            io.next_off = end
        elif chunk.io_off == io.next_off:
            if not io.buf:
                io.buf_off = chunk.io_off
            io.buf += chunk.data
            io.next_off += len(chunk.data)
        done = io.next_off >= io.io_len
        if done and io.whole:
            del self._pending[chunk.io_id]
            return out + self._gather(io)
        if len(io.buf) >= MAX_MESSAGE_PAYLOAD or done:
            out += self._flush(io)
        if done:
            del self._pending[chunk.io_id]
        return out

    def flush_runs(self) -> list[Outgoing]:
        """Publish every gathered run (the collector calls this after each ring-buffer poll,
        so a run never waits longer than one poll)."""
        out = [self._run_message(run) for run in self._runs.values()]
        self._runs.clear()
        return out

    def expire(self, now_ns: int, force: bool = False) -> list[Outgoing]:
        """Close ios whose remaining bytes will not come (timeout, or shutdown with force)."""
        out = self.flush_runs()
        for io_id, io in list(self._pending.items()):
            if force or now_ns - io.started_ns >= IO_TIMEOUT_NS:
                del self._pending[io_id]
                out += self._close(io)
        for io_id, stream in list(self._streams.items()):
            if force or now_ns - stream.seen_ns >= STREAM_TIMEOUT_NS:
                del self._streams[io_id]
        for tid, stream in list(self._stream_of_tid.items()):
            if force or now_ns - stream.seen_ns >= STREAM_TIMEOUT_NS:
                del self._stream_of_tid[tid]
        return out

    def announce_extents(self) -> list[Outgoing]:
        """At stop, after ``expire(force=True)``: the end of each file artifact written recently
        (see ``collector.file_extents``), so that writers can list a lost tail as missing."""
        out = self._extents.announce(self._next_notice + 1)
        self._next_notice += len(out)
        return out

    @property
    def streams(self) -> int:
        """Streams remembered for continuations now (at most one per thread)."""
        return len(self._streams)

    def _gather(self, io: _PendingIo) -> list[Outgoing]:
        """A whole syscall joins its stream's run, or starts one (publishing the artifact's
        previous run if it belongs to another stream, or is not followed by this one)."""
        run = self._joinable_run(io.stream, io.pos, io.io_len)
        if run is not None:
            run.join(io.buf, io.ts, io.req)
            return []
        out = self._take_run(io)
        self._runs[io.stream.key] = _Run(io, io.buf, io.pos + io.io_len, io.ts)
        return out

    def _joinable_run(self, stream: _Stream, pos: int, size: int) -> _Run | None:
        """The artifact's open run, if a whole syscall of ``stream`` at ``pos`` may join it."""
        run = self._runs.get(stream.key)
        if (
            run is not None
            and run.first.stream is stream
            and (stream.append or run.end == pos)
            and len(run.buf) + size <= MAX_MESSAGE_PAYLOAD
            and run.io_count < MAX_RUN_IOS
        ):
            return run
        return None

    def _run_message(self, run: _Run) -> Outgoing:
        first = run.first
        env = dict(
            first.stream.env,
            ts=first.ts,
            ts_last=run.ts_last,
            io_id=first.io_id,
            io_len=len(run.buf),
            io_count=run.io_count,
            io_off=0,
            off=self._file_off(first, 0),
        )
        if run.ios is not None:
            env["ios"] = run.ios
        else:
            env["io_req"] = first.req
        self._extents.note(first.stream.topic, first.stream.env, run.end, run.ts_last)
        return Outgoing(first.stream.topic, env, run.buf)  # handed over, never changed again

    def _take_run(self, io: _PendingIo) -> list[Outgoing]:
        run = self._runs.pop(io.stream.key, None)
        return [] if run is None else [self._run_message(run)]

    def _io_env(self, io: _PendingIo, io_off: int) -> dict[str, Any]:
        return dict(
            io.stream.env,
            ts=io.ts,
            ts_last=io.ts,
            io_id=io.io_id,
            io_len=io.io_len,
            io_count=1,
            io_off=io_off,
            off=self._file_off(io, io_off),
            io_req=io.req,
        )

    @staticmethod
    def _file_off(io: _PendingIo, io_off: int) -> int:
        return io_off if io.stream.append else io.pos + io_off

    def _flush(self, io: _PendingIo) -> list[Outgoing]:
        if not io.buf:
            return []
        io.whole = False
        out = self._take_run(io)
        payload, io.buf = io.buf, bytearray()  # handed over: the io goes on with a new buffer
        env = self._io_env(io, io.buf_off)
        self._extents.note(io.stream.topic, io.stream.env, env["off"] + len(payload), io.ts)
        out.append(Outgoing(io.stream.topic, env, payload))
        return out

    def _lost(self, io: _PendingIo, start: int, end: int) -> list[Outgoing]:
        io.whole = False
        self.lost_bytes += end - start
        base = self._file_off(io, 0)
        env = self._io_env(io, start) | {"lost": [[base + start, base + end]]}
        self._extents.note(io.stream.topic, io.stream.env, base + end, io.ts)
        return [*self._take_run(io), Outgoing(io.stream.topic, env, None)]

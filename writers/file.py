"""The file writer: written and read file contents, stored as Tracee's ``--capture write|read``.

Each ``file.write.``/``file.read.`` message carries a chunk of one syscall's transfer; chunks land
at their file offset (``pwrite``) or, for streams, at the end of the artifact. An artifact's index
record is appended once it has been idle for ``idle_seconds`` and again at close; more data after
a flush yields another record for the same path, and **the last record for a path is current**.

Memory stays flat over any number of files: once an artifact's index line is written its state
is released, and rebuilt from that line (``Index.find_last``) if the file is written again. A
journal (``writers.journal``) names the artifacts open at any moment, so that a writer killed
mid-file is followed by one that reports them with what is not known written as missing.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from tracecap import bus
from writers.base import PAYLOAD_QUEUE_MESSAGES, Writer
from writers.budget import DiskBudget
from writers.fileartifact import FileArtifact, syscalls
from writers.fileio import FdCache, digest_fd, write_all
from writers.gaps import Gap
from writers.index import Index
from writers.journal import Journal
from writers.naming import container_dir, file_artifact_name
from writers.outdir import OutputDir, check_component
from writers.ratelog import RateLimitedLog

DIRECTIONS = {"write": bus.TOPIC_FILE_WRITE, "read": bus.TOPIC_FILE_READ}
#: Writes to /dev/null are split per pid: they are what droppers use to hide output, and one
#: artifact mixing every process's discarded bytes would say nothing about any of them.
_DEV_NULL = b"/dev/null"
#: An artifact's state goes to the journal again after this many bytes were written to it (and
#: at the next tick after any write): what a killed writer wrote since is reported missing.
CHECKPOINT_BYTES = 4 << 20
#: Least time between two rounds of journal states written by ``tick``.
CHECKPOINT_SECONDS = 1.0
#: An artifact first seen this soon after a bus gap of its direction may have lost its first
#: bytes in the gap: everything before its first byte that arrived is then missing.
GAP_WINDOW_SECONDS = 2.0
#: Artifacts with an index line still to write, at most; past it the least recently active is
#: flushed early (its state is then released, and rebuilt from its line if more comes). A burst
#: of small files would otherwise hold them all until their idle flush, and the allocator keeps
#: that peak: 18,000 files in 2 s left the writer 59 MB larger; 1024 bound it to a few MB.
MAX_RESIDENT = 1024
#: Index lines of the artifacts released last, newest last, so that neither an artifact
#: written again soon after its release nor the collector's announcements at stop (one per
#: artifact it wrote recently, at most its MAX_EXTENTS, 4096) read the index back (up to
#: 16 MiB each time). Measured, the realistic workload (bench_workloads.py (a)): `cp -r` of
#: 1,406 files, each announced by copy_file_range, its bytes read back later, most released in
#: between by the MAX_RESIDENT early flush: 1,825 rebuilds, 1,346 of them past 256 lines, and
#: the scans were 30% of the writer. As bytes, about 650 each: 2.6 MB at most.
RELEASED_LINES = 4096
#: Index lines written in one append (the early flushes past MAX_RESIDENT take an eighth of
#: it at a time): one lock and one write for many small files, and at most a few hundred KB.
FLUSH_BATCH = 256

_Key = tuple[str, str]  # (container directory, artifact name)


class FileWriter(Writer):
    """Persists file contents and keeps one ``FileArtifact`` per output file.

    Open fds are an LRU of ``max_open``: artifacts are opened without truncation and written at
    explicit offsets (or with ``O_APPEND``), so closing one and reopening it later is harmless.
    Artifact bookkeeping is kept while the artifact is active; after its index line it is
    released and rebuilt from that line when the file is written again, so records stay
    cumulative and memory does not grow with the number of files.
    """

    queue_messages = PAYLOAD_QUEUE_MESSAGES

    name = "file"

    def __init__(
        self,
        out: OutputDir,
        index: Index,
        directions: Iterable[str] = ("write", "read"),
        *,
        max_open: int = 128,
        idle_seconds: float = 1.0,
        max_hash_bytes: int = 4 << 30,
        max_resident: int = MAX_RESIDENT,
        clock: Callable[[], float] = time.monotonic,
        log: RateLimitedLog | None = None,
        budget: DiskBudget | None = None,
        replay: bool = False,
    ) -> None:
        super().__init__(budget)
        #: Fed from JetStream (``writers.nats_source``): whatever has no index line is
        #: delivered again after a restart, so a killed predecessor's artifacts are not
        #: interrupted (their rest comes again), and bytes of a stream already in the file
        #: are not appended twice.
        self._replay = replay
        #: Per artifact with no index line yet, the lowest bus seq per "epoch:topic" of the
        #: messages it took (``unindexed``); kept only when ``replay``.
        self._held: dict[_Key, dict[str, int]] = {}
        self.directions = tuple(directions)
        unknown = set(self.directions) - DIRECTIONS.keys()
        if unknown or not self.directions:
            raise ValueError(f"directions must be among {sorted(DIRECTIONS)}, got {directions!r}")
        self.topics = tuple(DIRECTIONS[d] for d in self.directions)
        if max_resident < 1:
            raise ValueError(f"max_resident must be at least 1, got {max_resident}")
        self._max_resident = max_resident
        self._out = out
        self._index = index
        self._idle = idle_seconds
        self._max_hash_bytes = max_hash_bytes
        self._clock = clock
        self._log = log or RateLimitedLog("tracecap-writer[file]")
        #: Artifacts held in memory: active ones, and those whose index line is not written.
        self._artifacts: dict[_Key, FileArtifact] = {}
        self._dirty: OrderedDict[_Key, None] = OrderedDict()  # oldest activity first
        self._fds: FdCache[_Key] = FdCache(max_open)
        #: Artifacts the journal says are open, with the bytes written since their last state.
        self._unsynced: dict[_Key, int] = {}
        self._next_checkpoint = 0.0
        #: The last bus gap per direction and when it was seen (GAP_WINDOW_SECONDS).
        self._last_gap: dict[str, tuple[list[int], float]] = {}
        #: Existing files met without a usable index line, by key, with their size (0 too),
        #: until their first message.
        self._unknown_sizes: dict[_Key, int] = {}
        #: The last index line written of each of the RELEASED_LINES artifacts released last.
        self._released_lines: OrderedDict[_Key, bytes] = OrderedDict()
        self.counters.update(
            dict.fromkeys(
                (
                    "artifacts",
                    "records",
                    "bytes_written",
                    "write_errors",
                    "rejected",
                    "index_errors",
                    "hash_skipped",
                    "released",
                    "early_flushes",
                    "rebuilt",
                    "rebuild_misses",
                    "reconciled",
                    "tails_missing",
                    "journal_errors",
                    "journal_bad_lines",
                    "replayed_bytes_skipped",
                ),
                0,
            )
        )
        self._journal: Journal | None = None
        try:
            self._journal = Journal(out, self.name)
        except (OSError, ValueError) as exc:
            # a planted link or FIFO at the journal's name: capture goes on, without recovery
            self.counters["journal_errors"] += 1
            self._log("journal_error", f"no journal, a killed writer's files go unreported: {exc}")
        self._reconcile()

    # -- messages ----------------------------------------------------------------------------

    def _direction(self, topic: bytes) -> str | None:
        for direction in self.directions:
            if topic.startswith(DIRECTIONS[direction]):
                return direction
        return None

    def on_gap(self, gap: Gap) -> None:
        """Messages of this direction were lost on the bus: every artifact still being written
        may have lost bytes in them, so each says so (``bus_gaps``, ``complete: false``) and
        lists as missing every byte it does not know written; artifacts first seen in the next
        GAP_WINDOW_SECONDS may have lost their beginning (see ``_new``)."""
        direction = self._direction(gap.topic)
        if direction is None:
            return
        mark = [gap.epoch, gap.from_seq, gap.to_seq]
        self._last_gap[direction] = (mark, self._clock())
        for key in self._dirty:
            art = self._artifacts.get(key)
            if art is not None and art.kind == direction:
                art.mark_uncertain(mark)

    # -- artifacts in and out of memory -------------------------------------------------------

    def _lookup(self, key: _Key, now: float, append: bool) -> FileArtifact | None:
        """The artifact ``key`` as known: in memory, or rebuilt from its last index line when
        its file exists (it was released, or is from an earlier run); None for a new one,
        whose file is then created here (opened ``append`` or not, held in the fd cache).

        An existing file with no usable index line (beyond the scan, never written) is noted
        in ``_unknown_sizes``: the new artifact made for it never presents those bytes as
        captured, nor itself as complete (an earlier line may have listed bytes missing that
        this one cannot repeat; an empty file is one whose every message was a loss)."""
        art = self._artifacts.get(key)
        if art is not None:
            return art
        subdir, name = key
        try:
            # a new file is the common case (a burst of small files): made in one syscall,
            # where a stat and opening it as maybe existing took five
            self._fds.add(key, self._out.create_artifact(subdir, name, append))
            return None
        except FileExistsError:
            pass  # released, from an earlier run, or planted: looked at below
        except (OSError, ValueError):
            return None  # unusable: opening it will fail and be counted
        try:
            st = os.stat(name, dir_fd=self._out.dir_fd(subdir), follow_symlinks=False)
        except (OSError, ValueError):
            return None  # nothing there (or unusable: opening it will fail and be counted)
        if not stat.S_ISREG(st.st_mode):
            return None  # a planted link or FIFO is no earlier capture; opening it fails
        path = f"{subdir}/{name}"
        needle = b'"path": ' + json.dumps(path).encode()
        try:
            line = self._released_lines.get(key)
            rec = (
                json.loads(line)
                if line
                else self._index.find_last(
                    needle, lambda r: r.get("path") == path and r.get("kind") in DIRECTIONS
                )
            )
            art = None if rec is None else FileArtifact.from_record(rec, now)
        except (OSError, ValueError) as exc:
            self._log("rebuild", f"{path}: index line not usable: {exc}")
            art = None
        if art is None:
            self.counters["rebuild_misses"] += 1
            self._unknown_sizes[key] = st.st_size
            return None
        self.counters["rebuilt"] += 1
        self._artifacts[key] = art
        return art

    def _new(self, key: _Key, direction: str, env: dict[str, Any], now: float) -> FileArtifact:
        """A new artifact; uncertain (see ``FileArtifact.mark_uncertain``) when its file
        existed with no index line found for it (then its history is unknown too), or when a
        bus gap of its direction was just seen."""
        subdir, name = key
        art = FileArtifact(f"{subdir}/{name}", direction, bool(env["append"]), env, now)
        size = self._unknown_sizes.pop(key, None)
        if size is not None:
            art.mark_uncertain()
            art.history_unknown = True
            if not art.append:
                art.reach(size)
        recent = self._last_gap.get(direction)
        if recent is not None and now - recent[1] <= GAP_WINDOW_SECONDS:
            art.mark_uncertain()
        self._artifacts[key] = art
        self.counters["artifacts"] += 1
        return art

    def _release(self, key: _Key, line: bytes) -> None:
        """Forget an artifact whose index ``line`` is written, keeping the line (its fd stays
        in the LRU)."""
        self._artifacts.pop(key, None)
        self._released_lines[key] = line
        self._released_lines.move_to_end(key)
        if len(self._released_lines) > RELEASED_LINES:
            self._released_lines.popitem(last=False)
        self._unsynced.pop(key, None)
        self._held.pop(key, None)
        self.counters["released"] += 1

    def _artifact(
        self, subdir: str, name: str, direction: str, env: dict[str, Any], now: float
    ) -> tuple[_Key, FileArtifact]:
        """The artifact a message belongs to. A file that reuses a freed inode number is
        another file (Tracee #2888): it gets its own artifact (``.gen-<G>`` added) instead of
        writing over, or inheriting the tail of, the old one. Messages without a generation
        (loss notices) stay with the name's first owner."""
        key = (subdir, name)
        append = bool(env["append"])
        art = self._lookup(key, now, append)
        generation = env.get("generation")
        if type(generation) is int and generation > 0 and art is not None:
            if art.generation is None:
                art.generation = generation
            elif art.generation != generation:
                if key not in self._dirty and key not in self._unsynced:
                    self._artifacts.pop(key, None)  # only looked at: not kept
                key = (subdir, f"{name}.gen-{generation}")
                art = self._lookup(key, now, append)
        if art is None:
            art = self._new(key, direction, env, now)
        return key, art

    # -- the journal ---------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Take over the artifacts a killed predecessor left open: each is flushed after an
        idle period with what is not known written as missing, unless more of it arrives."""
        if self._journal is None:
            return
        try:
            states = self._journal.load()
        except OSError as exc:
            self.counters["journal_errors"] += 1
            self._log("journal_error", f"journal not read: {exc}")
            return
        now = self._clock()
        for path, state in states.items():
            subdir, _, name = path.partition("/")
            try:
                check_component(subdir)
                check_component(name)
                art = FileArtifact.from_state(state, now)
                if art.path != path:
                    raise ValueError(f"state of {art.path!r} under {path!r}")
            except ValueError as exc:
                self.counters["journal_bad_lines"] += 1
                self._log("journal_error", f"{path!r}: state not usable: {exc}")
                continue
            key = (subdir, name)
            if self._replay:
                self._resume(key, art)
            elif not art.append:
                # bytes may be on disk past the last state: not known written, so missing
                try:
                    art.reach(os.fstat(self._fd(key, art)).st_size)
                except OSError as exc:
                    self._log("journal_error", f"{path}: size unknown: {exc}")
            self._artifacts[key] = art
            self._dirty[key] = None
            self._unsynced[key] = 0
            self.counters["reconciled"] += 1
            self._log("reconciled", f"{path}: left open by a killed writer; reported incomplete")
        self.counters["journal_bad_lines"] += self._journal.bad_lines
        self._compact()

    def _resume(self, key: _Key, art: FileArtifact) -> None:
        """A killed predecessor's artifact whose messages the stream delivers again: not
        interrupted; what is not known written stays missing until they come (``uncertain``).
        A stream's file is cut back to what the journal knows written, so that the bytes
        appended after its last state are appended once more, not twice."""
        art.interrupted = False
        if art.append:
            try:
                os.ftruncate(self._fd(key, art), art.extent)
            except OSError as exc:
                self._log("journal_error", f"{art.path}: not cut back to {art.extent}: {exc}")
                art.interrupted = True
        else:
            try:
                art.reach(os.fstat(self._fd(key, art)).st_size)
            except OSError as exc:
                self._log("journal_error", f"{art.path}: size unknown: {exc}")

    def unindexed(self) -> dict[str, int]:
        floors: dict[str, int] = {}
        for held in self._held.values():
            for stream, seq in held.items():
                if seq < floors.get(stream, seq + 1):
                    floors[stream] = seq
        return floors

    def make_durable(self) -> None:
        keys = list(self._dirty)
        for start in range(0, len(keys), FLUSH_BATCH):
            self._flush_all(keys[start : start + FLUSH_BATCH], retry=True)

    def _hold(self, key: _Key, msg: bus.Message) -> None:
        if self._replay:
            stream = f"{msg.env['epoch']}:{msg.topic.decode('ascii', 'backslashreplace')}"
            self._held.setdefault(key, {}).setdefault(stream, msg.env["seq"])

    def _journal_state(self, key: _Key, art: FileArtifact) -> None:
        """Write ``art``'s state to the journal; called before bytes it does not cover land."""
        self._unsynced[key] = 0
        if self._journal is not None and not self._journal.opened(art.path, art.state()):
            self.counters["journal_errors"] += 1

    def _compact(self) -> None:
        """Rewrite the journal with only the open artifacts' states."""
        if self._journal is None:
            return
        states = {self._artifacts[k].path: self._artifacts[k].state() for k in self._unsynced}
        if not self._journal.compact(states):
            self.counters["journal_errors"] += 1

    def _checkpoint(self, now: float) -> None:
        """New states for artifacts written since their last one, at most every
        CHECKPOINT_SECONDS; and a smaller journal once it has grown."""
        if now < self._next_checkpoint:
            return
        self._next_checkpoint = now + CHECKPOINT_SECONDS
        for key, pending in list(self._unsynced.items()):
            if pending:
                self._journal_state(key, self._artifacts[key])
        if self._journal is not None and self._journal.wants_compaction():
            self._compact()

    def handle(self, msg: bus.Message) -> None:
        direction = self._direction(msg.topic)
        if direction is None:
            return
        env, payload = msg.env, msg.payload
        try:
            lost = bus.parse_lost(env.get("lost"))
            unsized = bus.parse_lost_unsized(env)
            extent = bus.parse_extent(env)
            source = bus.parse_source(env)
            bus.check_transfer(env, len(payload))
            subdir = container_dir(env["container_id"])
            pid = env["pid"] if direction == "write" and env["path"] == _DEV_NULL else None
            name = file_artifact_name(direction, env["dev"], env["inode"], pid)
        except ValueError as exc:  # bus.BadFileMessage, or values that cannot name a file
            self.counters["rejected"] += 1
            self._log("rejected", f"file message refused: {exc}")
            return
        if extent is not None:
            self._extend(subdir, name, direction, env, extent)
            return
        now = self._clock()
        key, art = self._artifact(subdir, name, direction, env, now)
        self._hold(key, msg)
        self._touch(key, art, env, now)
        art.lost_unsized += unsized
        if lost:
            for start, end in lost:
                art.add_missing(start, end)
            accounted = sum(end - start for start, end in lost)
        else:
            accounted = len(payload)
            if (
                payload
                and self._replay
                and art.append
                and art.written.covers(env["off"], env["off"] + len(payload))
            ):
                self.counters["replayed_bytes_skipped"] += len(payload)
            elif payload:
                at = art.extent if art.append else env["off"]  # where it lands in the artifact
                done = self._write(key, art, env["off"], payload)
                if source is not None and done:
                    art.obtained_by(source, at, done)
        art.account_io(
            env["io_id"], env["io_len"], env["io_off"], env["off"], accounted, syscalls(env)
        )

    def _touch(self, key: _Key, art: FileArtifact, env: dict[str, Any], now: float) -> None:
        """A message about ``art`` arrived: it is open in the journal (said before any byte
        lands), notes who and when, and waits for its idle flush."""
        if key not in self._unsynced:
            self._journal_state(key, art)
        art.observe(env, now)
        self._dirty[key] = None
        self._dirty.move_to_end(key)
        if len(self._dirty) > self._max_resident:
            batch = list(itertools.islice(self._dirty, max(1, self._max_resident // 8)))
            self.counters["early_flushes"] += len(batch)
            self._flush_all(batch, retry=True)

    def _known_end(self, key: _Key, generation: Any) -> int | None:
        """How far the artifact ``key`` of inode generation ``generation`` is known to reach,
        from memory only; None when that needs the index."""
        art = self._artifacts.get(key)
        if art is not None:
            end, known = art.end, art.generation
        elif key in self._released_lines:
            rec = json.loads(self._released_lines[key])
            end, known = rec["end"], rec.get("generation")
        else:
            return None
        return None if generation and known and known != generation else end

    def _extend(
        self, subdir: str, name: str, direction: str, env: dict[str, Any], extent: int
    ) -> None:
        """The collector's announcement at stop that the artifact reaches ``extent``: what this
        writer holds short of it was lost where no message it received said so (it was killed
        or behind when the last bytes went by), and is listed missing."""
        known = self._known_end((subdir, name), env.get("generation"))
        if known is not None and known >= extent:
            return
        now = self._clock()
        key, art = self._artifact(subdir, name, direction, env, now)
        if art.end >= extent:
            if key not in self._dirty and key not in self._unsynced:
                self._artifacts.pop(key, None)  # rebuilt from its line only to look
            return
        self._touch(key, art, env, now)
        art.reach(extent)
        art.mark_uncertain()
        self.counters["tails_missing"] += 1

    def _write(self, key: _Key, art: FileArtifact, off: int, payload: bytes) -> int:
        """Put ``payload`` in place; whatever could not be written is recorded as missing.
        Returns the bytes written (from the payload's start).

        The disk budget is asked first: refused bytes are missing exactly like bytes the disk
        would not take, so the index never presents them as captured."""
        if self._budget is not None and not self._budget.allow(len(payload)):
            art.add_missing(off, off + len(payload))
            return 0
        try:
            fd = self._fd(key, art)
        except OSError as exc:
            done, error = 0, exc
        else:
            done, error = write_all(fd, payload, off, art.append)
        if error is not None:
            self.counters["write_errors"] += 1
            self._log("write_error", f"{art.path}: {error}")
            art.add_missing(off + done, off + len(payload))
        if done:
            art.wrote(off, done)
            self.counters["bytes_written"] += done
            self._unsynced[key] = pending = self._unsynced.get(key, 0) + done
            if pending >= CHECKPOINT_BYTES:
                self._journal_state(key, art)
        return done

    def _fd(self, key: _Key, art: FileArtifact) -> int:
        fd = self._fds.get(key)
        if fd is None:
            subdir, name = key
            fd = self._out.open_artifact(subdir, name, append=art.append)
            self._fds.add(key, fd)
        return fd

    # -- flushing ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Flush artifacts idle for ``idle_seconds`` (oldest first, so stop at a busy one),
        then bring the journal up to date."""
        idle = []
        for key in self._dirty:
            if now - self._artifacts[key].last_activity < self._idle:
                break
            idle.append(key)
        for start in range(0, len(idle), FLUSH_BATCH):
            self._flush_all(idle[start : start + FLUSH_BATCH], retry=True)
        self._checkpoint(now)

    def _digest(self, key: _Key, art: FileArtifact) -> tuple[int, str | None]:
        """Size and sha256 of what is actually on disk, read back through the artifact's fd."""
        try:
            size, sha256 = digest_fd(self._fd(key, art), self._max_hash_bytes)
        except OSError as exc:
            self.counters["write_errors"] += 1
            self._log("write_error", f"{art.path}: cannot hash: {exc}")
            return art.extent, None
        if sha256 is None:
            self.counters["hash_skipped"] += 1
        return size, sha256

    def _flush_all(self, keys: list[_Key], retry: bool = False) -> None:
        """Write the artifacts' index lines, in one append (one lock, one write: per line that
        was a third of a small file's cost); once they are written the artifacts are closed in
        the journal, in one append too, and released. Lines that could not be written keep
        their artifacts in memory and open in the journal, and (``retry``) are tried again
        after another idle period."""
        records = []
        for key in keys:
            self._dirty.pop(key, None)
            art = self._artifacts[key]
            art.settle()
            size, sha256 = self._digest(key, art)
            art.dirty = False
            records.append(art.record(size, sha256))
        what = f"{self._artifacts[keys[0]].path}: record" if len(keys) == 1 else "records"
        lines: list[bytes | None] = []
        written = self._index.append_all_or_count(
            records, self.counters, self._log, what, lines=lines
        )
        done = [key for key, ok in zip(keys, written, strict=True) if ok]
        for key, ok in zip(keys, written, strict=True):
            if not ok and retry:
                self._artifacts[key].last_activity = self._clock()
                self._dirty[key] = None
        if not done:
            return
        self.counters["records"] += len(done)
        paths = [self._artifacts[key].path for key in done]
        if self._journal is not None and not self._journal.closed(*paths):
            self.counters["journal_errors"] += 1
        for key, line, ok in zip(keys, lines, written, strict=True):
            if ok and line is not None:  # written: a line that is not JSON never is
                self._release(key, line)

    def close(self) -> None:
        keys = list(self._dirty)
        for start in range(0, len(keys), FLUSH_BATCH):
            self._flush_all(keys[start : start + FLUSH_BATCH])
        self._fds.close_all()
        if self._journal is not None:
            self._journal.close()

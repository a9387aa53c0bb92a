"""What `tracecap run` tells the user of a capture: the live status line and the final summary
(pure: from the collector's ``stats.`` messages and the writers' stats files)."""

from __future__ import annotations

from typing import Any

#: The kernel counts each packet it hands to the collector as a ``net`` chunk (bpf/net.bpf.h):
#: packets are events too, though not syscall ``.events``.
PACKETS = "net.chunks"


def events_and_packets(kernel: dict[str, Any]) -> tuple[int, int]:
    """(events, packets) the kernel captured; events include the packets."""
    packets = int(kernel.get(PACKETS, 0))
    return sum(v for k, v in kernel.items() if k.endswith(".events")) + packets, packets


def unseen_tail(
    last_by_epoch: dict[int, dict[str, Any]], writers: dict[str, dict[str, Any]]
) -> int:
    """Messages published at the end of an epoch that a writer never received: a subscriber
    sees a drop only as a gap before a later message, so the last ones need the collector's
    count (``published``) beside the writer's last seq of each epoch and topic."""
    missing = 0
    for writer in writers.values():
        for key, last_seq in writer.get("last_seq", {}).items():
            epoch, _, topic = str(key).partition(":")
            stats = last_by_epoch.get(int(epoch)) if epoch.isdecimal() else None
            if stats and isinstance(last_seq, int):
                published = stats.get("published", {}).get(topic, 0)
                missing += max(0, published - 1 - last_seq)
    return missing


def merge_epochs(last_by_epoch: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Counters of every collector run (epoch) added up: a restarted collector starts from 0."""
    merged: dict[str, Any] = {"kernel": {}, "collector": {}}
    for stats in last_by_epoch.values():
        for part in ("kernel", "collector"):
            for key, value in stats.get(part, {}).items():
                if isinstance(value, int):
                    merged[part][key] = merged[part].get(key, 0) + value
    return merged


def captured_bytes(stats: dict[str, Any]) -> int:
    """Bytes captured, by whoever read them: the kernel side (syscall buffers, memory, packets,
    mapping pages), and the collector from files: copy_file_range/sendfile/splice transfers
    read back, executed binaries and module files streamed whole."""
    kernel, coll = stats.get("kernel", {}), stats.get("collector", {})
    read = coll.get("readback_bytes", 0) + coll.get("file_read_bytes", 0)
    return sum(v for k, v in kernel.items() if k.endswith(".bytes")) + read


def summary_line(
    collector: dict[str, Any], writers: dict[str, dict[str, Any]], tail: int = 0
) -> str:
    """One line that says what was captured and every place something was lost. Index records
    lost (``index_errors``: a full disk, an I/O error) are among the writer errors and also
    shown alone, because they are artifacts an analyst will not find in ``index.jsonl``; so are
    ``events.jsonl`` lines lost (``events_errors``), execs and load attempts of the timeline."""
    kernel = collector.get("kernel", {})
    coll = collector.get("collector", {})

    def kernel_sum(*suffixes: str) -> int:
        return sum(v for k, v in kernel.items() if k.endswith(suffixes))

    def writer_sum(*names: str) -> int:
        return sum(int(w.get("counters", {}).get(n, 0)) for w in writers.values() for n in names)

    events, packets = events_and_packets(kernel)
    captured = captured_bytes(collector)
    # memory capture's allowances: skipped by design, and counted (only when it ran)
    mem = ""
    if "mem.skipped_events" in kernel:
        mem = (
            f", mem budget skipped {kernel['mem.skipped_events']} events "
            f"({kernel.get('mem.skipped_dumps', 0)} dumps, "
            f"{kernel.get('mem.skipped_bytes', 0)} bytes)"
        )
    # losses no range of any artifact can name: shown only when they happened
    unranged = "".join(
        f", {label} {count}"
        for label, count in (
            ("transfers lost of unknown size", coll.get("lost_unsized", 0)),
            # syscalls lost in the ring when the kernel's loss table was full
            ("syscalls lost naming no file (loss table full)", kernel_sum(".drop_table_full")),
            # msync/munmap/exit moments whose mapping could not be looked at
            ("shared mappings not looked at (memory map busy)", kernel_sum(".map_unwalked")),
        )
        if count
    )
    # not a loss: packets that reached the pcap writer after their place in time was written
    late = ""
    if any("late_packets" in w.get("counters", {}) for w in writers.values()):
        late = f", pcap packets written out of time order {writer_sum('late_packets')}"
    return (
        f"tracecap: summary: {events} events ({packets} packets), {captured} bytes "
        f"captured, {writer_sum('artifacts')} artifacts; losses: kernel ring buffer "
        f"{kernel_sum('.event_drops', '.chunk_drops')} records "
        f"({kernel_sum('.dropped_bytes')} bytes), syscall table full "
        f"{kernel_sum('.pending_full')}, collector decode errors "
        f"{coll.get('decode_errors', 0)}, bus gaps {writer_sum('gap_messages') + tail} "
        "messages, "
        f"malformed messages {writer_sum('malformed')}, writer errors "
        f"{writer_sum('write_errors', 'handler_errors', 'index_errors', 'events_errors')} "
        f"(index records lost {writer_sum('index_errors')}, events lost "
        f"{writer_sum('events_errors')}), disk budget "
        f"{writer_sum('budget_refused_bytes')} bytes refused, bus backlog full "
        f"{coll.get('bus_dropped_messages', 0)} messages ({coll.get('bus_dropped_bytes', 0)} "
        f"bytes), not read back {coll.get('readback_lost_bytes', 0)} bytes{unranged}{mem}{late}"
    )


def status_line(now: dict[str, Any], before: dict[str, Any], seconds: float, artifacts: int) -> str:
    """One terminal line: event rate (packets included), bytes, artifacts and losses so far."""
    kernel, prev = now.get("kernel", {}), before.get("kernel", {})
    events, _ = events_and_packets(kernel)
    events_before, _ = events_and_packets(prev)
    rate = (events - events_before) / seconds if seconds > 0 else 0.0
    captured = captured_bytes(now)
    lost = sum(v for k, v in kernel.items() if k.endswith(("event_drops", "chunk_drops")))
    return (
        f"tracecap: {rate:,.0f} events/s, {captured / 1e6:,.1f} MB captured, "
        f"{artifacts} artifacts, {lost} records lost"
    )

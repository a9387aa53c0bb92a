"""What `tracecap run` reports: the summary line, the live status line, counters added up over
collector restarts, and messages lost at the very end."""

from tracecap.frontend.summary import merge_epochs, status_line, summary_line, unseen_tail


def test_summary_counts_every_loss():
    collector = {
        "kernel": {
            "write.events": 3,
            "write.bytes": 100,
            "write.event_drops": 1,
            "write.chunk_drops": 2,
            "write.dropped_bytes": 50,
            "write.pending_full": 4,
            "read.events": 1,
            "read.bytes": 5,
        },
        "collector": {
            "decode_errors": 6,
            "bus_dropped_messages": 2,
            "bus_dropped_bytes": 9,
            "readback_bytes": 1000,
            "file_read_bytes": 20000,
            "readback_lost_bytes": 10,
        },
    }
    writers = {
        "writer-file": {
            "counters": {
                "artifacts": 2,
                "gap_messages": 7,
                "malformed": 8,
                "write_errors": 1,
                "handler_errors": 1,
                "index_errors": 1,
            }
        },
        "writer-events": {"counters": {"events_errors": 2}},
    }
    assert summary_line(collector, writers) == (
        "tracecap: summary: 4 events (0 packets), 21105 bytes captured, 2 artifacts; losses: "
        "kernel ring buffer 3 records (50 bytes), syscall table full 4, collector decode errors "
        "6, bus gaps 7 messages, malformed messages 8, writer errors 5 (index records lost 1, "
        "events lost 2), disk budget 0 bytes refused, bus backlog full 2 messages (9 bytes), "
        "not read back 10 bytes"
    )


def test_packets_are_events_in_the_summary_and_the_status_line():
    # the kernel counts packets as net chunks, not as .events
    collector = {
        "kernel": {"net.chunks": 5, "net.bytes": 420, "net.chunk_drops": 1, "exec.events": 2},
        "collector": {},
    }
    line = summary_line(collector, {})
    assert line.startswith("tracecap: summary: 7 events (5 packets), 420 bytes captured, ")
    assert "kernel ring buffer 1 records" in line
    before = {"kernel": {"net.chunks": 1}}
    now = {"kernel": {"net.chunks": 201, "exec.events": 100}}
    assert status_line(now, before, 2.0, 0).startswith("tracecap: 150 events/s, ")


def test_summary_says_what_the_mem_allowances_skipped():
    kernel = {"mem.events": 70, "mem.skipped_events": 900, "mem.skipped_dumps": 910,
              "mem.skipped_bytes": 910 << 16}  # fmt: skip
    line = summary_line({"kernel": kernel, "collector": {}}, {})
    assert line.endswith(", mem budget skipped 900 events (910 dumps, 59637760 bytes)")
    assert "mem budget" not in summary_line({"kernel": {"write.events": 1}, "collector": {}}, {})


def test_summary_says_how_many_transfers_were_lost_of_unknown_size():
    line = summary_line({"kernel": {}, "collector": {"lost_unsized": 3}}, {})
    assert "not read back 0 bytes, transfers lost of unknown size 3" in line
    assert "unknown size" not in summary_line({"kernel": {}, "collector": {"lost_unsized": 0}}, {})


def test_summary_says_how_many_lost_syscalls_no_file_was_named_for():
    kernel = {"write.drop_table_full": 4, "read.drop_table_full": 1}
    line = summary_line({"kernel": kernel, "collector": {}}, {})
    assert line.endswith("not read back 0 bytes, syscalls lost naming no file (loss table full) 5")
    assert "loss table" not in summary_line({"kernel": {"write.drop_table_full": 0}}, {})


def test_summary_says_how_many_shared_mappings_could_not_be_looked_at():
    line = summary_line({"kernel": {"write.map_unwalked": 2}, "collector": {}}, {})
    assert line.endswith("not read back 0 bytes, shared mappings not looked at (memory map busy) 2")
    assert "mappings not" not in summary_line({"kernel": {"write.map_unwalked": 0}}, {})


def test_status_line_rate_bytes_artifacts_losses():
    before = {"kernel": {"write.events": 100, "write.bytes": 0}}
    now = {"kernel": {"write.events": 300, "read.events": 100, "write.bytes": 2_500_000,
                      "write.chunk_drops": 2, "net.event_drops": 1}}  # fmt: skip
    assert status_line(now, before, 2.0, 7) == (
        "tracecap: 150 events/s, 2.5 MB captured, 7 artifacts, 3 records lost"
    )
    # and what the collector read from files: transfers read back, binaries streamed
    now["collector"] = {"readback_bytes": 400_000, "file_read_bytes": 1_100_000}
    assert status_line(now, before, 2.0, 7).startswith("tracecap: 150 events/s, 4.0 MB captured")


def test_a_restarted_collector_adds_to_the_totals():
    first = {"kernel": {"write.events": 5, "write.chunk_drops": 1}, "collector": {"messages": 9}}
    second = {"kernel": {"write.events": 2}, "collector": {"messages": 3, "note": "x"}}
    assert merge_epochs({1: first, 2: second}) == {
        "kernel": {"write.events": 7, "write.chunk_drops": 1},
        "collector": {"messages": 12},
    }


def test_messages_dropped_at_the_very_end_are_counted_from_the_collectors_tally():
    stats = {7: {"published": {"file.write.": 100, "stats.": 50}}, 8: {"published": {}}}
    writers = {"writer-file": {"last_seq": {"7:file.write.": 89, "9:file.write.": 3}}}
    assert unseen_tail(stats, writers) == 10  # seq 90..99 never arrived


def test_summary_says_how_many_packets_were_written_out_of_time_order():
    pcap = {"counters": {"late_packets": 3, "reorder_forced": 1, "artifacts": 1}}
    line = summary_line({"kernel": {}, "collector": {}}, {"pcap": pcap})
    assert line.endswith(", pcap packets written out of time order 3")
    assert "time order" not in summary_line({"kernel": {}, "collector": {}}, {"file": {}})

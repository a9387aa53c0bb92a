"""Writers' stats files, read by root from a directory the writers' user owns."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tracecap.stats import MAX_STATS_BYTES, StatsFile, read_writer_stats, stats_file_name


def test_stats_files_round_trip(tmp_path: Path) -> None:
    stats = StatsFile(str(tmp_path), "file")
    stats.write({"counters": {"artifacts": 3}})
    assert stats.read() == {"counters": {"artifacts": 3}}
    stats.close()
    assert read_writer_stats(str(tmp_path)) == {"writer-file": {"counters": {"artifacts": 3}}}


def test_temporaries_and_other_names_are_not_stats_files() -> None:
    assert stats_file_name("writer-file.json")
    assert not stats_file_name(".writer-file.json.123.tmp")
    assert not stats_file_name("notes.txt")


def test_a_planted_fifo_neither_hangs_nor_vanishes(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "writer-file.json")
    started = time.monotonic()
    found = read_writer_stats(str(tmp_path))
    assert time.monotonic() - started < 5
    assert found == {"writer-file": {"unreadable": "writer-file.json is not a regular file"}}
    stats = StatsFile(str(tmp_path), "file")
    assert stats.read() is None
    stats.close()


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"counters": {"root": 1}}))
    stats_dir = tmp_path / "stats"
    stats_dir.mkdir()
    (stats_dir / "writer-file.json").symlink_to(secret)
    assert read_writer_stats(str(stats_dir)) == {
        "writer-file": {"unreadable": "a symlink (not followed)"}
    }


def test_oversized_and_malformed_files_are_reported(tmp_path: Path) -> None:
    with open(tmp_path / "writer-big.json", "wb") as f:
        f.truncate(MAX_STATS_BYTES + 1)
    (tmp_path / "writer-bad.json").write_text("{")
    (tmp_path / "writer-list.json").write_text("[]")
    found = read_writer_stats(str(tmp_path))
    assert found["writer-big"] == {
        "unreadable": f"writer-big.json is {MAX_STATS_BYTES + 1} bytes, more than {MAX_STATS_BYTES}"
    }
    assert found["writer-bad"]["unreadable"].startswith("not JSON: ")
    assert found["writer-list"] == {"unreadable": "not a JSON object"}


def test_a_missing_or_symlinked_stats_dir_reads_as_no_writers(tmp_path: Path) -> None:
    assert read_writer_stats(str(tmp_path / "missing")) == {}
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "writer-file.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert read_writer_stats(str(tmp_path / "link")) == {}

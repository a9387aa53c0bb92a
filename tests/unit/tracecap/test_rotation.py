"""Rotation: when a file is rotated, how segments are named, in which order they are read,
which are removed; and the option forms that ask for it."""

from __future__ import annotations

import errno
import gzip
import os
from pathlib import Path

import pytest

from tracecap import options, rotation, segments
from tracecap.rotation import Rotation


def test_names_keep_the_suffix_last():
    assert rotation.segment_name("index.jsonl", 1) == "index.000001.jsonl"
    assert rotation.segment_name("single.pcap", 12, compressed=True) == "single.000012.pcap.gz"
    assert rotation.segment_name("events", 3) == "events.000003"
    assert rotation.segment_name(".hidden", 3) == ".hidden.000003"
    assert rotation.segment_name("a.b.json", 1000000) == "a.b.1000000.json"


@pytest.mark.parametrize("base", ["index.jsonl", "single.pcap", "events", "a.b.json"])
def test_number_of_a_name_is_the_inverse(base: str):
    for number in (1, 999999, 1000000):
        for compressed in (False, True):
            name = rotation.segment_name(base, number, compressed)
            assert rotation.segment_number(base, name) == (number, compressed)
    assert rotation.segment_number(base, base) is None


def test_other_names_are_no_segments():
    for name in ("index.1.jsonl", "index.00001.jsonl", "index.000001.json", "xindex.000001.jsonl",
                 "index.000001.jsonl.bz2", "index.jsonl.000001", "index.00000a.jsonl"):  # fmt: skip
        assert rotation.segment_number("index.jsonl", name) is None, name


def test_order_is_by_number_then_the_live_file():
    names = ["index.jsonl", "index.000010.jsonl.gz", "index.000002.jsonl", "other",
             "index.000009.jsonl.gz", "index.000001.jsonl"]  # fmt: skip
    assert rotation.ordered_segments("index.jsonl", names) == [
        "index.000001.jsonl", "index.000002.jsonl", "index.000009.jsonl.gz",
        "index.000010.jsonl.gz", "index.jsonl",
    ]  # fmt: skip
    assert rotation.ordered_segments("index.jsonl", ["index.000001.jsonl"]) == [
        "index.000001.jsonl"
    ]


def test_a_segment_being_compressed_is_read_plain():
    names = ["e.000001.json", "e.000001.json.gz", "e.json"]
    assert rotation.ordered_segments("e.json", names) == ["e.000001.json", "e.json"]
    assert rotation.ordered_segments("e.json", names[1:]) == ["e.000001.json.gz", "e.json"]


def test_numbers_are_never_reused():
    assert rotation.next_number("i.jsonl", []) == 1
    assert rotation.next_number("i.jsonl", ["i.jsonl", "i.000007.jsonl.gz"]) == 8


@pytest.mark.parametrize(
    ("size", "incoming", "limit", "rotate"),
    [
        (0, 10, 100, False),  # empty: never
        (0, 500, 100, False),  # a record larger than the limit goes alone
        (90, 10, 100, False),  # exactly the limit fits
        (91, 10, 100, True),
        (500, 1, 100, True),
    ],
)
def test_due(size: int, incoming: int, limit: int, rotate: bool):
    assert rotation.due(size, incoming, limit) is rotate


def test_expired_keeps_the_newest_count():
    names = ["p.pcap", "p.000001.pcap", "p.000002.pcap.gz", "p.000002.pcap", "p.000003.pcap"]
    assert rotation.expired("p.pcap", names, None) == []
    assert rotation.expired("p.pcap", names, 3) == []
    assert rotation.expired("p.pcap", names, 1) == [
        "p.000001.pcap", "p.000002.pcap", "p.000002.pcap.gz",
    ]  # fmt: skip


def test_sizes_and_counts():
    assert rotation.parse_size("100mb") == 100 << 20
    assert rotation.parse_size("1KB") == 1024
    assert rotation.parse_size("2gb") == 2 << 30
    for bad in ("0kb", "100", "1.5mb", "-1mb", "mb", "1tb", ""):
        assert rotation.parse_size(bad) is None, bad
    assert rotation.parse_count("5") == 5
    for bad in ("0", "-1", "x", ""):
        assert rotation.parse_count(bad) is None


# --- options ----------------------------------------------------------------------------------


def test_output_file_and_its_rotation():
    config = options.parse_args(
        ["--output", "json:/var/log/t/events.json",
         "--output", "option:rotate-size=100mb,rotate-count=5,rotate-compress"]
    )  # fmt: skip
    assert (config.output, config.output_file) == ("json", "/var/log/t/events.json")
    assert config.output_rotation == Rotation(100 << 20, 5, True)
    split = options.parse_args(
        ["-o", "option:rotate-size=1mb", "-ojson:/e", "--output=option:parse-arguments"]
    )
    assert split.output_rotation == Rotation(1 << 20, None, False)
    assert options.parse_args(["--output", "json"]).output_file is None


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--output", "json:"], "invalid --output events file"),
        (["--output", "json:rel/x"], "invalid --output events file"),
        (["--output", "json:/a/../x"], "invalid --output events file"),
        (["--output", "json:/a/"], "invalid --output events file"),
        (["--output", "json:/a", "--output", "json:/b"], "conflicting --output events file"),
        (["--output", "json:/a", "--output", "none"], "conflicting --output format"),
        (["--output", "option:rotate-size=1mb"], "needs --output json:/path/file"),
        (["--output", "json:/a", "--output", "option:rotate-count=2"], "needs option:rotate-size"),
        (["--output", "json:/a", "--output", "option:rotate-size=1"], "rotate-size=1"),
        (["--output", "json:/a", "--output", "option:rotate=1mb"], "rotate=1mb"),
        (["--output", "xml:/a"], "invalid --output value"),
    ],
)
def test_bad_output_forms_name_the_token(argv: list[str], says: str):
    with pytest.raises(options.OptionError, match=says):
        options.parse_args(argv)


def test_capture_rotation_forms():
    config = options.parse_args(
        ["-c", "pcap", "-c", "pcap-rotate:10mb,4", "-c", "index-rotate:64kb,compress"]
    )
    assert config.pcap.rotation == Rotation(10 << 20, 4, False)
    assert config.index_rotation == Rotation(64 << 10, None, True)
    assert options.parse_args(["-c", "pcap"]).pcap.rotation is None
    assert options.parse_args([]).index_rotation is None


@pytest.mark.parametrize(
    "token", ["pcap-rotate:", "pcap-rotate:10", "pcap-rotate:1mb,0", "pcap-rotate:1mb,2,3",
              "pcap-rotate:1mb,gzip", "pcap-rotate:1mb,compress,compress", "index-rotate:,2"],
)  # fmt: skip
def test_bad_capture_rotation(token: str):
    with pytest.raises(options.OptionError, match="invalid rotation"):
        options.parse_args(["-c", "pcap", "-c", token])


def test_pcap_rotation_needs_packet_capture():
    with pytest.raises(options.OptionError, match="needs --capture network"):
        options.parse_args(["-c", "pcap-rotate:1mb"])


# --- the I/O through a directory fd -----------------------------------------------------------


def _dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def _open_live(dir_fd: int, name: str) -> int:
    return os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640,
                   dir_fd=dir_fd)  # fmt: skip


def test_segmented_file_rotates_whole_lines_and_reads_back_in_order(tmp_path: Path):
    rotated: list[segments.Rotated] = []
    f = segments.SegmentedFile(
        _dir(tmp_path), "e.json", Rotation(1024, None, True), _open_live, rotated.append
    )
    lines = [b'{"n": %d, "pad": "%s"}\n' % (n, b"x" * (n % 50)) for n in range(500)]
    for line in lines:
        f.write(line)
    f.close()
    names = sorted(os.listdir(tmp_path))
    assert len(rotated) == f.rotations == len(names) - 1 > 10
    assert all(name.endswith(".json.gz") for name in names if name != "e.json")
    for name in names:  # every segment holds whole lines, at most the size unless one line
        data = (tmp_path / name).read_bytes()
        data = gzip.decompress(data) if name.endswith(".gz") else data
        assert data.endswith(b"\n") and len(data) <= 1024
    fd = _dir(tmp_path)
    try:
        assert [line for _, line in segments.iter_lines(fd, "e.json")] == lines
    finally:
        os.close(fd)
    assert [r.number for r in rotated] == list(range(1, len(rotated) + 1))


def test_count_removes_the_oldest_and_only_ours(tmp_path: Path):
    (tmp_path / "e.000001.json").symlink_to("/etc/passwd")  # not a file of ours: kept
    f = segments.SegmentedFile(_dir(tmp_path), "e.json", Rotation(1024, 2), _open_live)
    for n in range(100):
        f.write(b"%04d%s\n" % (n, b"y" * 95))
    f.close()
    names = sorted(os.listdir(tmp_path))
    numbers = sorted(rotation.closed_segments("e.json", names))
    assert numbers[-2:] == [9, 10] and len(numbers) == 3  # the planted link and two of ours
    assert (tmp_path / "e.000001.json").is_symlink()
    assert b"0099" in (tmp_path / "e.json").read_bytes()


def test_reading_refuses_a_planted_fifo(tmp_path: Path):
    os.mkfifo(tmp_path / "i.000001.jsonl")
    fd = _dir(tmp_path)
    try:
        with pytest.raises(OSError, match="not a regular file"):
            list(segments.iter_lines(fd, "i.jsonl"))
    finally:
        os.close(fd)


def test_a_failed_rotation_keeps_writing_to_the_live_file(tmp_path: Path, monkeypatch):
    def no_rename(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EROFS, "read-only file system")

    monkeypatch.setattr(os, "rename", no_rename)
    problems: list[str] = []
    f = segments.SegmentedFile(_dir(tmp_path), "e.json", Rotation(1024), _open_live,
                               on_problem=problems.append)  # fmt: skip
    lines = [b"%03d%s\n" % (n, b"r" * 60) for n in range(100)]
    for line in lines:
        f.write(line)
    f.close()
    assert (tmp_path / "e.json").read_bytes() == b"".join(lines)
    assert f.rotations == 0 and f.failed_rotations > 50
    assert len(problems) == f.failed_rotations.bit_length()  # 1, 2, 4, ...: not every write


def test_the_live_file_number_comes_from_its_rotation_record():
    record = rotation.rotation_record("index.jsonl", "index.000004.jsonl", 4, [], 1)
    assert rotation.live_number("index.jsonl", record) == 5
    assert rotation.live_number("index.jsonl", {"kind": "write", "path": "a"}) == 1
    assert rotation.live_number("index.jsonl", None) == 1
    # another file's rotation (a pcap's record in the index), or a malformed one
    assert rotation.live_number("index.jsonl", dict(record, file="pcap/single.pcap")) == 1
    for segment in ("4", True, 0, -2, None):
        assert rotation.live_number("index.jsonl", dict(record, segment=segment)) == 1

"""The pure parts of scripts/bench_workloads.py: the rate ladder, ratios and their formatting,
the configuration without its output root, and the loss sums read from a run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench  # noqa: E402
import bench_workloads as bw  # noqa: E402


def fake_trial(lossless_up_to: float, speed_limit: float, log: list[float | None]):
    """A traced workload that cannot run faster than ``speed_limit`` and loses data above
    ``lossless_up_to``."""

    def trial(rate: float | None) -> bw.Step:
        log.append(rate)
        achieved = speed_limit if rate is None else min(rate, speed_limit)
        return bw.Step(rate, achieved, achieved <= lossless_up_to)

    return trial


def test_unpaced_lossless_ends_the_search() -> None:
    tried: list[float | None] = []
    steps = bw.ladder_search(10_000, fake_trial(20_000, 9_000, tried))
    assert tried == [None]
    assert bw.best_zero_loss(steps) == bw.Step(None, 9_000, True)


def test_ladder_descends_to_the_first_lossless_rung_then_refines_once() -> None:
    tried: list[float | None] = []
    steps = bw.ladder_search(10_000, fake_trial(6_000, 9_000, tried))
    # 10,000 is above the unpaced run's lossy 9,000: skipped; 8,500 and 7,000 lose; 5,500 passes;
    # the midpoint of 5,500 and 7,000 follows.
    assert tried == [None, 8_500, 7_000, 5_500, 6_250]
    assert bw.best_zero_loss(steps) == bw.Step(5_500, 5_500, True)
    assert bw.lossy_bound(steps) == 6_250


def test_refinement_that_passes_raises_the_best() -> None:
    tried: list[float | None] = []
    steps = bw.ladder_search(10_000, fake_trial(6_500, 9_000, tried), refine=2)
    assert tried == [None, 8_500, 7_000, 5_500, 6_250, 6_625]
    assert bw.best_zero_loss(steps).achieved == 6_250


def test_no_lossless_rate_at_all() -> None:
    tried: list[float | None] = []
    steps = bw.ladder_search(10_000, fake_trial(0, 9_000, tried))
    assert len(tried) == 1 + len(bw.LADDER) - 1  # every rung below the unpaced rate
    assert bw.best_zero_loss(steps) is None


def test_lossy_bound_takes_the_target_when_a_burst_ran_faster() -> None:
    steps = [bw.Step(None, 9_000, False), bw.Step(5_000, 5_400, False), bw.Step(4_000, 4_000, True)]
    assert bw.lossy_bound(steps) == 5_000
    assert bw.lossy_bound(steps[2:]) == float("inf")


def test_ratios_pair_rounds_and_skip_zero_denominators() -> None:
    assert bw.ratios([2.0, 3.0, 4.0], [1.0, 2.0, 0.0]) == [2.0, 1.5]
    with pytest.raises(ValueError):
        bw.ratios([1.0], [1.0, 2.0])


def test_median_and_range_on_one_line() -> None:
    assert bw.fmt_med_range([1.3, 1.1, 1.2], bench.fmt_ratio) == "1.20x (1.10x .. 1.30x, n=3)"
    assert bw.fmt_med_range([0.9], bench.fmt_ratio) == "0.90x (1 run)"
    assert bw.fmt_med_range([], bench.fmt_ratio) == "n/a"


def test_config_without_dir_keeps_every_other_option() -> None:
    text = bw.CONFIG.read_text()
    stripped = bw.config_without_dir(text)
    assert "dir:" not in stripped.replace("# ", "").split("--capture write")[1]
    assert "--capture limit:2gb --capture floor:1gb" in stripped
    assert bw.config_without_dir("--capture  dir:/x --capture write\n") == " --capture write\n"


def test_missing_bytes_and_losses() -> None:
    index = [
        {"source_path": "/t/a", "missing": [[0, 10], [20, 25]]},
        {"source_path": "/u/b", "missing": [[0, 100]]},
        {"source_path": "/t/c"},
    ]
    assert bw.missing_bytes(index) == 115
    assert bw.missing_bytes(index, "/t/") == 15
    summary = bench.parse_summary(
        "tracecap: summary: 5 events (0 packets), 9 bytes captured, 1 artifacts; losses: kernel "
        "ring buffer 2 records (300 bytes), syscall table full 0, collector decode errors 0, "
        "bus gaps 1 messages, malformed messages 0, writer errors 0 (index records lost 0, "
        "events lost 0), disk budget 7 bytes refused, bus backlog full 0 messages (0 bytes), "
        "not read back 11 bytes"
    )
    assert summary["budget_refused"] == 7
    assert summary["not_read_back"] == 11
    assert bw.losses(summary) == 2 + 300 + 1 + 7 + 11


def test_nonzero_losses_name_the_stage() -> None:
    assert bw.nonzero_losses({"ring_records": 0, "bus_gaps": 0}) == "none"
    assert (
        bw.nonzero_losses({"ring_bytes": 4096, "not_read_back": 1_000_000, "events": 9})
        == "ring_bytes 4,096, not_read_back 1,000,000"
    )


def test_missing_by_path_sums_per_path_largest_first() -> None:
    index = [
        {"source_path": "/dev/null", "missing": [[0, 100]]},
        {"source_path": "/t/a", "missing": [[0, 300]]},
        {"source_path": "/dev/null", "missing": [[500, 800]]},
        {"path": "host/x", "missing": [[0, 5]]},
        {"source_path": "/t/b", "missing": []},
    ]
    assert bw.missing_by_path(index) == "/dev/null 400 B, /t/a 300 B, host/x 5 B"
    assert bw.missing_by_path(index, top=1) == "/dev/null 400 B"
    assert bw.missing_by_path([]) == "none"

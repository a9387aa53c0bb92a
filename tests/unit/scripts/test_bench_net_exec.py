"""The pure parts of scripts/bench_net_exec.py's packet search: the next rate of the
bisection, when it stops, and what its ends and ratio say."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_net_exec as bn  # noqa: E402


def capture(lossless_up_to: float, sender_max: float, log: list[float | None]):
    """A capture that loses packets above ``lossless_up_to`` fed by a sender that cannot go
    faster than ``sender_max``."""

    def trial(rate: float | None) -> bn.Trial:
        log.append(rate)
        reached = sender_max if rate is None else min(rate, sender_max)
        return bn.Trial(rate, reached, reached <= lossless_up_to)

    return trial


def test_unpaced_lossless_ends_the_search_the_sender_is_the_bound() -> None:
    asked: list[float | None] = []
    trials = bn.search(capture(200_000, 100_000, asked))
    assert asked == [None]
    assert bn.lowest_lossy(trials) is None
    assert "the sender is the bound" in bn.threshold_text(trials)


def test_halves_until_lossless_then_bisects_to_within_five_percent() -> None:
    asked: list[float | None] = []
    trials = bn.search(capture(30_000, 100_000, asked), max_trials=20)
    assert asked[:3] == [None, 50_000, 25_000]
    lo, hi = bn.highest_lossless(trials), bn.lowest_lossy(trials)
    assert lo is not None and hi is not None
    assert lo.reached <= 30_000 < hi.reached <= lo.reached * 1.05
    # bisection: every rate after the first lossless one is a midpoint of the bounds so far
    assert asked[3] == (25_000 + 50_000) / 2


def test_bounds_are_reached_rates_not_asked_ones() -> None:
    # the sender reaches only 80% of what it is asked: the bisection works on what it reached
    def trial(rate: float | None) -> bn.Trial:
        reached = 60_000 if rate is None else 0.8 * rate
        return bn.Trial(rate, reached, reached <= 20_000)

    trials = bn.search(trial, max_trials=20)
    lo, hi = bn.highest_lossless(trials), bn.lowest_lossy(trials)
    assert lo is not None and hi is not None
    assert lo.reached <= 20_000 < hi.reached <= lo.reached * 1.05
    assert trials[1].asked == 30_000  # half the lowest lossy REACHED rate


def test_stops_when_the_sender_cannot_reach_the_midpoint() -> None:
    # asked anything, the sender reaches at most 40,000: the midpoint is asked once, not again
    asked: list[float | None] = []
    trials = bn.search(capture(45_000, 40_000, asked), max_trials=20)
    assert asked == [None]
    calls: list[float | None] = []

    def stuck(rate: float | None) -> bn.Trial:
        calls.append(rate)
        if rate is None:
            return bn.Trial(None, 100_000, False)
        return bn.Trial(rate, min(rate, 40_000), True)

    trials = bn.search(stuck, max_trials=20)
    assert calls == [None, 50_000, 87_500]  # 70,000 asked as 87,500: the sender lags 1.25x
    assert bn.next_rate(trials) is None


def test_a_lossless_rate_above_a_lossy_one_stops_and_is_said() -> None:
    trials = [bn.Trial(None, 100_000, False), bn.Trial(50_000, 50_000, False),
              bn.Trial(25_000, 60_000, True)]  # fmt: skip
    assert bn.next_rate(trials) is None
    assert "NOT MONOTONE" in bn.threshold_text(trials)


def test_gives_up_under_the_floor() -> None:
    trials = [bn.Trial(None, 1_500, False)]
    assert bn.next_rate(trials) is None
    assert bn.threshold_text(trials) == "lossless at none, lossy at 1,500/s"


def test_at_most_max_trials() -> None:
    asked: list[float | None] = []
    bn.search(capture(30_000, 100_000, asked), max_trials=4)
    assert len(asked) == 4


def test_ratio_texts() -> None:
    td = [bn.Trial(None, 100_000, True)]
    tc = [bn.Trial(None, 100_000, False), bn.Trial(50_000, 50_000, True),
          bn.Trial(75_000, 75_000, False)]  # fmt: skip
    assert bn.ratio_text(tc, td) == (
        "0.50x (tracecap lossy at 0.75x; tcpdump lost nothing: the sender bounds it)"
    )
    td_lossy = [bn.Trial(None, 120_000, False), bn.Trial(60_000, 100_000, True)]
    assert bn.ratio_text(tc, td_lossy) == "0.50x (tracecap lossy at 0.75x)"
    assert bn.ratio_text(td, td).startswith("1.00x of the sender's rates (neither lost")
    assert bn.ratio_text(tc[1:2], td_lossy).startswith("at least 0.50x (tracecap lost nothing")
    assert bn.ratio_text([bn.Trial(None, 1_500, False)], td).startswith("not comparable")


def test_pinning_needs_both_cpus() -> None:
    sender, cap = bn.pinning()
    if bn.os.sched_getaffinity(0) >= bn.SENDER_CPUS | bn.CAPTURE_CPUS:
        assert (sender, cap) == (bn.SENDER_CPUS, bn.CAPTURE_CPUS)
    else:
        assert (sender, cap) == (None, None)


def test_tcpdump_gets_tracecaps_packet_ring() -> None:
    assert bn.packet_ring_kib(128) == 128 << 10
    assert bn.packet_ring_kib(1) == bn.PACKET_RING_BYTES >> 10  # the packet ring's floor


def test_settled_cpu_waits_until_the_tree_is_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catching up counts: the figure is taken once an interval adds under 2% of a CPU."""
    spent = iter([1.0, 1.4, 1.6, 1.605, 9.0])
    monkeypatch.setattr(bn, "tree_cpu", lambda root: next(spent))
    monkeypatch.setattr(bn.time, "sleep", lambda s: None)
    assert bn.settled_cpu(123, quiet_s=0.5) == 1.605


def test_settled_cpu_gives_up_at_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tree that never goes idle: the last figure at the limit."""
    spent = iter(range(0, 1000, 10))
    monkeypatch.setattr(bn, "tree_cpu", lambda root: float(next(spent)))
    monkeypatch.setattr(bn.time, "sleep", lambda s: None)
    ticks = iter([0.0, 1.0, 2.0, 100.0])
    monkeypatch.setattr(bn.time, "monotonic", lambda: next(ticks))
    assert bn.settled_cpu(123, quiet_s=0.5, limit_s=60.0) == 20.0

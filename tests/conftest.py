"""Test-wide rules.

With ``CI`` set, a test that skips fails instead: an eBPF test that cannot run (not root, no
BPF object, no BTF) or one whose tool is missing (tshark, bpftool) means a broken machine,
and a silent skip would let it pass. Off CI, skips say why.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        what = "eBPF test" if item.get_closest_marker("ebpf") else "test"
        report.longrepr = f"{what} skipped while CI is set (skips are failures in CI): {reason}"

"""Test-wide rules.

With ``CI`` set, an eBPF test that skips (not root, no BPF object, no BTF) fails instead: the
end-to-end tests are the point of CI, and a silent skip would let a broken machine pass.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and item.get_closest_marker("ebpf"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"eBPF test skipped while CI is set (skips are failures in CI): {reason}"

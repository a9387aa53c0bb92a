"""Real container runtimes (tests/support/runtimes.py): the cgroup each puts a container in on
this machine, as tests/unit/collector/cgroup_paths.txt records them."""

from __future__ import annotations

import pytest

from tests.support.runtimes import Runtime

pytestmark = pytest.mark.ebpf

LAYOUT = {
    "podman": "/libpod_parent/libpod-{id}",
    "docker": "/docker/{id}",
    "containerd": "/tctest/{id}",
}


def test_each_runtime_runs_a_container_in_its_cgroup(runtime: Runtime) -> None:
    c = runtime.run(["/bin/sh", "-c", "grep ^0:: /proc/self/cgroup"])
    assert c.stdout.strip() == "0::" + LAYOUT[runtime.name].format(id=c.id)

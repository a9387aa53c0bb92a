"""The kernel's classification of new cgroups (bpf/containers.bpf.h at `cgroup_mkdir`) against the
collector's (collector/cgroup_rules.py): every path the unit tests name, and every real path the
runtimes made (tests/unit/collector/cgroup_paths.txt), made on the real cgroup2 tree after the
program is attached, must get the same container id from both, and be in the scope set exactly
when its container is selected."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest

from collector.cgroup_rules import classify_path, load_rules
from collector.containers import CgroupResolver
from collector.probes import BpfMap, KernelProbes
from tests.unit.collector.test_cgroup_rules import real_paths
from tests.unit.collector.test_containers import DOCKER, NEGATIVE, POSITIVE

pytestmark = pytest.mark.ebpf

NO_UID = 0xFFFFFFFF
USER_RULES = "container garden-{id}\n"
RULES = load_rules(USER_RULES)


@pytest.fixture
def probes() -> Iterator[KernelProbes]:
    from tracecap.options import parse_args

    config = parse_args(["--capture", "exec", "--scope", f"container={DOCKER[:12]}"])
    p = KernelProbes(config, [], NO_UID)
    try:
        p.set_cgroup_rules(RULES, (DOCKER[:12],))
        p.put_cgroup_states(
            CgroupResolver(rules=RULES).states(), lambda c: c.startswith(DOCKER[:12])
        )
        p.attach()
        yield p
    finally:
        p.close()


def _paths() -> list[str]:
    paths = [p for p, _ in POSITIVE] + list(NEGATIVE) + [p for p, _ in real_paths()]
    paths += [f"/x.slice/garden-{DOCKER}", f"/a/{DOCKER}" + "x" * 70, f"/a/{'k' * 120}/{DOCKER}"]
    return sorted({"/" + p.strip("/") for p in paths if p.strip("/")})


def test_the_kernel_classifies_new_cgroups_as_the_collector_does(probes, make_cgroup) -> None:
    made = [(rel, make_cgroup(rel)) for rel in _paths()]
    wrong = []
    for rel, path in made:
        # every ancestor the test made was made after attach too: the kernel saw them all
        ino = os.stat(path).st_ino
        expected = classify_path(rel, RULES).container_id
        got = probes.cgroup_container(ino)
        want_scope = bool(expected) and expected.startswith(DOCKER[:12])
        if got != expected or _in_scope(probes, ino) != want_scope:
            wrong.append((rel, expected, got, _in_scope(probes, ino)))
    assert not wrong, wrong


def _in_scope(probes: KernelProbes, ino: int) -> bool:
    return probes._obj.lookup(BpfMap.SCOPE_CGROUPS, struct.pack("<Q", ino), 1) is not None


def test_a_removed_cgroup_leaves_the_scope_and_keeps_its_container(probes, make_cgroup) -> None:
    """Its events may still be in the rings when it is gone: they are still attributed."""
    path = make_cgroup(f"/tctest-gone/{DOCKER}")
    ino = os.stat(path).st_ino
    assert probes.cgroup_container(ino) == DOCKER and _in_scope(probes, ino)
    path.rmdir()
    assert probes.cgroup_container(ino) == DOCKER and not _in_scope(probes, ino)

"""Container identity on the real cgroup2 tree: directories named as each runtime names them, and a
process moved into one, in its own pid, mount and uts namespaces, as a container's would be.

No container engine runs here, and none is needed: the kernel only knows cgroups, and the runtimes
only name them. Every directory this file creates is removed again, whatever happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from collector.containers import (
    CgroupResolver,
    container_id_from_path,
    path_by_handle,
    unified_path_from_proc,
)
from tests.support.pipeline import hex64

pytestmark = pytest.mark.ebpf


def pod_uid() -> str:
    return str(uuid.uuid4())


def runtime_paths() -> list[tuple[str, str | None]]:
    """(path, expected container id) for every runtime's naming, with fresh ids."""
    d, c, o, p, k, n, x = (hex64() for _ in range(7))
    uid = pod_uid()
    uid_ = uid.replace("-", "_")
    pod_slice = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"
    return [
        (f"/system.slice/docker-{d}.scope", d),
        (f"/system.slice/docker-{d}.scope/init.scope", d),
        (f"/docker/{x}", x),
        (f"{pod_slice}/cri-containerd-{c}.scope", c),
        (f"{pod_slice}/crio-{o}.scope", o),
        (f"{pod_slice}/crio-conmon-{o}.scope", None),
        (f"/kubepods/besteffort/pod{uid}/{k}", k),
        (f"/machine.slice/libpod-{p}.scope", p),
        (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{n}.scope", n),
        (f"/libpod_parent/libpod-{n}", n),
        (f"/default/{c}", c),
    ]


def test_every_runtime_naming_resolves_from_the_cgroup_id(make_cgroup, cgroup_root: Path) -> None:
    made = [(make_cgroup(rel), rel, cid) for rel, cid in runtime_paths()]
    resolver = CgroupResolver()
    assert Path(resolver.root or "") == cgroup_root
    for path, rel, cid in made:
        ino = os.stat(path).st_ino
        assert resolver.path_of(ino) == rel
        assert resolver.container_of(ino) == (cid or ""), rel
    listed = {ino: st.container_id for ino, st in resolver.states() if st.container_id}
    for path, rel, cid in made:
        ino = os.stat(path).st_ino
        assert listed.get(ino) == cid, rel
    # the root cgroup (id 1 on cgroup2) and the cgroup this test runs in are the host
    assert resolver.container_of(os.stat(cgroup_root).st_ino) == ""
    with open("/proc/self/cgroup") as f:
        mine = unified_path_from_proc(f.read())
    assert mine is not None
    assert resolver.container_of(os.stat(cgroup_root / mine.lstrip("/")).st_ino) == ""


def test_a_cgroup_made_after_start_is_found_at_once_by_handle(make_cgroup) -> None:
    """The kernel resolves a new cgroup id by file handle: no rescan, no wait for the limit."""
    resolver = CgroupResolver(min_rescan_interval=3600)
    cid = hex64()
    rel = f"/kubepods/burstable/pod{pod_uid()}/{cid}"
    ino = os.stat(make_cgroup(rel)).st_ino
    assert resolver.container_of(ino) == cid
    assert resolver.path_of(ino) == rel
    assert resolver.scans == 1 and resolver.by_handle_hits == 1
    root = resolver.root or ""
    assert path_by_handle(root, ino) == root + rel
    assert path_by_handle(root, 1 << 62) is None  # no such cgroup
    assert path_by_handle(root, 0) is None


def test_a_cgroup_made_after_start_is_found_by_a_rescan(make_cgroup) -> None:
    resolver = CgroupResolver(min_rescan_interval=0.2, by_handle=False)
    cid = hex64()
    ino = os.stat(make_cgroup(f"/system.slice/docker-{cid}.scope")).st_ino
    time.sleep(0.25)
    assert resolver.container_of(ino) == cid
    assert resolver.scans == 2


def _in_cgroup(cgroup: Path) -> subprocess.Popen:
    """A child that moves itself into ``cgroup``, says so, then becomes pid 1 of new pid, mount and
    uts namespaces (the way a runtime starts a container's first process)."""
    script = (
        f'echo $$ > "{cgroup}/cgroup.procs" && echo ready && '
        "exec unshare --pid --fork --mount-proc --uts sh -c 'hostname container; exec sleep 30'"
    )
    proc = subprocess.Popen(
        ["sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != b"ready\n":
        proc.wait(10)
        pytest.fail(f"child did not enter {cgroup}: {proc.stderr.read() if proc.stderr else ''}")
    return proc


def _grandchild(pid: int, timeout: float = 10) -> int:
    """The process unshare --fork started: pid 1 of the new pid namespace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.02)
    pytest.fail("unshare started no child")


def _stop(proc: subprocess.Popen, cgroup: Path) -> None:
    """Stop the child and everything it started (its own session), reap it, and wait until the
    cgroup is empty: the namespace's pid 1 is reaped by init, asynchronously, after unshare dies."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    deadline = time.monotonic() + 10
    while cgroup.joinpath("cgroup.procs").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize(
    "form",
    ["docker-systemd", "docker-cgroupfs", "kubernetes-systemd", "kubernetes-cgroupfs", "podman"],
)
def test_a_process_in_a_container_cgroup_is_attributed(make_cgroup, cgroup_root, form) -> None:
    cid = hex64()
    uid = pod_uid()
    rel = {
        "docker-systemd": f"/system.slice/docker-{cid}.scope",
        "docker-cgroupfs": f"/docker/{cid}",
        "kubernetes-systemd": "/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice/cri-containerd-{cid}.scope",
        "kubernetes-cgroupfs": f"/kubepods/burstable/pod{uid}/{cid}",
        "podman": f"/machine.slice/libpod-{cid}.scope",
    }[form]
    cgroup = make_cgroup(rel)
    resolver = CgroupResolver()
    proc = _in_cgroup(cgroup)
    try:
        inner = _grandchild(proc.pid)
        # its own namespaces, as a container's process has
        nspid = next(
            line.split()[1:]
            for line in Path(f"/proc/{inner}/status").read_text().splitlines()
            if line.startswith("NSpid:")
        )
        assert nspid[-1] == "1" and len(nspid) >= 2, nspid
        for ns in ("pid", "mnt", "uts"):
            assert os.readlink(f"/proc/{inner}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
        for pid in (proc.pid, inner):
            path = unified_path_from_proc(Path(f"/proc/{pid}/cgroup").read_text())
            assert path == rel
            assert container_id_from_path(path) == cid
            # what the kernel would report as the task's cgroup id is that directory's inode
            ino = os.stat(cgroup_root / path.lstrip("/")).st_ino
            assert ino == os.stat(cgroup).st_ino
            assert resolver.container_of(ino) == cid
        assert int(cgroup.joinpath("cgroup.procs").read_text().split()[0]) in (proc.pid, inner)
    finally:
        _stop(proc, cgroup)
    assert cgroup.joinpath("cgroup.procs").read_text() == ""

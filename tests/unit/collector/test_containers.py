"""Container identity from cgroup paths, and the cgroup id -> container resolver on fake trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.cgroup_rules import CgroupState
from collector.containers import (
    CgroupResolver,
    cgroup2_root,
    container_id_from_path,
    path_by_handle,
    unified_path_from_proc,
)

# Realistic ids: sha256-shaped, as runtimes make them.
DOCKER = "3f4e9f1c2b8a47d6e5c0b9a8d7f6e5c4b3a2918f7e6d5c4b3a29180f7e6d5c4b"
CTRD = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
CRIO = "0e2c1f5b7a9d4e3c8b6a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4"
PODMAN = "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b"
OUTER = "1111111111111111111111111111111111111111111111111111111111111111"
POD_UID = "5b1a2c3d-4e5f-6789-abcd-ef0123456789"
POD_UID_ = POD_UID.replace("-", "_")

for _id in (DOCKER, CTRD, CRIO, PODMAN, OUTER):
    assert len(_id) == 64

KUBE_SYSTEMD = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice"

POSITIVE = [
    # Docker, cgroupfs driver
    (f"/docker/{DOCKER}", DOCKER),
    # Docker, systemd driver
    (f"/system.slice/docker-{DOCKER}.scope", DOCKER),
    # containerd / Docker under Kubernetes, cgroupfs driver, every QoS class
    (f"/kubepods/burstable/pod{POD_UID}/{CTRD}", CTRD),
    (f"/kubepods/besteffort/pod{POD_UID}/{CTRD}", CTRD),
    (f"/kubepods/pod{POD_UID}/{CTRD}", CTRD),
    # CRI-O, cgroupfs driver
    (f"/kubepods/burstable/pod{POD_UID}/crio-{CRIO}", CRIO),
    # Kubernetes, systemd driver: containerd, dockershim/cri-dockerd, CRI-O
    (KUBE_SYSTEMD.format(uid=POD_UID_) + f"/cri-containerd-{CTRD}.scope", CTRD),
    (KUBE_SYSTEMD.format(uid=POD_UID_) + f"/docker-{DOCKER}.scope", DOCKER),
    (KUBE_SYSTEMD.format(uid=POD_UID_) + f"/crio-{CRIO}.scope", CRIO),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_UID_}.slice"
        f"/cri-containerd-{CTRD}.scope",
        CTRD,
    ),
    (f"/kubepods.slice/kubepods-pod{POD_UID_}.slice/crio-{CRIO}.scope", CRIO),  # guaranteed
    # Podman: rootful systemd, user slice, rootless, cgroupfs
    (f"/machine.slice/libpod-{PODMAN}.scope", PODMAN),
    (f"/user.slice/user-1000.slice/session-3.scope/libpod-{PODMAN}.scope", PODMAN),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{PODMAN}.scope", PODMAN),
    (f"/machine.slice/libpod-{PODMAN}.scope/container", PODMAN),  # crun's split subgroup
    (f"/libpod_parent/libpod-{PODMAN}", PODMAN),
    # Docker --cgroup-parent /a/b (cgroupfs driver)
    (f"/a/b/{DOCKER}", DOCKER),
    # a Podman pod (cgroupfs driver): /libpod_parent/<pod id>/libpod-<id>
    (f"/libpod_parent/{OUTER}/libpod-{PODMAN}", PODMAN),
    # plain containerd: /<namespace>/<id>
    (f"/default/{CTRD}", CTRD),
    (f"/k8s.io/{CTRD}", CTRD),
    (f"/moby/{CTRD}", CTRD),
    # systemd payload subgroups inside a container
    (f"/system.slice/docker-{DOCKER}.scope/init.scope", DOCKER),
    (f"/system.slice/docker-{DOCKER}.scope/system.slice/nginx.service", DOCKER),
    (f"/docker/{DOCKER}/init.scope", DOCKER),
    # nested: the innermost container wins
    (f"/docker/{OUTER}/docker/{DOCKER}", DOCKER),
    (f"/system.slice/docker-{OUTER}.scope/kubepods/burstable/pod{POD_UID}/{CTRD}", CTRD),
    (
        f"/system.slice/docker-{OUTER}.scope"
        + KUBE_SYSTEMD.format(uid=POD_UID_)
        + f"/cri-containerd-{CTRD}.scope/init.scope",
        CTRD,
    ),
    (f"/machine.slice/libpod-{OUTER}.scope/system.slice/docker-{DOCKER}.scope", DOCKER),
    # a trailing slash or none at the start changes nothing
    (f"system.slice/docker-{DOCKER}.scope/", DOCKER),
]

NEGATIVE = [
    "",
    "/",
    "/init.scope",
    "/system.slice",
    "/system.slice/sshd.service",
    "/user.slice/user-1000.slice/session-1.scope",
    "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service",
    "/kubepods.slice/kubepods-burstable.slice",
    KUBE_SYSTEMD.format(uid=POD_UID_),
    f"/kubepods/burstable/pod{POD_UID}",
    "/docker",
    # near misses
    f"/docker/{DOCKER[:63]}",  # 63 hex
    f"/docker/{DOCKER}0",  # 65 hex
    f"/docker/{DOCKER.upper()}",  # uppercase
    f"/system.slice/docker-{DOCKER.upper()}.scope",
    f"/system.slice/docker-{DOCKER[:63]}.scope",
    f"/system.slice/docker-{DOCKER}.scope.bak",
    f"/system.slice/docker-{DOCKER}.service",
    f"/system.slice/mydocker-{DOCKER}.scope",
    f"/system.slice/docker_{DOCKER}.scope",
    f"/system.slice/docker-{DOCKER}-x.scope",
    # the runtime monitors are host processes, not the container
    KUBE_SYSTEMD.format(uid=POD_UID_) + f"/crio-conmon-{CRIO}.scope",
    f"/kubepods/burstable/pod{POD_UID}/crio-conmon-{CRIO}",
    f"/machine.slice/libpod-conmon-{PODMAN}.scope",
    # a bare id is a container only where a cgroupfs driver puts one
    f"/{DOCKER}",
    f"/system.slice/{DOCKER}",
    f"/user.slice/user-1000.slice/{DOCKER}",
    # a Podman pod's cgroup holds its containers' cgroups, it is not one
    f"/libpod_parent/{OUTER}",
]


@pytest.mark.parametrize(("path", "expected"), POSITIVE)
def test_container_id_from_path_forms(path: str, expected: str) -> None:
    assert container_id_from_path(path) == expected


@pytest.mark.parametrize("path", NEGATIVE)
def test_host_paths_have_no_container(path: str) -> None:
    assert container_id_from_path(path) is None


def test_conmon_next_to_its_container_is_host_and_the_container_is_not() -> None:
    pod = KUBE_SYSTEMD.format(uid=POD_UID_)
    assert container_id_from_path(f"{pod}/crio-conmon-{CRIO}.scope") is None
    assert container_id_from_path(f"{pod}/crio-{CRIO}.scope") == CRIO


def test_not_a_string_is_not_an_error() -> None:
    assert container_id_from_path(None) is None  # type: ignore[arg-type]
    assert container_id_from_path(b"/docker/" + DOCKER.encode()) is None  # type: ignore[arg-type]


@given(st.text())
def test_never_raises_on_arbitrary_text(text: str) -> None:
    result = container_id_from_path(text)
    assert result is None or (len(result) == 64 and result in text)


@given(st.lists(st.sampled_from(["docker", "kubepods", "default", "x.slice", DOCKER, "\0", ""])))
def test_any_result_is_one_of_the_components(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    result = container_id_from_path(path)
    assert result is None or result == DOCKER


def test_unified_path_from_proc_hybrid_and_pure_v2() -> None:
    hybrid = f"9:name=systemd:/\n4:memory:/x\n0::/system.slice/docker-{DOCKER}.scope\n"
    assert unified_path_from_proc(hybrid) == f"/system.slice/docker-{DOCKER}.scope"
    assert unified_path_from_proc("0::/\n") == "/"
    assert unified_path_from_proc("4:memory:/x\n") is None


def test_cgroup2_root_from_mounts() -> None:
    hybrid = (
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    assert cgroup2_root(hybrid) == "/sys/fs/cgroup/unified"
    assert cgroup2_root("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n") == "/sys/fs/cgroup"
    assert cgroup2_root("cgroup2 /mnt/my\\040cg cgroup2 rw 0 0\n") == "/mnt/my cg"
    assert cgroup2_root("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n") is None


# -- the resolver, on fake trees --------------------------------------------------------------


class Clock:
    """A hand-driven monotonic clock, so that the rate limit is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(root: Path, rel: str) -> int:
    path = root / rel.lstrip("/")
    path.mkdir(parents=True, exist_ok=True)
    return os.stat(path).st_ino


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_resolver_maps_inodes_to_containers(tmp_path: Path, clock: Clock) -> None:
    docker = make(tmp_path, f"/system.slice/docker-{DOCKER}.scope")
    init = make(tmp_path, f"/system.slice/docker-{DOCKER}.scope/init.scope")
    kube = make(tmp_path, KUBE_SYSTEMD.format(uid=POD_UID_) + f"/cri-containerd-{CTRD}.scope")
    podman = make(tmp_path, f"/machine.slice/libpod-{PODMAN}.scope")
    plain = make(tmp_path, f"/default/{CTRD}")
    host = make(tmp_path, "/system.slice/sshd.service")
    conmon = make(tmp_path, KUBE_SYSTEMD.format(uid=POD_UID_) + f"/crio-conmon-{CRIO}.scope")
    r = CgroupResolver(str(tmp_path), clock=clock)
    assert r.container_of(docker) == DOCKER
    assert r.container_of(init) == DOCKER
    assert r.container_of(kube) == CTRD
    assert r.container_of(podman) == PODMAN
    assert r.container_of(plain) == CTRD
    assert r.container_of(host) == ""
    assert r.container_of(conmon) == ""
    assert r.container_of(os.stat(tmp_path).st_ino) == ""
    assert r.path_of(os.stat(tmp_path).st_ino) == "/"
    assert r.path_of(docker) == f"/system.slice/docker-{DOCKER}.scope"
    assert r.path_of(host) == "/system.slice/sshd.service"
    assert r.scans == 1


def test_states_lists_every_cgroup_now_with_its_container(tmp_path: Path, clock: Clock) -> None:
    docker = make(tmp_path, f"/docker/{DOCKER}")
    init = make(tmp_path, f"/docker/{DOCKER}/init.scope")
    cron = make(tmp_path, "/system.slice/cron.service")
    r = CgroupResolver(str(tmp_path), clock=clock)
    r.container_of(init)  # cached
    states = dict(r.states())
    assert states[docker] == CgroupState(DOCKER, True)
    assert states[init] == CgroupState(DOCKER, False)  # init.scope is a systemd unit
    assert states[cron] == CgroupState("", False)
    assert states[os.stat(tmp_path).st_ino] == CgroupState(root=True)
    podman = make(tmp_path, f"/machine.slice/libpod-{PODMAN}.scope")
    (tmp_path / "docker" / DOCKER / "init.scope").rmdir()
    states = dict(r.states())
    assert init not in states and states[podman].container_id == PODMAN
    # the removed cgroup is still known to the cache: its last events may be in flight
    assert r.container_of(init) == DOCKER


def test_unknown_id_rescans_once_per_interval(tmp_path: Path, clock: Clock) -> None:
    r = CgroupResolver(str(tmp_path), clock=clock)
    assert r.scans == 1
    clock.now += 0.5
    new = make(tmp_path, f"/system.slice/docker-{DOCKER}.scope")
    # within the interval of the start-up scan: no rescan, host for now
    for _ in range(1000):
        assert r.container_of(new) == ""
    assert r.scans == 1 and r.scans_limited == 1000
    clock.now += 0.6
    assert r.container_of(new) == DOCKER
    assert r.scans == 2
    # a flood of ids that exist nowhere rescans at most once per interval
    for i in range(10_000):
        r.container_of(10**15 + i)
        clock.now += 0.001
    assert 9 <= r.scans - 2 <= 11  # 10 s of flood, one scan a second (give or take rounding)
    assert r.container_of(new) == DOCKER  # known ids never wait for the limit


def test_explicit_rescan_is_not_rate_limited(tmp_path: Path, clock: Clock) -> None:
    r = CgroupResolver(str(tmp_path), clock=clock)
    new = make(tmp_path, f"/machine.slice/libpod-{PODMAN}.scope")
    r.rescan()
    assert r.container_of(new) == PODMAN
    assert r.scans == 2


def test_cache_is_bounded_lru(tmp_path: Path, clock: Clock) -> None:
    ids = [make(tmp_path, f"/docker/{i:064x}") for i in range(20)]
    r = CgroupResolver(str(tmp_path), cache_size=8, clock=clock)
    assert len(r._cache) == 8
    # the walk visits the root first, then /docker, then the containers: the last 8 stay
    kept = [i for i in ids if i in r._cache]
    assert len(kept) == 8
    first_kept = kept[0]
    assert r.container_of(first_kept) != ""  # touch: now most recently used
    clock.now += 5
    evicted = next(i for i in ids if i not in r._cache)
    assert r.container_of(evicted) != ""  # rescan brings it back, evicting the LRU ones
    assert len(r._cache) == 8
    assert evicted in r._cache


def test_symlinks_are_not_followed(tmp_path: Path, clock: Clock) -> None:
    outside = tmp_path / "outside"
    inner = make(outside, f"/docker/{DOCKER}")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    (root / "loop").symlink_to(root)
    r = CgroupResolver(str(root), clock=clock)
    assert r.container_of(inner) == ""
    assert r.path_of(inner) is None


def test_depth_and_entries_are_bounded(tmp_path: Path, clock: Clock) -> None:
    deep = tmp_path
    for _ in range(10):
        deep = deep / "d"
    deep.mkdir(parents=True)
    r = CgroupResolver(str(tmp_path), max_depth=4, clock=clock)
    assert r.path_of(os.stat(tmp_path / "d/d/d/d").st_ino) == "/d/d/d/d"
    assert r.path_of(os.stat(tmp_path / "d/d/d/d/d").st_ino) is None
    assert r.truncated == 1
    for i in range(50):
        (tmp_path / f"w{i}").mkdir()
    r = CgroupResolver(str(tmp_path), max_entries=10, clock=clock)
    assert len(r._cache) == 10 and r.truncated == 1


def test_files_in_the_tree_are_not_cgroups(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "cgroup.procs").write_text("")
    f = tmp_path / "docker"
    f.mkdir()
    (f / DOCKER).write_text("not a directory")
    r = CgroupResolver(str(tmp_path), clock=clock)
    assert r.container_of(os.stat(f / DOCKER).st_ino) == ""
    assert r.path_of(os.stat(f / DOCKER).st_ino) is None


def test_missing_root_means_every_process_is_on_the_host(tmp_path: Path, clock: Clock) -> None:
    r = CgroupResolver(str(tmp_path / "absent"), clock=clock)
    assert r.container_of(12345) == ""
    assert r.states() == []
    r = CgroupResolver("", clock=clock)
    assert r.container_of(1) == ""


def test_default_root_comes_from_proc_mounts() -> None:
    with open("/proc/mounts") as f:
        expected = cgroup2_root(f.read())
    assert CgroupResolver(min_rescan_interval=3600).root == expected


def test_a_directory_vanishing_mid_walk_is_skipped(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = make(tmp_path, f"/docker/{DOCKER}")
    gone = tmp_path / "vanishing"
    gone.mkdir()
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if str(path) == str(gone):
            raise FileNotFoundError(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    r = CgroupResolver(str(tmp_path), clock=clock)
    assert r.container_of(keep) == DOCKER
    assert r.path_of(os.stat(gone).st_ino) == "/vanishing"


def test_handle_lookup_off_a_cgroupfs_falls_back_to_scanning(tmp_path: Path, clock: Clock) -> None:
    """A kernfs handle means nothing to another file system: the lookup says None, the resolver
    scans (rate-limited) as it would without it."""
    r = CgroupResolver(str(tmp_path), clock=clock)
    new = make(tmp_path, f"/docker/{DOCKER}")
    assert path_by_handle(str(tmp_path), new) is None
    assert path_by_handle(str(tmp_path / "absent"), new) is None
    assert path_by_handle(str(tmp_path), -1) is None
    assert path_by_handle(str(tmp_path), 1 << 64) is None
    assert r.container_of(new) == ""
    clock.now += 2
    assert r.container_of(new) == DOCKER
    assert r.by_handle_hits == 0


@pytest.mark.parametrize(
    ("root", "absolute", "rel"),
    [
        ("/sys/fs/cgroup", "/sys/fs/cgroup", "/"),
        ("/sys/fs/cgroup/", "/sys/fs/cgroup/docker/x", "/docker/x"),
        ("/sys/fs/cgroup", "/sys/fs/cgroupx/docker", None),
        ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory/docker", None),
        ("/", "/docker/x", "/docker/x"),
    ],
)
def test_relative_paths_stay_under_the_root(root: str, absolute: str, rel: str | None) -> None:
    from collector.containers import _relative

    assert _relative(root, absolute) == rel


def test_the_kernels_record_comes_first_and_outlives_the_cgroup(
    tmp_path: Path, clock: Clock
) -> None:
    """A cgroup the kernel classified at cgroup_mkdir and that is gone before its events are
    read: no walk or handle can find it, the kernel's record still names its container."""
    kernel = {4242: DOCKER, 4343: ""}
    asked: list[int] = []

    def lookup(cgroup_id: int) -> str | None:
        asked.append(cgroup_id)
        return kernel.get(cgroup_id)

    r = CgroupResolver(str(tmp_path), clock=clock, by_handle=False)
    r.kernel = lookup
    assert r.container_of(4242) == DOCKER
    assert r.container_of(4343) == ""
    assert r.container_of(4242) == DOCKER  # cached: the kernel is asked once
    assert asked == [4242, 4343] and r.kernel_hits == 2
    assert r.container_of(99) == "" and r.unknown == 1  # unknown to the kernel: a scan, then host

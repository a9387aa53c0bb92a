"""Container names, images and pods from the real runtimes, through the whole pipeline: index
records, Tracee JSON events and pcap comments (collector/enricher.py).

dockerd is started on Docker's default socket, /run/docker.sock, and Podman's API service
(``podman system service``) on Podman's, /run/podman/podman.sock, because those are the
sockets the collector asks (a socket elsewhere, in /var/tmp where tests/support/runtimes.py
keeps its state, is refused: /var/tmp is world-writable). containerd is started with its
default state directory, /run/containerd, where the collector reads its task bundles
(collector/containerd_bundles.py); its metadata stays in the fixture's directory."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.containerd_bundles import CONTAINERD_STATE_DIRS, ContainerdBundles
from collector.runtimes import PODMAN_POD_NAMESPACE, RUNTIME_SOCKETS, untrusted_reason
from tests.support.runtimes import (
    IMAGE,
    Containerd,
    Docker,
    Podman,
    _stop,
    _unmount_under,
    _wait_socket,
)

pytestmark = pytest.mark.ebpf

DOCKER_SOCK = Path(dict(RUNTIME_SOCKETS)["docker"])
PODMAN_SOCK = Path(dict(RUNTIME_SOCKETS)["podman"])
CONTAINERD_STATE = Path(CONTAINERD_STATE_DIRS[0])
#: Kubernetes' labels as kubelet puts them on a pod's containers.
POD = {
    "io.kubernetes.pod.name": "checkout-7d9f",
    "io.kubernetes.pod.namespace": "shop",
    "io.kubernetes.pod.uid": "3c4d5e6f-0a1b-4c2d-8e3f-405162738495",
}


def _free(sock: Path) -> None:
    if sock.exists():
        pytest.fail(f"{sock} exists: another engine listens there; stop it before this test")


class DockerOnItsSocket(Docker):
    """tests/support/runtimes.py's dockerd, but on /run/docker.sock."""

    def __init__(self, state: Path, rootfs: Path) -> None:
        _free(DOCKER_SOCK)
        super().__init__(state, rootfs, DOCKER_SOCK)


@pytest.fixture(scope="module")
def docker_api(busybox_rootfs: Path, tmp_path_factory) -> Iterator[DockerOnItsSocket]:
    state = Path(tmp_path_factory.mktemp("docker-api", numbered=True))
    rt = DockerOnItsSocket(state, busybox_rootfs)
    try:
        assert untrusted_reason(str(DOCKER_SOCK)) is None
        yield rt
    finally:
        rt.close()
        DOCKER_SOCK.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def podman_api(podman: Podman) -> Iterator[Podman]:
    """Podman's API service over the fixture's storage, on Podman's own socket."""
    _free(PODMAN_SOCK)
    PODMAN_SOCK.parent.mkdir(mode=0o755, exist_ok=True)
    log = podman.state / "service.log"
    with open(log, "wb") as out:
        service = subprocess.Popen(
            [*podman.base, "system", "service", "--time=0", f"unix://{PODMAN_SOCK}"],
            env=podman.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_socket(PODMAN_SOCK, service, log, "podman system service")
        assert untrusted_reason(str(PODMAN_SOCK)) is None
        yield podman
    finally:
        _stop(service)
        PODMAN_SOCK.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def containerd_run(busybox_rootfs: Path, tmp_path_factory) -> Iterator[Containerd]:
    """containerd with its state in /run/containerd (its default); what it adds there is
    removed afterwards, what was there before (runc's and the shims' directories, which other
    containerds share) is left."""
    _free(CONTAINERD_STATE / "containerd.sock")
    CONTAINERD_STATE.mkdir(mode=0o711, exist_ok=True)
    before = set(os.listdir(CONTAINERD_STATE))
    state = Path(tmp_path_factory.mktemp("containerd-run", numbered=True))
    rt = Containerd(state, busybox_rootfs, run_dir=CONTAINERD_STATE)
    try:
        yield rt
    finally:
        rt.close()
        for name in set(os.listdir(CONTAINERD_STATE)) - before:
            _unmount_under(CONTAINERD_STATE / name)
            path = CONTAINERD_STATE / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        _unmount_under(state)


def _labels(labels: dict[str, str]) -> list[str]:
    return [arg for k, v in labels.items() for arg in ("--label", f"{k}={v}")]


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _arg(event: dict, name: str) -> list:
    return next((a["value"] for a in event["args"] if a["name"] == name), None) or []


def _comments(pcap: Path) -> list[str]:
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.comment"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return [line for line in out.stdout.splitlines() if line]


def _capture(tracecap, tag: str):
    return tracecap(
        "--output", "json", "--events", "vfs_write,sched_process_exec",
        "--capture", f"write=/tmp/{tag}*", "--capture", "exec",
        "--capture", "network", "--capture", "pcap:container", "--scope", "container",
    )  # fmt: skip


#: The workload in a container: files, a binary executed, ICMP on its loopback. The collector
#: learns the container from the runtime's event stream when it is created, so its first
#: event seen (the first write: with --scope container the execs at its start may come
#: before the kernel's scope map has its cgroup) is named already.
def _workload(tag: str) -> list[str]:
    script = (
        f"sleep 1; echo FIRST > /tmp/{tag}-first.txt; sleep 0.5; "
        f"echo TC-ENRICH > /tmp/{tag}.txt; ping -c 2 -W 1 127.0.0.1"
    )
    return ["sh", "-c", script]


def _check(run, cid: str, tag: str, name: str, image: str, pod: dict[str, str],
           digest: bool = True) -> None:  # fmt: skip
    """Names everywhere the container's later activity shows: the write's and the exec's
    index records, their Tracee events, the container's pcap and each packet's comment.
    ``digest``: the runtime knows the image's digest or id (containerd's spec has neither)."""
    want = {"container_name": name, "container_image": image}
    kube = {
        "podName": pod.get("io.kubernetes.pod.name", ""),
        "podNamespace": pod.get("io.kubernetes.pod.namespace", ""),
        "podUID": pod.get("io.kubernetes.pod.uid", ""),
    }
    kube = {k: v for k, v in kube.items() if v}
    (write,) = [r for r in run.records("write") if r["source_path"] == f"/tmp/{tag}.txt"]
    assert write["container_id"] == cid
    assert {k: write.get(k) for k in want} == want, write
    (first,) = [r for r in run.records("write") if r["source_path"] == f"/tmp/{tag}-first.txt"]
    assert {k: first.get(k) for k in want} == want, first  # a single write: one message
    if digest:
        assert write["container_image_digest"].startswith(("sha256:", "localhost/")), write
    else:
        assert "container_image_digest" not in write, write
    for label, key in (
        ("io.kubernetes.pod.name", "pod_name"),
        ("io.kubernetes.pod.namespace", "pod_namespace"),
        ("io.kubernetes.pod.uid", "pod_uid"),
    ):
        assert write.get(key) == pod.get(label), write

    events = [e for e in _events(run.stdout) if e["containerId"] == cid]
    (vfs,) = [
        e
        for e in events
        if e["eventName"] == "vfs_write" and e["args"][0]["value"] == f"/tmp/{tag}.txt"
    ]
    assert vfs["container"]["name"] == name and vfs["container"]["image"] == image
    assert vfs["container"]["id"] == cid
    assert vfs["kubernetes"] == kube
    execs = [e for e in events if e["eventName"] == "sched_process_exec"]
    # sh runs its last command in place: the event's processName is sh's, argv is ping's
    ping = [e for e in execs if _arg(e, "argv")[:1] == ["ping"]]
    assert ping and ping[0]["container"]["name"] == name, execs

    pcap = run.out_dir / "pcap" / "containers" / f"{cid[:11]}.pcap"
    (pcap_rec,) = [
        r for r in run.records("pcap") if r["path"] == f"pcap/containers/{cid[:11]}.pcap"
    ]
    assert {k: pcap_rec.get(k) for k in want} == want, pcap_rec
    comments = _comments(pcap)
    assert len(comments) >= 4, comments  # two echo requests and their replies
    named = [c for c in comments if f"container_name={name} container_image={image}" in c]
    assert named == comments, comments  # ping ran 1 s after the container's first event
    if pod:
        namespace, pod_name = pod["io.kubernetes.pod.namespace"], pod["io.kubernetes.pod.name"]
        assert all(f"pod_namespace={namespace} pod_name={pod_name}" in c for c in comments)


def test_docker_containers_carry_their_names_images_and_pods(tracecap, docker_api) -> None:
    # one started before the capture (the collector learns it at start) ...
    before = f"tce-before-{secrets.token_hex(3)}"
    early = docker_api.run(["sleep", "600"], detach=True, rm=False, network="none",
                           extra=["--name", before])  # fmt: skip
    run = _capture(tracecap, "tce-d")
    docker_api.docker("exec", early.id, "sh", "-c", "echo EARLY > /tmp/tce-d-early.txt")
    # ... and one started during it, in a Kubernetes pod
    name = f"tce-docker-{secrets.token_hex(3)}"
    late = docker_api.run(_workload("tce-d"), network="none",
                          extra=["--name", name, *_labels(POD)])  # fmt: skip
    run.stop()
    assert run.returncode == 0, run.stderr
    _check(run, late.id, "tce-d", name, "localhost/tctest-busybox:latest", POD)
    # the one running before the capture: named from its first event on
    (early_write,) = [r for r in run.records("write") if r["source_path"] == "/tmp/tce-d-early.txt"]
    assert early_write["container_id"] == early.id
    assert early_write["container_name"] == before and "pod_name" not in early_write
    early_events = [e for e in _events(run.stdout) if e["containerId"] == early.id]
    assert early_events and all(e["container"].get("name") == before for e in early_events)


def test_a_podman_pods_container_carries_kubernetes(tracecap, podman_api) -> None:
    pod_id = podman_api.pod_create()
    run = _capture(tracecap, "tce-p")
    name = f"tce-podman-{secrets.token_hex(3)}"
    c = podman_api.run(_workload("tce-p"), network="none",
                       extra=["--pod", pod_id, "--name", name, *_labels(POD)])  # fmt: skip
    run.stop()
    assert run.returncode == 0, run.stderr
    _check(run, c.id, "tce-p", name, "localhost/tctest-busybox:latest", POD)


def test_a_pod_played_from_kubernetes_yaml_carries_podmans_pod(tracecap, podman_api) -> None:
    """``podman kube play``: Podman sets no Kubernetes labels; the pod is Podman's (its name,
    its id as the uid, the "default" namespace: Podman keeps none, it ignores the YAML's)."""
    pod_name = f"tce-kube-{secrets.token_hex(3)}"
    script = _workload("tce-k")[2]
    play = f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {pod_name}
  namespace: shop
  labels:
    app: tce
spec:
  restartPolicy: Never
  containers:
  - name: worker
    image: {IMAGE}
    command: ["/bin/sh", "-c", {json.dumps(script)}]
    env:
    - name: PATH
      value: /bin
"""
    run = _capture(tracecap, "tce-k")
    pod_id = podman_api.kube_play(play, "--network", "none")
    listed = podman_api.podman(
        "ps", "-a", "--no-trunc", "--filter", f"pod={pod_id}", "--format", "{{.ID}} {{.Names}}"
    ).stdout.split("\n")
    ((cid, name),) = [line.split() for line in listed if line.endswith("-worker")]
    assert name == f"{pod_name}-worker"  # as `podman ps` shows it
    podman_api.podman("wait", cid)
    run.stop()
    assert run.returncode == 0, run.stderr
    pod = {
        "io.kubernetes.pod.name": pod_name,
        "io.kubernetes.pod.namespace": PODMAN_POD_NAMESPACE,
        "io.kubernetes.pod.uid": pod_id,
    }
    _check(run, cid, "tce-k", name, IMAGE, pod)


#: The annotations containerd's CRI plugin writes into a Kubernetes container's OCI spec,
#: here given by `ctr run --annotation` (no kubelet, no CRI client on this machine).
CRI_POD = {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.sandbox-name": POD["io.kubernetes.pod.name"],
    "io.kubernetes.cri.sandbox-namespace": POD["io.kubernetes.pod.namespace"],
    "io.kubernetes.cri.sandbox-uid": POD["io.kubernetes.pod.uid"],
}


def test_containerd_containers_carry_their_specs_names(tracecap, containerd_run) -> None:
    assert ContainerdBundles(str(CONTAINERD_STATE)).available() is None
    assert untrusted_reason(str(CONTAINERD_STATE / "containerd.sock")) is None
    run = _capture(tracecap, "tce-c")
    name = f"tce-ctr-{secrets.token_hex(3)}"
    cri = {**CRI_POD, "io.kubernetes.cri.container-name": name,
           "io.kubernetes.cri.image-name": IMAGE}  # fmt: skip
    annotations = [arg for k, v in cri.items() for arg in ("--annotation", f"{k}={v}")]
    c = containerd_run.run(_workload("tce-c"), extra=annotations)
    # nerdctl's way: its labels, `nerdctl/name` among them, copied into the spec
    nerd_name = f"tce-nerd-{secrets.token_hex(3)}"
    nerd = containerd_run.run(["sh", "-c", "sleep 1; echo N > /tmp/tce-cn.txt"],
                              extra=["--label", f"nerdctl/name={nerd_name}"])  # fmt: skip
    run.stop()
    assert run.returncode == 0, run.stderr
    _check(run, c.id, "tce-c", name, IMAGE, POD, digest=False)
    (rec,) = [r for r in run.records("write") if r["source_path"] == "/tmp/tce-cn.txt"]
    assert rec["container_id"] == nerd.id
    assert rec["container_name"] == nerd_name and "container_image" not in rec, rec
    assert "pod_name" not in rec


def test_a_container_no_runtime_answers_for_keeps_its_id_only(tracecap, workdir, make_cgroup):
    """A cgroup named like Docker's, with no engine that knows it: the id, no name, counted."""
    cid = secrets.token_hex(32)
    run = tracecap("--capture", f"write={workdir}/*", "--output", "json")
    cgroup = make_cgroup(f"/docker/{cid}")
    target = workdir / "anon.txt"
    subprocess.run(
        ["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && echo x > {target} && sleep 0.5 '
         f"&& echo y >> {target}"],
        check=True, timeout=60,
    )  # fmt: skip
    run.stop()
    assert run.returncode == 0, run.stderr
    (rec,) = [r for r in run.records("write") if r["source_path"] == str(target)]
    assert rec["container_id"] == cid and "container_name" not in rec
    events = [e for e in _events(run.stdout) if e["containerId"] == cid]
    assert events and all(set(e["container"]) == {"id"} for e in events)

"""Real container runtimes for the e2e tests: Podman, Docker (dockerd) and containerd (`ctr`).

No image registry is reachable, so every image is built here from Debian's busybox-static
(:func:`build_rootfs`: /bin/busybox and its applets as links) and imported (`podman import`,
`docker import`; `ctr run --rootfs` takes the directory itself). Each runtime keeps its state in
a directory of its own, removed at the end, and every container it made is removed whatever
happens, so tests neither see nor leave anything of another run's.

What each runtime needs on a VM like the CI's (hybrid cgroups: cgroup2 at
/sys/fs/cgroup/unified, no systemd as PID 1, root without CAP_SYS_RESOURCE), all here and none
in the product:

- Podman 4.3: ``cgroup_manager = "cgroupfs"`` (no systemd to ask for scopes), ``runtime =
  "runc"`` (crun refuses the hybrid layout) and ``default_ulimits`` for nofile and nproc (without
  them runc fails "error setting rlimit type 7: operation not permitted": it would raise them to
  the engine's defaults), in a containers.conf of its own (``CONTAINERS_CONF``), which also
  reaches a pod's infra container; the infra image is ours (``--infra-image``, the default pause
  image is in a registry). Its containers are ``/libpod_parent/libpod-<id>``, a pod's
  ``/libpod_parent/<pod id>/libpod-<id>``; conmon stays in the caller's cgroup.
- Docker 20.10: dockerd started by the fixture (no systemd to start it) with its own data root,
  exec root and socket, ``--exec-opt native.cgroupdriver=cgroupfs``, and ``--iptables=false
  --ip6tables=false --bridge=none`` (no bridge networking is needed: tests use ``--network
  host`` or ``none``). It starts its own containerd. Containers are ``/docker/<id>``, or
  ``<parent>/<id>`` with ``--cgroup-parent``. The client is Debian's /usr/bin/docker.
- containerd 1.6: started by the fixture with a config naming its own root, state and socket;
  ``ctr run --rootfs DIR`` needs no image; ``PATH`` must be given (an OCI spec made by ctr has
  none without an image). Containers are ``/<namespace>/<id>``, or ``--cgroup`` as given.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BUSYBOX = "/bin/busybox"
IMAGE = "localhost/tctest-busybox:latest"
#: A pod's infra container for ``podman kube play``: the busybox tree, sleeping.
PAUSE_IMAGE = "localhost/tctest-pause:latest"
#: Podman's containers.conf here ([engine] last: kube_play adds to it).
PODMAN_CONF = (
    "[containers]\n"
    'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
    "[engine]\n"
    'cgroup_manager = "cgroupfs"\n'
    'runtime = "runc"\n'
)
TIMEOUT = 120


def new_id() -> str:
    """A container id as the runtimes make them (64 lowercase hex)."""
    return secrets.token_hex(32)


def _need(path: str) -> str:
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make setup-test` (it installs the runtimes)")
    return path


def build_rootfs(where: Path) -> Path:
    """A root file system of busybox-static: /bin/busybox, every applet a link to it, and the
    directories a runtime mounts on. Returns the directory (its tarball is ``<dir>.tar``)."""
    root = where / "rootfs"
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "run", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(_need(BUSYBOX), root / "bin/busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "tmp").chmod(0o1777)
    subprocess.run(["tar", "-C", str(root), "-cf", f"{root}.tar", "."], check=True)
    return root


def _run(argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = TIMEOUT,
         check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )
    return proc


@dataclass
class Container:
    """A container started by one of the runtimes: its full id, and what ran (for messages)."""

    runtime: str
    id: str
    stdout: str = ""


@dataclass
class Runtime:
    """What every runtime fixture offers. ``run`` starts a container of the busybox image with
    host networking unless told otherwise; ``detach`` returns at once, else it waits for the
    command and returns its output. ``rm`` removes the container when it exits."""

    name: str
    state: Path
    made: list[str] = field(default_factory=list)

    def run(self, cmd: Sequence[str], *, rm: bool = True, detach: bool = False,
            network: str = "host", extra: Sequence[str] = ()) -> Container:  # fmt: skip
        raise NotImplementedError

    def create(self, cmd: Sequence[str], *, network: str = "host",
               extra: Sequence[str] = ()) -> str:  # fmt: skip
        """A container made but not started (its id is known before its cgroup exists)."""
        raise NotImplementedError

    def start(self, cid: str) -> str:
        """Start a created container and wait for it to exit; its output."""
        raise NotImplementedError

    def bind(self, path: Path) -> list[str]:
        """The options that mount host directory ``path`` at the same path inside."""
        return ["--volume", f"{path}:{path}"]

    def host_pid(self, cid: str) -> int:
        """The host pid of a running container's first process."""
        raise NotImplementedError

    def remove(self, cid: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for cid in reversed(self.made):
            self.remove(cid)
        self.made.clear()


class Podman(Runtime):
    def __init__(self, state: Path, rootfs: Path) -> None:
        super().__init__("podman", state)
        self.pods: list[str] = []
        self.rootfs = rootfs
        conf = state / "containers.conf"
        conf.write_text(PODMAN_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.base = [
            _need("/usr/bin/podman"),
            "--root", str(state / "root"),
            "--runroot", str(state / "run"),
            "--tmpdir", str(state / "tmp"),
        ]  # fmt: skip
        self.podman("import", f"{rootfs}.tar", IMAGE)

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([*self.base, *args], env=self.env, check=check)

    def run(self, cmd: Sequence[str], *, rm: bool = True, detach: bool = False,
            network: str = "host", extra: Sequence[str] = ()) -> Container:  # fmt: skip
        cidfile = self.state / f"cid-{new_id()[:16]}"
        args = ["run", "--cidfile", str(cidfile), "--network", network, *extra]
        args += ["--rm"] if rm else []
        args += ["-d"] if detach else []
        proc = self.podman(*args, IMAGE, *cmd)
        cid = cidfile.read_text().strip()
        cidfile.unlink()
        self.made.append(cid)
        return Container(self.name, cid, proc.stdout)

    def create(self, cmd: Sequence[str], *, network: str = "host",
               extra: Sequence[str] = ()) -> str:  # fmt: skip
        cidfile = self.state / f"cid-{new_id()[:16]}"
        self.podman("create", "--cidfile", str(cidfile), "--network", network, *extra, IMAGE, *cmd)
        cid = cidfile.read_text().strip()
        cidfile.unlink()
        self.made.append(cid)
        return cid

    def start(self, cid: str) -> str:
        return self.podman("start", "--attach", cid).stdout

    def pod_create(self) -> str:
        """A pod (its id) whose infra container runs our image (the default is a registry's)."""
        pod = self.podman(
            "pod", "create", "--infra-image", IMAGE, "--infra-command", "sleep 100000"
        ).stdout.strip()
        self.pods.append(pod)
        return pod

    def kube_play(self, yaml_text: str, *args: str) -> str:
        """``podman kube play`` of a Kubernetes YAML (its pod's id). Its infra container runs
        PAUSE_IMAGE (imported here: the default is a registry's, and ``kube play`` has no
        ``--infra-image`` in 4.3, only containers.conf's ``infra_image``)."""
        if self.podman("image", "exists", PAUSE_IMAGE, check=False).returncode != 0:
            change = 'ENTRYPOINT ["/bin/sleep", "100000"]'
            self.podman("import", "--change", change, f"{self.rootfs}.tar", PAUSE_IMAGE)
        conf = self.state / "kube-containers.conf"
        conf.write_text(PODMAN_CONF + f'infra_image = "{PAUSE_IMAGE}"\n')
        play = self.state / f"kube-{new_id()[:16]}.yaml"
        play.write_text(yaml_text)
        env = {**self.env, "CONTAINERS_CONF": str(conf)}
        out = _run([*self.base, "kube", "play", *args, str(play)], env=env).stdout
        lines = out.splitlines()
        pod = lines[lines.index("Pod:") + 1].strip()
        self.pods.append(pod)
        return pod

    def host_pid(self, cid: str) -> int:
        return int(self.podman("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip())

    def remove(self, cid: str) -> None:
        self.podman("rm", "-f", "-t", "0", cid, check=False)

    def close(self) -> None:
        super().close()
        for pod in self.pods:
            self.podman("pod", "rm", "-f", "-t", "0", pod, check=False)
        self.pods.clear()


def _wait_socket(path: Path, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} made no socket in 60 s: {log.read_text()[-2000:]}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Docker(Runtime):
    """dockerd started here (there is no systemd to start it), with everything of its own."""

    def __init__(self, state: Path, rootfs: Path, sock: Path | None = None) -> None:
        """``sock``: where dockerd listens (default: in ``state``, its own)."""
        super().__init__("docker", state)
        sock = sock or state / "docker.sock"
        self.log = state / "dockerd.log"
        argv = [
            _need("/usr/sbin/dockerd"),
            "--data-root", str(state / "data"),
            "--exec-root", str(state / "exec"),
            "--pidfile", str(state / "dockerd.pid"),
            "--host", f"unix://{sock}",
            "--exec-opt", "native.cgroupdriver=cgroupfs",
            "--iptables=false", "--ip6tables=false", "--bridge=none",
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            self.daemon = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.base = [_need("/usr/bin/docker"), "--host", f"unix://{sock}"]
        try:
            _wait_socket(sock, self.daemon, self.log, "dockerd")
            deadline = time.monotonic() + 60
            while self.docker("version", check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise AssertionError(f"dockerd never answered: {self.log.read_text()[-2000:]}")
                time.sleep(0.1)
            self.docker("import", f"{rootfs}.tar", IMAGE)
        except BaseException:
            _stop(self.daemon)
            raise

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([*self.base, *args], check=check)

    def run(self, cmd: Sequence[str], *, rm: bool = True, detach: bool = False,
            network: str = "host", extra: Sequence[str] = ()) -> Container:  # fmt: skip
        cidfile = self.state / f"cid-{new_id()[:16]}"
        args = ["run", "--cidfile", str(cidfile), "--network", network, *extra]
        args += ["--rm"] if rm else []
        args += ["-d"] if detach else []
        proc = self.docker(*args, IMAGE, *cmd)
        cid = cidfile.read_text().strip()
        cidfile.unlink()
        self.made.append(cid)
        return Container(self.name, cid, proc.stdout)

    def create(self, cmd: Sequence[str], *, network: str = "host",
               extra: Sequence[str] = ()) -> str:  # fmt: skip
        cidfile = self.state / f"cid-{new_id()[:16]}"
        self.docker("create", "--cidfile", str(cidfile), "--network", network, *extra, IMAGE, *cmd)
        cid = cidfile.read_text().strip()
        cidfile.unlink()
        self.made.append(cid)
        return cid

    def start(self, cid: str) -> str:
        return self.docker("start", "--attach", cid).stdout

    def host_pid(self, cid: str) -> int:
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip())

    def remove(self, cid: str) -> None:
        self.docker("rm", "-f", cid, check=False)

    def close(self) -> None:
        super().close()
        _stop(self.daemon)


class Containerd(Runtime):
    """containerd started here with its own root, state and socket; containers by ``ctr run
    --rootfs`` (no image), in the namespace ``tctest``: ``/tctest/<id>`` unless ``--cgroup``."""

    NAMESPACE = "tctest"

    def __init__(self, state: Path, rootfs: Path, run_dir: Path | None = None) -> None:
        """``run_dir``: containerd's ``state`` and socket there (else in ``state``)."""
        super().__init__("containerd", state)
        self.rootfs = rootfs
        self._created: dict[str, tuple[list[str], str, list[str]]] = {}
        sock = (run_dir or state) / "containerd.sock"
        config = state / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{state / "root"}"\n'
            f'state = "{run_dir or state / "state"}"\n'
            f'[grpc]\n  address = "{sock}"\n'
            f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
        )
        self.log = state / "containerd.log"
        with open(self.log, "wb") as log:
            self.daemon = subprocess.Popen(
                [_need("/usr/bin/containerd"), "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.base = [_need("/usr/bin/ctr"), "--address", str(sock), "-n", self.NAMESPACE]
        try:
            _wait_socket(sock, self.daemon, self.log, "containerd")
        except BaseException:
            _stop(self.daemon)
            raise

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([*self.base, *args], check=check)

    def run(self, cmd: Sequence[str], *, rm: bool = True, detach: bool = False,
            network: str = "host", extra: Sequence[str] = (),
            cid: str = "") -> Container:  # fmt: skip
        cid = cid or new_id()
        args = ["run", "--env", "PATH=/bin", *extra]
        args += ["--net-host"] if network == "host" else []
        args += ["--rm"] if rm else []
        args += ["-d"] if detach else []
        self.made.append(cid)
        # --rootfs is a switch: the first argument is then the directory, the second the id
        proc = self.ctr(*args, "--rootfs", str(self.rootfs), cid, *cmd)
        return Container(self.name, cid, proc.stdout)

    def create(self, cmd: Sequence[str], *, network: str = "host",
               extra: Sequence[str] = ()) -> str:  # fmt: skip
        """With ctr the caller names the container, so its id is known before anything is
        made: ``start`` runs it (``ctr run``) under that id."""
        cid = new_id()
        self._created[cid] = (list(cmd), network, list(extra))
        return cid

    def start(self, cid: str) -> str:
        cmd, network, extra = self._created.pop(cid)
        return self.run(cmd, network=network, extra=extra, cid=cid).stdout

    def bind(self, path: Path) -> list[str]:
        return ["--mount", f"type=bind,src={path},dst={path},options=rbind:rw"]

    def host_pid(self, cid: str) -> int:
        out = self.ctr("task", "ls").stdout
        for line in out.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return int(fields[1])
        raise AssertionError(f"ctr: no task {cid}: {out}")

    def remove(self, cid: str) -> None:
        self.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
        deadline = time.monotonic() + 10
        while cid in self.ctr("task", "ls").stdout and time.monotonic() < deadline:
            self.ctr("task", "delete", cid, check=False)
            time.sleep(0.1)
        self.ctr("container", "delete", cid, check=False)

    def close(self) -> None:
        super().close()
        _stop(self.daemon)


RUNTIMES = {"podman": Podman, "docker": Docker, "containerd": Containerd}


@pytest.fixture(scope="session")
def busybox_rootfs() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="tctest-rootfs-", dir="/var/tmp"))
    try:
        yield build_rootfs(where)
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _runtime(kind: type[Runtime], rootfs: Path) -> Iterator[Runtime]:
    state = Path(tempfile.mkdtemp(prefix=f"tctest-{kind.__name__.lower()}-", dir="/var/tmp"))
    rt = kind(state, rootfs)  # type: ignore[call-arg]
    try:
        yield rt
    finally:
        rt.close()
        _unmount_under(state)
        shutil.rmtree(state, ignore_errors=True)


def _unmount_under(state: Path) -> None:
    """Unmount what a runtime left mounted in its state directory (its storage drivers mount
    their home privately), deepest first, so that removing the directory removes only it."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    prefix = f"{state}/"
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.fixture(scope="session")
def podman(busybox_rootfs: Path) -> Iterator[Runtime]:
    yield from _runtime(Podman, busybox_rootfs)


@pytest.fixture(scope="session")
def docker(busybox_rootfs: Path) -> Iterator[Runtime]:
    yield from _runtime(Docker, busybox_rootfs)


@pytest.fixture(scope="session")
def containerd(busybox_rootfs: Path) -> Iterator[Runtime]:
    yield from _runtime(Containerd, busybox_rootfs)


@pytest.fixture(scope="session", params=sorted(RUNTIMES))
def runtime(request: pytest.FixtureRequest) -> Runtime:
    """Each runtime in turn (a test using it runs once per runtime)."""
    rt: Runtime = request.getfixturevalue(request.param)
    return rt

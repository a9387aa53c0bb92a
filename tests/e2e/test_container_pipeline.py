"""Container attribution through the whole pipeline: a process in a Docker-named cgroup, in its own
pid, mount and uts namespaces, writes a file, executes a binary and sends UDP; its artifacts land
under out/<container id>/ and its packets in pcap/containers/<id[:11]>.pcap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import dpkt
import pytest

from tests.support.pipeline import artifact_name, hex64

pytestmark = pytest.mark.ebpf

CHILD = """
    import socket, subprocess, sys
    wd = sys.argv[1]
    with open(wd + "/in-container.txt", "w") as f:
        f.write("TC-CONTAINER-WRITE\\n")
    subprocess.run([wd + "/cbin", "TC-CONTAINER-EXEC"], check=True)
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli.sendto(b"TC-CONTAINER-UDP", srv.getsockname())
    assert srv.recv(100) == b"TC-CONTAINER-UDP"
"""


def run_in_container(cgroup: Path, workdir: Path) -> subprocess.CompletedProcess:
    """sh moves itself into the cgroup, then unshare gives the workload new pid/mount/uts
    namespaces, the way a runtime starts a container's first process."""
    script = workdir / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    return subprocess.run(
        [
            "sh", "-c",
            'echo $$ > "$1/cgroup.procs" && exec unshare --pid --fork --mount-proc --uts '
            '"$2" "$3" "$4"',
            "sh", str(cgroup), sys.executable, str(script), str(workdir),
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def test_container_artifacts_are_attributed(tracecap, workdir: Path, make_cgroup) -> None:
    cid = hex64()
    binary = workdir / "cbin"
    shutil.copy("/bin/echo", binary)
    binary.chmod(0o755)
    run = tracecap(
        "--capture", f"write={workdir}/*", "--capture", "exec",
        "--capture", "network", "--capture", "pcap:container", "--capture", "pcap-snaplen:max",
    )  # fmt: skip
    # made after the collector is ready, as a container started later would be
    cgroup = make_cgroup(f"/system.slice/docker-{cid}.scope")
    done = run_in_container(cgroup, workdir)
    assert done.stdout == b"TC-CONTAINER-EXEC\n", done.stderr
    run.stop()
    assert run.returncode == 0, run.stderr

    # written file: under out/<full id>/, not host/
    target = workdir / "in-container.txt"
    name = artifact_name("write", target)
    assert run.artifact(name, container=cid) == b"TC-CONTAINER-WRITE\n"
    assert not (run.out_dir / "host" / name).exists()
    (write,) = [r for r in run.records("write") if r["path"] == f"{cid}/{name}"]
    assert write["container_id"] == cid

    # executed binary
    execs = [r for r in run.records("exec") if r["inode"] == binary.stat().st_ino]
    assert len(execs) == 1, execs
    assert execs[0]["container_id"] == cid
    assert execs[0]["path"].startswith(f"{cid}/exec.") and execs[0]["path"].endswith(".cbin")
    assert (run.out_dir / execs[0]["path"]).read_bytes() == binary.read_bytes()

    # packets: the container's pcap, by its 11-character prefix
    pcap = run.out_dir / "pcap" / "containers" / f"{cid[:11]}.pcap"
    with open(pcap, "rb") as f:
        data = [bytes(d) for _, d in dpkt.pcapng.Reader(f)]
    udp = [bytes(dpkt.ip.IP(d).data.data) for d in data if dpkt.ip.IP(d).p == dpkt.ip.IP_PROTO_UDP]
    assert udp.count(b"TC-CONTAINER-UDP") == 2  # loopback: seen leaving and arriving
    host_pcap = run.out_dir / "pcap" / "containers" / "host.pcap"
    if host_pcap.exists():
        assert b"TC-CONTAINER-UDP" not in host_pcap.read_bytes()
    pcaps = [r for r in run.records("pcap") if r.get("container_id") == cid]
    assert len(pcaps) == 1 and pcaps[0]["path"] == f"pcap/containers/{cid[:11]}.pcap", pcaps
    shown = subprocess.run(["tshark", "-r", str(pcap)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr

    # every index line of this container's artifacts carries its id
    ours = [r for r in run.index if str(r.get("path", "")).startswith(f"{cid}/")]
    assert ours and all(r["container_id"] == cid for r in ours), json.dumps(ours)[:2000]
    assert os.path.isdir(run.out_dir / cid)


@pytest.mark.parametrize("scope", ["container", "container={cid12}", "host"])
def test_scope_container_and_host(tracecap, workdir: Path, make_cgroup, scope: str) -> None:
    cid, other = hex64(), hex64()
    ours = make_cgroup(f"/system.slice/docker-{cid}.scope")
    theirs = make_cgroup(f"/system.slice/docker-{other}.scope")
    binary = workdir / "cbin"
    shutil.copy("/bin/echo", binary)
    binary.chmod(0o755)
    run = tracecap("--scope", scope.format(cid12=cid[:12]), "--capture", f"write={workdir}/*")
    run_in_container(ours, workdir)
    run_in_container(theirs, workdir)
    (workdir / "from-host.txt").write_bytes(b"host")  # the test process itself: on the host
    subprocess.run(["sh", "-c", f"echo host > {workdir}/host2.txt"], check=True)
    run.stop()
    containers = {r["container_id"] for r in run.records("write")}
    expected = {"host": {""}, "container": {cid, other}}.get(scope, {cid})
    assert containers == expected

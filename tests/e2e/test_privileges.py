"""Privilege separation of the real pipeline: only the collector is root.

Writers run as `tracecap` with no capabilities and cannot read root's files; the bus socket is
reachable by group `tracecap` only; artifacts are 0640 in a 0750 tree owned by `tracecap`.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.support.pipeline import Run, artifact_name, pid_of
from tests.support.workloads import python, python_as

pytestmark = pytest.mark.ebpf

CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapAmb")


def running_pid(run: Run, program: str) -> int:
    pid = pid_of(run, program)
    assert pid > 0, f"no pid for {program}"
    return pid


def proc_status(path: str) -> dict[str, str]:
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def task_statuses(pid: int) -> dict[int, dict[str, str]]:
    """/proc status of every thread of ``pid`` (credentials are per thread)."""
    return {
        int(tid): proc_status(f"/proc/{pid}/task/{tid}/status")
        for tid in os.listdir(f"/proc/{pid}/task")
    }


def children_of(ppid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(proc_status(f"/proc/{entry}/status")["PPid"]) == ppid:
                    found.add(int(entry))
            except (OSError, KeyError):
                pass  # exited meanwhile
    return found


def ids(line: str) -> list[int]:
    return [int(v) for v in line.split()]


@pytest.fixture
def tracecap_user() -> pwd.struct_passwd:
    return pwd.getpwnam("tracecap")


def test_only_the_collector_runs_as_root(tracecap, workdir: Path, tracecap_user) -> None:
    run = tracecap("--capture", f"write={workdir}/*", "--capture", "exec")
    # writer-events (events.jsonl) runs in every deployment
    writers = ("writer-file", "writer-exec", "writer-events")
    programs = {name: running_pid(run, name) for name in ("collector", *writers)}
    supervisord = int((run.run_dir / "supervisord.pid").read_text())
    # Nothing else runs under supervisord than the programs it reports.
    assert children_of(supervisord) == set(programs.values()), programs

    uid, gid = tracecap_user.pw_uid, tracecap_user.pw_gid
    allowed_groups = set(os.getgrouplist("tracecap", gid))
    assert uid != 0 and gid != 0 and 0 not in allowed_groups

    collector = proc_status(f"/proc/{programs['collector']}/status")
    assert ids(collector["Uid"]) == [0, 0, 0, 0], collector["Uid"]

    for name in writers:
        tasks = task_statuses(programs[name])
        assert len(tasks) >= 1
        for tid, st in tasks.items():
            where = f"{name} pid {programs[name]} thread {tid}"
            # real, effective, saved and filesystem ids
            assert ids(st["Uid"]) == [uid] * 4, (where, st["Uid"])
            assert ids(st["Gid"]) == [gid] * 4, (where, st["Gid"])
            assert set(ids(st["Groups"])) <= allowed_groups, (where, st["Groups"])
            for cap_set in CAPABILITY_SETS:
                assert int(st[cap_set], 16) == 0, (where, cap_set, st[cap_set])
        # Writers start nothing of their own that could hold other credentials.
        assert children_of(programs[name]) == set(), name
    run.stop()
    assert run.returncode == 0, run.stderr


def nice_of(tid: int) -> int:
    with open(f"/proc/{tid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])  # field 19: nice


def test_the_pipeline_outranks_the_traced_processes(tracecap, workdir: Path) -> None:
    """The collector and every writer run at PIPELINE_NICE, inherited from supervisord (an
    unprivileged writer could not raise its own priority). Every thread counts: ZeroMQ's do
    the socket work."""
    from tracecap.frontend.supervise import PIPELINE_NICE

    run = tracecap("--capture", f"write={workdir}/*", "--capture", "network")
    for name in ("collector", "writer-pcap", "writer-file"):
        pid = running_pid(run, name)
        threads = {int(tid): nice_of(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}
        assert set(threads.values()) == {PIPELINE_NICE}, (name, threads)
    run.stop()
    assert run.returncode == 0, run.stderr


def test_writer_cannot_read_root_only_files(tracecap, workdir: Path, tracecap_user) -> None:
    secret = workdir / "root-only"
    secret.write_bytes(b"root's secret\n")
    os.chown(secret, 0, 0)
    secret.chmod(0o600)
    run = tracecap("--capture", f"write={workdir}/cap-*")
    writer = proc_status(f"/proc/{running_pid(run, 'writer-file')}/status")
    uid, gid = ids(writer["Uid"])[0], ids(writer["Gid"])[0]
    groups = ids(writer["Groups"])
    assert uid == tracecap_user.pw_uid

    probe = f"""
        import socket
        def attempt(what, action):
            try:
                action()
            except PermissionError:
                print(what, "denied")
            else:
                print(what, "allowed")
        attempt("read", lambda: open({str(secret)!r}, "rb").read())
        # supervisord's control socket runs anything as root: writers must not reach it
        attempt(
            "control",
            lambda: socket.socket(socket.AF_UNIX).connect({str(run.run_dir / "supervisor.sock")!r}),
        )
    """
    # As root the file is readable and the control socket reachable (the probe itself works) ...
    assert python_as(probe).split("\n") == ["read allowed", "control allowed"]
    # ... with the running writer's exact credentials, neither is.
    as_writer = python_as(probe, user=uid, group=gid, extra_groups=groups)
    assert as_writer.split("\n") == ["read denied", "control denied"]
    # ... and a root process that drops with the writers' own function can no longer read it.
    dropped = python_as(
        "from tracecap.privileges import drop_privileges\n"
        "drop_privileges('tracecap')\n"
        "import os\n"
        "st = dict(l.split(':\\t', 1) for l in open('/proc/self/status') if ':\\t' in l)\n"
        "print(os.getuid(), os.geteuid(), int(st['CapEff'], 16), int(st['CapPrm'], 16))\n"
        + textwrap.dedent(probe)
    )
    assert dropped.split("\n") == [
        f"{tracecap_user.pw_uid} {tracecap_user.pw_uid} 0 0",
        "read denied",
        "control denied",
    ]
    run.stop()
    assert run.returncode == 0, run.stderr


def test_bus_socket_is_for_group_tracecap_only(tracecap, workdir: Path, tracecap_user) -> None:
    run = tracecap("--capture", f"write={workdir}/*")
    tracecap_gid = grp.getgrnam("tracecap").gr_gid
    st_dir = os.lstat(run.run_dir)
    assert stat.S_ISDIR(st_dir.st_mode)
    assert stat.S_IMODE(st_dir.st_mode) == 0o2750, oct(st_dir.st_mode)
    assert (st_dir.st_uid, st_dir.st_gid) == (0, tracecap_gid)

    sock = run.run_dir / "bus.sock"
    st_sock = os.lstat(sock)
    assert stat.S_ISSOCK(st_sock.st_mode)
    assert st_sock.st_gid == tracecap_gid
    assert stat.S_IMODE(st_sock.st_mode) & 0o007 == 0, oct(st_sock.st_mode)  # nothing for others
    assert stat.S_IMODE(st_sock.st_mode) & 0o060 == 0o060, oct(st_sock.st_mode)  # group connects

    probe = f"""
        import os, socket
        print(os.access({str(sock)!r}, os.W_OK), end=" ")
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect({str(sock)!r})
        except PermissionError:
            print("denied")
        else:
            print("connected")
        finally:
            s.close()
    """
    nobody = pwd.getpwnam("nobody")
    as_nobody = python_as(probe, user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
    assert as_nobody == "False denied"
    as_tracecap = python_as(
        probe, user=tracecap_user.pw_uid, group=tracecap_user.pw_gid, extra_groups=[]
    )
    assert as_tracecap == "True connected"
    run.stop()
    assert run.returncode == 0, run.stderr


def test_artifacts_are_0640_in_a_0750_tree_owned_by_tracecap(
    tracecap, workdir: Path, tracecap_user
) -> None:
    wdir = workdir / "w"
    wdir.mkdir(mode=0o755)
    run = tracecap("--capture", f"write={wdir}/*", "--capture", "exec")
    target = wdir / "artifact"
    python(f"open({str(target)!r}, 'wb').write(b'mode check')")
    run.stop()
    assert run.returncode == 0, run.stderr
    assert run.artifact(artifact_name("write", target)) == b"mode check"
    assert run.records("exec"), "no exec artifact to check"

    owner = (tracecap_user.pw_uid, tracecap_user.pw_gid)
    dirs, files, others = [], [], []
    for root, dirnames, filenames in os.walk(run.out_dir, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                dirs.append(path)
            elif stat.S_ISREG(mode):
                files.append(path)
            else:
                others.append(path)
    assert others == [], others
    assert os.path.join(run.out_dir, "host") in dirs
    assert os.path.join(run.out_dir, "index.jsonl") in files
    kinds = {os.path.basename(f).split(".", 1)[0] for f in files}
    assert {"write", "exec", "index"} <= kinds, kinds
    for path in [str(run.out_dir), *dirs]:
        st = os.lstat(path)
        assert stat.S_IMODE(st.st_mode) == 0o750, (path, oct(st.st_mode))
        assert (st.st_uid, st.st_gid) == owner, (path, st.st_uid, st.st_gid)
    for path in files:
        st = os.lstat(path)
        assert stat.S_IMODE(st.st_mode) == 0o640, (path, oct(st.st_mode))
        assert (st.st_uid, st.st_gid) == owner, (path, st.st_uid, st.st_gid)


def test_a_dir_the_writers_may_only_pass_through_is_refused_then_works_as_advised(
    tracecap, workdir: Path
) -> None:
    """root's dir: at 0700 is refused with advice (chmod o+x); once followed (0711: others may
    pass, not list), the writers reach ``out`` and capture. Before, each writer died reading
    dir: and supervisord restarted it until `tracecap run` gave up waiting for readiness."""
    root = workdir / "private"
    root.mkdir(mode=0o700)
    wdir = workdir / "w"
    wdir.mkdir(mode=0o755)
    refused = subprocess.run(
        ["tracecap", "run", "--capture", f"dir:{root}", "--capture", f"write={wdir}/*"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert f"let others pass (chmod o+x {root})" in refused.stderr
    root.chmod(0o711)
    run = tracecap("--capture", f"write={wdir}/*", out_root=root)
    target = wdir / "passed"
    python(f"open({str(target)!r}, 'wb').write(b'through a 0711 dir:')")
    run.stop()
    assert run.returncode == 0, run.stderr
    assert run.artifact(artifact_name("write", target)) == b"through a 0711 dir:"
    assert "Traceback" not in run.stderr


def test_a_program_of_supervisord_that_drops_to_tracecap_still_stops_with_it(tracecap_user):
    """setuid clears the parent-death signal (prctl(2)): a program supervisord starts as root
    that then drops to ``tracecap`` itself (a writer without ``user=``) must still get SIGTERM
    when supervisord dies (tracecap/lifetime.py)."""
    out = python_as(
        "import os\n"
        "os.environ['SUPERVISOR_ENABLED'] = '1'\n"
        "from tracecap.lifetime import follow_supervisor, parent_death_signal\n"
        "from tracecap.privileges import drop_privileges\n"
        "follow_supervisor()\n"
        "before = parent_death_signal()\n"
        "drop_privileges('tracecap')\n"
        "print(before, parent_death_signal(), os.getuid())\n"
    )
    assert out == f"15 15 {tracecap_user.pw_uid}"

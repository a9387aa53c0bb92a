"""Every event kind tracecap prints, produced by real programs and decoded by the strict
decoder (tests/support/tracee_decode.py) against its Tracee v0.17 schema; and the seed page's
``-trace comm=ping`` example as written, with ``tracecap run`` for ``tracee-ebpf``."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

from tests.support import tracee_decode
from tests.support.pipeline import Run
from tracecap.kinds import EVENT_NAMES

MODULE_CACHE = Path("/var/cache/tracecap-test/modules")
#: Compiles a hot loop: LuaJIT maps its machine code writable, then makes it executable.
LUA_HOT_LOOP = "local s = 0 for i = 1, 3e6 do s = s + i % 7 end print(s)"
PY_VECTORED = """
import os, sys
d = sys.argv[1]
fd = os.open(d + "/vec", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
assert os.writev(fd, [b"ab", b"cd", b"ef"]) == 6
os.close(fd)
fd = os.open(d + "/vec", os.O_RDONLY)
assert os.readv(fd, [bytearray(1), bytearray(2), bytearray(3), bytearray(4)]) == 6
os.close(fd)
"""


def run_ok(*argv: str | Path, ok: bool | None = True) -> subprocess.CompletedProcess:
    """Run a real program; ``ok`` says whether it must succeed (None: either)."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert ok is None or (done.returncode == 0) == ok, done
    return done


def http_get() -> None:
    """curl fetching from a local HTTP server: TCP, IPv4 and HTTP packets."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run_ok("curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
        server.server_close()


def by_name(run: Run) -> dict[str, list[dict]]:
    """Every printed line decoded strictly; grouped by event name."""
    out: dict[str, list[dict]] = {}
    for line in run.stdout.splitlines():
        event = tracee_decode.decode(line)
        out.setdefault(event["eventName"], []).append(event)
    return out


def args(event: dict) -> dict:
    return {a["name"]: a["value"] for a in event["args"]}


def test_every_event_kind_from_real_programs_follows_its_schema(tracecap, workdir: Path):
    ko = Path(shutil.copy(MODULE_CACHE / "crc7.ko", workdir))
    packed = Path(shutil.copy(MODULE_CACHE / "wp512.ko", workdir))
    run_ok("xz", packed)  # kmod decompresses a .ko.xz and calls init_module
    packed = packed.with_suffix(".ko.xz")
    source = workdir / "in"
    source.write_bytes(b"r" * 10000)
    dd = workdir / "dd"  # run by a symlink: cmdpath is the link, pathname the file run
    dd.symlink_to(os.path.realpath(shutil.which("dd")))
    run = tracecap(
        "-capture", f"write={workdir}/*", "-capture", f"read={workdir}/*", "-capture", "exec",
        "-capture", "mem", "-capture", "module", "-capture", "bpf", "-capture", "network",
        "-events", ",".join(EVENT_NAMES), "-output", "json",
    )  # fmt: skip
    run_ok(dd, "if=/dev/zero", f"of={workdir}/out", "bs=4096", "count=3", "status=none")
    run_ok("cat", source)
    piped = subprocess.run(["cat"], input=b"read testing 123\n", capture_output=True, check=True)
    assert piped.stdout == b"read testing 123\n"
    run_ok("python3", "-c", PY_VECTORED, workdir)
    run_ok("luajit", "-e", LUA_HOT_LOOP)
    run_ok("insmod", ko, ok=False)  # ENOSYS here: no module support, the attempt is the event
    run_ok("insmod", packed, ok=False)
    run_ok("bpftrace", "-e", "BEGIN { exit(); }")
    http_get()
    # whether or not a resolver answers on port 53, the query is a DNS packet
    run_ok("dig", "@127.0.0.1", "-p", "53", "conformance.tc.test", "+tries=1", "+time=1", ok=None)
    run_ok("ping", "-c", "1", "127.0.0.1")
    run_ok("ping", "-6", "-c", "1", "::1")
    run.stop()
    assert run.returncode == 0, run.stderr
    events = by_name(run)
    assert set(EVENT_NAMES) <= set(events), sorted(set(EVENT_NAMES) - set(events))

    # dd: three write(2)s of 4096 bytes, one event each as Tracee prints them
    writes = [args(e) for e in events["vfs_write"] if args(e)["pathname"] == f"{workdir}/out"]
    assert [(w["count"], w["pos"]) for w in writes] == [(4096, 0), (4096, 4096), (4096, 8192)]
    # cat asks for 128 KiB a read (the seed's count 131072): count is asked, returnValue moved;
    # its last read returns 0 and is no event here (README: Tracee compatibility)
    reads = [e for e in events["vfs_read"] if args(e)["pathname"] == str(source)]
    assert [(args(e)["count"], e["returnValue"]) for e in reads] == [(131072, 10000)]
    (writev,) = [e for e in events["vfs_writev"] if args(e)["pathname"] == f"{workdir}/vec"]
    (readv,) = [e for e in events["vfs_readv"] if args(e)["pathname"] == f"{workdir}/vec"]
    assert (args(writev)["vlen"], writev["returnValue"]) == (3, 6)
    assert (args(readv)["vlen"], readv["returnValue"]) == (4, 6)

    (dd_exec,) = [e for e in events["sched_process_exec"] if args(e)["argv"][:1] == [str(dd)]]
    assert (args(dd_exec)["cmdpath"], args(dd_exec)["pathname"]) == (str(dd), str(dd.resolve()))
    # dd runs in the test's namespaces; Tracee prints their inode numbers
    assert dd_exec["mountNamespace"] == os.stat("/proc/self/ns/mnt").st_ino
    assert dd_exec["pidNamespace"] == os.stat("/proc/self/ns/pid").st_ino
    assert 0 <= dd_exec["processorId"] < os.cpu_count()
    assert (args(dd_exec)["stdin_type"], args(dd_exec)["stdin_path"]) == ("S_IFCHR", "/dev/null")
    assert args(dd_exec)["invoked_from_kernel"] == 0
    (cat,) = [e for e in events["sched_process_exec"] if args(e)["argv"] == ["cat"]]
    assert (args(cat)["stdin_type"], args(cat)["stdin_path"]) == ("S_IFIFO", "")  # a pipe
    assert dd_exec["threadStartTime"] <= dd_exec["timestamp"]
    assert dd_exec["threadStartTime"] > dd_exec["timestamp"] - 60 * 10**9

    alert = next(e for e in events["mem_prot_alert"] if e["processName"] == "luajit")
    assert args(alert)["alert"] == "Protection changed from W to E!"
    assert args(alert)["prot"] == "PROT_READ|PROT_EXEC" and alert["syscall"] == "mprotect"

    # kmod tries finit_module on the .ko, then init_module when it fails; the .ko.xz it
    # decompresses and hands to init_module
    (finit,) = [e for e in events["finit_module"] if e["processName"] == "insmod"]
    inits = [e for e in events["init_module"] if e["processName"] == "insmod"]
    assert finit["returnValue"] == -38 and {e["returnValue"] for e in inits} == {-38}
    assert args(finit)["fd"] >= 0 and args(finit)["flags"] == 0
    sizes = {args(e)["len"] for e in inits}
    assert sizes == {len(ko.read_bytes()), len((MODULE_CACHE / "wp512.ko").read_bytes())}

    progs = [args(e) for e in events["security_bpf_prog"] if e["processName"] == "bpftrace"]
    begin = [p for p in progs if p["name"] == "BEGIN" and p["id"] > 0]
    assert begin and all(p["type"].startswith("BPF_PROG_TYPE_") and p["helpers"] for p in begin)

    http = [args(e)["proto_http"] for e in events["net_packet_http"]]
    assert {"direction": "request", "method": "GET", "uri_path": "/"}.items() <= http[0].items()
    assert any(h["direction"] == "response" and h["status_code"] == 200 for h in http)
    dns = [args(e) for e in events["net_packet_dns"] if args(e)["dst_port"] == 53]
    questions = [q["name"] for d in dns for q in d["proto_dns"]["questions"]]
    assert "conformance.tc.test" in questions
    icmp = {args(e)["proto_icmp"]["typeCode"] for e in events["net_packet_icmp"]}
    assert {"EchoRequest", "EchoReply"} <= icmp
    icmp6 = {args(e)["proto_icmpv6"]["typeCode"] for e in events["net_packet_icmpv6"]}
    assert {"EchoRequest", "EchoReply"} <= icmp6


def test_the_seeds_single_dash_trace_example_as_written(tracecap, workdir: Path):
    """tracee-ebpf --output format:json --output option:parse-arguments --output
    option:detect-syscall -trace comm=ping --capture net=lo; then ping 127.0.0.1."""
    run = tracecap(
        "--output", "format:json", "--output", "option:parse-arguments",
        "--output", "option:detect-syscall", "-trace", "comm=ping", "--capture", "net=lo",
    )  # fmt: skip
    run_ok("ping", "-c", "2", "127.0.0.1")
    run_ok("curl", "-sS", "-o", "/dev/null", "--max-time", "2", "http://127.0.0.1:9/", ok=False)
    run.stop()
    assert run.returncode == 0, run.stderr
    shown = run_ok("tcpdump", "-n", "-r", run.out_dir / "pcap" / "single.pcap").stdout
    lines = shown.splitlines()
    # both seqs of ping's, each request and reply (on lo, seen leaving and arriving)
    for seq in (1, 2):
        for kind in ("request", "reply"):
            assert any(f"ICMP echo {kind}" in ln and f"seq {seq}," in ln for ln in lines), shown
    assert lines and all("ICMP" in line for line in lines), shown  # curl is not in scope
    assert json.loads("[" + ",".join(run.stdout.splitlines()) + "]") == []  # no events named


def test_merged_io_prints_a_run_as_the_bus_carries_it(tracecap, workdir: Path):
    """With --output option:merged-io, consecutive writes the collector merged into one bus
    message are one event of their total (dd's 64 writes: far fewer events)."""
    run = tracecap("-capture", f"write={workdir}/*", "-output", "json",
                   "-output", "option:merged-io")  # fmt: skip
    run_ok("dd", "if=/dev/zero", f"of={workdir}/out", "bs=4096", "count=64", "status=none")
    run.stop()
    assert run.returncode == 0, run.stderr
    events = by_name(run)
    writes = [e for e in events["vfs_write"] if args(e)["pathname"] == f"{workdir}/out"]
    assert 1 <= len(writes) < 64
    assert [args(e)["count"] for e in writes] == [e["returnValue"] for e in writes]
    ends = [args(e)["pos"] + e["returnValue"] for e in writes]
    assert [args(e)["pos"] for e in writes] == [0, *ends[:-1]] and ends[-1] == 64 * 4096

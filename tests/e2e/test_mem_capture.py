"""Memory made executable, end to end: a ctypes unpacker (exact bytes), real LuaJIT (thousands
of protection changes a second) and real Node (a code space mapped writable and executable
once with Node 20, toggled with Debian's Node 18), against Tracee's mem_prot_alert."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.pipeline import Run, wait_until

pytestmark = pytest.mark.ebpf

W_TO_E = "Protection changed from W to E!"
TO_X = "Protection changed to Executable!"
E_TO_WE = "Protection changed from E to W+E!"
MMAP_WX = "Mmaped region with W+E permissions!"
ALERTS = (W_TO_E, TO_X, E_TO_WE, MMAP_WX)
PAGE = 4096

UNPACKER = """
import ctypes, json, sys
open("/proc/self/comm", "w").write("tc-unpacker")
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.syscall.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                        ctypes.c_int]
R, W, X = 1, 2, 4
def region(size, prot):
    p = libc.mmap(None, size, prot, 0x22, -1, 0)
    assert p not in (None, ctypes.c_void_p(-1).value)
    return p
def protect(p, size, prot):
    assert libc.mprotect(p, size, prot) == 0, ctypes.get_errno()
stage1, stage2, code = (bytes.fromhex(a) for a in sys.argv[1:4])
# every region mapped at once: no address is reused by another
p = region(4 * 4096, R | W)
q = region(2 * 4096, R | W | X)  # writable and executable at mmap: zeros then
e = region(2 * 4096, R | W | X)
z = region(4096, 0)
c = region(4096, R | X)
k = region(4096, R | W)
out = {"unpacked": p, "rwx": q, "empty": e, "exit": z, "patched": c, "pkey": k}
# stage 1 in three pages of four (the fourth never touched), made executable five times
ctypes.memmove(p, stage1, len(stage1))
for _ in range(5):
    protect(p, 4 * 4096, R | X)
    protect(p, 4 * 4096, R | W)
# stage 2 over the first page: new content at the same address
ctypes.memmove(p, stage2, len(stage2))
protect(p, 4 * 4096, R | X)
# the W+X mapping's code, dumped when it is unmapped; the one never written: nothing
ctypes.memmove(q + 4096, code, len(code))
libc.munmap(q, 2 * 4096)
libc.munmap(e, 2 * 4096)
# reserved, made writable and executable (Node's way), written: dumped at exit
protect(z, 4096, R | W | X)
ctypes.memmove(z, code[::-1], len(code))
# executable, then writable and executable again (a patch site never written)
protect(c, 4096, R | W | X)
# written, then made executable by the pkey_mprotect syscall (x86-64's 329; pkey -1: no key;
# glibc's wrapper calls mprotect for -1)
ctypes.memmove(k, code, len(code))
assert libc.syscall(329, k, 4096, R | X, -1) == 0, ctypes.get_errno()
print(json.dumps(out))
"""


def tracecap_mem(tracecap, *scope: str) -> Run:
    return tracecap("--capture", "mem", "--output", "json", *scope)


def alerts(run: Run, pid: int) -> list[dict[str, Any]]:
    """Every mem_prot_alert printed for ``pid`` (Tracee's JSON output)."""
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return [e for e in events if e["eventName"] == "mem_prot_alert" and e["processId"] == pid]


def arg(event: dict[str, Any], name: str) -> Any:
    return next(a["value"] for a in event["args"] if a["name"] == name)


def ours(records: list[dict[str, Any]], pid: int) -> list[dict[str, Any]]:
    return [r for r in records if r["pid"] == pid]


def test_an_unpacker_is_dumped_exactly_alerted_as_tracee_and_repeats_counted(tracecap, workdir):
    stage1 = os.urandom(3 * PAGE - 100)
    stage2 = os.urandom(PAGE)
    code = b"\x55\x48\x89\xe5" + os.urandom(60) + b"\xc9\xc3"
    run = tracecap_mem(tracecap, "--scope", "comm=tc-unpacker")
    script = workdir / "unpacker.py"
    script.write_text(textwrap.dedent(UNPACKER))
    proc = subprocess.run(
        [sys.executable, str(script), stage1.hex(), stage2.hex(), code.hex()],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    where = json.loads(proc.stdout)
    run.stop()
    mem = run.records("mem")
    pid = mem[0]["pid"]
    by_addr: dict[int, list[dict[str, Any]]] = {}
    for r in mem:
        by_addr.setdefault(r["address"], []).append(r)
    assert all(r["complete"] for r in mem), mem

    # stage 1: one artifact, five occurrences; the untouched page is zeros, said so
    first, second = sorted(by_addr[where["unpacked"]], key=lambda r: r["ts"])
    assert run.artifact(first["path"].split("/")[1]) == stage1 + bytes(PAGE + 100)
    assert (first["occurrences"], len(first["occurrence_ts"])) == (5, 5)
    change = (first["alert"], first["syscall"], first["prot_before_rwx"], first["prot_after_rwx"])
    assert change == (W_TO_E, "mprotect", "rw-", "r-x")
    assert first["zero_ranges"] == [[3 * PAGE, 4 * PAGE]]
    # stage 2 at the same address: a new artifact
    assert run.artifact(second["path"].split("/")[1]) == stage2 + stage1[PAGE:] + bytes(PAGE + 100)
    assert second["occurrences"] == 1

    # the W+X mapping: its code at munmap, not its zeros at mmap
    (rwx,) = by_addr[where["rwx"]]
    assert (rwx["syscall"], rwx["alert"]) == ("munmap", "")
    assert run.artifact(rwx["path"].split("/")[1]) == bytes(PAGE) + code + bytes(PAGE - len(code))
    assert where["empty"] not in by_addr
    # made writable and executable from nothing, written: its code at exit
    (at_exit,) = by_addr[where["exit"]]
    assert at_exit["syscall"] == "exit"
    assert run.artifact(at_exit["path"].split("/")[1]) == code[::-1] + bytes(PAGE - len(code))
    assert where["patched"] not in by_addr  # never written while writable
    # pkey_mprotect, named as such (one program serves both syscalls' tracepoints)
    (pkey,) = by_addr[where["pkey"]]
    assert (pkey["alert"], pkey["syscall"]) == (W_TO_E, "pkey_mprotect")
    assert run.artifact(pkey["path"].split("/")[1]) == code + bytes(PAGE - len(code))

    # every change Tracee alerts on, with its text, printed and indexed
    printed = alerts(run, pid)
    seen = {(int(arg(e, "addr"), 16), arg(e, "alert"), arg(e, "prev_prot"), arg(e, "prot"))
            for e in printed}  # fmt: skip
    assert seen >= {
        (where["unpacked"], W_TO_E, "PROT_READ|PROT_WRITE", "PROT_READ|PROT_EXEC"),
        (where["rwx"], MMAP_WX, "PROT_NONE", "PROT_READ|PROT_WRITE|PROT_EXEC"),
        (where["exit"], TO_X, "PROT_NONE", "PROT_READ|PROT_WRITE|PROT_EXEC"),
        (where["patched"], E_TO_WE, "PROT_READ|PROT_EXEC", "PROT_READ|PROT_WRITE|PROT_EXEC"),
        (where["pkey"], W_TO_E, "PROT_READ|PROT_WRITE", "PROT_READ|PROT_EXEC"),
    }
    assert sum(arg(e, "alert") == W_TO_E for e in printed) == 7
    indexed = ours(run.records("mem_alert"), pid)
    assert {(r["address"], r["alert"]) for r in indexed} >= {
        (where["rwx"], MMAP_WX), (where["empty"], MMAP_WX), (where["exit"], TO_X),
        (where["patched"], E_TO_WE),
    }  # fmt: skip
    assert ours(run.records("mem_budget"), pid) == []  # a few changes: nothing skipped
    assert "mem budget skipped 0 events" in run.stderr


TOGGLER = """
import ctypes, sys, time
open("/proc/self/comm", "w").write("tc-toggler")
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
p = libc.mmap(None, 4096, 3, 0x22, -1, 0)
ctypes.memmove(p, b"\\xc3" * 16, 16)
for _ in range(int(sys.argv[1])):
    assert libc.mprotect(p, 4096, 5) == 0 and libc.mprotect(p, 4096, 3) == 0
print(p, flush=True)
time.sleep(120)
"""


def test_a_toggler_still_running_at_the_stop_has_every_change_in_the_index(tracecap, workdir):
    """Past its event allowance a process's changes are counted; what no event of it carried
    is reported by the collector when capture stops."""
    run = tracecap_mem(tracecap, "--scope", "comm=tc-toggler")
    script = workdir / "toggler.py"
    script.write_text(textwrap.dedent(TOGGLER))
    proc = subprocess.Popen([sys.executable, str(script), "300"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        addr = int(proc.stdout.readline())
        run.stop()
    finally:
        proc.kill()
        proc.wait(30)
    pid = proc.pid
    (region,) = ours(run.records("mem"), pid)  # the same bytes each time: one artifact
    assert (region["address"], region["alert"], region["complete"]) == (addr, W_TO_E, True)
    assert run.artifact(region["path"].split("/")[1]) == b"\xc3" * 16 + bytes(PAGE - 16)
    budget = ours(run.records("mem_budget"), pid)
    assert [r["reported_by"] for r in budget] == ["stop"]
    alerts = ours(run.records("mem_alert"), pid)
    assert (
        region["occurrences"] + sum(r["occurrences"] for r in alerts) + budget[0]["skipped_events"]
        == 300
    )
    assert budget[0]["skipped_events"] > 0 and budget[0]["skipped_bytes"] >= PAGE


LUA_MANY_TRACES = """
-- Compiles many small functions (each loop becomes a trace: two mprotects), then, once the
-- allowance is back, one more, and waits with its machine code as it was last dumped.
local n = tonumber(arg[1])
local total = 0
local function compile(i)
  local f = loadstring("local s = 0 for j = 1, 300 do s = s + (j % 7) * " .. i .. " end return s")
  total = total + f()
end
for i = 1, n do compile(i) end
os.execute("sleep 1.5")
compile(n + 1)
io.write(total, "\\n")
io.flush()
io.read("*l")
"""


def strace_count(log: Path, pid: int) -> int:
    """RW->RX changes of ``pid`` in an `strace -o` log (LuaJIT makes no others executable)."""
    text = log.read_text()
    calls = re.findall(r"^(\d+)\s+(?:pkey_)?mprotect\(0x[0-9a-f]+, \d+, ([A-Z_|]+)", text, re.M)
    return sum(1 for who, prot in calls if int(who) == pid and prot == "PROT_READ|PROT_EXEC")


def read_memory(pid: int, addr: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(addr)
        return mem.read(size)


def test_luajit_is_bounded_complete_exact_and_nothing_is_lost_uncounted(tracecap, workdir):
    luajit = shutil.which("luajit")
    assert luajit, "luajit is installed by `make setup-test`"
    script = workdir / "traces.lua"
    script.write_text(textwrap.dedent(LUA_MANY_TRACES))
    run = tracecap_mem(tracecap, "--scope", "comm=luajit")
    log = workdir / "strace.log"
    # strace gives the count to check against (it follows LuaJIT itself, not only tracecap)
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", str(log), "-e", "trace=mprotect,pkey_mprotect", luajit,
         str(script), "20000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip()
        pid = int(next(p for p in os.listdir("/proc") if p.isdigit() and _is_luajit(p, proc.pid)))
        index = run.out_dir / "index.jsonl"

        def last_dump() -> dict[str, Any] | None:
            found = [json.loads(line) for line in index.read_text().splitlines()]
            found = [r for r in found if r.get("kind") == "mem" and r["pid"] == pid]
            return max(found, key=lambda r: r["ts"]) if found else None

        time.sleep(1.0)  # the last dump reaches the index within a second
        last = wait_until("LuaJIT's dumps", last_dump, 30)
        now = read_memory(pid, last["address"], last["obj_len"])
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(60)
    run.stop()
    assert run.artifact(last["path"].split("/")[1]) == now, "the last dump is the code as it ran"

    mem = ours(run.records("mem"), pid)
    assert mem and all(r["complete"] for r in mem), [r for r in mem if not r["complete"]]
    assert all(r["alert"] == W_TO_E and r["prot_after_rwx"] == "r-x" for r in mem)
    budget = ours(run.records("mem_budget"), pid)
    assert budget, "a JIT this busy reaches its allowance"
    counted = (
        sum(r["occurrences"] for r in mem)
        + sum(r["occurrences"] for r in ours(run.records("mem_alert"), pid) if r["alert"] == W_TO_E)
        + sum(r["skipped_events"] for r in budget)
    )
    assert counted == strace_count(log, pid), "every RW->RX change dumped, alerted or counted"
    # past its byte allowance a change is alerted with its dump skipped; past its event
    # allowance it is counted unexamined, with the bytes of its region
    assert any(r["dump"] == "budget" for r in ours(run.records("mem_alert"), pid))
    unexamined = sum(r["skipped_events"] for r in budget)
    assert sum(r["skipped_bytes"] for r in budget) >= unexamined * PAGE > 0


def _is_luajit(pid: str, strace_pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return "(luajit)" in stat and int(stat.rsplit(")", 1)[1].split()[1]) == strace_pid


NODE_HOT = """
// A hot function compiled by V8's optimizing JIT, many times over (Node 18 toggles its code
// space for each: past its allowance); then, once the allowance is back, one more compile, and
// the process waits with its code space as it was last dumped.
function hot(a, b) { let s = 0; for (let i = 0; i < a; i++) s += (i * b) % 7; return s; }
let t = 0;
for (let k = 0; k < 200000; k++) t += hot(100, k);
console.log("busy", t);
setTimeout(() => {
  function last(a) { let s = 1; for (let i = 0; i < a; i++) s = (s * 31 + i) % 1000003; return s; }
  let u = 0;
  for (let k = 0; k < 100000; k++) u += last(50);
  console.log("quiet", u);
  process.stdin.on("data", () => {});
  process.stdin.on("end", () => process.exit(0));
}, 1500);
"""


def test_node_code_space_is_alerted_and_its_code_dumped(tracecap, workdir):
    node = shutil.which("node")
    assert node, "nodejs is installed by `make setup-test`"
    script = workdir / "hot.js"
    script.write_text(textwrap.dedent(NODE_HOT))
    run = tracecap_mem(tracecap, "--scope", "comm=node")
    proc = subprocess.Popen([node, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("busy")
        quiet_from = time.time_ns()
        assert proc.stdout.readline().startswith("quiet")
        time.sleep(1.0)  # V8's background compiles end
        maps = Path(f"/proc/{proc.pid}/maps").read_text().splitlines()
        code = [m for m in maps if m.split()[1].startswith(("rwx", "r-x")) and len(m.split()) == 5]
        before = {int(m.split("-")[0], 16): read_anon(proc.pid, m) for m in code}
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(60)
    run.stop()
    pid = proc.pid
    printed = {arg(e, "alert") for e in alerts(run, pid)}
    # Node 20 maps its code space RWX once (from PROT_NONE); Node 18 toggles it RX <-> RWX
    assert TO_X in printed or E_TO_WE in printed, printed
    mem = ours(run.records("mem"), pid)
    assert mem and all(r["complete"] for r in mem), mem
    assert any(holds_code(run, r) for r in mem), "every dump holds only zeros"
    # The code space as it was when the process waited: the last dump of each region since
    # the quiet phase began (Node 20: at exit; Node 18: its last change back to r-x).
    latest: dict[int, dict[str, Any]] = {}
    for r in mem:
        if r["ts"] >= quiet_from and r["ts"] > latest.get(r["address"], {}).get("ts", 0):
            latest[r["address"]] = r
    compared = 0
    for addr, r in latest.items():
        data = run.artifact(r["path"].split("/")[1])
        for start, snapshot in before.items():
            if start <= addr < start + len(snapshot):
                off = addr - start
                assert data == snapshot[off : off + len(data)], f"{r['path']} is not the code"
                compared += 1
    assert compared, f"no dump of node's code space among {sorted(latest)} / {sorted(before)}"


def holds_code(run: Run, record: dict[str, Any]) -> bool:
    """The artifact holds something other than zeros (code)."""
    return bool(run.artifact(record["path"].split("/")[1]).strip(b"\0"))


def read_anon(pid: int, line: str) -> bytes:
    """The bytes of one /proc/PID/maps line's range (an anonymous mapping)."""
    start, end = (int(x, 16) for x in line.split()[0].split("-"))
    return read_memory(pid, start, end - start)

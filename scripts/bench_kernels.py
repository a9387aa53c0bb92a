"""`make bench-kernels` (not in CI): in a guest of the kernel matrix (6.1 by default), what the
capture's hooks cost processes out of scope, and that each hook gives the same artifacts.

Inside the guest, per session of SESSIONS (the syscall tracepoints, chosen by withholding
``prog:fentry``; fentry/fexit on the syscall functions; the same without the write capture), one
`tracecap run` with ``--scope comm=tc-hooksmoke``: the hooks `tracecap status` reports, the
syscall tracepoints the session attached (`bpftool perf`: any program on one sets
TIF_SYSCALL_TRACEPOINT on every task, so every process pays the slow syscall path on every
syscall, whatever fentry saves), then a process named tc-hooksmoke writes a file, reads one,
loads a BPF socket filter and loads (and unloads) crc7.ko of the running kernel with
init_module (the artifacts must be complete and byte-exact), then rounds of the LOOPS, each run
by a process of another name (out of scope): the syscalls the kinds hook, syscalls no kind
hooks, and a real program.
After them, per FLOORS, the loops with bpftrace's empty programs on the hooked loop's write and
read (fentry, or fexit): no capture can cost less with that kind of hook on this kernel.
The untraced rounds run before, between and after the sessions (TCG takes minutes to ready the
collector, so a session per round would not fit): each round's ratio is to the loop's median
untraced round. Ratios only: under TCG absolute times mean nothing.

Run as root on the host under the guest lock: ``python scripts/bench_kernels.py [KERNEL]``;
inside the guest it runs itself with ``--inside OUT``. TRACECAP_BENCH_HOOKS (session names,
comma-separated), TRACECAP_BENCH_ROUNDS and TRACECAP_BENCH_CALLS narrow it.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_kernels
from bench import SYSCALL_WORKLOAD
from kernel_smoke import INSNS

FACTOR = float(os.environ.get("TRACECAP_TIME_FACTOR", "1"))
ROUNDS = int(os.environ.get("TRACECAP_BENCH_ROUNDS", "3"))
CALLS = int(os.environ.get("TRACECAP_BENCH_CALLS", "200000"))
#: tracecap run's wait for readiness in the guest: the collector took 5 to 8 minutes to load the
#: object under TCG on 6.1 (NOTES, "Issue 19: the matrix as measured").
READY_TIMEOUT_S = 900
COMM = "tc-hooksmoke"
PAYLOAD = bytes(range(256)) * 37 + b"tracecap hooks\n"
KINDS = ("write", "read", "bpf", "module")
_WITHHOLD_FENTRY = {"TRACECAP_WITHHOLD_FEATURES": "prog:fentry"}


@dataclass(frozen=True)
class Session:
    """One traced variant: the kinds it captures and the collector's environment (fentry comes
    first in collector/hooks.py: withholding it gives the tracepoints)."""

    kinds: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


#: The write capture's shared-mapping programs (msync, munmap, mmap's exit) go on the hook of
#: its syscalls (collector/probes.py _MAPPINGS), so "fentry" attaches no syscall tracepoint;
#: "fentry-nowrite" was the only session without one before that, kept for comparison.
SESSIONS: dict[str, Session] = {
    "tracepoints": Session(KINDS, _WITHHOLD_FENTRY),
    "fentry": Session(KINDS),
    "fentry-nowrite": Session(("read", "bpf", "module")),
}
#: The floor under any hook of that type: bpftrace attaches an empty program to the two
#: syscalls the hooked loop makes (no tracecap runs). What these cost is the trampoline's own
#: price on this kernel and emulator, which no program body can go below.
FLOORS: dict[str, str] = {
    "floor-fexit": "kretfunc:__x64_sys_write {} kretfunc:__x64_sys_read {}",
    "floor-fentry": "kfunc:__x64_sys_write {} kfunc:__x64_sys_read {}",
}
#: Syscalls no capture kind hooks, on an fd opened before (a file in the guest's tmpfs: on the
#: 9p root each fstat is a round trip to the host, about 2 ms under TCG): with no syscall
#: tracepoint attached they cost what they cost untraced, with one attached each takes the slow
#: path.
UNHOOKED_WORKLOAD = textwrap.dedent(
    """
    import json, os, sys, time
    n = int(sys.argv[1])
    fd = os.open(sys.argv[2], os.O_RDONLY)
    getppid, fstat, lseek = os.getppid, os.fstat, os.lseek
    t0 = time.perf_counter()
    for _ in range(n // 2):
        getppid()
        fstat(fd)
        lseek(fd, 0, os.SEEK_SET)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"syscalls": 3 * (n // 2), "elapsed": elapsed}))
    """
)
#: The real program: byte-compiling a copy of five standard library packages (1.4 MB of source,
#: 94 modules; 0.4-0.5 s on this host, a few seconds under TCG): stat, open, read, write, mmap
#: and computation, as a host's programs mix them. Timed from outside, interpreter start included.
COMPILED_PACKAGES = ("email", "json", "http", "xml", "asyncio")


@dataclass(frozen=True)
class Loop:
    """One out-of-scope workload of every round: what it is, and its command (given the work
    directory); ``timed_inside`` when it prints its own ``{"elapsed": s}``."""

    what: str
    argv: Callable[[Path], list[str]]
    timed_inside: bool


LOOPS: dict[str, Loop] = {
    "hooked": Loop(
        f"{CALLS + CALLS // 2:,} syscalls the kinds hook (64 B writes to /dev/null, reads of "
        "/dev/zero)",
        lambda work: [sys.executable, "-c", SYSCALL_WORKLOAD, str(CALLS)],
        True,
    ),
    "unhooked": Loop(
        f"{3 * (CALLS // 2):,} syscalls no kind hooks (getppid, fstat, lseek)",
        lambda work: [sys.executable, "-c", UNHOOKED_WORKLOAD, str(CALLS), str(work / "seek")],
        True,
    ),
    "program": Loop(
        f"python3 -m compileall -f -q of a copy of the stdlib's {', '.join(COMPILED_PACKAGES)}",
        lambda work: [sys.executable, "-m", "compileall", "-f", "-q", str(work / "compile")],
        False,
    ),
}
#: The in-scope workload: renamed before its first write, so all it does is in scope. The module
#: is loaded by init_module from memory (a process of another name, insmod, would be out of
#: scope), then removed (delete_module, O_NONBLOCK).
WORKLOAD = textwrap.dedent(
    """
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
    with open(sys.argv[2], "wb") as f:
        f.write(bytes.fromhex(sys.argv[4]))
    with open(sys.argv[3], "rb") as f:
        f.read()
    sys.path.insert(0, sys.argv[5])
    import kernel_smoke
    kernel_smoke._bpf_load()
    if sys.argv[6]:
        image = open(sys.argv[6], "rb").read()
        buf = ctypes.create_string_buffer(image, len(image))
        libc.syscall.restype = ctypes.c_long
        print("init_module", libc.syscall(175, buf, ctypes.c_ulong(len(image)), b""),
              ctypes.get_errno(), file=sys.stderr)
        libc.syscall(176, b"crc7", 0o4000)
    """
)


def _say(what: str) -> None:
    print(f"bench_kernels: {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def _run_loop(loop: Loop, work: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(loop.argv(work), capture_output=True, text=True, check=True)
    if loop.timed_inside:
        return float(json.loads(done.stdout)["elapsed"])
    return time.perf_counter() - started


def _round(work: Path, into: dict[str, list[float]]) -> None:
    """One round of every loop, each time appended to its list in ``into``."""
    for name, loop in LOOPS.items():
        into.setdefault(name, []).append(_run_loop(loop, work))


def _rounds(work: Path, name: str) -> dict[str, list[float]]:
    """ROUNDS rounds of every loop under session ``name``, each said as it ends."""
    rounds: dict[str, list[float]] = {}
    for i in range(ROUNDS):
        _round(work, rounds)
        _say(f"{name}: round {i + 1} " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rounds.items()))
    return rounds


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _crc7(work: Path) -> Path | None:
    """crc7.ko of the running kernel, decompressed: from its modules, or from the matrix's
    unpacked kernel package (the guest's root is the host's)."""
    release = os.uname().release
    places = [Path("/lib/modules", release), test_kernels.KERNELS]
    for place in places:
        found = sorted(place.glob(f"**/{release}/kernel/lib/crc7.ko*")) + sorted(
            place.glob("kernel/lib/crc7.ko*")
        )
        if found:
            raw = found[0].read_bytes()
            if found[0].suffix == ".xz":
                raw = lzma.decompress(raw)
            image = work / "crc7.ko"
            image.write_bytes(raw)
            return image
    return None


def syscall_tracepoints(perf: Sequence[dict]) -> list[str]:
    """The syscall tracepoints (``sys_enter_*``/``sys_exit_*``, and raw_syscalls'
    ``sys_enter``/``sys_exit``) that programs are attached to, from `bpftool perf show -j`'s
    entries: any of them sets TIF_SYSCALL_TRACEPOINT on every task."""
    return sorted(
        {
            e["tracepoint"]
            for e in perf
            if e.get("fd_type") in ("tracepoint", "raw_tracepoint")
            and str(e.get("tracepoint", "")).startswith(("sys_enter", "sys_exit"))
        }
    )


def _attached() -> list[str] | str:
    """The syscall tracepoints attached now, or why bpftool could not tell."""
    try:
        bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
        done = subprocess.run([bpftool, "perf", "show", "-j"], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        return syscall_tracepoints(json.loads(done.stdout or "[]"))
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return f"bpftool perf failed: {e}"


def verdict(index: Sequence[dict], kind: str, match: Callable[[dict], bool], data: bytes) -> str:
    """The last matching artifact of ``kind`` in the index: byte-exact, or what is wrong."""
    ours = [r for r in index if r.get("kind") == kind and match(r)]
    if not ours:
        return "missing"
    last = ours[-1]
    if not last.get("complete"):
        return f"incomplete: {last.get('error') or last.get('missing')}"
    return "byte-exact" if last.get("sha256") == _sha(data) else "another sha256"


def _session(work: Path, name: str, session: Session, out: Path) -> dict:
    """One tracecap run: the hooks reported, the syscall tracepoints attached, the artifacts'
    verdicts, the loops' rounds."""
    root = work / name
    err_path = work / f"{name}.stderr"
    argv = ["tracecap", "run", "--capture", f"dir:{root}", "--capture", "clear-dir",
            *(a for kind in session.kinds for a in ("--capture", kind)),
            "--scope", f"comm={COMM}"]  # fmt: skip
    started = time.monotonic()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, **session.env))  # fmt: skip
    while b"tracecap: ready" not in err_path.read_bytes():
        (out / err_path.name).write_bytes(err_path.read_bytes())  # to follow from the host
        if proc.poll() is not None or time.monotonic() - started > 90 * FACTOR:
            proc.kill()
            return {"error": err_path.read_text(errors="replace")[-400:]}
        time.sleep(0.5)
    _say(f"{name}: ready after {time.monotonic() - started:.0f} s")
    status = subprocess.run(["tracecap", "status"], capture_output=True, text=True, timeout=60)
    hooks = json.loads(status.stdout)["collector"].get("hooks", {}) if not status.returncode else {}
    attached = _attached()
    written, readable = work / f"{name}-written.bin", work / f"{name}-readable.bin"
    readable.write_bytes(PAYLOAD[::-1])
    module = _crc7(work)
    subprocess.run([sys.executable, "-c", WORKLOAD, COMM, str(written), str(readable),
                    PAYLOAD.hex(), str(Path(__file__).resolve().parent),
                    str(module or "")], check=True)  # fmt: skip
    rounds = _rounds(work, name)
    time.sleep(2 * FACTOR)
    proc.send_signal(signal.SIGINT)
    proc.wait(120 * FACTOR)
    index = [json.loads(line) for line in (root / "out" / "index.jsonl").read_bytes().splitlines()]
    checks = {
        "write": lambda: verdict(index, "write", lambda r: r.get("source_path") == str(written),
                                 PAYLOAD),
        "read": lambda: verdict(index, "read", lambda r: r.get("source_path") == str(readable),
                                PAYLOAD[::-1]),
        "bpf": lambda: verdict(index, "bpf", lambda r: r.get("prog_name") == "tc_smoke_prog",
                               INSNS),
        "module": lambda: verdict(index, "module", lambda r: True, module.read_bytes())
        if module
        else "no crc7.ko for this kernel",
    }  # fmt: skip
    out_of_scope = [r for r in index if r.get("comm") not in (None, COMM)]
    return {
        "kinds": list(session.kinds),
        "hooks": {k: v.get("hook", v.get("refused")) for k, v in hooks.items()},
        "syscall_tracepoints": attached,
        "artifacts": {kind: checks[kind]() for kind in session.kinds},
        "out_of_scope_records": len(out_of_scope),
        "rounds": rounds,
    }


def _floor(work: Path, name: str, program: str) -> dict:
    """The loops' rounds with bpftrace's empty ``program`` attached."""
    bpftrace = shutil.which("bpftrace") or "/usr/bin/bpftrace"
    proc = subprocess.Popen([bpftrace, "-e", program], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    said = proc.stdout.readline()  # "Attaching 2 probes..." once they are
    if "Attaching" not in said:
        proc.kill()
        return {"error": said + proc.stdout.read()[-400:]}
    time.sleep(1)
    rounds = _rounds(work, name)
    proc.send_signal(signal.SIGINT)
    proc.wait(120 * FACTOR)
    return {"floor": program, "rounds": rounds}


def inside(out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="tc-bench-kernels-"))
    work.chmod(0o711)  # the writers run as the tracecap user and must pass through
    for package in COMPILED_PACKAGES:
        shutil.copytree(Path(textwrap.__file__).parent / package, work / "compile" / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (work / "seek").write_bytes(b"\0" * 4096)
    untraced: dict[str, list[float]] = {}
    sessions = {}
    only = os.environ.get("TRACECAP_BENCH_HOOKS", "").split(",")
    for name, session in SESSIONS.items():
        if only != [""] and name not in only:
            continue
        for _ in range(ROUNDS):
            _round(work, untraced)
        _say(f"untraced rounds so far: {untraced}")
        sessions[name] = _session(work, name, session, out)
    for name, program in FLOORS.items():
        if only != [""] and name not in only:
            continue
        for _ in range(ROUNDS):
            _round(work, untraced)
        sessions[name] = _floor(work, name, program)
    for _ in range(ROUNDS):
        _round(work, untraced)
    result = {"kernel": os.uname().release, "loops": {k: v.what for k, v in LOOPS.items()},
              "untraced": untraced, "sessions": sessions}  # fmt: skip
    (out / "result.json").write_text(json.dumps(result) + "\n")


def spread(values: Sequence[float], base: float = 1.0) -> str:
    """``values`` over ``base``: median and range, as ratios ("2.05x (1.89-2.60)")."""
    ratios = [v / base for v in values]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def tif_note(attached: list[str] | str) -> str:
    """What the syscall tracepoints a session attached mean for every process."""
    if isinstance(attached, str):
        return attached
    if not attached:
        return "no syscall tracepoint attached: no task gets TIF_SYSCALL_TRACEPOINT"
    shown = ", ".join(attached) if len(attached) <= 6 else f"{', '.join(attached[:3])}, ..."
    return (f"{len(attached)} syscall tracepoints attached ({shown}): TIF_SYSCALL_TRACEPOINT "
            "is set on every task, every syscall takes the slow path")  # fmt: skip


def report(result: dict) -> list[str]:
    """The run as lines: per session what it attached and its artifacts, then per loop the
    untraced median and each variant's ratio to it (median and range over its rounds; the
    untraced column is the untraced rounds' own spread, the noise)."""
    lines = [f"kernel {result['kernel']}; ratios to each loop's untraced median, median (range)"]
    sessions = result["sessions"]
    for name, s in sessions.items():
        if "error" in s:
            lines.append(f"  {name}: did not start: {s['error']}")
            continue
        if "floor" in s:
            lines.append(f"  {name}: bpftrace -e '{s['floor']}' (empty programs, no tracecap)")
            continue
        lines.append(
            f"  {name}: kinds {', '.join(s['kinds'])}; hooks {s['hooks']}; "
            f"{tif_note(s['syscall_tracepoints'])}; artifacts "
            + ", ".join(f"{k} {v}" for k, v in s["artifacts"].items())
            + f"; out-of-scope records {s['out_of_scope_records']}"
        )
    ran = [name for name, s in sessions.items() if "error" not in s]
    lines.append(f"  {'loop':<9} {'untraced s':<20} {'untraced':<18}"
                 + "".join(f" {name:<18}" for name in ran))  # fmt: skip
    for loop in result["loops"]:
        times = result["untraced"][loop]
        base = statistics.median(times)
        seconds = f"{base:.2f} ({min(times):.2f}-{max(times):.2f})"
        cells = [spread(sessions[name]["rounds"][loop], base) for name in ran]
        lines.append(f"  {loop:<9} {seconds:<20} {spread(times, base):<18}"
                     + "".join(f" {c:<18}" for c in cells))  # fmt: skip
    lines += [f"  {loop}: {what}; {len(result['untraced'][loop])} untraced rounds"
              for loop, what in result["loops"].items()]  # fmt: skip
    return lines


def main() -> None:
    if sys.argv[1:2] == ["--inside"]:
        inside(Path(sys.argv[2]))
        return
    name = sys.argv[1] if len(sys.argv) > 1 else "6.1"
    out = Path(tempfile.mkdtemp(prefix=f"tc-bench-kernels-{name}-"))
    out.chmod(0o777)
    print(f"bench_kernels: output in {out}", flush=True)
    version = (test_kernels.KERNELS / name / "version").read_text().strip()
    script = out / "bench.sh"
    passed = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("TRACECAP_BENCH_"))
    script.write_text(
        f"export TRACECAP_TIME_FACTOR={test_kernels.FACTOR} {passed} "
        f"TRACECAP_READY_TIMEOUT={READY_TIMEOUT_S} "
        f"PATH={test_kernels.PYTHON.parent}:$PATH\n"
        f"{test_kernels.PYTHON} {Path(__file__).resolve()} --inside {out} > {out}/bench.log 2>&1\n"
    )
    argv = [str(test_kernels.KERNELS / "venv" / "bin" / "vng"), "--run",
            str(test_kernels.KERNELS / name / "boot" / f"vmlinuz-{version}"), "--user", "root",
            "--cpus", "2", "--memory", "2G", "--rwdir", str(out)]  # fmt: skip
    if not test_kernels.KVM:
        argv.append("--disable-kvm")
    env = dict(os.environ, PATH=f"{argv[0].rsplit('/', 1)[0]}:{os.environ['PATH']}")
    subprocess.run([*argv, "--", "sh", str(script)], env=env, capture_output=True,
                   timeout=test_kernels.BOOT_TIMEOUT_S)  # fmt: skip
    result = out / "result.json"
    if not result.exists():
        log = out / "bench.log"
        sys.exit(
            f"no result from the {name} guest: {log.read_text()[-800:] if log.exists() else ''}"
        )
    print("\n".join(report(json.loads(result.read_text()))))


if __name__ == "__main__":
    main()

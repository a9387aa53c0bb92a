"""`make bench-kernels` (not in CI): in a guest of the kernel matrix (6.1 by default), what the
capture's hooks cost processes out of scope, and that both hooks give the same artifacts.

Inside the guest, per hook (fentry/fexit on the syscall functions, chosen by withholding
``tracefs:syscalls``, then the syscall tracepoints), one `tracecap run` capturing write, read, bpf
and module with ``--scope comm=tc-hooksmoke``: the hooks `tracecap status` reports, then a
process named tc-hooksmoke writes a file, reads one, loads a BPF socket filter and loads (and
unloads) crc7.ko of the running kernel with init_module (the artifacts must be complete and
byte-exact), then rounds of the out-of-scope loop (small writes to /dev/null, reads of
/dev/zero, by a process of another name).
The untraced rounds run before, between and after the two sessions (TCG takes about 100 s to
ready the collector, so a session per round would not fit): each traced round's ratio is to the
median untraced round. Ratios only: under TCG absolute times mean nothing.

Run as root on the host under the guest lock: ``python scripts/bench_kernels.py [KERNEL]``;
inside the guest it runs itself with ``--inside OUT``.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_kernels
from bench import SYSCALL_WORKLOAD
from kernel_smoke import INSNS

FACTOR = float(os.environ.get("TRACECAP_TIME_FACTOR", "1"))
ROUNDS = int(os.environ.get("TRACECAP_BENCH_ROUNDS", "5"))
CALLS = int(os.environ.get("TRACECAP_BENCH_CALLS", "200000"))
#: tracecap run's wait for readiness in the guest: the collector took 5 to 8 minutes to load the
#: object under TCG on 6.1 (NOTES, "Issue 19: the matrix as measured").
READY_TIMEOUT_S = 900
COMM = "tc-hooksmoke"
PAYLOAD = bytes(range(256)) * 37 + b"tracecap hooks\n"
#: Each session: the hook the write capture should report, and the collector's environment.
#: The tracepoints come first in collector/hooks.py until fentry is verified: withholding them
#: gives the fentry row.
SESSIONS = {
    "fentry_syscalls": {"TRACECAP_WITHHOLD_FEATURES": "tracefs:syscalls"},
    "syscall_tracepoints": {},
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


def _loop() -> float:
    done = subprocess.run([sys.executable, "-c", SYSCALL_WORKLOAD, str(CALLS)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return float(json.loads(done.stdout)["elapsed"])


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


def _session(work: Path, hook: str, env: dict[str, str], out: Path) -> dict:
    """One tracecap run: the hooks reported, the two artifacts' verdicts, the loop's rounds."""
    root = work / hook
    err_path = work / f"{hook}.stderr"
    argv = ["tracecap", "run", "--capture", f"dir:{root}", "--capture", "clear-dir",
            "--capture", "write", "--capture", "read", "--capture", "bpf", "--capture", "module",
            "--scope", f"comm={COMM}"]  # fmt: skip
    started = time.monotonic()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, **env))  # fmt: skip
    while b"tracecap: ready" not in err_path.read_bytes():
        (out / err_path.name).write_bytes(err_path.read_bytes())  # to follow from the host
        if proc.poll() is not None or time.monotonic() - started > 90 * FACTOR:
            proc.kill()
            return {"error": err_path.read_text(errors="replace")[-400:]}
        time.sleep(0.5)
    _say(f"{hook}: ready after {time.monotonic() - started:.0f} s")
    status = subprocess.run(["tracecap", "status"], capture_output=True, text=True, timeout=60)
    hooks = json.loads(status.stdout)["collector"].get("hooks", {}) if not status.returncode else {}
    written, readable = work / f"{hook}-written.bin", work / f"{hook}-readable.bin"
    readable.write_bytes(PAYLOAD[::-1])
    module = _crc7(work)
    subprocess.run([sys.executable, "-c", WORKLOAD, COMM, str(written), str(readable),
                    PAYLOAD.hex(), str(Path(__file__).resolve().parent),
                    str(module or "")], check=True)  # fmt: skip
    rounds = []
    for i in range(ROUNDS):
        rounds.append(_loop())
        _say(f"{hook}: round {i + 1} {rounds[-1]:.2f} s")
    time.sleep(2 * FACTOR)
    proc.send_signal(signal.SIGINT)
    proc.wait(120 * FACTOR)
    index = [json.loads(line) for line in (root / "out" / "index.jsonl").read_bytes().splitlines()]

    def verdict(kind: str, match: Callable[[dict], bool], data: bytes) -> str:
        ours = [r for r in index if r.get("kind") == kind and match(r)]
        if not ours:
            return "missing"
        last = ours[-1]
        if not last.get("complete"):
            return f"incomplete: {last.get('error') or last.get('missing')}"
        return "byte-exact" if last.get("sha256") == _sha(data) else "another sha256"

    out_of_scope = [r for r in index if r.get("comm") not in (None, COMM)]
    return {
        "hooks": {k: v.get("hook", v.get("refused")) for k, v in hooks.items()},
        "write": verdict("write", lambda r: r.get("source_path") == str(written), PAYLOAD),
        "read": verdict("read", lambda r: r.get("source_path") == str(readable), PAYLOAD[::-1]),
        "bpf": verdict("bpf", lambda r: r.get("prog_name") == "tc_smoke_prog", INSNS),
        "module": verdict("module", lambda r: True, module.read_bytes())
        if module
        else "no crc7.ko for this kernel",
        "out_of_scope_records": len(out_of_scope),
        "rounds": rounds,
    }


def inside(out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="tc-bench-kernels-"))
    work.chmod(0o711)  # the writers run as the tracecap user and must pass through
    untraced: list[float] = []
    sessions = {}
    only = os.environ.get("TRACECAP_BENCH_HOOKS", "").split(",")
    for hook, env in SESSIONS.items():
        if only != [""] and hook not in only:
            continue
        untraced += [_loop() for _ in range(ROUNDS)]
        _say(f"untraced rounds so far: {', '.join(f'{t:.2f}' for t in untraced)}")
        sessions[hook] = _session(work, hook, env, out)
    untraced += [_loop() for _ in range(ROUNDS)]
    result = {"kernel": os.uname().release, "calls": CALLS + CALLS // 2, "untraced": untraced,
              "sessions": sessions}  # fmt: skip
    (out / "result.json").write_text(json.dumps(result) + "\n")


def report(result: dict) -> None:
    base = statistics.median(result["untraced"])
    print(f"kernel {result['kernel']}: {result['calls']:,} out-of-scope syscalls per round "
          f"(64 B writes to /dev/null, reads of /dev/zero), untraced median {base:.2f} s "
          f"over {len(result['untraced'])} rounds")  # fmt: skip
    for hook, s in result["sessions"].items():
        if "error" in s:
            print(f"  {hook}: did not start: {s['error']}")
            continue
        ratios = [t / base for t in s["rounds"]]
        print(f"  {hook:<20} ratio median {statistics.median(ratios):.2f}x "
              f"(range {min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} rounds); hooks "
              f"{s['hooks']}; artifacts: write {s['write']}, read {s['read']}, bpf {s['bpf']}, "
              f"module {s['module']}; "
              f"out-of-scope records {s['out_of_scope_records']}")  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["--inside"]:
        inside(Path(sys.argv[2]))
        return
    name = sys.argv[1] if len(sys.argv) > 1 else "6.1"
    out = Path(tempfile.mkdtemp(prefix=f"tc-bench-kernels-{name}-"))
    out.chmod(0o777)
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
    report(json.loads(result.read_text()))


if __name__ == "__main__":
    main()

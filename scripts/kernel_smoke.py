"""The smoke test of every capture kind on the running kernel, for `make test-kernels` (run
inside each guest, and on the host as its row): one `tracecap run` with every kind, one real
workload per kind, and per kind a verdict written as JSON to the file given as argument.

Verdicts: ``works`` (the workload's artifact arrived complete and byte-exact), ``incomplete``
(it arrived, not whole: the record's error), ``missing`` (no record), ``refused`` (the
collector's feature probe refused the kind, with its reason from ``stats.`` hooks, and ran the
others; or tracecap did not start with that kind: its last error line). The hook each kind ran
on goes into the result as ``hooks``. When the run with every kind does not start, each kind
is tried alone, so that one kind the kernel refuses does not hide the others.

The ready timeout is scaled by TRACECAP_TIME_FACTOR (the harness sets 8 under QEMU's TCG).
TRACECAP_SMOKE_KINDS (comma-separated, e.g. ``module``) runs those kinds only: a guest's
collector loads only their programs, minutes less under TCG."""

from __future__ import annotations

import ctypes
import hashlib
import json
import lzma
import mmap
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from collector.hooks import HOOKS

FACTOR = float(os.environ.get("TRACECAP_TIME_FACTOR", "1"))
#: The wait for `tracecap: ready` (and tracecap run's own): TRACECAP_SMOKE_READY_S's seconds,
#: else 90 s scaled. Under TCG every kind at once took 374 s on 6.1 with the syscall tracepoints
#: and did not get ready within 720 s with fentry first on a loaded machine (NOTES.md).
READY_S = float(os.environ.get("TRACECAP_SMOKE_READY_S") or 90 * FACTOR)
INSNS = bytes.fromhex("b70000002a0000009500000000000000")  # r0 = 42; exit
PAYLOAD = b"tracecap kernel smoke\n" * 50


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bpf_load() -> None:
    """BPF_PROG_LOAD of a socket filter named tc_smoke_prog."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    code = ctypes.create_string_buffer(INSNS, len(INSNS))
    license = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)
    attr[0:24] = (1).to_bytes(4, "little") + (len(INSNS) // 8).to_bytes(4, "little") + (
        ctypes.addressof(code).to_bytes(8, "little")
    ) + ctypes.addressof(license).to_bytes(8, "little")  # fmt: skip
    attr[48 : 48 + 13] = b"tc_smoke_prog"
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    libc.syscall(321, 5, buf, len(attr))


#: x86-64 syscall numbers: glibc's preadv and pwritev are the *2 syscalls, which Python's os
#: calls only with flags.
_SYS_PREADV, _SYS_PWRITEV, _SYS_PREADV2, _SYS_PWRITEV2 = 295, 296, 327, 328


def _vec_at(nr: int, fd: int, bufs: list[bytearray], pos: int) -> int:
    """preadv/pwritev(2) of ``bufs`` at ``pos`` (-1: the file position, *2 only), flags 0."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    iov = (ctypes.c_uint64 * (2 * len(bufs)))()
    arrays = [(ctypes.c_char * len(b)).from_buffer(b) for b in bufs]
    for i, a in enumerate(arrays):
        iov[2 * i], iov[2 * i + 1] = ctypes.addressof(a), len(bufs[i])
    done = libc.syscall(nr, fd, iov, len(bufs), ctypes.c_long(pos), 0, 0)
    if done < 0:
        raise OSError(ctypes.get_errno(), f"syscall {nr}")
    return done


def _vectors(path: Path) -> None:
    """PAYLOAD into ``path`` and back by the other plain reads and writes, each a part of it:
    pwrite64, pwritev, pwritev2 at an offset, writev and pwritev2 at the file position; then
    readv, preadv, preadv2 at an offset and at the file position (the fentry hook's fexit-only
    programs, bpf/file_io_fentry.bpf.h, take their arguments from the registers at exit)."""
    p = PAYLOAD
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, p[200:400], 200)
        _vec_at(_SYS_PWRITEV, fd, [bytearray(p[400:500]), bytearray(p[500:600])], 400)
        _vec_at(_SYS_PWRITEV2, fd, [bytearray(p[600:700]), bytearray(p[700:800])], 600)
        os.writev(fd, [p[0:100], p[100:200]])
        os.lseek(fd, 800, os.SEEK_SET)
        _vec_at(_SYS_PWRITEV2, fd, [bytearray(p[800:])], -1)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.readv(fd, [bytearray(100), bytearray(100)])
        _vec_at(_SYS_PREADV, fd, [bytearray(300)], 200)
        _vec_at(_SYS_PREADV2, fd, [bytearray(150), bytearray(150)], 500)
        os.lseek(fd, 800, os.SEEK_SET)
        _vec_at(_SYS_PREADV2, fd, [bytearray(len(p) - 800)], -1)
    finally:
        os.close(fd)


def _mem() -> bytes:
    """A page written, then made executable (RW -> RX): the mem capture's case. Returns the
    page as it was when it became executable, which the artifact must equal."""
    libc = ctypes.CDLL(None, use_errno=True)
    region = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    data = b"\xc3" + b"smoke-mem" * 400
    region.write(data)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc.mprotect(ctypes.c_void_p(addr), 4096, mmap.PROT_READ | 4)
    return region[:]


#: Modules of the running kernel's package without dependencies: crc7 goes in by `insmod` of
#: a copy (twice: the second load fails, EEXIST, and is an attempt without a second artifact),
#: crc8 by `modprobe` from /lib/modules (vng links the kernel's cached tree there).
INSMOD, MODPROBE = "crc7", "crc8"
#: Where `make setup-test` caches modules of Debian's kernel for a host without module support
#: (there the loads fail with ENOSYS and are captured as attempts: tests/e2e/test_module_capture).
HOST_CACHE = Path("/var/cache/tracecap-test/modules")
EEXIST, ENOSYS = -17, -38


#: MODULE_INIT_COMPRESSED_FILE (include/uapi/linux/module.h, Linux 6.4): finit_module's file
#: is compressed and the kernel decompresses it.
COMPRESSED_FILE = 4


def _kmod_version() -> int:
    """kmod's version ("kmod version 30" from `modprobe --version`)."""
    done = subprocess.run(["modprobe", "--version"], capture_output=True, text=True)
    found = re.search(r"kmod version (\d+)", done.stdout)
    return int(found[1]) if found else 0


def kernel_receives(raw: bytes, compression: str | None, kmod: int, in_kernel: str) -> bytes:
    """The image the kernel receives when kmod loads a file of bytes ``raw`` compressed with
    ``compression`` (None: not compressed), by kmod version ``kmod`` on a kernel that
    decompresses ``in_kernel`` (/sys/module/compression, "" without it). kmod 31 and later
    pass a file compressed the kernel's way to finit_module with MODULE_INIT_COMPRESSED_FILE:
    the kernel gets the file's bytes (libkmod-module.c, do_finit_module); kmod 30 (Debian 12's)
    decompresses any compressed module itself and passes the result to init_module
    (libkmod-file.c: only an uncompressed file is ``direct``)."""
    if compression is None or (kmod >= 31 and compression == in_kernel):
        return raw
    return lzma.decompress(raw)


def _image(name: str) -> tuple[bytes, bool] | None:
    """The module's image as the kernel receives it from kmod here, and whether that is a
    compressed file the kernel decompresses itself."""
    found = list(Path("/lib/modules", os.uname().release).glob(f"kernel/lib/{name}.ko*"))
    if not found:
        return None
    raw = found[0].read_bytes()
    compression = "xz" if found[0].suffix == ".xz" else None
    sysfs = Path("/sys/module/compression")
    in_kernel = sysfs.read_text().strip() if sysfs.exists() else ""
    image = kernel_receives(raw, compression, _kmod_version(), in_kernel)
    return image, compression is not None and image == raw


def _kmod(*argv: str) -> int:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120 * FACTOR)
    _say(f"{' '.join(argv)}: exit {done.returncode} {done.stderr.strip()}")
    return done.returncode


def _modules(work: Path) -> Callable[[list[dict], list[dict]], str]:
    """Load real modules and unload them; return the check of the index and events. Without
    module support (no /proc/modules) the cached image's insmod fails with ENOSYS, which is
    what must be captured there (the host's row)."""
    if not Path("/proc/modules").exists():
        ko = work / f"{INSMOD}.ko"
        ko.write_bytes((HOST_CACHE / f"{INSMOD}.ko").read_bytes())
        _kmod("insmod", str(ko))
        # kmod answers finit_module's ENOSYS with init_module of its mapping of the file
        return _module_check({INSMOD: ko.read_bytes()}, ENOSYS, {INSMOD: ENOSYS})
    found = {name: _image(name) for name in (INSMOD, MODPROBE)}
    missing = [n for n, image in found.items() if image is None]
    if missing:
        return lambda index, events: f"missing: no {', '.join(missing)} in /lib/modules"
    images = {name: image[0] for name, image in found.items() if image}
    ko = work / f"{INSMOD}.ko"
    # insmod of an uncompressed copy: finit_module whatever kmod's version
    ko.write_bytes(images[INSMOD])
    _kmod("insmod", str(ko))
    _kmod("insmod", str(ko))
    _kmod("rmmod", INSMOD)
    _kmod("modprobe", MODPROBE)
    _kmod("modprobe", "-r", MODPROBE)
    compressed = {name for name, image in found.items() if image and image[1]}
    return _module_check(images, 0, {INSMOD: EEXIST}, frozenset(compressed - {INSMOD}))


def _module_check(
    images: dict[str, bytes],
    ret: int,
    again: dict[str, int],
    compressed: frozenset[str] = frozenset(),
) -> Callable[[list[dict], list[dict]], str]:
    """Per image: its first attempt stored it whole under its sha256 with ``ret`` in the index
    and in events.jsonl; the module in ``again`` was loaded a second time, failing with the
    given return, which is recorded without a second artifact. A module in ``compressed`` went
    to the kernel as its compressed file: its index record says so (finit_module's
    ``load_flags`` with MODULE_INIT_COMPRESSED_FILE)."""

    digests = {_sha(data) for data in images.values()}

    def check(index: list[dict], events: list[dict]) -> str:
        for name, data in images.items():
            digest = _sha(data)
            ours = [r for r in index if r.get("kind") == "module" and r.get("sha256") == digest]
            lines = [e for e in events if e.get("event") == "module_load"
                     and e.get("sha256") == digest]  # fmt: skip
            if not ours:
                # what was recorded instead: the records without this image's hash say why
                others = [(r.get("syscall"), r.get("ret"), r.get("source_path"), r.get("error"))
                          for r in index if r.get("kind") == "module"
                          and r.get("sha256") not in digests]  # fmt: skip
                return f"missing: no record of {name} ({digest[:12]}); others {others}"
            first, rest = ours[0], ours[1:]
            if not first.get("complete") or first.get("path") is None:
                return f"incomplete: {name}: {first.get('error') or first.get('missing')}"
            flagged = bool(first.get("load_flags", 0) & COMPRESSED_FILE)
            if flagged != (name in compressed):
                return f"incomplete: {name}: load_flags {first.get('load_flags')}"
            if first.get("ret") != ret or [e.get("ret") for e in lines[:1]] != [ret]:
                return f"incomplete: {name}: ret {first.get('ret')}, events {lines[:1]}"
            want = [again[name]] if name in again else []
            if [r.get("ret") for r in rest] != want or any(r.get("path") for r in rest):
                rets = [(r.get("ret"), r.get("path")) for r in rest]
                return f"incomplete: {name}: later attempts (ret, path) {rets}, wanted rets {want}"
        return "works"

    return check


Check = Callable[[list[dict], list[dict]], str]


def _workloads(work: Path) -> dict[str, Check]:
    """Run every workload now; return per kind a check of the index and events: its
    verdict."""
    written = work / "written.txt"
    written.write_bytes(PAYLOAD)
    # coreutils' cp moves the bytes with copy_file_range: no user buffer, read back by the
    # collector after the kernel recorded both ends' identity and times
    copied = work / "copied.txt"
    subprocess.run(["cp", str(written), str(copied)], check=True, capture_output=True)
    readable = work / "readable.txt"
    readable.write_bytes(PAYLOAD[::-1])
    subprocess.run(["cat", str(readable)], check=True, capture_output=True)
    vectors = work / "vectors.txt"
    _vectors(vectors)
    binary = work / "smoke-echo"
    shutil.copy("/bin/echo", binary)
    binary.chmod(0o755)
    subprocess.run([str(binary), "hi"], check=True, capture_output=True)
    page = _mem()
    _bpf_load()
    module = _modules(work)
    subprocess.run(["ping", "-c", "2", "-i", "0.2", "127.0.0.1"], capture_output=True)

    def artifact(
        kind: str, match: Callable[[dict], bool], data: bytes | None, what: str = ""
    ) -> Check:
        """The last record of ``kind`` that ``match``es is complete (and holds ``data``);
        ``what`` names it in a verdict when a kind has several."""
        tag = f": {what}" if what else ""

        def check(index: list[dict], events: list[dict]) -> str:
            ours = [r for r in index if r.get("kind") == kind and match(r)]
            if not ours:
                return "missing" + tag
            if not ours[-1].get("complete"):
                why = ours[-1].get("error") or ours[-1].get("missing")
                return f"incomplete{tag}: {why}"
            if data is not None and ours[-1].get("sha256") not in (None, _sha(data)):
                return f"incomplete{tag}: another sha256"
            return "works"

        return check

    def every(*checks: Check) -> Check:
        def check(index: list[dict], events: list[dict]) -> str:
            verdicts = (one(index, events) for one in checks)
            return next((v for v in verdicts if v != "works"), "works")

        return check

    inode = binary.stat().st_ino
    return {
        "write": every(
            artifact("write", lambda r: r.get("source_path") == str(written), PAYLOAD),
            artifact("write", lambda r: r.get("source_path") == str(copied), PAYLOAD, "cp"),
            artifact("write", lambda r: r.get("source_path") == str(vectors), PAYLOAD, "vec"),
        ),
        "read": every(
            artifact("read", lambda r: r.get("source_path") == str(readable), None),
            artifact("read", lambda r: r.get("source_path") == str(vectors), PAYLOAD, "vec"),
        ),
        "exec": artifact("exec", lambda r: r.get("inode") == inode, binary.read_bytes()),
        "mem": artifact("mem", lambda r: r.get("pid") == os.getpid(), page),
        "bpf": artifact("bpf", lambda r: r.get("prog_name") == "tc_smoke_prog", INSNS),
        "net": artifact("pcap", lambda r: True, None),
        "module": module,
    }


KINDS = {
    "write": ["--capture", "write"],
    "read": ["--capture", "read"],
    "exec": ["--capture", "exec"],
    "mem": ["--capture", "mem"],
    "module": ["--capture", "module"],
    "bpf": ["--capture", "bpf"],
    "net": ["--capture", "pcap:single"],
}


def _say(what: str) -> None:
    """Progress on stderr (a guest's log), so that a kernel that stops midway shows where."""
    print(f"kernel_smoke: {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


#: The collector's name of each smoke kind where it differs (`stats.` hooks are keyed by it).
COLLECTOR_KIND = {"net": "network"}
#: Per collector kind its best hook (collector/hooks.py HOOKS' first): a kind that works on
#: another one works through a fallback.
PREFERRED = {kind: hooks[0].name for kind, hooks in HOOKS.items()}


def _hooks(run_dir: Path) -> dict[str, dict[str, str]]:
    """Per kind, the hook the collector chose or its refusal (`tracecap status`)."""
    argv = ["tracecap", "status", "--run-dir", str(run_dir)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60 * FACTOR)
    if done.returncode:
        return {}
    return json.loads(done.stdout)["collector"].get("hooks", {})


#: The collector's refusal of every kind asked for (collector/probes.py choose_hooks): each
#: reason is "<kind>: needs ...; this kernel lacks it|them" (collector/hooks.py).
ALL_REFUSED = re.compile(r"(\w+): (needs .*?; this kernel lacks (?:it|them))")


def _refusals(stderr: str) -> dict[str, str]:
    """Per collector kind, the reason the collector gave for refusing it, from its log."""
    return {kind: f"{kind}: {why}" for kind, why in ALL_REFUSED.findall(stderr)}


def _run(work: Path, logs: Path, kinds: list[str]) -> tuple[dict[str, str], float, dict]:
    """One `tracecap run` with ``kinds``: their verdicts, the seconds until ready and the
    hooks chosen; a kind the collector refused (it runs the others) is ``refused`` with its
    reason. tracecap's stderr, index and events go to ``logs`` (the guest's shared directory:
    the host can follow them)."""
    _say(f"starting tracecap with {', '.join(kinds)}")
    root = work / "cap"
    err_path = logs / f"tracecap-{'-'.join(kinds)}.stderr"
    # a run directory of its own: on the host another tracecap may be running
    run_dir = work / "run"
    argv = ["tracecap", "run", "--run-dir", str(run_dir), "--capture", f"dir:{root}",
            "--capture", "clear-dir"]  # fmt: skip
    for kind in kinds:
        argv += KINDS[kind]
    started = time.monotonic()
    # tracecap run's own wait for readiness (60 s) scaled like ours
    env = dict(os.environ, TRACECAP_READY_TIMEOUT=str(READY_S))
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
    while b"tracecap: ready" not in err_path.read_bytes():
        if proc.poll() is not None or time.monotonic() - started > READY_S:
            proc.kill()
            proc.wait()
            stderr = err_path.read_text(errors="replace")
            lines = stderr.strip().splitlines() or ["no output"]
            reasons = _refusals(stderr)
            verdicts = {
                k: "refused: " + reasons.get(COLLECTOR_KIND.get(k, k), lines[-1][:200])
                for k in kinds
            }
            return verdicts, time.monotonic() - started, {}
        time.sleep(0.2)
    ready = time.monotonic() - started
    hooks = _hooks(run_dir)
    _say(f"ready after {ready:.0f} s; hooks {json.dumps(hooks)}; running the workloads")
    checks = _workloads(work)
    _say("workloads done; stopping")
    time.sleep(2 * FACTOR)
    proc.send_signal(signal.SIGINT)
    proc.wait(120 * FACTOR)
    for name in ("index.jsonl", "events.jsonl"):  # beside the log: the host can read them
        if (root / "out" / name).exists():
            shutil.copy(root / "out" / name, logs / f"{'-'.join(kinds)}-{name}")
    index = _jsonl(root / "out" / "index.jsonl")
    events = _jsonl(root / "out" / "events.jsonl")
    verdicts = {}
    for k in kinds:
        hook = hooks.get(COLLECTOR_KIND.get(k, k), {})
        if "refused" in hook:
            verdicts[k] = f"refused: {hook['refused']}"
            continue
        verdict = checks[k](index, events)
        fallback = hook.get("hook") != PREFERRED.get(COLLECTOR_KIND.get(k, k))
        verdicts[k] = (
            f"fallback: {hook.get('hook')}" if verdict == "works" and fallback else verdict
        )
    return verdicts, ready, hooks


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def _kinds() -> list[str]:
    """The kinds to run: TRACECAP_SMOKE_KINDS's, else every one."""
    asked = [k for k in os.environ.get("TRACECAP_SMOKE_KINDS", "").split(",") if k]
    unknown = sorted(set(asked) - set(KINDS))
    if unknown:
        sys.exit(f"kernel_smoke: unknown kinds {unknown} in TRACECAP_SMOKE_KINDS (known: "
                 f"{', '.join(KINDS)})")  # fmt: skip
    return asked or list(KINDS)


def main() -> None:
    result_path = Path(sys.argv[1])
    kinds = _kinds()
    work = Path(tempfile.mkdtemp(prefix="tc-smoke-"))
    work.chmod(0o711)  # the writers run as the tracecap user and must pass through
    started = time.monotonic()
    boot = float(Path("/proc/uptime").read_text().split()[0])
    verdicts, ready, hooks = _run(work, result_path.parent, kinds)
    if len(kinds) > 1 and all(v.startswith("refused") for v in verdicts.values()):
        # the collector names each refused kind with its reason; a kind it did not name
        # (tracecap failed otherwise) is tried alone, so that one kind does not hide the others
        for kind in kinds:
            if not ALL_REFUSED.match(verdicts[kind].removeprefix("refused: ")):
                verdicts[kind] = _run(work, result_path.parent, [kind])[0][kind]
    result = {
        "kernel": os.uname().release,
        "boot_s": round(boot, 1),
        "ready_s": round(ready, 1),
        "smoke_s": round(time.monotonic() - started, 1),
        "verdicts": verdicts,
        "hooks": hooks,
    }
    result_path.write_text(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

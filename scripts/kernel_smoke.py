"""The smoke test of every capture kind on the running kernel, for `make test-kernels` (run
inside each guest, and on the host as its row): one `tracecap run` with every kind, one real
workload per kind, and per kind a verdict written as JSON to the file given as argument.

Verdicts: ``works`` (the workload's artifact arrived complete and byte-exact), ``incomplete``
(it arrived, not whole: the record's error), ``missing`` (no record), ``refused`` (the
collector's feature probe refused the kind, with its reason from ``stats.`` hooks, and ran the
others; or tracecap did not start with that kind: its last error line). The hook each kind ran
on goes into the result as ``hooks``. When the run with every kind does not start, each kind
is tried alone, so that one kind the kernel refuses does not hide the others.

The ready timeout is scaled by TRACECAP_TIME_FACTOR (the harness sets 8 under QEMU's TCG)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

FACTOR = float(os.environ.get("TRACECAP_TIME_FACTOR", "1"))
READY_S = 90 * FACTOR
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


def _mem() -> bytes:
    """A page written, then made executable (RW -> RX): the mem capture's case."""
    libc = ctypes.CDLL(None, use_errno=True)
    region = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    data = b"\xc3" + b"smoke-mem" * 400
    region.write(data)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc.mprotect(ctypes.c_void_p(addr), 4096, mmap.PROT_READ | 4)
    return data


def _module(work: Path) -> tuple[str, bytes] | None:
    """insmod of a small module of the running kernel (crc7, no dependencies), then rmmod."""
    for base in (Path("/lib/modules"), Path("/usr/lib/modules")):
        found = list((base / os.uname().release).glob("kernel/lib/crc7.ko*"))
        if found:
            ko = work / "crc7.ko"
            raw = found[0].read_bytes()
            if found[0].suffix == ".xz":
                import lzma

                raw = lzma.decompress(raw)
            ko.write_bytes(raw)
            done = subprocess.run(["insmod", str(ko)], capture_output=True, text=True)
            subprocess.run(["rmmod", "crc7"], capture_output=True)
            return done.stderr.strip(), raw
    return None


def _workloads(work: Path) -> dict[str, Callable[[list[dict]], str]]:
    """Run every workload now; return per kind a check of the index: its verdict."""
    written = work / "written.txt"
    written.write_bytes(PAYLOAD)
    readable = work / "readable.txt"
    readable.write_bytes(PAYLOAD[::-1])
    subprocess.run(["cat", str(readable)], check=True, capture_output=True)
    binary = work / "smoke-echo"
    shutil.copy("/bin/echo", binary)
    binary.chmod(0o755)
    subprocess.run([str(binary), "hi"], check=True, capture_output=True)
    mem = _mem()
    _bpf_load()
    module = _module(work)
    subprocess.run(["ping", "-c", "2", "-i", "0.2", "127.0.0.1"], capture_output=True)

    def artifact(kind: str, match: Callable[[dict], bool], data: bytes | None):
        def check(index: list[dict]) -> str:
            ours = [r for r in index if r.get("kind") == kind and match(r)]
            if not ours:
                return "missing"
            if not ours[-1].get("complete"):
                return "incomplete: " + str(ours[-1].get("error") or ours[-1].get("missing"))
            if data is not None and ours[-1].get("sha256") not in (None, _sha(data)):
                return "incomplete: another sha256"
            return "works"

        return check

    inode = binary.stat().st_ino
    checks = {
        "write": artifact("write", lambda r: r.get("source_path") == str(written), PAYLOAD),
        "read": artifact("read", lambda r: r.get("source_path") == str(readable), None),
        "exec": artifact("exec", lambda r: r.get("inode") == inode, binary.read_bytes()),
        "mem": artifact("mem", lambda r: True, None),
        "bpf": artifact("bpf", lambda r: r.get("prog_name") == "tc_smoke_prog", INSNS),
        "net": artifact("pcap", lambda r: True, None),
    }
    if module is None:
        checks["module"] = lambda index: "missing: no crc7.ko for this kernel"
    else:
        checks["module"] = artifact("module", lambda r: True, module[1])
    del mem
    return checks


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


def _hooks() -> dict[str, dict[str, str]]:
    """Per kind, the hook the collector chose or its refusal (`tracecap status`)."""
    done = subprocess.run(["tracecap", "status"], capture_output=True, text=True, timeout=60)
    if done.returncode:
        return {}
    return json.loads(done.stdout)["collector"].get("hooks", {})


def _run(work: Path, kinds: list[str]) -> tuple[dict[str, str], float, dict]:
    """One `tracecap run` with ``kinds``: their verdicts, the seconds until ready and the
    hooks chosen; a kind the collector refused (it runs the others) is ``refused`` with its
    reason."""
    _say(f"starting tracecap with {', '.join(kinds)}")
    root = work / "cap"
    err_path = work / "stderr"
    argv = ["tracecap", "run", "--capture", f"dir:{root}", "--capture", "clear-dir"]
    for kind in kinds:
        argv += KINDS[kind]
    started = time.monotonic()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    while b"tracecap: ready" not in err_path.read_bytes():
        if proc.poll() is not None or time.monotonic() - started > READY_S:
            proc.kill()
            proc.wait()
            lines = err_path.read_text(errors="replace").strip().splitlines() or ["no output"]
            verdicts = {k: "refused: " + lines[-1][:200] for k in kinds}
            return verdicts, time.monotonic() - started, {}
        time.sleep(0.2)
    ready = time.monotonic() - started
    hooks = _hooks()
    _say(f"ready after {ready:.0f} s; running the workloads")
    checks = _workloads(work)
    _say("workloads done; stopping")
    time.sleep(2 * FACTOR)
    proc.send_signal(signal.SIGINT)
    proc.wait(120 * FACTOR)
    index_path = root / "out" / "index.jsonl"
    index = [json.loads(line) for line in index_path.read_bytes().splitlines()]
    verdicts = {}
    for k in kinds:
        refused = hooks.get(COLLECTOR_KIND.get(k, k), {}).get("refused")
        verdicts[k] = f"refused: {refused}" if refused else checks[k](index)
    return verdicts, ready, hooks


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="tc-smoke-"))
    work.chmod(0o711)  # the writers run as the tracecap user and must pass through
    verdicts, ready, hooks = _run(work, list(KINDS))
    if all(v.startswith("refused") for v in verdicts.values()):
        for kind in KINDS:
            verdicts[kind] = _run(work, [kind])[0][kind]
    result = {
        "kernel": os.uname().release,
        "ready_s": round(ready, 1),
        "verdicts": verdicts,
        "hooks": hooks,
    }
    Path(sys.argv[1]).write_text(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

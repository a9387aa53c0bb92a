"""Executed binaries, unpacked memory, kernel modules and BPF programs, end to end."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import tracee_decode
from tests.support.workloads import python

pytestmark = pytest.mark.ebpf

MEM_SCOPE = ("--scope", "comm=tc-unpacker")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_binary(src: str, dst: Path) -> Path:
    shutil.copy(src, dst)
    dst.chmod(0o755)
    return dst


def test_exec_captures_a_binary_once_byte_identical_and_runnable(tracecap, workdir: Path):
    binary = copy_binary("/bin/echo", workdir / "my-echo")
    run = tracecap("--capture", "exec")
    for _ in range(2):
        subprocess.run([binary, "hello"], check=True, capture_output=True)
    run.stop()
    ours = [r for r in run.records("exec") if r["inode"] == binary.stat().st_ino]
    assert len(ours) == 1, ours
    record = ours[0]
    artifact = run.out_dir / record["path"]
    assert artifact.name.startswith("exec.") and artifact.name.endswith(".my-echo")
    assert artifact.read_bytes() == binary.read_bytes()
    assert record["sha256"] == sha(binary.read_bytes()) and record["complete"] is True
    assert record["argv"] == [str(binary), "hello"]
    assert record["ctime"] == binary.stat().st_ctime_ns
    assert artifact.stat().st_mode & 0o777 == 0o640
    runnable = workdir / "runnable"
    shutil.copy(artifact, runnable)
    runnable.chmod(0o755)
    assert subprocess.run([runnable, "again"], capture_output=True).stdout == b"again\n"


def test_exec_captures_again_after_the_ctime_changes(tracecap, workdir: Path):
    binary = copy_binary("/bin/true", workdir / "changing")
    run = tracecap("--capture", "exec")
    subprocess.run([binary], check=True)
    os.chmod(binary, 0o700)  # a new ctime, same content
    subprocess.run([binary], check=True)
    run.stop()
    ours = [r for r in run.records("exec") if r["inode"] == binary.stat().st_ino]
    assert len(ours) == 2
    assert ours[0]["ctime"] != ours[1]["ctime"]
    assert ours[0]["path"] != ours[1]["path"]


def test_fifty_short_lived_distinct_binaries_are_all_captured(tracecap, workdir: Path):
    binaries = [copy_binary("/bin/true", workdir / f"short-{i:02d}") for i in range(50)]
    run = tracecap("--capture", "exec", "--scope", "comm!=nothing-real")
    for b in binaries:
        subprocess.run([b], check=True)
    run.stop()
    inodes = {r["inode"] for r in run.records("exec") if r["complete"]}
    missing = [b.name for b in binaries if b.stat().st_ino not in inodes]
    assert missing == []
    true_bytes = Path("/bin/true").read_bytes()
    for r in run.records("exec"):
        if r["inode"] in {b.stat().st_ino for b in binaries}:
            assert (run.out_dir / r["path"]).read_bytes() == true_bytes


def test_memfd_binary_is_captured(tracecap, workdir: Path):
    run = tracecap("--capture", "exec")
    python("""
        import os
        fd = os.memfd_create("tcpayload", 0)
        os.write(fd, open("/bin/sleep", "rb").read())
        pid = os.fork()
        if pid == 0:
            os.execve(fd, ["sleep", "0.5"], {})
        os.waitpid(pid, 0)
    """)
    run.stop()
    memfd = [r for r in run.records("exec") if r.get("memfd")]
    assert memfd, run.records("exec")
    art = (run.out_dir / memfd[0]["path"]).read_bytes()
    assert art == Path("/bin/sleep").read_bytes(), (memfd[0], run.logs())
    assert "tcpayload" in memfd[0]["path"]


FAST_MEMFDS = """
    import os, sys
    payload = open("/bin/true", "rb").read()
    for i in range(int(sys.argv[1])):
        fd = os.memfd_create(f"tc-fast-{i:02d}", 0)
        os.write(fd, payload)
        pid = os.fork()
        if pid == 0:
            os.execve(fd, ["tc-fast"], {})  # fexecve: /bin/true, which exits at once
        os.waitpid(pid, 0)
        os.close(fd)
"""


def test_twenty_fast_memfd_executions_are_all_captured_byte_for_byte(tracecap, workdir: Path):
    """Each memfd holds /bin/true and its process exits at once: by the time the collector
    could open /proc/PID/exe, process and memfd are gone (5 of 20 were lost so). The kernel
    reads the memfd's pages at the exec (bpf/pagecache.bpf.h)."""
    run = tracecap("--capture", "exec")
    subprocess.run([sys.executable, "-c", textwrap.dedent(FAST_MEMFDS), "20"], check=True,
                   timeout=60)  # fmt: skip
    run.stop()
    fast = [r for r in run.records("exec") if "tc-fast-" in r["source_path"]]
    names = sorted(r["source_path"] for r in fast)
    assert names == [f"/memfd:tc-fast-{i:02d}" for i in range(20)], names
    true_bytes = Path("/bin/true").read_bytes()
    for r in fast:
        assert (r["memfd"], r["deleted"], r["source"], r["complete"]) == (
            True, True, "page_cache", True), r  # fmt: skip
        assert (run.out_dir / r["path"]).read_bytes() == true_bytes
        assert r["sha256"] == sha(true_bytes)
        assert Path(r["path"]).name.startswith("exec.") and "memfd_tc-fast-" in r["path"]


def test_a_deleted_binary_executed_through_its_fd_is_captured_from_the_kernel(
    tracecap, workdir: Path
):
    binary = copy_binary("/bin/echo", workdir / "gone-echo")
    run = tracecap("--capture", "exec")
    python(f"""
        import os
        fd = os.open({str(binary)!r}, os.O_RDONLY)
        os.unlink({str(binary)!r})
        pid = os.fork()
        if pid == 0:
            os.execve(fd, ["gone-echo", "x"], {{}})
        os.waitpid(pid, 0)
    """)
    run.stop()
    [record] = [r for r in run.records("exec") if r["source_path"].endswith("gone-echo")]
    assert (record["deleted"], record["memfd"], record["source"]) == (True, False, "page_cache")
    assert (run.out_dir / record["path"]).read_bytes() == Path("/bin/echo").read_bytes()
    assert record["complete"] is True


def test_a_script_is_captured_as_script_and_interpreter(tracecap, workdir: Path):
    """#! executions: the script and the interpreter, each named after itself and deduplicated
    on its own identity (a second script with the same interpreter is captured too), with
    the relation in the index and in Tracee's sched_process_exec."""
    scripts = []
    for name, word in (("first.sh", "one"), ("second.sh", "two")):
        script = workdir / name
        script.write_bytes(f"#!/bin/sh\necho {word}\n".encode())
        script.chmod(0o755)
        scripts.append(script)
    run = tracecap("--capture", "exec", "--output", "json", "--events", "sched_process_exec")
    for script in (*scripts, scripts[0]):
        out = subprocess.run([f"./{script.name}", "arg"], cwd=workdir, check=True,
                             capture_output=True, timeout=30).stdout  # fmt: skip
        assert out in (b"one\n", b"two\n")
    run.stop()
    dash = Path("/bin/sh").resolve()
    records = [r for r in run.records("exec") if r.get("script_path", "").startswith(
        str(workdir))]  # fmt: skip
    interpreters = [r for r in records if r["role"] == "interpreter"]
    captured_scripts = [r for r in records if r["role"] == "script"]
    assert len(interpreters) <= 1  # the interpreter once (maybe captured before, for another)
    assert sorted(r["source_path"] for r in captured_scripts) == [str(s) for s in scripts]
    for r, script in zip(sorted(captured_scripts, key=lambda r: r["source_path"]), scripts,
                         strict=True):  # fmt: skip
        assert Path(r["path"]).name.endswith("." + script.name)
        assert (run.out_dir / r["path"]).read_bytes() == script.read_bytes()
        assert (r["inode"], r["ctime"]) == (script.stat().st_ino, script.stat().st_ctime_ns)
        assert (r["interp"], r["cmdpath"]) == ("/bin/sh", f"./{script.name}")
        assert r["interpreter_path"] == str(dash) and r["complete"] is True
    all_dash = [r for r in run.records("exec") if r.get("role") == "interpreter" and
                r["source_path"] == str(dash)]  # fmt: skip
    if all_dash:  # captured in this run: named after itself, its own bytes
        assert Path(all_dash[0]["path"]).name.endswith("." + dash.name)
        assert (run.out_dir / all_dash[0]["path"]).read_bytes() == dash.read_bytes()
    # every printed line decoded strictly against Tracee v0.17's schema (tracecap/schemas.py)
    events = [tracee_decode.decode(line) for line in run.stdout.splitlines()]
    ours = [{a["name"]: a["value"] for a in e["args"]} for e in events
            if e["eventName"] == "sched_process_exec"]  # fmt: skip
    ours = [a for a in ours if a["cmdpath"] in {f"./{s.name}" for s in scripts}]
    assert len(ours) == 3, ours
    for args in ours:
        assert (args["pathname"], args["interp"]) == (str(dash), "/bin/sh")
        assert args["interpreter_pathname"] == str(dash)
        assert (args["interpreter_dev"], args["interpreter_inode"], args["interpreter_ctime"]) == (
            args["dev"], dash.stat().st_ino, dash.stat().st_ctime_ns
        )  # fmt: skip
        assert args["argv"] == ["/bin/sh", args["cmdpath"], "arg"]


def test_a_restart_does_not_capture_a_captured_binary_again(tracecap, workdir: Path):
    binary = copy_binary("/bin/true", workdir / "once")
    for _ in range(2):
        run = tracecap("--capture", "exec")
        subprocess.run([binary], check=True)
        run.stop()
    ours = [r for r in run.records("exec") if r["inode"] == binary.stat().st_ino]
    assert len(ours) == 1


UNPACKER = """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    R, W, X = 1, 2, 4
    def region(prot):
        p = libc.mmap(None, 8192, prot, 0x22, -1, 0)
        assert p not in (None, ctypes.c_void_p(-1).value)
        return p
"""


def test_mem_captures_a_region_made_executable_after_writing(tracecap, workdir: Path):
    run = tracecap("--capture", "mem", *MEM_SCOPE)
    python(
        UNPACKER
        + """
    p = region(R | W)
    ctypes.memmove(p + 100, b"UNPACKED-MARKER-PAYLOAD", 23)
    assert libc.mprotect(p, 8192, R | X) == 0
    print(hex(p))
    """,
        comm=b"tc-unpacker",
    )
    run.stop()
    (record,) = run.records("mem")
    data = (run.out_dir / record["path"]).read_bytes()
    assert data[100:123] == b"UNPACKED-MARKER-PAYLOAD"
    assert record["prot_before"] & 2 and record["prot_after"] == 5
    assert record["syscall"] == "mprotect"
    assert record["path"].startswith(f"host/mem.pid-{record['pid']}.ts-")


def test_mem_ignores_rx_to_rwx_and_rw_to_r(tracecap, workdir: Path):
    run = tracecap("--capture", "mem", *MEM_SCOPE)
    python(
        UNPACKER
        + """
    p = region(R | X)
    assert libc.mprotect(p, 8192, R | W | X) == 0
    q = region(R | W)
    ctypes.memmove(q, b"x", 1)
    assert libc.mprotect(q, 8192, R) == 0
    """,
        comm=b"tc-unpacker",
    )
    run.stop()
    assert run.records("mem") == []


MODULE_LOADER = """
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def init_module(image: bytes, params: bytes) -> int:
        buf = ctypes.create_string_buffer(image, len(image))
        return libc.syscall(175, buf, ctypes.c_ulong(len(image)), ctypes.c_char_p(params))
    def finit_module(path: str, params: bytes) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            return libc.syscall(313, fd, ctypes.c_char_p(params), 0)
        finally:
            os.close(fd)
"""


def test_module_images_from_init_and_finit_module(tracecap, workdir: Path):
    image, ko = Path("/bin/true").read_bytes(), workdir / "fake.ko"
    shutil.copy("/bin/ls", ko)
    run = tracecap("--capture", "module")
    python(
        MODULE_LOADER
        + f"""
    init_module(open("/bin/true", "rb").read(), b"answer=42")
    init_module(open("/bin/true", "rb").read(), b"answer=42")
    finit_module({str(ko)!r}, b"")
    """
    )
    run.stop()
    records = run.records("module")
    init = [r for r in records if r["syscall"] == "init_module"]
    finit = [r for r in records if r["syscall"] == "finit_module"]
    assert len(init) == 2, "each attempt has its record"
    assert init[1]["duplicate_of"] == init[0]["path"], "the same image is stored once"
    assert (run.out_dir / init[0]["path"]).read_bytes() == image
    assert init[0]["path"].endswith("." + sha(image))
    assert init[0]["params"] == init[1]["params"] == "answer=42"
    assert init[0]["ret"] < 0  # ENOSYS here: the attempt is captured all the same
    assert len(finit) == 1
    assert (run.out_dir / finit[0]["path"]).read_bytes() == ko.read_bytes()
    st = ko.stat()
    assert finit[0]["inode"] == st.st_ino and finit[0]["path"].endswith("." + sha(ko.read_bytes()))


BPF_LOADER = """
    import ctypes, struct
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def prog_load(name: bytes, insns: bytes) -> int:
        code = ctypes.create_string_buffer(insns, len(insns))
        license = ctypes.create_string_buffer(b"GPL")
        attr = bytearray(128)
        struct.pack_into("<IIQQ", attr, 0, 1, len(insns) // 8, ctypes.addressof(code),
                         ctypes.addressof(license))
        attr[48:48 + len(name)] = name
        buf = ctypes.create_string_buffer(bytes(attr), len(attr))
        return libc.syscall(321, 5, buf, len(attr))
"""
# r0 = 42; exit
INSNS = bytes.fromhex("b70000002a0000009500000000000000")


def test_bpf_program_bytecode_is_captured_and_disassembles(tracecap, workdir: Path):
    run = tracecap("--capture", "bpf")
    python(BPF_LOADER + f"\n    assert prog_load(b'tc_test_prog', {INSNS!r}) >= 0\n")
    run.stop()
    ours = [r for r in run.records("bpf") if r["prog_name"] == "tc_test_prog"]
    assert len(ours) == 1
    artifact = run.out_dir / ours[0]["path"]
    assert artifact.read_bytes() == INSNS
    assert artifact.name == f"bpf.name-tc_test_prog.pid-{ours[0]['pid']}.{sha(INSNS)}"
    dis = subprocess.run(
        ["bpf-objdump", "-D", "-b", "binary", "-m", "bpf", str(artifact)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "mov %r0,0x2a" in dis or "r0 = 42" in dis, dis
    assert "exit" in dis


#: A socket filter that returns 0, as C: bpftool loads it the way any libbpf loader does.
BPFTOOL_PROG = """
__attribute__((section("socket"), used)) int bpftool_socket(void *ctx) { return 0; }
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


def test_bpftool_prog_load_bytecode_is_captured(tracecap, workdir: Path):
    source, obj, pin = workdir / "p.bpf.c", workdir / "p.bpf.o", Path(f"/sys/fs/bpf/{workdir.name}")
    source.write_text(BPFTOOL_PROG)
    subprocess.run(["clang", "-O2", "-target", "bpf", "-c", source, "-o", obj], check=True)
    section = workdir / "socket.bin"
    subprocess.run(["llvm-objcopy", "-O", "binary", "--only-section=socket", obj, section],
                   check=True)  # fmt: skip
    run = tracecap("--capture", "bpf")
    try:
        subprocess.run(["bpftool", "prog", "load", obj, pin], check=True, capture_output=True)
    finally:
        pin.unlink(missing_ok=True)
    run.stop()
    ours = [r for r in run.records("bpf") if r["prog_name"] == "bpftool_socket"]
    assert len(ours) == 1, run.records("bpf")
    (record,) = ours
    insns = section.read_bytes()
    assert insns == bytes.fromhex("b7000000000000009500000000000000")  # r0 = 0; exit
    # libbpf's feature probes load the same two instructions first: the program's record
    # points at their artifact
    stored = record["path"] or record["duplicate_of"]
    assert (run.out_dir / stored).read_bytes() == insns and record["sha256"] == sha(insns)
    assert record["complete"] is True and record["ret"] >= 0 and record["comm"] == "bpftool"


def test_bpftrace_programs_are_captured(tracecap, workdir: Path):
    run = tracecap("--capture", "bpf")
    done = subprocess.run(["bpftrace", "-e", 'BEGIN { printf("tc-bpftrace\\n"); exit(); }'],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    run.stop()
    assert "tc-bpftrace" in done.stdout, done
    ours = [r for r in run.records("bpf") if r["comm"] == "bpftrace" and r["ret"] >= 0]
    begin = [r for r in ours if r["prog_name"] == "BEGIN"]
    assert len(begin) == 1, ours
    (record,) = begin
    artifact = run.out_dir / record["path"]
    code = artifact.read_bytes()
    assert record["complete"] is True and len(code) == record["insn_cnt"] * 8
    assert code[-8:] == bytes.fromhex("9500000000000000")  # exit
    dis = subprocess.run(
        ["bpf-objdump", "-D", "-b", "binary", "-m", "bpf", str(artifact)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    # printf() sends its arguments to user space with a helper call
    assert "call" in dis and "exit" in dis, dis


def test_hostile_names_stay_inside_the_output_directory(tracecap, workdir: Path):
    names = [b"...", b".hidden", b"x" * 255, b"bad-\xff\xfe", b"new\nline"]
    binaries = []
    for name in names:
        path = os.fsencode(workdir) + b"/" + name
        shutil.copy("/bin/true", path)
        os.chmod(path, 0o755)
        binaries.append(path)
    run = tracecap("--capture", "exec", "--capture", "bpf")
    for b in binaries:
        subprocess.run([b], check=True)
    python(BPF_LOADER + f"\n    prog_load(b'../../etc/x\\xff', {INSNS!r})\n")
    run.stop()
    out = run.out_dir.resolve()
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out)
        assert len(path.name.encode()) <= 255
    inodes = {os.stat(b).st_ino for b in binaries}
    captured = [r for r in run.records("exec") if r["inode"] in inodes]
    assert len(captured) == len(binaries)
    for r in captured:
        assert (run.out_dir / r["path"]).parent == run.out_dir / "host"
    hostile_bpf = [r for r in run.records("bpf") if r["prog_name"].startswith("../")]
    assert len(hostile_bpf) == 1
    assert (run.out_dir / hostile_bpf[0]["path"]).parent == run.out_dir / "host"


def test_a_binary_larger_than_the_bus_budget_arrives_whole(tracecap, workdir: Path):
    """The collector reads binaries itself and waits for room on the bus rather than drop
    what a writer has not taken yet (the bus holds 16 MiB of large payloads at most)."""
    binary = copy_binary("/bin/true", workdir / "big-true")
    with open(binary, "ab") as f:
        f.write(os.urandom(96 << 20))  # ELF loaders ignore trailing bytes
    run = tracecap("--capture", "exec")
    subprocess.run([binary], check=True, timeout=60)
    run.stop()
    (record,) = [r for r in run.records("exec") if r["inode"] == binary.stat().st_ino]
    assert record["complete"] is True, record
    assert record["sha256"] == sha(binary.read_bytes())
    assert (run.out_dir / record["path"]).stat().st_size == binary.stat().st_size

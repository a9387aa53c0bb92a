"""collector/exec_files.py: what an exec event captures, under which names and identities."""

from __future__ import annotations

from bpf import records
from collector import exec_files
from tests.support import records as build

BASE = {"pid": 50}


def event(**values) -> records.ExecEvent:
    fields = {"pid": 50, "cgroup_id": 9, "dev": 1, "inode": 2, "ctime": 3, "mode": 0o100755,
              "argv": b"x\0", "argv_len": 2} | values  # fmt: skip
    for name in ("filename", "path", "interp", "script_path"):
        if name in fields:
            fields[f"{name}_len"] = len(fields[name])
    return records.decode_exec_event(build.pack(records.TC_EXEC_EVENT,
                                                kind=records.REC_EXEC_EVENT, **fields))  # fmt: skip


def test_a_program_is_named_as_run_and_opened_through_proc_then_its_path():
    proc, [f] = exec_files.exec_plan(event(filename=b"/usr/bin/app", path=b"/usr/bin/app"), BASE)
    assert (f.env["path"], f.env["role"], f.key, f.copy) == (b"/usr/bin/app", "program",
                                                             (9, 1, 2, 3), None)  # fmt: skip
    assert f.candidates == ["/proc/50/exe", "/usr/bin/app"]
    assert proc["path"] == b"/usr/bin/app" and "interp" not in proc


def test_a_program_run_through_a_symlink_is_opened_by_the_kernels_path_only():
    """The name it was run by may pass through a link its owner can repoint; the kernel's
    d_path cannot, and a cut or deleted one names no file to open."""
    ev = event(filename=b"/home/u/bin/py", path=b"/usr/bin/python3.11")
    _, [f] = exec_files.exec_plan(ev, BASE)
    assert f.candidates == ["/proc/50/exe", "/usr/bin/python3.11"]
    for flag in (records.EXEC_PATH_TRUNCATED, records.EXEC_DELETED):
        _, [f] = exec_files.exec_plan(event(filename=b"/x", path=b"/usr/bin/x", flags=flag), BASE)
        assert f.candidates == ["/proc/50/exe"]


def test_a_file_run_by_its_fd_is_named_by_the_kernels_path():
    flags = records.EXEC_DELETED | records.EXEC_COPIED
    ev = event(filename=b"/dev/fd/3", path=b"/tmp/gone", flags=flags, obj_id=7, captured=10,
               size=10)  # fmt: skip
    _, [f] = exec_files.exec_plan(ev, BASE)
    assert (f.env["path"], f.env["cmdpath"], f.env["deleted"]) == (b"/tmp/gone", b"/dev/fd/3",
                                                                   True)  # fmt: skip
    assert f.copy == records.ExecCopy(7, 10) and f.candidates == ["/proc/50/exe"]


def test_a_memfd_gets_the_proc_style_name():
    ev = event(filename=b"/dev/fd/3", path=b"memfd:x", flags=records.EXEC_MEMFD)
    _, [f] = exec_files.exec_plan(ev, BASE)
    assert (f.env["path"], f.env["memfd"]) == (b"/memfd:x", True)


def test_a_relative_script_is_looked_for_in_the_processs_directory():
    flags = records.EXEC_SCRIPT | records.EXEC_SCRIPT_FILE | records.EXEC_SCRIPT_PATH_TRUNCATED
    ev = event(
        filename=b"./s.sh",
        path=b"/usr/bin/dash",
        interp=b"/bin/sh",
        flags=flags,
        script_inode=5,
        script_dev=1,
        script_ctime=6,
        script_path=b"/very/long/cut",
    )
    proc, [interp, script] = exec_files.exec_plan(ev, BASE)
    assert (interp.env["role"], interp.env["path"], interp.key) == (
        "interpreter",
        b"/usr/bin/dash",
        (9, 1, 2, 3),
    )
    assert (script.env["role"], script.key) == ("script", (9, 1, 5, 6))
    assert script.candidates == ["/proc/50/cwd/./s.sh"]  # a cut path is never opened
    assert proc["script_inode"] == 5 and proc["interp"] == b"/bin/sh"


def test_the_proc_event_carries_the_kernels_path_stdin_and_parent():
    ev = event(filename=b"./dd", path=b"/usr/bin/dd", stdin_mode=0o020000, stdin_path_len=9,
               stdin_path=b"/dev/null", flags=records.EXEC_FROM_KERNEL)  # fmt: skip
    proc, [f] = exec_files.exec_plan(ev, BASE)
    assert (proc["path"], proc["exe_path"], proc["cmdpath"]) == (b"./dd", b"/usr/bin/dd", b"./dd")
    assert (proc["stdin_mode"], proc["stdin_path"], proc["from_kernel"]) == (
        0o020000, b"/dev/null", True
    )  # fmt: skip
    assert f.env["exe_path"] == b"/usr/bin/dd"

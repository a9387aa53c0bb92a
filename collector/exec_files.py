"""What one exec event becomes (pure): its ``proc.`` event and the files to capture.

A plain execution captures one file, the program. A ``#!`` execution captures two, each under
its own name and identity: the interpreter (the file the kernel ran: ``/usr/bin/dash``) and
the script (the file the ``#!`` line was read from), both carrying the relation: ``cmdpath``
(the name it was run by), ``interp`` (what the ``#!`` line named), ``interpreter_path`` and
``script_path``. Each file's bytes come from the kernel when it read them at the exec (a
memfd or deleted file: ``copy``, see bpf/pagecache.bpf.h) or else from the file, opened by the
collector through ``candidates`` and checked to be the same inode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bpf import records
from collector.object_files import exec_candidates

#: Why a script file has no capture: the kernel did not find its struct file at the exec
#: (bpf/objects.bpf.h tc_exec_script_file).
SCRIPT_NOT_FOUND = "the script's file was not found in the kernel at the exec"


@dataclass(frozen=True)
class ExecFile:
    """One file of an execution to capture: ``env`` holds its exec keys (bus.EXEC_KEYS) and
    the relation keys, ``key`` its identity for deduplication (cgroup, dev, inode, ctime);
    ``copy`` the kernel's copy of its bytes, else ``candidates`` to open. ``error`` says why it
    cannot be captured at all."""

    env: dict[str, Any]
    key: tuple[int, int, int, int]
    copy: records.ExecCopy | None
    candidates: list[str]
    size: int
    error: str = ""


def executed_path(ev: records.ExecEvent) -> bytes:
    """The executed file's own path from the kernel (d_path); a memfd's pseudo path
    ``memfd:NAME`` as /proc shows it, ``/memfd:NAME``."""
    return ev.path if ev.path.startswith(b"/") else b"/" + ev.path


def _usable(ev: records.ExecEvent) -> bool:
    """Whether the kernel's path of the executed file can name it for the collector: not cut,
    not a memfd's pseudo path, not a deleted file's (d_path appends " (deleted)")."""
    return not (ev.path_truncated or ev.memfd or ev.deleted)


def _script_candidates(pid: int, script: records.ScriptFile | None, filename: bytes) -> list[str]:
    paths = []
    if script is not None and script.path.startswith(b"/") and not script.path_truncated:
        paths.append(os.fsdecode(script.path))
    name = os.fsdecode(filename)
    if name.startswith("/"):
        if not name.startswith(("/dev/fd/", "/proc/")):
            paths.append(name)
    elif name:
        paths.append(f"/proc/{pid}/cwd/{name}")  # relative to the process's directory
    return list(dict.fromkeys(paths))


def exec_plan(ev: records.ExecEvent, base: dict[str, Any]) -> tuple[dict[str, Any], list[ExecFile]]:
    """The ``proc.`` exec event's envelope and the files to capture for ``ev``; ``base`` holds
    the common keys (collector.envelopes.context_env)."""
    cgroup, pid = ev.hdr.cgroup_id, ev.hdr.pid
    exe = executed_path(ev)
    own = {
        "argv": list(ev.argv),
        "argv_truncated": ev.argv_truncated,
        "dev": ev.dev,
        "inode": ev.inode,
        "ctime": ev.ctime,
        "mode": ev.mode,
        "memfd": ev.memfd,
        "deleted": ev.deleted,
        "cmdpath": ev.filename,
        "exe_path": exe,
        "stdin_mode": ev.stdin_mode,
        "stdin_path": ev.stdin_path,
        "from_kernel": ev.from_kernel,
    }
    if ev.interp is None:
        # the name it was run by, unless that names no file of its own (a memfd; fexecve's
        # /dev/fd/N): then the kernel's path of the file
        by_fd = ev.filename.startswith(b"/dev/fd/") and bool(ev.path)
        path = exe if ev.memfd or by_fd else ev.filename
        env = base | own | {"path": path, "role": "program"}
        program = ExecFile(
            env, (cgroup, ev.dev, ev.inode, ev.ctime), ev.copy,
            exec_candidates(pid, exe, _usable(ev)), ev.size,
        )  # fmt: skip
        return dict(env), [program]

    script = ev.script
    script_path = script.path if script is not None else ev.filename
    relation = {"interp": ev.interp, "interpreter_path": exe, "script_path": script_path}
    env = base | own | relation | {"path": exe, "role": "interpreter"}
    interpreter = ExecFile(env, (cgroup, ev.dev, ev.inode, ev.ctime), ev.copy,
                           exec_candidates(pid, exe, _usable(ev)), ev.size)  # fmt: skip
    proc = dict(env)
    candidates = _script_candidates(pid, script, ev.filename)
    if script is None:
        script_env = base | own | relation | {
            "path": ev.filename, "role": "script", "dev": 0, "inode": 0, "ctime": 0, "mode": 0,
            "memfd": False, "deleted": False,
        }  # fmt: skip
        return proc, [interpreter, ExecFile(script_env, (cgroup, 0, 0, 0), None, [], 0,
                                            SCRIPT_NOT_FOUND)]  # fmt: skip
    script_env = base | own | relation | {
        "path": script.path, "role": "script", "dev": script.dev, "inode": script.inode,
        "ctime": script.ctime, "mode": script.mode, "memfd": script.memfd,
        "deleted": script.deleted,
    }  # fmt: skip
    proc |= {"script_dev": script.dev, "script_inode": script.inode, "script_ctime": script.ctime}
    script_file = ExecFile(script_env, (cgroup, script.dev, script.inode, script.ctime),
                           script.copy, candidates, script.size)  # fmt: skip
    return proc, [interpreter, script_file]

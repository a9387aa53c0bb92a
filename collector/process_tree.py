"""Which running processes are tracecap's own, so that the kernel side can ignore them.

Capturing tracecap's own writes would feed on itself (every artifact byte written would be
captured again). Writers, the bridge and tap run as the ``tracecap`` user and are excluded by
uid; the collector excludes itself and the root-owned ancestors that manage it (supervisord,
``tracecap run``), whose later children the kernel excludes at fork.
"""

from __future__ import annotations

from collections.abc import Callable

#: Program names (basename of argv[0] or, for interpreters, argv[1]) of a tracecap deployment.
MARKERS = (b"tracecap", b"supervisord")


def is_tracecap_cmdline(cmdline: bytes) -> bool:
    argv = cmdline.split(b"\0")[:2]
    return any(word.rsplit(b"/", 1)[-1] in MARKERS for word in argv)


def parse_stat_ppid(stat: bytes) -> int:
    """The parent pid from /proc/PID/stat; the comm field may hold spaces and parentheses."""
    rest = stat[stat.rindex(b")") + 2 :]
    return int(rest.split()[1])


def tracecap_ancestors(
    pid: int, read_stat: Callable[[int], bytes], read_cmdline: Callable[[int], bytes]
) -> list[int]:
    """``pid`` and its ancestors up to the first one that is not part of tracecap."""
    out = [pid]
    current = pid
    for _ in range(64):
        try:
            parent = parse_stat_ppid(read_stat(current))
            if parent <= 1:
                break
            cmdline = read_cmdline(parent)
        except (OSError, ValueError, IndexError):
            break
        if not is_tracecap_cmdline(cmdline):
            break
        out.append(parent)
        current = parent
    return out


def read_proc_file(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()

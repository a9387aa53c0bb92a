"""process_tree: which ancestors of the collector belong to tracecap (fake /proc readers)."""

import pytest

from collector.process_tree import is_tracecap_cmdline, parse_stat_ppid, tracecap_ancestors

VENV_PY = b"/opt/tracecap/venv/bin/python"
TRACECAP = b"/opt/tracecap/venv/bin/tracecap"


def stat_line(pid: int, comm: bytes, ppid: int) -> bytes:
    return b"%d (%s) S %d %d %d 0 -1 4194560 123 0 0 0 1 2 0 0 20 0 1 0 5\n" % (
        pid, comm, ppid, pid, pid,
    )  # fmt: skip


def argv(*words: bytes) -> bytes:
    return b"\0".join(words) + b"\0"


@pytest.mark.parametrize(
    ("comm", "ppid"),
    [
        (b"bash", 1234),
        (b"my prog", 77),
        (b"a) S 999 (b", 4242),
        (b"))", 1),
        (b"x) 5 6", 0),
        (b"", 31337),
        (b"\xff\xfe (\n", 8),
    ],
)
def test_parse_stat_ppid_with_hostile_comm(comm, ppid):
    assert parse_stat_ppid(stat_line(555, comm, ppid)) == ppid


def test_parse_stat_ppid_rejects_garbage():
    with pytest.raises(ValueError):
        parse_stat_ppid(b"no parenthesis here")
    with pytest.raises((ValueError, IndexError)):
        parse_stat_ppid(b"1 (x) S")


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (argv(b"/usr/local/bin/tracecap", b"run", b"--capture", b"write"), True),
        (argv(b"tracecap", b"collector"), True),
        (argv(VENV_PY, TRACECAP, b"collector"), True),
        (argv(b"/usr/bin/python3", b"/usr/bin/supervisord", b"-c", b"x.conf"), True),
        (argv(b"/usr/bin/supervisord", b"-n"), True),
        # the venv's interpreter lives under a directory named tracecap: that is not enough
        (argv(VENV_PY, b"-m", b"pytest"), False),
        (argv(VENV_PY), False),
        (argv(VENV_PY, b"/home/u/script.py", b"tracecap"), False),
        (argv(b"/opt/tracecap/bin/helper"), False),
        (argv(b"/usr/bin/tracecapx"), False),
        (argv(b"bash", b"-c", b"tracecap run"), False),
        (argv(b"-bash"), False),
        (b"", False),
        (b"tracecap run --capture write", False),  # one argv word with spaces (setproctitle)
    ],
)
def test_is_tracecap_cmdline(cmdline, expected):
    assert is_tracecap_cmdline(cmdline) is expected


class FakeProc:
    """A process table: pid -> (ppid, cmdline); unknown pids raise like a vanished /proc entry."""

    def __init__(self, table: dict[int, tuple[int, bytes]]) -> None:
        self.table = table
        self.stat_reads: list[int] = []
        self.cmdline_reads: list[int] = []

    def read_stat(self, pid: int) -> bytes:
        self.stat_reads.append(pid)
        if pid not in self.table:
            raise FileNotFoundError(f"/proc/{pid}/stat")
        return stat_line(pid, b"comm (x)", self.table[pid][0])

    def read_cmdline(self, pid: int) -> bytes:
        self.cmdline_reads.append(pid)
        if pid not in self.table:
            raise ProcessLookupError(pid)
        return self.table[pid][1]

    def ancestors(self, pid: int) -> list[int]:
        return tracecap_ancestors(pid, self.read_stat, self.read_cmdline)


def test_ancestors_stop_at_first_non_tracecap_parent():
    proc = FakeProc({
        500: (400, argv(VENV_PY, TRACECAP, b"collector")),
        400: (300, argv(b"/usr/bin/python3", b"/usr/bin/supervisord", b"-c", b"s.conf")),
        300: (200, argv(b"/usr/local/bin/tracecap", b"run", b"--capture", b"write")),
        200: (100, argv(b"/usr/bin/sudo", b"-i")),
        100: (1, argv(b"/usr/local/bin/tracecap", b"run")),  # beyond the first outsider
    })  # fmt: skip
    assert proc.ancestors(500) == [500, 400, 300]
    assert 100 not in proc.cmdline_reads


def test_ancestors_never_include_pid_1_even_if_it_looks_like_tracecap():
    proc = FakeProc({
        500: (400, argv(TRACECAP, b"collector")),
        400: (1, argv(b"supervisord")),
        1: (0, argv(b"/usr/bin/supervisord", b"-n")),
    })  # fmt: skip
    assert proc.ancestors(500) == [500, 400]
    assert 1 not in proc.cmdline_reads


def test_ancestors_parent_pid_0():
    proc = FakeProc({500: (0, argv(TRACECAP))})
    assert proc.ancestors(500) == [500]


def test_ancestors_stop_on_vanished_process():
    proc = FakeProc({
        500: (400, argv(TRACECAP, b"collector")),
        400: (300, argv(b"supervisord")),
        # 300 exited: its stat cannot be read after 400's parent points to it
    })  # fmt: skip
    assert proc.ancestors(500) == [500, 400]

    def stat_fails(pid: int) -> bytes:
        raise PermissionError(pid)

    assert tracecap_ancestors(500, stat_fails, proc.read_cmdline) == [500]


def test_ancestors_stop_when_cmdline_read_fails():
    def read_stat(pid: int) -> bytes:
        return stat_line(pid, b"x", pid - 1)

    def read_cmdline(pid: int) -> bytes:
        raise OSError("gone")

    assert tracecap_ancestors(10, read_stat, read_cmdline) == [10]


def test_ancestors_stop_on_unparsable_stat():
    proc = FakeProc({500: (400, argv(TRACECAP)), 400: (300, argv(TRACECAP))})
    assert tracecap_ancestors(500, lambda pid: b"garbage", proc.read_cmdline) == [500]


def test_ancestors_venv_python_parent_is_not_tracecap():
    proc = FakeProc({
        500: (400, argv(TRACECAP, b"collector")),
        400: (300, argv(VENV_PY, b"-m", b"pytest", b"tests")),
        300: (1, argv(TRACECAP, b"run")),
    })  # fmt: skip
    assert proc.ancestors(500) == [500]


def test_ancestors_walk_is_bounded_on_a_cycle():
    proc = FakeProc({10: (11, argv(TRACECAP)), 11: (10, argv(TRACECAP))})
    result = proc.ancestors(10)
    assert result[:4] == [10, 11, 10, 11]
    assert len(result) <= 65

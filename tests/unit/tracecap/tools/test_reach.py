"""Reaching the bus socket: permission is reported as such, a missing collector as such.

The system calls are replaced by fakes for the permission cases (the unit tests run as one
user); tests/e2e/test_command_line.py runs `tap` and `status` as a real unprivileged user.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

import tracecap.tools.tap
from tracecap.tools import reach
from tracecap.tools.reach import EXIT_NO_COLLECTOR, EXIT_PERMISSION, Unreachable, diagnose
from tracecap.tools.status import status
from tracecap.tools.tap import tap

RUN_DIR = "/run/tracecap"
SOCKET = f"{RUN_DIR}/bus.sock"
ENDPOINT = f"ipc://{SOCKET}"
HINT = "(run as root or a member of group tracecap)"


def failing(code: int) -> Callable[[str], None]:
    def connect(path: str) -> None:
        raise OSError(code, os.strerror(code), path)

    return connect


def stat_denied_below(directory: str) -> Callable[[str], os.stat_result]:
    """A stat that fails with EACCES for anything inside ``directory`` (not searchable)."""

    def stat(path: str) -> os.stat_result:
        if path.startswith(directory + "/"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return os.stat("/")

    return stat


def stat_ok(path: str) -> os.stat_result:
    return os.stat("/")


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_unsearchable_run_dir_is_permission_denied_on_the_run_dir(code):
    problem = diagnose(ENDPOINT, failing(code), stat_denied_below(RUN_DIR))
    assert problem == Unreachable(EXIT_PERMISSION, f"permission denied: {RUN_DIR} {HINT}")


def test_unsearchable_ancestor_is_the_path_named():
    problem = diagnose(ENDPOINT, failing(errno.EACCES), stat_denied_below("/run"))
    assert problem == Unreachable(EXIT_PERMISSION, f"permission denied: /run {HINT}")


def test_socket_without_write_permission_is_the_path_named():
    problem = diagnose(ENDPOINT, failing(errno.EACCES), stat_ok)
    assert problem == Unreachable(EXIT_PERMISSION, f"permission denied: {SOCKET} {HINT}")


@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.ENOENT, "No such file or directory"), (errno.ECONNREFUSED, "Connection refused")],
)
def test_missing_or_dead_socket_is_no_collector(code, reason):
    problem = diagnose(ENDPOINT, failing(code), stat_ok)
    assert problem == Unreachable(
        EXIT_NO_COLLECTOR, f"no collector publishing on {ENDPOINT} ({reason})"
    )


def test_other_errors_say_what_the_kernel_said():
    problem = diagnose(ENDPOINT, failing(errno.ENOTDIR), stat_ok)
    assert problem == Unreachable(EXIT_NO_COLLECTOR, f"cannot reach {ENDPOINT}: Not a directory")


def test_reachable_socket_is_no_problem():
    assert diagnose(ENDPOINT, lambda path: None, stat_ok) is None


def test_tcp_endpoints_are_not_probed():
    assert diagnose("tcp://127.0.0.1:5555", failing(errno.EACCES), stat_ok) is None


def test_exit_statuses_differ():
    assert EXIT_PERMISSION == os.EX_NOPERM
    assert EXIT_NO_COLLECTOR not in (0, 2, EXIT_PERMISSION)


# --- the real connect, on sockets this test makes ---


def short_socket_path(tmp_path: Path) -> str:
    path = str(tmp_path / "bus.sock")
    if len(path) >= 108:
        pytest.fail(f"tmp_path too long for a unix socket: {path}")
    return path


def test_connect_unix_to_a_listening_socket(tmp_path):
    path = short_socket_path(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        assert diagnose(f"ipc://{path}") is None


def test_connect_unix_to_a_bound_socket_nobody_listens_on(tmp_path):
    path = short_socket_path(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        problem = diagnose(f"ipc://{path}")
    assert problem is not None and problem.status == EXIT_NO_COLLECTOR
    assert "no collector publishing" in problem.message
    assert "Connection refused" in problem.message


def test_connect_unix_to_nothing(tmp_path):
    problem = diagnose(f"ipc://{tmp_path}/absent/bus.sock")
    assert problem == Unreachable(
        EXIT_NO_COLLECTOR,
        f"no collector publishing on ipc://{tmp_path}/absent/bus.sock (No such file or directory)",
    )


def test_denied_path_names_the_target_when_nothing_is_denied(tmp_path):
    assert reach.denied_path(str(tmp_path / "x" / "bus.sock")) == str(tmp_path / "x" / "bus.sock")


# --- the commands report the problem and wait for nothing ---


def test_status_reports_permission_and_exits_77(capsys):
    problem = Unreachable(EXIT_PERMISSION, f"permission denied: {RUN_DIR} {HINT}")
    asked: list[str] = []

    def fake_reach(endpoint: str) -> Unreachable:
        asked.append(endpoint)
        return problem

    assert status(RUN_DIR, fake_reach) == EXIT_PERMISSION
    assert asked == [ENDPOINT]
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"tracecap status: permission denied: {RUN_DIR} {HINT}\n"


def test_tap_reports_no_collector_after_dropping_privileges(capsys, monkeypatch):
    order: list[str] = []
    monkeypatch.setattr(tracecap.tools.tap, "drop_privileges", lambda: order.append("drop"))

    def fake_reach(endpoint: str) -> Unreachable:
        order.append(endpoint)
        return Unreachable(EXIT_NO_COLLECTOR, f"no collector publishing on {endpoint} (x)")

    assert tap(ENDPOINT, [b""], fake_reach) == EXIT_NO_COLLECTOR
    assert order == ["drop", ENDPOINT]
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"tracecap tap: no collector publishing on {ENDPOINT} (x)\n"

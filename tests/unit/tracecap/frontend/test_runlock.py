"""One capture per run directory: a second `tracecap run` is refused before it writes anything."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracecap.frontend.runlock import LOCK_NAME, answers, claim_run_dir
from tracecap.privileges import RunDirError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="prepares a root-owned run directory")


@pytest.fixture
def run_dir(tmp_path: Path) -> str:
    return str(tmp_path / "run")


@pytest.fixture
def listening() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def listen(path: str, socks: list[socket.socket]) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen()
    socks.append(s)


def test_a_free_run_directory_is_created_and_claimed(run_dir: str) -> None:
    fd = claim_run_dir(run_dir)
    try:
        assert os.path.isdir(run_dir) and os.path.exists(os.path.join(run_dir, LOCK_NAME))
    finally:
        os.close(fd)


def test_a_second_claim_is_refused_until_the_first_is_let_go(run_dir: str) -> None:
    first = claim_run_dir(run_dir)
    try:
        with pytest.raises(RunDirError, match="another `tracecap run` is using the run dir"):
            claim_run_dir(run_dir)
    finally:
        os.close(first)
    os.close(claim_run_dir(run_dir))  # released with its fd, as at the process's exit


@pytest.mark.parametrize("name", ["supervisor.sock", "bus.sock"])
def test_a_socket_something_answers_on_is_a_live_capture(
    run_dir: str, listening: list[socket.socket], name: str
) -> None:
    """The static deployment, or a capture whose `tracecap run` was killed: no lock, but its
    supervisord or collector still listens."""
    os.close(claim_run_dir(run_dir))
    listen(os.path.join(run_dir, name), listening)
    with pytest.raises(RunDirError, match=f"a process answers on {name}"):
        claim_run_dir(run_dir)


def test_a_socket_left_behind_by_a_process_that_is_gone_is_no_capture(
    run_dir: str, listening: list[socket.socket]
) -> None:
    os.close(claim_run_dir(run_dir))
    path = os.path.join(run_dir, "supervisor.sock")
    listen(path, listening)
    assert answers(path)
    listening.pop().close()  # the file stays; nothing accepts on it
    assert os.path.exists(path) and not answers(path)
    os.close(claim_run_dir(run_dir))

"""tracecap.lifetime: a program of supervisord asks for SIGTERM when its parent exits."""

from __future__ import annotations

import signal

import pytest

from tracecap.lifetime import follow_supervisor


class Fake:
    def __init__(self, ppids: list[int], err: int = 0) -> None:
        self.ppids = ppids
        self.err = err
        self.prctls: list[tuple[int, int]] = []
        self.kills: list[tuple[int, int]] = []

    def prctl(self, option: int, arg: int) -> int:
        self.prctls.append((option, arg))
        return self.err

    def getppid(self) -> int:
        return self.ppids.pop(0) if len(self.ppids) > 1 else self.ppids[0]

    def kill(self, pid: int, sig: int) -> None:
        self.kills.append((pid, sig))

    def follow(self, environ: dict[str, str]) -> bool:
        return follow_supervisor(environ, self.prctl, self.getppid, self.kill)


def test_under_supervisord_the_parents_death_is_a_sigterm():
    fake = Fake([4321])
    assert fake.follow({"SUPERVISOR_ENABLED": "1"}) is True
    assert fake.prctls == [(1, signal.SIGTERM)]  # PR_SET_PDEATHSIG
    assert fake.kills == []


@pytest.mark.parametrize("environ", [{}, {"SUPERVISOR_ENABLED": "0"}, {"SUPERVISOR_ENABLED": ""}])
def test_started_by_hand_or_systemd_nothing_is_asked(environ):
    fake = Fake([4321])
    assert fake.follow(environ) is False
    assert fake.prctls == [] and fake.kills == []


@pytest.mark.parametrize("ppids", [[4321, 1], [1], [4321, 77]])
def test_a_parent_gone_before_arming_stops_the_program_at_once(ppids):
    fake = Fake(ppids)
    assert fake.follow({"SUPERVISOR_ENABLED": "1"}) is True
    assert len(fake.kills) == 1 and fake.kills[0][1] == signal.SIGTERM


def test_a_refused_prctl_is_an_error_not_a_silent_orphan():
    fake = Fake([4321], err=22)
    with pytest.raises(OSError, match="supervisord exits"):
        fake.follow({"SUPERVISOR_ENABLED": "1"})

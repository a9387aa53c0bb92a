"""prctl(2) through ctypes, for the few process settings Python's os module lacks
(``PR_SET_PDEATHSIG``, ``PR_GET_PDEATHSIG``, ``PR_SET_NO_NEW_PRIVS``)."""

from __future__ import annotations

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_SET_NO_NEW_PRIVS = 38


def prctl(option: int, arg: object) -> int:
    """prctl(2) with one argument, an int or a pointer (``ctypes.byref``); errno or 0."""
    import ctypes  # here: the front end imports this module's users, and never calls it

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        return ctypes.get_errno()
    return 0

"""Kernel symbol addresses from /proc/kallsyms, read on a thread.

The BPF object once named ``____fput`` as a typeless ``__ksym`` extern, which libbpf resolves by
scanning all of /proc/kallsyms with fscanf inside bpf_object__load: 0.2-0.3 s of every start
under load (122,255 symbols on this 6.18 host; perf: 9.5% of the collector's start, a quarter
of the time in BPF_PROG_LOAD). Read here as one block on a thread (the kernel formats it while
the collector does other work: read() runs without the GIL) and searched with bytes.find, the
address goes into .rodata instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

KALLSYMS = "/proc/kallsyms"


def find_symbols(text: bytes, names: Iterable[str]) -> dict[str, int]:
    """The addresses of ``names``, the kernel's own text symbols (``t``/``T``), in kallsyms
    ``text``; a name not there is missing, one hidden by kptr_restrict (zeros) is 0."""
    found = {}
    for name in names:
        for kind in (b" t ", b" T "):
            end = text.find(kind + name.encode() + b"\n")
            if end >= 0:
                start = text.rfind(b"\n", 0, end) + 1
                found[name] = int(text[start:end], 16)
                break
    return found


class KernelSymbols:
    """Looks ``names`` up on a thread started at construction; ``get`` waits for it."""

    def __init__(self, names: Iterable[str], path: str = KALLSYMS) -> None:
        self._names = tuple(names)
        self._path = path
        self._found: dict[str, int] = {}
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="kallsyms", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with open(self._path, "rb") as f:
                self._found = find_symbols(f.read(), self._names)
        except OSError as exc:
            self._error = exc

    def get(self, name: str) -> int:
        """``name``'s address, 0 when unknown; OSError if kallsyms could not be read."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._found.get(name, 0)

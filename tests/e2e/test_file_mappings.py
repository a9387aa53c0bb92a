"""Writes through shared file mappings, captured end to end from real Python programs that
use the ``mmap`` module (MAP_SHARED, PROT_READ | PROT_WRITE): the kernel sends the mapping's
dirty pages at msync (``flush()``), munmap (``close()``) and the process's exit, each as the
file write it becomes. Every artifact must equal the file in the ranges it claims, hold the
bytes the program stored, and claim no page the program did not dirty."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support.pipeline import artifact_name
from tests.support.workloads import python

pytestmark = pytest.mark.ebpf

PAGE = 4096
#: Six pages, the last one partial: a dirty last page is sent up to the file's end only.
SIZE = 5 * PAGE + 100


def _mapped_writer(path: Path, body: str) -> None:
    """Run ``body`` in a fresh interpreter with ``m`` a shared writable mapping of ``path``
    (created SIZE bytes long, sparse) and ``payload(n, seed)`` giving random-looking bytes."""
    python(
        f"""
        import mmap, os, random
        def payload(n, seed):
            return random.Random(seed).randbytes(n)
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, {SIZE})
        m = mmap.mmap(fd, {SIZE})
        """
        + body
    )


def _check(run, path: Path, ranges: list[list[int]], syscalls: list[str]) -> bytes:
    """The write artifact of ``path`` holds its bytes in exactly the dirty pages ``ranges``,
    obtained from the mapping, complete; returns the artifact."""
    name = artifact_name("write", path)
    found = [r for r in run.records("write") if r["path"].endswith("/" + name)]
    assert len(found) == 1, (name, run.records("write"), run.logs())
    rec = found[0]
    art = run.artifact(name)
    final = path.read_bytes()
    assert rec["mapping"] == ranges, rec
    assert rec["complete"] is True and rec["missing"] == [], rec
    assert rec["syscalls"] == syscalls, rec
    assert "readback" not in rec, rec
    for start, end in ranges:
        assert art[start:end] == final[start:end], (start, end)
    return art


def test_flush_then_close(tracecap, workdir: Path) -> None:
    """(a) Two pages written (the first and the partial last one), flush() (msync), close()
    (munmap): the msync sends both, the munmap has nothing dirty left to send."""
    path = workdir / "flushed"
    run = tracecap("--capture", f"write={workdir}/*")
    _mapped_writer(
        path,
        f"""
        m[100:1100] = payload(1000, 1)
        m[{5 * PAGE + 10}:{SIZE}] = payload(90, 2)
        m.flush()
        m.close()
        """,
    )
    run.stop()
    assert run.returncode == 0, run.stderr
    art = _check(run, path, [[0, PAGE], [5 * PAGE, SIZE]], ["msync"])
    assert art[100:1100] == __import__("random").Random(1).randbytes(1000)


def test_exit_without_unmapping(tracecap, workdir: Path) -> None:
    """(b) The process leaves with the mapping still in place (os._exit skips the mmap
    object's close): the exit sends the dirty page. This also shows that
    sched_process_exit on this kernel still has the process's memory and page tables."""
    path = workdir / "at-exit"
    run = tracecap("--capture", f"write={workdir}/*")
    _mapped_writer(
        path,
        f"""
        m[{2 * PAGE}:{2 * PAGE + 3000}] = payload(3000, 3)
        os._exit(0)
        """,
    )
    run.stop()
    assert run.returncode == 0, run.stderr
    _check(run, path, [[2 * PAGE, 3 * PAGE]], ["exit"])


def test_two_writes_with_an_msync_between(tracecap, workdir: Path) -> None:
    """(c) Page 0 written and flushed, then page 3 written and the mapping closed: the msync
    sends page 0 only (page 3 is not yet written), the munmap page 3 only (msync cleaned 0)."""
    path = workdir / "twice"
    run = tracecap("--capture", f"write={workdir}/*")
    _mapped_writer(
        path,
        f"""
        m[0:{PAGE}] = payload({PAGE}, 4)
        m.flush()
        m[{3 * PAGE + 7}:{3 * PAGE + 2007}] = payload(2000, 5)
        m.close()
        """,
    )
    run.stop()
    assert run.returncode == 0, run.stderr
    _check(run, path, [[0, PAGE], [3 * PAGE, 4 * PAGE]], ["msync", "munmap"])


def test_pages_truncated_away_before_munmap_are_not_claimed(tracecap, workdir: Path) -> None:
    """Pages 0 and 4 written, then the file truncated to one page by another descriptor
    before the mapping goes: page 4's stores were thrown away with the page (never reached
    the file), so only page 0 is captured, and it equals the file."""
    path = workdir / "truncated"
    run = tracecap("--capture", f"write={workdir}/*")
    _mapped_writer(
        path,
        f"""
        m[0:500] = payload(500, 6)
        m[{4 * PAGE}:{4 * PAGE + 500}] = payload(500, 7)
        os.truncate({str(path)!r}, {PAGE})
        del m
        """,
    )
    run.stop()
    assert run.returncode == 0, run.stderr
    assert os.path.getsize(path) == PAGE
    _check(run, path, [[0, PAGE]], ["munmap"])


def test_a_mapping_made_writable_by_mprotect(tracecap, workdir: Path) -> None:
    """Mapped read-only from a descriptor open for writing, then made writable by mprotect
    (libc's, through ctypes: the mmap module has none) and written: its page is captured."""
    path = workdir / "mprotected"
    run = tracecap("--capture", f"write={workdir}/*")
    python(
        f"""
        import ctypes, mmap, os, random
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, {SIZE})
        addr = libc.mmap(None, {SIZE}, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        assert libc.mprotect(addr, {SIZE}, mmap.PROT_READ | mmap.PROT_WRITE) == 0
        data = random.Random(8).randbytes(700)
        ctypes.memmove(addr + {PAGE} + 50, data, len(data))
        assert libc.munmap(addr, {SIZE}) == 0
        """
    )
    run.stop()
    assert run.returncode == 0, run.stderr
    _check(run, path, [[PAGE, 2 * PAGE]], ["munmap"])


#: Page stores, each flushed alone, while another thread maps and unmaps memory.
CONTENDED_PAGES = 2000


def test_every_flushed_page_is_captured_or_counted_while_another_thread_remaps(
    tracecap, workdir: Path
) -> None:
    """One thread stores into page i and flushes that page (msync), CONTENDED_PAGES times,
    while another maps and unmaps anonymous memory in a loop, holding the memory map's lock
    for writing. bpf_find_vma only trylocks it, so some msyncs cannot be looked at (measured:
    1-9 of 2,000-4,000). Each such one must be counted (``write.map_unwalked``, named in the
    summary) and named on the file: its artifact says ``lost_unsized`` for each flush lost and
    is not complete. Every page captured holds its byte."""
    path = workdir / "contended"
    run = tracecap("--capture", f"write={workdir}/*")
    python(
        f"""
        import mmap, os, threading
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, {CONTENDED_PAGES * PAGE})
        m = mmap.mmap(fd, {CONTENDED_PAGES * PAGE})
        stop = False
        def churn():
            while not stop:
                a = mmap.mmap(-1, 1 << 20)
                a[0] = 1
                a.close()
        t = threading.Thread(target=churn)
        t.start()
        for i in range({CONTENDED_PAGES}):
            m[i * {PAGE}] = 1 + i % 250
            m.flush(i * {PAGE}, {PAGE})
        stop = True
        t.join()
        m.close()
        """
    )
    run.stop()
    assert run.returncode == 0, run.stderr
    name = artifact_name("write", path)
    found = [r for r in run.records("write") if r["path"].endswith("/" + name)]
    assert len(found) == 1, (name, run.logs())
    rec, art = found[0], run.artifact(name)
    pages = [p for start, end in rec["mapping"] for p in range(start // PAGE, end // PAGE)]
    for p in pages:
        assert art[p * PAGE] == 1 + p % 250, p
    lost = CONTENDED_PAGES - len(pages)
    assert rec["syscalls"] == (["msync", "unknown"] if lost else ["msync"]), rec  # the notice's
    assert rec.get("lost_unsized", 0) == lost, (lost, rec)
    assert rec["complete"] is (lost == 0), rec
    # the other thread's munmaps count too when they find the lock taken: at least the lost
    counted = re.search(r"shared mappings not looked at \(memory map busy\) (\d+)", run.stderr)
    assert (int(counted.group(1)) if counted else 0) >= lost, run.stderr

"""`tracecap report OUT_DIR [-o FILE.html]`: the I/O around the pure sections.

Reads ``index.jsonl`` and ``events.jsonl`` (each its rotated segments first), the first bytes
of executables, memory regions and BPF programs, whole module images and pcap files (each
bounded below), and writes one HTML file (default ``OUT_DIR/report.html``) through a temporary
file renamed into place. Artifacts are opened without following a symlink and only when
regular, so a planted link or FIFO in a copied directory is skipped, not followed or waited on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from tracecap import segments
from tracecap.tools.report import binary, flows, model, page, sections

INDEX = "index.jsonl"
EVENTS = "events.jsonl"
#: Bytes read of each artifact kind to describe it (modules and pcaps whole, up to these).
MEM_PREVIEW_BYTES = 64
BPF_SHOWN_INSNS = 16
MODULE_MAX_BYTES = 64 << 20
#: All pcap files together: past this the rest are listed without flows.
PCAP_TOTAL_BYTES = 512 << 20


@dataclass(frozen=True)
class Result:
    path: str
    artifacts: int
    events: int
    seconds: float
    size: int


def resolve_out_dir(path: str) -> str:
    """OUT_DIR is the directory holding ``index.jsonl``; a capture's ``dir:`` (holding
    ``out/``) is accepted too."""
    if not os.path.exists(os.path.join(path, INDEX)) and os.path.exists(
        os.path.join(path, "out", INDEX)
    ):
        return os.path.join(path, "out")
    return path


def read_lines(out_dir: str, name: str) -> tuple[list[model.Record], int]:
    """The records of ``name`` in ``out_dir``: its closed segments (``index-rotate:``) in order,
    gzip or not, then the live file (tracecap.segments.iter_lines); none when there is none."""
    try:
        dir_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return [], 0
    try:
        lines: list[bytes] = []
        # a segment removed while it is read ends the list there (the rotation records say
        # what the count removed)
        with contextlib.suppress(FileNotFoundError):
            lines.extend(line for _, line in segments.iter_lines(dir_fd, name))
        return model.parse_lines(lines)
    finally:
        os.close(dir_fd)


def read_artifact(out_dir: str, path: object, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of the artifact at ``path`` (relative), or None when it is not a
    name a writer gives, not a regular file, or unreadable."""
    if sections.href(path, "") is None:
        return None
    assert isinstance(path, str)
    try:
        fd = os.open(os.path.join(out_dir, path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.EIO, errno.EACCES):
            return None
        raise
    finally:
        os.close(fd)


def read_extras(out_dir: str, artifacts: list[model.Record]) -> sections.Extras:
    """What the tables show from inside the artifacts, by path."""
    extras: sections.Extras = {}
    pcap_budget = PCAP_TOTAL_BYTES
    readers: dict[str, tuple[int, Callable[[bytes], dict]]] = {
        "exec": (binary.ELF_HEAD_BYTES, _elf),
        "mem": (MEM_PREVIEW_BYTES, lambda data: {"preview": binary.hex_preview(data)}),
        "module": (MODULE_MAX_BYTES, lambda data: {"modinfo": binary.modinfo(data)}),
        # one more pair of slots: the last shown may be a 64-bit load
        "bpf": ((BPF_SHOWN_INSNS + 1) * 8, lambda data: {"disasm": binary.disassemble(data)}),
    }
    for record in artifacts:
        kind, path = record.get("kind"), record.get("path")
        if not isinstance(path, str) or path in extras:
            continue
        if kind == "pcap":
            size = model.integer(record, "size") or 0
            if size > pcap_budget:
                continue
            data = read_artifact(out_dir, path, pcap_budget)
            if data is not None:
                pcap_budget -= len(data)
                extras[path] = {"flows": flows.read_flows(data)}
        elif isinstance(kind, str) and kind in readers:
            limit, describe = readers[kind]
            data = read_artifact(out_dir, path, limit)
            if data is not None:
                extras[path] = describe(data)
    return extras


def _elf(data: bytes) -> dict:
    info = binary.elf_info(data)
    return {"elf": info.text() if info else "not ELF"}


def link_base(out_dir: str, output: str) -> str:
    """How the page reaches the output directory: ``""`` beside it, else a relative path, so the
    links keep working when both are copied together."""
    rel = os.path.relpath(os.path.abspath(out_dir), os.path.dirname(os.path.abspath(output)))
    return "" if rel == "." else rel.replace(os.sep, "/") + "/"


def render(out_dir: str, base: str) -> tuple[str, int, int]:
    """The page for the capture in ``out_dir``, with its artifact and event counts."""
    records, bad_index = read_lines(out_dir, INDEX)
    events, bad_events = read_lines(out_dir, EVENTS)
    artifacts = model.current(records)
    procs = model.processes(artifacts, events)
    extras = read_extras(out_dir, artifacts)
    window = sections.capture_window(events, artifacts)
    bad = {INDEX: bad_index, EVENTS: bad_events}
    body = [
        sections.overview(out_dir, window, events, artifacts, procs),
        sections.loss_panel(events, artifacts, bad, base),
        sections.process_tree(
            procs, model.roots(procs), base, sections.process_flows(artifacts, extras)
        ),
        sections.timeline(sections.marks(events, artifacts)),
        *(
            sections.table_html(table)
            for table in (
                sections.files_table(artifacts, base),
                sections.exec_table(artifacts, base, extras),
                sections.mem_table(artifacts, base, extras),
                sections.module_table(artifacts, base, extras),
                sections.bpf_table(artifacts, base, extras),
                sections.pcap_table(artifacts, base),
                sections.flows_table(artifacts, base, extras),
            )
        ),
    ]
    html = page.document(f"tracecap report: {out_dir}", body)
    return html, len(artifacts), len(events)


def write_report(out_dir: str, output: str | None = None) -> Result:
    started = time.monotonic()
    out_dir = resolve_out_dir(out_dir)
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(errno.ENOENT, "no such directory", out_dir)
    output = output or os.path.join(out_dir, "report.html")
    html, n_artifacts, n_events = render(out_dir, link_base(out_dir, output))
    data = html.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o640)
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise
    return Result(output, n_artifacts, n_events, time.monotonic() - started, len(data))


def main(out_dir: str, output: str | None) -> int:
    try:
        result = write_report(out_dir, output)
    except OSError as exc:
        print(f"tracecap report: {exc.filename or out_dir}: {exc.strerror}", file=sys.stderr)
        return 1
    print(
        f"tracecap report: wrote {result.path} ({result.artifacts} records, {result.events} "
        f"events, {result.size} bytes) in {result.seconds:.1f} s",
        file=sys.stderr,
    )
    return 0

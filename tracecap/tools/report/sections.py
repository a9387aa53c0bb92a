"""The report's sections (pure): each builder takes parsed records and what was read inside the
artifacts, and returns HTML text or a table's data.

Every string from the capture goes through ``esc`` (markup) or ``json_for_script`` (table data
rendered by the page's script with ``textContent``, never as markup), and every link through
``href``, which accepts only the relative paths writers create. Tables are data, not markup, so
that 100,000 rows cost one JSON array and the page renders one page of them at a time.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tracecap.tools.report.binary import prog_type_name
from tracecap.tools.report.model import (
    ARTIFACT_KINDS,
    Process,
    Record,
    integer,
    text,
    timestamp,
)

#: What was read inside each artifact, by its path: ``elf``, ``preview``, ``modinfo`` (list of
#: pairs), ``disasm`` (lines), ``flows`` (flows.PcapFlows).
Extras = dict[str, dict[str, Any]]

#: Artifacts listed under each process of the tree, and flows; the tables hold all of them.
TREE_ITEMS = 50
#: Incomplete artifacts drawn with their missing ranges; the tables list all of them.
LOSS_BARS = 200
#: Marks drawn one per event up to this many; past it, each lane is a histogram of BINS bars.
MAX_MARKS = 5000
BINS = 400
TIMELINE_WIDTH = 1000
LANE_HEIGHT = 18
LABEL_WIDTH = 180

#: Between two times of a window.
DASH = "\N{EN DASH}"

_SAFE_PATH = re.compile(r"[A-Za-z0-9._%+=,@~-]+(/[A-Za-z0-9._%+=,@~-]+)*")


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def href(path: object, base: str) -> str | None:
    """The link to an artifact at ``path`` (relative to the output directory) from a page whose
    directory reaches it by ``base`` (``""`` or ``../out/``); None for anything a writer would
    not have named (absolute, ``..``, a scheme such as ``javascript:``)."""
    if not isinstance(path, str) or not _SAFE_PATH.fullmatch(path):
        return None
    if any(part in (".", "..") for part in path.split("/")):
        return None
    return base + quote(path)


def json_for_script(value: object) -> str:
    """JSON to embed in ``<script type="application/json">``: ``<``, ``>`` and ``&`` escaped,
    so no string can close the element or open a comment; ``ensure_ascii`` does the rest."""
    text_ = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text_.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def when(ns: int | None) -> str:
    """ns since the epoch as UTC to the millisecond, the form every section uses."""
    if ns is None:
        return ""
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{rest // 1_000_000:03d}"


def container_label(container_id: str, name: str = "") -> str:
    """The short id ("host" outside containers), after the runtime's name when known."""
    if not container_id:
        return "host"
    return f"{name} ({container_id[:12]})" if name else container_id[:12]


def missing_bytes(record: Record) -> int:
    total = 0
    for item in record.get("missing") or []:
        if isinstance(item, list) and len(item) == 2 and all(type(v) is int for v in item):
            total += max(0, item[1] - item[0])
    return total


# --- overview and losses -----------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    start: int | None
    end: int | None


def capture_window(events: Sequence[Record], artifacts: Sequence[Record]) -> Window:
    """From the collector's start to its stop (events.jsonl), else the records' span."""
    starts = [integer(e, "ts") for e in events if e.get("event") == "capture_start"]
    stops = [
        integer(e, "ts") for e in events if e.get("event") in ("capture_stop", "capture_last_stats")
    ]
    times = [t for r in artifacts for t in (timestamp(r), integer(r, "last_ts")) if t is not None]
    times += [t for e in events if (t := integer(e, "ts")) is not None]
    start = min((t for t in starts if t is not None), default=min(times, default=None))
    end = max((t for t in stops if t is not None), default=max(times, default=None))
    return Window(start, end)


def overview(
    out_dir: str,
    window: Window,
    events: Sequence[Record],
    artifacts: Sequence[Record],
    procs: dict[int, Process],
) -> str:
    """The capture window, where it ran (host, containers) and counts per kind."""
    kinds = Counter(text(r, "kind") for r in artifacts)
    containers = Counter(text(r, "container_id") for r in artifacts)
    for p in procs.values():
        containers.setdefault(p.container_id, 0)
    hosts = sorted({text(e, "host") for e in events if e.get("event") == "writer_start"} - {""})
    rows = [
        ("output directory", out_dir),
        ("hosts", ", ".join(hosts) or "unknown (no events.jsonl)"),
        ("capture window", f"{when(window.start)} {DASH} {when(window.end)} UTC"),
        ("processes", str(len(procs))),
        (
            "where",
            ", ".join(f"{container_label(c)} ({n} records)" for c, n in sorted(containers.items())),
        ),
    ]
    rows += [(label, str(kinds[kind])) for kind, label in ARTIFACT_KINDS.items() if kinds[kind]]
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<section id="overview"><h2>Overview</h2><table class="kv">{body}</table></section>'


def loss_reasons(
    events: Sequence[Record], artifacts: Sequence[Record], bad: dict[str, int]
) -> list[str]:
    """Plain sentences: what is incomplete and why."""
    out = []
    last = [e for e in events if e.get("event") in ("capture_stop", "capture_last_stats")]
    drops: Counter[str] = Counter()
    collector: Counter[str] = Counter()
    for e in last:
        for source, into in (("kernel_drops", drops), ("collector", collector)):
            values = e.get(source)
            if isinstance(values, dict):
                into.update({k: v for k, v in values.items() if type(v) is int})
    for name, n in sorted(drops.items()):
        if n:
            what = name.replace("_", " ")
            out.append(f"kernel ring: {n} {what} (events the kernel could not queue)")
    for name, n in sorted(collector.items()):
        if n:
            out.append(f"collector: {name.replace('_', ' ')} {n}")
    if not last and events:
        out.append("the collector's loss counters are unknown: no stats reached the events writer")
    gaps = [r for r in artifacts if r.get("kind") == "gap"]
    if gaps:
        lost = sum(
            max(0, (integer(g, "to_seq") or 0) - (integer(g, "from_seq") or 0) + 1) for g in gaps
        )
        writers = ", ".join(sorted({text(g, "writer") for g in gaps}))
        out.append(
            f"bus gaps: {len(gaps)} gaps, {lost} messages never reached a writer ({writers})"
        )
    refusing = [r for r in artifacts if r.get("kind") == "budget" and r.get("state") != "resumed"]
    if refusing:
        out.append(
            f"disk budget: writes were refused {len(refusing)} times (limit or floor reached)"
        )
    pcap_dropped = sum(integer(r, "budget_dropped") or 0 for r in artifacts)
    if pcap_dropped:
        out.append(f"disk budget: {pcap_dropped} packets kept out of pcap files")
    mem_skipped = sum(
        integer(r, "skipped_dumps") or 0 for r in artifacts if r.get("kind") == "mem_budget"
    )
    if mem_skipped:
        out.append(f"memory allowance: {mem_skipped} region dumps skipped")
    removed = sum(
        len(e["removed"])
        for e in events
        if e.get("kind") == "rotation" and isinstance(e.get("removed"), list)
    )
    if removed:
        out.append(f"rotation: {removed} closed segments of events.jsonl removed (rotation count)")
    starts = Counter(e.get("event") for e in events)["writer_start"]
    if starts > 1:
        out.append(f"the events writer started {starts} times (restarted, or several captures)")
    interrupted = sum(1 for r in artifacts if r.get("interrupted") is True)
    if interrupted:
        out.append(f"writer restarts: {interrupted} artifacts were open when their writer died")
    failed = sum(1 for r in artifacts if r.get("path") is None and isinstance(r.get("error"), str))
    if failed:
        out.append(f"unreadable: {failed} objects could not be read at all (see error)")
    for name, n in bad.items():
        if n:
            out.append(f"{name}: {n} lines are not JSON objects (torn or altered) and were skipped")
    return out


#: Index fields that say why an artifact is incomplete beyond its ``missing`` ranges.
INCOMPLETE_FLAGS = ("interrupted", "bus_gaps", "lost_unsized", "history_unknown")


def missing_bar(record: Record, width: int = 300) -> str:
    """An SVG bar the artifact's length wide: present bytes grey, missing ranges red."""
    size = max(integer(record, key) or 0 for key in ("end", "size", "obj_len"))
    ranges = [
        (s, e)
        for item in record.get("missing") or []
        if isinstance(item, list) and len(item) == 2 and all(type(v) is int for v in item)
        for s, e in [item]
        if e > s
    ]
    size = max([size, *(e for _, e in ranges)])
    parts = [f'<rect class="present" x="0" y="0" width="{width}" height="10"/>']
    for s, e in ranges:
        x = s * width / size if size else 0
        w = max(1.0, (e - s) * width / size) if size else width
        parts.append(
            f'<rect class="missing" x="{x:.1f}" y="0" width="{w:.1f}" height="10">'
            f"<title>missing [{s}, {e})</title></rect>"
        )
    return (
        f'<svg class="bar" width="{width}" height="10" viewBox="0 0 {width} 10" role="img">'
        + "".join(parts)
        + "</svg>"
    )


def loss_panel(
    events: Sequence[Record], artifacts: Sequence[Record], bad: dict[str, int], base: str
) -> str:
    reasons = loss_reasons(events, artifacts, bad)
    incomplete = [
        r for r in artifacts if r.get("complete") is False and text(r, "kind") in ARTIFACT_KINDS
    ]
    head = (
        f"<p>{len(incomplete)} artifacts are incomplete.</p>"
        if incomplete
        else "<p>Every artifact is complete.</p>"
    )
    items = "".join(f"<li>{esc(r)}</li>" for r in reasons) or "<li>nothing was lost</li>"
    rows = []
    for r in incomplete[:LOSS_BARS]:
        link = _link_html(r, base)
        flags = ", ".join(k for k in INCOMPLETE_FLAGS if r.get(k))
        why = esc(text(r, "error") or flags)
        rows.append(
            f"<tr><td>{esc(text(r, 'kind'))}</td><td>{link}</td>"
            f"<td>{esc(missing_bytes(r))}</td><td>{missing_bar(r)}</td><td>{why}</td></tr>"
        )
    more = len(incomplete) - LOSS_BARS
    table = (
        '<table class="grid"><thead><tr><th>kind</th><th>artifact</th><th>missing bytes</th>'
        "<th>missing ranges</th><th>why</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        if rows
        else ""
    )
    tail = f"<p>{more} more: filter the tables by <code>false</code>.</p>" if more > 0 else ""
    return f'<section id="losses"><h2>Losses</h2>{head}<ul>{items}</ul>{table}{tail}</section>'


def _link_html(record: Record, base: str) -> str:
    label = text(record, "source_path") or text(record, "prog_name") or text(record, "path")
    target = href(record.get("path"), base)
    if target is None:
        dup = href(record.get("duplicate_of"), base)
        if dup is not None:
            return f'<a href="{esc(dup)}">{esc(label or "duplicate")}</a> (duplicate)'
        return esc(label or "(no artifact)")
    return f'<a href="{esc(target)}">{esc(label or record.get("path"))}</a>'


# --- the process tree --------------------------------------------------------------------------


def process_summary(p: Process) -> str:
    argv = " ".join(p.argv)
    parts = [
        f'<span class="pid">{esc(p.pid)}</span>',
        f'<span class="comm">{esc(p.comm)}</span>',
        f'<span class="argv">{esc(argv)}</span>' if argv else "",
        f"uid {esc(p.uid)}" if p.uid is not None else "",
        f'<span class="ctr">{esc(container_label(p.container_id, p.container_name))}</span>',
        f"{esc(when(p.start))} {DASH} {esc(when(p.end))}",
        f'<span class="exit">{esc(exit_label(p))}</span>' if exit_label(p) else "",
    ]
    return " ".join(part for part in parts if part)


def exit_label(p: Process) -> str:
    """How the process ended, from its exit event: "" when the capture saw no exit."""
    if p.exited is None:
        return ""
    if p.signal:
        return f"killed by signal {p.signal}"
    return f"exit {p.exit_code}" if p.exit_code is not None else "exited"


def process_body(p: Process, base: str, flows_of: dict[int, list[str]]) -> list[list[Cell]]:
    """What a process's item lists when opened, as ``[prefix, cell]`` pairs (see ``Cell``):
    its execs, artifacts (linked) and flows. Data, not markup: the page's script builds the
    list when the item is first opened, so that thousands of processes cost one JSON object
    instead of a document to lay out."""
    items: list[list[Cell]] = [
        [f"exec {when(integer(e, 'ts'))}: ", text(e, "source_path")] for e in p.execs[:TREE_ITEMS]
    ]
    items += [
        [f"{text(r, 'kind')}: ", _artifact_cell(r, base)]
        for r in p.artifacts[:TREE_ITEMS]
        if text(r, "kind") in ARTIFACT_KINDS or r.get("kind") == "mem_alert"
    ]
    if len(p.artifacts) > TREE_ITEMS:
        items.append(["", f"{len(p.artifacts) - TREE_ITEMS} more in the tables"])
    items += [["flow: ", f] for f in flows_of.get(p.pid, [])[:TREE_ITEMS]]
    return items


def process_tree(
    procs: dict[int, Process], roots: Sequence[int], base: str, flows_of: dict[int, list[str]]
) -> str:
    """Nested lists, a child inside its parent's item; each process a ``<details>`` whose
    summary names it and whose body (``process_body``, in the ``proc-data`` JSON) lists its
    execs, artifacts and flows. Iterative, so a deep tree cannot exhaust the stack; each pid is
    shown once even if parents form a cycle."""
    shown: set[int] = set()
    bodies: dict[str, list[list[Cell]]] = {}
    out: list[str] = ['<section id="processes"><h2>Process tree</h2><ul class="tree">']
    stack: list[int | str] = list(reversed(roots))
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        if item in shown:
            continue
        shown.add(item)
        p = procs[item]
        bodies[str(p.pid)] = process_body(p, base, flows_of)
        out.append(
            f'<li class="proc" id="proc-{p.pid}" data-pid="{p.pid}" data-ppid="{esc(p.ppid)}">'
            f'<details data-pid="{p.pid}"><summary>{process_summary(p)}</summary>'
            "<ul></ul></details>"
        )
        children = sorted(
            (c for c in p.children if c not in shown), key=lambda c: (procs[c].start or 0, c)
        )
        stack.append("</li>")
        if children:
            stack.append("</ul>")
            stack.extend(reversed(children))
            stack.append('<ul class="children">')
    out.append('</ul><script type="application/json" id="proc-data">')
    out.append(json_for_script(bodies))
    out.append("</script></section>")
    return "".join(out)


# --- the timeline ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    ts: int
    kind: str
    container: str
    label: str


def marks(events: Iterable[Record], artifacts: Iterable[Record]) -> list[Mark]:
    """One mark per event: every exec and capture start/stop (events.jsonl), every index record
    with a time except pcap files (their packets are in the flows), gaps and budget included."""
    out = []
    for e in events:
        ts = integer(e, "ts")
        event = text(e, "event")
        if ts is None or event not in ("exec", "capture_start", "capture_stop"):
            continue
        kind = "exec" if event == "exec" else "capture"
        label = f"{event} {text(e, 'comm')} {text(e, 'source_path')}".strip()
        out.append(Mark(ts, kind, container_label(text(e, "container_id")), label))
    for r in artifacts:
        ts = timestamp(r)
        kind = text(r, "kind")
        if ts is None or kind == "pcap":
            continue
        lane = "binary" if kind == "exec" else kind
        what = text(r, "source_path") or text(r, "prog_name") or text(r, "path") or kind
        label = f"{kind} {text(r, 'comm')} {what}"
        out.append(Mark(ts, lane, container_label(text(r, "container_id")), label))
    out.sort(key=lambda m: m.ts)
    return out


def timeline(all_marks: Sequence[Mark]) -> str:
    """Lanes per (container, kind); x is time. ``data-t`` is ms from the first mark, which the
    page's script uses to zoom to a brushed window."""
    if not all_marks:
        return '<section id="timeline"><h2>Timeline</h2><p>No events.</p></section>'
    t0, t1 = all_marks[0].ts, all_marks[-1].ts
    span = max(t1 - t0, 1)
    lanes = sorted({(m.container, m.kind) for m in all_marks})
    lane_of = {lane: i for i, lane in enumerate(lanes)}
    height = len(lanes) * LANE_HEIGHT + 20
    parts = []
    for (container, kind), i in lane_of.items():
        y = i * LANE_HEIGHT
        parts.append(
            f'<text class="lane" x="{LABEL_WIDTH - 6}" y="{y + 13}">'
            f"{esc(container)} · {esc(kind)}</text>"
        )
    plot = TIMELINE_WIDTH
    if len(all_marks) <= MAX_MARKS:
        for m in all_marks:
            x = LABEL_WIDTH + (m.ts - t0) * plot / span
            y = lane_of[(m.container, m.kind)] * LANE_HEIGHT + 2
            parts.append(
                f'<rect class="mark k-{esc(m.kind)}" x="{x:.2f}" y="{y}" width="2" '
                f'height="{LANE_HEIGHT - 4}" data-t="{(m.ts - t0) / 1e6:.3f}" '
                f'data-kind="{esc(m.kind)}"><title>{esc(when(m.ts))} {esc(m.label)}</title></rect>'
            )
    else:
        counts: Counter[tuple[int, int]] = Counter()
        for m in all_marks:
            b = min(BINS - 1, (m.ts - t0) * BINS // span)
            counts[(lane_of[(m.container, m.kind)], b)] += 1
        peak = max(counts.values())
        for (lane, b), n in sorted(counts.items()):
            h = max(2.0, (LANE_HEIGHT - 4) * n / peak)
            x = LABEL_WIDTH + b * plot / BINS
            y = lane * LANE_HEIGHT + LANE_HEIGHT - 2 - h
            t = b * span / BINS / 1e6
            parts.append(
                f'<rect class="bin" x="{x:.2f}" y="{y:.1f}" width="{plot / BINS:.2f}" '
                f'height="{h:.1f}" data-t="{t:.3f}"><title>{n} events</title></rect>'
            )
    parts.append(
        f'<text class="axis" x="{LABEL_WIDTH}" y="{height - 4}" id="t-start">{esc(when(t0))}</text>'
        f'<text class="axis end" x="{LABEL_WIDTH + plot}" y="{height - 4}" id="t-end">'
        f"{esc(when(t1))}</text>"
    )
    svg = (
        f'<svg id="timeline-svg" width="{LABEL_WIDTH + plot + 10}" height="{height}" '
        f'data-span-ms="{span / 1e6:.3f}" data-plot="{plot}" data-left="{LABEL_WIDTH}" '
        f'data-t0="{esc(when(t0))}" role="img">'
        f'<rect id="brush" x="0" y="0" width="0" height="{height - 20}"/>'
        + "".join(parts)
        + "</svg>"
    )
    note = (
        f"<p>{len(all_marks)} events, one mark each; drag across to zoom to a window.</p>"
        if len(all_marks) <= MAX_MARKS
        else f"<p>{len(all_marks)} events: bars count them per lane and slice of time.</p>"
    )
    return (
        f'<section id="timeline"><h2>Timeline</h2>{note}'
        f'<button type="button" id="zoom-reset">whole capture</button>{svg}</section>'
    )


# --- tables ------------------------------------------------------------------------------------

#: A cell: text, ``[text, href]`` (a link) or ``{"pre": text}`` (preformatted).
Cell = Any


@dataclass(frozen=True)
class Table:
    id: str
    title: str
    columns: tuple[str, ...]
    rows: list[list[Cell]]


def _artifact_cell(record: Record, base: str) -> Cell:
    label = text(record, "source_path") or text(record, "path") or "(none)"
    target = href(record.get("path"), base)
    if target is not None:
        return [label, target]
    dup = href(record.get("duplicate_of"), base)
    if dup is not None:  # a load of bytes stored once: its record names the artifact that has them
        return [f"same bytes as {record['duplicate_of']}", dup]
    return label


def _who(record: Record) -> list[Cell]:
    return [
        str(integer(record, "pid") or ""),
        text(record, "comm"),
        container_label(text(record, "container_id")),
    ]


def _complete(record: Record) -> str:
    return "yes" if record.get("complete") is True else "false"


def files_table(records: Iterable[Record], base: str) -> Table:
    rows = [
        [
            text(r, "kind"),
            _artifact_cell(r, base),
            str(integer(r, "size") or 0),
            text(r, "sha256"),
            _complete(r),
            str(missing_bytes(r)),
            *_who(r),
            when(timestamp(r)),
        ]
        for r in records
        if r.get("kind") in ("write", "read")
    ]
    columns = ("kind", "source path → artifact", "size", "sha256", "complete", "missing",
               "pid", "comm", "container", "first write/read")  # fmt: skip
    return Table("t-files", "Written and read files", columns, rows)


def exec_table(records: Iterable[Record], base: str, extras: Extras) -> Table:
    rows = []
    for r in records:
        if r.get("kind") != "exec":
            continue
        source = text(r, "source_path")
        flags = [f for f, on in (("memfd", r.get("memfd") is True),
                                 ("deleted", source.endswith(" (deleted)"))) if on]  # fmt: skip
        argv = r.get("argv")
        rows.append(
            [
                _artifact_cell(r, base),
                " ".join(a for a in argv if isinstance(a, str)) if isinstance(argv, list) else "",
                text(r, "sha256"),
                ", ".join(flags),
                extras.get(text(r, "path"), {}).get("elf", ""),
                str(integer(r, "size") or 0),
                _complete(r),
                *_who(r),
                when(timestamp(r)),
            ]
        )
    columns = ("binary", "argv", "sha256", "memfd/deleted", "ELF", "size", "complete", "pid",
               "comm", "container", "first exec")  # fmt: skip
    return Table("t-exec", "Executed binaries", columns, rows)


def mem_table(records: Iterable[Record], base: str, extras: Extras) -> Table:
    rows = []
    for r in records:
        if r.get("kind") not in ("mem", "mem_alert"):
            continue
        address = integer(r, "address")
        rows.append(
            [
                _artifact_cell(r, base) if r.get("kind") == "mem" else "(alert only)",
                f"{address:#x}" if address is not None else "",
                f"{text(r, 'prot_before_rwx')} → {text(r, 'prot_after_rwx')}",
                text(r, "syscall"),
                text(r, "alert"),
                str(integer(r, "region_size") or 0),
                text(r, "sha256"),
                {"pre": extras.get(text(r, "path"), {}).get("preview", "")},
                *_who(r),
                when(timestamp(r)),
            ]
        )
    columns = ("region", "address", "protection", "syscall", "alert", "size", "sha256",
               "first bytes", "pid", "comm", "container", "when")  # fmt: skip
    return Table("t-mem", "Memory regions", columns, rows)


def module_table(records: Iterable[Record], base: str, extras: Extras) -> Table:
    rows = []
    for r in records:
        if r.get("kind") != "module":
            continue
        path = text(r, "path") or text(r, "duplicate_of")
        info = dict(extras.get(path, {}).get("modinfo", []))
        rows.append(
            [
                _artifact_cell(r, base),
                info.get("name", ""),
                text(r, "params"),
                text(r, "syscall"),
                str(integer(r, "ret")),
                text(r, "sha256"),
                _complete(r),
                ", ".join(
                    f"{k}={v}"
                    for k, v in extras.get(path, {}).get("modinfo", [])
                    if k in ("description", "license", "vermagic")
                ),
                *_who(r),
                when(timestamp(r)),
            ]
        )
    columns = ("image", "name (.modinfo)", "params", "syscall", "result", "sha256", "complete",
               "modinfo", "pid", "comm", "container", "when")  # fmt: skip
    return Table("t-module", "Kernel modules", columns, rows)


def bpf_table(records: Iterable[Record], base: str, extras: Extras) -> Table:
    rows = []
    for r in records:
        if r.get("kind") != "bpf":
            continue
        path = text(r, "path") or text(r, "duplicate_of")
        rows.append(
            [
                _artifact_cell(r, base),
                text(r, "prog_name"),
                prog_type_name(r.get("prog_type")),
                str(integer(r, "insn_cnt")),
                str(integer(r, "ret")),
                text(r, "sha256"),
                {"pre": "\n".join(extras.get(path, {}).get("disasm", []))},
                *_who(r),
                when(timestamp(r)),
            ]
        )
    columns = ("program", "name", "type", "instructions", "result (fd or -errno)", "sha256",
               "first instructions", "pid", "comm", "container", "when")  # fmt: skip
    return Table("t-bpf", "BPF programs", columns, rows)


def pcap_table(records: Iterable[Record], base: str) -> Table:
    rows = [
        [
            _artifact_cell(r, base),
            text(r, "split"),
            str(integer(r, "packets") or 0),
            str(integer(r, "size") or 0),
            text(r, "sha256"),
            _complete(r),
            *_who(r),
            when(timestamp(r)),
        ]
        for r in records
        if r.get("kind") == "pcap"
    ]
    columns = ("pcap file", "split", "packets", "size", "sha256", "complete", "pid", "comm",
               "container", "first packet")  # fmt: skip
    return Table("t-pcap", "pcap files", columns, rows)


def flow_rows(records: Iterable[Record], base: str, extras: Extras) -> list[list[Cell]]:
    rows = []
    for r in records:
        if r.get("kind") != "pcap":
            continue
        parsed = extras.get(text(r, "path"), {}).get("flows")
        link = _artifact_cell(r, base)
        who = _who(r)
        if parsed is None:
            continue
        for f in parsed.flows:
            rows.append(
                [
                    link,
                    text(r, "split"),
                    *who,
                    f.tuple_text(),
                    str(f.packets),
                    str(f.bytes),
                    {"pre": "\n".join(f.dns)},
                    {"pre": "\n".join(f.http)},
                ]
            )
        if parsed.error:
            rows.append([link, text(r, "split"), *who, f"unreadable: {parsed.error}", "", "",
                         {"pre": ""}, {"pre": ""}])  # fmt: skip
    return rows


def flows_table(records: Iterable[Record], base: str, extras: Extras) -> Table:
    columns = ("pcap", "split", "pid", "comm", "container", "5-tuple", "packets", "bytes",
               "DNS", "HTTP")  # fmt: skip
    return Table("t-flows", "Network flows", columns, flow_rows(records, base, extras))


def process_flows(records: Iterable[Record], extras: Extras) -> dict[int, list[str]]:
    """Flow lines for the process tree, from the per-process pcaps."""
    out: dict[int, list[str]] = {}
    for r in records:
        pid = integer(r, "pid")
        parsed = extras.get(text(r, "path"), {}).get("flows")
        if r.get("kind") != "pcap" or pid is None or parsed is None:
            continue
        for f in parsed.flows:
            notes = "; ".join(f.dns + f.http)
            out.setdefault(pid, []).append(
                f"{f.tuple_text()} {f.packets} packets {f.bytes} bytes"
                + (f" ({notes})" if notes else "")
            )
    return out


def table_html(table: Table) -> str:
    """The table's heading, a container the script fills a page at a time, and its data."""
    return (
        f'<section class="kind" id="{esc(table.id)}"><h2>{esc(table.title)} '
        f'<span class="count">({len(table.rows)})</span></h2>'
        f'<div class="table" data-table="{esc(table.id)}"></div>'
        f'<script type="application/json" class="table-data" data-for="{esc(table.id)}">'
        f"{json_for_script({'columns': table.columns, 'rows': table.rows})}</script></section>"
    )

"""The whole page from an output directory: one script (ours, by hash), no network, links
relative to where the page is written, artifacts read without following links."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

from tracecap.tools.report import build, page

HOSTILE = "<script>alert(1)</script>"


def capture(root: Path) -> Path:
    out = root / "out"
    (out / "host").mkdir(parents=True)
    (out / "host" / "bpf.p").write_bytes(bytes.fromhex("b7000000000000009500000000000000"))
    (out / "host" / "mem.m").write_bytes(b"\x90" * 100)
    os.symlink("/etc/passwd", out / "host" / "exec.link")
    records = [
        {"kind": "bpf", "path": "host/bpf.p", "prog_name": HOSTILE, "prog_type": 1,
         "insn_cnt": 2, "ret": 5, "sha256": "a" * 64, "complete": True, "pid": 5, "ts": 1},
        {"kind": "mem", "path": "host/mem.m", "sha256": "b" * 64, "complete": True, "pid": 5,
         "ts": 2, "address": 4096},
        {"kind": "exec", "path": "host/exec.link", "sha256": "c" * 64, "complete": True,
         "pid": 5, "ts": 3, "comm": HOSTILE},
    ]  # fmt: skip
    (out / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    events = [{"event": "exec", "pid": 5, "ppid": 1, "comm": HOSTILE, "ts": 0, "argv": ["'\""]}]
    (out / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return out


def test_one_script_allowed_by_hash_and_nothing_from_anywhere(tmp_path: Path) -> None:
    out = capture(tmp_path)
    result = build.write_report(str(tmp_path))  # the dir: holding out/ is accepted
    assert result.path == str(out / "report.html") and result.artifacts == 3
    html = Path(result.path).read_text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    runnable = [body for attrs, body in scripts if 'type="application/json"' not in attrs]
    assert runnable == [page.SCRIPT]
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert f"script-src {page.csp_hash(page.SCRIPT)};" in csp.replace("&#x27;", "'")
    assert "default-src &#x27;none&#x27;" in csp and "connect-src &#x27;none&#x27;" in csp
    assert HOSTILE not in html.replace(page.SCRIPT, "")
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing fetched


def test_artifacts_are_described_and_links_are_not_followed(tmp_path: Path) -> None:
    out = capture(tmp_path)
    html, _, _ = build.render(str(out), "")
    assert "r0 = 0" in html and "exit" in html  # the BPF disassembly
    assert "00000000  90 90 90" in html  # the memory preview
    assert "root:" not in html and "not ELF" not in html  # the symlink was not read


def test_links_are_relative_to_where_the_page_goes(tmp_path: Path) -> None:
    out = capture(tmp_path)
    elsewhere = tmp_path / "reports" / "case.html"
    elsewhere.parent.mkdir()
    assert build.link_base(str(out), str(elsewhere)) == "../out/"
    assert build.link_base(str(out), str(out / "r.html")) == ""
    build.write_report(str(out), str(elsewhere))
    text = elsewhere.read_text()
    assert ',"../out/host/bpf.p"]' in text  # the process tree's and the tables' data
    assert ',"../out/host/mem.m"]' in text


def test_a_missing_directory_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert build.main(str(tmp_path / "nope"), None) == 1
    assert "nope: no such directory" in capsys.readouterr().err


def test_a_rotated_index_is_read_segment_by_segment_in_order(tmp_path: Path) -> None:
    """index-rotate: closed segments (plain and gzip) by number, then the live file."""
    out = capture(tmp_path)
    lines = (out / "index.jsonl").read_text().splitlines(keepends=True)
    (out / "index.000001.jsonl.gz").write_bytes(gzip.compress(lines[0].encode()))
    (out / "index.000002.jsonl").write_text(lines[1])
    rotation = {"kind": "rotation", "file": "index.jsonl", "previous": "index.000002.jsonl"}
    (out / "index.jsonl").write_text(json.dumps(rotation) + "\n" + lines[2])
    records, bad = build.read_lines(str(out), build.INDEX)
    assert bad == 0
    assert [r.get("path") for r in records] == [
        "host/bpf.p", "host/mem.m", None, "host/exec.link"
    ]  # fmt: skip
    html, n_records, _ = build.render(str(out), "")
    assert n_records == 4  # the rotation record stands for itself, as a gap record does
    assert all(f'"host/{name}"]' in html for name in ("bpf.p", "mem.m", "exec.link"))


def test_events_are_read_from_their_segments_in_order_then_the_live_file(tmp_path: Path) -> None:
    """events.jsonl rotated (``index-rotate:``): a gzip segment, a plain one, the live file;
    every exec is in the process tree and the timeline, and a removed segment is a loss."""
    out = capture(tmp_path)
    lines = [
        {"event": "exec", "pid": 10 + i, "ppid": 5, "comm": f"seg{i}", "ts": 10 + i}
        for i in range(3)
    ]
    note = {"kind": "rotation", "file": "events.jsonl", "previous": "events.000002.jsonl",
            "segment": 2, "removed": ["events.000000.jsonl"], "ts": 11}  # fmt: skip
    (out / "events.000001.jsonl.gz").write_bytes(gzip.compress(json.dumps(lines[0]).encode()))
    (out / "events.000002.jsonl").write_text(json.dumps(lines[1]) + "\n")
    (out / "events.jsonl").write_text(json.dumps(note) + "\n" + json.dumps(lines[2]) + "\n")
    events, bad = build.read_lines(str(out), build.EVENTS)
    assert bad == 0 and [e.get("comm") for e in events] == ["seg0", "seg1", None, "seg2"]
    html, _, n_events = build.render(str(out), "")
    assert n_events == 4 and all(f'data-pid="{10 + i}"' in html for i in range(3))
    assert html.count('data-kind="exec"') == 3
    assert "1 closed segments of events.jsonl removed" in html

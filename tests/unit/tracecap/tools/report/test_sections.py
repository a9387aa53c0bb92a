"""Each section builder on fixed inputs: escaping, links, losses, tree, timeline, tables."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

from tracecap.tools.report import flows, model, sections

HOSTILE = "<script>alert(1)</script>"
QUOTED = '/tmp/it\'s "quoted" & <b>bold</b>.txt'
T0 = 1_700_000_000_000_000_000
DUP = "host/bpf.name-p.pid-1." + "c" * 64


def record(**fields: object) -> dict:
    base = {"pid": 11, "ppid": 10, "uid": 0, "comm": "curl", "container_id": "", "ts": T0}
    return {**base, **fields}


ARTIFACTS = [
    record(kind="write", path="host/write.dev-1.inode-2", source_path=QUOTED, size=100,
           sha256="a" * 64, complete=False, missing=[[10, 30], [90, 100]], end=100,
           comm=HOSTILE),
    record(kind="exec", path="host/exec.1.x", source_path="/memfd:x (deleted)", memfd=True,
           argv=["x", HOSTILE], sha256="b" * 64, size=10, complete=True, missing=[]),
    record(kind="bpf", path=None, duplicate_of="host/bpf.name-p.pid-1." + "c" * 64,
           prog_name="p", prog_type=1, insn_cnt=2, ret=5, sha256="c" * 64, complete=True),
    record(kind="mem", path="javascript:alert(1)", address=4096, prot_before_rwx="rw-",
           prot_after_rwx="r-x", sha256="d" * 64, complete=True),
    {"kind": "gap", "writer": "file", "from_seq": 5, "to_seq": 9, "ts": T0 + 5},
]  # fmt: skip
EVENTS = [
    {"event": "capture_start", "ts": T0 - 10**9},
    {"event": "exec", "pid": 10, "ppid": 1, "comm": "bash", "argv": ["bash"], "ts": T0 - 5},
    {"event": "exec", "pid": 11, "ppid": 10, "comm": HOSTILE, "argv": [QUOTED], "ts": T0 - 1},
    {"event": "capture_stop", "ts": T0 + 10**9, "kernel_drops": {"write.event_drops": 2},
     "collector": {"lost_bytes": 0, "bus_dropped_messages": 3}},
]  # fmt: skip


class Elements(HTMLParser):
    """Start tags with their attributes, and the text; fails the test on a stray script."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    return parser


def test_capture_strings_are_text_never_markup() -> None:
    procs = model.processes(ARTIFACTS, EVENTS)
    html = "".join([
        sections.loss_panel(EVENTS, ARTIFACTS, {}, ""),
        sections.process_tree(procs, model.roots(procs), "", {}),
        sections.timeline(sections.marks(EVENTS, ARTIFACTS)),
    ])  # fmt: skip
    parsed = parse(html)
    assert {tag for tag, _ in parsed.tags} <= {
        "section", "h2", "p", "ul", "li", "table", "thead", "tbody", "tr", "th", "td", "a",
        "svg", "rect", "title", "text", "details", "summary", "span", "button", "code", "script",
    }  # fmt: skip
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert scripts == [{"type": "application/json", "id": "proc-data"}]  # data, never run
    assert HOSTILE in "".join(parsed.text) and QUOTED in "".join(parsed.text)
    for _, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs)
        assert not (attrs.get("href") or "").startswith("javascript")


def test_links_only_to_names_a_writer_gives() -> None:
    assert sections.href("host/exec.1.a%20b", "../out/") == "../out/host/exec.1.a%2520b"
    for bad in ("javascript:alert(1)", "/etc/passwd", "host/../../x", "a b", None, 5, ""):
        assert sections.href(bad, "") is None


def test_json_for_script_cannot_close_its_element() -> None:
    text = sections.json_for_script(["</script><!--", "\u2028&"])
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == ["</script><!--", "\u2028&"]


def test_loss_panel_says_why_and_draws_the_missing_ranges() -> None:
    html = sections.loss_panel(EVENTS, ARTIFACTS, {"index.jsonl": 2}, "")
    assert "1 artifacts are incomplete" in html
    assert "kernel ring: 2 write.event drops" in html
    assert "collector: bus dropped messages 3" in html and "lost bytes" not in html
    assert "bus gaps: 1 gaps, 5 messages never reached a writer (file)" in html
    assert "index.jsonl: 2 lines are not JSON objects" in html
    bars = re.findall(r'<rect class="missing" x="([\d.]+)" y="0" width="([\d.]+)"', html)
    assert bars == [("30.0", "60.0"), ("270.0", "30.0")]  # [10,30) and [90,100) of 100 bytes
    assert "<td>30</td>" in html  # missing bytes


def test_an_incomplete_artifact_says_which_flags_make_it_so() -> None:
    record = {"kind": "write", "path": "host/write.dev-1.inode-2", "complete": False,
              "missing": [], "end": 512, "size": 512, "history_unknown": True,
              "lost_unsized": 2}  # fmt: skip
    html = sections.loss_panel([], [record], {}, "")
    assert "<td>lost_unsized, history_unknown</td>" in html


def test_a_complete_capture_says_so() -> None:
    html = sections.loss_panel([{"event": "capture_stop", "ts": 1}], [], {}, "")
    assert "Every artifact is complete." in html and "nothing was lost" in html


def test_process_tree_nests_children_in_their_parent() -> None:
    procs = model.processes(ARTIFACTS, EVENTS)
    html = sections.process_tree(procs, model.roots(procs), "", {11: ["udp a → b 1 packets"]})
    parent = html.index('id="proc-10"')
    child = html.index('id="proc-11"')
    children_list = html.index('<ul class="children">', parent)
    assert parent < children_list < child
    assert html.count('class="proc"') == 2 and "&lt;script&gt;alert(1)" in html
    data = html.split('<script type="application/json" id="proc-data">', 1)[1]
    bodies = json.loads(data.split("</script>", 1)[0])
    assert bodies["10"] == [[f"exec {sections.when(T0 - 5)}: ", ""]]
    assert bodies["11"] == [
        [f"exec {sections.when(T0 - 1)}: ", ""],
        ["write: ", [QUOTED, "host/write.dev-1.inode-2"]],
        ["exec: ", ["/memfd:x (deleted)", "host/exec.1.x"]],
        ["bpf: ", [f"same bytes as {DUP}", DUP]],
        ["mem: ", "javascript:alert(1)"],  # not a name a writer gives: text, not a link
        ["flow: ", "udp a → b 1 packets"],
    ]


def test_timeline_has_a_mark_per_event_in_lanes() -> None:
    all_marks = sections.marks(EVENTS, ARTIFACTS)
    # 2 execs + start + stop, 4 artifacts + 1 gap (a pathless bpf load counts: it happened)
    assert len(all_marks) == 9
    html = sections.timeline(all_marks)
    assert html.count('<rect class="mark') == 9
    kinds = re.findall(r'data-kind="([^"]+)"', html)
    assert sorted(set(kinds)) == ["binary", "bpf", "capture", "exec", "gap", "mem", "write"]
    ts = [float(t) for t in re.findall(r'data-t="([\d.]+)"', html)]
    assert ts == sorted(ts) and ts[0] == 0.0 and ts[-1] == 2000.0


def test_a_large_timeline_is_binned() -> None:
    many = [sections.Mark(T0 + i, "write", "host", "w") for i in range(sections.MAX_MARKS + 1)]
    html = sections.timeline(many)
    assert '<rect class="mark' not in html
    assert 0 < html.count('<rect class="bin"') <= sections.BINS
    counts = [int(n) for n in re.findall(r"<title>(\d+) events</title>", html)]
    assert sum(counts) == len(many)


def test_tables_hold_every_artifact_with_its_sha256() -> None:
    extras = {"host/exec.1.x": {"elf": "ELF64 EXEC x86-64 (LE)"}}
    files = sections.files_table(ARTIFACTS, "../out/")
    assert files.rows[0][1] == [QUOTED, "../out/host/write.dev-1.inode-2"]
    assert files.rows[0][3] == "a" * 64 and files.rows[0][4] == "false"
    exe = sections.exec_table(ARTIFACTS, "", extras).rows[0]
    assert exe[1] == f"x {HOSTILE}" and exe[2] == "b" * 64
    assert exe[3] == "memfd, deleted" and exe[4] == "ELF64 EXEC x86-64 (LE)"
    bpf = sections.bpf_table(ARTIFACTS, "", {}).rows[0]
    assert bpf[0] == [f"same bytes as {DUP}", DUP]
    assert bpf[2] == "socket_filter"
    mem = sections.mem_table(ARTIFACTS, "", {}).rows[0]
    assert mem[0] == "javascript:alert(1)" and mem[1] == "0x1000"  # text, not a link


def test_flows_table_and_the_tree_lines() -> None:
    parsed = flows.PcapFlows(
        [flows.Flow("udp", "10.0.0.1", 5, "10.0.0.2", 53, 2, 120, dns=["? a.test A"])], 2
    )
    pcap = record(kind="pcap", path="pcap/processes/host/curl_11_1.pcap", split="process")
    extras = {pcap["path"]: {"flows": parsed}}
    rows = sections.flows_table([pcap], "", extras).rows
    assert rows == [[["pcap/processes/host/curl_11_1.pcap"] * 2, "process", "11", "curl",
                     "host", "udp 10.0.0.1:5 → 10.0.0.2:53", "2", "120", {"pre": "? a.test A"},
                     {"pre": ""}]]  # fmt: skip
    [row] = sections.pcap_table([dict(pcap, sha256="e" * 64, packets=2)], "").rows
    assert row[:6] == [["pcap/processes/host/curl_11_1.pcap"] * 2, "process", "2", "0",
                       "e" * 64, "false"]  # fmt: skip
    assert sections.process_flows([pcap], extras) == {
        11: ["udp 10.0.0.1:5 → 10.0.0.2:53 2 packets 120 bytes (? a.test A)"]
    }


def test_table_html_embeds_data_safely() -> None:
    table = sections.Table("t-x", "X <b>", ("a",), [[HOSTILE]])
    html = sections.table_html(table)
    assert html.count("<script") == 1 and "X &lt;b&gt;" in html
    data = html.split('data-for="t-x">', 1)[1].rsplit("</script>", 1)[0]
    assert json.loads(data) == {"columns": ["a"], "rows": [[HOSTILE]]}


def test_overview_counts_and_window() -> None:
    window = sections.capture_window(EVENTS, ARTIFACTS)
    assert (window.start, window.end) == (T0 - 10**9, T0 + 10**9)
    events = [{"event": "writer_start", "host": "<b>h1</b>"}, *EVENTS]
    html = sections.overview("/out", window, events, ARTIFACTS, model.processes(ARTIFACTS, EVENTS))
    assert "<th>hosts</th><td>&lt;b&gt;h1&lt;/b&gt;</td>" in html
    assert "2023-11-14 22:13:19.000 \N{EN DASH} 2023-11-14 22:13:21.000 UTC" in html
    assert "<th>written files</th><td>1</td>" in html and "<th>processes</th><td>2</td>" in html


def test_a_process_in_a_named_container_shows_the_name_and_the_short_id() -> None:
    cid = "ab" * 32
    p = model.Process(pid=5, comm="nginx", container_id=cid)
    p.seen({"ts": T0, "container_id": cid, "container_name": "<web>"})
    assert '<span class="ctr">&lt;web&gt; (abababababab)</span>' in sections.process_summary(p)
    assert sections.container_label("", "ignored") == "host"


def test_process_summary_says_how_a_process_ended() -> None:
    ended = [
        (model.Process(1, exited=5, exit_code=3, signal=0), "exit 3"),
        (model.Process(2, exited=5, exit_code=0, signal=9), "killed by signal 9"),
        (model.Process(3, exited=5), "exited"),
    ]
    for p, label in ended:
        assert f'<span class="exit">{label}</span>' in sections.process_summary(p)
    assert 'class="exit"' not in sections.process_summary(model.Process(4, end=9))

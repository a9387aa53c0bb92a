"""`tracecap report` on a real incident, opened in headless Chromium (Debian's `chromium`).

A process tree downloads a file with curl from `python -m http.server`, writes a file, executes
a memfd binary, makes memory executable (ctypes mprotect), loads BPF programs (bpftrace) and
resolves a name with dig against dnsmasq, all captured by the real pipeline. The report is
opened with `chromium --headless --dump-dom` (the DOM after the page's script ran) and
`--screenshot` (kept in the test's temporary directory); Chromium's console, logged on stderr
with `--enable-logging=stderr`, must be silent. A capture of hostile names shows that nothing
from the capture becomes markup or script in the browser, and a tampered copy of that report
shows that the console check sees an injection when there is one. The timeline's brush is
driven with real mouse events through the DevTools protocol (tests/support/cdp.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.support.cdp import Chromium
from tests.support.pipeline import Run, artifact_name
from tests.support.workloads import WORKLOAD_TIMEOUT_S, python

CHROMIUM = shutil.which("chromium")
CAPTURE = ("--capture", "write", "--capture", "exec", "--capture", "mem", "--capture", "bpf",
           "--capture", "network", "--capture", "pcap:process")  # fmt: skip
EVIL = "evil.tc.test"
EVIL_ADDRESS = "10.9.8.7"


def chromium(page: Path, *mode: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``page``; its console messages go to stderr as ``CONSOLE`` lines."""
    assert CHROMIUM, "chromium is installed by `make setup-test`"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", *mode, page.as_uri()],
        capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip


def console(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


class Dom(HTMLParser):
    """The parts of the page the tests read: each process's enclosing process, the timeline's
    marks by kind, every start tag, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.parent: dict[int, int | None] = {}
        self.marks: dict[str, int] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._open: list[int | None] = []  # per open <li>: its pid, or None for another li

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "li":
            pid = int(a["data-pid"]) if a.get("class") == "proc" else None
            if pid is not None:
                enclosing = [p for p in self._open if p is not None]
                self.parent[pid] = enclosing[-1] if enclosing else None
            self._open.append(pid)
        if tag == "rect" and "mark" in (a.get("class") or "").split():
            self.marks[a["data-kind"]] = self.marks.get(a["data-kind"], 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "li":
            self._open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def dom_of(result: subprocess.CompletedProcess) -> Dom:
    dom = Dom()
    dom.feed(result.stdout)
    return dom


def free_port(addr: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


@pytest.fixture
def servers(workdir: Path):
    """`python -m http.server` serving payload.bin, and dnsmasq answering for EVIL alone (no
    upstream, no hosts file); both outside the capture's scope."""
    www = workdir / "www"
    www.mkdir()
    payload = os.urandom(40_000)
    (www / "payload.bin").write_bytes(payload)
    http = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory",
         str(www)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    dns_port = free_port("127.0.0.1")
    conf = workdir / "dnsmasq.conf"
    conf.write_text("\n".join([
        "keep-in-foreground", "no-resolv", "no-hosts", "bind-interfaces", "user=root",
        "pid-file=", "listen-address=127.0.0.1", f"port={dns_port}",
        f"address=/{EVIL}/{EVIL_ADDRESS}", f"log-facility={workdir}/dnsmasq.log", "",
    ]))  # fmt: skip
    dnsmasq = subprocess.Popen(["dnsmasq", f"--conf-file={conf}"], stdin=subprocess.DEVNULL)
    try:
        match = re.search(r" port (\d+) ", http.stdout.readline())
        assert match, "http.server did not say where it listens"
        deadline = time.monotonic() + 20
        while EVIL_ADDRESS not in dig(dns_port).stdout:
            assert dnsmasq.poll() is None and time.monotonic() < deadline, "dnsmasq is not up"
            time.sleep(0.1)
        yield int(match.group(1)), dns_port, payload
    finally:
        for proc in (http, dnsmasq):
            proc.terminate()
            proc.wait(10)


def dig(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=2", "+tries=1", EVIL, "A"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


#: The incident: a launcher named tc-incident (the capture's scope, with its descendants) that
#: logs to a file and starts each step as a child, printing every pid it knows.
INCIDENT = """
import json, os, subprocess, sys
open("/proc/self/comm", "w").write("tc-incident")
w, http_port, dns_port = sys.argv[1], sys.argv[2], sys.argv[3]
log = open(f"{w}/incident.log", "w")
pids = {"launcher": os.getpid()}
def step(name, argv, **kw):
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (name, err)
    pids[name] = proc.pid
    log.write(f"{name} {proc.pid}\\n")
    log.flush()
    return out.decode()
url = f"http://127.0.0.1:{http_port}/payload.bin"
pids["curl"] = int(step("download", ["bash", "-c", f"curl -sS -o {w}/payload.bin {url} & "
                                       "echo $!; wait $!"]))
step("note", ["bash", "-c", f"echo 'exfiltrated' > {w}/note.txt"])
# a dropper that runs a second: the collector names a memfd by /proc/PID/exe, which a binary
# that exits at once (/bin/true) may no longer have
step("memfd", [sys.executable, "-c", '''
import os
fd = os.memfd_create("tc-dropper", 0)
os.write(fd, open("/bin/sleep", "rb").read())
os.execv(f"/proc/self/fd/{fd}", ["tc-dropper", "1"])
'''])
step("unpacker", [sys.executable, "-c", '''
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
p = libc.mmap(None, 4096, 3, 0x22, -1, 0)
ctypes.memmove(p, b"\\\\x90" * 64 + b"\\\\xc3", 65)
assert libc.mprotect(p, 4096, 5) == 0
'''])
step("bpftrace", ["bpftrace", "-e", 'BEGIN { printf("tc-report\\\\n"); exit(); }'])
answer = step("dig", ["dig", "@127.0.0.1", "-p", dns_port, "+short", "+time=2", "+tries=1",
                      "evil.tc.test", "A"])
assert "10.9.8.7" in answer, answer
log.close()
print(json.dumps(pids))
"""


def run_incident(workdir: Path, http_port: int, dns_port: int) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(INCIDENT), str(workdir), str(http_port),
         str(dns_port)], capture_output=True, text=True, timeout=WORKLOAD_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def report(run: Run, output: Path) -> None:
    done = subprocess.run(
        ["tracecap", "report", str(run.out_dir), "-o", str(output)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and output.exists(), done.stderr


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def current(records: list[dict]) -> list[dict]:
    by_path: dict[object, dict] = {}
    for r in records:
        by_path[r.get("path") or id(r)] = r
    return list(by_path.values())


def test_the_report_of_an_incident_in_chromium(tracecap, workdir: Path, servers, tmp_path):
    http_port, dns_port, payload = servers
    run = tracecap(*CAPTURE, "--scope", "comm=tc-incident", "--scope", "follow")
    pids = run_incident(workdir, http_port, dns_port)
    time.sleep(1.5)  # artifacts idle for a second get their index lines; the stop flushes
    run.stop()
    page = tmp_path / "report.html"
    report(run, page)
    loaded = chromium(page, "--dump-dom")
    shot = tmp_path / "report.png"
    painted = chromium(page, f"--screenshot={shot}", "--window-size=1400,2400")
    assert console(loaded) == [] and console(painted) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
    dom = dom_of(loaded)
    text = "".join(dom.text)
    events = jsonl(run.out_dir / "events.jsonl")
    records = current(run.index)

    # the process tree: each step a child of the launcher, curl a child of its shell
    assert dom.parent[pids["launcher"]] is None, dom.parent
    for step in ("download", "note", "memfd", "unpacker", "bpftrace", "dig"):
        assert dom.parent[pids[step]] == pids["launcher"], (step, dom.parent)
    assert dom.parent[pids["curl"]] == pids["download"]
    for event in events:  # and every exec's process under its parent, where it was seen
        if event["event"] == "exec" and event["ppid"] in dom.parent:
            assert dom.parent[event["pid"]] == event["ppid"], event

    # the tables: every artifact with its sha256, the ones of the incident as they were
    with_bytes = [r for r in records if r.get("path") and r.get("sha256")]
    assert {r["kind"] for r in with_bytes} >= {"write", "exec", "mem", "bpf", "pcap"}
    for r in with_bytes:
        assert r["sha256"] in text, r
    downloaded = [r for r in records if r.get("source_path") == f"{workdir}/payload.bin"]
    assert downloaded and downloaded[-1]["sha256"] == hashlib.sha256(payload).hexdigest()
    [memfd] = [r for r in records if r.get("kind") == "exec" and r.get("memfd")]
    assert memfd["sha256"] == hashlib.sha256(Path("/bin/sleep").read_bytes()).hexdigest()
    assert "memfd" in text and re.search(r"ELF64 (PIE|DYN|EXEC) x86-64", text)
    assert "r-x" in text and "00000000  90 90 90" in text  # the region and its first bytes
    assert "exit" in text and re.search(r"\d+: [0-9a-f]{16}  ", text)  # BPF disassembly
    flows = text[text.index("Network flows") :]
    assert f"? {EVIL} A" in flows and f"{EVIL} A {EVIL_ADDRESS}" in flows, flows  # dig's
    assert "GET /payload.bin" in flows and "HTTP/1.0 200 OK" in flows, flows  # curl's

    # the timeline: a mark per event
    execs = [e for e in events if e["event"] == "exec"]
    assert dom.marks.get("exec") == len(execs) and len(execs) >= 8
    starts_stops = [e for e in events if e["event"] in ("capture_start", "capture_stop")]
    assert dom.marks.get("capture") == len(starts_stops) == 2
    timed = [r for r in records if r.get("kind") != "pcap" and (r.get("ts") or r.get("first_ts"))]
    assert sum(dom.marks.values()) == len(execs) + 2 + len(timed)
    assert dom.marks.get("bpf") == len([r for r in records if r["kind"] == "bpf"])

    # curl's process opened (as a click does): its exec, download and flow, linked
    curl = pids["curl"]
    opened = tmp_path / "opened.html"
    opened.write_text(
        page.read_text().replace(
            f'<details data-pid="{curl}">', f'<details open data-pid="{curl}">'
        )
    )
    shown = chromium(opened, "--dump-dom")
    assert console(shown) == []
    body = shown.stdout.split(f'<details open="" data-pid="{curl}"', 1)[1].split("</details>")[0]
    target = os.path.relpath(run.out_dir / downloaded[-1]["path"], tmp_path)
    assert f'href="{target}"' in body and "GET /payload.bin" in body, body


HOSTILE_COMM = "<script>alert(1"  # a comm is 15 bytes
HOSTILE_ARGV = ["<script>alert(1)</script>", "\"'><img src=x onerror=alert(2)>"]
HOSTILE_FILE = 'it\'s "quoted" <img src=x onerror=alert(3)>.txt'
HOSTILE_EXE = '"><svg onload=alert(4)>'

HOSTILE = """
import os, subprocess, sys
open("/proc/self/comm", "w").write("tc-hostile")
w, comm, argv, name, exe = sys.argv[1], sys.argv[2], sys.argv[3:5], sys.argv[5], sys.argv[6]
child = os.fork()
if child == 0:
    open("/proc/self/comm", "w").write(comm)
    with open(os.path.join(w, name), "w") as f:
        f.write("hostile")
    os._exit(0)
os.waitpid(child, 0)
subprocess.run([os.path.join(w, exe), *argv], check=True)
"""


def test_hostile_names_stay_text_in_chromium(tracecap, workdir: Path, tmp_path):
    shutil.copy("/bin/true", workdir / HOSTILE_EXE)
    run = tracecap("--capture", "write", "--capture", "exec", "--scope", "comm=tc-hostile",
                   "--scope", "follow")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HOSTILE), str(workdir), HOSTILE_COMM,
         *HOSTILE_ARGV, HOSTILE_FILE, HOSTILE_EXE],
        capture_output=True, text=True, timeout=WORKLOAD_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    time.sleep(1.5)
    run.stop()
    written = [r for r in run.index if r.get("source_path") == f"{workdir}/{HOSTILE_FILE}"]
    assert written and written[0]["comm"] == HOSTILE_COMM, "the hostile write was not captured"
    page = tmp_path / "hostile.html"
    report(run, page)
    loaded = chromium(page, "--dump-dom")
    assert console(loaded) == []  # no script ran, nothing was blocked trying
    dom = dom_of(loaded)
    text = "".join(dom.text)
    for hostile in (HOSTILE_COMM, *HOSTILE_ARGV, HOSTILE_FILE, HOSTILE_EXE):
        assert hostile in text, hostile  # shown, as text
    scripts = [a for tag, a in dom.tags if tag == "script" and a.get("type") != "application/json"]
    assert scripts == [{}]  # the page's own script only
    assert not any(tag == "img" for tag, _ in dom.tags)
    assert not any(name.startswith("on") for _, a in dom.tags for name in a)

    # the control: the same page with one name not escaped is caught, and blocked by the CSP
    tampered = tmp_path / "tampered.html"
    html = page.read_text()
    escaped = "&lt;script&gt;alert(1"
    assert escaped in html
    tampered.write_text(html.replace(escaped, "<img src=x onerror=alert(5)>", 1))
    blocked = console(chromium(tampered, "--dump-dom"))
    assert blocked and all("Content Security Policy" in line for line in blocked), blocked


#: Files written by a real process while the index rotates every kilobyte (about 3 lines).
ROTATED_FILES = 40
ROTATING_WRITER = """
import os, sys
os.makedirs(sys.argv[1], exist_ok=True)
for i in range(int(sys.argv[2])):
    with open(os.path.join(sys.argv[1], f"f{i}.bin"), "wb") as f:
        f.write(os.urandom(1000 + 37 * i))
"""


def test_the_report_reads_every_segment_of_a_rotated_index(tracecap, workdir: Path, tmp_path):
    """With index-rotate:1kb,compress the index is renamed into many (gzip) segments during the
    capture: every artifact is in the report, with the sha256 of its file."""
    files = workdir / "rot"
    run = tracecap("--capture", f"write={files}/*", "--capture", "index-rotate:1kb,compress")
    subprocess.run(
        [sys.executable, "-c", ROTATING_WRITER, str(files), str(ROTATED_FILES)],
        timeout=WORKLOAD_TIMEOUT_S, check=True,
    )  # fmt: skip
    time.sleep(1.5)
    run.stop()
    closed = sorted(p.name for p in run.out_dir.glob("index.*.jsonl.gz"))
    assert len(closed) >= 5, closed  # rotated several times during the capture
    page = tmp_path / "rotated.html"
    report(run, page)
    html = page.read_text()
    for i in range(ROTATED_FILES):
        source = files / f"f{i}.bin"
        name = f"host/{artifact_name('write', source)}"
        sha = hashlib.sha256(source.read_bytes()).hexdigest()
        assert hashlib.sha256((run.out_dir / name).read_bytes()).hexdigest() == sha, name
        # linked relative to where the page is (tmp_path): ``"<way to out/>/host/..."``
        assert f'/{name}"' in html and sha in html, f"{name} is not in the report"


#: Eight executions a quarter of a second apart, children of tc-brush (the capture's scope).
BRUSH_WORKLOAD = """
import subprocess, time
open("/proc/self/comm", "w").write("tc-brush")
for i in range(8):
    subprocess.run(["/bin/true"], check=True)
    time.sleep(0.25)
"""
SCROLL = 'document.getElementById("timeline-svg").scrollIntoView({block: "center"})'
#: The timeline as the page shows it now: where the SVG is, its plot, labels, brush and marks.
TIMELINE = """(() => {
  const svg = document.getElementById("timeline-svg"), r = svg.getBoundingClientRect();
  const reset = document.getElementById("zoom-reset").getBoundingClientRect();
  return {left: r.left, top: r.top, plotLeft: +svg.getAttribute("data-left"),
          plot: +svg.getAttribute("data-plot"), span: +svg.getAttribute("data-span-ms"),
          start: document.getElementById("t-start").textContent,
          end: document.getElementById("t-end").textContent,
          brush: +document.getElementById("brush").getAttribute("width"),
          reset: [reset.left + reset.width / 2, reset.top + reset.height / 2],
          marks: [...svg.querySelectorAll("rect.mark")].map(m => ({
            t: +m.getAttribute("data-t"), x: +m.getAttribute("x"),
            shown: m.getAttribute("display") !== "none"}))};
})()"""


def test_the_timeline_brush_zooms_with_real_mouse_events(tracecap, workdir: Path, tmp_path):
    """A drag across the timeline (mouse pressed, moved, released, sent by Chromium's input
    pipeline) zooms it to that window: the marks outside are hidden, those inside shown and
    spread over the plot, the start and end labels say the window; a click on "whole capture"
    shows everything again. The page's console stays silent."""
    run = tracecap("--capture", "exec", "--scope", "comm=tc-brush", "--scope", "follow")
    python(BRUSH_WORKLOAD)
    time.sleep(1.5)
    run.stop()
    page = tmp_path / "brush.html"
    report(run, page)
    profile = tmp_path / "profile"
    profile.mkdir()
    with Chromium(CHROMIUM, profile) as browser:
        browser.open(page.as_uri())
        browser.evaluate(SCROLL)
        before = browser.evaluate(TIMELINE)
        origin = before["left"] + before["plotLeft"]
        ms_per_px = before["span"] / before["plot"]
        marks = before["marks"]
        assert len(marks) >= 10 and all(m["shown"] for m in marks), marks  # 8 execs, start, stop
        # brush from between the first two exec clusters to between the last two: no mark
        # lies within 5 px of an edge
        xs = sorted({origin + m["t"] / ms_per_px for m in marks})
        gaps = [(a + b) / 2 for a, b in itertools.pairwise(xs) if b - a > 10]
        assert len(gaps) >= 4, xs
        x0, x1, y = gaps[1], gaps[-2], before["top"] + 10
        browser.mouse("mouseMoved", x0, y)
        browser.mouse("mousePressed", x0, y, pressed=True)
        browser.mouse("mouseMoved", (x0 + x1) / 2, y, pressed=True)
        browser.mouse("mouseMoved", x1, y, pressed=True)
        dragging = browser.evaluate(TIMELINE)
        browser.mouse("mouseReleased", x1, y)
        after = browser.evaluate(TIMELINE)
        browser.mouse("mouseMoved", *after["reset"])
        browser.mouse("mousePressed", *after["reset"], pressed=True)
        browser.mouse("mouseReleased", *after["reset"])
        reset = browser.evaluate(TIMELINE)
        assert browser.console == []

    assert dragging["brush"] == pytest.approx(x1 - x0, abs=2) and after["brush"] == 0
    t0, t1 = (x0 - origin) * ms_per_px, (x1 - origin) * ms_per_px
    inside = [m for m in after["marks"] if t0 <= m["t"] <= t1]
    before_window = [m for m in after["marks"] if m["t"] < t0]
    after_window = [m for m in after["marks"] if m["t"] > t1]
    assert len(inside) >= 5 and len(before_window) >= 2 and len(after_window) >= 2
    assert all(m["shown"] for m in inside)
    assert not any(m["shown"] for m in before_window + after_window)
    # the window now fills the plot: its marks spread wider than before, within the plot
    xs_in = [m["x"] for m in inside]
    assert before["plotLeft"] <= min(xs_in) and max(xs_in) <= before["plotLeft"] + before["plot"]
    assert max(xs_in) - min(xs_in) > (max(m["t"] for m in inside) - min(m["t"] for m in inside)) \
        / ms_per_px * 1.5  # fmt: skip
    # the labels: the capture's start plus the window's start, and the window's end, in ms
    start = re.fullmatch(re.escape(before["start"]) + r" \+([0-9.]+) ms", after["start"])
    end = re.fullmatch(r"\+([0-9.]+) ms", after["end"])
    assert start and end, (before["start"], after["start"], after["end"])
    assert float(start[1]) == pytest.approx(t0, abs=ms_per_px + 0.1)
    assert float(end[1]) == pytest.approx(t1, abs=ms_per_px + 0.1)
    # "whole capture" (a real click) shows every mark where it was
    assert all(m["shown"] for m in reset["marks"])
    # within one step of the attribute's two decimals: the page recomputes x from data-t (ms)
    # where the report computed it from nanoseconds, so a value on a rounding edge may land on
    # the next hundredth; counted in hundredths, since 461.91 - 461.9 is 0.010000000000047748
    hundredths = [[round(m["x"] * 100) for m in ms] for ms in (reset["marks"], marks)]
    assert hundredths[0] == pytest.approx(hundredths[1], abs=1)
    assert reset["end"] == f"+{before['span']:.1f} ms" and reset["start"] == before["start"]

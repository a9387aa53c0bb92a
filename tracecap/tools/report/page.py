"""The page around the sections (pure): one HTML document with its style and script inline and
a Content-Security-Policy that allows exactly those two, by hash, and nothing from anywhere.

The policy is the second wall behind escaping: even markup that slipped through could neither
run a script (only the script whose sha256 is listed runs; no ``javascript:`` URL, no event
attribute) nor fetch anything (``default-src 'none'``: no image, font, frame or connection).
Links to artifacts are navigations, which the policy does not restrict, so they open.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from tracecap.tools.report.sections import esc

#: ``content-visibility: auto``: sections and processes off screen are not laid out until
#: scrolled to. Measured on a report of 10,000 artifacts and 5,000 processes (headless
#: Chromium 156): the script started 2.9-3.4 s after the body without it, 1.2 s with it.
STYLE = """
section, li.proc { content-visibility: auto; contain-intrinsic-size: auto 600px; }
li.proc { contain-intrinsic-size: auto 20px; }
body { font: 13px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 1.6em; }
table.kv th { text-align: left; padding-right: 1em; font-weight: 600; }
table.grid { border-collapse: collapse; margin: .4em 0; }
table.grid th, table.grid td { border: 1px solid #ccc; padding: 2px 6px; vertical-align: top;
  max-width: 40em; overflow-wrap: anywhere; }
table.grid th { background: #f0f0f0; }
pre { margin: 0; font-size: 11px; }
.tree, .tree ul { list-style: none; padding-left: 1.2em; }
.tree summary { cursor: pointer; }
.pid { font-weight: 600; } .comm { color: #05a; } .argv { color: #555; font-family: monospace; }
.ctr { color: #850; }
svg .present { fill: #ccc; } svg .missing { fill: #c22; }
svg text.lane { text-anchor: end; font-size: 11px; } svg text.axis { font-size: 11px; }
svg text.end { text-anchor: end; }
svg .mark { fill: #36c; } svg .k-exec { fill: #c60; } svg .k-binary { fill: #a40; }
svg .k-mem, svg .k-mem_alert { fill: #c22; } svg .k-bpf { fill: #808; }
svg .k-module { fill: #080; }
svg .k-capture { fill: #000; } svg .k-gap, svg .k-budget { fill: #f00; } svg .bin { fill: #36c; }
svg #brush { fill: rgba(50, 100, 200, .2); }
.pager { margin: .3em 0; } .pager input { margin-right: 1em; }
"""

SCRIPT = """
(function () {
  "use strict";
  var PAGE = 100;
  function label(v) {
    if (Array.isArray(v)) return v[0];
    if (v !== null && typeof v === "object") return v.pre;
    return String(v);
  }
  function fill(td, v) {
    if (Array.isArray(v)) {
      var a = document.createElement("a");
      a.textContent = v[0];
      a.setAttribute("href", v[1]);
      td.appendChild(a);
    } else if (v !== null && typeof v === "object") {
      var pre = document.createElement("pre");
      pre.textContent = v.pre;
      td.appendChild(pre);
    } else {
      td.textContent = v;
    }
  }
  function button(text) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    return b;
  }
  function table(script) {
    var data = JSON.parse(script.textContent);
    var host = document.querySelector('div[data-table="' + script.getAttribute("data-for") + '"]');
    if (!host) return;
    var rows = data.rows, shown = rows, page = 0, keys = null;
    var bar = document.createElement("div");
    bar.className = "pager";
    var filter = document.createElement("input");
    filter.type = "search";
    filter.placeholder = "filter";
    var prev = button("previous"), next = button("next"), info = document.createElement("span");
    bar.append(filter, prev, next, " ", info);
    var t = document.createElement("table");
    t.className = "grid";
    var head = t.createTHead().insertRow();
    data.columns.forEach(function (c) {
      var th = document.createElement("th");
      th.textContent = c;
      head.appendChild(th);
    });
    var body = t.createTBody();
    host.append(bar, t);
    function render() {
      body.textContent = "";
      var start = page * PAGE;
      shown.slice(start, start + PAGE).forEach(function (row) {
        var tr = body.insertRow();
        row.forEach(function (v) { fill(tr.insertCell(), v); });
      });
      var last = Math.min(start + PAGE, shown.length);
      info.textContent = shown.length ? (start + 1) + "-" + last + " of " + shown.length : "none";
      prev.disabled = page === 0;
      next.disabled = last >= shown.length;
    }
    filter.addEventListener("input", function () {
      var q = filter.value.toLowerCase();
      if (!keys) {
        keys = rows.map(function (row) { return row.map(label).join("\\t").toLowerCase(); });
      }
      shown = q ? rows.filter(function (row, i) { return keys[i].indexOf(q) >= 0; }) : rows;
      page = 0;
      render();
    });
    prev.addEventListener("click", function () { page -= 1; render(); });
    next.addEventListener("click", function () { page += 1; render(); });
    render();
  }
  document.querySelectorAll("script.table-data").forEach(table);

  var procData = document.getElementById("proc-data");
  var bodies = procData ? JSON.parse(procData.textContent) : {};
  function openProcess(details) {
    var list = details.querySelector("ul");
    if (!details.open || details.getAttribute("data-filled")) return;
    details.setAttribute("data-filled", "1");
    (bodies[details.getAttribute("data-pid")] || []).forEach(function (item) {
      var li = document.createElement("li");
      li.textContent = item[0];
      var span = document.createElement("span");
      fill(span, item[1]);
      li.appendChild(span);
      list.appendChild(li);
    });
  }
  document.addEventListener("toggle", function (e) { openProcess(e.target); }, true);
  // a page saved with items open: their toggle events are queued tasks, not yet run here
  document.querySelectorAll("details[open][data-pid]").forEach(openProcess);

  var svg = document.getElementById("timeline-svg");
  if (!svg) return;
  var left = +svg.getAttribute("data-left"), plot = +svg.getAttribute("data-plot");
  var span = +svg.getAttribute("data-span-ms"), w0 = 0, w1 = span;
  var items = svg.querySelectorAll("rect.mark, rect.bin");
  var bins = svg.querySelectorAll("rect.bin").length ? 400 : 0;
  var brush = document.getElementById("brush"), startText = document.getElementById("t-start");
  var endText = document.getElementById("t-end"), origin = startText.textContent, from = null;
  function draw() {
    var scale = plot / Math.max(w1 - w0, 0.001);
    items.forEach(function (r) {
      var t = +r.getAttribute("data-t"), inside = t >= w0 && t <= w1;
      r.setAttribute("display", inside ? "inline" : "none");
      if (inside) r.setAttribute("x", (left + (t - w0) * scale).toFixed(2));
      if (bins) r.setAttribute("width", Math.max(1, span / bins * scale).toFixed(2));
    });
    startText.textContent = w0 ? origin + " +" + w0.toFixed(1) + " ms" : origin;
    endText.textContent = "+" + w1.toFixed(1) + " ms";
  }
  function timeAt(event) {
    var x = event.clientX - svg.getBoundingClientRect().left;
    return Math.min(w1, Math.max(w0, w0 + (x - left) * (w1 - w0) / plot));
  }
  svg.addEventListener("mousedown", function (e) { from = timeAt(e); });
  svg.addEventListener("mousemove", function (e) {
    if (from === null) return;
    var a = Math.min(from, timeAt(e)), b = Math.max(from, timeAt(e)), s = plot / (w1 - w0);
    brush.setAttribute("x", (left + (a - w0) * s).toFixed(2));
    brush.setAttribute("width", ((b - a) * s).toFixed(2));
  });
  svg.addEventListener("mouseup", function (e) {
    if (from === null) return;
    var a = Math.min(from, timeAt(e)), b = Math.max(from, timeAt(e));
    from = null;
    brush.setAttribute("width", "0");
    if (b - a > (w1 - w0) / 1000) { w0 = a; w1 = b; draw(); }
  });
  document.getElementById("zoom-reset").addEventListener("click", function () {
    w0 = 0; w1 = span; draw();
  });
})();
"""


def csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def policy(style: str = STYLE, script: str = SCRIPT) -> str:
    """Nothing from anywhere; only this page's own style and script, by hash."""
    return (
        f"default-src 'none'; script-src {csp_hash(script)}; style-src {csp_hash(style)}; "
        "img-src 'none'; connect-src 'none'; font-src 'none'; object-src 'none'; "
        "frame-src 'none'; base-uri 'none'; form-action 'none'"
    )


def document(title: str, sections: Sequence[str]) -> str:
    """The whole page; ``sections`` are already-escaped HTML from ``sections``."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(policy())}">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{esc(title)}</h1>"
        + "".join(sections)
        + f"<script>{SCRIPT}</script></body></html>\n"
    )

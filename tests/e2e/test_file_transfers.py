"""Data that moves between files without passing a user buffer (copy_file_range, sendfile),
captured end to end with the real programs that move it: coreutils `cp`, `cat` and `install`,
Python's shutil.copyfile, and nginx serving a file over a socket. The collector reads the
bytes back from the source; each artifact must equal what the program wrote, byte for byte."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.pipeline import artifact_name
from tests.support.workloads import WORKLOAD_TIMEOUT_S, python, sh

pytestmark = pytest.mark.ebpf

#: Past several of the collector's 256 KiB messages, and not a multiple of anything.
SIZE = 3 * 1024 * 1024 + 12345


def _record(run, kind: str, path: Path) -> dict:
    name = artifact_name(kind, path)
    found = [r for r in run.records(kind) if r["path"].endswith("/" + name)]
    assert len(found) == 1, (name, run.records(kind))
    return found[0]


def _check_copy(run, dst: Path, syscall: str) -> None:
    """The destination's write artifact is the destination, whole, read back."""
    rec = _record(run, "write", dst)
    assert run.artifact(artifact_name("write", dst)) == dst.read_bytes()
    assert rec["complete"] is True and rec["missing"] == [], rec
    assert rec["syscalls"] == [syscall], rec
    assert rec["readback"] == [[0, SIZE]], rec


def test_cp_cat_install_and_shutil_copyfile(tracecap, workdir: Path) -> None:
    src = workdir / "payload"
    src.write_bytes(os.urandom(SIZE))
    run = tracecap("--capture", f"write={workdir}/*", "--capture", f"read={workdir}/*")
    sh(f"cp {src} {workdir}/by-cp")
    sh(f"cat {src} > {workdir}/by-cat")
    # install changes the copy's mode afterwards: its bytes must come from the source
    sh(f"install -m 0755 {src} {workdir}/by-install")
    python(f"import shutil; shutil.copyfile({str(src)!r}, {str(workdir / 'by-shutil')!r})")
    run.stop()
    assert run.returncode == 0, run.stderr
    _check_copy(run, workdir / "by-cp", "copy_file_range")
    _check_copy(run, workdir / "by-cat", "copy_file_range")
    _check_copy(run, workdir / "by-install", "copy_file_range")
    _check_copy(run, workdir / "by-shutil", "sendfile")
    # read capture: the source was read four times, each read back whole
    rec = _record(run, "read", src)
    assert run.artifact(artifact_name("read", src)) == src.read_bytes()
    assert rec["complete"] is True and rec["readback"] == [[0, SIZE]], rec
    assert rec["syscalls"] == ["copy_file_range", "sendfile"], rec
    assert rec["ios"] >= 4, rec


def test_a_source_changed_before_it_is_read_back_is_lost_not_wrong(tracecap, workdir: Path) -> None:
    """cp, then the source is overwritten at once: whatever the collector could not read before
    the change is listed missing, and every byte the artifact does claim is the copy's."""
    src = workdir / "payload"
    src.write_bytes(os.urandom(SIZE))
    run = tracecap("--capture", f"write={workdir}/by-cp*")
    zero = f"dd if=/dev/zero of={src} bs=64k count=1 conv=notrunc status=none"
    sh(f"cp {src} {workdir}/by-cp && {zero}")
    run.stop()
    dst = (workdir / "by-cp").read_bytes()
    rec = _record(run, "write", workdir / "by-cp")
    art = run.artifact(artifact_name("write", workdir / "by-cp"))
    missing = sum(end - start for start, end in rec["missing"])
    read_back = rec.get("readback", [])  # none when the change came before the first read
    present = sum(end - start for start, end in read_back)
    assert present + missing == SIZE, rec
    for start, end in read_back:
        assert art[start:end] == dst[start:end]
    assert rec["complete"] is (missing == 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    keepalive_timeout 0;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
    }}
}}
"""


def test_nginx_serves_a_file_with_sendfile(tracecap, workdir: Path) -> None:
    """nginx sends the body with sendfile(2) from the file to the client's socket: the
    socket's write artifact holds what curl received."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    (workdir / "www").mkdir()
    (workdir / "tmp").mkdir()
    body = os.urandom(SIZE)
    (workdir / "www" / "f.bin").write_bytes(body)
    port = _free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=workdir, port=port))
    run = tracecap("--scope", "comm=nginx", "--capture", "write:type=socket")
    server = subprocess.Popen([nginx, "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "nginx did not start"
                time.sleep(0.05)
        got = subprocess.run(
            ["curl", "-s", "-i", "--raw", f"http://127.0.0.1:{port}/f.bin"],
            check=True, capture_output=True, timeout=WORKLOAD_TIMEOUT_S,
        ).stdout  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert got.endswith(body)
    sent = [r for r in run.records("write") if "sendfile" in r["syscalls"]]
    assert len(sent) == 1, run.records("write")
    rec = sent[0]
    art = (run.out_dir / rec["path"]).read_bytes()
    assert rec["append"] is True and rec["comm"] == "nginx", rec  # a socket: a stream
    # the headers (written from a buffer), then the body (read back from the file)
    assert art == got, (len(art), len(got), art[:200], got[:200])
    assert rec["complete"] is True, rec
    assert sum(end - start for start, end in rec["readback"]) == SIZE, rec


def test_splice_into_a_file_and_out_of_one(tracecap, workdir: Path) -> None:
    """splice(2) from a file into a pipe (read back from the file) and from the pipe into
    another file (the pipe's bytes are gone: read back from the destination, which nothing
    writes afterwards)."""
    src, dst = workdir / "spliced-src", workdir / "spliced-dst"
    data = os.urandom(200_000)
    src.write_bytes(data)
    run = tracecap("--capture", f"write={workdir}/spliced*", "--capture", f"read={workdir}/*")
    python(f"""
        import fcntl, os
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        src = os.open({str(src)!r}, os.O_RDONLY)
        dst = os.open({str(dst)!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        assert os.splice(src, w, {len(data)}) == {len(data)}  # file -> pipe
        assert os.splice(r, dst, {len(data)}) == {len(data)}  # pipe -> file
    """)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert dst.read_bytes() == data
    _check_spliced(run, "write", dst, data)
    _check_spliced(run, "read", src, data)


def _check_spliced(run, kind: str, path: Path, data: bytes) -> None:
    rec = _record(run, kind, path)
    assert run.artifact(artifact_name(kind, path)) == data
    assert rec["complete"] is True and rec["syscalls"] == ["splice"], rec
    assert rec["readback"] == [[0, len(data)]], rec

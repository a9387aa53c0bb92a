"""A real OpenStack Swift (Debian's 2.30) with its S3 API, all in one on 127.0.0.1, for the
shipper's tests and benchmark.

Everything lives in one temporary directory: three one-device rings (account, container, object)
made by swift-ring-builder, the servers' configurations, and the devices as plain directories
(``mount_check = false``). The proxy's pipeline has ``s3api`` before ``tempauth`` (which checks
the S3 signatures with the user's key) and ``slo``/``dlo``, without which s3api refuses
multipart uploads. tempauth wants a memcache client, not a memcached: with none listening it
logs and carries on. Swift reads /etc/swift/swift.conf (the package's) for its hash suffix.

``stop``/``start`` of the servers is how tests take the store down and bring it back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
REGION = "us-east-1"
SERVERS = ("account", "container", "object")
START_TIMEOUT_S = 30.0

_COMMON = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {user}
swift_dir = {root}
devices = {root}/srv
mount_check = false
log_level = WARNING
"""

_BACKEND = """\
[pipeline:main]
pipeline = {name}-server

[app:{name}-server]
use = egg:swift#{name}
"""

#: s3api before tempauth (which checks S3 signatures); slo and dlo after, for multipart uploads.
PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth "
    "copy slo dlo proxy-logging proxy-server"
)

_PROXY = """\
[pipeline:main]
pipeline = {pipeline}

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcache_port}

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:s3api]
use = egg:swift#s3api
location = {region}

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {secret} .admin

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"swift server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"swift server on port {port} not listening after {timeout} s")


@dataclass
class Swift:
    """The servers of one all-in-one Swift under ``root``; ``endpoint`` is the S3 API."""

    root: Path
    user: str = "root"
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy']}"

    def env(self) -> dict[str, str]:
        """boto3's standard variables for this store (what a user exports)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def configure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "srv" / "d1").mkdir(parents=True, exist_ok=True)
        for name in (*SERVERS, "proxy"):
            self.ports[name] = free_port()
        for name in SERVERS:
            builder = str(self.root / f"{name}.builder")
            port = self.ports[name]
            for args in (
                ["create", "6", "1", "1"],
                ["add", f"r1z1-127.0.0.1:{port}/d1", "100"],
                ["rebalance"],
            ):
                subprocess.run(
                    ["swift-ring-builder", builder, *args], check=True, capture_output=True
                )
            common = _COMMON.format(port=port, user=self.user, root=self.root)
            conf = common + "\n" + _BACKEND.format(name=name)
            (self.root / f"{name}-server.conf").write_text(conf)
        proxy = _COMMON.format(port=self.ports["proxy"], user=self.user, root=self.root)
        proxy += "\n" + _PROXY.format(
            pipeline=PIPELINE, memcache_port=free_port(), region=REGION, secret=SECRET_KEY
        )
        (self.root / "proxy-server.conf").write_text(proxy)
        if self.user != "root":
            subprocess.run(["chown", "-R", self.user, str(self.root)], check=True)

    def start(self) -> None:
        for name in (*SERVERS, "proxy"):
            if name in self.procs:
                continue
            log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (the server's stderr)
            self.procs[name] = subprocess.Popen(
                [f"swift-{name}-server", str(self.root / f"{name}-server.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
        for name, proc in self.procs.items():
            _wait_port(self.ports[name], proc, START_TIMEOUT_S)

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def client(self):  # -> botocore S3 client
        """A boto3 client for checking what the store holds."""
        import boto3
        from botocore.config import Config

        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        )
        return boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
        ).client("s3", endpoint_url=self.endpoint, config=config)

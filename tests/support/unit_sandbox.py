"""Run a command in the sandbox that a systemd unit's [Service] section asks for, as far as it
can be built without systemd as PID 1 (this machine has none): the capability bounding set,
no-new-privileges, Nice=, and the read-only file system of ProtectSystem=strict with its
ReadWritePaths=, ProtectHome=read-only, ProtectKernelTunables= and ProtectControlGroups=.

    unshare --mount --propagation private -- python unit_sandbox.py SPEC_JSON ARGV...

remounts, inside that private mount namespace, every mount read-only except the API file
systems systemd leaves writable and the ReadWritePaths (bound onto themselves first), then
executes ARGV through ``nice`` and ``setpriv``, in / with the environment systemd would give
it. Directives it does not know make ``spec_of`` fail, so the unit cannot grow a directive this
emulation silently ignores. What it cannot build is a real systemd start: the unit's
dependencies, its cgroup, and the seccomp-based directives (the unit uses none).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: [Service] settings that shape the process (and this emulation builds), and those that only
#: tell systemd how to run and stop it (nothing to emulate for a single start and stop).
SANDBOX = {
    "CapabilityBoundingSet",
    "NoNewPrivileges",
    "ProtectSystem",
    "ReadWritePaths",
    "ProtectHome",
    "ProtectKernelTunables",
    "ProtectControlGroups",
    "Nice",
    "Environment",
}
#: The PATH systemd gives services (systemd.exec(5), "Environment variables in spawned
#: processes").
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LIFECYCLE = {
    "Type",
    "ExecStartPre",
    "ExecStart",
    "Restart",
    "RestartSec",
    "KillMode",
    "TimeoutStopSec",
}


def service_section(text: str) -> dict[str, list[str]]:
    """The [Service] settings of a unit file, each with every value given (in order)."""
    settings: dict[str, list[str]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def spec_of(unit: Path) -> dict[str, list[str]]:
    settings = service_section(unit.read_text())
    unknown = set(settings) - SANDBOX - LIFECYCLE
    if unknown:
        raise ValueError(f"{unit}: no emulation of {sorted(unknown)}")
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ProtectHome"] in (["read-only"], ["no"])  # read-only is within strict
    return settings


def command(unit: Path, argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` in ``unit``'s sandbox."""
    spec = json.dumps(spec_of(unit))
    return ["unshare", "--mount", "--propagation", "private", "--",
            sys.executable, __file__, spec, *argv]  # fmt: skip


def _yes(spec: dict[str, list[str]], key: str) -> bool:
    return spec.get(key, ["no"])[-1] in ("yes", "true", "1", "on")


def _writable(mountpoint: str, spec: dict[str, list[str]], rw: set[str]) -> bool:
    """Whether ProtectSystem=strict (and the Protect* settings) leave this mount writable."""
    if mountpoint in rw:
        return True
    under = lambda top: mountpoint == top or mountpoint.startswith(top + "/")  # noqa: E731
    if under("/dev"):
        return True
    if under("/proc"):
        return not (under("/proc/sys") and _yes(spec, "ProtectKernelTunables"))
    if under("/sys/fs/cgroup"):
        return not _yes(spec, "ProtectControlGroups")
    if under("/sys"):
        return not _yes(spec, "ProtectKernelTunables")
    return False


def _enter(spec: dict[str, list[str]], argv: list[str]) -> None:
    rw = {path for value in spec.get("ReadWritePaths", []) for path in value.split()}
    for path in sorted(rw):
        subprocess.run(["mount", "--bind", path, path], check=True)
    if _yes(spec, "ProtectKernelTunables"):
        subprocess.run(["mount", "--bind", "/proc/sys", "/proc/sys"], check=True)
    mountpoints = dict.fromkeys(
        line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    for mountpoint in mountpoints:
        if not _writable(mountpoint, spec, rw):
            subprocess.run(["mount", "-o", "remount,bind,ro", mountpoint], check=True)
    # As systemd starts a service: in /, with only PATH and the unit's Environment= set.
    os.chdir("/")
    env = {"PATH": SERVICE_PATH}
    for value in spec.get("Environment", []):
        env.update(item.partition("=")[::2] for item in value.split())
    caps = [cap.removeprefix("CAP_").lower() for cap in spec["CapabilityBoundingSet"][-1].split()]
    wrapper = ["nice", "-n", spec.get("Nice", ["0"])[-1], "setpriv"]
    if _yes(spec, "NoNewPrivileges"):
        wrapper.append("--no-new-privs")
    wrapper += ["--inh-caps=-all", "--bounding-set=-all," + ",".join(f"+{c}" for c in caps)]
    os.execvpe(wrapper[0], [*wrapper, "--", *argv], env)


if __name__ == "__main__":
    _enter(json.loads(sys.argv[1]), sys.argv[2:])

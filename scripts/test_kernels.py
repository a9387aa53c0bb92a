"""`make test-kernels`: scripts/kernel_smoke.py on the host's kernel and, in virtme-ng, on each
kernel `make setup-kernels` unpacked under $PREFIX/kernels (the guest sees this host's root over
9p, so it runs the installed /opt/tracecap/venv). Prints the matrix kernel x capture kind and
how long each kernel took.

QEMU uses hardware KVM only where /dev/kvm boots a stock kernel: this machine's /dev/kvm is PVM,
on which they hang, so TRACECAP_KVM=1 opts in and the default is TCG, about 8x slower, which
TRACECAP_TIME_FACTOR passes on to the smoke's timeouts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFIX = Path(os.environ.get("TRACECAP_PREFIX", "/opt/tracecap"))
KERNELS = PREFIX / "kernels"
PYTHON = PREFIX / "venv" / "bin" / "python"
SMOKE = Path(__file__).with_name("kernel_smoke.py").resolve()
KVM = os.environ.get("TRACECAP_KVM") == "1"
FACTOR = 1 if KVM else 8
BOOT_TIMEOUT_S = float(os.environ.get("TRACECAP_KERNEL_TIMEOUT", 40 * 60))


def _guest(name: str, out: Path) -> dict:
    version = (KERNELS / name / "version").read_text().strip()
    vmlinuz = KERNELS / name / "boot" / f"vmlinuz-{version}"
    script = out / "smoke.sh"
    script.write_text(
        f"export TRACECAP_TIME_FACTOR={FACTOR} PATH={PYTHON.parent}:$PATH\n"
        f"{PYTHON} {SMOKE} {out}/result.json > {out}/smoke.log 2>&1\n"
    )
    argv = [str(KERNELS / "venv" / "bin" / "vng"), "--run", str(vmlinuz), "--user", "root",
            "--cpus", "2", "--memory", "2G", "--rwdir", str(out)]  # fmt: skip
    if not KVM:
        argv.append("--disable-kvm")
    argv += ["--", "sh", str(script)]
    env = dict(os.environ, PATH=f"{argv[0].rsplit('/', 1)[0]}:{os.environ['PATH']}")
    # vng runs QEMU as its child: on a timeout the whole session goes, QEMU included
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=BOOT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"kernel": version, "error": f"no result within {BOOT_TIMEOUT_S:.0f} s"}
    result = out / "result.json"
    if not result.exists():
        tail = (stderr or stdout).strip().splitlines()[-3:]
        log = out / "smoke.log"
        if log.exists():
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"kernel": version, "error": " | ".join(tail)}
    return json.loads(result.read_text())


def _host(out: Path) -> dict:
    subprocess.run([str(PYTHON), str(SMOKE), str(out / "result.json")], check=True,
                   capture_output=True)  # fmt: skip
    return json.loads((out / "result.json").read_text())


def main() -> None:
    unpacked = (p.name for p in KERNELS.iterdir() if (p / "version").exists())
    by_version = sorted(unpacked, key=lambda n: tuple(int(x) for x in n.split(".")))
    names = sys.argv[1:] or ["host", *by_version]
    rows = []
    for name in names:
        out = Path(tempfile.mkdtemp(prefix=f"tc-kernel-{name}-"))
        out.chmod(0o777)
        started = time.monotonic()
        row = _host(out) if name == "host" else _guest(name, out)
        row["name"], row["seconds"] = name, round(time.monotonic() - started)
        rows.append(row)
        print(json.dumps(row), flush=True)
    kinds = sorted({k for r in rows for k in r.get("verdicts", {})})
    print(f"\n{'kernel':<28}{'time':>6}  " + "  ".join(f"{k:<8}" for k in kinds))
    for r in rows:
        label = f"{r['name']} ({r['kernel']})"[:27]
        verdicts = r.get("verdicts", {})
        cells = "  ".join(f"{verdicts.get(k, 'error').split(':')[0]:<8}" for k in kinds)
        print(f"{label:<28}{r['seconds']:>5}s  {cells}")
    for r in rows:
        for kind, verdict in sorted(r.get("verdicts", {}).items()):
            if verdict != "works":
                print(f"  {r['name']} {kind}: {verdict}")
        if "error" in r:
            print(f"  {r['name']}: {r['error']}")
        hooks = {k: h["hook"] for k, h in r.get("hooks", {}).items() if "hook" in h}
        if hooks:
            used = ", ".join(f"{kind} {hook}" for kind, hook in sorted(hooks.items()))
            print(f"  {r['name']} hooks: {used}")


if __name__ == "__main__":
    main()

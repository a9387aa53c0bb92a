"""`make test-kernels`: scripts/kernel_smoke.py on the host's kernel and, in virtme-ng, on each
kernel `make setup-kernels` unpacked under $PREFIX/kernels (the guest sees this host's root over
9p, so it runs the installed /opt/tracecap/venv). Prints the matrix kernel x capture kind and
how long each kernel took.

QEMU uses hardware KVM only where /dev/kvm boots a stock kernel: this machine's /dev/kvm is PVM,
on which they hang, so TRACECAP_KVM=1 opts in and the default is TCG, about 8x slower, which
TRACECAP_TIME_FACTOR passes on to the smoke's timeouts. TRACECAP_SMOKE_KINDS (e.g. ``module`` or
``write,module``) is passed on too: the smoke runs those kinds only.

The host's row runs first, alone; then the guests, TRACECAP_KERNEL_JOBS at a time (default: one
per CPU), the CPUs shared out between them. A guest's time is mostly the verifier loading the
object, one thread, so two guests of one vCPU each on two cores take about as long as one
guest of two."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PREFIX = Path(os.environ.get("TRACECAP_PREFIX", "/opt/tracecap"))
KERNELS = PREFIX / "kernels"
PYTHON = PREFIX / "venv" / "bin" / "python"
SMOKE = Path(__file__).with_name("kernel_smoke.py").resolve()
KVM = os.environ.get("TRACECAP_KVM") == "1"
FACTOR = 1 if KVM else 8
BOOT_TIMEOUT_S = float(os.environ.get("TRACECAP_KERNEL_TIMEOUT", 40 * 60))
#: The smoke's kinds (scripts/kernel_smoke.py), all when empty.
SMOKE_KINDS = os.environ.get("TRACECAP_SMOKE_KINDS", "")
#: Passed on into the guests when set: the smoke's wait for readiness in seconds
#: (scripts/kernel_smoke.py READY_S), and the features the collector withholds
#: (``tracefs:syscalls``: every kind on its fentry row where it has one).
PASSED_ON = ("TRACECAP_SMOKE_READY_S", "TRACECAP_WITHHOLD_FEATURES")
CPUS = os.cpu_count() or 1
JOBS = max(1, int(os.environ.get("TRACECAP_KERNEL_JOBS", CPUS)))


def guest_cpus(guests: int, jobs: int = JOBS, cpus: int = CPUS) -> int:
    """vCPUs per guest: the host's CPUs shared by the guests that run at once."""
    return max(1, cpus // max(1, min(jobs, guests)))


def longest_first(guests: list[str]) -> list[str]:
    """The order guests start in: newest kernel first. A kernel older than bpf_loop (5.17)
    refuses every kind after about 4 min under TCG, a newer one loads the object for 6 to 7
    (measured, NOTES.md): the short one fills the gap once a long one is done."""
    return sorted(guests, key=lambda n: tuple(int(x) for x in n.split(".")), reverse=True)


def _guest(name: str, out: Path, cpus: int) -> dict:
    version = (KERNELS / name / "version").read_text().strip()
    vmlinuz = KERNELS / name / "boot" / f"vmlinuz-{version}"
    script = out / "smoke.sh"
    script.write_text(
        f"export TRACECAP_TIME_FACTOR={FACTOR} TRACECAP_SMOKE_KINDS={shlex.quote(SMOKE_KINDS)}"
        + "".join(f" {k}={shlex.quote(os.environ[k])}" for k in PASSED_ON if os.environ.get(k))
        + f" PATH={PYTHON.parent}:$PATH\n"
        f"{PYTHON} {SMOKE} {out}/result.json > {out}/smoke.log 2>&1\n"
    )
    argv = [str(KERNELS / "venv" / "bin" / "vng"), "--run", str(vmlinuz), "--user", "root",
            "--cpus", str(cpus), "--memory", "2G", "--rwdir", str(out)]  # fmt: skip
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


#: Verdicts that fail `make test-kernels`: the kind ran on a hook and did not capture
#: (``refused`` is the product's documented answer on a kernel that lacks what a kind needs).
FAILED = ("missing", "incomplete", "error")


def _table(rows: list[dict]) -> list[str]:
    """The matrix as printed: per kernel its times (boot and ready are the guest's; smoke is
    the whole smoke in it; total what the harness waited) and per kind the verdict's class."""
    kinds = sorted({k for r in rows for k in r.get("verdicts", {})})
    head = f"{'kernel':<28}{'boot':>6}{'ready':>6}{'smoke':>6}{'total':>6}  "
    lines = [head + "  ".join(f"{k:<9}" for k in kinds)]
    for r in rows:
        label = f"{r['name']} ({r['kernel']})"[:27]
        times = "".join(
            f"{r[key]:>5.0f}s" if isinstance(r.get(key), (int, float)) else f"{'-':>6}"
            for key in ("boot_s", "ready_s", "smoke_s", "seconds")
        )
        verdicts = r.get("verdicts", {})
        cells = "  ".join(f"{verdicts.get(k, 'error').split(':')[0]:<9}" for k in kinds)
        lines.append(f"{label:<28}{times}  {cells}")
    for r in rows:
        for kind, verdict in sorted(r.get("verdicts", {}).items()):
            if verdict != "works":
                lines.append(f"  {r['name']} {kind}: {verdict}")
        if "error" in r:
            lines.append(f"  {r['name']}: {r['error']}")
        hooks = {k: h["hook"] for k, h in r.get("hooks", {}).items() if "hook" in h}
        if hooks:
            used = ", ".join(f"{kind} {hook}" for kind, hook in sorted(hooks.items()))
            lines.append(f"  {r['name']} hooks: {used}")
    return lines


def failures(rows: list[dict]) -> list[str]:
    """What makes the run fail: a kernel without a result, a kind that ran and did not
    capture."""
    bad = [f"{r['name']}: {r['error']}" for r in rows if "error" in r]
    for r in rows:
        bad += [f"{r['name']} {kind}: {verdict}" for kind, verdict in r.get("verdicts", {}).items()
                if verdict.startswith(FAILED)]  # fmt: skip
    return bad


def main() -> int:
    unpacked = (p.name for p in KERNELS.iterdir() if (p / "version").exists())
    by_version = sorted(unpacked, key=lambda n: tuple(int(x) for x in n.split(".")))
    names = sys.argv[1:] or ["host", *by_version]
    guests = [name for name in names if name != "host"]
    cpus = guest_cpus(len(guests))

    def row(name: str) -> dict:
        out = Path(tempfile.mkdtemp(prefix=f"tc-kernel-{name}-"))
        out.chmod(0o777)
        print(f"{name}: progress in {out}/smoke.log, tracecap's stderr beside it", flush=True)
        started = time.monotonic()
        result = _host(out) if name == "host" else _guest(name, out, cpus)
        result["name"], result["seconds"] = name, round(time.monotonic() - started)
        if name == "host":
            result.pop("boot_s", None)  # the host's uptime is no boot of the smoke's
        print(json.dumps(result), flush=True)
        return result

    rows = [row("host")] if "host" in names else []
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        order = longest_first(guests)
        done = dict(zip(order, pool.map(row, order), strict=True))
    rows += [done[name] for name in guests]
    print("\n" + "\n".join(_table(rows)))
    bad = failures(rows)
    for line in bad:
        print(f"FAILED {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

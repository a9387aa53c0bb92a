#!/bin/sh
# One-shot, idempotent machine set-up for tracecap (run as root).
# Installs the build tools from Debian (scripts/debs.sh), creates the unprivileged `tracecap` user,
# mounts tracefs, builds the CO-RE objects and installs tracecap into /opt/tracecap/venv
# with /usr/local/bin/tracecap on PATH. A second run changes nothing and takes seconds.
set -eu
cd "$(dirname "$0")/.."
PREFIX=${TRACECAP_PREFIX:-/opt/tracecap}
VENV="$PREFIX/venv"

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (it installs packages and creates the tracecap user)" >&2
    exit 1
fi

# Debian packages the product needs: compiler, headers and bpftool (vmlinux.h) for the CO-RE
# objects, libbpf, python venv support, iproute2 and util-linux. What only the tests need is
# in scripts/setup-test.sh.
. scripts/debs.sh
install_debs setup clang llvm libbpf-dev bpftool python3-venv make iproute2 util-linux

# The unprivileged user that writers, the bridge and tap run as.
if ! id tracecap >/dev/null 2>&1; then
    echo "setup: creating system user tracecap"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tracecap
fi

# The run directory of the static deployment (supervisord.conf); /run is emptied at boot.
install -d -m 2750 -o root -g tracecap /run/tracecap
install -d -m 0750 -o tracecap -g tracecap /run/tracecap/stats

# The default output root (tracecap/options.py DEFAULT_DIR): root's, so that no other user can
# prepare or redirect it; group tracecap may pass through to out/, which the writers own (the
# static deployment starts them without `tracecap run`, which would otherwise create out/).
install -d -m 0750 -o root -g tracecap /var/lib/tracecap
install -d -m 0750 -o tracecap -g tracecap /var/lib/tracecap/out

# The configuration the static deployment (supervisord.conf) reads; a local edit is kept.
install -d -m 0755 /etc/tracecap
[ -f /etc/tracecap/tracecap.conf ] || install -m 0644 conf/tracecap.conf /etc/tracecap/tracecap.conf

# tp/ programs need tracefs.
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing

# Build the CO-RE objects (make only rebuilds what changed).
make -s -C bpf

# Virtual environment readable by the tracecap user (never under /root), built on Debian's
# python3 so that the interpreter itself is reachable by that user.
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    mkdir -p "$PREFIX"
    /usr/bin/python3 -m venv "$VENV"
fi
stamp="$VENV/.tracecap-installed"
if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml collector writers tracecap bpf conf supervisord.conf -newer "$stamp" 2>/dev/null | head -n1)" ]; then
    echo "setup: installing tracecap into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade ".[test]"
    touch "$stamp"
fi
chmod -R go+rX "$PREFIX"
ln -sf "$VENV/bin/tracecap" /usr/local/bin/tracecap

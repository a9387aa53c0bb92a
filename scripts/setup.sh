#!/bin/sh
# One-shot, idempotent machine set-up for tracecap (run as root).
# Installs the build tools from Debian (scripts/debs.sh), creates the unprivileged `tracecap` user,
# mounts tracefs, builds the CO-RE objects and installs tracecap into /opt/tracecap/venv with
# tracecap, supervisord and supervisorctl on PATH (/usr/local/bin), the configuration of the
# static deployment in /etc/tracecap, tracecap(8), the bash completion, and tracecap.service
# where systemd is. A second run changes nothing and takes seconds.
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

# install_conf SRC DEST: the shipped SRC as DEST, keeping an operator's edit. DEST.dist is the
# copy the last set-up shipped: DEST is replaced while it still equals it (or is absent, or is a
# version shipped before DEST.dist existed, listed by sha256 as $3...); an edited DEST stays,
# and the new shipped one waits beside it as DEST.dist.
install_conf() {
    src=$1 dest=$2
    shift 2
    unedited=0
    if [ ! -e "$dest" ] || { [ -e "$dest.dist" ] && cmp -s "$dest" "$dest.dist"; }; then
        unedited=1
    elif [ ! -e "$dest.dist" ]; then
        sum=$(sha256sum < "$dest" | cut -d' ' -f1)
        for old in "$@"; do [ "$sum" != "$old" ] || unedited=1; done
    fi
    if [ "$unedited" = 1 ]; then
        cmp -s "$src" "$dest" 2>/dev/null || echo "setup: installing $dest"
        install -m 0644 "$src" "$dest"
    elif ! cmp -s "$src" "$dest" && ! cmp -s "$src" "$dest.dist" 2>/dev/null; then
        echo "setup: $dest has local edits and is kept; the shipped one is $dest.dist"
    fi
    cmp -s "$src" "$dest.dist" 2>/dev/null || install -m 0644 "$src" "$dest.dist"
}

# The static deployment's configuration: the capture options (read by supervisord.conf) and the
# supervisord configuration tracecap.service runs. The sums are earlier shipped tracecap.conf.
install -d -m 0755 /etc/tracecap
install_conf conf/tracecap.conf /etc/tracecap/tracecap.conf \
    3b99f2de8eb3f69b3dcbdf29ba8efdf4e09cb9e31d221ee525354bf76aba3f59 \
    40a7085094523f9ded8f8a4919647e10c424a9d0d6bf1d510a1d5e0384b87fbb \
    4036937a0d8ca5a798e59eba8af45497f2faae92e0272ee90a19b18750fec5ea
install_conf supervisord.conf /etc/tracecap/supervisord.conf

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
installed=0
if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml collector writers tracecap bpf conf supervisord.conf -newer "$stamp" 2>/dev/null | head -n1)" ]; then
    echo "setup: installing tracecap into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade ".[test]"
    touch "$stamp"
    installed=1
fi
grant_read "$PREFIX"

# What the README tells root to type: tracecap, and the static deployment's supervisord and
# supervisorctl (tracecap's own, in the venv). A program of that name that is not a link to
# the venv is someone else's and stays, with a warning.
for cmd in tracecap supervisord supervisorctl; do
    link=/usr/local/bin/$cmd
    if [ ! -e "$link" ] && [ ! -L "$link" ] || [ "$(readlink "$link")" = "$VENV/bin/$cmd" ]; then
        ln -sfn "$VENV/bin/$cmd" "$link"
    else
        echo "setup: $link is not tracecap's ($VENV/bin/$cmd); left as it is" >&2
    fi
done

# tracecap(8) and the bash completion, rendered from the installed tracecap's usage tables
# (scripts/render_docs.py); bash-completion and man-db look in these places under /usr/local.
render() {
    dest=$2
    if [ "$installed" = 1 ] || [ ! -f "$dest" ]; then
        install -d -m 0755 "$(dirname "$dest")"
        "$VENV/bin/python" scripts/render_docs.py "$1" > "$dest.new"
        chmod 0644 "$dest.new"
        mv -f "$dest.new" "$dest"
    fi
}
render man /usr/local/share/man/man8/tracecap.8
render bash /usr/local/share/bash-completion/completions/tracecap

# The systemd unit, where systemd is installed (enabled by nobody but the operator); systemd
# reads a changed unit after daemon-reload, done here when systemd is running.
if [ -d /etc/systemd/system ] && ! cmp -s packaging/tracecap.service /etc/systemd/system/tracecap.service; then
    echo "setup: installing /etc/systemd/system/tracecap.service"
    install -m 0644 packaging/tracecap.service /etc/systemd/system/tracecap.service
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
fi

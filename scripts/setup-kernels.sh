#!/bin/sh
# What `make test-kernels` needs on top of `make setup-test`: QEMU (qemu-system-x86; TCG where
# /dev/kvm cannot boot a stock kernel), virtme-ng from PyPI (boots a kernel with this host's root
# over 9p) and the kernels of the matrix from Debian's archive, unpacked (never installed) under
# $PREFIX/kernels/<version>/ with their modules, where `vng --run <dir>/boot/vmlinuz-<version>`
# finds them. Idempotent: a second run downloads nothing.
#
# The suites are read through apt's own state under $PREFIX/kernels/apt, so this system's
# sources.list is not touched (bullseye's and backports' packages never become installable here).
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup-kernels: must run as root (it installs packages)" >&2
    exit 1
fi

PREFIX=${TRACECAP_PREFIX:-/opt/tracecap}
KERNELS="$PREFIX/kernels"
MIRROR=http://deb.debian.org/debian
SECURITY=http://deb.debian.org/debian-security
#: the matrix: a name, the suite to take linux-image-amd64's dependency from.
MATRIX="5.10:bullseye-security 6.1:bookworm 6.12:bookworm-backports"

. scripts/debs.sh
install_debs setup-kernels qemu-system-x86 busybox-static kmod

[ -x "$KERNELS/venv/bin/vng" ] || {
    python3 -m venv "$KERNELS/venv"
    "$KERNELS/venv/bin/pip" install -q virtme-ng
}

apt_dir="$KERNELS/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
cat > "$apt_dir/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $SECURITY bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $SECURITY bullseye-security main
EOF
kapt() {
    cmd=$1
    shift
    "$cmd" -o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache::Archives="$apt_dir/archives" \
        -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o APT::Default-Release= "$@"
}

updated=0
for entry in $MATRIX; do
    name=${entry%%:*}
    suite=${entry#*:}
    [ -s "$KERNELS/$name/version" ] && continue
    if [ "$updated" = 0 ]; then
        kapt apt-get update -qq
        updated=1
    fi
    # linux-image-amd64 of that suite depends on exactly one linux-image-<version>-amd64
    meta=$(kapt apt-cache madison linux-image-amd64 |
        awk -F' *[|] *' -v s="$suite" '$3 ~ " " s "/main " { print $2; exit }')
    pkg=$(kapt apt-cache show "linux-image-amd64=$meta" |
        sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*-amd64\).*/\1/p' | head -n 1)
    [ -n "$pkg" ] || { echo "setup-kernels: no kernel package in $suite" >&2; exit 1; }
    tmp=$(mktemp -d)
    chmod 755 "$tmp"
    (cd "$tmp" && kapt apt-get download -qq "$pkg")
    rm -rf "$KERNELS/$name"
    mkdir -p "$KERNELS/$name"
    dpkg-deb -x "$tmp"/*.deb "$KERNELS/$name"
    rm -rf "$tmp"
    version=$(ls "$KERNELS/$name/lib/modules" 2>/dev/null || ls "$KERNELS/$name/usr/lib/modules")
    depmod -b "$KERNELS/$name" "$version" 2>/dev/null ||
        depmod -b "$KERNELS/$name/usr" "$version"
    echo "$version" > "$KERNELS/$name/version"
    echo "setup-kernels: $name is $pkg ($version)"
done
grant_read "$KERNELS"

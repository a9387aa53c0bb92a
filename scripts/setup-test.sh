#!/bin/sh
# What only the tests (and `make bench`) need, on top of scripts/setup.sh: real programs to
# capture and tools to check the captures with. Idempotent; a second run takes seconds.
#   tshark, tcpdump, iputils-ping: packet workloads and pcap readers; binutils-bpf: disassembly;
#   kmod (insmod, modprobe), bpftrace: real loaders; luajit, nodejs: real JITs;
#   dnsmasq, dnsutils (dig), curl, nginx: real servers and clients (no service is started);
#   prometheus: the real server that scrapes `tracecap exporter` (started by its test only);
#   nats-server: JetStream for the fleet tests and bench (started by them only, never by run);
#   man-db, bash-completion: the man page and the completion script are read as users get them;
#   swift-*: OpenStack Swift with its s3api, the real S3-compatible store `tracecap writer ship`
#     is tested and benchmarked against (tests/support/swift.py starts it; never a service);
#   podman, conmon, runc, docker.io, containerd, busybox-static: real container runtimes and a
#   static busybox from which the tests build their image (no registry is reachable); no engine
#   is started here, tests/support/runtimes.py starts dockerd and containerd for its tests;
#   chromium: `tracecap report`'s page is opened headless by its end-to-end test;
#   btrfs-progs: a btrfs image (a file system whose stat reports another device than its
#   superblock's) to execute binaries from;
#   real kernel modules (.ko) from Debian's kernel package, in /var/cache/tracecap-test/modules.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup-test: must run as root (it installs packages)" >&2
    exit 1
fi

. scripts/debs.sh
install_debs setup-test tshark tcpdump iputils-ping binutils-bpf kmod bpftrace luajit nodejs \
    dnsmasq dnsutils curl nginx prometheus man-db bash-completion nats-server chromium btrfs-progs
install_debs setup-test swift swift-proxy swift-object swift-container swift-account
install_debs setup-test podman conmon runc docker.io containerd busybox-static

# Real kernel modules for the module capture tests: two small ones without dependencies from the
# current bookworm kernel package (Debian 12 ships them as plain .ko), kept across runs in
# $MODULE_CACHE with the kernel version they belong to; the package itself is not kept.
MODULE_CACHE=/var/cache/tracecap-test/modules
MODULES="kernel/lib/crc7.ko kernel/crypto/wp512.ko"
have_modules=1
for m in $MODULES; do
    [ -f "$MODULE_CACHE/$(basename "$m")" ] || have_modules=0
done
[ -s "$MODULE_CACHE/version" ] || have_modules=0
if [ "$have_modules" = 0 ]; then
    kernel_pkg() {
        apt-cache depends linux-image-amd64 2>/dev/null |
            awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
    }
    pkg=$(kernel_pkg)
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(kernel_pkg)
    fi
    if [ -z "$pkg" ]; then
        echo "setup-test: no kernel package found for linux-image-amd64 (apt-get update?)" >&2
        exit 1
    fi
    version=${pkg#linux-image-}
    echo "setup-test: fetching $MODULES from $pkg into $MODULE_CACHE"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    chown _apt "$work" 2>/dev/null || true  # apt downloads as _apt when that user can write
    members=""
    for m in $MODULES; do
        members="$members ./lib/modules/$version/$m"
    done
    if ! (cd "$work" && apt-get download -q=2 "$pkg") ||
        ! dpkg-deb --fsys-tarfile "$work"/"$pkg"_*.deb | tar -x -C "$work" $members; then
        echo "setup-test: could not get $MODULES out of $pkg" >&2
        exit 1
    fi
    install -d -m 0755 "$MODULE_CACHE"
    for m in $MODULES; do
        install -m 0644 "$work/lib/modules/$version/$m" "$MODULE_CACHE/"
    done
    echo "$version" > "$MODULE_CACHE/version"
    rm -rf "$work"
    trap - EXIT
fi

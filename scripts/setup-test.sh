#!/bin/sh
# What only the tests (and `make bench`) need, on top of scripts/setup.sh: real programs to
# capture and tools to check the captures with. Idempotent; a second run takes seconds.
#   tshark, tcpdump, iputils-ping: packet workloads and pcap readers; binutils-bpf: disassembly;
#   kmod (insmod, modprobe), bpftrace: real loaders; luajit, nodejs: real JITs;
#   dnsmasq, dnsutils (dig), curl: real servers and clients.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup-test: must run as root (it installs packages)" >&2
    exit 1
fi

DEBS="tshark tcpdump iputils-ping binutils-bpf kmod bpftrace luajit nodejs dnsmasq dnsutils curl"
missing=""
for p in $DEBS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup-test: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    # No service starts at install (dnsmasq would take port 53): tests start their own.
    policy=/usr/sbin/policy-rc.d
    [ -e "$policy" ] && had_policy=1 || had_policy=0
    if [ "$had_policy" = 0 ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 0755 "$policy"
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null || status=$?
    [ "$had_policy" = 0 ] && rm -f "$policy"
    [ "${status:-0}" = 0 ] || exit "$status"
fi

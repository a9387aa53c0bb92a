#!/bin/sh
# What only the tests (and `make bench`) need, on top of scripts/setup.sh: real programs to
# capture and tools to check the captures with. Idempotent; a second run takes seconds.
#   tshark, tcpdump, iputils-ping: packet workloads and pcap readers; binutils-bpf: disassembly;
#   kmod (insmod, modprobe), bpftrace: real loaders; luajit, nodejs: real JITs;
#   dnsmasq, dnsutils (dig), curl: real servers and clients (no service is started);
#   man-db, bash-completion: the man page and the completion script are read as users get them.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup-test: must run as root (it installs packages)" >&2
    exit 1
fi

. scripts/debs.sh
install_debs setup-test tshark tcpdump iputils-ping binutils-bpf kmod bpftrace luajit nodejs \
    dnsmasq dnsutils curl man-db bash-completion

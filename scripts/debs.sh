# Sourced by scripts/setup.sh, scripts/setup-test.sh and scripts/setup-kernels.sh (POSIX sh).
#
# install_debs NAME PACKAGE...: install those of the Debian packages that are missing, and start
# no service while doing so (dnsmasq, for one, would start its daemon on port 53).
install_debs() {
    name=$1
    shift
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -n "$missing" ] || return 0
    echo "$name: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    policy=/usr/sbin/policy-rc.d
    placed=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 0755 "$policy"
        placed=1
    fi
    status=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null; } || status=$?
    [ "$placed" = 0 ] || rm -f "$policy"
    return "$status"
}

# grant_read PATH...: make the trees readable by the tracecap user (what `chmod -R go+rX` does),
# changing only the files that lack those bits. chmod sets the change time of every file it is
# given, its mode changed or not, and a module file or binary whose ctime moved between its
# load (or exec) and the collector's read is one the collector must refuse ("the file changed
# since the syscall"): `chmod -R` over $PREFIX at every set-up did that to the cached kernels'
# modules, which the kernel matrix's guests load (measured: crc8's ctime moved at each run).
grant_read() {
    find "$@" ! -type l \( ! -perm -044 -o -perm /111 ! -perm -011 \) -exec chmod go+rX {} +
}

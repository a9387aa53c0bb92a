# Sourced by scripts/setup.sh and scripts/setup-test.sh (POSIX sh).
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

#!/usr/bin/env python3
"""Micro-benchmark of packet classification: prints figures, asserts nothing.

``tracecap.protocols.classify`` runs in the root collector for every captured packet, so its
cost bounds the packet rate one collector core can name. Printed: microseconds per call (the
fastest of 7 rounds, as the machine's other work only adds) for port-53 DNS, DNS on another
port (the content rule decodes it whole), and traffic that is not DNS (the content rule's
12-byte header check rejects it); then the event printer's cost to decode a message. No root,
no kernel: pure Python. Run it from a checkout: `python scripts/bench_protocols.py`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dpkt

from tests.support.dnsmsg import (
    NON_DNS,
    big_response,
    framed,
    query,
    response,
    tcp,
    udp,
)
from tracecap.protocols import classify

ROUNDS = 7
CALLS = 20_000


def per_call_us(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(CALLS):
            fn()
        times.append((time.perf_counter() - start) / CALLS * 1e6)
    return min(times)


def main() -> None:
    answer = dpkt.dns.DNS.RR(name="host.tc.test", type=dpkt.dns.DNS_A, rdata=bytes(4), ttl=60)
    rng_payload = bytes((i * 73 + 11) & 0xFF for i in range(1400))
    packets = {
        "dns query, udp port 53": udp(query()),
        "dns answer, udp port 53": udp(response(answer), sport=53, dport=40000),
        "tcp syn, port 53": tcp(flags=dpkt.tcp.TH_SYN),
        "dns query, udp port 5300 (content rule)": udp(query(), dport=5300),
        "dns answer 1.7 KB, udp port 5300": udp(big_response(), sport=5300, dport=40000),
        "dns query, tcp port 5300": tcp(framed(query()), dport=5300),
        "tcp 1400 B bulk data, port 443": tcp(rng_payload, dport=443),
        "udp 1400 B (quic-like), port 443": udp(rng_payload, dport=443),
        "http request, tcp port 80": tcp(NON_DNS["http request"], dport=80),
        "tls hello, QDCOUNT reads 1, tcp 443": tcp(NON_DNS["tls client hello"], dport=443),
        "tcp ack without payload, port 443": tcp(dport=443, flags=dpkt.tcp.TH_ACK),
    }
    print(f"classify: microseconds per packet (fastest of {ROUNDS} x {CALLS:,})")
    for name, data in packets.items():
        print(f"  {name:<42} {per_call_us(lambda d=data: classify(d)):6.2f}  {classify(data)}")
    try:
        from tracecap.dns import decode
    except ImportError:  # an older tree, for a before/after comparison of classify only
        return
    small, big = response(answer), big_response()
    print("event printer: microseconds to decode one message")
    print(f"  {'one A answer':<42} {per_call_us(lambda: decode(small)):6.2f}")
    print(f"  {'eight 200-byte TXT answers':<42} {per_call_us(lambda: decode(big)):6.2f}")


if __name__ == "__main__":
    main()

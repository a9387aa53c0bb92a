"""DNS messages as a consumer of ``net.packet.`` sees them: whole in a UDP datagram, or over
TCP (RFC 7766) after a 2-byte length, split across segments as TCP pleases and several to a
segment as pipelining pleases. Reassembled per flow and direction; the state is bounded (see
``TcpDnsStreams``). Used by the event printer; no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import dpkt

from tracecap.dns import decode, empty_proto_dns, is_dns_tcp

#: Flows followed at once (least recently fed dropped first), and unfinished-message bytes held
#: in all of them; a flow holds at most one message, 2 + 65,535 bytes.
MAX_FLOWS = 1024
MAX_BUFFERED = 4 << 20
_SEQ = 1 << 32


#: One message found: the context its caller gave with the segment it belongs to, and its
#: ``proto_dns``.
Found = tuple[Any, dict[str, Any]]


@dataclass
class _Flow:
    next_seq: int
    context: Any = None  # what the caller gave with the flow's latest segment
    head: bytearray = field(default_factory=bytearray)  # length prefix bytes so far
    length: int = -1  # the message's length, once the prefix is complete
    body: bytearray = field(default_factory=bytearray)  # captured bytes up to the first hole
    seen: int = 0  # bytes of the body accounted for, captured or lost
    lost: int = 0  # bytes of the body that never arrived
    lost_step: bool = False  # a length prefix was lost: message boundaries are unknown


class TcpDnsStreams:
    """DNS messages reassembled per TCP flow and direction, from the segments a consumer sees.

    ``feed`` returns every message a segment completes (none for a segment without payload or
    one that only starts a message), each with the ``context`` the caller gave with the
    segment (the printer gives the packet's envelope and metadata). Bytes that never arrive --
    cut at the snap length, or a segment lost -- are counted in ``lost_bytes``; the message
    they belonged to is reported with what was read before them and an ``error``. When a
    length prefix itself is lost the flow waits for a segment that starts a message (the
    content rule), reporting the bytes it cannot place and counting ``resyncs``.

    Memory is bounded: at most ``max_flows`` flows (MAX_FLOWS) and ``max_buffered`` bytes of
    unfinished messages over all of them (MAX_BUFFERED), a flow holding at most one message
    (2 + 65,535 bytes). Past either bound the least recently fed flows are dropped, counted in
    ``evicted``; an unfinished message of a dropped flow is reported then, with its own
    flow's context and an ``error``, as it is when its connection ends (FIN, RST, or a new
    SYN on the same ports).
    """

    def __init__(self, max_flows: int = MAX_FLOWS, max_buffered: int = MAX_BUFFERED) -> None:
        self._flows: OrderedDict[Any, _Flow] = OrderedDict()
        self._max_flows = max_flows
        self._max_buffered = max_buffered
        self.buffered = 0
        self.evicted = 0
        self.lost_bytes = 0
        self.resyncs = 0
        self.unframed_bytes = 0

    def tracks(self, key: Any) -> bool:
        return key in self._flows

    def feed(
        self,
        key: Any,
        seq: int,
        payload: bytes,
        missing: int = 0,
        *,
        starts: bool = False,
        ends: bool = False,
        context: Any = None,
    ) -> list[Found]:
        """One segment of flow ``key``: the sequence number of its first payload byte, its
        captured payload, ``missing`` bytes of payload not captured, whether it carries SYN
        (the flow starts in step) and whether FIN or RST. A flow first seen after its SYN is
        in step only if its first payload starts a message (the content rule); else it waits
        for a segment that does."""
        out: list[Found] = []
        flow = self._flows.get(key)
        size = len(payload) + missing
        if flow is not None and starts:  # the ports used again, or the SYN once more
            self._close(key, flow, out, "a new connection on the same ports began")
            flow = None
        if flow is None:
            if size == 0 and not starts:
                return out
            in_step = starts or is_dns_tcp(payload)
            flow = self._flows[key] = _Flow(seq, lost_step=not in_step)
        flow.context = context
        self._flows.move_to_end(key)
        ahead = (seq - flow.next_seq) % _SEQ
        if ahead >= _SEQ // 2:  # behind: a retransmission, whole or in part
            behind = _SEQ - ahead
            cut = min(behind, len(payload))
            payload, missing = payload[cut:], max(0, missing - (behind - cut))
            seq, size = flow.next_seq, max(0, size - behind)
        elif ahead:
            self._skip(flow, ahead, out)
        if flow.lost_step and payload and is_dns_tcp(payload):
            self._reset(flow)
            self.resyncs += 1
        unframed = self._take(flow, payload, out)
        if unframed:
            self.unframed_bytes += unframed
            why = (
                f"not a DNS message: {unframed} bytes of a TCP stream whose message "
                "boundaries are unknown (a length prefix was not captured)"
            )
            out.append((context, empty_proto_dns(why)))
        self._skip(flow, missing, out)
        flow.next_seq = (seq + size) % _SEQ
        if ends:
            self._close(key, flow, out, "the connection ended")
        self._bound(out)
        return out

    def _take(self, flow: _Flow, data: bytes, out: list[Found]) -> int:
        """Read ``data`` into the flow; how many bytes could not be placed in a message."""
        i = 0
        while i < len(data):
            if flow.lost_step:
                return len(data) - i
            if flow.length < 0:
                take = 2 - len(flow.head)
                flow.head += data[i : i + take]
                i += take
                if len(flow.head) == 2:
                    flow.length = int.from_bytes(flow.head, "big")
                    self._complete(flow, out)
                continue
            take = min(flow.length - flow.seen, len(data) - i)
            if not flow.lost:
                flow.body += data[i : i + take]
                self.buffered += take
            flow.seen += take
            i += take
            self._complete(flow, out)
        return 0

    def _skip(self, flow: _Flow, n: int, out: list[Found]) -> None:
        """``n`` bytes of the stream that were never captured."""
        self.lost_bytes += n
        while n > 0 and not flow.lost_step:
            if flow.length < 0:
                flow.lost_step = True
                return
            take = min(flow.length - flow.seen, n)
            flow.seen += take
            flow.lost += take
            n -= take
            self._complete(flow, out)

    def _complete(self, flow: _Flow, out: list[Found]) -> None:
        if flow.length >= 0 and flow.seen == flow.length:
            out.append((flow.context, decode(bytes(flow.body), flow.length).proto_dns))
            self._reset(flow)

    def _reset(self, flow: _Flow) -> None:
        self.buffered -= len(flow.body)
        flow.head, flow.body = bytearray(), bytearray()
        flow.length, flow.seen, flow.lost, flow.lost_step = -1, 0, 0, False

    def _close(self, key: Any, flow: _Flow, out: list[Found], why: str) -> None:
        """Forget the flow, reporting the message it was inside, if any."""
        if flow.length >= 0:
            proto = decode(bytes(flow.body), flow.length).proto_dns
            arrived = flow.seen - flow.lost
            proto["error"] = f"{why} inside a message: {arrived} of {flow.length} bytes arrived"
            out.append((flow.context, proto))
        elif flow.head:
            out.append((flow.context, empty_proto_dns(f"{why} inside a length prefix")))
        self.buffered -= len(flow.body)
        del self._flows[key]

    def _bound(self, out: list[Found]) -> None:
        why = (
            f"dropped to bound memory ({self._max_flows} connections, "
            f"{self._max_buffered} bytes of unfinished messages)"
        )
        while len(self._flows) > self._max_flows:
            key, flow = next(iter(self._flows.items()))
            self._close(key, flow, out, why)
            self.evicted += 1
        if self.buffered <= self._max_buffered:
            return
        for key, flow in list(self._flows.items()):
            if self.buffered <= self._max_buffered:
                break
            if flow.body:
                self._close(key, flow, out, why)
                self.evicted += 1


_TCP_ENDS = dpkt.tcp.TH_FIN | dpkt.tcp.TH_RST


class DnsReader:
    """Every DNS message a packet carries or completes, with the context given for it.

    A UDP payload is one message (a cut one is reported with what was read and an ``error``);
    TCP segments go through ``TcpDnsStreams``. ``tagged`` says the collector classified the
    packet as DNS (port 53, or its payload by the content rule); an untagged TCP segment is read
    only when its flow is already followed, which is how a message split across segments on a
    port other than 53 is completed (its later segments do not look like DNS by themselves).
    """

    def __init__(self, streams: TcpDnsStreams | None = None) -> None:
        self.streams = streams or TcpDnsStreams()

    def messages(
        self,
        side: tuple[Any, ...],
        l4: dpkt.Packet,
        missing: int,
        tagged: bool,
        context: Any = None,
    ) -> list[Found]:
        """``side`` names the flow and direction (addresses, interface, egress or ingress: on
        loopback each segment is seen twice); ``missing`` bytes of the payload were not
        captured; ``context`` comes back with each message of this packet (a message of a flow
        dropped to bound memory comes back with that flow's latest context)."""
        payload = bytes(l4.data)
        if isinstance(l4, dpkt.udp.UDP):
            return [(context, decode(payload, len(payload) + missing).proto_dns)] if tagged else []
        if not isinstance(l4, dpkt.tcp.TCP):
            return []
        key = (*side, l4.sport, l4.dport)
        if not tagged and not self.streams.tracks(key):
            return []
        syn = bool(l4.flags & dpkt.tcp.TH_SYN)
        seq = (l4.seq + syn) % (1 << 32)  # a SYN takes one sequence number before any data
        ends = bool(l4.flags & _TCP_ENDS)
        return self.streams.feed(key, seq, payload, missing, starts=syn, ends=ends, context=context)

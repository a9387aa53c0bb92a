"""pcapng block encoding: pure functions from packet facts to bytes, no I/O.

The blocks are dpkt's classes (``SectionHeaderBlockLE``, ``InterfaceDescriptionBlockLE``,
``EnhancedPacketBlockLE``, ``PcapngOptionLE``) so the layout is the one dpkt, tshark and tcpdump
already agree on, but they are packed here with explicit fields because dpkt's own serialisers
lose forensic facts:

* ``EnhancedPacketBlock.__bytes__`` forces ``caplen = pkt_len = len(pkt_data)``: a packet cut at
  the snap length would claim to be whole. Here the original length is the kernel's ``orig_len``,
  so readers show the truncation honestly and no IP/UDP length field is ever rewritten (Tracee
  rewrites them, which is evidence mangling).
* dpkt's ``pcapng.Writer`` turns float seconds into microseconds whatever ``if_tsresol`` says. Here
  the IDB declares nanoseconds (``if_tsresol`` = 9) and timestamps are split from integer ns, so
  nothing goes through a float.
* ``dpkt.pcap.DLT_RAW`` is 12 on Linux and 14 on OpenBSD; the portable savefile value is
  ``LINKTYPE_RAW`` = 101 (packets start at the IP header, the first nibble gives the version).

Everything is little-endian (the ``...LE`` classes); pcapng readers handle either byte order.
"""

from __future__ import annotations

import struct

import dpkt
from dpkt import pcapng

#: Link type of every interface: raw IPv4/IPv6, no link-layer header (libpcap's LINKTYPE_RAW).
LINKTYPE_RAW = 101
#: IDB snap length, and the most a block may capture: libpcap's MAXIMUM_SNAPLEN. An IDB snap
#: length of 0 ("no limit") does not help: tcpdump refuses (``invalid packet capture length``) and
#: tshark calls the file corrupt as soon as one block captures more than 262144 bytes, so the
#: writer cuts longer packets here (BIG TCP aggregates can exceed it) and keeps their real length.
SNAPLEN = 262144
#: if_tsresol value: timestamps are in units of 10**-9 s.
TSRESOL_NS = 9
#: Option values have a 16-bit length.
MAX_OPTION_BYTES = 0xFFFF
#: EPB captured and original lengths are 32-bit.
MAX_LEN = 0xFFFFFFFF
#: epb_flags option code and its direction bits (pcapng spec: 01 inbound, 10 outbound).
OPT_EPB_FLAGS = 2
EPB_FLAG_INBOUND = 0b01
EPB_FLAG_OUTBOUND = 0b10

APPLICATION = "tracecap"
INTERFACE_NAME = "tracecap"

_END = pcapng.PcapngOptionLE()  # opt_endofopt; dpkt refuses an option list without it


def _text(value: str) -> bytes:
    """UTF-8 of an option string (pcapng strings are UTF-8, not NUL-terminated); a lone
    surrogate, which UTF-8 cannot encode, is written as its ``\\udcNN`` escape instead."""
    return value.encode("utf-8", "backslashreplace")


def _bounded_text(value: str) -> bytes:
    """UTF-8 of ``value`` cut to fit an option, never inside a character (so it stays UTF-8)."""
    data = _text(value)
    if len(data) <= MAX_OPTION_BYTES:
        return data
    return data[:MAX_OPTION_BYTES].decode("utf-8", "ignore").encode("utf-8")


def _option(code: int, data: bytes) -> pcapng.PcapngOptionLE:
    if len(data) > MAX_OPTION_BYTES:
        raise ValueError(f"option {code} of {len(data)} bytes exceeds {MAX_OPTION_BYTES}")
    return pcapng.PcapngOptionLE(code=code, data=data)


def _options(opts: list[pcapng.PcapngOptionLE]) -> bytes:
    """Packed options, each padded to 32 bits, ended by opt_endofopt."""
    return b"".join(bytes(o) for o in [*opts, _END])


def section_header() -> bytes:
    """A Section Header Block with unknown section length (-1), so blocks may be appended."""
    shb = pcapng.SectionHeaderBlockLE(
        sec_len=-1,
        opts=[pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_SHB_USERAPPL, text=APPLICATION), _END],
    )
    return bytes(shb)


def interface_description(description: str) -> bytes:
    """The one Interface Description Block of a file: RAW, ns timestamps, context as description.

    Raises ValueError when ``description`` does not fit a pcapng option (64 KiB): a cut JSON
    document would be invalid, so the caller must bound what it puts in.
    """
    desc = _text(description)
    opts = [
        _option(pcapng.PCAPNG_OPT_IF_NAME, _text(INTERFACE_NAME)),
        _option(pcapng.PCAPNG_OPT_IF_DESCRIPTION, desc),
        _option(pcapng.PCAPNG_OPT_IF_TSRESOL, bytes([TSRESOL_NS])),
    ]
    idb = pcapng.InterfaceDescriptionBlockLE(linktype=LINKTYPE_RAW, snaplen=SNAPLEN)
    body = _options(opts)
    total = idb.__hdr_len__ + len(body)
    hdr = idb._pack_hdr(pcapng.PCAPNG_BT_IDB, total, LINKTYPE_RAW, 0, SNAPLEN, total)
    return hdr[:-4] + body + hdr[-4:]


def file_header(description: str) -> bytes:
    """What every pcap file starts with: SHB plus interface 0, described by ``description``."""
    return section_header() + interface_description(description)


def split_ts(ts_ns: int) -> tuple[int, int]:
    """(high, low) 32-bit halves of a 64-bit nanosecond timestamp."""
    if not 0 <= ts_ns <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"timestamp {ts_ns} ns does not fit 64 bits")
    return ts_ns >> 32, ts_ns & 0xFFFFFFFF


def packet_options(comment: str, inbound: bool | None = None) -> bytes:
    """The options of an Enhanced Packet Block: ``comment`` in opt_comment as UTF-8, cut to the
    64 KiB an option can hold, and (when ``inbound`` is known) epb_flags' direction bits, which
    Wireshark shows as the packet's direction; ended by opt_endofopt. Every packet of one
    process and direction has the same options, so the writer builds them once per context
    (``packet_block_with``)."""
    opts = [_option(pcapng.PCAPNG_OPT_COMMENT, _bounded_text(comment))]
    if inbound is not None:
        flags = EPB_FLAG_INBOUND if inbound else EPB_FLAG_OUTBOUND
        opts.append(_option(OPT_EPB_FLAGS, struct.pack("<I", flags)))
    return _options(opts)


#: An EPB's fixed part: type, total length, interface 0, timestamp high and low, captured and
#: original lengths; the total length is repeated after the options.
_EPB_HEAD = struct.Struct("<IIIIIII")
_EPB_TAIL = struct.Struct("<I")
_EPB_FIXED = _EPB_HEAD.size + _EPB_TAIL.size
_PADDING = (b"", b"\0", b"\0\0", b"\0\0\0")


def packet_block_with(ts_ns: int, data: bytes, orig_len: int, options: bytes) -> bytes:
    """An Enhanced Packet Block on interface 0 with ``options`` already packed
    (``packet_options``): the per-packet path, packed with ``struct`` in one join (dpkt's
    classes cost about 60 us a block on this machine's loaded CPU, this about 2).

    ``data`` is what was captured (from the IP header on); ``orig_len`` the packet's real
    length, at least ``len(data)``. ``data`` may not exceed SNAPLEN (readers reject the whole
    file otherwise): cut it and keep ``orig_len``. Raises ValueError on lengths or timestamps
    pcapng cannot express.
    """
    caplen = len(data)
    if caplen > SNAPLEN:
        raise ValueError(f"captured length {caplen} exceeds the snap length {SNAPLEN}")
    if not caplen <= orig_len <= MAX_LEN:
        raise ValueError(f"original length {orig_len} not in [{caplen}, {MAX_LEN}]")
    high, low = split_ts(ts_ns)
    pad = -caplen & 3
    total = _EPB_FIXED + caplen + pad + len(options)
    head = _EPB_HEAD.pack(pcapng.PCAPNG_BT_EPB, total, 0, high, low, caplen, orig_len)
    return b"".join((head, data, _PADDING[pad], options, _EPB_TAIL.pack(total)))


def packet_block(
    ts_ns: int,
    data: bytes,
    orig_len: int,
    comment: str,
    *,
    inbound: bool | None = None,
) -> bytes:
    """An Enhanced Packet Block on interface 0 (``packet_block_with`` and ``packet_options``
    in one call): see both for the rules."""
    return packet_block_with(ts_ns, data, orig_len, packet_options(comment, inbound))


# -- continuing an existing file ----------------------------------------------------------------

#: Bytes to read from the start of a file to see its SHB and first IDB (descriptions are small).
HEAD_BYTES = 2 * (MAX_OPTION_BYTES + 64)
_SHB_MAGIC = b"\x0a\x0d\x0d\x0a"
_BOM_LE = b"\x4d\x3c\x2b\x1a"


def is_our_head(head: bytes) -> bool:
    """Whether a file starts as ``file_header`` makes it: little-endian SHB, then an IDB with
    LINKTYPE_RAW and nanosecond timestamps, so packet blocks appended to it mean what we mean.

    A second section would be legal pcapng, but libpcap 1.10 (tcpdump) stops at it with "an
    interface has a type 101 different from the type of the first interface": a file is only
    continued, never given another header, when its head says it can be.
    """
    try:
        if head[:4] != _SHB_MAGIC or head[8:12] != _BOM_LE:
            return False
        shb_len = struct.unpack_from("<I", head, 4)[0]
        if shb_len < 28 or shb_len % 4 or struct.unpack_from("<H", head, 12)[0] != 1:
            return False
        idb_type, idb_len = struct.unpack_from("<II", head, shb_len)
        if idb_type != pcapng.PCAPNG_BT_IDB or idb_len < 20 or len(head) < shb_len + idb_len:
            return False
        idb = pcapng.InterfaceDescriptionBlockLE(head[shb_len : shb_len + idb_len])
    except (struct.error, ValueError, IndexError, dpkt.Error):
        return False
    tsresol = [o.data for o in idb.opts if o.code == pcapng.PCAPNG_OPT_IF_TSRESOL]
    return idb.linktype == LINKTYPE_RAW and tsresol == [bytes([TSRESOL_NS])]


def packet_block_ts(head: bytes) -> int | None:
    """The nanosecond timestamp of the Enhanced Packet Block whose first 20 bytes are ``head``
    (as ``packet_block`` writes it), or None when they are not such a block's."""
    if len(head) < 20:
        return None
    btype, _, _, high, low = struct.unpack_from("<IIIII", head)
    return high << 32 | low if btype == pcapng.PCAPNG_BT_EPB else None


def last_block_start(size: int, trailer: bytes) -> int | None:
    """Where the file's last block starts, from its final 4 bytes (every block ends with its
    total length), or None when they cannot be a block length; the caller checks that a block
    header of that length is really there, i.e. that the file does not end inside a block."""
    if size < 12 or len(trailer) != 4:
        return None
    length = struct.unpack("<I", trailer)[0]
    if length < 12 or length % 4 or length > size:
        return None
    return size - length

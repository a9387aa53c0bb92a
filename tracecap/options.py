"""Pure parser of tracecap's command-line options (README "Command line").

The grammar is Tracee's legacy ``--capture``/``--scope``/``--trace`` surface, so that existing
command lines keep working, with Tracee's quirks fixed: option order never changes the result
(single-valued settings given twice with different values are an error rather than
last-wins), unknown ``pcap:``/``pcap-options:`` values are errors rather than ignored, the
50-character limit applies to read filters too, and ``artifact:`` is accepted before every
capture kind.  Every problem becomes an ``OptionError`` naming the bad token and the accepted
forms, so that ``tracecap run`` can exit 2 before anything is attached.

Nothing here touches the file system: the caller reads ``--config`` files and clears
directories, which keeps the parser testable and safe to run as an unprivileged user.
"""

import difflib
import ipaddress
import os
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tracecap.kinds import BY_TOKEN, CAPTURE_TOKENS, EVENT_NAMES, SOURCES
from tracecap.rotation import SIZE_FORMS, Rotation, parse_count, parse_size
from tracecap.usage import Flag

#: Root's, not world-writable /tmp: any local user could plant a symlink or a directory of their
#: own at a predictable /tmp path before the first run (README "Where artifacts go").
DEFAULT_DIR = "/var/lib/tracecap"
DEFAULT_SNAPLEN = 96
#: Free space every writer leaves on the output's file system (``floor:``) when not told
#: otherwise, whatever the limit: the traced system (and the index lines, which are never
#: refused) must not hit ENOSPC because of the capture. conf/tracecap.conf sets a larger one.
DEFAULT_FLOOR_BYTES = 64 << 20
#: The file-contents ring buffer (``--ring-mb``) when it is not given: 1/RING_MEM_SHARE of the
#: host's MemTotal, rounded down to a power of two, from RING_FLOOR_MB to RING_CAP_MB. The ring
#: holds what the writers have not yet taken of a write burst (the collector drains it at their
#: pace, collector/service.py RING_BUDGET_MARGIN): ``tar -cf - | cat > /dev/null`` of a 53 MB
#: tree writes 107 MB (the pipe and /dev/null) in 0.1-0.4 s, and the file writer took it in
#: 2-6 s on a shared 2-core host. 8 MiB lost 44-87 MB of it; 16, 32 and 64 MiB lost 0, 49 and
#: 11 MB in single runs; 128 MiB, which holds the whole burst, lost nothing (NOTES.md, issue
#: 16). Its pages are resident (the kernel allocates the ring whole and the collector maps it),
#: so it is a bounded share of memory: 128 MiB on a 24 GB host, the floor on hosts of 1 GB or
#: less, the cap from 32 GB.
RING_MEM_SHARE = 128
#: The smallest automatic ring, and the size when MemTotal cannot be read: 16 MiB lost no less
#: than 8 in a paced 4 KiB flood (NOTES.md).
RING_FLOOR_MB = 8
#: The largest automatic ring: enough for a burst of 300-500 MB at the collector's drain rate.
RING_CAP_MB = 256
#: The largest ``--ring-mb``: the kernel takes a BPF ring buffer's size as ``max_entries``, a
#: u32 that must be a power of two and a multiple of the page size (``ringbuf_map_alloc`` in
#: kernel/bpf/ringbuf.c), so 2**31 bytes is the largest it can be; the kernel's own cap
#: (``RINGBUF_MAX_DATA_SZ``, just under 64 GiB with 4 KiB pages) is above that. 4096 MiB would be
#: 2**32, which a u32 cannot hold. Measured with BPF_MAP_CREATE on Linux 6.18 (x86_64): 2048 MiB
#: is created, 2**31 + 4096 bytes and 3 MiB are refused (EINVAL). The kernel allocates the whole
#: ring at once: the host must have that much free memory, or the collector's map creation
#: fails with ENOMEM.
MAX_RING_MB = 2048
#: Linux's PATH_MAX counts the terminating NUL: a path given to a system call has at most
#: PATH_MAX - 1 bytes.
PATH_MAX = 4096
#: Linux's longest file name (one path component).
NAME_MAX = 255
#: The longest path a writer builds under ``<dir>/out``: a container's directory (a 64-hex-digit
#: id) and an artifact name, which writers/naming.py keeps within NAME_MAX. Pcap files
#: (``pcap/processes/<cid11>/<name>``) are shorter.
MAX_ARTIFACT_RELPATH = 64 + 1 + NAME_MAX
#: The longest ``dir:`` (in bytes) whose every artifact path ``<dir>/out/<relpath>`` fits
#: PATH_MAX, so that an analyst (or a tool given the full path) can open each of them.
MAX_DIR_BYTES = PATH_MAX - 1 - len("/out/") - MAX_ARTIFACT_RELPATH
#: Larger than any real frame (64 KiB IP + jumbo/GSO headroom); above it a number is a typo.
MAX_SNAPLEN = 262144
#: Tracee's ``file_*_path_filter`` maps hold three entries per direction.
MAX_PATH_FILTERS = 3
#: The kernel map value is 64 bytes; Tracee caps user filters at 50 to leave room.
MAX_PATH_FILTER_LEN = 50
#: ``TASK_COMM_LEN`` is 16 including the NUL, so a longer name can never match.
MAX_COMM_LEN = 15
#: ``PID_MAX_LIMIT`` on 64-bit kernels.
MAX_PID = 4194304
#: ``(uid_t)-1`` means "no user" to the kernel, so the largest real uid is one below.
MAX_UID = 2**32 - 2

FILE_TYPES = ("regular", "pipe", "socket", "elf")
FILE_FDS = {"stdin": 0, "stdout": 1, "stderr": 2}
PCAP_SPLITS = ("single", "process", "container", "command")
PCAP_OPTIONS = ("filtered", "none")
#: ``pcap-snaplen:`` words: bytes kept after the L4 header (-1 whole packets, 0 headers only).
SNAPLEN_NAMES = {"default": DEFAULT_SNAPLEN, "headers": 0, "max": -1}
#: ``--output`` values that choose the format, and Tracee's that change nothing here.
OUTPUT_FORMATS = {"json": "json", "none": "none", "format:json": "json"}
OUTPUT_NOOPS = ("option:parse-arguments", "option:detect-syscall")
#: ``--output`` options of tracecap's own: file I/O printed as the bus carries it, one event per
#: run of consecutive syscalls on one open file (count and returnValue its byte total).
OUTPUT_MERGED_IO = "option:merged-io"
#: ``--output json:/path``: Tracee's form for events written to a file instead of stdout.
OUTPUT_FILE_PREFIX = "json:"
#: ``--output option:`` words of the events file's rotation (README "Rotation").
OUTPUT_ROTATE_WORDS = ("rotate-size=", "rotate-count=", "rotate-compress")
#: Capture kinds in the order their topics are listed; the name is what users type.
KINDS = CAPTURE_TOKENS
#: Capture kinds with filters of their own (``write=/p*``, ``read:type=pipe``).
FILE_KINDS = ("write", "read")
#: The words of packet capture, whose settings are the ``pcap*:`` and ``net=`` options.
NETWORK_WORDS = BY_TOKEN["network"].words
#: Capture kinds that are one word and no settings.
PLAIN_KINDS = tuple(kind for kind in KINDS if kind not in (*FILE_KINDS, "network"))
#: The capture kinds without filters, as the usage lists them.
WORD_KINDS = f"{', '.join(PLAIN_KINDS)}, {'|'.join(NETWORK_WORDS)}"
#: The Config field of each capture kind whose field is not named after it.
_CONFIG_FIELDS = {"network": "pcap"}

_FILE_FORMS = (
    "{k}, {k}=/prefix*, {k}:path=/prefix*, {k}:type=regular|pipe|socket|elf, "
    "{k}:fd=stdin|stdout|stderr"
)
CAPTURE_FORMS = (
    "write[=/p*|:path=/p*|:type=regular|pipe|socket|elf|:fd=stdin|stdout|stderr], read[...], "
    f"{WORD_KINDS}, "
    "pcap:single,process,container,command, pcap-options:filtered|none, "
    "pcap-snaplen:default|headers|max|<N>b|<N>kb, pcap-rotate:SIZE[,COUNT][,compress], "
    "net=<iface>, dir:/path, clear-dir, limit:<N>mb|gb, floor:<N>mb|gb, "
    "index-rotate:SIZE[,COUNT][,compress]; [artifact:] may precede "
    f"{', '.join(word for source in SOURCES for word in source.words)}, pcap: and net="
)
SCOPE_FORMS = (
    "comm=NAME[,NAME], comm!=NAME[,NAME], pid=N[,N], uid=N[,N], container, container=ID[,ID], "
    "host, follow"
)
OUTPUT_FORMS = ", ".join(
    (
        *OUTPUT_FORMATS,
        "json:/path/file",
        *OUTPUT_NOOPS,
        OUTPUT_MERGED_IO,
        "option:rotate-size=SIZE,rotate-count=N,rotate-compress",
    )
)
ROTATE_FORMS = f"SIZE[,COUNT][,compress] with SIZE {SIZE_FORMS} and COUNT a positive integer"
OUTPUT_FILE_FORMS = (
    f"json:/path/file, absolute, valid UTF-8, at most {PATH_MAX - 1} bytes, without '.' or "
    f"'..' components, naming a file (no trailing '/') of at most {NAME_MAX} bytes"
)
ARG_FORMS = (
    "--capture/-c OPT, --scope/-s EXPR, --trace/-t EXPR, --events/-e NAME[,NAME], "
    "--output/-o VALUE, --server VALUE (each also as --long=VALUE or -xVALUE, and the long "
    "names with one dash as Go's flag package takes them: -trace VALUE, -trace=VALUE)"
)
#: Tracee's default (``--server http-address``), on loopback only: the counters say what is
#: captured and lost, which is not for every host on the network unless asked for.
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 3366
SERVER_FORMS = (
    "metrics, healthz, http-address=HOST:PORT (HOST an IPv4 address, [IPv6] or a host name; "
    f"empty for every interface; default {DEFAULT_HTTP_HOST}:{DEFAULT_HTTP_PORT})"
)
SNAPLEN_FORMS = (
    f"default, headers, max, <N>b, <N>kb, <N>k (N a positive integer, at most {MAX_SNAPLEN} bytes)"
)
LIMIT_FORMS = "limit:<N>mb, limit:<N>gb (N a positive integer)"
FLOOR_FORMS = "floor:<N>mb, floor:<N>gb (N a positive integer)"
RING_MB_FORMS = f"a power of two from 1 to {MAX_RING_MB} (MiB)"
DIR_FORMS = (
    f"dir:/path, absolute, valid UTF-8, at most {MAX_DIR_BYTES} bytes with no name longer "
    f"than {NAME_MAX} bytes"
)

_UINT = re.compile(r"[0-9]{1,20}")
#: ``HOST:PORT``, ``[V6]:PORT`` or ``:PORT``; a host name is letters, digits, '-' and '.'.
_HTTP_ADDRESS = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]*)):([0-9]{1,5})")
_IFACE = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
_SNAPLEN = re.compile(r"([0-9]{1,20})(kb|k|b)")
_LIMIT = re.compile(r"([0-9]{1,20})(mb|gb)")
_LIMIT_UNITS = {"mb": 1024**2, "gb": 1024**3}

T = TypeVar("T")


class OptionError(ValueError):
    """Message names the bad token and the accepted forms."""


@dataclass(frozen=True)
class FileCapture:
    """What to capture of file writes or of file reads.

    Kinds of filter AND together and values within one kind OR together, as in the kernel.
    """

    enabled: bool = False
    paths: tuple[bytes, ...] = ()
    types: frozenset[str] = frozenset()
    fds: frozenset[int] = frozenset()


@dataclass(frozen=True)
class PcapCapture:
    """Packet capture settings; ``snaplen`` -1 means whole packets, 0 headers only."""

    enabled: bool = False
    split: frozenset[str] = frozenset()
    snaplen: int = DEFAULT_SNAPLEN
    filtered: bool = False
    iface: str | None = None
    #: ``pcap-rotate:``: every pcap file rotated by size (None: never).
    rotation: Rotation | None = None


@dataclass(frozen=True)
class Scope:
    """Which processes are traced; every given condition must hold.

    ``container`` is None when neither ``container`` nor ``host`` was asked for;
    ``container_ids`` (lower-case hex, 12 to 64 characters: prefixes of full ids) narrows
    ``container`` to those containers.
    """

    comm: tuple[bytes, ...] = ()
    comm_not: tuple[bytes, ...] = ()
    pid: tuple[int, ...] = ()
    uid: tuple[int, ...] = ()
    follow: bool = False
    container: bool | None = None
    container_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Server:
    """``--server``: what the exporter serves over HTTP, and where (Tracee's flag and words).

    ``host`` "" listens on every interface, as Tracee's ``http-address=:PORT`` does.
    """

    metrics: bool = False
    healthz: bool = False
    host: str = DEFAULT_HTTP_HOST
    port: int = DEFAULT_HTTP_PORT

    @property
    def enabled(self) -> bool:
        """Whether an exporter runs at all."""
        return self.metrics or self.healthz


@dataclass(frozen=True)
class Capture:
    """The result of the ``--capture`` options alone, before they are merged into a Config."""

    write: FileCapture = FileCapture()
    read: FileCapture = FileCapture()
    exec: bool = False
    mem: bool = False
    module: bool = False
    bpf: bool = False
    pcap: PcapCapture = PcapCapture()
    dir: str = DEFAULT_DIR
    out_dir: str = DEFAULT_DIR + "/out"
    clear_dir: bool = False
    limit_bytes: int | None = None
    floor_bytes: int = DEFAULT_FLOOR_BYTES
    index_rotation: Rotation | None = None


@dataclass(frozen=True)
class Output:
    """``--output``: the events' format, the file they go to (None: stdout) and its rotation."""

    format: str = "none"
    file: str | None = None
    rotation: Rotation | None = None
    #: ``option:merged-io``: one event per merged run of file I/O, not per syscall.
    merged_io: bool = False


@dataclass(frozen=True)
class Config:
    """Everything ``tracecap run`` (and the collector and writers) need from the command line."""

    write: FileCapture
    read: FileCapture
    exec: bool
    mem: bool
    module: bool
    bpf: bool
    pcap: PcapCapture
    dir: str
    out_dir: str
    clear_dir: bool
    limit_bytes: int | None
    floor_bytes: int
    scope: Scope
    events: tuple[str, ...]
    output: str
    server: Server = Server()
    #: ``--output option:merged-io``: one event per merged run of file I/O, not per syscall.
    merged_io: bool = False
    #: ``--output json:/path``: where events go instead of stdout, and how that file rotates.
    output_file: str | None = None
    output_rotation: Rotation | None = None
    #: ``--capture index-rotate:``: how index.jsonl and events.jsonl rotate (None: never).
    index_rotation: Rotation | None = None

    def kinds(self) -> tuple[str, ...]:
        """Enabled capture kinds, in ``KINDS`` order, named as users type them."""
        return tuple(
            kind for kind in KINDS if _is_on(getattr(self, _CONFIG_FIELDS.get(kind, kind)))
        )

    def topics(self) -> tuple[bytes, ...]:
        """Bus topics the writers must subscribe to, so that nothing else is decoded."""
        return tuple(BY_TOKEN[kind].topic for kind in self.kinds())


def _is_on(setting: bool | FileCapture | PcapCapture) -> bool:
    return setting if isinstance(setting, bool) else setting.enabled


def _dedup(items: Iterable[T]) -> tuple[T, ...]:
    """Repeating a value (say in a config file and on the command line) must not count twice."""
    return tuple(dict.fromkeys(items))


def _encode(text: str, token: str, accepted: str) -> bytes:
    """Kernel strings are bytes; argv's undecodable bytes arrive as surrogate escapes."""
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:
        raise OptionError(f"{token!r}: cannot be encoded to bytes (accepted: {accepted})") from None
    if b"\0" in raw:
        raise OptionError(f"{token!r}: contains a NUL byte (accepted: {accepted})")
    return raw


def _uint(text: str) -> int | None:
    """int() also takes '+5', ' 5', '1_0' and non-ASCII digits; options must not."""
    return int(text) if _UINT.fullmatch(text) else None


class _SetOnce(Generic[T]):
    """A single-valued setting; giving it again with another value is an error so that the
    result cannot depend on the order of the options (Tracee kept the last one)."""

    def __init__(self, what: str, default: T) -> None:
        self.what = what
        self.value = default
        self.token: str | None = None

    def set(self, value: T, token: str) -> None:
        if self.token is not None and self.value != value:
            raise OptionError(
                f"conflicting {self.what}: {self.token!r} and {token!r} (give it once)"
            )
        self.value, self.token = value, token


@dataclass
class _FileAcc:
    """The ``write`` or ``read`` filters gathered while parsing, in order of appearance and
    without duplicates; ``freeze`` makes the FileCapture the parser returns."""

    enabled: bool = False
    paths: list[bytes] = field(default_factory=list)
    types: set[str] = field(default_factory=set)
    fds: set[int] = field(default_factory=set)

    def freeze(self) -> FileCapture:
        return FileCapture(
            self.enabled, tuple(self.paths), frozenset(self.types), frozenset(self.fds)
        )


def _file_option(acc: _FileAcc, kind: str, token: str, body: str) -> None:
    """Parse ``write``/``read`` and their filters; ``kind=X`` is shorthand for ``kind:path=X``."""
    acc.enabled = True
    if body == kind:
        return
    forms = _FILE_FORMS.format(k=kind)
    rest = body[len(kind) + 1 :]
    if body[len(kind)] == "=":
        key, value = "path", rest
    else:
        key, sep, value = rest.partition("=")
        if not sep:
            raise OptionError(f"invalid capture option specified: {token!r} (accepted: {forms})")
    if not value:
        raise OptionError(f"invalid capture option specified: {token!r} (accepted: {forms})")
    if key == "path":
        if not value.endswith("*"):
            raise OptionError(f"file path filter should end with *: {token!r} (accepted: {forms})")
        prefix = _encode(value[:-1], token, forms)
        if not prefix:
            raise OptionError(
                f"capture path filter cannot be empty: {token!r} (accepted: {kind}=/prefix*)"
            )
        if len(prefix) > MAX_PATH_FILTER_LEN:
            raise OptionError(
                f"the length of a path filter is limited to {MAX_PATH_FILTER_LEN} characters: "
                f"{token!r} has {len(prefix)} bytes before the '*'"
            )
        if prefix not in acc.paths:
            if len(acc.paths) == MAX_PATH_FILTERS:
                raise OptionError(
                    f"too many file-{kind} path filters given: {token!r} is one more than "
                    f"the {MAX_PATH_FILTERS} allowed"
                )
            acc.paths.append(prefix)
    elif key == "type":
        if value not in FILE_TYPES:
            raise OptionError(
                f"unsupported file type filter value for capture - {value} "
                f"(in {token!r}; accepted: {', '.join(FILE_TYPES)})"
            )
        acc.types.add(value)
    elif key == "fd":
        if value not in FILE_FDS:
            raise OptionError(
                f"unsupported file FD filter value for capture - {value} "
                f"(in {token!r}; accepted: {', '.join(FILE_FDS)})"
            )
        acc.fds.add(FILE_FDS[value])
    else:
        raise OptionError(
            f"unrecognized file capture option: {key} (in {token!r}; accepted: {forms})"
        )


def _snaplen(token: str, value: str) -> int:
    value = value.lower()
    if value in SNAPLEN_NAMES:
        return SNAPLEN_NAMES[value]
    match = _SNAPLEN.fullmatch(value)
    if match is None:
        raise OptionError(f"could not parse pcap snaplen: {token!r} (accepted: {SNAPLEN_FORMS})")
    size = int(match[1]) * (1 if match[2] == "b" else 1024)
    if not 0 < size <= MAX_SNAPLEN:
        raise OptionError(
            f"could not parse pcap snaplen: {token!r} is {size} bytes (accepted: {SNAPLEN_FORMS})"
        )
    return size


def _size(token: str, value: str, what: str, accepted: str) -> int:
    """``limit:`` and ``floor:`` sizes: a positive number of MiB or GiB."""
    match = _LIMIT.fullmatch(value.lower())
    if match is None or int(match[1]) == 0:
        raise OptionError(f"could not parse {what}: {token!r} (accepted: {accepted})")
    return int(match[1]) * _LIMIT_UNITS[match[2]]


def _out_dir(token: str, value: str) -> str:
    """Trailing slashes are dropped so that equal directories compare equal.

    The name must be UTF-8: tracecap names the directory in its messages, its logs and the
    options file its programs read, all UTF-8 text, where other bytes show as ``\\xNN`` escapes
    that cannot be typed back or matched against the real name. Its length is checked here
    rather than by the first ``mkdir`` (ENAMETOOLONG, after supervisord started): no name over
    NAME_MAX, and room under PATH_MAX for the longest artifact path (MAX_DIR_BYTES).
    """
    if not value:
        raise OptionError(f"capture output dir cannot be empty: {token!r} (accepted: {DIR_FORMS})")
    if not value.startswith("/"):
        raise OptionError(
            f"capture output dir must be an absolute path: {token!r} (accepted: {DIR_FORMS})"
        )
    raw = _encode(value, token, DIR_FORMS).rstrip(b"/") or b"/"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = raw.decode("utf-8", "backslashreplace")
        raise OptionError(
            f"capture output dir is not valid UTF-8: 'dir:{shown}' has byte "
            f"{raw[exc.start]:#04x} at offset {exc.start}; tracecap names the directory in its "
            f"messages, logs and options file, which are UTF-8 text (accepted: {DIR_FORMS})"
        ) from None
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise OptionError(
            f"capture output dir has a name of {len(longest)} bytes, over the {NAME_MAX} the "
            f"kernel allows: 'dir:{text[:60]}...' (accepted: {DIR_FORMS})"
        )
    if len(raw) > MAX_DIR_BYTES:
        raise OptionError(
            f"capture output dir is {len(raw)} bytes: with its artifact paths (up to "
            f"{len('/out/') + MAX_ARTIFACT_RELPATH} bytes more) it would pass PATH_MAX "
            f"({PATH_MAX}): 'dir:{text[:60]}...' (accepted: {DIR_FORMS})"
        )
    return text


def ring_mb_for_memory(mem_total_kib: int | None) -> int:
    """The file-contents ring for a host of ``mem_total_kib`` (None: unknown), see
    RING_MEM_SHARE."""
    share_mb = (mem_total_kib or 0) // 1024 // RING_MEM_SHARE
    power = 1 << (share_mb.bit_length() - 1) if share_mb else 0
    return min(RING_CAP_MB, max(RING_FLOOR_MB, power))


def mem_total_kib(meminfo: str) -> int | None:
    """MemTotal from the text of /proc/meminfo (``MemTotal:  24684092 kB``), or None."""
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name == "MemTotal" and len(fields) == 2 and fields[1] == "kB" and fields[0].isdigit():
            return int(fields[0])
    return None


def parse_ring_mb(value: str) -> int:
    """The ``--ring-mb`` value: a power of two from 1 to MAX_RING_MB (see there for why)."""
    size = _uint(value)
    if size is None or not 1 <= size <= MAX_RING_MB or size & (size - 1):
        raise OptionError(f"--ring-mb {value!r}: expected {RING_MB_FORMS}")
    return size


def _iface(token: str, value: str) -> str:
    if not _IFACE.fullmatch(value) or value in (".", ".."):
        raise OptionError(
            f"invalid network interface name: {token!r} "
            "(accepted: net=<iface>, 1-15 characters of A-Z a-z 0-9 _ . : -)"
        )
    return value


def parse_capture(tokens: Sequence[str]) -> Capture:
    """Parse every ``--capture`` value together; see the module docstring for the fixes."""
    write, read = _FileAcc(), _FileAcc()
    flags = dict.fromkeys(PLAIN_KINDS, False)
    network = False
    splits: set[str] = set()
    split_given = False
    snaplen = _SetOnce("pcap-snaplen", DEFAULT_SNAPLEN)
    filtered = _SetOnce("pcap-options", False)
    iface: _SetOnce[str | None] = _SetOnce("net=<iface>", None)
    out = _SetOnce("dir:", DEFAULT_DIR)
    limit: _SetOnce[int | None] = _SetOnce("limit:", None)
    floor = _SetOnce("floor:", DEFAULT_FLOOR_BYTES)
    pcap_rotate: _SetOnce[Rotation | None] = _SetOnce("pcap-rotate:", None)
    index_rotate: _SetOnce[Rotation | None] = _SetOnce("index-rotate:", None)
    clear_dir = False
    for token in tokens:
        body = token.removeprefix("artifact:")
        if body in ("write", "read") or body.startswith(("write=", "write:", "read=", "read:")):
            kind = "write" if body.startswith("write") else "read"
            _file_option(write if kind == "write" else read, kind, token, body)
        elif body in flags:
            flags[body] = True
        elif body in NETWORK_WORDS:
            network = True
        elif body.startswith("net="):
            network = True
            iface.set(_iface(token, body[4:]), token)
        elif body.startswith("pcap:"):
            split_given = True
            for mode in body[5:].split(","):
                if mode not in PCAP_SPLITS:
                    raise OptionError(
                        f"unknown pcap split {mode!r} in {token!r} "
                        f"(accepted: pcap:{','.join(PCAP_SPLITS)}, any combination)"
                    )
                splits.add(mode)
        elif body != token:
            raise OptionError(
                f"invalid capture option specified: {token!r} ('artifact:' may precede only "
                f"a capture kind; accepted: {CAPTURE_FORMS})"
            )
        elif token.startswith("pcap-options:"):
            value = token[13:].lower()
            if value not in PCAP_OPTIONS:
                raise OptionError(
                    f"unknown pcap option in {token!r} "
                    "(accepted: pcap-options:filtered, pcap-options:none)"
                )
            filtered.set(value == "filtered", token)
        elif token.startswith("pcap-snaplen:"):
            snaplen.set(_snaplen(token, token[13:]), token)
        elif token.startswith("dir:"):
            out.set(_out_dir(token, token[4:]), token)
        elif token == "clear-dir":
            clear_dir = True
        elif token.startswith("limit:"):
            limit.set(_size(token, token[6:], "capture limit", LIMIT_FORMS), token)
        elif token.startswith("floor:"):
            floor.set(_size(token, token[6:], "free-space floor", FLOOR_FORMS), token)
        elif token.startswith("pcap-rotate:"):
            pcap_rotate.set(parse_rotation(token, token[12:]), token)
        elif token.startswith("index-rotate:"):
            index_rotate.set(parse_rotation(token, token[13:]), token)
        else:
            raise OptionError(
                f"invalid capture option specified: {token!r} (accepted: {CAPTURE_FORMS})"
            )
    enabled = network or split_given
    if not enabled:
        for setting in (snaplen, filtered, pcap_rotate):
            if setting.token is not None:
                raise OptionError(
                    f"{setting.what} needs --capture network (or net, pcap, pcap:..., "
                    f"net=<iface>): {setting.token!r} alone captures nothing"
                )
    pcap = PcapCapture(
        enabled=enabled,
        split=frozenset(splits if split_given else {"single"} if enabled else ()),
        snaplen=snaplen.value,
        filtered=filtered.value,
        iface=iface.value,
        rotation=pcap_rotate.value,
    )
    return Capture(
        write=write.freeze(),
        read=read.freeze(),
        pcap=pcap,
        dir=out.value,
        out_dir=out.value.rstrip("/") + "/out",
        clear_dir=clear_dir,
        limit_bytes=limit.value,
        floor_bytes=floor.value,
        index_rotation=index_rotate.value,
        **flags,
    )


def parse_rotation(token: str, value: str) -> Rotation:
    """``SIZE[,COUNT][,compress]`` of ``pcap-rotate:`` and ``index-rotate:``."""
    size_text, *rest = value.split(",")
    size = parse_size(size_text)
    count: int | None = None
    compress = False
    for word in rest:
        number = parse_count(word)
        if number is not None and count is None:
            count = number
        elif word == "compress" and not compress:
            compress = True
        else:
            size = None
    if size is None:
        raise OptionError(f"invalid rotation: {token!r} (accepted: {ROTATE_FORMS})")
    return Rotation(size, count, compress)


def _names(
    token: str, value: str, what: str, accepted: str, convert: Callable[[str], T | None]
) -> list[T]:
    """Split a comma list, rejecting empty items so that ``comm=a,,b`` is not silently ``a,b``."""
    items: list[T] = []
    for item in value.split(","):
        converted = convert(item) if item else None
        if converted is None:
            raise OptionError(f"invalid {what} {item!r} in {token!r} (accepted: {accepted})")
        items.append(converted)
    return items


def _pid(text: str) -> int | None:
    number = _uint(text)
    return number if number is not None and 0 < number <= MAX_PID else None


def _uid(text: str) -> int | None:
    number = _uint(text)
    return number if number is not None and number <= MAX_UID else None


def _comm(token: str) -> Callable[[str], bytes | None]:
    def convert(text: str) -> bytes | None:
        raw = _encode(text, token, SCOPE_FORMS)
        if len(raw) > MAX_COMM_LEN:
            raise OptionError(
                f"process name {text!r} in {token!r} is {len(raw)} bytes; the kernel keeps "
                f"at most {MAX_COMM_LEN} (accepted: comm=NAME with NAME of 1-{MAX_COMM_LEN} bytes)"
            )
        return raw

    return convert


def _event(text: str) -> str | None:
    return text if text in EVENT_NAMES else None


def parse_scope(tokens: Sequence[str]) -> Scope:
    """Parse ``--scope`` (and ``--trace`` minus ``event=``) expressions; all must hold."""
    comm: list[bytes] = []
    comm_not: list[bytes] = []
    pid: list[int] = []
    uid: list[int] = []
    follow = False
    ids: list[str] = []
    where: _SetOnce[bool | None] = _SetOnce("--scope container/host", None)
    for token in tokens:
        if token.startswith("comm!="):
            comm_not += _names(token, token[6:], "process name", SCOPE_FORMS, _comm(token))
        elif token.startswith("comm="):
            comm += _names(token, token[5:], "process name", SCOPE_FORMS, _comm(token))
        elif token.startswith("pid="):
            pid += _names(token, token[4:], "pid", f"pid=N[,N] with 0 < N <= {MAX_PID}", _pid)
        elif token.startswith("uid="):
            uid += _names(token, token[4:], "uid", f"uid=N[,N] with 0 <= N <= {MAX_UID}", _uid)
        elif token in ("container", "host"):
            where.set(token == "container", token)
        elif token == "follow":
            follow = True
        elif token.startswith("container="):
            ids += _names(token, token[10:], "container id", _CONTAINER_FORMS, _container_id)
            where.set(True, token)
        else:
            raise OptionError(
                f"invalid scope expression: {token!r} (accepted: {SCOPE_FORMS}; "
                "--trace also takes event=NAME[,NAME])"
            )
    return Scope(
        _dedup(comm), _dedup(comm_not), _dedup(pid), _dedup(uid), follow, where.value, _dedup(ids)
    )


_CONTAINER_FORMS = "container=ID[,ID] with 12 to 64 lower-case hex characters (an id or prefix)"


def _container_id(text: str) -> str | None:
    return text if re.fullmatch(r"[0-9a-f]{12,64}", text) else None


_ARG_DESTS = {
    "--capture": "capture",
    "-c": "capture",
    "-capture": "capture",
    "--scope": "scope",
    "-s": "scope",
    "-scope": "scope",
    "--trace": "trace",
    "-t": "trace",
    "-trace": "trace",
    "--events": "events",
    "-e": "events",
    "-events": "events",
    "--output": "output",
    "-o": "output",
    "-output": "output",
    "--server": "server",
    "-server": "server",
}
#: Long names with one dash, as Go's flag package reads them (``-trace comm=ping``).
_SINGLE_DASH_LONG = tuple(name for name in _ARG_DESTS if name[1] != "-" and len(name) > 2)


def _split_arg(arg: str) -> tuple[str, str | None]:
    """(option name, attached value or None) of one command-line word.

    ``--name=value``; Go's ``-name value`` and ``-name=value`` for the long names; a short
    option with its value attached (``-tcomm=bash``). A single-dash word that reads as a
    misspelt long name (``-tracee``) is an unknown option named as typed, not ``-t`` with the
    value ``racee``."""
    if arg.startswith("--"):
        name, sep, value = arg.partition("=")
        return name, value if sep else None
    if not arg.startswith("-") or len(arg) <= 2:
        return arg, None
    name, sep, value = arg.partition("=")
    if name in _SINGLE_DASH_LONG:
        return name, value if sep else None
    word = re.match(r"-([a-z-]+)", name)
    if word is not None and difflib.get_close_matches(
        word[1], [n[1:] for n in _SINGLE_DASH_LONG], n=1, cutoff=0.75
    ):
        return name, None  # unknown: reported with the token
    if arg[:2] in _ARG_DESTS:
        return arg[:2], arg[2:]
    return arg, None


def _group_argv(argv: Sequence[str]) -> dict[str, list[str]]:
    """Own loop instead of argparse, which prints and exits on some errors even with
    ``exit_on_error=False`` (unknown arguments) and accepts abbreviations we do not want."""
    groups: dict[str, list[str]] = {dest: [] for dest in _ARG_DESTS.values()}
    args = iter(argv)
    for arg in args:
        name, value = _split_arg(arg)
        dest = _ARG_DESTS.get(name)
        if dest is None:
            hint = " (config files cannot include others)" if name == "--config" else ""
            close = difflib.get_close_matches(name, list(_ARG_DESTS), n=1, cutoff=0.75)
            if close and not hint:
                hint = f" (did you mean {close[0]}?)"
            raise OptionError(f"unknown option {arg!r}{hint} (accepted: {ARG_FORMS})")
        if value is None:
            value = next(args, None)
            if value is None:
                raise OptionError(f"option {arg!r} needs a value (accepted: {ARG_FORMS})")
        groups[dest].append(value)
    return groups


def _output_file(value: str) -> str:
    """The path of ``json:/path``, checked as ``dir:`` is, so that a typo fails here rather than
    after supervisord started (the front end opens it, as root, through checked fds)."""
    path = value[len(OUTPUT_FILE_PREFIX) :]
    raw = _encode(path, value, OUTPUT_FILE_FORMS)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raw = b"\0"
    parts = raw.split(b"/")
    if (
        not path.startswith("/")
        or path.endswith("/")
        or len(raw) >= PATH_MAX
        or b"\0" in raw
        or any(part in (b".", b"..") or len(part) > NAME_MAX for part in parts)
    ):
        raise OptionError(
            f"invalid --output events file: {value!r} (accepted: {OUTPUT_FILE_FORMS})"
        )
    return "/" + "/".join(p.decode() for p in parts if p)


def _output_options(
    value: str, rotation: dict[str, _SetOnce[int | None]], flags: set[str], merged: set[str]
) -> None:
    """``option:A,B=V,...``: Tracee's output options, ``merged-io`` and the events file's
    rotation (rotation words go into ``flags``, merged-io into ``merged``)."""
    for word in value.removeprefix("option:").split(","):
        key, sep, text = word.partition("=")
        if f"option:{word}" in OUTPUT_NOOPS:
            continue
        if f"option:{word}" == OUTPUT_MERGED_IO:
            merged.add(word)
            continue
        if sep and key in ("rotate-size", "rotate-count"):
            parse = parse_size if key == "rotate-size" else parse_count
            number = parse(text)
            if number is not None:
                rotation[key].set(number, f"option:{word}")
                continue
        elif word == "rotate-compress":
            flags.add(word)
            continue
        raise OptionError(
            f"invalid --output option {word!r} in {value!r} (accepted: {OUTPUT_FORMS}; "
            f"rotate-size={SIZE_FORMS}, rotate-count a positive integer)"
        )


def parse_output(values: Sequence[str]) -> Output:
    """``--output`` (repeatable): the format, ``json:/path`` for a file, and ``option:`` words;
    Tracee's ``option:parse-arguments`` and ``option:detect-syscall`` change nothing here
    (arguments are always parsed)."""
    chosen = _SetOnce("--output format", "none")
    file: _SetOnce[str | None] = _SetOnce("--output events file", None)
    rotation: dict[str, _SetOnce[int | None]] = {
        "rotate-size": _SetOnce("--output option:rotate-size", None),
        "rotate-count": _SetOnce("--output option:rotate-count", None),
    }
    flags: set[str] = set()
    merged: set[str] = set()
    for value in values:
        if value in OUTPUT_FORMATS:
            chosen.set(OUTPUT_FORMATS[value], value)
        elif value.startswith(OUTPUT_FILE_PREFIX):
            chosen.set("json", value)
            file.set(_output_file(value), value)
        elif value.startswith("option:"):
            _output_options(value, rotation, flags, merged)
        else:
            raise OptionError(f"invalid --output value: {value!r} (accepted: {OUTPUT_FORMS})")
    size, count = rotation["rotate-size"].value, rotation["rotate-count"].value
    given = [s.token for s in rotation.values() if s.token] + sorted(flags)
    if given and file.value is None:
        raise OptionError(
            f"--output {given[0]!r} rotates the events file: it needs --output json:/path/file"
        )
    if given and size is None:
        raise OptionError(
            f"--output {given[0]!r} needs option:rotate-size=SIZE (the size that closes a segment)"
        )
    how = None if size is None else Rotation(size, count, "rotate-compress" in flags)
    return Output(chosen.value, file.value, how, bool(merged))


def _http_address(token: str) -> tuple[str, int]:
    """``HOST:PORT`` of ``http-address=``; a host name is kept as typed (resolved when bound),
    an address must be one (``999.1.1.1`` is a typo, not a name)."""
    match = _HTTP_ADDRESS.fullmatch(token.removeprefix("http-address="))
    if match is not None and 0 < int(match[3]) <= 65535:
        v6, host, port = match[1], match[2], int(match[3])
        try:
            if v6 is not None:
                return str(ipaddress.IPv6Address(v6)), port
            if re.fullmatch(r"[0-9.]+", host):
                return str(ipaddress.IPv4Address(host)), port
        except ValueError:
            pass
        else:
            if not host.startswith(("-", ".")):
                return host, port
    raise OptionError(f"invalid --server value: {token!r} (accepted: {SERVER_FORMS})")


def parse_server(values: Sequence[str]) -> Server:
    """``--server`` (repeatable): ``metrics`` and ``healthz`` turn the endpoints on,
    ``http-address=`` moves them. An address with nothing to serve would be ignored, so it is an
    error; Tracee's other endpoints (grpc, pprof, pyroscope) do not exist here."""
    words = {"metrics": False, "healthz": False}
    address: _SetOnce[tuple[str, int]] = _SetOnce(
        "--server http-address", (DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT)
    )
    for value in values:
        if value in words:
            words[value] = True
        elif value.startswith("http-address="):
            address.set(_http_address(value), value)
        else:
            raise OptionError(f"invalid --server value: {value!r} (accepted: {SERVER_FORMS})")
    server = Server(words["metrics"], words["healthz"], *address.value)
    if address.token is not None and not server.enabled:
        raise OptionError(
            f"--server {address.token!r} serves nothing without --server metrics or "
            "--server healthz"
        )
    return server


def parse_args(argv: Sequence[str]) -> Config:
    """Parse the option list of ``tracecap run`` (no subcommand, ``--config`` already expanded)."""
    groups = _group_argv(argv)
    capture = parse_capture(groups["capture"])
    output = parse_output(groups["output"])
    events_accepted = f"--events NAME[,NAME] with NAME one of {', '.join(EVENT_NAMES)}"
    events = [
        name
        for value in groups["events"]
        for name in _names(value, value, "event name", events_accepted, _event)
    ]
    scope_tokens = list(groups["scope"])
    for token in groups["trace"]:
        if token.startswith("event="):
            events += _names(token, token[6:], "event name", events_accepted, _event)
        else:
            scope_tokens.append(token)
    return Config(
        write=capture.write,
        read=capture.read,
        exec=capture.exec,
        mem=capture.mem,
        module=capture.module,
        bpf=capture.bpf,
        pcap=capture.pcap,
        dir=capture.dir,
        out_dir=capture.out_dir,
        clear_dir=capture.clear_dir,
        limit_bytes=capture.limit_bytes,
        floor_bytes=capture.floor_bytes,
        scope=parse_scope(scope_tokens),
        events=_dedup(events),
        output=output.format,
        server=parse_server(groups["server"]),
        merged_io=output.merged_io,
        output_file=output.file,
        output_rotation=output.rotation,
        index_rotation=capture.index_rotation,
    )


class _ShellLexer(shlex.shlex):
    """shlex ends a word at any '#', which would cut ``dir:/srv/a#b`` short; as in sh, '#' only
    starts a comment at the start of a word (shlex reads ``commenters`` only in its states)."""

    @property
    def commenters(self) -> str:  # type: ignore[override]
        return "#" if self.state == " " else ""

    @commenters.setter
    def commenters(self, _value: str) -> None:
        """shlex.__init__ assigns its default; the property above decides instead."""


def expand_config_file(text: str) -> list[str]:
    """Split a ``--config`` file into argv tokens, so it takes exactly the command-line syntax.

    The caller puts these before the command-line tokens, so the command line adds to the file.
    """
    lexer = _ShellLexer(text, posix=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError as exc:
        raise OptionError(
            f"config file: {exc} in the token starting {lexer.token[:40]!r} (accepted: options "
            "as on the command line, shell-like quoting, '#' comments)"
        ) from None


# --- what `--help`, tracecap(8) and the bash completion say about these options ---------------
# (rendered by tracecap/usage.py; tests/unit/tracecap/test_usage.py checks every option above
# has its entry and every completed word parses)


def _capture_words() -> tuple[str, ...]:
    """Every ``--capture`` word bash offers; one ending in ``=`` or ``:`` waits for its value."""
    words: list[str] = []
    for kind in FILE_KINDS:
        words += [kind, f"{kind}=", f"{kind}:path="]
        words += [f"{kind}:type={t}" for t in FILE_TYPES]
        words += [f"{kind}:fd={fd}" for fd in FILE_FDS]
    words += [*PLAIN_KINDS, *NETWORK_WORDS, *(f"pcap:{split}" for split in PCAP_SPLITS)]
    words += [f"pcap-options:{o}" for o in PCAP_OPTIONS]
    words += [f"pcap-snaplen:{name}" for name in SNAPLEN_NAMES]
    words += ["pcap-rotate:", "net=", "dir:", "clear-dir", "limit:", "floor:", "index-rotate:"]
    return tuple(words)


#: Each ``--capture`` form and what it does.
CAPTURE_HELP: tuple[tuple[str, str], ...] = (
    ("write", "Contents of every written file."),
    (
        "write=/p*, write:path=/p*",
        f"Only files whose full path starts with /p (the * is required; at most "
        f"{MAX_PATH_FILTERS} prefixes of at most {MAX_PATH_FILTER_LEN} bytes).",
    ),
    (
        f"write:type={'|'.join(FILE_TYPES)}",
        "Only files of that type (elf: files whose content starts with \\x7fELF).",
    ),
    (f"write:fd={'|'.join(FILE_FDS)}", "Only files open as fd 0, 1 or 2 of the writing process."),
    ("read...", "The same forms for the contents of read files."),
    ("exec", "Executed binaries, once per (container, dev, inode, ctime)."),
    ("mem", "Memory regions made executable after being writable (unpackers)."),
    ("module", "Kernel module images (init_module, finit_module), once per image."),
    ("bpf", "BPF program bytecode at BPF_PROG_LOAD, once per sha256."),
    (", ".join(NETWORK_WORDS), "Packets, into pcapng files (pcap/single.pcap by default)."),
    (f"pcap:{','.join(PCAP_SPLITS)}", "How pcap files are split; any combination."),
    (
        "pcap-snaplen:" + "|".join((*SNAPLEN_NAMES, "<N>b", "<N>kb")),
        f"Payload kept after the L4 header: {DEFAULT_SNAPLEN} bytes (default), none, all, "
        f"N bytes, N KiB (at most {MAX_SNAPLEN} bytes).",
    ),
    (
        f"pcap-options:{'|'.join(PCAP_OPTIONS)}",
        "filtered: only packets of the protocols named by --events net_packet_*.",
    ),
    (
        "pcap-rotate:SIZE[,COUNT][,compress]",
        "Rotate every pcap file by size, as tcpdump -C: a file that would pass SIZE (<N>kb|mb|gb) "
        "is closed as <name>.<NNNNNN>.pcap (a whole pcapng of its own) and recorded in the index; "
        "COUNT closed files are kept (default: all), gzip-compressed with compress.",
    ),
    ("net=<iface>", "Packets crossing that interface only (turns packet capture on)."),
    (
        "dir:/path",
        f"Output root: artifacts go under /path/out (default {DEFAULT_DIR}/out). Absolute, "
        f"UTF-8, at most {MAX_DIR_BYTES} bytes.",
    ),
    ("clear-dir", "Empty <dir>/out before starting, without following symlinks."),
    (
        "limit:<N>mb|gb",
        "Disk budget for the whole output tree (allocated size, measured by each writer at "
        "most once a second): past it, new artifact data is refused and recorded as missing, "
        "with a budget record in the index. Default: none.",
    ),
    (
        "floor:<N>mb|gb",
        "Free space kept on the output's file system, with or without a limit: below it, new "
        f"artifact data is refused the same way. Default: {DEFAULT_FLOOR_BYTES >> 20} MiB.",
    ),
    (
        "index-rotate:SIZE[,COUNT][,compress]",
        "Rotate index.jsonl and events.jsonl by size, each on its own: it is closed as "
        "index.<NNNNNN>.jsonl (events.<NNNNNN>.jsonl), and the new one starts with a rotation "
        "record naming it; COUNT closed segments of each are kept (default: all).",
    ),
    ("artifact:KIND", "Accepted before every kind (artifact:write, artifact:exec, ...)."),
)

#: Each ``--scope`` expression and what it selects.
SCOPE_HELP: tuple[tuple[str, str], ...] = (
    ("comm=NAME[,NAME]", f"The process name is one of these (at most {MAX_COMM_LEN} bytes)."),
    ("comm!=NAME[,NAME]", "The process name is none of these."),
    ("pid=N[,N]", "The process is one of these."),
    ("uid=N[,N]", "The process runs as one of these users."),
    ("follow", "Also the descendants of matching processes, from the moment tracecap starts."),
    ("container", "Processes in any container."),
    ("container=ID[,ID]", "Processes in these containers (ids or prefixes of 12+ hex digits)."),
    ("host", "Processes in no container."),
)

_SCOPE_WORDS = ("comm=", "comm!=", "pid=", "uid=", "follow", "container", "container=", "host")


def _arg_names(dest: str) -> tuple[str, ...]:
    return tuple(name for name, d in _ARG_DESTS.items() if d == dest)


#: The options of ``tracecap run`` that the collector and writers take too, one per
#: ``_ARG_DESTS`` destination, in its order.
OPTIONS: tuple[Flag, ...] = (
    Flag(
        _arg_names("capture"),
        "OPT",
        "What to capture and where it goes: one of the capture forms below.",
        repeatable=True,
        words=_capture_words(),
        after=(
            ("dir:", "dir"),
            ("net=", "iface"),
            *((f"{kind}{sep}", "file") for kind in FILE_KINDS for sep in ("=", ":path=")),
        ),
    ),
    Flag(
        _arg_names("scope"),
        "EXPR",
        "Which processes are traced: one of the scope expressions below; all given must hold. "
        "Evaluated in the kernel, for every capture kind alike.",
        repeatable=True,
        words=_SCOPE_WORDS,
    ),
    Flag(
        _arg_names("trace"),
        "EXPR",
        "Tracee's older form of --scope; --trace event=NAME[,NAME] is --events.",
        repeatable=True,
        words=(*_SCOPE_WORDS, "event="),
    ),
    Flag(
        _arg_names("events"),
        "NAME[,NAME]",
        "With --output json, print only these events; net_packet_* names also select the "
        f"packets of pcap-options:filtered. Names: {', '.join(EVENT_NAMES)}.",
        repeatable=True,
        words=EVENT_NAMES,
        comma_list=True,
    ),
    Flag(
        _arg_names("output"),
        "FORMAT",
        "json: one JSON object per event on stdout, as Tracee v0.17 prints it (its fields, "
        "event ids and arguments; file I/O one event per syscall); json:/path/file: the same "
        "into that file (written by root through checked directories, 0640); none (the "
        "default): no events. option:rotate-size=SIZE,rotate-count=N,rotate-compress rotates "
        "the file (closed as <stem>.<NNNNNN><suffix>[.gz], COUNT kept; default all). "
        f"{OUTPUT_MERGED_IO}: one file I/O event per run of consecutive syscalls on one open "
        "file, as the bus carries it (count and returnValue its byte total). Tracee's "
        "format:json, option:parse-arguments and option:detect-syscall are accepted.",
        repeatable=True,
        words=(
            *OUTPUT_FORMATS,
            OUTPUT_FILE_PREFIX,
            *OUTPUT_NOOPS,
            OUTPUT_MERGED_IO,
            *(f"option:{word}" for word in OUTPUT_ROTATE_WORDS),
        ),
    ),
    Flag(
        _arg_names("server"),
        "WHAT",
        "Tracee's --server: metrics serves Prometheus metrics on /metrics, healthz a health "
        "check on /healthz (tracecap exporter, started with the writers), at http-address="
        f"HOST:PORT (default {DEFAULT_HTTP_HOST}:{DEFAULT_HTTP_PORT}).",
        repeatable=True,
        words=("metrics", "healthz", "http-address="),
    ),
)

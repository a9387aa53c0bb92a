"""Names for artifacts built from untrusted process data.

Every byte of ``comm``, a basename or a BPF program name is chosen by the traced process
(``prctl(PR_SET_NAME)`` can set ``..``, ``kworker/0:1`` or invalid UTF-8), so this module is the
only place where such data becomes part of a path. It is pure: no I/O, fully fuzzable.
"""

from __future__ import annotations

import re

from tracecap.text import safe_component

_CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")
_DIRECTIONS = ("write", "read")


def container_dir(container_id: str) -> str:
    """The top-level directory for a container; anything but a hex id is refused, not cleaned.

    ``fullmatch`` rather than ``$``: ``$`` would accept a trailing newline.
    """
    if container_id in ("", "host"):
        return "host"
    if not _CONTAINER_ID.fullmatch(container_id):
        raise ValueError(f"invalid container id {container_id[:80]!r}")
    return container_id


def _check_number(label: str, value: int) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{label} must be a non-negative int, got {value!r}")


def file_artifact_name(direction: str, dev: int, inode: int, pid: int | None) -> str:
    """Tracee's name for a captured file (``write.dev-<D>.inode-<I>[.pid-<P>]``)."""
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
    _check_number("dev", dev)
    _check_number("inode", inode)
    name = f"{direction}.dev-{dev}.inode-{inode}"
    if pid is not None:
        _check_number("pid", pid)
        name += f".pid-{pid}"
    return name


# -- whole-object artifacts (exec., mem., module., bpf.) ------------------------------------------

#: Linux's limit on one path component.
NAME_MAX = 255
#: Room kept free in every object artifact name for the ``.<n>`` the writer appends when the name
#: is already taken (it never replaces an existing file), so the suffixed name still fits.
COLLISION_ROOM = 8
#: ``safe_component`` may add ``~`` and 8 hex digits past its ``max_len``.
_CUT_MARK = 9
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: A stand-in hash, to build a whole name and cut its hash off again.
_NO_SHA256 = "0" * 64
#: What ends the name of an artifact that is not the whole object, in place of its sha256.
PARTIAL_SUFFIX = ".partial"
_MEMFD_PREFIX = b"memfd:"
_DELETED_SUFFIX = b" (deleted)"
#: Prefix of the basename of an executed memfd, so an analyst sees at a glance that the binary
#: never existed on disk (Tracee does not capture those at all).
MEMFD_BASENAME_PREFIX = b"memfd_"


def _bounded_component(prefix: str, raw: bytes, suffix: str = "") -> str:
    """``prefix + safe_component(raw) + suffix`` cut so the whole stays within NAME_MAX with
    room for a collision suffix; the fixed parts are ASCII, so characters are bytes."""
    room = NAME_MAX - COLLISION_ROOM - len(prefix) - len(suffix) - _CUT_MARK
    if room < 1:
        raise ValueError(f"no room for a name after {prefix!r}...{suffix!r}")
    return f"{prefix}{safe_component(raw, max_len=room)}{suffix}"


def _check_sha256(sha256: str) -> None:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a lowercase sha256 hex digest: {sha256!r:.80}")


def exec_basename(path: bytes, memfd: bool) -> bytes:
    """The name an executed binary is stored under, before sanitising.

    The last component of ``path``, except for memfd binaries: the kernel names them
    ``memfd:<name> (deleted)`` (``/memfd:...`` through d_path), and the memfd name may itself hold
    ``/``, so everything after ``memfd:`` is kept, `` (deleted)`` (which every memfd carries) is
    dropped, and ``memfd_`` is prepended. A binary flagged ``memfd`` whose path is not of that form
    (``/dev/fd/3`` after fexecve) still gets ``memfd_`` before its last component, so the flag is
    visible in the name either way.
    """
    bare = path[1:] if path.startswith(b"/") else path
    if bare.startswith(_MEMFD_PREFIX):
        name = bare[len(_MEMFD_PREFIX) :]
        if name.endswith(_DELETED_SUFFIX):
            name = name[: -len(_DELETED_SUFFIX)]
        return MEMFD_BASENAME_PREFIX + name
    base = path.rsplit(b"/", 1)[-1]
    return MEMFD_BASENAME_PREFIX + base if memfd else base


def exec_artifact_name(ts: int, path: bytes, memfd: bool) -> str:
    """``exec.<ts>.<basename>``; an empty basename (path ending in ``/``) becomes ``_``."""
    _check_number("ts", ts)
    return _bounded_component(f"exec.{ts}.", exec_basename(path, memfd))


def mem_artifact_name(pid: int, ts: int) -> str:
    """``mem.pid-<P>.ts-<ts>``: one region per name, since ts is in nanoseconds."""
    _check_number("pid", pid)
    _check_number("ts", ts)
    return f"mem.pid-{pid}.ts-{ts}"


def module_artifact_name(dev: int, inode: int, pid: int, sha256: str) -> str:
    """``module.dev-<D>.inode-<I>.pid-<P>.<sha256>`` for a module loaded from a file
    (finit_module), ``module.pid-<P>.<sha256>`` when there is no file (init_module: dev and
    inode both 0)."""
    _check_number("dev", dev)
    _check_number("inode", inode)
    _check_number("pid", pid)
    _check_sha256(sha256)
    if dev or inode:
        return f"module.dev-{dev}.inode-{inode}.pid-{pid}.{sha256}"
    return f"module.pid-{pid}.{sha256}"


def module_partial_name(dev: int, inode: int, pid: int, ts: int) -> str:
    """``module.dev-<D>.inode-<I>.pid-<P>.ts-<ts>.partial`` (without ``dev``/``inode`` for
    init_module): an image not captured whole. The sha256 of what was captured names no
    image, so it is not in the name (Tracee too leaves the hash off an image whose last
    chunk never came); ``ts`` keeps the names of two such attempts apart."""
    _check_number("ts", ts)
    whole = module_artifact_name(dev, inode, pid, _NO_SHA256)
    return f"{whole.removesuffix(_NO_SHA256)}ts-{ts}{PARTIAL_SUFFIX}"


def bpf_artifact_name(prog_name: bytes, pid: int, sha256: str) -> str:
    """``bpf.name-<name>.pid-<P>.<sha256>``.

    An unnamed program keeps Tracee's ``bpf.name-.pid-...`` rather than ``safe_component``'s
    ``_``: the fixed prefix already makes the name one safe component, and an empty name then
    stays distinguishable from a program literally named ``_``.
    """
    _check_number("pid", pid)
    _check_sha256(sha256)
    suffix = f".pid-{pid}.{sha256}"
    if not prog_name:
        return f"bpf.name-{suffix}"
    return _bounded_component("bpf.name-", prog_name, suffix)


def bpf_partial_name(prog_name: bytes, pid: int, ts: int) -> str:
    """``bpf.name-<name>.pid-<P>.ts-<ts>.partial``: a program whose instructions did not all
    arrive, named like ``module_partial_name``."""
    _check_number("ts", ts)
    whole = bpf_artifact_name(prog_name, pid, _NO_SHA256)
    # ``.ts-<ts>.partial`` (at most 32 characters) is shorter than the ``.<sha256>`` it replaces
    return f"{whole.removesuffix(_NO_SHA256)}ts-{ts}{PARTIAL_SUFFIX}"


def partial_name(epoch: int, obj_id: int) -> str:
    """The hidden temporary name an object is assembled under before it gets its final name."""
    if type(epoch) is not int or type(obj_id) is not int:
        raise ValueError(f"epoch and obj_id must be ints, got {epoch!r}, {obj_id!r}")
    return f".partial.{epoch}.{obj_id}"


# -- pcap files (net.packet.) ---------------------------------------------------------------------

PCAP_SUFFIX = ".pcap"
#: Pcap folders and files are named after the first 11 characters of the container id
#: (``<cid11>`` in README "Output layout").
CONTAINER_SHORT_LEN = 11


def container_short(container_id: str) -> str:
    """``<cid11>``: the first 11 characters of a valid container id, or ``host``."""
    return container_dir(container_id)[:CONTAINER_SHORT_LEN]


def pcap_process_name(comm: bytes, tid: int, start_time: int) -> str:
    """``<comm>_<tid>_<start_time>.pcap``: one file per thread, as Tracee splits ``process``.

    Unambiguous although comm may hold ``_``: tid and start time are digits, so the name is read
    from the right; the start time keeps a reused tid from landing in a dead thread's file.
    """
    _check_number("tid", tid)
    _check_number("start_time", start_time)
    return f"{safe_component(comm)}_{tid}_{start_time}{PCAP_SUFFIX}"


def pcap_command_name(comm: bytes) -> str:
    """``<comm>.pcap``: every process of that command name in one container."""
    return f"{safe_component(comm)}{PCAP_SUFFIX}"


def pcap_container_name(container_id: str) -> str:
    """``<cid11>.pcap``: everything one container (or the host) sent and received."""
    return f"{container_short(container_id)}{PCAP_SUFFIX}"


def comment_text(raw: bytes) -> str:
    """Kernel bytes as one printable, space-free token for a ``key=value`` packet comment.

    Valid UTF-8 letters stay readable (a comm in Cyrillic shows as such in Wireshark). Spaces,
    controls and every other unprintable character are escaped, so a comm can neither break the
    line nor forge ``key=value`` fields: ``\\xNN`` below 0x80, ``\\uNNNN``/``\\UNNNNNNNN`` above.
    An undecodable byte is ``\\xNN`` with NN >= 0x80, which no character uses, and ``\\`` is
    doubled, so the escaping can be undone exactly.
    """
    out = []
    for ch in raw.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, smuggled by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable() and not ch.isspace():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)

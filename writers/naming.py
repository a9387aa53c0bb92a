"""Names for artifacts built from untrusted process data.

Every byte of ``comm``, a basename or a BPF program name is chosen by the traced process
(``prctl(PR_SET_NAME)`` can set ``..``, ``kworker/0:1`` or invalid UTF-8), so this module is the
only place where such data becomes part of a path. It is pure: no I/O, fully fuzzable.
"""

from __future__ import annotations

import hashlib
import re

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+=,@-.")
_CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")
_DIRECTIONS = ("write", "read")

#: What ``safe_component`` returns for empty input; ``_`` keeps names readable, and an empty comm
#: colliding with a comm that is literally ``_`` costs nothing forensic (the index keeps the raw).
EMPTY_COMPONENT = "_"


def _escape(raw: bytes) -> str:
    """Percent-encode: injective, ASCII-only, and ``%`` itself is escaped so decoding is exact."""
    out = []
    for i, byte in enumerate(raw):
        if byte in _SAFE and not (byte == 0x2E and i == 0):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def safe_component(raw: bytes, max_len: int = 96) -> str:
    """One path component that cannot escape its directory, whatever the process chose.

    A leading ``.`` is escaped so the result is never hidden, ``.`` or ``..``. Past ``max_len``
    the name is cut (never inside a ``%XX`` escape) and ``~`` plus 8 hex digits of the raw bytes'
    sha256 are appended: ``~`` is always escaped otherwise, so a cut name cannot collide with an
    uncut one, and two long inputs sharing a prefix still get distinct names. Length is at most
    ``max_len + 9``.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    name = _escape(raw)
    if not name:
        return EMPTY_COMPONENT
    if len(name) <= max_len:
        return name
    cut = max_len
    # An escape is 3 characters; if one straddles the cut, cut before its '%'.
    for back in (1, 2):
        if cut - back >= 0 and name[cut - back] == "%":
            cut -= back
            break
    digest = hashlib.sha256(raw).hexdigest()[:8]
    return f"{name[:cut]}~{digest}"


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


def text_field(raw: bytes) -> str:
    """Kernel bytes as a JSON string: invalid UTF-8 stays visible as ``\\xNN`` instead of failing
    or being silently replaced; ``json.dumps`` then escapes control characters to keep one line."""
    return raw.decode("utf-8", "backslashreplace")


def is_utf8(raw: bytes) -> bool:
    """Whether ``text_field`` is lossless, i.e. whether a ``*_hex`` twin field is needed."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

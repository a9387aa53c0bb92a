"""Kernel bytes as text: JSON fields and path components from what a process chose.

Every byte of ``comm``, a path or a program name is the traced process's choice (invalid UTF-8,
``..``, ``/``), so the writers, the front end and the tools all turn it into text here, one way.
Pure.
"""

from __future__ import annotations

import hashlib

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+=,@-.")
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


def text_fields(name: str, raw: bytes) -> dict[str, str]:
    """``{name: text}`` plus ``{name_hex: hex}`` when the text is lossy, so the index always lets
    an analyst recover the exact bytes a process used."""
    fields = {name: text_field(raw)}
    if not is_utf8(raw):
        fields[f"{name}_hex"] = raw.hex()
    return fields


PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4


def prot_string(prot: int) -> str:
    """PROT_* bits as ``ls``-style ``rwx`` (``rw-``, ``r-x``), the form analysts read."""
    return "".join(
        letter if prot & bit else "-"
        for bit, letter in ((PROT_READ, "r"), (PROT_WRITE, "w"), (PROT_EXEC, "x"))
    )

"""Ring-buffer records as the kernel sends them, for the decoders' and the collector's tests.

Built by member name from the declarations in bpf/records.py (the ones whose offsets the ABI
test checks against the object's BTF), so a test that decodes what these build checks the
decoders' unpacking order against the C layout. Each builder presets the record's kind and
the lengths its data implies; any other value not given is zero.
"""

from __future__ import annotations

from typing import Any

from bpf import records
from bpf.records import CStruct


def pack(layout: CStruct, **values: Any) -> bytes:
    """``layout`` packed from the values named as in ``layout.Raw`` (a nested struct's inline);
    padding and every value not given are zero."""
    names = layout.Raw._fields
    unknown = set(values) - set(names)
    if unknown:
        raise TypeError(f"{layout.c_name} has no {sorted(unknown)}")
    zeros = layout.struct.unpack(bytes(layout.size))
    return layout.struct.pack(*(values.get(n, z) for n, z in zip(names, zeros, strict=True)))


def file_event(*, path: bytes = b"", path_len: int | None = None, **values: Any) -> bytes:
    """A tc_file_event; ``path_len`` is the length of ``path`` unless given."""
    return pack(
        records.TC_FILE_EVENT, kind=records.REC_FILE_EVENT, path=path,
        path_len=len(path) if path_len is None else path_len, **values,
    )  # fmt: skip


def file_data(
    io_id: int,
    io_off: int,
    data: bytes,
    *,
    want: int | None = None,
    flags: int = 0,
    length: int | None = None,
    kind: int = records.REC_FILE_DATA,
) -> bytes:
    """A tc_file_data and its payload ``data``; ``want`` and ``length`` (the record's ``len``)
    are the payload's length unless given. ``kind`` REC_OBJ_DATA makes an object's chunk."""
    head = pack(
        records.TC_FILE_DATA, kind=kind, len=len(data) if length is None else length,
        io_id=io_id, io_off=io_off, want=len(data) if want is None else want, flags=flags,
    )  # fmt: skip
    return head + data


def file_cont(**values: Any) -> bytes:
    """A tc_file_cont alone: the kernel always follows it with its first chunk (file_data)."""
    return pack(records.TC_FILE_CONT, kind=records.REC_FILE_CONT, **values)


def file_xfer(
    *,
    path: bytes = b"",
    other_path: bytes = b"",
    src: dict[str, Any] | None = None,
    dst: dict[str, Any] | None = None,
    **event: Any,
) -> bytes:
    """A tc_file_xfer: its tc_file_event from ``path`` and ``event`` (named as in
    TC_FILE_EVENT), then both ends (``src``, ``dst``: named as in TC_XFER_FILE)."""
    head = pack(
        records.TC_FILE_EVENT, kind=records.REC_FILE_XFER, path=path, path_len=len(path), **event
    )
    ends = {f"src_{k}": v for k, v in (src or {}).items()}
    ends |= {f"dst_{k}": v for k, v in (dst or {}).items()}
    tail = pack(records.TC_XFER, other_path=other_path, other_path_len=len(other_path), **ends)
    return head + tail


def exec_event(*, filename: bytes = b"", argv: bytes = b"", **values: Any) -> bytes:
    """A tc_exec_event; ``argv`` is NUL-separated, as the kernel copies it."""
    return pack(
        records.TC_EXEC_EVENT, kind=records.REC_EXEC_EVENT, filename=filename,
        filename_len=len(filename), argv=argv, argv_len=len(argv), **values,
    )  # fmt: skip


def proc_event(**values: Any) -> bytes:
    """A tc_proc_event: a fork unless ``kind`` says REC_EXIT."""
    return pack(records.TC_PROC_EVENT, **{"kind": records.REC_FORK, **values})


def mem_event(**values: Any) -> bytes:
    return pack(records.TC_MEM_EVENT, kind=records.REC_MEM_EVENT, **values)


def module_event(*, params: bytes = b"", path: bytes = b"", **values: Any) -> bytes:
    return pack(
        records.TC_MODULE_EVENT, kind=records.REC_MODULE_EVENT, params=params,
        params_len=len(params), path=path, path_len=len(path), **values,
    )  # fmt: skip


def bpf_event(**values: Any) -> bytes:
    return pack(records.TC_BPF_EVENT, kind=records.REC_BPF_EVENT, **values)


def packet(data: bytes = b"", **values: Any) -> bytes:
    """A tc_packet and the ``data`` captured of it."""
    return pack(records.TC_PACKET, kind=records.REC_PACKET, len=len(data), **values) + data


def sock_owner(**values: Any) -> bytes:
    return pack(records.TC_SOCK_OWNER, kind=records.REC_SOCK_OWNER, **values)


def dropped_io(**values: Any) -> tuple[bytes, bytes]:
    """A file_drops entry: (tc_drop_key, tc_drop_val), each given its own members."""
    key = {n: v for n, v in values.items() if n in records.TC_DROP_KEY.Raw._fields}
    val = {n: v for n, v in values.items() if n not in key}
    return pack(records.TC_DROP_KEY, **key), pack(records.TC_DROP_VAL, **val)

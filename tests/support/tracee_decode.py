"""A strict decoder of Tracee v0.17 JSON events, mirroring Go's ``json.Unmarshal`` into
``trace.Event`` (types/trace/trace.go), then checking an event against its declaration in
``tracecap.schemas``.

What Go rejects is rejected here: a field of the wrong JSON type, an int out of its Go type's
range, ``eventId`` not a quoted int, an argument whose numeric value does not fit its ``type``
string or whose type string Go does not know for a number, a ``trace.Proto*`` value missing a
member Go's converter requires. ``strict`` adds what Go lets pass but a consumer written for
Tracee's output relies on: every envelope field present (``omitempty`` ones aside), no field
Tracee does not print, and, with a schema, exactly the declared arguments (names, order, type
strings, and values of the type each string says).
"""

from __future__ import annotations

import json
import re
from typing import Any

from tracecap import schemas


class DecodeError(ValueError):
    """The event would not decode into trace.Event, or does not follow its schema."""


_INT_RANGES = {
    "int": (-(2**63), 2**63 - 1),
    "uint": (0, 2**64 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "u8": (0, 2**8 - 1),
    "u16": (0, 2**16 - 1),
    "u32": (0, 2**32 - 1),
    "u64": (0, 2**64 - 1),
}
#: Argument type strings whose numeric value Go converts (trace.Argument.UnmarshalJSON), and
#: the Go type it must fit. Any other type string with a number value is an error in Go.
_NUMERIC_ARG = {
    **dict.fromkeys(("int", "pid_t", "uid_t", "gid_t", "mqd_t", "clockid_t", "const clockid_t",
                     "key_t", "key_serial_t", "timer_t", "landlock_rule_type"), "int32"),
    "long": "int64",
    **dict.fromkeys(("unsigned int", "u32", "mode_t", "dev_t"), "u32"),
    **dict.fromkeys(("unsigned long", "u64", "off_t", "size_t"), "u64"),
    **dict.fromkeys(("unsigned short", "old_uid_t", "old_gid_t", "umode_t", "u16", "uint16"),
                    "u16"),
    **dict.fromkeys(("u8", "uint8"), "u8"),
}  # fmt: skip
_FLOATS = frozenset({"float", "float64"})
_STRING_ARGS = frozenset({"const char*", "char*", "string"})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, kind: str, where: str) -> None:
    if not _is_int(value):
        raise DecodeError(f"{where}: {value!r} is not a JSON integer ({kind})")
    low, high = _INT_RANGES[kind]
    if not low <= value <= high:
        raise DecodeError(f"{where}: {value} overflows Go's {kind}")


def _check_kind(value: Any, kind: str, where: str) -> None:
    """One envelope or struct member, by the kinds tracecap.schemas names."""
    if value is None and kind not in ("int-string",):
        return  # Go leaves the zero value for null
    if kind in _INT_RANGES:
        _int(value, kind, where)
    elif kind == "int-string":
        if not isinstance(value, str) or not re.fullmatch(r"-?[0-9]+", value):
            raise DecodeError(f"{where}: {value!r} is not an int as a JSON string (,string)")
        _int(int(value), "int", where)
    elif kind == "str":
        if not isinstance(value, str):
            raise DecodeError(f"{where}: {value!r} is not a string")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise DecodeError(f"{where}: {value!r} is not a bool")
    elif kind in ("object",):
        if not isinstance(value, dict):
            raise DecodeError(f"{where}: {value!r} is not an object")
    elif kind in ("list", "list-or-null"):
        if not isinstance(value, list):
            raise DecodeError(f"{where}: {value!r} is not an array")
    else:
        raise AssertionError(f"unknown kind {kind}")


def _struct(value: Any, fields: dict[str, str], where: str, strict: bool) -> None:
    _check_kind(value, "object", where)
    if value is None:
        return
    for key, member in value.items():
        if key not in fields:
            if strict:
                raise DecodeError(f"{where}: unknown member {key!r}")
            continue
        _check_kind(member, fields[key], f"{where}.{key}")


def decode_envelope(event: Any, strict: bool = True, optional: tuple[str, ...] = ()) -> None:
    """The trace.Event fields (arguments decoded by ``decode_argument``); ``optional`` names
    fields a strict check lets be absent."""
    if not isinstance(event, dict):
        raise DecodeError(f"an event is a JSON object, not {type(event).__name__}")
    known = dict(schemas.ENVELOPE)
    for key, value in event.items():
        if key not in known:
            if strict:
                raise DecodeError(f"unknown envelope field {key!r}")
            continue
        _check_kind(value, known[key], key)
    if strict:
        missing = [
            k
            for k in known
            if k not in event and k not in schemas.ENVELOPE_OMITEMPTY and k not in optional
        ]
        if missing:
            raise DecodeError(f"envelope fields missing: {missing}")
    _struct(event.get("container"), schemas.CONTAINER_FIELDS, "container", strict)
    _struct(event.get("kubernetes"), schemas.KUBERNETES_FIELDS, "kubernetes", strict)
    _struct(event.get("contextFlags"), schemas.CONTEXT_FLAGS, "contextFlags", strict)
    for i, policy in enumerate(event.get("matchedPolicies") or []):
        _check_kind(policy, "str", f"matchedPolicies[{i}]")
    for i, address in enumerate(event.get("stackAddresses") or []):
        _check_kind(address, "u64", f"stackAddresses[{i}]")
    for i, arg in enumerate(event.get("args") or []):
        decode_argument(arg, f"args[{i}]", strict)


def _members(value: Any, fields: dict[str, str], where: str) -> None:
    """Go's jsonConvertTo* helpers: every member present, of its type (extras ignored)."""
    if not isinstance(value, dict):
        raise DecodeError(f"{where}: type error ({value!r} is not an object)")
    for key, kind in fields.items():
        if key not in value:
            raise DecodeError(f"{where}: key not found in argMap {key}")
        member = value[key]
        here = f"{where}.{key}"
        if kind in schemas.DNS_NESTED_FIELDS:
            if member is not None:
                _members(member, schemas.DNS_NESTED_FIELDS[kind], here)
        elif kind == "dns-opts":
            for j, opt in enumerate(_list(member, here)):
                _members(opt, schemas.DNS_NESTED_FIELDS["dns-opt"], f"{here}[{j}]")
        elif kind == "dns-questions":
            for j, q in enumerate(_list(member, here)):
                _members(q, schemas.DNS_QUESTION_FIELDS, f"{here}[{j}]")
        elif kind == "dns-records":
            for j, rr in enumerate(_list(member, here)):
                _members(rr, schemas.DNS_RECORD_FIELDS, f"{here}[{j}]")
        elif kind == "strings":
            for j, text in enumerate(_list(member, here)):
                _check_kind(text, "str", f"{here}[{j}]")
        elif kind == "headers":
            if member is not None:
                if not isinstance(member, dict):
                    raise DecodeError(f"{here}: couldn't convert key to http.Header")
                for name, values in member.items():
                    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                        raise DecodeError(f"{here}.{name}: couldn't convert key to http.Header")
        elif member is not None:
            # Go reads numbers with json.Number.Int64 and truncates to the member's width
            _check_kind(member, "int64" if kind in _INT_RANGES or kind == "int" else kind, here)


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DecodeError(f"{where}: type error ({value!r} is not an array)")
    return value


def decode_argument(arg: Any, where: str, strict: bool = True) -> None:
    """trace.Argument.UnmarshalJSON: name and type strings, the value by its type string."""
    if not isinstance(arg, dict):
        raise DecodeError(f"{where}: an argument is an object")
    if strict and set(arg) != {"name", "type", "value"}:
        raise DecodeError(f"{where}: members {sorted(arg)}, not name, type and value")
    for key in ("name", "type"):
        _check_kind(arg.get(key), "str", f"{where}.{key}")
    typ, value = arg.get("type") or "", arg.get("value")
    here = f"{where} ({arg.get('name')}: {typ})"
    if value is None:
        return
    if _is_int(value) or isinstance(value, float):
        if typ.endswith("*"):
            _int(value, "u64", here)
        elif typ in _NUMERIC_ARG:
            _int(value, _NUMERIC_ARG[typ], here)
        elif typ not in _FLOATS:
            raise DecodeError(f"{here}: unrecognized argument type {typ} of a number")
        return
    if typ in ("const char*const*", "const char**"):
        if not isinstance(value, list):
            raise DecodeError(f"{here}: {value!r} is not an array (Go's type assertion panics)")
    elif typ in schemas.PROTO_FIELDS:
        _members(value, schemas.PROTO_FIELDS[typ], here)


#: The JSON a printed type string's value must be, beyond what Go checks (strict schema check).
def _value_matches(shown: str, value: Any) -> bool:
    if shown in _STRING_ARGS:
        return isinstance(value, str)
    if shown == "bool":
        return isinstance(value, bool)
    if shown in ("const char**", "const char*const*"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if shown.endswith("*"):  # a pointer: a number, or "0x..." as parse-arguments prints it
        return _is_int(value) or (
            isinstance(value, str) and bool(re.fullmatch(r"0x[0-9a-f]+", value))
        )
    if shown in _NUMERIC_ARG:
        return _is_int(value)
    return shown in schemas.PROTO_FIELDS and isinstance(value, dict)


def check_schema(event: dict[str, Any]) -> schemas.EventSchema:
    """The event against its declaration: id, argsNum, argument names, order, types, values."""
    name = event.get("eventName")
    if name not in schemas.SCHEMAS:
        raise DecodeError(f"no schema for event {name!r}")
    schema = schemas.SCHEMAS[name]
    if event.get("eventId") != str(schema.id):
        raise DecodeError(f"{name}: eventId {event.get('eventId')!r}, Tracee's is {schema.id}")
    args = event.get("args") or []
    if event.get("argsNum") != len(args):
        raise DecodeError(f"{name}: argsNum {event.get('argsNum')} with {len(args)} args")
    got = [(a.get("name"), a.get("type")) for a in args]
    want = [(a.name, a.shown) for a in schema.args]
    if got != want:
        raise DecodeError(f"{name}: arguments {got}, the schema's are {want}")
    for arg, declared in zip(args, schema.args, strict=True):
        if not _value_matches(declared.shown, arg["value"]):
            raise DecodeError(f"{name}: {declared.name} {arg['value']!r} is no {declared.shown}")
    return schema


def decode(
    line: str | bytes, strict: bool = True, optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One printed line: decoded as Go would, and with ``strict`` checked against its schema."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from exc
    decode_envelope(event, strict, optional)
    if strict:
        check_schema(event)
    return event

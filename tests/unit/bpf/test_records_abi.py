"""bpf/records.py against the compiled object: sizes, offsets and constants must match the C side.

The sizes and offsets checked are those of the CStruct declarations, the same ones the decoders'
Structs are built from; each declared member must also be the C member of that name, in order,
with the format its BTF type unpacks as.

The one unit test that touches the build: it runs ``make -C bpf`` when the object is missing or
older than its sources, then reads the object's BTF with ``bpftool btf dump file ... -j``.
Without the tools it skips locally and fails under CI.
"""

import json
import re
import subprocess
from typing import Any

import pytest

from bpf import records
from tests.support.bpf_object import BPF_DIR, OBJECT, built_object, need

HEADER = BPF_DIR / "records.h"


@pytest.fixture(scope="module")
def btf() -> dict[str, Any]:
    bpftool = need("bpftool")
    built_object()
    out = subprocess.run(
        [bpftool, "btf", "dump", "file", str(OBJECT), "-j"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    types = json.loads(out.stdout)["types"]
    return {"by_id": {t["id"]: t for t in types}, "types": types}


def _named(btf: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    found = [t for t in btf["types"] if t["kind"] == kind and t.get("name") == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} definitions in the BTF"
    return found[0]


def _resolve(btf: dict[str, Any], type_id: int) -> dict[str, Any]:
    t = btf["by_id"][type_id]
    while t["kind"] in ("CONST", "VOLATILE", "TYPEDEF", "RESTRICT", "TYPE_TAG"):
        t = btf["by_id"][t["type_id"]]
    return t


#: struct codes of the integer types, by (size, signed)
_INT_CODES = {
    (1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h",
    (4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q",
}  # fmt: skip


def _size(btf: dict[str, Any], type_id: int) -> int:
    t = _resolve(btf, type_id)
    return t["nr_elems"] * _size(btf, t["type_id"]) if t["kind"] == "ARRAY" else t["size"]


def _code(btf: dict[str, Any], type_id: int) -> str:
    """How a member of this type must be declared in records.py: an integer's struct code, the
    name of a nested struct, ``"NI"`` for an array of N integers, ``"Ns"`` for N bytes read
    whole (char arrays, arrays of them or of structs)."""
    t = _resolve(btf, type_id)
    if t["kind"] == "INT":
        return _INT_CODES[t["size"], t["encoding"] == "SIGNED"]
    if t["kind"] == "STRUCT":
        return t["name"]
    assert t["kind"] == "ARRAY", t
    element = _code(btf, t["type_id"])
    if element in _INT_CODES.values() and element != "b":  # "b" is char: text
        return f"{t['nr_elems']}{element}"
    return f"{_size(btf, type_id)}s"


@pytest.mark.parametrize("layout", records.STRUCTS, ids=lambda s: s.c_name)
def test_declared_members_are_the_c_members_with_their_formats(btf, layout):
    members = _named(btf, "STRUCT", layout.c_name)["members"]
    assert [m["name"] for m in members] == [name for name, _ in layout.members]
    for member, (name, fmt) in zip(members, layout.members, strict=True):
        declared = fmt.c_name if isinstance(fmt, records.CStruct) else fmt
        assert _code(btf, member["type_id"]) == declared, f"{layout.c_name}.{name}"


def test_every_struct_of_the_header_is_declared():
    assert set(re.findall(r"\bstruct\s+(tc_\w+)\s*\{", _header())) == set(records.LAYOUT)
    assert [s.c_name for s in records.STRUCTS] == list(records.LAYOUT)


@pytest.mark.parametrize("struct", sorted(records.SIZES))
def test_struct_size(btf, struct):
    assert _named(btf, "STRUCT", struct)["size"] == records.SIZES[struct]


@pytest.mark.parametrize("struct", sorted(records.LAYOUT))
def test_field_offsets(btf, struct):
    members = {m["name"]: m for m in _named(btf, "STRUCT", struct)["members"]}
    offsets = {}
    for name in records.LAYOUT[struct]:
        assert name in members, f"{struct}.{name} is not in the object"
        assert members[name]["bits_offset"] % 8 == 0, f"{struct}.{name} is a bitfield"
        offsets[name] = members[name]["bits_offset"] // 8
    assert offsets == records.LAYOUT[struct]
    # every real field is described; only padding may be left out of LAYOUT
    assert {n for n in members if not n.startswith("_pad")} == set(records.LAYOUT[struct])


def test_layout_and_sizes_cover_the_same_structs():
    assert set(records.LAYOUT) == set(records.SIZES)


def test_cfg_is_the_only_rodata_variable_at_offset_0(btf):
    rodata = _named(btf, "DATASEC", ".rodata")
    variables = [(btf["by_id"][v["type_id"]], v) for v in rodata["vars"]]
    assert [var["name"] for var, _ in variables] == ["cfg"]
    var, entry = variables[0]
    assert var["kind"] == "VAR"
    assert entry["offset"] == 0
    assert entry["size"] == records.CONFIG.size
    target = _resolve(btf, var["type_id"])
    assert (target["kind"], target["name"], target["size"]) == (
        "STRUCT", "tc_config", records.CONFIG.size,
    )  # fmt: skip


def test_cfg_symbol_is_at_start_of_rodata():
    """The .o's DATASEC offsets are fixed up by libbpf at open; the ELF symbol is definitive."""
    readelf = need("readelf")
    if not OBJECT.exists():
        pytest.fail(f"{OBJECT} missing (the btf fixture builds it)")
    sections = subprocess.run(
        [readelf, "-SW", str(OBJECT)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    m = re.search(r"\[\s*(\d+)\]\s+\.rodata\s", sections)
    assert m, ".rodata section not found"
    rodata_index = m.group(1)
    symbols = subprocess.run(
        [readelf, "-sW", str(OBJECT)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    rows = [line.split() for line in symbols.splitlines() if line.split()[-1:] == ["cfg"]]
    assert len(rows) == 1, rows
    _num, value, size, kind, _bind, _vis, ndx, _name = rows[0]
    assert (int(value, 16), int(size), kind, ndx) == (0, records.CONFIG.size, "OBJECT",
                                                     rodata_index)  # fmt: skip


# --- constants and enums parsed from records.h ---


def _header() -> str:
    text = HEADER.read_text(encoding="utf-8")
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", " ", text)


def _defines() -> dict[str, int]:
    return {
        name: int(value, 0)
        for name, value in re.findall(r"^#define\s+(TC_\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*$",
                                      _header(), flags=re.MULTILINE)
    }  # fmt: skip


def _enum(name: str) -> list[tuple[str, int]]:
    m = re.search(rf"enum\s+{name}\s*\{{(.*?)\}}\s*;", _header(), flags=re.DOTALL)
    assert m, f"enum {name} not found in {HEADER}"
    members, value = [], 0
    for item in (part.strip() for part in m.group(1).split(",")):
        if not item:
            continue
        ident, _, explicit = (s.strip() for s in item.partition("="))
        if explicit:
            value = int(explicit, 0)
        members.append((ident, value))
        value += 1
    return members


#: Every numeric #define of records.h and the Python constant that mirrors it.
DEFINES = [
    ("TC_COMM_LEN", records.COMM_LEN),
    ("TC_PATH_BUF", records.PATH_BUF),
    ("TC_NAME_SLACK", records.NAME_SLACK),
    ("TC_CHUNK", records.CHUNK),
    ("TC_MAX_PREFIXES", records.MAX_PREFIXES),
    ("TC_PREFIX_LEN", records.PREFIX_LEN),
    ("TC_FILENAME_BUF", records.FILENAME_BUF),
    ("TC_ARGV_BUF", records.ARGV_BUF),
    ("TC_PARAMS_BUF", records.PARAMS_BUF),
    ("TC_PROG_NAME_LEN", records.PROG_NAME_LEN),
    ("TC_EXEC_ARGV_TRUNCATED", records.EXEC_ARGV_TRUNCATED),
    ("TC_EXEC_FILENAME_TRUNCATED", records.EXEC_FILENAME_TRUNCATED),
    ("TC_EXEC_MEMFD", records.EXEC_MEMFD),
    ("TC_EXEC_DELETED", records.EXEC_DELETED),
    ("TC_EXEC_COPIED", records.EXEC_COPIED),
    ("TC_EXEC_SCRIPT", records.EXEC_SCRIPT),
    ("TC_EXEC_SCRIPT_FILE", records.EXEC_SCRIPT_FILE),
    ("TC_EXEC_SCRIPT_MEMFD", records.EXEC_SCRIPT_MEMFD),
    ("TC_EXEC_SCRIPT_DELETED", records.EXEC_SCRIPT_DELETED),
    ("TC_EXEC_SCRIPT_COPIED", records.EXEC_SCRIPT_COPIED),
    ("TC_EXEC_SCRIPT_PATH_TRUNCATED", records.EXEC_SCRIPT_PATH_TRUNCATED),
    ("TC_EXEC_INTERP_TRUNCATED", records.EXEC_INTERP_TRUNCATED),
    ("TC_EXEC_PATH_TRUNCATED", records.EXEC_PATH_TRUNCATED),
    ("TC_EXEC_FROM_KERNEL", records.EXEC_FROM_KERNEL),
    ("TC_MOD_MAPPED", records.MOD_MAPPED),
    ("TC_MOD_MAP_SHARED", records.MOD_MAP_SHARED),
    ("TC_MOD_MAP_WRITTEN", records.MOD_MAP_WRITTEN),
    ("TC_MOD_KREAD_IMAGE", records.MOD_KREAD_IMAGE),
    ("TC_MOD_KREAD", records.MOD_KREAD),
    ("TC_TYPE_REGULAR", records.TYPE_BITS["regular"]),
    ("TC_TYPE_PIPE", records.TYPE_BITS["pipe"]),
    ("TC_TYPE_SOCKET", records.TYPE_BITS["socket"]),
    ("TC_TYPE_ELF", records.TYPE_BITS["elf"]),
    ("TC_SCOPE_COMM", records.SCOPE_COMM),
    ("TC_SCOPE_COMM_NOT", records.SCOPE_COMM_NOT),
    ("TC_SCOPE_PID", records.SCOPE_PID),
    ("TC_SCOPE_UID", records.SCOPE_UID),
    ("TC_SCOPE_FOLLOW", records.SCOPE_FOLLOW),
    ("TC_SCOPE_CONTAINER", records.SCOPE_CONTAINER),
    ("TC_SCOPE_HOST", records.SCOPE_HOST),
    ("TC_EV_PATH_TRUNCATED", records.EV_PATH_TRUNCATED),
    ("TC_EV_APPEND", records.EV_APPEND),
    ("TC_DATA_UNREADABLE", records.DATA_UNREADABLE),
    ("TC_DATA_ZERO", records.DATA_ZERO),
]


@pytest.mark.parametrize(("c_name", "py_value"), DEFINES)
def test_define_equals_python_constant(c_name, py_value):
    assert _defines()[c_name] == py_value


def test_every_define_is_checked():
    assert set(_defines()) == {c_name for c_name, _ in DEFINES}


def test_counter_enum_order():
    members = _enum("tc_counter")
    assert members[-1][0] == "TC_CNT_PER_KIND"
    assert [value for _, value in members] == list(range(len(members)))
    names = [ident.removeprefix("TC_CNT_").lower() for ident, _ in members[:-1]]
    assert tuple(names) == records.COUNTERS
    kinds = _enum("tc_counter_kind")
    assert kinds[-1][0] == "TC_NUM_KINDS"
    assert tuple(i.removeprefix("TC_KIND_").lower() for i, _ in kinds[:-1]) == records.COUNTER_KINDS
    assert kinds[-1][1] * members[-1][1] == records.NUM_COUNTERS


@pytest.mark.parametrize(
    ("enum", "names"),
    [("tc_mem_syscall", records.MEM_SYSCALLS), ("tc_module_syscall", ("init", "finit"))],
)
def test_object_syscall_enums(enum, names):
    members = _enum(enum)
    assert [value for _, value in members] == list(range(len(members)))
    assert tuple(i.split("_", 2)[-1].lower() for i, _ in members) == names


def test_mem_alert_enum_is_tracees_numbering():
    members = _enum("tc_mem_alert")
    assert [value for _, value in members] == list(range(len(members)))
    names = tuple(ident.removeprefix("TC_ALERT_").lower() for ident, _ in members)
    assert names == tuple(name for name, _text in records.MEM_ALERTS)


def test_mem_dump_enum():
    members = _enum("tc_mem_dump")
    assert [value for _, value in members] == list(range(len(members)))
    names = tuple(ident.removeprefix("TC_DUMP_").lower() for ident, _ in members)
    assert names == records.MEM_DUMPS


def test_mem_counter_enum():
    members = _enum("tc_mem_counter")
    assert members[-1][0] == "TC_MEM_NUM_COUNTERS"
    assert [value for _, value in members] == list(range(len(members)))
    names = tuple(ident.removeprefix("TC_MEMC_").lower() for ident, _ in members[:-1])
    assert names == records.MEM_COUNTERS


def test_syscall_enum_order():
    members = _enum("tc_syscall")
    assert [value for _, value in members] == list(range(len(members)))
    assert tuple(ident.removeprefix("TC_SYS_").lower() for ident, _ in members) == records.SYSCALLS


def test_direction_enum():
    assert dict(_enum("tc_direction")) == {
        "TC_DIR_WRITE": records.DIR_WRITE,
        "TC_DIR_READ": records.DIR_READ,
    }


def test_record_kind_enum():
    kinds = dict(_enum("tc_record_kind"))
    assert kinds == {
        "TC_REC_FILE_EVENT": records.REC_FILE_EVENT,
        "TC_REC_FILE_DATA": records.REC_FILE_DATA,
        "TC_REC_OBJ_DATA": records.REC_OBJ_DATA,
        "TC_REC_EXEC_EVENT": records.REC_EXEC_EVENT,
        "TC_REC_MEM_EVENT": records.REC_MEM_EVENT,
        "TC_REC_MODULE_EVENT": records.REC_MODULE_EVENT,
        "TC_REC_BPF_EVENT": records.REC_BPF_EVENT,
        "TC_REC_PACKET": records.REC_PACKET,
        "TC_REC_SOCK_OWNER": records.REC_SOCK_OWNER,
        "TC_REC_FILE_CONT": records.REC_FILE_CONT,
        "TC_REC_FILE_XFER": records.REC_FILE_XFER,
        "TC_REC_FORK": records.REC_FORK,
        "TC_REC_EXIT": records.REC_EXIT,
    }


def test_pkt_direction_enum():
    members = _enum("tc_pkt_direction")
    assert [value for _, value in members] == list(range(len(members)))
    names = tuple(ident.removeprefix("TC_PKT_").lower() for ident, _ in members)
    assert names == records.PKT_DIRECTIONS


def test_module_syscall_enum_names_the_python_syscalls():
    members = _enum("tc_module_syscall")
    names = tuple(f"{ident.removeprefix('TC_MOD_').lower()}_module" for ident, _ in members)
    assert names == records.MODULE_SYSCALLS


def test_adopt_result_enum():
    members = _enum("tc_adopt_result")
    assert [value for _, value in members] == list(range(len(members)))
    names = tuple(ident.removeprefix("TC_ADOPT_").lower() for ident, _ in members)
    assert names == records.ADOPT_RESULTS


#: Every enum of records.h and the test that checks it against bpf/records.py.
CHECKED_ENUMS = {
    "tc_record_kind": test_record_kind_enum,
    "tc_pkt_direction": test_pkt_direction_enum,
    "tc_mem_syscall": test_object_syscall_enums,
    "tc_mem_alert": test_mem_alert_enum_is_tracees_numbering,
    "tc_mem_dump": test_mem_dump_enum,
    "tc_mem_counter": test_mem_counter_enum,
    "tc_module_syscall": test_module_syscall_enum_names_the_python_syscalls,
    "tc_counter_kind": test_counter_enum_order,
    "tc_syscall": test_syscall_enum_order,
    "tc_direction": test_direction_enum,
    "tc_counter": test_counter_enum_order,
    "tc_adopt_result": test_adopt_result_enum,
}


def test_every_enum_is_checked():
    assert set(re.findall(r"\benum\s+(\w+)\s*\{", _header())) == set(CHECKED_ENUMS)

"""Which cgroups are containers: the naming rules, as data, and the one function that applies them.

Container runtimes tell the kernel nothing about containers; they only name the cgroup
directories they make. The rules below say which names are containers, and the same table serves
both sides: the kernel program (bpf/containers.bpf.h) gets it encoded (:func:`encode_rules`) and
classifies each cgroup when it is created (``cgroup_mkdir``), from its name and its parent's
state; the collector classifies the cgroups that exist at start, and any path, with
:func:`classify_path`. A cgroup's state is its container id (the innermost container around
it, "" for the host) and whether it lies in a cgroupfs driver's tree (where a bare id names a
container). Users add rules in :data:`USER_RULES_PATH`, one per line, in the same form as
:data:`DEFAULT_RULES` (README, "Container naming rules").

A pattern is a name with at most one placeholder: ``{id}`` (64 lowercase hex digits, the id) or
``{any}`` (any text, possibly empty). The rule kinds:

- ``container PATTERN``: a cgroup so named is a container, wherever it is;
- ``bare PATTERN``: the same, only inside a cgroupfs tree (a bare id);
- ``bare-ids PATTERN``: a cgroup so named starts a cgroupfs tree (Kubernetes' ``kubepods``);
- ``no-bare-ids PATTERN``: a cgroup so named ends it (systemd units, Podman's
  ``libpod_parent``, whose bare ids are pods).

A top-level cgroup that is not a systemd unit starts a cgroupfs tree (``/docker``,
``/libpod_parent``, containerd's ``/<namespace>``, Docker's ``--cgroup-parent /a/b``); the root
is not in one, so ``/<id>`` is not a container. Below a systemd unit (``/user.slice/...``, which
systemd delegates to users) only the runtime-named forms count: no user can make a directory
with a bare id and have its host activity filed as a container.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "DEFAULT_RULES",
    "MAX_RULES",
    "ROOT",
    "USER_RULES_PATH",
    "CgroupState",
    "Rule",
    "RuleKind",
    "classify",
    "classify_path",
    "encode_rules",
    "encode_state",
    "load_rules",
    "parse_rules",
]

#: Where an administrator adds rules (same form as DEFAULT_RULES); read once at start.
USER_RULES_PATH = "/etc/tracecap/container-cgroups"


class RuleKind(IntEnum):
    """Values shared with bpf/containers.bpf.h (TC_CGR_*)."""

    CONTAINER = 1
    BARE = 2
    BARE_IDS = 3
    NO_BARE_IDS = 4


class Wildcard(IntEnum):
    NONE = 0
    ID = 1
    ANY = 2


_KIND_WORDS = {
    "container": RuleKind.CONTAINER,
    "bare": RuleKind.BARE,
    "bare-ids": RuleKind.BARE_IDS,
    "no-bare-ids": RuleKind.NO_BARE_IDS,
}

#: The kernel side's bounds (bpf/containers.bpf.h): rules, prefix and suffix bytes, name bytes.
MAX_RULES = 32
MAX_PREFIX = 31
MAX_SUFFIX = 15
MAX_NAME = 127
ID_LEN = 64

#: The runtimes' forms. Docker: ``docker-<id>.scope`` (systemd driver), ``/docker/<id>`` and
#: ``--cgroup-parent /a/b`` → ``/a/b/<id>`` (cgroupfs driver). containerd: ``/<namespace>/<id>``
#: (``ctr``, cgroupfs), ``cri-containerd-<id>.scope`` (CRI, systemd). CRI-O: ``crio-<id>.scope``
#: and ``crio-<id>``. Podman: ``libpod-<id>.scope`` (systemd), ``/libpod_parent/libpod-<id>``
#: (cgroupfs), a pod's containers under ``/libpod_parent/<pod id>/libpod-<id>`` (cgroupfs) or
#: ``machine-libpod_pod_<pod id>.slice/libpod-<id>.scope`` (systemd). The monitors
#: (``libpod-conmon-<id>``, ``crio-conmon-<id>``, and a pod's ``conmon`` cgroup) are host
#: processes: ``conmon-`` is not hex, and a pod's bare id is its pod's, not a container's, see
#: the ``libpod_parent`` rule below.
DEFAULT_RULES = """\
container docker-{id}.scope
container docker-{id}
container cri-containerd-{id}.scope
container crio-{id}.scope
container crio-{id}
container libpod-{id}.scope
container libpod-{id}
bare {id}
bare-ids kubepods
bare-ids kubepods.{any}
bare-ids kubepods-{any}
no-bare-ids {any}.slice
no-bare-ids {any}.scope
no-bare-ids {any}.service
no-bare-ids {any}.socket
no-bare-ids {any}.mount
no-bare-ids {any}.swap
no-bare-ids libpod_parent
"""


@dataclass(frozen=True, slots=True)
class Rule:
    kind: RuleKind
    prefix: str
    wildcard: Wildcard
    suffix: str

    def match(self, name: str) -> str | None:
        """The id the name carries (``""`` for a match without one), or None for no match."""
        p, s = self.prefix, self.suffix
        if not (name.startswith(p) and name.endswith(s)):
            return None
        middle = len(name) - len(p) - len(s)
        if self.wildcard is Wildcard.NONE:
            return "" if middle == 0 else None
        if self.wildcard is Wildcard.ANY:
            return "" if middle >= 0 else None
        ident = name[len(p) : len(p) + ID_LEN]
        return ident if middle == ID_LEN and _HEX64.fullmatch(ident) else None


_HEX64 = re.compile(r"[0-9a-f]{64}")
_PATTERN = re.compile(r"([^{}\s]*)(?:\{(id|any)\})?([^{}\s]*)")


class RuleError(ValueError):
    """A rules text that cannot be used (the message names the line)."""


def parse_rules(text: str, origin: str = "rules") -> tuple[Rule, ...]:
    """Rules from text: ``KIND PATTERN`` a line; blank lines and ``#`` comments are skipped."""
    out: list[Rule] = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{origin}:{n}"
        if len(words) != 2 or words[0] not in _KIND_WORDS:
            raise RuleError(f"{where}: expected `KIND PATTERN`, KIND one of {sorted(_KIND_WORDS)}")
        m = _PATTERN.fullmatch(words[1])
        if m is None or not words[1]:
            raise RuleError(f"{where}: {words[1]!r}: at most one {{id}} or {{any}}")
        prefix, wild, suffix = m.group(1), m.group(2), m.group(3)
        kind = _KIND_WORDS[words[0]]
        wildcard = {None: Wildcard.NONE, "id": Wildcard.ID, "any": Wildcard.ANY}[wild]
        if (kind in (RuleKind.CONTAINER, RuleKind.BARE)) != (wildcard is Wildcard.ID):
            raise RuleError(f"{where}: {{id}} belongs in container rules, and only there")
        if len(prefix.encode()) > MAX_PREFIX or len(suffix.encode()) > MAX_SUFFIX:
            raise RuleError(
                f"{where}: prefix at most {MAX_PREFIX} bytes, suffix at most {MAX_SUFFIX}"
            )
        out.append(Rule(kind, prefix, wildcard, suffix))
    if len(out) > MAX_RULES:
        raise RuleError(f"{origin}: {len(out)} rules, at most {MAX_RULES}")
    return tuple(out)


def load_rules(user_text: str | None = None) -> tuple[Rule, ...]:
    """The defaults, then the administrator's (:data:`USER_RULES_PATH`'s text, if any)."""
    rules = parse_rules(DEFAULT_RULES, "defaults")
    if user_text:
        rules += parse_rules(user_text, USER_RULES_PATH)
    if len(rules) > MAX_RULES:
        raise RuleError(f"{len(rules)} container naming rules, at most {MAX_RULES}")
    return rules


@dataclass(frozen=True, slots=True)
class CgroupState:
    """What a cgroup's children inherit: its container id ("" = host) and whether it lies in a
    cgroupfs driver's tree. ``root`` marks the cgroup2 root."""

    container_id: str = ""
    cgroupfs: bool = False
    root: bool = False


ROOT = CgroupState(root=True)


def classify(parent: CgroupState, name: str, rules: tuple[Rule, ...]) -> CgroupState:
    """A new cgroup's state from its parent's and its own name (bpf/containers.bpf.h does the
    same at ``cgroup_mkdir``): the first container rule that matches gives the id, else the
    parent's; a cgroupfs rule starts a cgroupfs tree, a no-bare-ids rule ends it, else a
    top-level cgroup starts one and a deeper one inherits it."""
    if len(name.encode(errors="surrogateescape")) > MAX_NAME:
        return CgroupState(parent.container_id, False)
    cid = parent.container_id
    for rule in rules:
        if rule.kind is RuleKind.BARE and not parent.cgroupfs:
            continue
        if rule.kind in (RuleKind.CONTAINER, RuleKind.BARE):
            found = rule.match(name)
            if found:
                cid = found
                break
    cgroupfs = parent.root or parent.cgroupfs
    if any(r.kind is RuleKind.BARE_IDS and r.match(name) is not None for r in rules):
        cgroupfs = True
    elif any(r.kind is RuleKind.NO_BARE_IDS and r.match(name) is not None for r in rules):
        cgroupfs = False
    return CgroupState(cid, cgroupfs)


def classify_path(path: str, rules: tuple[Rule, ...]) -> CgroupState:
    """The state of the cgroup at ``path`` (relative to the cgroup2 root), classified from the
    root down."""
    state = ROOT
    for part in path.split("/"):
        if part:
            state = classify(state, part, rules)
    return state


#: bpf/containers.bpf.h struct tc_cgroup_rule: kind, wildcard, prefix length, suffix length,
#: prefix[32], suffix[16].
_RULE = struct.Struct("<BBBB32s16s")
#: struct tc_cgroup_state: container id[64] (ASCII hex, NUL-padded), flags, 7 bytes padding.
_STATE = struct.Struct("<64sB7x")
STATE_CGROUPFS = 1
RULE_SIZE = _RULE.size
STATE_SIZE = _STATE.size


def encode_rules(rules: tuple[Rule, ...]) -> list[bytes]:
    """Each rule as the kernel's array map holds it (index = order)."""
    out = []
    for r in rules:
        p, s = r.prefix.encode(), r.suffix.encode()
        out.append(_RULE.pack(r.kind, r.wildcard, len(p), len(s), p, s))
    return out


def encode_state(state: CgroupState) -> bytes:
    return _STATE.pack(state.container_id.encode(), STATE_CGROUPFS if state.cgroupfs else 0)


def decode_state(raw: bytes) -> CgroupState:
    cid, flags = _STATE.unpack_from(raw)
    return CgroupState(cid.rstrip(b"\0").decode("ascii", "replace"), bool(flags & STATE_CGROUPFS))

"""The container naming rules (collector/cgroup_rules.py): each rule, the real paths the runtimes
made (cgroup_paths.txt), the rules text users write, and the kernel's encoding of both tables."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector import probes
from collector.cgroup_rules import (
    DEFAULT_RULES,
    MAX_NAME,
    MAX_RULES,
    RULE_SIZE,
    STATE_SIZE,
    CgroupState,
    RuleError,
    RuleKind,
    classify,
    classify_path,
    decode_state,
    encode_rules,
    encode_state,
    load_rules,
    parse_rules,
)
from tests.support.bpf_object import OBJECT, built_object, need

RULES = load_rules()
ID = "0bcdd85883eda65de3a06f0825becbe191d27d80662ab58edb87477aec5f2b90"
OTHER = "4248093dcfac52b99085d2684ad5706f1cd80d6d513c349355b478a36ceee6a5"
PATHS = Path(__file__).with_name("cgroup_paths.txt")


def real_paths() -> list[tuple[str, str]]:
    out = []
    for line in PATHS.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            out.append((fields[0], "" if fields[1] == "-" else fields[1]))
    return out


@pytest.mark.parametrize(("path", "expected"), real_paths())
def test_the_paths_real_runtimes_made_are_classified(path: str, expected: str) -> None:
    assert classify_path(path, RULES).container_id == expected


#: For each default rule (by its line): a name it matches, with the parent state, and what the
#: new cgroup then is; and a near miss that it does not match.
RULE_CASES = {
    "container docker-{id}.scope": (f"docker-{ID}.scope", f"docker-{ID}.scope.x"),
    "container docker-{id}": (f"docker-{ID}", f"docker-{ID[:63]}"),
    "container cri-containerd-{id}.scope": (
        f"cri-containerd-{ID}.scope",
        f"cri-containerd-{ID.upper()}.scope",
    ),
    "container crio-{id}.scope": (f"crio-{ID}.scope", f"crio-conmon-{ID}.scope"),
    "container crio-{id}": (f"crio-{ID}", f"crio-{ID}0"),
    "container libpod-{id}.scope": (f"libpod-{ID}.scope", f"libpod-conmon-{ID}.scope"),
    "container libpod-{id}": (f"libpod-{ID}", f"libpod_{ID}"),
    "bare {id}": (ID, ID[:-1] + "g"),
}


def test_every_default_rule_has_its_cases() -> None:
    lines = [
        line for line in DEFAULT_RULES.splitlines() if line.split()[0] in ("container", "bare")
    ]
    assert sorted(lines) == sorted(RULE_CASES)


@pytest.mark.parametrize("rule", sorted(RULE_CASES))
def test_each_container_rule_matches_its_form_only(rule: str) -> None:
    yes, no = RULE_CASES[rule]
    inside = CgroupState(OTHER, cgroupfs=True)
    assert classify(inside, yes, RULES).container_id == ID
    assert classify(inside, no, RULES).container_id == OTHER  # the parent's, unchanged
    # the rule alone says the same
    only = parse_rules(rule)
    assert classify(inside, yes, only).container_id == ID
    assert classify(inside, no, only).container_id == OTHER


def test_a_bare_id_is_a_container_only_in_a_cgroupfs_tree() -> None:
    assert classify(CgroupState("", cgroupfs=True), ID, RULES).container_id == ID
    assert classify(CgroupState("", cgroupfs=False), ID, RULES).container_id == ""
    # the root is in none: /<id> is not a container; its children start one
    assert classify_path(f"/{ID}", RULES).container_id == ""
    assert classify_path(f"/anything/{ID}", RULES).container_id == ID


@pytest.mark.parametrize(
    ("name", "below_host", "below_cgroupfs"),
    [
        ("kubepods", True, True),
        ("kubepods.slice", True, True),
        ("kubepods-burstable.slice", True, True),
        ("kubepodsx", False, True),
        ("system.slice", False, False),
        ("init.scope", False, False),
        ("user@1000.service", False, False),
        ("dbus.socket", False, False),
        ("tmp.mount", False, False),
        ("swapfile.swap", False, False),
        ("libpod_parent", False, False),
        ("docker", False, True),
    ],
)
def test_what_starts_and_ends_a_cgroupfs_tree(
    name: str, below_host: bool, below_cgroupfs: bool
) -> None:
    """bare-ids rules start a cgroupfs tree, no-bare-ids rules end it, anything else (below
    the top level) keeps its parent's."""
    assert classify(CgroupState(), name, RULES).cgroupfs is below_host
    assert classify(CgroupState("", True), name, RULES).cgroupfs is below_cgroupfs


def test_top_level_cgroups_start_a_cgroupfs_tree_unless_units() -> None:
    assert classify_path("/docker", RULES).cgroupfs
    assert classify_path("/a/b", RULES).cgroupfs
    assert not classify_path("/system.slice", RULES).cgroupfs
    assert not classify_path("/libpod_parent", RULES).cgroupfs
    assert not classify_path("/user.slice/user-1000.slice/x", RULES).cgroupfs


def test_a_name_too_long_for_the_kernel_matches_nothing() -> None:
    long = ID + "x" * (MAX_NAME - len(ID) + 1)
    parent = CgroupState(OTHER, cgroupfs=True)
    assert classify(parent, long, RULES) == CgroupState(OTHER, False)
    just = f"libpod-{ID}" + ".scope" * 9
    assert len(just) <= MAX_NAME
    assert classify(parent, just, RULES).container_id == OTHER  # no rule has that suffix


def test_users_add_rules_in_the_same_form() -> None:
    user = "# garden's containers\ncontainer garden-{id}\n\nbare-ids gardens\n"
    rules = load_rules(user)
    assert len(rules) == len(RULES) + 2
    assert classify_path(f"/x.slice/garden-{ID}", rules).container_id == ID
    assert classify_path(f"/x.slice/garden-{ID}", RULES).container_id == ""
    assert classify_path(f"/x.slice/gardens/{ID}", rules).container_id == ID


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("container", "expected `KIND PATTERN`"),
        ("pod x-{id}", "expected `KIND PATTERN`"),
        ("container a b", "expected `KIND PATTERN`"),
        ("container x-{id}-{id}", "at most one"),
        ("container x-{any}", "{id} belongs in container rules"),
        ("bare-ids x-{id}", "{id} belongs in container rules"),
        ("container x-{name}", "at most one"),
        ("container " + "p" * 32 + "{id}", "prefix at most 31"),
        ("container {id}" + "s" * 16, "suffix at most 15"),
    ],
)
def test_a_rule_that_cannot_be_used_is_refused_with_its_line(text: str, message: str) -> None:
    with pytest.raises(RuleError, match=r"user:2: .*") as err:
        parse_rules("# first\n" + text, "user")
    assert message in str(err.value)


def test_more_rules_than_the_kernel_holds_are_refused() -> None:
    extra = "".join(f"container r{i}-{{id}}\n" for i in range(MAX_RULES - len(RULES) + 1))
    with pytest.raises(RuleError, match="at most 32"):
        load_rules(extra)


_names = st.text(alphabet="abcdef0123456789-._kubepodslicecr", min_size=1, max_size=90)


@given(st.lists(st.sampled_from([ID, OTHER, f"docker-{ID}.scope", "kubepods", "x.slice",
                                 "libpod_parent", "a"]) | _names, max_size=6))  # fmt: skip
def test_a_path_is_its_names_classified_from_the_root_down(parts: list[str]) -> None:
    state = CgroupState(root=True)
    for part in parts:
        state = classify(state, part, RULES)
    assert classify_path("/" + "/".join(parts), RULES) == state
    assert state.container_id in ("", ID, OTHER) or len(state.container_id) == 64


def test_states_round_trip_through_the_kernel_encoding() -> None:
    for state in (CgroupState(), CgroupState(ID, True), CgroupState(OTHER, False)):
        raw = encode_state(state)
        assert len(raw) == STATE_SIZE
        assert decode_state(raw) == state


def test_rules_encode_kind_wildcard_and_lengths() -> None:
    raw = encode_rules(parse_rules("container docker-{id}.scope\nno-bare-ids {any}.slice"))
    assert [len(r) for r in raw] == [RULE_SIZE, RULE_SIZE]
    assert raw[0][:4] == bytes([RuleKind.CONTAINER, 1, 7, 6])
    assert raw[0][4:11] == b"docker-" and raw[0][36:42] == b".scope"
    assert raw[1][:4] == bytes([RuleKind.NO_BARE_IDS, 2, 0, 6])


def test_the_encodings_match_the_kernel_structs() -> None:
    """bpf/containers.bpf.h's structs, from the built object's BTF."""
    bpftool = need("bpftool")
    built_object()
    out = subprocess.run(
        [bpftool, "btf", "dump", "file", str(OBJECT), "-j"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    sizes = {t["name"]: t["size"] for t in json.loads(out.stdout)["types"] if t["kind"] == "STRUCT"}
    assert sizes["tc_cgroup_rule"] == RULE_SIZE
    assert sizes["tc_cgroup_state"] == STATE_SIZE
    assert sizes["tc_cid_prefix"] == probes._CID_PREFIX.size

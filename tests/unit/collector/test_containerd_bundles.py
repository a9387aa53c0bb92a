"""containerd's containers named from their task bundles' OCI specs: the annotations read, and
the checked walk that refuses what someone but root could have put on the way."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from collector.containerd_bundles import (
    MAX_SPEC_BYTES,
    TASK_DIR,
    ContainerdBundles,
    info_from_spec,
    unsafe_dir,
)
from collector.runtimes import ContainerInfo, LookupFailed, bus_keys

CID = "4f" * 32
OTHER = "a1" * 32
#: The annotations containerd 1.6's CRI plugin writes into a pod container's spec
#: (pkg/cri/server/container_create_linux.go), with a kubelet's values.
CRI = {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.sandbox-id": OTHER,
    "io.kubernetes.cri.sandbox-namespace": "shop",
    "io.kubernetes.cri.sandbox-uid": "3c4d5e6f-0a1b-4c2d-8e3f-405162738495",
    "io.kubernetes.cri.sandbox-name": "checkout-7d9f",
    "io.kubernetes.cri.container-name": "web",
    "io.kubernetes.cri.image-name": "docker.io/library/nginx:1.25",
}


def spec(annotations: object = None) -> bytes:
    doc: dict[str, object] = {"ociVersion": "1.0.2-dev", "process": {"args": ["sh"]}}
    if annotations is not None:
        doc["annotations"] = annotations
    return json.dumps(doc).encode()


def test_a_kubernetes_containers_spec():
    info = info_from_spec(spec(CRI))
    assert info == ContainerInfo(
        runtime="containerd",
        name="web",
        image="docker.io/library/nginx:1.25",
        image_id="",
        pod_name="checkout-7d9f",
        pod_namespace="shop",
        pod_uid="3c4d5e6f-0a1b-4c2d-8e3f-405162738495",
    )
    # no digest: a tag is not one (Tracee v0.17 reports the reference itself)
    assert "container_image_digest" not in bus_keys(info)


def test_an_image_pinned_by_digest_gives_the_digest():
    ref = "docker.io/library/nginx@sha256:" + "0" * 64
    info = info_from_spec(spec({**CRI, "io.kubernetes.cri.image-name": ref}))
    assert bus_keys(info)["container_image_digest"] == ref


def test_nerdctl_and_ctr_labels():
    nerdctl = info_from_spec(spec({"nerdctl/name": "db", "nerdctl/namespace": "default"}))
    assert bus_keys(nerdctl) == {"container_name": "db"}
    # `ctr run --label io.kubernetes.pod.name=...` writes the label as an annotation too
    ctr = info_from_spec(
        spec({"io.kubernetes.pod.name": "p", "io.kubernetes.pod.namespace": "n",
              "io.kubernetes.pod.uid": "u", "io.kubernetes.container.name": "c"})
    )  # fmt: skip
    assert bus_keys(ctr) == {
        "container_name": "c",
        "pod_name": "p",
        "pod_namespace": "n",
        "pod_uid": "u",
    }
    # CRI's own annotation comes first when both are there
    both = info_from_spec(spec({**CRI, "io.kubernetes.pod.name": "other", "nerdctl/name": "x"}))
    assert (both.name, both.pod_name) == ("web", "checkout-7d9f")


def test_a_spec_without_annotations_names_nothing():
    assert bus_keys(info_from_spec(spec())) == {}
    assert bus_keys(info_from_spec(spec({}))) == {}


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"\xff\xfe",
        b"[]",
        spec(["io.kubernetes.cri.container-name=web"]),
        spec({"io.kubernetes.cri.container-name": 7}),
        spec({"io.kubernetes.cri.container-name": "w" * 300}),
        spec({"io.kubernetes.cri.image-name": "i" * 600}),
    ],
)
def test_specs_we_refuse(body):
    with pytest.raises(LookupFailed) as info:
        info_from_spec(body)
    assert info.value.reason == "bad_response"


def _st(mode: int, uid: int = 0) -> SimpleNamespace:
    return SimpleNamespace(st_mode=mode, st_uid=uid)


@pytest.mark.parametrize(
    "st, why",
    [
        (_st(stat.S_IFDIR | 0o711), None),
        (_st(stat.S_IFDIR | 0o700), None),
        (_st(stat.S_IFDIR | 0o755, uid=1000), "is owned by uid 1000, not root"),
        (_st(stat.S_IFDIR | 0o1777), "is writable by group or others (mode 1777)"),
        (_st(stat.S_IFDIR | 0o775), "is writable by group or others (mode 775)"),
        (_st(stat.S_IFLNK | 0o777), "is not a directory"),
    ],
)
def test_which_directories_only_root_controls(st, why):
    assert unsafe_dir(st) == why


# --- the walk, on a tree in a temporary directory ---------------------------------------------


def _trust_all(st: os.stat_result) -> str | None:
    """The tmp tree lies under /tmp (world-writable): the real check refuses it (tested)."""
    return None


@pytest.fixture
def state(tmp_path) -> Path:
    """A containerd state directory with one task in namespace ``k8s.io``."""
    bundle = tmp_path / TASK_DIR / "k8s.io" / CID
    bundle.mkdir(parents=True, mode=0o700)
    (bundle / "config.json").write_bytes(spec(CRI))
    (bundle / "work").symlink_to("/")  # as containerd links it: never followed
    (tmp_path / TASK_DIR / "moby").mkdir()
    return tmp_path


def bundles(state: Path) -> ContainerdBundles:
    return ContainerdBundles(str(state), check=_trust_all)


def test_a_task_found_in_its_namespace(state):
    b = bundles(state)
    assert b.available() is None and not b.follows
    info = b.inspect(CID)
    assert info is not None and info.name == "web" and info.pod_namespace == "shop"
    assert b.inspect(OTHER) is None  # in no namespace
    assert b.inspect("../../etc") is None  # not an id: never a path
    assert b.running() == [CID]
    assert b.image_digest("") == ""


def test_no_containerd_here(tmp_path):
    b = bundles(tmp_path)
    assert b.available() == ""
    assert b.inspect(CID) is None and b.running() == []


def test_the_real_check_refuses_a_state_directory_under_tmp(state):
    with pytest.raises(LookupFailed) as info:
        ContainerdBundles(str(state)).inspect(CID)
    assert info.value.reason == "untrusted_path"
    assert "/tmp is writable by group or others" in str(info.value)


def test_a_bundle_someone_else_owns_is_refused(state):
    bundle = state / TASK_DIR / "k8s.io" / CID

    def check(st: os.stat_result) -> str | None:
        return "is owned by uid 1000, not root" if st.st_ino == bundle.stat().st_ino else None

    with pytest.raises(LookupFailed, match="is owned by uid 1000"):
        ContainerdBundles(str(state), check=check).inspect(CID)


def test_links_are_never_followed(state, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / CID).mkdir()
    (elsewhere / CID / "config.json").write_bytes(spec({"nerdctl/name": "planted"}))
    # a namespace that is a link: skipped, the bundle it leads to is not read
    (state / TASK_DIR / "evil").symlink_to(elsewhere)
    assert bundles(state).inspect(OTHER) is None
    (elsewhere / OTHER).mkdir()
    (elsewhere / OTHER / "config.json").write_bytes(spec({"nerdctl/name": "planted"}))
    assert bundles(state).inspect(OTHER) is None
    # a bundle that is a link, and a spec that is one
    ns = state / TASK_DIR / "k8s.io"
    (ns / OTHER).symlink_to(elsewhere / OTHER)
    with pytest.raises(LookupFailed) as info:
        bundles(state).inspect(OTHER)
    assert info.value.reason == "untrusted_path"
    spec_path = ns / CID / "config.json"
    spec_path.unlink()
    spec_path.symlink_to(elsewhere / CID / "config.json")
    with pytest.raises(LookupFailed) as info:
        bundles(state).inspect(CID)
    assert info.value.reason == "untrusted_path"


def test_a_state_path_through_a_link_is_refused(state, tmp_path_factory):
    link = tmp_path_factory.mktemp("links") / "containerd"
    link.symlink_to(state)
    with pytest.raises(LookupFailed) as info:
        ContainerdBundles(str(link), check=_trust_all).inspect(CID)
    assert info.value.reason == "untrusted_path"


def test_a_hostile_spec_is_bounded(state):
    spec_path = state / TASK_DIR / "k8s.io" / CID / "config.json"
    spec_path.write_bytes(b" " * (MAX_SPEC_BYTES + 1))
    with pytest.raises(LookupFailed, match="more than"):
        bundles(state).inspect(CID)
    spec_path.unlink()
    os.mkfifo(spec_path)  # never opened for a blocking read
    with pytest.raises(LookupFailed, match="not a regular file"):
        bundles(state).inspect(CID)
    spec_path.unlink()
    assert bundles(state).inspect(CID) is None  # a bundle without its spec (yet): unknown
    spec_path.write_bytes(b'{"annotations": ')  # half written
    with pytest.raises(LookupFailed) as info:
        bundles(state).inspect(CID)
    assert info.value.reason == "bad_response"

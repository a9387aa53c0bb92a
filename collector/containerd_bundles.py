"""Who a containerd container is, from the OCI spec containerd wrote for its task.

containerd has only a gRPC API (no maintained Python client), and what ``ctr`` or Kubernetes
named a container with is in its metadata database (bbolt, no maintained Python reader) and,
for what matters here, in the task's bundle: runtime v2 writes the container's OCI spec to
``<state>/io.containerd.runtime.v2.task/<namespace>/<id>/config.json`` before runc starts it
(containerd's ``runtime/v2/bundle.go``: namespace directory 0711, bundle 0700, both root's).
Its ``annotations`` carry:

- Kubernetes (containerd's CRI plugin, ``pkg/cri/annotations``):
  ``io.kubernetes.cri.container-name`` (the pod spec's container name: Tracee v0.17's
  containerd enricher reports the same name from the ``io.kubernetes.container.name`` label),
  ``io.kubernetes.cri.image-name`` (the image reference: Tracee's ``container.Image``),
  ``io.kubernetes.cri.sandbox-name``, ``-sandbox-namespace``, ``-sandbox-uid`` (the pod);
  Tetragon's OCI hook reads the same five;
- nerdctl copies its container labels into the spec, ``nerdctl/name`` among them;
- ``ctr run --label K=V`` sets both a label and an annotation; ``--annotation`` only the
  annotation. Kubernetes' pod labels (``io.kubernetes.pod.*``) so given are read too.

No image is in the spec of a container that is not Kubernetes' (ctr's and nerdctl's image is
only in the database), and no digest: Tracee v0.17 reports the image reference as its
``imageDigest``; here the digest is given only when the reference is pinned by one.

Every directory from ``/`` to the bundle must be root's and writable by no one else, reached
without following a symbolic link (tracecap/fsutil.py), and the spec a regular file of at most
MAX_SPEC_BYTES: what an unprivileged user could have put there is never read. The contents are
what the container's creator wrote, reported as such (as a runtime's labels are).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

from collector.runtimes import (
    MAX_IMAGE_CHARS,
    MAX_NAME_CHARS,
    ContainerInfo,
    LookupFailed,
    checked_str,
    json_object,
)
from tracecap.fsutil import Dir, UnsafePath, read_bounded, walk

__all__ = [
    "CONTAINERD_STATE_DIRS",
    "TASK_DIR",
    "ContainerdBundles",
    "info_from_spec",
    "unsafe_dir",
]

#: containerd's ``state`` directories: its default, and k3s's and RKE2's.
CONTAINERD_STATE_DIRS = ("/run/containerd", "/run/k3s/containerd")
#: Runtime v2's bundles, one directory per namespace (``ctr -n``; Kubernetes' is ``k8s.io``).
TASK_DIR = "io.containerd.runtime.v2.task"
SPEC_NAME = "config.json"
#: A spec made by ctr is about 4 KiB, one by the CRI plugin 10-20 KiB; past this it is refused.
MAX_SPEC_BYTES = 1 << 20
#: Namespaces looked in, at most (containerd's own namespaces are few: default, k8s.io, moby).
MAX_NAMESPACES = 64

#: Bus key -> the annotations that give it, first present first.
ANNOTATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("name", ("io.kubernetes.cri.container-name", "nerdctl/name", "io.kubernetes.container.name")),
    ("image", ("io.kubernetes.cri.image-name",)),
    ("pod_name", ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name")),
    ("pod_namespace", ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace")),
    ("pod_uid", ("io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid")),
)
_LIMITS = {"image": MAX_IMAGE_CHARS}


def info_from_spec(body: bytes) -> ContainerInfo:
    """What an OCI spec's annotations say of its container (see the module docstring)."""
    spec = json_object(body, SPEC_NAME)
    annotations = spec.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise LookupFailed("bad_response", f"{SPEC_NAME}: annotations is not an object")
    fields: dict[str, str] = {}
    for field, keys in ANNOTATIONS:
        limit = _LIMITS.get(field, MAX_NAME_CHARS)
        values = (checked_str(annotations.get(k), limit, k) for k in keys)
        fields[field] = next((v for v in values if v), "")
    image = fields["image"]
    digest = image if "@sha256:" in image else ""
    return ContainerInfo(runtime="containerd", image_id="", image_digest=digest, **fields)


def unsafe_dir(st: os.stat_result) -> str | None:
    """Why a directory on the way to a bundle lets someone but root put things there, if so."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != 0:
        return f"is owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _is_id(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class ContainerdBundles:
    """containerd's task bundles under one state directory, asked like a runtime's API by the
    enricher (collector/enricher.py): ``inspect``, ``running``; there is no event stream, so a
    container started during the capture is named from the lookup its first event queues."""

    follows = False

    def __init__(
        self,
        state_dir: str,
        opener: Callable[[str], tuple[Dir, list[Any]]] = walk,
        check: Callable[[os.stat_result], str | None] = unsafe_dir,
    ) -> None:
        self.runtime = "containerd"
        self.state_dir = state_dir
        self.task_dir = os.path.join(state_dir, TASK_DIR)
        self._walk = opener
        self._check = check

    def available(self) -> str | None:
        """None when containerd's task directory is there (it is checked when read); "" when
        not: no containerd runs with this state directory."""
        return None if os.path.lexists(self.task_dir) else ""

    def inspect(self, container_id: str) -> ContainerInfo | None:
        """The annotations of ``container_id``'s spec in whichever namespace has it; None when
        no namespace has a bundle of that id."""
        if not _is_id(container_id):
            return None
        with ExitStack() as stack:
            for namespace in self._namespaces(stack):
                try:
                    bundle = self._open(namespace, container_id)
                except FileNotFoundError:
                    continue
                with bundle:
                    try:
                        body = read_bounded(bundle.fd, SPEC_NAME, MAX_SPEC_BYTES)
                    except FileNotFoundError:
                        return None  # a bundle being made or removed: no process runs in it
                    except OSError as exc:
                        raise LookupFailed("untrusted_path", f"{bundle.path}: {exc}") from None
                return info_from_spec(body)
        return None

    def image_digest(self, image_id: str) -> str:
        """No image id to ask about: the spec's reference is all there is."""
        return ""

    def running(self) -> list[str]:
        """The ids of every task's bundle now (a task's bundle lives as long as its task)."""
        ids: list[str] = []
        with ExitStack() as stack:
            for namespace in self._namespaces(stack):
                ids += [n for n in namespace.names() if _is_id(n)]
        return ids

    def created(self, on_id: Callable[[str], None], stop: Callable[[], bool]) -> None:
        """No stream to follow (``follows`` is False)."""

    def stop_following(self) -> None:
        pass

    # -- checked opens ---------------------------------------------------------------------

    def _namespaces(self, stack: ExitStack) -> Iterator[Dir]:
        """Each namespace's directory, open, checked (closed with ``stack``)."""
        try:
            top, steps = self._walk(self.task_dir)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise LookupFailed("untrusted_path", f"{self.task_dir}: {exc}") from None
        stack.enter_context(top)
        for step in steps:
            why = self._check(step.st)
            if why:
                raise LookupFailed("untrusted_path", f"{step.path} {why}")
        for name in top.names()[:MAX_NAMESPACES]:
            try:
                namespace = top.open_dir(name)
            except (UnsafePath, FileNotFoundError):
                continue  # not a namespace (a link or a file: root's, not containerd's) or gone
            except OSError as exc:
                raise LookupFailed("untrusted_path", f"{top.join(name)}: {exc}") from None
            stack.enter_context(namespace)
            why = self._check(namespace.stat())
            if why:
                raise LookupFailed("untrusted_path", f"{namespace.path} {why}")
            yield namespace

    def _open(self, namespace: Dir, container_id: str) -> Dir:
        """The bundle directory, checked; FileNotFoundError when the namespace has none."""
        try:
            bundle = namespace.open_dir(container_id)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise LookupFailed("untrusted_path", f"{namespace.join(container_id)}: {exc}") from None
        why = self._check(bundle.stat())
        if why:
            bundle.close()
            raise LookupFailed("untrusted_path", f"{bundle.path} {why}")
        return bundle

"""Asking a container runtime who a container is: name, image, image digest, pod.

The kernel names a container only by the id in its cgroup path (collector/containers.py); the
name and image an analyst searches by are known only to the runtime that made it. Docker and
Podman (rootful, with its API service ``podman system service`` running) answer the same HTTP
request on their unix sockets: ``GET /containers/<id>/json`` (Docker's Engine API; Podman
serves it as its "compat" API). The image's digest is one more request, ``GET
/images/<image id>/json``, as Tracee's own enricher does (``RepoDigests[0]``, else the image
id).

Why the collector asks, as root, and only a socket root made: the Docker socket is
``root:docker 0660``, and reading it is root's power (the docker group is root-equivalent),
so an unprivileged enricher would have to be made privileged. The answer only names things
(no file is opened, nothing is executed), but a socket an unprivileged user could have
planted would let that user name any container: every directory on the path must be root's
and writable by no one else, the socket root's, and the process listening on it root
(``SO_PEERCRED``). Responses are bounded (MAX_RESPONSE_BYTES) and every value checked (type,
length) before it goes on the bus; what a container's creator wrote (its name and labels,
pod names among them) is reported as the runtime reports it, not as a verified fact.

Pure parts (``parse_container``, ``parse_image_digest``, ``untrusted_reason``) are
unit-tested against responses recorded from this machine's Docker and Podman.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collector.unix_http import UnixConnection

__all__ = [
    "RUNTIME_SOCKETS",
    "ContainerInfo",
    "LookupFailed",
    "PodmanClient",
    "RuntimeClient",
    "bus_keys",
    "checked_str",
    "parse_container",
    "parse_image_digest",
    "parse_libpod_pod_name",
    "parse_libpod_pod_ref",
    "untrusted_reason",
    "with_podman_pod",
]

#: The runtimes asked, in order, and where their API socket is when they run as root. A
#: container id is asked of each that has a trusted socket until one knows it.
RUNTIME_SOCKETS: tuple[tuple[str, str], ...] = (
    ("docker", "/run/docker.sock"),
    ("podman", "/run/podman/podman.sock"),
)

#: A container's inspect document is a few KiB (about 7 KiB for Docker's, 9 KiB for Podman's,
#: measured here); labels and environment make it larger. Past this it is refused, counted.
MAX_RESPONSE_BYTES = 1 << 20
#: Seconds a connection, the request and the response may take, each.
TIMEOUT_S = 2.0
#: Bounds of the values put on the bus (characters): Docker limits nothing, Kubernetes names
#: are at most 253 characters and uids 36; an image reference is at most 255 + a digest.
MAX_NAME_CHARS = 256
MAX_IMAGE_CHARS = 512

#: Kubernetes' labels on a pod's containers (kubelet sets them for every runtime; with Podman,
#: ``podman kube play`` or ``--label`` sets them), and the bus keys they fill.
POD_LABELS = (
    ("io.kubernetes.pod.name", "pod_name"),
    ("io.kubernetes.pod.namespace", "pod_namespace"),
    ("io.kubernetes.pod.uid", "pod_uid"),
)
#: The namespace of a Podman pod (``podman kube play``, ``podman pod create``) that has no
#: Kubernetes labels: Podman keeps no namespace (``kube play`` ignores ``metadata.namespace``,
#: ``kube generate`` writes none), and a Kubernetes object without one is in "default".
PODMAN_POD_NAMESPACE = "default"
#: Podman serves its own (libpod) API under any version prefix; 4.0.0 is Podman 4's.
LIBPOD_PREFIX = "/v4.0.0/libpod"


class LookupFailed(Exception):
    """A runtime could not be asked or gave an answer we refuse; ``reason`` is the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class ContainerInfo:
    """What a runtime says of one container ("" where it says nothing)."""

    runtime: str
    name: str
    image: str
    image_id: str
    image_digest: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""


def checked_str(value: Any, limit: int, what: str) -> str:
    """``value`` if it is a string of at most ``limit`` characters ("" for None), else
    LookupFailed: what a runtime says is checked before it goes on the bus."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LookupFailed("bad_response", f"{what} is {type(value).__name__}, not a string")
    if len(value) > limit:
        raise LookupFailed("bad_response", f"{what} is {len(value)} characters (> {limit})")
    return value


def parse_container(runtime: str, body: bytes) -> ContainerInfo:
    """A Docker Engine API ``/containers/<id>/json`` answer (Docker's or Podman's compat API).

    ``Name`` has a leading ``/`` (Docker's link namespace), which ``docker ps`` does not
    print and neither does Tracee; ``Config.Image`` is the image as the user named it,
    ``Image`` its id. Labels: only Kubernetes' pod labels are taken.
    """
    doc = json_object(body)
    config = doc.get("Config") or {}
    if not isinstance(config, dict):
        raise LookupFailed("bad_response", "Config is not an object")
    labels = config.get("Labels") or {}
    if not isinstance(labels, dict):
        raise LookupFailed("bad_response", "Config.Labels is not an object")
    pod = {key: checked_str(labels.get(label), MAX_NAME_CHARS, label) for label, key in POD_LABELS}
    return ContainerInfo(
        runtime=runtime,
        name=checked_str(doc.get("Name"), MAX_NAME_CHARS + 1, "Name").removeprefix("/"),
        image=checked_str(config.get("Image"), MAX_IMAGE_CHARS, "Config.Image"),
        image_id=checked_str(doc.get("Image"), MAX_IMAGE_CHARS, "Image"),
        **pod,
    )


def parse_image_digest(body: bytes) -> str:
    """The digest Tracee reports for an image: ``RepoDigests[0]`` of ``/images/<id>/json``
    (``name@sha256:...``, the registry's identity), or "" when it has none (a local build or
    import), where the caller falls back to the image id."""
    doc = json_object(body)
    digests = doc.get("RepoDigests") or []
    if not isinstance(digests, list):
        raise LookupFailed("bad_response", "RepoDigests is not a list")
    return checked_str(digests[0], MAX_IMAGE_CHARS, "RepoDigests[0]") if digests else ""


def json_object(body: bytes, what: str = "") -> dict[str, Any]:
    """``body`` parsed as a JSON object, or LookupFailed (``bad_response``) saying why not;
    ``what`` names the source in the message."""
    where = f"{what}: " if what else ""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LookupFailed("bad_response", f"{where}not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LookupFailed("bad_response", f"{where}a JSON {type(doc).__name__}, not an object")
    return doc


def parse_libpod_pod_ref(body: bytes) -> tuple[str, str]:
    """(pod id, libpod namespace) of a Podman container, from its libpod API answer
    (``/libpod/containers/<id>/json``, what ``podman inspect`` prints): ``Pod`` is "" outside a
    pod; ``Namespace`` is "" unless the container was made with ``podman --namespace``."""
    doc = json_object(body)
    pod = checked_str(doc.get("Pod"), MAX_NAME_CHARS, "Pod")
    if pod and not _is_hex64(pod):
        raise LookupFailed("bad_response", "Pod is not a 64-hex pod id")
    return pod, checked_str(doc.get("Namespace"), MAX_NAME_CHARS, "Namespace")


def parse_libpod_pod_name(body: bytes) -> str:
    """A pod's name, from ``/libpod/pods/<id>/json`` (what ``podman pod ps`` shows)."""
    return checked_str(json_object(body).get("Name"), MAX_NAME_CHARS, "Name")


def with_podman_pod(
    info: ContainerInfo, pod_id: str, pod_name: str, namespace: str
) -> ContainerInfo:
    """A Podman pod's container, named as Podman names its pod, unless Kubernetes' labels on the
    container named it already. Podman has no pod namespaces: a pod's namespace is the libpod
    namespace when one was given, else PODMAN_POD_NAMESPACE."""
    if info.pod_name or info.pod_uid or not pod_id:
        return info
    return replace(
        info,
        pod_name=pod_name,
        pod_namespace=info.pod_namespace or namespace or PODMAN_POD_NAMESPACE,
        pod_uid=pod_id,
    )


def bus_keys(info: ContainerInfo) -> dict[str, str]:
    """The envelope keys for a container (tracecap/bus.py CONTAINER_KEYS), empty ones left out:
    the image digest is the image id when the image has no registry digest."""
    keys = {
        "container_name": info.name,
        "container_image": info.image,
        "container_image_digest": info.image_digest or info.image_id,
        "pod_name": info.pod_name,
        "pod_namespace": info.pod_namespace,
        "pod_uid": info.pod_uid,
    }
    return {k: v for k, v in keys.items() if v}


# -- the socket --------------------------------------------------------------------------------


def untrusted_reason(path: str, lstat: Any = os.lstat) -> str | None:
    """Why the socket at ``path`` (absolute) is not one only root could have made, or None.

    Every directory from ``/`` down must be a real directory (no symbolic link: its target
    could change), root's, and writable by neither group nor others (sticky or not: a user
    could bind a socket of that name in it); the socket itself root's. ``lstat`` is injected
    for tests."""
    if not path.startswith("/"):
        return f"{path}: not an absolute path"
    parts = [p for p in path.split("/") if p]
    current = "/"
    for i, part in enumerate(["", *parts]):
        current = os.path.join(current, part) if part else "/"
        try:
            st = lstat(current)
        except FileNotFoundError:
            return f"{current}: does not exist"
        except OSError as exc:
            return f"{current}: {exc.strerror}"
        last = i == len(parts)
        if last:
            if not stat.S_ISSOCK(st.st_mode):
                return f"{current}: not a socket"
        elif not stat.S_ISDIR(st.st_mode):
            return f"{current}: not a directory"
        elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{current}: writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
        if st.st_uid != 0:
            return f"{current}: owned by uid {st.st_uid}, not root"
    return None


class RuntimeClient:
    """One runtime's API socket. Each request opens its own connection (the daemon may have
    restarted in between, and lookups are rare: once per container). ``untrusted`` is the
    path check (:func:`untrusted_reason`; tests serve from a temporary directory)."""

    #: It has an event stream (``created``) to learn containers as they are made.
    follows = True

    def __init__(
        self,
        runtime: str,
        path: str,
        timeout: float = TIMEOUT_S,
        untrusted: Callable[[str], str | None] = untrusted_reason,
    ) -> None:
        self.runtime = runtime
        self.path = path
        self.timeout = timeout
        self._untrusted = untrusted
        self._events_conn: UnixConnection | None = None

    def available(self) -> str | None:
        """None when the socket is there and trusted; else why not (not there: "")."""
        if not os.path.lexists(self.path):
            return ""
        return self._untrusted(self.path)

    def get(self, url: str) -> tuple[int, bytes]:
        """(status, body) of ``GET url``; LookupFailed for everything that is no answer."""
        why = self._untrusted(self.path)
        if why is not None:
            raise LookupFailed("untrusted_socket", why)
        from collector import unix_http  # its own module: http.client is slow to import

        conn = unix_http.UnixConnection(self.path, self.timeout)
        try:
            conn.request("GET", url, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_RESPONSE_BYTES:
                raise LookupFailed("too_large", f"{url}: Content-Length {length}")
            body = resp.read(MAX_RESPONSE_BYTES + 1)
            if len(body) > MAX_RESPONSE_BYTES:
                raise LookupFailed("too_large", f"{url}: more than {MAX_RESPONSE_BYTES} bytes")
            return resp.status, body
        except TimeoutError:
            raise LookupFailed("timeout", f"{self.runtime}: {url}") from None
        except (OSError, unix_http.HTTPException) as exc:
            raise LookupFailed("connect", f"{self.runtime}: {url}: {exc}") from None
        finally:
            conn.close()

    def inspect(self, container_id: str) -> ContainerInfo | None:
        """The runtime's answer for ``container_id`` (64 hex digits), None if it does not know
        it (404)."""
        status, body = self.get(f"/containers/{container_id}/json")
        if status == 404:
            return None
        if status != 200:
            raise LookupFailed("http_status", f"{self.runtime}: container: HTTP {status}")
        return parse_container(self.runtime, body)

    def image_digest(self, image_id: str) -> str:
        """``RepoDigests[0]`` of the image, "" when it has none or is gone (404)."""
        if not image_id or "/" in image_id or "?" in image_id or "#" in image_id:
            return ""
        status, body = self.get(f"/images/{image_id}/json")
        if status == 404:
            return ""
        if status != 200:
            raise LookupFailed("http_status", f"{self.runtime}: image: HTTP {status}")
        return parse_image_digest(body)

    def running(self) -> list[str]:
        """The ids of the containers running now (``/containers/json``), to learn them before
        their first event."""
        status, body = self.get("/containers/json")
        if status != 200:
            raise LookupFailed("http_status", f"{self.runtime}: list: HTTP {status}")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LookupFailed("bad_response", f"not JSON: {exc}") from None
        if not isinstance(doc, list):
            raise LookupFailed("bad_response", "the container list is not a list")
        ids = [c.get("Id") for c in doc if isinstance(c, dict)]
        return [i for i in ids if isinstance(i, str) and len(i) == 64]

    def created(self, on_id: Callable[[str], None], stop: Callable[[], bool]) -> None:
        """Follow the runtime's event stream (``GET /events``, containers created) and hand
        each new container's id to ``on_id`` as the runtime creates it, before its first
        process runs; returns when the stream ends or ``stop()`` is true after an event.
        LookupFailed when the socket is not to be asked, or the stream breaks."""
        why = self._untrusted(self.path)
        if why is not None:
            raise LookupFailed("untrusted_socket", why)
        from collector import unix_http  # its own module: http.client is slow to import

        conn = unix_http.UnixConnection(self.path, self.timeout)
        self._events_conn = conn
        try:
            conn.request("GET", EVENTS_URL, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise LookupFailed("http_status", f"{self.runtime}: events: HTTP {resp.status}")
            assert conn.unix_sock is not None
            conn.unix_sock.settimeout(None)  # events come when containers are made
            while not stop():
                line = resp.readline(MAX_EVENT_BYTES + 1)
                if not line:
                    return
                if len(line) > MAX_EVENT_BYTES:
                    raise LookupFailed("too_large", f"{self.runtime}: an event over the bound")
                container_id = created_id(line)
                if container_id:
                    on_id(container_id)
        except TimeoutError:
            raise LookupFailed("timeout", f"{self.runtime}: events") from None
        except (OSError, unix_http.HTTPException) as exc:
            raise LookupFailed("connect", f"{self.runtime}: events: {exc}") from None
        finally:
            conn.close()

    def stop_following(self) -> None:
        """End a ``created`` stream from another thread (it blocks reading)."""
        conn = self._events_conn
        sock = conn.unix_sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class PodmanClient(RuntimeClient):
    """Podman's socket: the Docker-compatible answer, and for a container in a pod that has no
    Kubernetes labels (``podman kube play`` sets none), the pod as Podman's own API names it:
    two more requests, once per such container."""

    def inspect(self, container_id: str) -> ContainerInfo | None:
        info = super().inspect(container_id)
        if info is None or info.pod_name or info.pod_uid:
            return info
        pod_id, namespace = parse_libpod_pod_ref(
            self._ok(f"{LIBPOD_PREFIX}/containers/{container_id}/json", "libpod container")
        )
        if not pod_id:
            return info
        name = parse_libpod_pod_name(self._ok(f"{LIBPOD_PREFIX}/pods/{pod_id}/json", "pod"))
        return with_podman_pod(info, pod_id, name, namespace)

    def _ok(self, url: str, what: str) -> bytes:
        status, body = self.get(url)
        if status != 200:
            raise LookupFailed("http_status", f"{self.runtime}: {what}: HTTP {status}")
        return body


#: Docker's and Podman's event stream, containers being created only (one JSON object a line).
EVENTS_URL = "/events?filters=" + urllib.parse.quote(
    json.dumps({"type": ["container"], "event": ["create"]})
)
#: An event names the container's labels too; past this a line is refused.
MAX_EVENT_BYTES = 64 * 1024


def created_id(line: bytes) -> str | None:
    """The id of the container a ``create`` event is about (``Actor.ID``; ``id`` in Docker's
    older form), or None for any other line."""
    try:
        event = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or event.get("Action", event.get("status")) != "create":
        return None
    if event.get("Type", "container") != "container":
        return None
    actor = event.get("Actor")
    cid = actor.get("ID") if isinstance(actor, dict) else event.get("id")
    return cid if isinstance(cid, str) and _is_hex64(cid) else None


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)

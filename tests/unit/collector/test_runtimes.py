"""Asking Docker and Podman about a container: parsing their real answers, the socket checks,
and the HTTP client against a server on a unix socket.

data/*.json were recorded on the development machine (Debian 12) with curl on the runtimes'
sockets: Docker 20.10.24 (``docker import`` of a busybox-static tree, ``docker run --label
io.kubernetes.pod.*``) and Podman 4.3.1's compat API (``podman system service``; a container
in a ``podman pod`` with the same labels); ``podman_kube_*.json``: a container of a pod that
``podman kube play`` made (no Kubernetes labels), its compat and libpod answers and its pod's
(``/v4.0.0/libpod/pods/<id>/json``)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import socketserver
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from collector.runtimes import (
    EVENTS_URL,
    MAX_EVENT_BYTES,
    MAX_RESPONSE_BYTES,
    PODMAN_POD_NAMESPACE,
    ContainerInfo,
    LookupFailed,
    PodmanClient,
    RuntimeClient,
    bus_keys,
    created_id,
    parse_container,
    parse_image_digest,
    parse_libpod_pod_name,
    parse_libpod_pod_ref,
    untrusted_reason,
    with_podman_pod,
)

DATA = Path(__file__).parent / "data"
DOCKER_ID = "b64bfad2a631c0744f588843d3ff0f5bc02dcce9d547169fbc6314333b481305"
PODMAN_ID = "9975a87d7bd65fb5b9352c1b314ec9d90a5e67752e0b5fddbe6ba46004c26266"
DOCKER_IMAGE_ID = "sha256:f294f77f7a319115823067257c3cbc1828cbe60ce2d56629438c2dd8c1fb6f3c"
PODMAN_IMAGE_ID = "sha256:f17ae5a3343618a36af108ac66c0a628fb35a0e3002366dcdd322efac81f9505"


def recorded(name: str) -> bytes:
    return (DATA / name).read_bytes()


# --- parsing real answers ---------------------------------------------------------------------


def test_docker_container_answer():
    info = parse_container("docker", recorded("docker_container.json"))
    assert json.loads(recorded("docker_container.json"))["Id"] == DOCKER_ID
    assert info == ContainerInfo(
        runtime="docker",
        name="i15rec",  # Docker's "/i15rec", as `docker ps` and Tracee print it
        image="tracecap-test/busybox:1",
        image_id=DOCKER_IMAGE_ID,
        pod_name="web-0",
        pod_namespace="shop",
        pod_uid="0f5e3c2a-1111-4222-8333-944455556666",
    )


def test_podman_container_answer():
    info = parse_container("podman", recorded("podman_container.json"))
    assert json.loads(recorded("podman_container.json"))["Id"] == PODMAN_ID
    assert info == ContainerInfo(
        runtime="podman",
        name="i15prec",
        image="localhost/tracecap-test/busybox:1",
        image_id=PODMAN_IMAGE_ID,
        pod_name="api-7",
        pod_namespace="payments",
        pod_uid="5b0c1d2e-aaaa-4bbb-8ccc-0123456789ab",
    )


def test_image_digests():
    # an imported image has no registry digest in Docker; Podman names one under localhost/
    assert parse_image_digest(recorded("docker_image.json")) == ""
    assert parse_image_digest(recorded("podman_image.json")) == (
        "localhost/tracecap-test/busybox@sha256:"
        "e10ecea066db81561c91cacaa1150755593a6d9b7c43b7c89d12dddf724e0e2b"
    )


def test_bus_keys_fall_back_to_the_image_id_and_leave_out_what_is_unknown():
    info = parse_container("docker", recorded("docker_container.json"))
    assert bus_keys(info) == {
        "container_name": "i15rec",
        "container_image": "tracecap-test/busybox:1",
        "container_image_digest": DOCKER_IMAGE_ID,
        "pod_name": "web-0",
        "pod_namespace": "shop",
        "pod_uid": "0f5e3c2a-1111-4222-8333-944455556666",
    }
    bare = ContainerInfo("docker", "web", "nginx:1", "sha256:ab", "nginx@sha256:cd")
    assert bus_keys(bare) == {
        "container_name": "web",
        "container_image": "nginx:1",
        "container_image_digest": "nginx@sha256:cd",
    }


def test_a_container_without_labels():
    doc = json.loads(recorded("docker_container.json"))
    doc["Config"]["Labels"] = None
    info = parse_container("docker", json.dumps(doc).encode())
    assert (info.pod_name, info.pod_namespace, info.pod_uid) == ("", "", "")


def _changed(**changes: object) -> bytes:
    doc = json.loads(recorded("docker_container.json"))
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = doc
        for p in parents:
            node = node[p]
        node[last] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "body, says",
    [
        (b"<html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "a JSON list"),
        (_changed(Name=7), "Name is int"),
        (_changed(Name="/" + "x" * 300), "Name is 301 characters"),
        (_changed(Config="busybox"), "Config is not an object"),
        (_changed(Config__Labels=["a"]), "Config.Labels is not an object"),
        (_changed(Config__Image={"a": 1}), "Config.Image is dict"),
        (_changed(Config__Labels={"io.kubernetes.pod.name": 5}), "io.kubernetes.pod.name is int"),
        (_changed(Image="sha256:" + "a" * 600), "Image is 607 characters"),
    ],
)
def test_answers_we_refuse(body, says):
    with pytest.raises(LookupFailed, match=says) as info:
        parse_container("docker", body)
    assert info.value.reason == "bad_response"


@pytest.mark.parametrize(
    "body, says",
    [(b"nope", "not JSON"), (b'"x"', "a JSON str"), (b'{"RepoDigests": "x"}', "not a list"),
     (b'{"RepoDigests": [3]}', "RepoDigests\\[0\\] is int")],
)  # fmt: skip
def test_image_answers_we_refuse(body, says):
    with pytest.raises(LookupFailed, match=says):
        parse_image_digest(body)


# --- whose socket -----------------------------------------------------------------------------


def fake_tree(entries: dict[str, tuple[int, int]]):  # path -> (mode, uid)
    def lstat(path: str) -> SimpleNamespace:
        if path not in entries:
            raise FileNotFoundError(path)
        mode, uid = entries[path]
        return SimpleNamespace(st_mode=mode, st_uid=uid)

    return lstat


ROOT_DIR = (stat.S_IFDIR | 0o755, 0)
SOCK = (stat.S_IFSOCK | 0o660, 0)


@pytest.mark.parametrize(
    "entries, reason",
    [
        ({"/": ROOT_DIR, "/run": ROOT_DIR, "/run/docker.sock": SOCK}, None),
        ({"/": ROOT_DIR, "/run": ROOT_DIR}, "/run/docker.sock: does not exist"),
        ({"/": ROOT_DIR, "/run": (stat.S_IFDIR | 0o1777, 0), "/run/docker.sock": SOCK},
         "/run: writable by group or others (mode 1777)"),
        ({"/": ROOT_DIR, "/run": (stat.S_IFDIR | 0o775, 0), "/run/docker.sock": SOCK},
         "/run: writable by group or others (mode 775)"),
        ({"/": ROOT_DIR, "/run": (stat.S_IFDIR | 0o755, 1000), "/run/docker.sock": SOCK},
         "/run: owned by uid 1000, not root"),
        ({"/": ROOT_DIR, "/run": (stat.S_IFLNK | 0o777, 0), "/run/docker.sock": SOCK},
         "/run: not a directory"),
        ({"/": ROOT_DIR, "/run": ROOT_DIR, "/run/docker.sock": (stat.S_IFSOCK | 0o777, 1000)},
         "/run/docker.sock: owned by uid 1000, not root"),
        ({"/": ROOT_DIR, "/run": ROOT_DIR, "/run/docker.sock": (stat.S_IFREG | 0o600, 0)},
         "/run/docker.sock: not a socket"),
    ],
)  # fmt: skip
def test_only_a_socket_root_alone_could_have_made_is_trusted(entries, reason):
    assert untrusted_reason("/run/docker.sock", fake_tree(entries)) == reason


def test_a_socket_under_tmp_is_not_trusted(tmp_path):
    sock = socket.socket(socket.AF_UNIX)
    path = str(tmp_path / "docker.sock")
    sock.bind(path)
    try:
        why = untrusted_reason(path)
        assert why is not None and why.startswith("/tmp: writable by group or others")
    finally:
        sock.close()
    assert untrusted_reason("relative/docker.sock") == "relative/docker.sock: not an absolute path"


# --- the client against a server on a unix socket ----------------------------------------------


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(path: str, routes: dict[str, tuple[int, bytes, dict[str, str]]]) -> _Server:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body, headers = routes.get(self.path, (404, b'{"message":"no"}', {}))
            if status == 0:  # hang: accept and never answer
                time.sleep(5)
                return
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = _Server(path, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def api(tmp_path) -> Iterator[tuple[str, dict]]:
    routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
    path = str(tmp_path / "api.sock")
    server = serve(path, routes)
    yield path, routes
    server.shutdown()
    server.server_close()


def client(path: str, timeout: float = 2.0) -> RuntimeClient:
    # the test's socket is under /tmp, which untrusted_reason refuses (tested above)
    return RuntimeClient("docker", path, timeout, untrusted=lambda p: None)


def test_inspect_over_the_socket(api):
    path, routes = api
    if os.geteuid() != 0:
        pytest.fail("the client accepts root's servers only: run the unit tests as root")
    routes[f"/containers/{DOCKER_ID}/json"] = (200, recorded("docker_container.json"), {})
    routes[f"/images/{DOCKER_IMAGE_ID}/json"] = (200, recorded("docker_image.json"), {})
    c = client(path)
    info = c.inspect(DOCKER_ID)
    assert info is not None and info.name == "i15rec"
    assert c.image_digest(DOCKER_IMAGE_ID) == ""
    assert c.inspect("0" * 64) is None  # 404: not this runtime's
    assert c.image_digest("sha256:gone") == ""


def test_the_container_list(api):
    path, routes = api
    routes["/containers/json"] = (
        200,
        json.dumps([{"Id": DOCKER_ID}, {"Id": "short"}, "junk", {"Id": 5}]).encode(),
        {},
    )
    assert client(path).running() == [DOCKER_ID]


@pytest.mark.parametrize(
    "status, body, headers, reason",
    [
        (500, b"{}", {}, "http_status"),
        (200, b"x" * (MAX_RESPONSE_BYTES + 1), {}, "too_large"),
        (200, b"{}", {"Content-Length": str(MAX_RESPONSE_BYTES + 1)}, "too_large"),
        (200, b"x" * (MAX_RESPONSE_BYTES + 10), {"Connection": "close", "Content-Length": "x"},
         "too_large"),
        (200, b"[]", {}, "bad_response"),
    ],
)  # fmt: skip
def test_answers_that_are_refused_with_their_reason(api, status, body, headers, reason):
    path, routes = api
    routes[f"/containers/{DOCKER_ID}/json"] = (status, body, headers)
    with pytest.raises(LookupFailed) as info:
        client(path).inspect(DOCKER_ID)
    assert info.value.reason == reason


def test_a_runtime_that_never_answers_times_out(api):
    path, routes = api
    routes[f"/containers/{DOCKER_ID}/json"] = (0, b"", {})
    start = time.monotonic()
    with pytest.raises(LookupFailed) as info:
        client(path, timeout=0.3).inspect(DOCKER_ID)
    assert info.value.reason == "timeout"
    assert time.monotonic() - start < 2


def test_no_socket_and_an_untrusted_one(tmp_path):
    gone = RuntimeClient("docker", str(tmp_path / "none.sock"))
    assert gone.available() == ""
    with pytest.raises(LookupFailed) as info:
        gone.get("/containers/json")
    assert info.value.reason == "untrusted_socket"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "planted.sock"))
    planted = RuntimeClient("docker", str(tmp_path / "planted.sock"))
    try:
        assert "writable by group or others" in (planted.available() or "")
    finally:
        sock.close()


def test_a_server_that_is_not_roots_is_refused():
    """SO_PEERCRED: even on a trusted path, the listening process must be root's."""
    where = tempfile.mkdtemp(prefix="tracecap-peer-")  # pytest's tmp_path is root's alone
    os.chmod(where, 0o777)
    path = os.path.join(where, "user.sock")
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            srv = socket.socket(socket.AF_UNIX)
            srv.bind(path)
            srv.listen(1)
            os.write(ready_w, b"1")
            conn, _ = srv.accept()
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")
            time.sleep(1)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"1"
        with pytest.raises(LookupFailed) as info:
            client(path).running()
        assert info.value.reason == "untrusted_socket"
        assert "served by uid" in str(info.value)
    finally:
        os.close(ready_r)
        os.kill(child, 9)
        os.waitpid(child, 0)
        shutil.rmtree(where)


# --- the event stream: containers as they are created -----------------------------------------


def test_created_ids_from_recorded_events():
    # recorded with curl on /events?filters={"type":["container"],"event":["create"]} while
    # `docker run` / `podman run` made a container
    docker = recorded("docker_events.jsonl").splitlines()
    podman = recorded("podman_events.jsonl").splitlines()
    assert [created_id(line) for line in docker] == [
        "90a0c2ef99432445f2802970c73b70d2605d66617a9318ca99df71148cec2905"
    ]
    assert [created_id(line) for line in podman] == [
        "5790af761e3652f70e5296185105b35fcaab02ddb9a70773bcb620d253c42b63"
    ]


@pytest.mark.parametrize(
    "line",
    [b"", b"{", b"[]", b'{"Action": "start", "Actor": {"ID": "' + b"a" * 64 + b'"}}',
     b'{"Action": "create", "Type": "image", "Actor": {"ID": "' + b"a" * 64 + b'"}}',
     b'{"Action": "create", "Actor": {"ID": "' + b"A" * 64 + b'"}}',
     b'{"Action": "create", "Actor": {"ID": "../x"}}'],
)  # fmt: skip
def test_lines_that_name_no_created_container(line):
    assert created_id(line) is None


def test_following_the_stream(api):
    path, routes = api
    lines = recorded("docker_events.jsonl") + b"junk\n" + recorded("podman_events.jsonl")
    routes[EVENTS_URL] = (200, lines, {"Connection": "close"})
    seen: list[str] = []
    client(path).created(seen.append, lambda: False)  # returns when the stream ends
    assert seen == [
        "90a0c2ef99432445f2802970c73b70d2605d66617a9318ca99df71148cec2905",
        "5790af761e3652f70e5296185105b35fcaab02ddb9a70773bcb620d253c42b63",
    ]
    routes[EVENTS_URL] = (200, b"x" * (MAX_EVENT_BYTES + 10) + b"\n", {"Connection": "close"})
    with pytest.raises(LookupFailed) as info:
        client(path).created(seen.append, lambda: False)
    assert info.value.reason == "too_large"
    routes[EVENTS_URL] = (500, b"{}", {})
    with pytest.raises(LookupFailed) as info:
        client(path).created(seen.append, lambda: False)
    assert info.value.reason == "http_status"


# --- Podman's pods (podman kube play) ---------------------------------------------------------

KUBE_ID = "7c8dbe788ce32144d5adf8147aa1941a6e2d0ed8e9e0d23d6ca7a30a727ab07e"
KUBE_POD = "a9353a4fd3f3c7c67d0f0001bafb2dbae2a44f87f80fa0db63b7ff843e655acc"


def test_a_kube_played_containers_pod_from_podmans_own_api():
    compat = parse_container("podman", recorded("podman_kube_container.json"))
    assert (compat.name, compat.pod_name, compat.pod_uid) == ("kp-web-worker", "", "")
    pod_id, namespace = parse_libpod_pod_ref(recorded("podman_kube_libpod_container.json"))
    assert (pod_id, namespace) == (KUBE_POD, "")
    name = parse_libpod_pod_name(recorded("podman_kube_pod.json"))
    assert name == "kp-web"
    info = with_podman_pod(compat, pod_id, name, namespace)
    assert bus_keys(info) == {
        "container_name": "kp-web-worker",
        "container_image": "localhost/tctest-busybox:latest",
        "container_image_digest": compat.image_id,
        "pod_name": "kp-web",
        "pod_namespace": PODMAN_POD_NAMESPACE,
        "pod_uid": KUBE_POD,
    }
    assert with_podman_pod(compat, pod_id, name, "team").pod_namespace == "team"
    assert with_podman_pod(compat, "", "", "") == compat  # not in a pod


def test_kubernetes_labels_win_over_podmans_pod():
    labelled = parse_container("podman", recorded("podman_container.json"))
    assert labelled.pod_name
    assert with_podman_pod(labelled, KUBE_POD, "kp-web", "") == labelled


@pytest.mark.parametrize(
    "body",
    [b"[]", b"{", json.dumps({"Pod": 5}).encode(), json.dumps({"Pod": "../x"}).encode(),
     json.dumps({"Pod": KUBE_POD, "Namespace": ["x"]}).encode()],
)  # fmt: skip
def test_libpod_answers_we_refuse(body):
    with pytest.raises(LookupFailed) as info:
        parse_libpod_pod_ref(body)
    assert info.value.reason == "bad_response"


def test_podman_client_asks_for_the_pod_only_when_the_labels_do_not_name_one(api):
    path, routes = api
    routes[f"/containers/{KUBE_ID}/json"] = (200, recorded("podman_kube_container.json"), {})
    routes[f"/v4.0.0/libpod/containers/{KUBE_ID}/json"] = (
        200, recorded("podman_kube_libpod_container.json"), {},
    )  # fmt: skip
    routes[f"/v4.0.0/libpod/pods/{KUBE_POD}/json"] = (200, recorded("podman_kube_pod.json"), {})
    routes[f"/containers/{PODMAN_ID}/json"] = (200, recorded("podman_container.json"), {})
    c = PodmanClient("podman", path, 2.0, untrusted=lambda p: None)
    info = c.inspect(KUBE_ID)
    assert info is not None
    assert (info.pod_name, info.pod_namespace, info.pod_uid) == ("kp-web", "default", KUBE_POD)
    labelled = c.inspect(PODMAN_ID)  # no libpod route: asking it would fail the lookup
    assert labelled == parse_container("podman", recorded("podman_container.json"))
    del routes[f"/v4.0.0/libpod/pods/{KUBE_POD}/json"]
    with pytest.raises(LookupFailed) as failed:
        c.inspect(KUBE_ID)
    assert failed.value.reason == "http_status"

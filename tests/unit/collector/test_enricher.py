"""The container lookups behind the collector's loop: cache, queue, retries, errors, thread."""

from __future__ import annotations

import threading
import time

from collector.enricher import ContainerEnricher, default_clients
from collector.runtimes import ContainerInfo, LookupFailed

A = "a" * 64
B = "b" * 64
C = "c" * 64
WEB = ContainerInfo("docker", "web", "nginx:1", "sha256:11", pod_name="web-0")


class FakeClient:
    """A runtime: ``known`` containers, an optional failure, a record of what it was asked."""

    follows = True

    def __init__(
        self,
        runtime: str = "docker",
        known: dict[str, ContainerInfo] | None = None,
        *,
        absent: str | None = None,
        fail: LookupFailed | None = None,
        digest: str = "",
        running: list[str] | None = None,
    ) -> None:
        self.runtime = runtime
        self.known = known or {}
        self.absent = absent
        self.fail = fail
        self.digest = digest
        self.ids = running or []
        self.creates: list[str] = []
        self.asked: list[str] = []

    def available(self) -> str | None:
        return self.absent

    def inspect(self, container_id: str) -> ContainerInfo | None:
        self.asked.append(container_id)
        if self.fail is not None:
            raise self.fail
        return self.known.get(container_id)

    def image_digest(self, image_id: str) -> str:
        return self.digest

    def running(self) -> list[str]:
        return self.ids

    def created(self, on_id, stop) -> None:  # type: ignore[no-untyped-def]
        """The event stream: ``creates`` once, then it breaks as a restarted runtime's does."""
        for container_id in self.creates:
            on_id(container_id)
        self.creates = []
        raise LookupFailed("connect", "events: the stream ended")

    def stop_following(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_lookup_fills_the_cache_with_the_bus_keys():
    docker = FakeClient(known={A: WEB}, digest="nginx@sha256:22")
    enricher = ContainerEnricher([docker])
    assert enricher.keys(A) == {}  # not started: nothing asked, nothing queued
    enricher.lookup(A)
    assert enricher.keys(A) == {
        "container_name": "web",
        "container_image": "nginx:1",
        "container_image_digest": "nginx@sha256:22",
        "pod_name": "web-0",
    }
    assert enricher.stats()["container_found"] == 1


def test_runtimes_are_asked_in_order_until_one_knows_the_container():
    docker = FakeClient("docker", {})
    podman = FakeClient("podman", {B: WEB})
    gone = FakeClient("none", absent="")  # no socket: never asked, no error
    enricher = ContainerEnricher([gone, docker, podman])
    enricher.lookup(B)
    assert docker.asked == [B] and podman.asked == [B] and gone.asked == []
    assert enricher.keys(B)["container_name"] == "web"
    assert enricher.stats()["container_errors"] == 0


def test_an_untrusted_socket_is_counted_and_never_asked():
    planted = FakeClient(absent="/tmp: writable by group or others (mode 1777)")
    enricher = ContainerEnricher([planted])
    enricher.lookup(A)
    assert planted.asked == []
    assert enricher.errors == {"untrusted_socket": 1}
    assert "mode 1777" in enricher.last_error


def test_a_failing_runtime_is_counted_and_the_next_is_asked():
    broken = FakeClient(fail=LookupFailed("timeout", "docker: /containers/a/json"))
    podman = FakeClient("podman", {A: WEB})
    enricher = ContainerEnricher([broken, podman])
    enricher.lookup(A)
    assert enricher.keys(A)["container_name"] == "web"
    assert enricher.errors == {"timeout": 1}
    assert enricher.stats()["container_errors"] == 1


def test_an_image_digest_that_fails_keeps_the_container_answer():
    class NoDigest(FakeClient):
        def image_digest(self, image_id: str) -> str:
            raise LookupFailed("http_status", "image: HTTP 500")

    enricher = ContainerEnricher([NoDigest(known={A: WEB})])
    enricher.lookup(A)
    assert enricher.keys(A)["container_image_digest"] == "sha256:11"  # the image id
    assert enricher.errors == {"http_status": 1}


def test_an_unknown_container_is_asked_again_only_after_retry_s():
    clock = Clock()
    docker = FakeClient()
    enricher = ContainerEnricher([docker], retry_s=10.0, clock=clock)
    enricher._thread = threading.current_thread()  # queue without a thread: see the queue
    enricher.lookup(A)
    assert enricher.stats()["container_not_found"] == 1
    assert enricher.keys(A) == {} and enricher._queue.qsize() == 0
    clock.now += 10.5
    assert enricher.keys(A) == {}
    assert enricher._queue.qsize() == 1
    assert enricher.keys(A) == {} and enricher._queue.qsize() == 1  # once while pending


def test_the_queue_and_the_cache_are_bounded():
    enricher = ContainerEnricher([FakeClient(known={A: WEB, B: WEB, C: WEB})], cache_size=2,
                                 queue_size=1)  # fmt: skip
    enricher._thread = threading.current_thread()
    enricher.keys(A)
    enricher.keys(B)
    assert enricher.stats()["container_queue_full"] == 1
    for cid in (A, B, C):
        enricher.lookup(cid)
    assert enricher.stats()["container_evicted"] == 1
    assert A not in enricher._cache and enricher.keys(C)["container_name"] == "web"


def test_the_thread_learns_running_containers_first_then_what_is_queued():
    docker = FakeClient(known={A: WEB, B: WEB}, running=[A])
    enricher = ContainerEnricher([docker])
    enricher.start()
    try:
        deadline = time.monotonic() + 5
        while not enricher.keys(A) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert docker.asked[0] == A  # before any event named it
        assert enricher.keys(B) == {}  # queued now
        while not enricher.keys(B) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert enricher.keys(B)["container_name"] == "web"
    finally:
        enricher.stop()
    assert enricher._thread is None


def test_without_runtimes_no_thread_is_started():
    enricher = ContainerEnricher([])
    enricher.start()
    assert enricher._thread is None
    assert enricher.keys(A) == {}
    enricher.stop()


def test_containers_are_learned_as_the_runtime_creates_them():
    docker = FakeClient(known={C: WEB})
    docker.creates = [C]
    enricher = ContainerEnricher([docker])
    enricher.start()
    try:
        deadline = time.monotonic() + 5
        while C not in enricher._cache and time.monotonic() < deadline:
            time.sleep(0.01)
        # named before any event of it reached the loop
        assert enricher._cache[C].keys["container_name"] == "web"
        assert enricher.errors["connect"] >= 1  # the stream's end is counted
    finally:
        enricher.stop()


def test_a_runtime_without_a_stream_gets_no_follower_and_keeps_its_own_digest():
    pinned = "docker.io/library/nginx@sha256:" + "0" * 64
    spec = ContainerInfo("containerd", "web", pinned, "", image_digest=pinned)
    bundles = FakeClient("containerd", {A: spec})
    bundles.follows = False
    bundles.creates = [B]  # would be announced, were it followed
    enricher = ContainerEnricher([bundles])
    enricher.start()
    try:
        assert enricher._followers == []
    finally:
        enricher.stop()
    assert B not in enricher._cache
    enricher.lookup(A)  # image_digest("") answers "": the spec's digest stands
    assert enricher.keys(A)["container_image_digest"] == pinned


def test_the_default_runtimes():
    clients = default_clients()
    assert [(c.runtime, type(c).__name__) for c in clients] == [
        ("docker", "RuntimeClient"),
        ("podman", "PodmanClient"),
        ("containerd", "ContainerdBundles"),
        ("containerd", "ContainerdBundles"),
    ]
    assert [c.follows for c in clients] == [True, True, False, False]


def test_a_container_its_runtime_knows_but_names_nothing_is_not_asked_again():
    """A `ctr run` container without labels: its spec is found and says nothing. Asking at
    every event would re-read it for as long as the container runs."""
    clock = Clock()
    bundles = FakeClient("containerd", {A: ContainerInfo("containerd", "", "", "")})
    enricher = ContainerEnricher([bundles], clock=clock)
    enricher._thread = threading.current_thread()
    enricher.lookup(A)
    assert enricher.stats()["container_found"] == 1
    clock.now += 3600
    assert enricher.keys(A) == {} and enricher._queue.qsize() == 0

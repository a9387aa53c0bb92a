"""The bus on NATS JetStream: subject and message-id naming, the message body, consumer names.

Pure (no I/O), shared by `tracecap bridge --nats` (the publisher), the remote writers and
`tracecap status --nats`, so that all three name the same things the same way.

* A bus message of topic ``T`` from host ``H`` goes to subject ``tracecap.H.T`` without T's
  trailing dot (NATS subjects have no empty token): ``file.write.`` from ``web1`` is
  ``tracecap.web1.file.write``. A host is one subject token: letters, digits, ``_`` and ``-``.
* ``Nats-Msg-Id`` is ``H:EPOCH:T:SEQ`` (T with its dot): the collector's ``(epoch, topic, seq)``
  names one message for good, so a resend within the stream's duplicate window is stored once.
* The body is the envelope followed by the payload; the ``Tracecap-Envelope`` header gives the
  envelope's length. Frames are ``[topic, envelope, payload?]`` again on the way out.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from tracecap import bus

DEFAULT_STREAM = "TRACECAP"
SUBJECT_ROOT = "tracecap"
MSG_ID_HEADER = "Nats-Msg-Id"
ENVELOPE_HEADER = "Tracecap-Envelope"
#: A host as a subject token: no dots (token separator), wildcards or spaces.
_HOST = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOPIC = re.compile(rb"^[a-z0-9_]+(\.[a-z0-9_]+)*\.$")


class BadSubject(ValueError):
    """A subject or body that is not one of ours; the message is counted and skipped."""


def check_host(host: str) -> str:
    """``host`` if it can be one subject token, else ValueError naming the rule."""
    if not _HOST.match(host):
        raise ValueError(
            f"host name {host!r}: one NATS subject token is needed (1-64 letters, digits, "
            "_ or -; no dots)"
        )
    return host


def default_host(hostname: str) -> str:
    """The short host name (before the first dot), made a subject token."""
    short = hostname.split(".", 1)[0] or "localhost"
    return re.sub(r"[^A-Za-z0-9_-]", "_", short)[:64]


def subject(host: str, topic: bytes) -> str:
    """``tracecap.<host>.<topic without its trailing dot>``."""
    if not _TOPIC.match(topic):
        raise BadSubject(f"topic {topic!r} cannot be a subject")
    return f"{SUBJECT_ROOT}.{host}.{topic[:-1].decode('ascii')}"


def parse_subject(name: str) -> tuple[str, bytes]:
    """(host, bus topic) of one of our subjects; BadSubject otherwise."""
    root, _, rest = name.partition(".")
    host, _, topic = rest.partition(".")
    if root != SUBJECT_ROOT or not _HOST.match(host) or not topic:
        raise BadSubject(f"subject {name!r} is not tracecap.<host>.<topic>")
    raw = topic.encode("ascii", "replace") + b"."
    if not _TOPIC.match(raw):
        raise BadSubject(f"subject {name!r}: {topic!r} is not a topic")
    return host, raw


def msg_id(host: str, epoch: int, topic: bytes, seq: int) -> str:
    """``<host>:<epoch>:<topic>:<seq>``: one bus message, whoever sends it and how often."""
    return f"{host}:{epoch}:{topic.decode('ascii', 'replace')}:{seq}"


def body(envelope: bytes, payload: bytes) -> tuple[dict[str, str], bytes]:
    """Headers (without the message id) and data for one bus message."""
    return {ENVELOPE_HEADER: str(len(envelope))}, envelope + payload


def frames(topic: bytes, headers: dict[str, str] | None, data: bytes) -> list[bytes]:
    """The bus frames of a stored message, for ``bus.decode``; BadSubject on a bad body."""
    raw = (headers or {}).get(ENVELOPE_HEADER, "")
    if not raw.isdecimal() or int(raw) > min(len(data), bus.MAX_ENVELOPE_BYTES):
        raise BadSubject(
            f"{ENVELOPE_HEADER} header {raw[:20]!r} does not fit a {len(data)}-byte body"
        )
    size = int(raw)
    if size == len(data):
        return [topic, data]
    return [topic, data[:size], data[size:]]


def filter_subject(topics: Iterable[bytes], host: str = "*") -> str:
    """The one subject a consumer of ``topics`` filters on (a 2.9 server takes one): the topic's
    subject when there is one, else the tokens the topics share followed by ``>`` (messages
    of other topics under it are skipped by the consumer). ``host`` may be ``*``."""
    split = [subject("h", t).split(".")[2:] for t in topics]
    if not split:
        raise ValueError("no topics")
    if len(split) == 1:
        return ".".join((SUBJECT_ROOT, host, *split[0]))
    common: list[str] = []
    for tokens in zip(*split, strict=False):
        if len(set(tokens)) != 1:
            break
        common.append(tokens[0])
    return ".".join((SUBJECT_ROOT, host, *common, ">"))


def durable_name(kind: str, where: str, out_dir: str) -> str:
    """The durable consumer of writer ``kind`` persisting into ``out_dir`` on host ``where``:
    one per (kind, output), so two writer boxes (or two directories) each get every message,
    and a restarted writer finds its own position again."""
    digest = hashlib.sha256(f"{where}\0{out_dir}".encode()).hexdigest()[:16]
    return f"tracecap_{kind}_{digest}"

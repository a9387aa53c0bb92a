"""The artifact kinds, each declared once: every list of kinds elsewhere is derived from here.

A kind is one writer process (``tracecap writer NAME``, supervisord program ``writer-NAME``)
fed by one or more sources. A source is one ``--capture`` kind: the word that turns it on, the
bus topic its artifacts travel on, the prefix of its kernel counters (``<counter>.events``) and
the Tracee events it produces. The option parser, the usage text, the writer runner, the plan
of ``tracecap run`` and the static ``supervisord.conf`` (checked by a test) all read this table.

Writer classes are named by ``module:Class`` strings, resolved by the writer runner, so that the
contract never imports a writer. What only the collector knows of a kind (its programs, ring and
decoder) stays in ``collector/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracecap import bus


@dataclass(frozen=True)
class Source:
    """One ``--capture`` kind and what it produces."""

    #: The ``--capture`` word, as ``Config.kinds()`` names the kind.
    token: str
    #: The bus topic of its artifacts, which its writer subscribes to.
    topic: bytes
    #: Prefix of its kernel counters, in the kernel's order (bpf/records.py COUNTER_KINDS).
    counter: str
    #: Tracee event names it produces (``--events`` accepts these).
    events: tuple[str, ...]
    #: Other ``--capture`` words that turn it on.
    aliases: tuple[str, ...] = ()
    #: Where its events travel when not on ``topic``.
    event_topic: bytes | None = None
    #: Its events are printed only when ``--events`` names one of them.
    events_when_named: bool = False

    @property
    def words(self) -> tuple[str, ...]:
        """Every ``--capture`` word that turns the source on."""
        return (self.token, *self.aliases)

    @property
    def printed_from(self) -> bytes:
        """The topic the front end reads to print the source's events."""
        return self.event_topic or self.topic


@dataclass(frozen=True)
class Kind:
    """An artifact kind: one writer process fed by its sources."""

    name: str
    #: The writer class, ``module:Class``.
    writer: str
    sources: tuple[Source, ...]
    #: Keyword options of the writer class that ``run_writer(options=...)`` may pass.
    writer_options: tuple[str, ...] = ()
    #: Topics the writer takes besides its sources' (the events writer: ``proc.``, ``stats.``).
    own_topics: tuple[bytes, ...] = ()
    #: Runs whatever ``--capture`` says (the events writer, which the report reads).
    always: bool = False

    @property
    def program(self) -> str:
        """The supervisord program that runs the writer."""
        return f"writer-{self.name}"

    @property
    def topics(self) -> tuple[bytes, ...]:
        """Topics the writer subscribes to."""
        return tuple(source.topic for source in self.sources) + self.own_topics

    @property
    def events(self) -> tuple[str, ...]:
        return tuple(event for source in self.sources for event in source.events)


KINDS: tuple[Kind, ...] = (
    Kind(
        name="file",
        writer="writers.file:FileWriter",
        sources=(
            Source(
                token="write",
                topic=bus.TOPIC_FILE_WRITE,
                counter="write",
                events=("vfs_write", "vfs_writev"),
            ),
            Source(
                token="read",
                topic=bus.TOPIC_FILE_READ,
                counter="read",
                events=("vfs_read", "vfs_readv"),
            ),
        ),
    ),
    Kind(
        name="exec",
        writer="writers.exec:ExecWriter",
        sources=(
            Source(
                token="exec",
                topic=bus.TOPIC_EXEC,
                counter="exec",
                events=("sched_process_exec",),
                # the process event, not the binary's messages
                event_topic=bus.TOPIC_PROC,
            ),
        ),
    ),
    Kind(
        name="mem",
        writer="writers.memory:MemoryWriter",
        sources=(
            Source(token="mem", topic=bus.TOPIC_MEM, counter="mem", events=("mem_prot_alert",)),
        ),
    ),
    Kind(
        name="module",
        writer="writers.module:ModuleWriter",
        sources=(
            Source(
                token="module",
                topic=bus.TOPIC_MODULE,
                counter="module",
                events=("init_module", "finit_module"),
            ),
        ),
    ),
    Kind(
        name="bpf",
        writer="writers.bpf:BpfWriter",
        sources=(
            Source(token="bpf", topic=bus.TOPIC_BPF, counter="bpf", events=("security_bpf_prog",)),
        ),
    ),
    Kind(
        name="pcap",
        writer="writers.pcap:PcapWriter",
        sources=(
            Source(
                token="network",
                aliases=("net", "pcap"),
                topic=bus.TOPIC_NET_PACKETS,
                counter="net",
                # one per protocol a packet matches (tracecap.protocols.classify)
                events=tuple(
                    f"net_packet_{protocol}"
                    for protocol in ("ipv4", "ipv6", "tcp", "udp", "icmp", "icmpv6", "dns", "http")
                ),
                events_when_named=True,
            ),
        ),
        writer_options=("split", "rotation"),
    ),
    # events.jsonl: every exec, the capture's start and stop with its losses (writers/events.py)
    Kind(
        name="events",
        writer="writers.events:EventsWriter",
        sources=(),
        own_topics=(bus.TOPIC_PROC, bus.TOPIC_STATS),
        always=True,
    ),
)

BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}
#: Every source, in the order capture kinds are listed (their topics, counters and events too).
SOURCES: tuple[Source, ...] = tuple(source for kind in KINDS for source in kind.sources)
BY_TOKEN: dict[str, Source] = {source.token: source for source in SOURCES}
CAPTURE_TOKENS: tuple[str, ...] = tuple(BY_TOKEN)
#: Process life events, of no ``--capture`` kind: the collector sends every fork and exit in
#: scope on ``proc.`` (the events writer keeps them for the report's process tree), and the
#: front end prints them only when ``--events`` names them, as Tracee, whose default set has
#: neither. Their kernel counters are ``proc.*``.
PROCESS_EVENTS: tuple[str, ...] = ("sched_process_fork", "sched_process_exit")
PROCESS_COUNTER = "proc"
#: Every event name tracecap emits, which is what ``--events`` accepts.
EVENT_NAMES: tuple[str, ...] = (
    tuple(event for source in SOURCES for event in source.events) + PROCESS_EVENTS
)


def enabled(tokens: tuple[str, ...]) -> tuple[Kind, ...]:
    """The kinds with a writer to run when the capture kinds ``tokens`` are on (and those that
    always run)."""
    on = set(tokens)
    return tuple(
        kind for kind in KINDS if kind.always or any(source.token in on for source in kind.sources)
    )

"""Who subscribes to a publisher of the bus, and what each subscriber may cost it.

The bus's bounds on subscribers (README "The bus"), applied by both of its publishers: the
collector on its ipc socket, where a peer is a process and its owner a uid; and
``tracecap bridge`` on tcp, where a peer is a remote connection and its owner the CURVE key it
authenticated with. Without them one remote peer could flood the bridge's single connection to
the collector with prefixes and get it disconnected, taking the data from every other remote
writer.

ZeroMQ's XPUB keeps, per connection, a queue of messages (SNDHWM counts messages, not bytes)
and a trie of every prefix the peer subscribed to, and reports neither per peer. But every
(un)subscription it passes up (XPUB_VERBOSER) carries the connection's metadata: ``__fd``, the
connection's socket in this process, ``Peer-Address`` (on ipc ``host:uid:gid:pid``, from
SO_PEERCRED) and, over CURVE, ``User-Id`` (the client's key). That names the peer; the kernel
then says how much of what was sent to it the peer has not read (SIOCOUTQ on that socket), and
``shutdown()`` of that socket makes libzmq drop the connection with everything it queued for
it. A pipe's (un)subscriptions that ZeroMQ reports when the connection ends carry no metadata;
gone peers are found by checking their sockets.

The bounds, per connection (a group member, or an allowed remote key, can open many; each
costs at most this):

* at most MAX_PEER_SUBSCRIPTIONS live prefixes, each at most MAX_PREFIX_BYTES (longer frames
  are refused by libzmq itself, see Publisher), and (un)subscriptions at a rate of SUBSCRIBE_RATE
  a second after a burst of SUBSCRIBE_BURST; a peer past either is disconnected and counted;
* a peer whose socket stays unwritable (the peer reads nothing, or too little) is disconnected
  and counted: after STALL_NS while zero-copy payloads pile up (it is what holds them: ZeroMQ
  releases a frame only once every matching connection has taken it) and after STALL_MAX_NS in
  any case (its ZeroMQ queue holds copies of everything it subscribed to meanwhile; the bridge
  gives a remote peer longer, see ``stall_max_ns``). Peers of an
  exempt uid (the writers' own, ``tracecap``) that the collector's supervisord started (the
  writers, not a `tracecap tap` of the same user) are never disconnected for being slow: a writer
  that is behind loses only what the payload budget drops, with its bytes named; a process with
  the writers' uid could kill them anyway;
* MAX_PEERS_PER_OWNER connections per owner (the exempt uid excepted), and for PENALTY_NS
  after one of an owner's connections was disconnected, its new connections are refused at
  their first frame.

A disconnected SUB socket notices when its owner reads again, reconnects by itself and sees the
messages it missed as a seq gap: a stalled or flooding subscriber costs only itself.

Only prefixes that can match a bus topic (``b""``, ``b"f"``... ``b"file.write."``) are counted
per prefix, so the table and the ``stats.`` message stay small whatever peers send; the others
match nothing, cost libzmq only within the per-peer bound, and are counted as ignored.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import termios
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import zmq

from tracecap import bus

#: Live subscriptions one connection may hold. tracecap's writers hold one to three; a tap one
#: per topic (nine at most); every prefix that can match a topic is about 90.
MAX_PEER_SUBSCRIPTIONS = 128
#: The longest prefix accepted (longer subscription frames make libzmq drop the connection).
#: The longest topic is 11 bytes; 64 leaves room without letting a peer grow libzmq's trie.
MAX_PREFIX_BYTES = 64
#: (Un)subscriptions a connection may send in a burst, then SUBSCRIBE_RATE a second.
SUBSCRIBE_BURST = 256
SUBSCRIBE_RATE = 20
#: How often the peers' unread bytes are sampled (each sample is one fstat and one ioctl a peer).
SAMPLE_NS = 5_000_000
#: A peer that stays unwritable this long while zero-copy payloads pile up is disconnected.
STALL_NS = 20_000_000
#: A peer that stays unwritable this long is disconnected whatever the load.
STALL_MAX_NS = 1_000_000_000
#: Connections one owner may hold (the exempt uid excepted): each costs libzmq a queue and a
#: trie, and every message is matched against every connection.
MAX_PEERS_PER_OWNER = 64
#: After one of its connections was disconnected, an owner's new connections are disconnected at
#: their first frame for this long: a SUB reconnects by itself (every 100 ms by default) and
#: sends all its subscriptions again, which would otherwise be processed again and again.
PENALTY_NS = 1_000_000_000
#: Connections known at once (a connection also costs an fd, so the process's limit bounds
#: them too); this bounds the table and the time a sweep takes.
MAX_PEERS = 4096
#: How often every known connection is checked for having ended (the ones that receive
#: something are checked at every sample).
SWEEP_NS = 1_000_000_000

_UCRED = struct.Struct("3i")
_INT = struct.Struct("i")


@dataclass(frozen=True)
class PeerSocket:
    """The socket of one bus connection as the kernel describes it. ``ino`` tells it apart from
    a later socket that got the same fd number."""

    ino: int
    #: Whose connection it is, for the per-owner bounds: the peer process's uid on ipc, the
    #: client's CURVE key over tcp.
    owner: Hashable
    pid: int
    sndbuf: int
    #: The peer process's parent (0 when unknown): writers are children of the collector's
    #: supervisord, a `tracecap tap` of the same uid is not.
    ppid: int = 0


class SocketOps(Protocol):
    """The kernel calls the subscriber table makes on the connections' sockets (faked in
    tests)."""

    def identify(self, fd: int, claim: str | None) -> PeerSocket | None:
        """The connection on ``fd``; ``claim`` is what the frame's metadata said of its peer
        (see ``frame_origin``). None when it is gone or is not the one the claim names."""
        ...

    def unread(self, fd: int, ino: int) -> int | None: ...

    def disconnect(self, fd: int, ino: int) -> bool: ...


def parent_of(pid: int) -> int:
    """``pid``'s parent from /proc (0 if it is gone). The comm field may hold spaces and
    parentheses, so the fields are read after its last ``)``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read(4096)
    except OSError:
        return 0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0


def frame_origin(frame: zmq.Frame) -> tuple[int | None, str | None]:
    """The connection a frame came from: its socket's fd in this process and what the metadata
    says of the peer (``User-Id``, the client's key, over CURVE; else ``Peer-Address``), or
    None where libzmq gives no metadata (a connection that ended)."""
    try:
        fd = int(frame.get("__fd"))
    except (zmq.ZMQError, ValueError, TypeError):
        return None, None
    for key in ("User-Id", "Peer-Address"):
        try:
            return fd, frame.get(key)
        except zmq.ZMQError:
            continue
    return fd, None


def _dup(fd: int) -> socket.socket:
    """A socket object on a duplicate of libzmq's ``fd`` (its family read from the fd)."""
    dup = os.dup(fd)
    try:
        return socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        raise


class KernelSocketOps:
    """SocketOps on the real unix sockets that libzmq holds in this process (the collector's
    ipc bus). It never closes one of libzmq's fds: the calls that need a socket object get a
    duplicate and close that."""

    def identify(self, fd: int, claim: str | None) -> PeerSocket | None:
        """The peer's process from SO_PEERCRED; ``claim`` (``host:uid:gid:pid``) must name the
        same pid, or the fd was reused by a connection whose own frames come later."""
        try:
            dup = _dup(fd)
        except OSError:
            return None
        try:
            if dup.family != socket.AF_UNIX:
                return None
            pid, uid, _gid = _UCRED.unpack(
                dup.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            if claim is not None and claim.rpartition(":")[2] != str(pid):
                return None
            return PeerSocket(
                os.fstat(dup.fileno()).st_ino,
                uid,
                pid,
                dup.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                parent_of(pid),
            )
        except OSError:
            return None
        finally:
            dup.close()

    def unread(self, fd: int, ino: int) -> int | None:
        """Bytes sent on the connection that its peer has not read (None: the socket is gone)."""
        try:
            if os.fstat(fd).st_ino != ino:
                return None
            return _INT.unpack(fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * _INT.size))[0]
        except OSError:
            return None

    def disconnect(self, fd: int, ino: int) -> bool:
        """Shut the connection down; libzmq then sees it end and drops its queue."""
        try:
            dup = _dup(fd)
        except OSError:
            return False
        try:
            if os.fstat(dup.fileno()).st_ino != ino:
                return False
            dup.shutdown(socket.SHUT_RDWR)
            return True
        except OSError as exc:
            return exc.errno == errno.ENOTCONN
        finally:
            dup.close()


class TcpSocketOps(KernelSocketOps):
    """SocketOps on the tcp connections of ``tracecap bridge``: a peer is owned by the CURVE
    key ZAP authenticated it with (the ``claim``), the only identity a remote peer has."""

    def identify(self, fd: int, claim: str | None) -> PeerSocket | None:
        if claim is None:
            return None
        try:
            dup = _dup(fd)
        except OSError:
            return None
        try:
            if dup.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            sndbuf = dup.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            return PeerSocket(os.fstat(dup.fileno()).st_ino, claim, 0, sndbuf)
        except OSError:
            return None
        finally:
            dup.close()


@dataclass
class Peer:
    """One connection that sent (un)subscriptions: its socket, its live prefixes and the
    state of its rate and stall checks."""

    fd: int
    sock: PeerSocket
    exempt: bool
    tokens: float
    refilled_ns: int
    prefixes: set[bytes] = field(default_factory=set)
    receives: int = 0  # live prefixes that match a topic
    stuck_since: int | None = None


def topic_prefixes(topics: Iterable[bytes]) -> frozenset[bytes]:
    """Every subscription that can match one of ``topics``: each topic's prefixes, b"" too."""
    return frozenset(t[:i] for t in topics for i in range(len(t) + 1))


class Subscribers:
    """The bus's subscriptions per connection and per prefix, within the module's bounds.
    ``counts`` (subscriptions per prefix that can match a topic) is what ``Publisher.wait_for``
    and the ``stats.`` message read."""

    def __init__(
        self,
        ops: SocketOps,
        exempt_uids: Iterable[int] = (),
        topics: Iterable[bytes] = bus.TOPICS,
        exempt_parent: int | None = None,
        stall_max_ns: int = STALL_MAX_NS,
    ) -> None:
        self._ops = ops
        self._stall_max = stall_max_ns
        self._exempt = frozenset(exempt_uids)
        #: With it, only peers of an exempt uid that are children of this process (the
        #: collector's supervisord: the writers) are exempt; a paused `tracecap tap`, which
        #: runs as the same user, is then disconnected like any stalled subscriber.
        self._exempt_parent = exempt_parent
        self._matching = topic_prefixes(topics)
        self._peers: dict[int, Peer] = {}
        #: fd -> socket inode of connections already disconnected: what they had queued is
        #: still arriving and must not bring them back.
        self._gone: dict[int, int] = {}
        self.counts: Counter[bytes] = Counter()
        #: subscriptions without connection metadata (not ipc): counted, never disconnected
        self._anonymous: Counter[bytes] = Counter()
        self.ignored = 0
        self.dropped: Counter[str] = Counter()
        self._per_owner: Counter[Hashable] = Counter()
        self._penalty: dict[Hashable, int] = {}  # owner -> until (monotonic ns)
        self._next_sample = 0
        self._next_sweep = 0

    def __len__(self) -> int:
        return len(self._peers)

    # -- what ZeroMQ passes up ------------------------------------------------------------------

    def on_frame(self, data: bytes, fd: int | None, claim: str | None, now_ns: int) -> None:
        """One frame read from the XPUB: an (un)subscription (``\\x01``/``\\x00`` + prefix) or
        anything else a peer sent; ``fd`` and ``claim`` from its metadata (``frame_origin``),
        None without."""
        if fd is None:
            self._on_anonymous(data)
            return
        peer = self._peer(fd, claim, now_ns)
        if peer is None:
            return
        if not self._spend(peer, now_ns):
            self._drop(peer, "subscriptions", now_ns)
            return
        kind, prefix = data[:1], data[1:]
        if kind == b"\x01":
            if prefix in peer.prefixes:
                return
            if len(peer.prefixes) >= MAX_PEER_SUBSCRIPTIONS or len(prefix) > MAX_PREFIX_BYTES:
                self._drop(peer, "subscriptions", now_ns)
                return
            peer.prefixes.add(prefix)
            if prefix in self._matching:
                peer.receives += 1
                self.counts[prefix] += 1
            else:
                self.ignored += 1
        elif kind == b"\x00":
            if prefix in peer.prefixes:
                peer.prefixes.discard(prefix)
                if prefix in self._matching:
                    peer.receives -= 1
                    self._uncount(self.counts, prefix)
        else:  # an XSUB peer sending messages upstream: nothing on this bus does that
            self._drop(peer, "messages", now_ns)

    def on_accept(self, fd: int, now_ns: int) -> None:
        """A connection was accepted on ``fd`` (the XPUB's monitor says so): it counts against
        its owner's bounds from now on, even if it never subscribes (each costs the publisher an
        fd and a pipe; enough of them would leave none for a restarted writer)."""
        self._peer(fd, None, now_ns)

    def _on_anonymous(self, data: bytes) -> None:
        kind, prefix = data[:1], data[1:]
        if kind == b"\x01" and prefix in self._matching:
            self._anonymous[prefix] += 1
            self.counts[prefix] += 1
        elif kind == b"\x01":
            self.ignored += 1
        elif kind == b"\x00" and self._anonymous[prefix] > 0:
            # ZeroMQ reports a closed connection's prefixes this way too: only anonymous
            # subscriptions are taken back by it, the others by sweep()
            self._uncount(self._anonymous, prefix)
            self._uncount(self.counts, prefix)
        else:
            self._next_sweep = 0  # a connection ended: find which at the next sample

    def _peer(self, fd: int, claim: str | None, now_ns: int) -> Peer | None:
        peer = self._peers.get(fd)
        if peer is not None and self._ops.unread(fd, peer.sock.ino) is not None:
            return peer
        gone = self._gone.get(fd)
        if gone is not None and self._ops.unread(fd, gone) is not None:
            return None  # what a disconnected connection had queued: one fstat each
        if peer is not None:  # the fd now names another socket
            self._forget(peer)
        sock = self._ops.identify(fd, claim)
        if sock is None:
            return None  # closed, or reused by a connection whose metadata comes later
        self._gone.pop(fd, None)
        exempt = sock.owner in self._exempt and self._exempt_parent in (None, sock.ppid)
        peer = Peer(fd, sock, exempt, float(SUBSCRIBE_BURST), now_ns)
        if self._penalty.get(sock.owner, 0) > now_ns:
            self._drop(peer, "penalty", now_ns)
            return None
        if len(self._peers) >= MAX_PEERS or (
            not exempt and self._per_owner[sock.owner] >= MAX_PEERS_PER_OWNER
        ):
            self._drop(peer, "peers", now_ns)
            return None
        self._peers[fd] = peer
        self._per_owner[sock.owner] += 1
        return peer

    @staticmethod
    def _spend(peer: Peer, now_ns: int) -> bool:
        elapsed = max(0, now_ns - peer.refilled_ns) / 1e9
        peer.tokens = min(float(SUBSCRIBE_BURST), peer.tokens + elapsed * SUBSCRIBE_RATE)
        peer.refilled_ns = now_ns
        peer.tokens -= 1
        return peer.tokens >= 0

    # -- the peers' sockets ---------------------------------------------------------------------

    def sample(self, now_ns: int, payloads_piling_up: bool) -> None:
        """Check every peer that receives something for unread bytes its socket cannot take
        more of (the kernel's own test: unread * 4 > sndbuf), and disconnect those stuck for
        too long. At most once per SAMPLE_NS."""
        if now_ns < self._next_sample:
            return
        self._next_sample = now_ns + SAMPLE_NS
        if now_ns >= self._next_sweep:
            self._next_sweep = now_ns + SWEEP_NS
            self.sweep()
        for peer in list(self._peers.values()):
            if peer.receives == 0:
                continue
            unread = self._ops.unread(peer.fd, peer.sock.ino)
            if unread is None:
                self._forget(peer)
                continue
            if unread * 4 <= peer.sock.sndbuf:
                peer.stuck_since = None
                continue
            if peer.stuck_since is None:
                peer.stuck_since = now_ns
            stuck = now_ns - peer.stuck_since
            if not peer.exempt and (
                stuck >= self._stall_max or (payloads_piling_up and stuck >= STALL_NS)
            ):
                self._drop(peer, "stalled", now_ns)

    def unread(self) -> int:
        """Bytes sent to the peers that receive something that they have not read yet."""
        total = 0
        for peer in list(self._peers.values()):
            if peer.receives:
                total += self._ops.unread(peer.fd, peer.sock.ino) or 0
        return total

    def sweep(self) -> None:
        """Forget the peers whose connection ended."""
        for peer in list(self._peers.values()):
            if self._ops.unread(peer.fd, peer.sock.ino) is None:
                self._forget(peer)
        for fd, ino in list(self._gone.items()):
            if self._ops.unread(fd, ino) is None:
                del self._gone[fd]

    def _drop(self, peer: Peer, reason: str, now_ns: int) -> None:
        self.dropped[reason] += 1
        self._ops.disconnect(peer.fd, peer.sock.ino)
        self._forget(peer)
        if len(self._gone) < MAX_PEERS:
            self._gone[peer.fd] = peer.sock.ino
        if reason == "penalty":
            return  # not extended by the refusals: a SUB that reconnects on its own gets back
        if len(self._penalty) >= MAX_PEERS:
            self._penalty = {u: t for u, t in self._penalty.items() if t > now_ns}
        if len(self._penalty) < MAX_PEERS:
            self._penalty[peer.sock.owner] = now_ns + PENALTY_NS

    def _forget(self, peer: Peer) -> None:
        if self._peers.get(peer.fd) is peer:
            del self._peers[peer.fd]
            self._uncount(self._per_owner, peer.sock.owner)
        for prefix in peer.prefixes:
            if prefix in self._matching:
                self._uncount(self.counts, prefix)
        peer.prefixes.clear()
        peer.receives = 0

    @staticmethod
    def _uncount(counter: Counter, key: object) -> None:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]

    def stats(self) -> dict[str, object]:
        """The table's part of the ``stats.`` message; its size does not depend on the peers."""
        return {
            "bus_peers": len(self._peers),
            "bus_peers_dropped": dict(self.dropped),
            "bus_subscriptions_ignored": self.ignored,
        }

# -*- test-case-name: tests.unit.test_signaling_nodelinks,tests.integration.test_signaling_redis -*-
"""Direct links between the signaling nodes of one machine: the workers of one daemon.

With ``--workers`` every relay between peers on different workers went through Redis:
a PUBLISH, the Redis server, and a pub/sub reply parsed by txredisapi, in Python, on the
other side. Workers on one machine can do better: each listens on a UNIX socket,
``<directory>/<node id>.sock``, in a directory only the daemon's user can open, and a
worker sends the relays for another worker's peers straight to it, already encoded as
the JSON message the peer is to get, so the other worker only writes them out. Redis
stays what the nodes share: peers, rooms, presence, and where each peer is.

The wire format of a link, one record per relay::

    4 bytes  length of the rest (big-endian), at most MAX_RECORD
    2 bytes  length of the peer id
    the peer id (UTF-8), then the message (compact JSON, UTF-8)

:class:`RecordReader` is the sans-I/O parser (by hand rather than Twisted's
``Int32StringReceiver``, which is a protocol, not a parser: this one is driven in memory
by the tests and hands back every record of a read at once, so the writes they cause
leave in one go after the read; the format is ``Int32StringReceiver``'s with the peer id
in front). :class:`NodeLinks` is the service that listens, connects on first use and
keeps one connection per other node. A node with no socket in the directory (a node on
another machine, or one that is not started yet) gets its relays through Redis, as
before, and is tried again after :data:`RETRY_AFTER` seconds.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from holepunch.signaling.heldwrites import HoldingWriter, held, write_through

log = Logger()

MAX_RECORD = 16 * 1024 * 1024
"""The longest record a link accepts; a longer length ends the link (bad input)."""
RETRY_AFTER = 5.0
"""Seconds a node whose socket could not be reached gets its relays through Redis."""
CONNECT_TIMEOUT = 5.0
MAX_PENDING = 100_000
"""Records queued for a node while its link connects; beyond, they go through Redis."""

_NODE_ID = re.compile(r"[0-9A-Za-z_.-]{1,64}")
_HEAD = struct.Struct("!IH")


class LinkError(ValueError):
    """Bytes on a link that are not records."""


def encode_record(to: str, message: bytes) -> bytes:
    """One record: ``message`` for the peer ``to``."""
    peer = to.encode("utf-8")
    return _HEAD.pack(2 + len(peer) + len(message), len(peer)) + peer + message


class RecordReader:
    """Splits the bytes of a link into ``(peer id, message)`` records (sans-I/O)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """The records completed by ``data``; raise :class:`LinkError` on bad bytes."""
        if self._buffer:
            data = self._buffer + data
        records: list[tuple[str, bytes]] = []
        n, pos = len(data), 0
        while n - pos >= 6:
            size, peer_size = _HEAD.unpack_from(data, pos)
            if size > MAX_RECORD or peer_size + 2 > size:
                raise LinkError(f"a record of {size} bytes with a {peer_size}-byte peer id")
            end = pos + 4 + size
            if end > n:
                break
            start = pos + 6
            try:
                peer = data[start : start + peer_size].decode("utf-8")
            except UnicodeDecodeError:
                raise LinkError("a peer id that is not UTF-8") from None
            records.append((peer, data[start + peer_size : end]))
            pos = end
        self._buffer = data[pos:]
        return records


class _LinkServer(protocol.Protocol):
    """The receiving end of one other node's link."""

    def __init__(self, links: NodeLinks) -> None:
        self.links = links
        self.reader = RecordReader()

    def connectionMade(self) -> None:
        self.links.incoming.add(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            records = self.reader.feed(data)
        except LinkError as e:
            self.links.bad_links += 1
            log.warn("closing a worker link that sent bad bytes: {error}", error=e)
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        deliver = self.links.deliver
        # The clients' writes go out once, after the whole read (or the reactor's turn).
        held.read_started(self.links.reactor)
        try:
            for peer, message in records:
                deliver(peer, message)
        finally:
            held.read_done()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.links.incoming.discard(self)


class _LinkClient(HoldingWriter, protocol.Protocol):
    """The sending end of this node's link to one other node; holds its records while a
    read is handled (see :mod:`holepunch.signaling.heldwrites`)."""

    def __init__(self, links: NodeLinks, node: str) -> None:
        self.links = links
        self.node = node

    def send(self, record: bytes) -> None:
        if not held.depth:
            write_through(self.transport, record)
            return
        self.hold(record)

    def flush_held(self) -> None:
        records = self.take_held()
        if records and self.transport is not None:
            write_through(self.transport, records)

    def dataReceived(self, data: bytes) -> None:
        pass  # the other end never writes

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.flush_held()
        self.links.lost(self)


class _Pending:
    """Records for a node whose link is being connected."""

    __slots__ = ("attempt", "records")

    def __init__(self, attempt: defer.Deferred[Any]) -> None:
        self.attempt = attempt
        self.records: list[tuple[str, bytes]] = []


class NodeLinks(Service):
    """This node's links to the other nodes in ``directory`` (see the module doc).

    :param deliver: ``(peer id, message)`` -> None, for each record another node sent.
    :param fallback: ``(node, [(peer id, message), ...])`` -> None, for records that could
        not go through a link (in order): the caller sends them another way (Redis).
    """

    def __init__(
        self,
        reactor: Any,
        directory: str,
        node_id: str,
        deliver: Callable[[str, bytes], None],
        fallback: Callable[[str, list[tuple[str, bytes]]], None],
    ) -> None:
        if not usable_node_id(directory, node_id):
            raise ValueError(f"node id {node_id!r} cannot name a socket in {directory!r}")
        self.reactor = reactor
        self.directory = directory
        self.node_id = node_id
        self.deliver = deliver
        self.fallback = fallback
        self.port: IListeningPort | None = None
        self.incoming: set[_LinkServer] = set()
        self._links: dict[str, _LinkClient] = {}
        self._pending: dict[str, _Pending] = {}
        self._unreachable: dict[str, float] = {}
        self.sent = 0
        """Records sent through links."""
        self.bad_links = 0
        """Incoming links closed for sending bad bytes."""

    def path(self, node: str) -> str:
        return os.path.join(self.directory, f"{node}.sock")

    def startService(self) -> None:
        super().startService()
        path = self.path(self.node_id)
        try:
            os.unlink(path)  # a crashed node's, with our id: never someone else's
        except FileNotFoundError:
            pass
        factory = protocol.Factory.forProtocol(lambda: _LinkServer(self))
        listening = UNIXServerEndpoint(self.reactor, path, mode=0o600).listen(factory)
        listening.addCallbacks(self._listening, self._not_listening)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        if not self.running:
            port.stopListening()

    def _not_listening(self, failure: Failure) -> None:
        log.warn("no worker link socket ({error}): relays to this worker go through "
                 "Redis", error=failure.getErrorMessage())  # fmt: skip

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        waits: list[defer.Deferred[Any]] = []
        port, self.port = self.port, None
        if port is not None:
            stopped = port.stopListening()
            if isinstance(stopped, defer.Deferred):
                waits.append(stopped)
        for pending in list(self._pending.values()):
            pending.attempt.cancel()
        for link in list(self._links.values()):
            assert link.transport is not None
            link.transport.loseConnection()
        for server in list(self.incoming):
            assert server.transport is not None
            server.transport.loseConnection()
        return defer.gatherResults(waits, consumeErrors=True).addBoth(lambda _: None)

    def send(self, node: str, to: str, message: bytes) -> bool:
        """Send ``message`` for the peer ``to`` to ``node``, now or once its link is up;
        False when ``node`` has no link (send it another way)."""
        link = self._links.get(node)
        if link is not None:
            link.send(encode_record(to, message))
            self.sent += 1
            return True
        pending = self._pending.get(node)
        if pending is not None:
            if len(pending.records) >= MAX_PENDING:
                return False
            pending.records.append((to, message))
            return True
        if not self.running or node == self.node_id:
            return False
        if self._unreachable.get(node, 0.0) > self.reactor.seconds():
            return False
        path = self.path(node)
        if not usable_node_id(self.directory, node) or not os.path.exists(path):
            self._unreachable[node] = self.reactor.seconds() + RETRY_AFTER
            return False
        endpoint = UNIXClientEndpoint(self.reactor, path, timeout=CONNECT_TIMEOUT)
        attempt = endpoint.connect(protocol.Factory.forProtocol(lambda: _LinkClient(self, node)))
        pending = self._pending[node] = _Pending(attempt)
        pending.records.append((to, message))
        attempt.addCallbacks(self._connected, self._unconnected, errbackArgs=(node,))
        return True

    def _connected(self, link: _LinkClient) -> None:
        pending = self._pending.pop(link.node, None)
        if not self.running:  # stopped while connecting
            assert link.transport is not None
            link.transport.loseConnection()
            return
        self._links[link.node] = link
        if pending is not None and pending.records:
            self.sent += len(pending.records)
            link.send(b"".join(encode_record(to, message) for to, message in pending.records))

    def _unconnected(self, failure: Failure, node: str) -> None:
        pending = self._pending.pop(node, None)
        self._unreachable[node] = self.reactor.seconds() + RETRY_AFTER
        if not failure.check(defer.CancelledError):
            log.info("no link to worker node {node} ({error}): through Redis for now",
                     node=node, error=failure.getErrorMessage())  # fmt: skip
        if pending is not None and pending.records and self.running:
            self.fallback(node, pending.records)

    def lost(self, link: _LinkClient) -> None:
        """A link closed (its node stopped or crashed): the next relay connects again."""
        if self._links.get(link.node) is link:
            del self._links[link.node]

    def stats(self) -> dict[str, Any]:
        return {
            "links": len(self._links),
            "incoming": len(self.incoming),
            "sent": self.sent,
            "bad_links": self.bad_links,
        }


def usable_node_id(directory: str, node_id: str) -> bool:
    """Whether ``node_id`` can name a socket in ``directory`` (safe characters, and a
    path within the 107 bytes a UNIX socket address holds)."""
    if _NODE_ID.fullmatch(node_id) is None:
        return False
    return len(os.fsencode(os.path.join(directory, f"{node_id}.sock"))) < 104


__all__ = ["NodeLinks", "RecordReader", "encode_record", "usable_node_id"]

"""write_through on a real TCP connection: sent at once when nothing is queued, queued
behind Twisted's buffer when something is, and the bytes arrive in order either way."""

from __future__ import annotations

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from holepunch.signaling.heldwrites import write_through

TOTAL = 4 * 1024 * 1024


class Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= TOTAL and not self.done.called:
            self.done.callback(bytes(self.received))


class WriteThroughTests(TestCase):
    @defer.inlineCallbacks
    def connected(self) -> defer.Deferred[tuple[protocol.Protocol, Collect]]:  # type: ignore[misc]
        """A TCP connection on 127.0.0.1: the server's protocol and the collecting client."""
        accepted: defer.Deferred[protocol.Protocol] = defer.Deferred()

        class Server(protocol.Protocol):
            def connectionMade(self) -> None:
                accepted.callback(self)

        factory = protocol.Factory.forProtocol(Server)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = Collect()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        yield endpoint.connect(protocol.Factory.forProtocol(lambda: client))
        self.addCleanup(lambda: client.transport.loseConnection())
        server = yield accepted
        self.addCleanup(lambda: server.transport.loseConnection())
        return server, client

    @defer.inlineCallbacks
    def test_order_over_tcp(self) -> defer.Deferred[None]:  # type: ignore[misc]
        """4 MiB in 1 KiB pieces, alternating write_through and write: the other end gets
        every byte in order (the socket's buffer fills, so both paths queue)."""
        server, client = yield self.connected()
        pieces = [bytes([i % 251]) * 1024 for i in range(TOTAL // 1024)]
        for i, piece in enumerate(pieces):
            if i % 2:
                server.transport.write(piece)
            else:
                write_through(server.transport, piece)
        received = yield client.done.addTimeout(30, reactor)
        self.assertEqual(received, b"".join(pieces))

    @defer.inlineCallbacks
    def test_idle_connection_is_sent_at_once(self) -> defer.Deferred[None]:  # type: ignore[misc]
        """On an idle connection write_through sends in the call: Twisted queues nothing
        and does not watch the socket for writability (transport.write would do both)."""
        server, _ = yield self.connected()
        write_through(server.transport, b"x" * 1000)
        self.assertNotIn(server.transport, reactor.getWriters())
        server.transport.write(b"y")
        self.assertIn(server.transport, reactor.getWriters())

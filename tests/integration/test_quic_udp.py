"""QuicSession over two real UDP sockets on 127.0.0.1."""

import hashlib
import os

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest
from zope.interface import implementer

from holepunch.quic.identity import PeerIdentity
from holepunch.quic.udp import QuicDatagramProtocol

TIMEOUT = 60


@implementer(IHalfCloseableProtocol)
class BulkPeer(protocol.Protocol):
    """Sends its payload, half-closes, hashes what it receives until the peer's FIN."""

    def __init__(self, payload):
        self.payload = payload
        self.hash = hashlib.sha256()
        self.received = 0
        self.done = defer.Deferred()

    def connectionMade(self):
        view = memoryview(self.payload)
        for offset in range(0, len(view), 65536):
            self.transport.write(bytes(view[offset : offset + 65536]))
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received += len(data)
        self.hash.update(data)

    def readConnectionLost(self):
        pass

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.done.callback((self.received, self.hash.hexdigest()))


class Lines(LineReceiver):
    """An unmodified LineReceiver subclass: the server echoes, the client collects."""

    def __init__(self, echo, expected=0):
        self.echo = echo
        self.lines = []
        self.expected = expected
        self.finished = defer.Deferred()

    def lineReceived(self, line):
        if self.echo:
            self.sendLine(b"echo: " + line)
        else:
            self.lines.append(line)
            if len(self.lines) == self.expected:
                self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.finished.called:
            self.finished.callback(self.lines)


class UDPTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.client_id = PeerIdentity.generate()
        self.server_id = PeerIdentity.generate("ed25519")
        self.server_proto = QuicDatagramProtocol(
            reactor, ("127.0.0.1", 0), False, self.server_id, self.client_id.fingerprint
        )
        self.server_port = reactor.listenUDP(0, self.server_proto, interface="127.0.0.1")
        self.client_proto = QuicDatagramProtocol(
            reactor,
            ("127.0.0.1", self.server_port.getHost().port),
            True,
            self.client_id,
            self.server_id.fingerprint,
        )
        self.client_port = reactor.listenUDP(0, self.client_proto, interface="127.0.0.1")
        self.server_proto.peer_address = ("127.0.0.1", self.client_port.getHost().port)
        self.client = self.client_proto.session
        self.server = self.server_proto.session

    @defer.inlineCallbacks
    def tearDown(self):
        for session in (self.client, self.server):
            if session.closed is None:
                session.close("test over")
        yield self.client_port.stopListening()
        yield self.server_port.stopListening()
        # Let the close datagrams and callLater(0)s run before the dirty-reactor check.
        for _ in range(3):
            yield task.deferLater(reactor, 0, lambda: None)
        self.assertEqual(
            self.client_proto.foreign_datagrams + self.server_proto.foreign_datagrams, 0
        )

    @defer.inlineCallbacks
    def test_bulk_both_ways(self):
        """16 MiB of random bytes each way over one stream arrive intact (sha-256)."""
        size = 16 << 20
        up, down = os.urandom(size), os.urandom(size)
        server_peers = []

        def build(addr):
            peer = BulkPeer(down)
            server_peers.append(peer)
            return peer

        factory = protocol.Factory()
        factory.buildProtocol = build
        self.server.listen_streams(factory)
        yield self.client.when_connected(timeout=10)
        client_peer = BulkPeer(up)
        yield self.client.open_stream(client_peer)
        received, digest = yield client_peer.done.addTimeout(TIMEOUT, reactor)
        self.assertEqual((received, digest), (size, hashlib.sha256(down).hexdigest()))
        received, digest = yield server_peers[0].done.addTimeout(TIMEOUT, reactor)
        self.assertEqual((received, digest), (size, hashlib.sha256(up).hexdigest()))
        self.assertEqual(self.client.peer_fingerprint, self.server_id.fingerprint)
        self.assertEqual(self.server.peer_fingerprint, self.client_id.fingerprint)

    @defer.inlineCallbacks
    def test_line_receiver(self):
        """A LineReceiver pair talks over a stream, and closes cleanly."""
        self.server.listen_streams(protocol.Factory.forProtocol(lambda: Lines(echo=True)))
        client = Lines(echo=False, expected=100)
        yield self.client.open_stream(client)
        for i in range(100):
            client.sendLine(b"line %d" % i)
        lines = yield client.finished.addTimeout(TIMEOUT, reactor)
        self.assertEqual(lines, [b"echo: line %d" % i for i in range(100)])

    @defer.inlineCallbacks
    def test_datagrams(self):
        """QUIC datagrams cross real sockets."""
        yield self.client.when_connected(timeout=10)
        got = defer.Deferred()
        self.server.on_datagram(lambda data: got.called or got.callback(data))
        self.client.send_datagram(b"ping")
        data = yield got.addTimeout(TIMEOUT, reactor)
        self.assertEqual(data, b"ping")

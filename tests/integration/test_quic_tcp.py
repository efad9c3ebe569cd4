"""QUIC over a TCP-punched path: RFC 4571 framing carries the same packets as UDP.

The punched connection is real (two sockets on 127.0.0.1 dialling each other); the
framing is also checked byte by byte on an in-memory transport.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import StringTooLongError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from holepunch.punch.tcp import PunchedStream, simultaneous_open
from holepunch.punch.tcpsession import MAX_FRAME, Rfc4571Framing, StreamConnection
from holepunch.quic.identity import PeerIdentity
from holepunch.quic.session import session_over_channel
from lab.coturn import free_port
from tests.stream_protocols import Collect, Echo

LOOPBACK = "127.0.0.1"


class FramingTests(SynchronousTestCase):
    """The bytes on the stream are RFC 4571 frames: a 16-bit length, then the datagram."""

    def connection(self) -> tuple[StreamConnection, StringTransport, Rfc4571Framing]:
        framing = Rfc4571Framing()
        transport = StringTransport()
        framing.makeConnection(transport)
        stream = PunchedStream(
            protocol=framing,
            transport=transport,  # type: ignore[arg-type]
            local=(LOOPBACK, 1),
            remote=(LOOPBACK, 2),
            via="connect",
            attempts=(),
            started=0.0,
            connected=0.0,
        )
        return StreamConnection(stream, None), transport, framing

    def test_send_writes_a_16_bit_length(self) -> None:
        """Each datagram goes out after its length in two bytes, network order."""
        connection, transport, _ = self.connection()
        connection.send(b"abc")
        connection.send(bytes(300))
        self.assertEqual(transport.value(), b"\x00\x03abc" + b"\x01\x2c" + bytes(300))

    def test_frames_split_anywhere_arrive_whole(self) -> None:
        """Frames cut at any byte, and frames before the connection existed, arrive whole
        and in order."""
        framing = Rfc4571Framing()
        framing.makeConnection(StringTransport())
        framing.dataReceived(b"\x00\x02hi\x00")  # one whole frame before an owner
        stream = PunchedStream(
            framing,
            framing.transport,
            (LOOPBACK, 1),
            (LOOPBACK, 2),  # type: ignore[arg-type]
            "accept",
            (),
            0.0,
            0.0,
        )
        connection = StreamConnection(stream, None)
        got: list[bytes] = []
        connection.on_datagram(got.append)
        wire = b"\x05hello" + b"\x00\x00" + b"\x00\x01!"
        for i in range(len(wire)):
            framing.dataReceived(wire[i : i + 1])
        self.assertEqual(got, [b"hi", b"hello", b"", b"!"])

    def test_largest_frame(self) -> None:
        """A 65535-byte datagram fits; one byte more cannot be framed."""
        connection, transport, _ = self.connection()
        connection.send(bytes(MAX_FRAME))
        self.assertEqual(transport.value()[:2], b"\xff\xff")
        self.assertRaises(StringTooLongError, connection.send, bytes(MAX_FRAME + 1))


class QuicOverPunchedTcpTests(TestCase):
    """A QUIC session on a real punched TCP connection."""

    @defer.inlineCallbacks
    def test_stream_over_punched_tcp(self) -> Any:
        """Two punches on loopback connect; QUIC with the signaled fingerprints runs on the
        RFC 4571-framed stream and echoes 2 MiB byte-exact."""
        a_port, b_port = free_port(), free_port()
        start = reactor.seconds() + 0.05
        punches = [
            simultaneous_open(
                reactor,
                local,
                (LOOPBACK, remote),
                start_at=start,
                interface=LOOPBACK,
                protocol_factory=Factory.forProtocol(Rfc4571Framing),
            )
            for local, remote in ((a_port, b_port), (b_port, a_port))
        ]
        a_stream, b_stream = yield defer.gatherResults(punches)
        a, b = StreamConnection(a_stream, None), StreamConnection(b_stream, None)
        self.addCleanup(a.release)
        self.addCleanup(b.release)
        alice, bob = PeerIdentity.generate(), PeerIdentity.generate()
        client = session_over_channel(reactor, a, True, alice, bob.fingerprint)
        server = session_over_channel(reactor, b, False, bob, alice.fingerprint)
        self.addCleanup(client.close, "test over")
        self.addCleanup(server.close, "test over")
        server.listen_streams(Factory.forProtocol(Echo))
        yield defer.gatherResults([client.when_connected(10), server.when_connected(10)])
        self.assertEqual(client.peer_fingerprint, bob.fingerprint)
        collect = Collect()
        yield client.open_stream(collect)
        payload = os.urandom(2 * 1024 * 1024)
        assert collect.transport is not None
        collect.transport.write(payload)
        collect.transport.loseWriteConnection()  # type: ignore[attr-defined]
        echoed = yield collect.done
        self.assertEqual(hashlib.sha256(echoed).hexdigest(), hashlib.sha256(payload).hexdigest())
        self.assertGreater(a.bytes_sent, len(payload))

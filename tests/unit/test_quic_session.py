"""QuicSession: two sessions wired in memory with task.Clock and a list-based pipe."""

import hashlib
import random

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ITransport
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from holepunch.quic.identity import PeerIdentity
from holepunch.quic.session import PeerAuthenticationError, QuicOptions, QuicSession, SessionClosed
from holepunch.quic.streams import QuicStreamAddress

from .quic_pipe import Pipe, identities


class Collect(protocol.Protocol):
    """Records what arrives; can write on connect."""

    def __init__(self, greeting=b""):
        self.greeting = greeting
        self.received = bytearray()
        self.lost = None

    def connectionMade(self):
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


@implementer(IHalfCloseableProtocol)
class HalfClose(Collect):
    """Records readConnectionLost / writeConnectionLost too."""

    read_lost = False
    write_lost = False

    def readConnectionLost(self):
        self.read_lost = True

    def writeConnectionLost(self):
        self.write_lost = True


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


def connected_pipe(**kwargs):
    pipe = Pipe(**kwargs)
    pipe.pump(until=lambda: pipe.client.authenticated and pipe.server.authenticated)
    return pipe


def listen(pipe, session, proto_class, *args):
    made = []

    def build(addr):
        p = proto_class(*args)
        made.append(p)
        return p

    factory = protocol.Factory()
    factory.buildProtocol = build
    session.listen_streams(factory)
    return made


class HandshakeTests(unittest.TestCase):
    def test_mutual_authentication(self):
        """Both sides authenticate and learn the other's fingerprint."""
        client_id, server_id, _ = identities()
        pipe = Pipe()
        results = []
        pipe.client.when_connected(timeout=5).addCallback(results.append)
        pipe.server.when_connected(timeout=5).addCallback(results.append)
        pipe.pump(until=lambda: len(results) == 2)
        self.assertEqual(pipe.client.peer_fingerprint, server_id.fingerprint)
        self.assertEqual(pipe.server.peer_fingerprint, client_id.fingerprint)

    def test_client_rejects_wrong_server(self):
        """A client expecting another fingerprint refuses the server; no data is delivered."""
        other = identities()[2]
        pipe = Pipe(client_expects=other.fingerprint)
        made = listen(pipe, pipe.client, Collect)
        server_made = listen(pipe, pipe.server, Collect)
        failures = []
        server_failures = []
        pipe.client.when_connected().addErrback(failures.append)
        # The server opens a stream and writes as soon as it considers itself connected.
        pipe.server.when_connected().addCallback(
            lambda s: s.open_stream(Collect(b"secret"))
        ).addErrback(server_failures.append)
        pipe.pump(until=lambda: pipe.client.closed is not None and pipe.server.closed is not None)
        failure = failures[0]
        failure.trap(PeerAuthenticationError)
        self.assertEqual(failure.value.expected, other.fingerprint)
        self.assertEqual(failure.value.got, identities()[1].fingerprint)
        self.assertIn("expected fingerprint " + other.fingerprint, str(failure.value))
        self.assertEqual(made, [])
        self.assertEqual(server_made, [])
        self.assertTrue(pipe.server.closed.by_peer)
        self.assertIn("peer authentication failed", pipe.server.closed.reason)
        server_failures[0].trap(SessionClosed)

    def test_server_rejects_wrong_client(self):
        """A server expecting another fingerprint refuses the client; no data is delivered."""
        other = identities()[2]
        pipe = Pipe(server_expects=other.fingerprint)
        made = listen(pipe, pipe.server, Collect)
        failures = []
        pipe.server.when_connected().addErrback(failures.append)
        # The client writes as soon as its handshake completes (before the server checked).
        client_streams = []
        pipe.client.when_connected().addCallback(
            lambda s: s.open_stream(Collect(b"secret")).addCallback(client_streams.append)
        )
        pipe.client.when_connected().addCallback(lambda s: s.send_datagram(b"dgram"))
        got = []
        pipe.server.on_datagram(got.append)
        pipe.pump(until=lambda: pipe.client.closed is not None and pipe.server.closed is not None)
        failures[0].trap(PeerAuthenticationError)
        self.assertEqual(failures[0].value.got, identities()[0].fingerprint)
        self.assertEqual(made, [])
        self.assertEqual(got, [])
        self.assertIn("peer authentication failed", pipe.client.closed.reason)

    def test_client_without_matching_key(self):
        """A client presenting another peer's certificate cannot complete the handshake."""
        client_id, server_id, other = identities()
        # Same certificate as the expected client, wrong private key: refused.
        forged = PeerIdentity.__new__(PeerIdentity)
        forged.private_key = other.private_key
        forged.certificate = client_id.certificate
        forged.certificate_der = client_id.certificate_der
        forged.fingerprint_value = client_id.fingerprint_value
        pipe = Pipe(client_identity=forged)
        made = listen(pipe, pipe.server, Collect)
        pipe.pump(
            until=lambda: pipe.server.closed is not None or pipe.server.authenticated, limit=30
        )
        self.assertFalse(pipe.server.authenticated)
        self.assertEqual(made, [])

    def test_connect_timeout(self):
        """A handshake that never completes fails when_connected after connect_timeout."""
        pipe = Pipe(options=QuicOptions(connect_timeout=3.0))
        pipe.drop = lambda n, direction: True
        failures = []
        pipe.client.when_connected().addErrback(failures.append)
        pipe.clock.advance(3.5)
        failures[0].trap(SessionClosed)
        self.assertIn("timed out", str(failures[0].value))
        pipe.clock.advance(0)
        self.assertEqual(pipe.clock.getDelayedCalls(), [])

    def test_when_connected_timeout(self):
        """when_connected(timeout) gives up on its own after timeout."""
        pipe = Pipe()
        pipe.drop = lambda n, direction: True
        failures = []
        pipe.client.when_connected(timeout=1.0).addErrback(failures.append)
        pipe.clock.advance(1.5)
        failures[0].trap(defer.TimeoutError)

    def test_garbage_dropped(self):
        """Garbage datagrams are dropped and counted; the handshake still completes."""
        pipe = Pipe()
        pipe.server.datagram_received(b"")
        pipe.server.datagram_received(b"\x00\x01garbage-stun-like")
        pipe.server.datagram_received(b"\xc0" + b"\xff" * 1300)
        rng = random.Random(7)
        for _ in range(50):
            pipe.client.datagram_received(
                bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1400)))
            )
        pipe.pump(until=lambda: pipe.client.authenticated and pipe.server.authenticated)
        stats = pipe.server.stats
        self.assertEqual(stats.dropped_not_quic, 2)
        self.assertGreaterEqual(stats.dropped_refused + stats.dropped_not_quic, 3)
        for _ in range(50):
            pipe.server.datagram_received(
                bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1400)))
            )
        pipe.pump()
        self.assertIsNone(pipe.server.closed)


class StreamTests(unittest.TestCase):
    def test_both_ways_byte_exact(self):
        """A stream carries bytes both ways, byte-exact."""
        pipe = connected_pipe()
        rng = random.Random(1)
        up = rng.randbytes(300_000)
        down = rng.randbytes(200_000)
        server_side = listen(pipe, pipe.server, Collect, down)
        client = Collect()
        opened = []
        pipe.client.open_stream(client).addCallback(opened.append)
        self.assertEqual(opened, [client])
        client.transport.write(up[:1000])
        client.transport.writeSequence([up[1000:5000], up[5000:]])
        pipe.pump(
            until=lambda: (
                server_side
                and len(server_side[0].received) == len(up)
                and len(client.received) == len(down)
            )
        )
        self.assertEqual(bytes(server_side[0].received), up)
        self.assertEqual(bytes(client.received), down)

    def test_transport_interfaces(self):
        """The stream transport provides ITransport and IPushProducer; addresses name fingerprints."""
        pipe = connected_pipe()
        client_id, server_id, _ = identities()
        client = Collect()
        pipe.client.open_stream(client)
        verifyObject(ITransport, client.transport)
        verifyObject(IPushProducer, client.transport)
        peer = client.transport.getPeer()
        self.assertIsInstance(peer, QuicStreamAddress)
        self.assertEqual(peer.fingerprint, server_id.fingerprint)
        self.assertEqual(client.transport.getHost().fingerprint, client_id.fingerprint)

    def test_factory(self):
        """open_stream accepts a factory and fires with the protocol it built."""
        pipe = connected_pipe()
        made = []
        pipe.client.open_stream(protocol.Factory.forProtocol(Collect)).addCallback(made.append)
        self.assertIsInstance(made[0], Collect)

    def test_open_before_connected(self):
        """open_stream before the handshake waits for it."""
        pipe = Pipe()
        server_side = listen(pipe, pipe.server, Collect)
        opened = []
        pipe.client.open_stream(Collect(b"early")).addCallback(opened.append)
        self.assertEqual(opened, [])
        pipe.pump(until=lambda: server_side and server_side[0].received == b"early")

    def test_half_close(self):
        """loseWriteConnection sends FIN: the peer's readConnectionLost, and it can still answer."""
        pipe = connected_pipe()
        server_side = listen(pipe, pipe.server, HalfClose)
        client = HalfClose(b"question")
        pipe.client.open_stream(client)
        client.transport.loseWriteConnection()
        pipe.pump(until=lambda: server_side and server_side[0].read_lost)
        server = server_side[0]
        self.assertEqual(bytes(server.received), b"question")
        self.assertTrue(client.write_lost)
        self.assertIsNone(server.lost)
        server.transport.write(b"answer")
        server.transport.loseWriteConnection()
        pipe.pump(until=lambda: client.lost is not None and server.lost is not None)
        self.assertEqual(bytes(client.received), b"answer")
        self.assertTrue(client.read_lost)
        client.lost.trap(error.ConnectionDone)
        server.lost.trap(error.ConnectionDone)

    def test_lose_connection_plain_protocol(self):
        """loseConnection delivers buffered data then FIN; a plain protocol peer closes too."""
        pipe = connected_pipe()
        server_side = listen(pipe, pipe.server, Collect)
        client = Collect()
        pipe.client.open_stream(client)
        client.transport.write(b"x" * 100_000)
        client.transport.loseConnection()
        pipe.pump(
            until=lambda: (
                server_side and server_side[0].lost is not None and client.lost is not None
            )
        )
        self.assertEqual(len(server_side[0].received), 100_000)
        server_side[0].lost.trap(error.ConnectionDone)
        client.lost.trap(error.ConnectionDone)

    def test_abort(self):
        """abortConnection resets the stream: the peer's connectionLost is not clean."""
        pipe = connected_pipe()
        server_side = listen(pipe, pipe.server, Collect)
        client = Collect(b"hello")
        pipe.client.open_stream(client)
        pipe.pump(until=lambda: server_side and server_side[0].received == b"hello")
        client.transport.abortConnection()
        client.lost.trap(error.ConnectionAborted)
        pipe.pump(until=lambda: server_side[0].lost is not None)
        server_side[0].lost.trap(error.ConnectionLost)
        self.assertIsNone(pipe.client.closed)

    def test_peer_unidirectional_stream(self):
        """A unidirectional stream the peer opens is delivered read-only."""
        pipe = connected_pipe()
        server_side = listen(pipe, pipe.server, HalfClose)
        engine = pipe.client._quic
        stream_id = engine.get_next_available_stream_id(is_unidirectional=True)
        engine.send_stream_data(stream_id, b"one way", end_stream=True)
        pipe.client._schedule_flush()
        pipe.pump(until=lambda: server_side and server_side[0].lost is not None)
        self.assertEqual(bytes(server_side[0].received), b"one way")
        self.assertTrue(server_side[0].read_lost)
        server_side[0].transport.write(b"ignored")  # write side closed: no error

    def test_refused_without_listener(self):
        """A stream the peer opens while nobody listens is refused and counted."""
        pipe = connected_pipe()
        client = Collect(b"anyone?")
        pipe.client.open_stream(client)
        pipe.pump(until=lambda: client.lost is not None)
        self.assertEqual(pipe.server.stats.streams_refused, 1)

    def test_producer_paused_and_resumed(self):
        """A streaming producer is paused over send_buffer_high and resumed when acked."""
        options = QuicOptions(send_buffer_high=64 * 1024, send_buffer_low=16 * 1024)
        pipe = connected_pipe(options=options)
        server_side = listen(pipe, pipe.server, Collect)
        client = Collect()
        pipe.client.open_stream(client)

        @implementer(IPushProducer)
        class Producer:
            paused = False
            pauses = 0
            sent = 0

            def pauseProducing(self):
                self.paused = True
                self.pauses += 1

            def resumeProducing(self):
                self.paused = False

            def stopProducing(self):
                pass

        producer = Producer()
        client.transport.registerProducer(producer, True)
        total = 2_000_000
        while producer.sent < total:
            if producer.paused:
                self.assertLessEqual(
                    pipe.client.stream_backlog(client.transport.stream_id), 64 * 1024 + 16384
                )
                pipe.deliver()
                pipe.clock.advance(0.001)
                continue
            chunk = min(16384, total - producer.sent)
            client.transport.write(b"p" * chunk)
            producer.sent += chunk
        pipe.pump(until=lambda: len(server_side[0].received) == total)
        self.assertGreater(producer.pauses, 0)

    def test_file_sender(self):
        """twisted's FileSender (a pull producer) sends a file; loseConnection waits for it."""
        import io

        from twisted.protocols.basic import FileSender

        pipe = connected_pipe(
            options=QuicOptions(send_buffer_high=64 * 1024, send_buffer_low=16 * 1024)
        )
        server_side = listen(pipe, pipe.server, Collect)
        content = random.Random(9).randbytes(1_500_000)
        client = Collect()
        pipe.client.open_stream(client)
        sent = FileSender().beginFileTransfer(io.BytesIO(content), client.transport)
        client.transport.loseConnection()  # must wait for the producer to finish
        finished = []
        sent.addCallback(finished.append)
        pipe.pump(until=lambda: server_side and server_side[0].lost is not None)
        self.assertTrue(finished)
        self.assertEqual(bytes(server_side[0].received), content)
        server_side[0].lost.trap(error.ConnectionDone)

    def test_paused_reading(self):
        """pauseProducing holds data back from the protocol; resumeProducing delivers it."""
        pipe = connected_pipe()
        server_side = listen(pipe, pipe.server, Collect)
        client = Collect(b"first")
        pipe.client.open_stream(client)
        pipe.pump(until=lambda: server_side and server_side[0].received == b"first")
        server = server_side[0]
        server.transport.pauseProducing()
        client.transport.write(b"second")
        client.transport.loseWriteConnection()
        pipe.pump()
        self.assertEqual(bytes(server.received), b"first")
        self.assertIsNone(server.lost)
        server.transport.resumeProducing()
        self.assertEqual(bytes(server.received), b"firstsecond")
        pipe.pump(until=lambda: server.lost is not None)

    def test_paused_reading_stops_sender(self):
        """A paused reader withholds flow-control credit: the sender stalls, nothing is lost."""
        window = 256 * 1024
        pipe = connected_pipe(
            options=QuicOptions(max_stream_data=window, stream_receive_window=window)
        )
        server_side = listen(pipe, pipe.server, Collect)
        client = Collect(b"go")
        pipe.client.open_stream(client)
        pipe.pump(until=lambda: server_side and server_side[0].received == b"go")
        server = server_side[0]
        server.transport.pauseProducing()
        data = random.Random(4).randbytes(5_000_000)
        client.transport.write(data)
        client.transport.loseWriteConnection()
        pipe.pump()
        # Only about one window crossed; the rest waits in the sender's buffer.
        self.assertLessEqual(server.transport._read_buffered, 2 * window)
        self.assertGreater(pipe.client.stream_backlog(client.transport.stream_id), 4_000_000)
        self.assertIsNone(server.lost)
        server.transport.resumeProducing()
        pipe.pump(until=lambda: server.lost is not None)
        self.assertEqual(bytes(server.received), b"go" + data)
        server.lost.trap(error.ConnectionDone)

    def test_paused_reading_bounded(self):
        """A paused stream that receives more than its limit is aborted."""
        pipe = connected_pipe(options=QuicOptions(receive_buffer_limit=100_000))
        # (the window is larger than the limit here, so the backstop is what acts)
        server_side = listen(pipe, pipe.server, Collect)
        client = Collect(b"go")
        pipe.client.open_stream(client)
        pipe.pump(until=lambda: server_side and server_side[0].received == b"go")
        server_side[0].transport.pauseProducing()
        client.transport.write(b"z" * 300_000)
        pipe.pump(until=lambda: server_side[0].lost is not None and client.lost is not None)
        self.assertEqual(bytes(server_side[0].received), b"go")


class DatagramTests(unittest.TestCase):
    def test_datagrams(self):
        """Datagrams arrive whole, encrypted, both ways; early ones wait for a handler."""
        pipe = connected_pipe()
        pipe.client.send_datagram(b"one")
        pipe.client.send_datagram(b"two" * 300)
        pipe.pump()
        got = []
        pipe.server.on_datagram(got.append)
        self.assertEqual(got, [b"one", b"two" * 300])
        back = []
        pipe.client.on_datagram(back.append)
        pipe.server.send_datagram(b"back")
        pipe.pump(until=lambda: back == [b"back"])

    def test_datagram_size_limit(self):
        """A datagram larger than one packet's payload is refused with ValueError."""
        pipe = connected_pipe()
        self.assertRaises(
            ValueError, pipe.client.send_datagram, b"x" * (pipe.client.max_datagram_payload + 1)
        )
        pipe.client.send_datagram(b"x" * pipe.client.max_datagram_payload)
        got = []
        pipe.server.on_datagram(got.append)
        pipe.pump(until=lambda: len(got) == 1)

    def test_not_in_plaintext(self):
        """Application bytes never appear in clear on the path."""
        pipe = connected_pipe()
        seen = []
        original = pipe._carry
        pipe._carry = lambda direction, data: (seen.append(data), original(direction, data))
        marker = b"PLAINTEXT-MARKER-1234"
        pipe.client.send_datagram(marker)
        client = Collect(marker)
        pipe.client.open_stream(client)
        pipe.pump()
        self.assertTrue(seen)
        self.assertFalse(any(marker in d for d in seen))

    def test_forged_datagrams_never_reach_the_application(self):
        """Datagrams that look like the peer's but do not authenticate (a forged copy
        with one byte changed, a replay, random bytes after a real header) are dropped
        and counted; only the genuine bytes reach the stream and the datagram handler."""
        pipe = connected_pipe()
        server_side = listen(pipe, pipe.server, Collect)
        got = []
        pipe.server.on_datagram(got.append)
        client = Collect()
        pipe.client.open_stream(client)
        client.transport.write(b"genuine")
        pipe.client.send_datagram(b"real")
        pipe.clock.advance(0)  # the session writes on the next reactor turn
        genuine = list(pipe.to_server)
        self.assertTrue(genuine)
        pipe.pump(until=lambda: server_side and bytes(server_side[0].received) == b"genuine")
        before = pipe.server.stats.dropped_unauthenticated
        rng = random.Random(11)
        forged = []
        for datagram in genuine:
            tampered = bytearray(datagram)
            tampered[-1] ^= 0x01  # in the AEAD tag
            forged.append(bytes(tampered))
            forged.append(datagram)  # a replay: a duplicate packet number
            forged.append(datagram[:9] + rng.randbytes(len(datagram) - 9))
        for datagram in forged:
            pipe.server.datagram_received(datagram)
        client.transport.write(b" and more")  # genuine packets are not counted
        pipe.pump(until=lambda: bytes(server_side[0].received) == b"genuine and more")
        self.assertEqual(pipe.server.stats.dropped_unauthenticated - before, len(forged))
        self.assertEqual(got, [b"real"])
        self.assertIsNone(pipe.server.closed)


class PathTests(unittest.TestCase):
    def test_path_change_mid_stream(self):
        """The pipe switches route mid-stream (relay to direct): the stream goes on byte-exact."""
        pipe = connected_pipe()
        pipe.route = "relay"
        server_side = listen(pipe, pipe.server, Collect)
        data = random.Random(3).randbytes(1_000_000)
        client = Collect()
        pipe.client.open_stream(client)
        client.transport.write(data[:400_000])
        pipe.pump(until=lambda: server_side and len(server_side[0].received) > 100_000)
        # Switch: datagrams now take another route, and the ones in flight are lost.
        pipe.route = "direct"
        pipe.to_server.clear()
        pipe.to_client.clear()
        client.transport.write(data[400_000:])
        client.transport.loseWriteConnection()
        pipe.pump(until=lambda: server_side[0].lost is not None)
        self.assertEqual(
            hashlib.sha256(server_side[0].received).digest(), hashlib.sha256(data).digest()
        )
        self.assertGreater(pipe.routes_used["relay"], 10)
        self.assertGreater(pipe.routes_used["direct"], 10)

    def test_loss(self):
        """With 5% of datagrams dropped (deterministically), both directions stay byte-exact."""
        pipe = Pipe()
        rng = random.Random(5)
        pipe.drop = lambda n, direction: rng.random() < 0.05
        pipe.pump(until=lambda: pipe.client.authenticated and pipe.server.authenticated)
        up = random.Random(11).randbytes(500_000)
        down = random.Random(12).randbytes(500_000)
        server_side = listen(pipe, pipe.server, HalfClose, down)
        client = HalfClose()
        pipe.client.open_stream(client)
        client.transport.write(up)
        client.transport.loseWriteConnection()
        pipe.pump(until=lambda: server_side and server_side[0].read_lost, limit=300)
        server_side[0].transport.loseWriteConnection()
        pipe.pump(
            until=lambda: client.lost is not None and server_side[0].lost is not None, limit=300
        )
        self.assertEqual(bytes(server_side[0].received), up)
        self.assertEqual(bytes(client.received), down)
        self.assertGreater(pipe.dropped, 20)


class CloseTests(unittest.TestCase):
    def test_close_tells_peer_and_streams(self):
        """close() ends local streams, tells observers, and the peer learns the reason."""
        pipe = connected_pipe()
        server_side = listen(pipe, pipe.server, Collect)
        client = Collect(b"hi")
        pipe.client.open_stream(client)
        pipe.pump(until=lambda: bool(server_side))
        reasons = []
        pipe.client.on_closed(reasons.append)
        pipe.client.close("done here")
        self.assertEqual(reasons[0].reason, "done here")
        client.lost.trap(error.ConnectionLost)
        pipe.clock.advance(0)
        self.assertEqual(
            [
                c
                for c in pipe.clock.getDelayedCalls()
                if getattr(c.func, "__self__", None) is pipe.client
            ],
            [],
        )
        peer_reasons = []
        pipe.server.on_closed(peer_reasons.append)
        pipe.pump(until=lambda: bool(peer_reasons))
        self.assertEqual(peer_reasons[0].reason, "done here")
        self.assertTrue(peer_reasons[0].by_peer)
        server_side[0].lost.trap(error.ConnectionLost)
        self.assertRaises(SessionClosed, pipe.client.send_datagram, b"x")

    def test_idle_timeout(self):
        """A session whose peer goes silent closes after the idle timeout, timers cleared."""
        pipe = connected_pipe(options=QuicOptions(idle_timeout=5.0))
        reasons = []
        pipe.client.on_closed(reasons.append)
        pipe.drop = lambda n, direction: True
        pipe.clock.advance(3)
        self.assertEqual(reasons, [])
        for _ in range(100):
            pipe.clock.advance(0.1)
        self.assertEqual(len(reasons), 1)
        pipe.clock.advance(0)
        self.assertFalse(
            any(c.active() for c in pipe.clock.getDelayedCalls() if c.func.__self__ is pipe.client)
        )

    def test_keepalive(self):
        """A quiet but healthy session stays up well past the idle timeout (PINGs)."""
        pipe = connected_pipe(options=QuicOptions(idle_timeout=5.0, keepalive=2.0))
        pipe.pump(until=lambda: pipe.clock.seconds() > 30, limit=40, step=0.05)
        self.assertIsNone(pipe.client.closed)
        self.assertIsNone(pipe.server.closed)
        self.assertGreater(pipe.client.stats.keepalives_sent + pipe.server.stats.keepalives_sent, 5)

    def test_without_keepalive_idles_out(self):
        """Without keepalives, a quiet session closes at the idle timeout."""
        pipe = connected_pipe(options=QuicOptions(idle_timeout=5.0, keepalive=None))
        pipe.pump(until=lambda: pipe.client.closed is not None, limit=10, step=0.05)
        self.assertIn("Idle timeout", pipe.client.closed.reason)

    def test_engine_internals_pinned(self):
        """The aioquic internals holepunch relies on are there (see holepunch.quic._engine)."""
        from holepunch.quic._engine import check_aioquic

        check_aioquic()
        pipe = connected_pipe()
        client = Collect()
        pipe.client.open_stream(client)
        client.transport.write(b"a" * 5000)
        self.assertEqual(pipe.client.stream_backlog(client.transport.stream_id), 5000)
        pipe.pump()
        self.assertEqual(pipe.client.stream_backlog(client.transport.stream_id), 0)
        self.assertIsInstance(pipe.server, QuicSession)
        engine = pipe.client._quic
        self.assertIsNone(engine.termination())
        self.assertEqual(engine.datagrams_pending(), 0)
        engine.send_datagram_frame(b"x")
        self.assertEqual(engine.datagrams_pending(), 1)
        pipe.client.close("bye")
        self.assertEqual(engine.termination().reason_phrase, "bye")

    def test_when_acknowledged_waits_for_the_fin(self):
        """Data acknowledged is not enough: the FIN must be too (a session closed after
        the data but before a lost FIN arrives would cut the peer's stream short)."""
        pipe = connected_pipe()
        server_side = listen(pipe, pipe.server, Collect)
        client = Collect()
        pipe.client.open_stream(client)
        client.transport.write(b"d" * 20_000)
        stream_id = client.transport.stream_id
        pipe.pump(until=lambda: pipe.client.stream_backlog(stream_id) == 0)
        lost = []
        pipe.drop = lambda n, d: d == "to_server" and not lost and not lost.append(n)
        client.transport.loseWriteConnection()
        acknowledged = pipe.client.when_acknowledged(stream_id)
        pipe.clock.advance(0)
        pipe.deliver()
        self.assertEqual(len(lost), 1)  # the datagram with the FIN is lost
        self.assertFalse(acknowledged.called)
        pipe.pump(until=lambda: acknowledged.called)  # retransmitted, then acknowledged
        pipe.pump(until=lambda: server_side[0].lost is not None)
        self.assertEqual(bytes(server_side[0].received), b"d" * 20_000)

    def test_paused_reader_keeps_what_arrived_before_a_clean_close(self):
        """The peer sends everything and its FIN, sees it acknowledged, and closes the
        session while our reader is paused: the reader still gets every byte as it
        resumes, then the end of the stream (ConnectionDone), as with TCP."""
        pipe = connected_pipe()
        server_side = listen(pipe, pipe.server, Collect)
        client = Collect()
        pipe.client.open_stream(client)
        client.transport.write(b"x")
        pipe.pump(until=lambda: server_side and server_side[0].received == b"x")
        reader = server_side[0]
        reader.transport.pauseProducing()
        reader.transport.loseWriteConnection()  # our side is done
        data = random.Random(5).randbytes(200_000)
        client.transport.write(data)
        client.transport.loseWriteConnection()
        acknowledged = pipe.client.when_acknowledged(client.transport.stream_id)
        pipe.pump(until=lambda: acknowledged.called)
        pipe.client.close("all sent")
        pipe.pump(until=lambda: pipe.server.closed is not None)
        self.assertIsNone(reader.lost)
        reader.transport.resumeProducing()
        pipe.clock.advance(0)
        self.assertEqual(bytes(reader.received), b"x" + data)
        self.assertIsNotNone(reader.lost)
        self.assertTrue(reader.lost.check(error.ConnectionDone), reader.lost)

    def test_when_acknowledged(self):
        """when_acknowledged fires once the peer acknowledged the stream's bytes and FIN
        (not when they were merely written), and at once on a closed session."""
        pipe = connected_pipe()
        listen(pipe, pipe.server, Collect)
        client = Collect()
        pipe.client.open_stream(client)
        client.transport.write(b"a" * 50_000)
        client.transport.loseWriteConnection()
        acknowledged = pipe.client.when_acknowledged(client.transport.stream_id)
        self.assertFalse(acknowledged.called)
        pipe.pump(until=lambda: acknowledged.called)
        self.assertEqual(pipe.client.stream_backlog(client.transport.stream_id), 0)
        other = Collect()
        pipe.client.open_stream(other)
        other.transport.write(b"b" * 10_000)
        waiting = pipe.client.when_acknowledged(other.transport.stream_id)
        pipe.client.close("bye")
        self.assertTrue(waiting.called)

    def test_datagram_queue_bounded(self):
        """Datagrams sent faster than the path takes them are dropped past the queue bound."""
        pipe = connected_pipe(options=QuicOptions(datagram_send_queue=10))
        for i in range(100):
            pipe.client.send_datagram(b"%04d" % i + b"d" * 996)
        dropped = pipe.client.stats.datagrams_dropped_queue_full
        got = []
        pipe.server.on_datagram(got.append)
        pipe.pump()
        self.assertGreater(dropped, 0)
        self.assertEqual(len(got), 100 - dropped)
        self.assertGreater(len(got), 10)

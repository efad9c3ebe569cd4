"""The fast path of QuietWebSocketServerProtocol: whole text frames read and written by
hand, everything else by Autobahn, with the same messages either way."""

from __future__ import annotations

import os
import random
import struct

from autobahn.twisted.websocket import WebSocketServerFactory
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from websockets import speedups, utils

from holepunch.signaling.autobahn_fixes import (
    QuietWebSocketServerProtocol,
    UncountedTraffic,
    apply_mask,
    cancel_timers,
)
from holepunch.signaling.heldwrites import write_through

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """A client frame (masked, as clients must)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n <= 125:
        head += bytes([bit | n])
    elif n <= 0xFFFF:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of the unmasked frames a server wrote."""
    out, pos = [], 0
    while pos < len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if n == 126:
            n, pos = struct.unpack("!H", data[pos : pos + 2])[0], pos + 2
        elif n == 127:
            n, pos = struct.unpack("!Q", data[pos : pos + 8])[0], pos + 8
        out.append((opcode, data[pos : pos + n]))
        pos += n
    return out


class Transport(StringTransport):
    """StringTransport that, like a TCP transport, lets Autobahn unregister no producer."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


class Recorder(QuietWebSocketServerProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[bytes, bool]] = []
        self.parsed_by_autobahn = 0
        self.echo_to: list[Recorder] = []
        """Connections each message is sent on to (as a relay does)."""
        self.close_on: bytes | None = None
        """A message that makes this connection close (code 1000)."""

    def processData(self) -> bool:
        self.parsed_by_autobahn += 1
        return bool(super().processData())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((payload, isBinary))
        for other in self.echo_to:
            other.sendMessage(payload)
        if payload == self.close_on:
            self.sendClose(1000)


def open_server(**options: object) -> tuple[Recorder, Transport]:
    factory = WebSocketServerFactory("ws://127.0.0.1/")
    factory.protocol = Recorder
    factory.setProtocolOptions(utf8validateIncoming=False, **options)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert isinstance(proto, Recorder)
    transport = Transport()
    proto.makeConnection(transport)
    proto.dataReceived(HANDSHAKE)
    assert proto.state == proto.STATE_OPEN, transport.value()
    transport.clear()
    return proto, transport


class UnmaskTests(SynchronousTestCase):
    @given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
    @settings(max_examples=200, deadline=None)
    def test_matches_the_definition(self, payload: bytes, mask: bytes) -> None:
        """The unmasking the fast path uses, and its fallback, are RFC 6455's."""
        expected = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.assertEqual(apply_mask(payload, mask), expected)
        self.assertEqual(utils.apply_mask(payload, mask), expected)

    def test_in_c(self) -> None:
        """The C one is the one taken where websockets has its extension (here)."""
        self.assertIs(apply_mask, speedups.apply_mask)


class FastPathTests(SynchronousTestCase):
    """The same messages whatever the mix of frames and however the bytes are cut."""

    def stream(self) -> tuple[bytes, list[tuple[bytes, bool]]]:
        rng = random.Random(7)
        parts, expected = [], []
        for i in range(40):
            size = rng.choice([0, 5, 125, 126, 300, 70000 if i % 13 == 0 else 200])
            text = bytes(rng.choice(b"abcdefghij") for _ in range(size))
            kind = i % 7
            if kind == 3:  # a fragmented text message: Autobahn's path
                parts += [frame(1, text[:3], fin=False), frame(0, text[3:])]
                expected.append((text, False))
            elif kind == 5:  # binary
                parts.append(frame(2, text))
                expected.append((text, True))
            elif kind == 6:  # a ping in between (answered by a pong)
                parts += [frame(9, b"hi"), frame(1, text)]
                expected.append((text, False))
            else:
                parts.append(frame(1, text))
                expected.append((text, False))
        return b"".join(parts), expected

    def test_one_read(self) -> None:
        proto, transport = open_server()
        data, expected = self.stream()
        proto.dataReceived(data)
        self.assertEqual(proto.messages, expected)
        pongs = [p for op, p in server_frames(transport.value()) if op == 10]
        self.assertEqual(pongs, [b"hi"] * 5)

    def test_every_cut(self) -> None:
        """Reads of 1, 2, 3, 7 and 1000 bytes: the same messages, in order."""
        data, expected = self.stream()
        for size in (1, 2, 3, 7, 1000):
            proto, _ = open_server()
            for i in range(0, len(data), size):
                proto.dataReceived(data[i : i + size])
            self.assertEqual(proto.messages, expected, size)

    def test_whole_text_frames_skip_autobahns_parser(self) -> None:
        """Whole text frames, however cut, never reach Autobahn's frame parser."""
        proto, _ = open_server()
        data = b"".join(frame(1, b"m%d" % i * 40) for i in range(50))
        for i in range(0, len(data), 333):
            proto.dataReceived(data[i : i + 333])
        self.assertEqual(len(proto.messages), 50)
        self.assertEqual(proto.parsed_by_autobahn, 0)

    def test_one_frame_per_read(self) -> None:
        """A read that is one whole frame (the common case at moderate rates) gives its
        message, at every length class; 64-bit lengths and anything but a text frame go
        to Autobahn."""
        proto, _ = open_server()
        sizes = [0, 1, 2, 3, 125, 126, 200, 65535, 65536]
        for n in sizes:
            proto.dataReceived(frame(1, bytes([n % 251]) * n))
        self.assertEqual(proto.messages, [(bytes([n % 251]) * n, False) for n in sizes])
        parsed = proto.parsed_by_autobahn
        self.assertGreater(parsed, 0)  # the 65,536-byte frame (a 64-bit length)
        proto.dataReceived(frame(1, b"after"))
        self.assertEqual(proto.parsed_by_autobahn, parsed)
        proto.dataReceived(frame(2, b"binary"))
        self.assertEqual(proto.messages[-2:], [(b"after", False), (b"binary", True)])
        self.assertGreater(proto.parsed_by_autobahn, parsed)

    def test_one_frame_per_read_checked_as_autobahn_checks(self) -> None:
        """Alone in its read, an unmasked or oversized frame still fails the connection."""
        for bad, why in [
            (frame(1, b"bare-and-long", masked=False), "unmasked"),
            (frame(1, b"x" * 101), "exceeds payload limit"),
        ]:
            proto, transport = open_server(maxMessagePayloadSize=100, maxFramePayloadSize=100)
            proto.dataReceived(frame(1, b"ok, first"))
            proto.dataReceived(bad)
            self.assertEqual(proto.messages, [(b"ok, first", False)])
            self.assertTrue(proto.failedByMe)
            self.assertIn(why, proto.wasNotCleanReason)
            self.assertTrue(transport.disconnecting)

    def test_traffic_not_counted(self) -> None:
        """Autobahn's traffic statistics are not kept: they read 0 whatever went by, on
        either path, and serialise as Autobahn's do."""
        proto, transport = open_server()
        proto.echo_to = [proto]
        proto.dataReceived(frame(1, b"fast") + frame(9, b"ping") + frame(2, b"slow"))
        self.assertEqual(len(proto.messages), 2)
        self.assertTrue(transport.value())
        stats = proto.trafficStats
        self.assertIsInstance(stats, UncountedTraffic)
        self.assertEqual((stats.incomingWebSocketMessages, stats.outgoingOctetsWireLevel), (0, 0))
        self.assertEqual(stats.__json__()["incomingWebSocketMessages"], 0)
        stats.reset()

    def test_unmasked_frame_fails_the_connection(self) -> None:
        """A client frame without a mask is a protocol violation (RFC 6455 5.1)."""
        proto, transport = open_server()
        proto.dataReceived(frame(1, b"ok") + frame(1, b"bare", masked=False) + frame(1, b"x"))
        self.assertEqual(proto.messages, [(b"ok", False)])
        self.assertTrue(proto.failedByMe)
        self.assertIn("unmasked", proto.wasNotCleanReason)
        self.assertTrue(transport.disconnecting)

    def test_too_large_fails_as_autobahn_does(self) -> None:
        """Over maxMessagePayloadSize: Autobahn fails the connection, nothing delivered."""
        proto, transport = open_server(maxMessagePayloadSize=100, maxFramePayloadSize=100)
        proto.dataReceived(frame(1, b"a" * 50) + frame(1, b"b" * 101))
        self.assertEqual(proto.messages, [(b"a" * 50, False)])
        self.assertTrue(proto.failedByMe)
        self.assertIn("exceeds payload limit", proto.wasNotCleanReason)

    def test_send_frames(self) -> None:
        """Text messages of every length class are framed as Autobahn frames them."""
        proto, transport = open_server()
        payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 65536]
        for payload in payloads:
            proto.sendMessage(payload)
        frames = server_frames(transport.value())
        self.assertEqual(frames, [(1, p) for p in payloads])

    def test_close_mid_read(self) -> None:
        """A message that closes the connection: the frames after it in the same read go
        to Autobahn's parser (which, closing, still delivers them)."""
        proto, transport = open_server()
        proto.close_on = b"bye"
        self.addCleanup(cancel_timers, proto)  # its closing-handshake timer, on the reactor
        proto.dataReceived(frame(1, b"one") + frame(1, b"bye") + frame(1, b"after"))
        self.assertEqual(proto.messages, [(b"one", False), (b"bye", False), (b"after", False)])
        self.assertGreater(proto.parsed_by_autobahn, 0)
        self.assertEqual(proto.state, proto.STATE_CLOSING)
        self.assertEqual([op for op, _ in server_frames(transport.value())], [8])


class HeldWritesTests(SynchronousTestCase):
    """What a read makes the server write goes out after the read, in order, in one
    write per connection."""

    def test_one_write_per_connection_per_read(self) -> None:
        """Three messages relayed in one read: one write to the other connection, holding
        the three frames in order."""
        sender, _ = open_server()
        receiver, transport = open_server()
        sender.echo_to = [receiver]
        writes: list[bytes] = []
        write = transport.write
        transport.write = lambda data: (writes.append(data), write(data))  # type: ignore[method-assign]
        sender.dataReceived(b"".join(frame(1, b"m%d" % i * 100) for i in range(3)))
        self.assertEqual(len(writes), 1)
        self.assertEqual(server_frames(writes[0]), [(1, b"m%d" % i * 100) for i in range(3)])

    def test_lone_frame_written_during_its_read(self) -> None:
        """A read that is one whole frame and came alone holds nothing: what its message
        makes the server write goes out at once, while the message is handled; two
        frames in one read are still held to the read's end."""
        sender, _ = open_server()
        receiver, transport = open_server()
        seen: list[bytes] = []

        def relay(payload: bytes, isBinary: bool) -> None:
            receiver.sendMessage(payload)
            seen.append(transport.value())

        sender.onMessage = relay  # type: ignore[method-assign]
        sender.dataReceived(frame(1, b"lone"))
        self.assertEqual(server_frames(seen[0]), [(1, b"lone")])
        transport.clear()
        sender.dataReceived(frame(1, b"one") + frame(1, b"two"))
        self.assertEqual(seen[1:], [b"", b""])
        self.assertEqual(server_frames(transport.value()), [(1, b"one"), (1, b"two")])

    def test_autobahns_writes_keep_their_place(self) -> None:
        """A frame Autobahn writes itself (a close) after held frames follows them."""
        proto, transport = open_server()
        proto.echo_to = [proto]
        proto.close_on = b"bye"
        self.addCleanup(cancel_timers, proto)  # its closing-handshake timer, on the reactor
        proto.dataReceived(frame(1, b"hello") + frame(1, b"bye"))
        ops = [(op, payload) for op, payload in server_frames(transport.value())]
        self.assertEqual(ops[:2], [(1, b"hello"), (1, b"bye")])
        self.assertEqual(ops[2][0], 8)

    def test_write_through_other_transports(self) -> None:
        """On a transport that is not plain TCP, write_through is write."""
        transport = Transport()
        write_through(transport, b"abc")
        write_through(transport, b"def")
        self.assertEqual(transport.value(), b"abcdef")

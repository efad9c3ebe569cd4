"""The signaling daemon under abuse, on real sockets (127.0.0.1 only): clients that stop
reading, strangers relaying to peers they share no room with, expired and shared
tokens, slow HTTP heads and too many connections from one address (issue 17)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from holepunch.daemon.metrics import Metrics
from holepunch.signaling import auth
from holepunch.signaling import messages as m
from holepunch.signaling.server import SignalingServerProtocol
from tests.integration.test_signaling_integration import IntegrationTestCase
from tests.signaling_helpers import RawClientProtocol

TWISTED_WRITE_BUFFER = 65536
"""abstract.FileDescriptor.bufferSize: where Twisted pauses a transport's producer."""


def buffered(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds, not yet handed to the kernel (test-only peek)."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class _Recorder(Protocol):
    """A plain TCP client: what it got, and a Deferred for the end of the connection."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[float] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(reactor.seconds())


class HardeningTestCase(IntegrationTestCase):
    timeout = 30

    async def member(self, url: str, peer_id: str, room: str | None = "swarm") -> RawClientProtocol:
        proto = await self.raw(url)
        await self.register_raw(proto, peer_id)
        if room is not None:
            reply = await proto.request({"type": "join-room", "roomId": room, "id": "join"})
            self.assertEqual(reply["type"], "room-joined")
        return proto

    def server_side(self, service: Any, peer_id: str) -> SignalingServerProtocol:
        for proto in service.factory.protocols:
            if proto.session is not None and proto.session.peer_id == peer_id:
                return proto  # type: ignore[no-any-return]
        raise AssertionError(f"no connection registered as {peer_id}")

    async def until(self, proto: RawClientProtocol, kind: str) -> dict[str, Any]:
        """The next message of type ``kind`` (skipping others)."""
        while True:
            message = await proto.next()
            if message["type"] == kind:
                return message


class SlowReaderTests(HardeningTestCase):
    """Finding 1: what the server queues for a client that does not read is bounded."""

    async def test_slow_reader_is_dropped_and_the_sender_told(self) -> None:
        """A registered client that stops reading is dropped once the server holds more
        than send_buffer_limit for it; the relay that overflowed gets peer-too-slow with
        its id; the server never buffered more than the limit, Twisted's own buffer and
        one message; the other peers carry on."""
        limit = 100_000
        service, url = await self.server(send_buffer_limit=limit, message_burst=200)
        slow = await self.member(url, "slow")
        sender = await self.member(url, "sender")
        other = await self.member(url, "other")
        await self.until(slow, "peer-joined")
        # Small kernel buffers on both ends, so the bytes pile up in the server process.
        slow.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # type: ignore[union-attr]
        server_proto = self.server_side(service, "slow")
        transport: Any = server_proto.transport
        transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        peak = [0]
        write = transport.write

        def measured_write(data: bytes) -> None:
            write(data)
            peak[0] = max(peak[0], buffered(transport))

        transport.write = measured_write
        slow.transport.pauseProducing()  # type: ignore[union-attr]  # stops reading

        offer = {"sdp": "x" * 30_000}
        size = len(m.encode(m.relayed("offer", "sender", offer)))
        for i in range(60):
            sender.send_json({"type": "offer", "to": "slow", "offer": offer, "id": i})
        reply = await sender.request({"type": "ping", "id": "end"})
        replies = [*sender.received, reply]
        while reply["type"] != "pong":
            reply = await sender.next()
            replies.append(reply)
        sender.received.clear()
        errors = [r for r in replies if r["type"] == "error"]
        self.assertEqual([e["code"] for e in errors][:1], [m.PEER_TOO_SLOW])
        self.assertIsInstance(errors[0]["id"], int)
        self.assertEqual(
            {r["type"] for r in replies} - {"ack", "error", "pong", "peer-joined", "peer-left"},
            set(),
        )
        self.assertLessEqual({e["code"] for e in errors}, {m.PEER_TOO_SLOW, m.PEER_NOT_FOUND})
        self.assertEqual(service.stats()["slow_readers_dropped"], 1)
        metrics = Metrics()
        metrics.watch_signaling(service.stats)
        self.assertIn(b"holepunch_signaling_slow_readers_dropped_total 1.0", metrics.render()[0])
        self.assertLessEqual(peak[0], limit + TWISTED_WRITE_BUFFER + size)
        # Everyone else: told the slow peer left, and still served.
        left = await self.until(other, "peer-left")
        self.assertEqual(left["peerId"], "slow")
        self.assertEqual(
            (await other.request({"type": "offer", "to": "sender", "offer": {}, "id": 7}))["type"],
            "ack",
        )
        self.assertEqual((await self.until(sender, "offer"))["from"], "other")
        slow.transport.resumeProducing()  # type: ignore[union-attr]
        await slow.lost


class RelayPolicyTests(HardeningTestCase):
    """Finding 3: relays only between peers that share a room, unless --open-relay."""

    async def test_stranger_cannot_relay(self) -> None:
        """An offer, answer or candidate to a peer in none of the sender's rooms gets
        no-shared-room with the request's id; the target sees nothing; the connection
        stays usable, and a shared room opens the way."""
        _, url = await self.server()
        bob = await self.member(url, "bob", room="bobs-room")
        mallory = await self.member(url, "mallory", room="elsewhere")
        for i, (kind, field) in enumerate(m.RELAY_FIELDS.items()):
            reply = await mallory.request({"type": kind, "to": "bob", field: {"x": 1}, "id": i})
            self.assertEqual((reply["type"], reply["code"], reply["id"]),
                             ("error", m.NO_SHARED_ROOM, i))  # fmt: skip
        self.assertEqual((await bob.request({"type": "ping", "id": "p"}))["type"], "pong")
        self.assertEqual(bob.received, [])
        await mallory.request({"type": "join-room", "roomId": "bobs-room", "id": "j"})
        reply = await mallory.request({"type": "offer", "to": "bob", "offer": {}, "id": 9})
        self.assertEqual(reply["type"], "ack")

    async def test_open_relay(self) -> None:
        """With open_relay (--open-relay), peers in no common room relay as before."""
        _, url = await self.server(open_relay=True)
        bob = await self.member(url, "bob", room=None)
        alice = await self.member(url, "alice", room=None)
        reply = await alice.request({"type": "offer", "to": "bob", "offer": {"s": 1}, "id": 1})
        self.assertEqual(reply["type"], "ack")
        self.assertEqual((await bob.next())["offer"], {"s": 1})


class TokenTests(HardeningTestCase):
    """Finding 4: tokens are enforced for the life of the connection."""

    async def test_expired_token_closes_the_connection(self) -> None:
        """A connection is closed with 4002 when its token expires; a renew with a fresh
        token (same peer id) moves the deadline; the others stay."""
        clock = Clock()
        clock.advance(1_000_000)
        service, url = await self.server(clock=clock, auth_secret="k")
        short = auth.mint_token("k", "short", 60, clock.seconds())
        long = auth.mint_token("k", "long", 600, clock.seconds())
        a = await self.raw(url, {"Authorization": f"Bearer {short}"})
        b = await self.raw(url + f"?token={long}")
        await self.register_raw(a, "short")
        await self.register_raw(b, "long")
        clock.advance(59)
        fresh = auth.mint_token("k", "short", 120, clock.seconds())
        stranger = auth.mint_token("k", "someone-else", 120, clock.seconds())
        reply = await a.request({"type": "renew", "token": stranger, "id": 1})
        self.assertEqual((reply["code"], reply["id"]), (m.UNAUTHORIZED, 1))
        reply = await a.request({"type": "renew", "token": "hp1.bad", "id": 2})
        self.assertEqual((reply["code"], reply["id"]), (m.INVALID_TOKEN, 2))
        reply = await a.request({"type": "renew", "token": fresh, "id": 3})
        self.assertEqual((reply["type"], reply["id"]), ("renewed", 3))
        clock.advance(60)  # past the first token's expiry: renewed, still open
        self.assertEqual((await a.request({"type": "ping", "id": 4}))["type"], "pong")
        clock.advance(61)  # past the renewed expiry
        closed = await a.lost
        self.assertEqual(closed[1], m.CLOSE_TOKEN_EXPIRED)
        self.assertEqual(service.stats()["tokens_expired"], 1)
        self.assertEqual((await b.request({"type": "ping", "id": 5}))["type"], "pong")
        self.assertIn(1_000_000 + 600, [c.getTime() for c in clock.getDelayedCalls()])

    async def test_single_use_token(self) -> None:
        """With token_single_use a second connection with a token in use is refused (409);
        once the first is gone, the token works again."""
        _, url = await self.server(auth_secret="k", token_single_use=True)
        token = auth.mint_token("k", "alice", 600, reactor.seconds())
        first = await self.raw(url + f"?token={token}")
        await self.register_raw(first, "alice")
        code, body, _ = await self.http_get(
            url.replace("ws:", "http:") + f"?token={token}",
            {
                "Upgrade": ["websocket"],
                "Connection": ["Upgrade"],
                "Sec-WebSocket-Key": ["dGhlIHNhbXBsZSBub25jZQ=="],
                "Sec-WebSocket-Version": ["13"],
            },
        )
        self.assertEqual(code, 409)
        first.sendClose(1000)
        await first.lost
        again = await self.raw(url + f"?token={token}")
        await self.register_raw(again, "alice")

    async def test_refused_handshakes_are_summarised(self) -> None:
        """Finding 7: twenty refused handshakes (no token) log one line at once and one
        summary later, not two lines each; each still gets its 401."""
        service, url = await self.server(auth_secret="k")
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        headers = {
            "Upgrade": ["websocket"],
            "Connection": ["Upgrade"],
            "Sec-WebSocket-Key": ["dGhlIHNhbXBsZSBub25jZQ=="],
            "Sec-WebSocket-Version": ["13"],
        }
        for _ in range(20):
            code, _body, _ = await self.http_get(url.replace("ws:", "http:"), headers)
            self.assertEqual(code, 401)
        service.factory.log_refusals(reactor.seconds())  # the sweep timer's call
        lines = [
            e
            for e in events
            if e.get("log_namespace", "").startswith(("autobahn", "holepunch.signaling"))
            and e.get("log_level") is not None
            and e["log_level"] >= LogLevel.info
        ]
        self.assertEqual(len(lines), 2, [formatEvent(e) for e in lines])
        self.assertEqual([e["refusals"] for e in lines], [{"401": 1}, {"401": 19}])


class HttpGuardTests(HardeningTestCase):
    """Finding 6: plain HTTP connections are bounded in time and in number."""

    async def connect(self, port: int) -> _Recorder:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        proto: _Recorder = await endpoint.connect(Factory.forProtocol(_Recorder))
        self.addCleanup(self.close, proto)
        return proto

    async def close(self, proto: _Recorder) -> None:
        if not proto.lost.called:
            proto.transport.loseConnection()  # type: ignore[union-attr]
        await proto.lost

    async def test_slow_head_is_cut_at_the_deadline(self) -> None:
        """A client that trickles one header line at a time is closed once the head
        deadline passes, however busy it keeps the connection."""
        deadline = 1.0
        service, _ = await self.server(http_head_timeout=deadline)
        port = service.port.getHost().port  # type: ignore[union-attr]
        proto = await self.connect(port)
        started = reactor.seconds()
        proto.transport.write(b"GET / HTTP/1.1\r\n")  # type: ignore[union-attr]
        trickle = task.LoopingCall(
            lambda: proto.transport.write(b"X-Slow: 1\r\n")  # type: ignore[union-attr]
        )
        trickle.start(0.2)
        self.addCleanup(lambda: trickle.running and trickle.stop())
        lost = proto.lost
        lost.addTimeout(deadline * 5, reactor)
        ended = await lost
        self.assertGreaterEqual(ended - started, deadline * 0.9)
        self.assertEqual(proto.data, b"")

    async def test_connections_per_address(self) -> None:
        """More plain connections from one address than max_connections_per_address:
        the extra one is closed at once; the others are served."""
        service, _ = await self.server(max_connections_per_address=3)
        port = service.port.getHost().port  # type: ignore[union-attr]
        kept = [await self.connect(port) for _ in range(3)]
        extra = await self.connect(port)
        extra.lost.addTimeout(5, reactor)
        await extra.lost
        self.assertEqual(extra.data, b"")
        kept[0].transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # type: ignore[union-attr]
        await kept[0].lost
        self.assertTrue(kept[0].data.startswith(b"HTTP/1.1 200"))
        # Its slot is free again: a new connection is served, not closed at once.
        replacement = await self.connect(port)
        replacement.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # type: ignore[union-attr]
        await replacement.lost
        self.assertTrue(replacement.data.startswith(b"HTTP/1.1 200"))
        self.assertEqual(service.site.refused, 1)  # type: ignore[attr-defined]


class BehindAProxyTests(TestCase):
    """With X-Forwarded-For trusted, the cap per address counts clients, not the proxy:
    while more handshakes than the cap are under way from the proxy's one address (a
    reconnect storm through nginx), another client's handshake is still welcomed."""

    async def test_proxy_address_is_not_capped(self) -> None:
        from holepunch.testing.loopback import start_signaling_server
        from tests.signaling_helpers import raw_client_factory

        _, url = await start_signaling_server(
            self, reactor, trust_x_forwarded_for=1, max_connections_per_address=2
        )
        port = int(url.rsplit(":", 1)[1].strip("/"))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        for _ in range(3):  # handshakes begun, not finished: all from 127.0.0.1
            pending = await endpoint.connect(Factory.forProtocol(Protocol))
            self.addCleanup(pending.transport.loseConnection)
        factory = raw_client_factory(url, {"X-Forwarded-For": "192.0.2.7"})
        client = await endpoint.connect(factory)
        self.addCleanup(client.transport.loseConnection)
        welcome = await client.next()
        self.assertEqual(welcome["yourAddress"]["address"], "192.0.2.7")

"""Integration tests of the signaling server and client on real sockets (127.0.0.1 only):
relaying, garbage isolation, eviction, reconnect with token, auth, TLS, HTTP on the port."""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, PartialDownloadError, readBody
from twisted.web.http_headers import Headers
from twisted.web.static import Data

from holepunch.signaling import auth
from holepunch.signaling import messages as m
from holepunch.signaling.client import SignalingAuthError, SignalingClient, SignalingRequestError
from holepunch.signaling.heldwrites import held
from holepunch.signaling.server import (
    SendBacklog,
    SignalingConfig,
    SignalingService,
    make_signaling_service,
)
from tests.signaling_helpers import (
    FreezingProxy,
    RawClientProtocol,
    needs_ipv6,
    raw_client_factory,
)
from tests.tls_helpers import make_pki

LOCAL = "tcp:0:interface=127.0.0.1"


def next_event(client: SignalingClient, event: str, match: Any = None) -> defer.Deferred[Any]:
    """A Deferred for the client's next ``event`` (that satisfies ``match``)."""
    d: defer.Deferred[Any] = defer.Deferred()

    def seen(message: Any) -> None:
        if not d.called and (match is None or match(message)):
            subscription.cancel()
            d.callback(message)

    subscription = client.on(event, seen)
    return d


class IntegrationTestCase(TestCase):
    timeout = 30

    async def server(
        self, clock: Any = None, endpoint: str = LOCAL, **options: Any
    ) -> tuple[SignalingService, str]:
        config = SignalingConfig(endpoint=endpoint, **options)
        service = make_signaling_service(config, reactor, clock=clock)
        service.startService()
        self.addCleanup(service.stopService)
        port = await service.when_listening()
        scheme = "wss" if endpoint.startswith("ssl:") else "ws"
        return service, f"{scheme}://127.0.0.1:{port.getHost().port}/"

    async def client(
        self, url: str, peer_id: str, register: bool = True, **kw: Any
    ) -> SignalingClient:
        kw.setdefault("retry_initial", 0.05)
        kw.setdefault("jitter", lambda: 0.0)
        client = SignalingClient(url, peer_id, reactor=reactor, **kw)
        client.startService()
        self.addCleanup(self.stop_client, client)
        if register:
            await client.register()
        return client

    async def stop_client(self, client: SignalingClient) -> None:
        closed = next_event(client, "disconnected") if client.connected else None
        if client.running:
            await client.stopService()
        if closed is not None:
            await closed

    async def raw(
        self, url: str, headers: dict[str, str] | None = None, opened: bool = True
    ) -> RawClientProtocol:
        port = int(url.split(":")[2].split("/")[0])
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        proto: RawClientProtocol = await endpoint.connect(raw_client_factory(url, headers))
        self.addCleanup(self.close_raw, proto)
        if opened:
            await proto.opened
        return proto

    async def close_raw(self, proto: RawClientProtocol) -> None:
        if proto.close_info is None:
            if proto.state == proto.STATE_OPEN:
                proto.sendClose(1000)
            else:
                proto.transport.loseConnection()  # type: ignore[union-attr]
        await proto.lost

    async def register_raw(self, proto: RawClientProtocol, peer_id: str) -> dict[str, Any]:
        welcome = await proto.next()
        self.assertEqual(welcome["type"], "welcome")
        reply = await proto.request({"type": "register", "peerId": peer_id, "id": "reg"})
        self.assertEqual(reply["type"], "registered")
        return reply

    async def http_get(
        self, url: str, headers: dict[str, list[str]] | None = None
    ) -> tuple[int, bytes, Any]:
        response = await Agent(reactor).request(b"GET", url.encode(), Headers(headers or {}))
        try:
            body = await readBody(response)
        except PartialDownloadError as e:  # Autobahn's refusals carry no Content-Length
            body = e.response or b""
        return response.code, body, response


class RelayTests(IntegrationTestCase):
    """Two clients in a room relay offers through the server."""

    async def test_two_clients_relay_offers(self) -> None:
        """Alice's offer, Bob's answer and their candidates cross the server with from set."""
        service, url = await self.server()
        alice = await self.client(url, "alice", metadata={"client": "test"})
        bob = await self.client(url, "bob")
        self.assertEqual(await alice.join_room("torrent-abc"), [])
        joined = next_event(alice, "peer-joined")
        peers = await bob.join_room("torrent-abc")
        self.assertEqual(
            [(p["peerId"], p["metadata"]) for p in peers], [("alice", {"client": "test"})]
        )
        self.assertEqual((await joined)["peerId"], "bob")

        offer = next_event(bob, "offer")
        await alice.send_offer("bob", {"type": "offer", "sdp": "v=0..."})
        self.assertEqual(
            await offer,
            {"type": "offer", "from": "alice", "offer": {"type": "offer", "sdp": "v=0..."}},
        )
        answer = next_event(alice, "answer")
        candidate = next_event(alice, "ice-candidate")
        await bob.send_answer("alice", {"type": "answer", "sdp": "v=0..."})
        await bob.send_ice_candidate(
            "alice", {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}
        )
        self.assertEqual((await answer)["from"], "bob")
        self.assertEqual((await candidate)["candidate"]["candidate"][:11], "candidate:1")

        stats = service.stats()
        self.assertEqual((stats["peers"], stats["rooms"], stats["connections"]), (2, 1, 2))
        self.assertEqual(stats["relayed"], {"offer": 1, "answer": 1, "ice-candidate": 1})

        left = next_event(alice, "peer-left")
        await self.stop_client(bob)
        message = await left
        self.assertEqual(
            (message["roomId"], message["peerId"], message["metadata"]), ("torrent-abc", "bob", {})
        )
        self.assertIsInstance(message["timestamp"], int)


class GarbageTests(IntegrationTestCase):
    """Bad input gets stable error codes; nobody else notices."""

    async def test_every_kind_of_garbage(self) -> None:
        """Every kind of garbage gets its code; the sender goes on; a roommate sees nothing."""
        _, url = await self.server(max_message_size=4096, max_frame_size=16384)
        garbage = await self.raw(url)
        welcome = await garbage.next()
        self.assertEqual(welcome["yourAddress"]["address"], "127.0.0.1")
        # Before registering: only register and ping.
        reply = await garbage.request({"type": "join-room", "roomId": "room", "id": 1})
        self.assertEqual((reply["code"], reply["id"]), (m.NOT_REGISTERED, 1))
        self.assertEqual((await garbage.request({"type": "ping", "id": 2}))["type"], "pong")
        await garbage.request({"type": "register", "peerId": "garbage"})
        await garbage.request({"type": "join-room", "roomId": "room"})

        observer = await self.raw(url)
        await self.register_raw(observer, "observer")
        joined = await observer.request({"type": "join-room", "roomId": "room", "id": "j"})
        self.assertEqual([p["peerId"] for p in joined["peers"]], ["garbage"])
        self.assertEqual((await garbage.next())["type"], "peer-joined")

        cases: list[tuple[Any, str, Any]] = [
            (b"this is not json", m.INVALID_JSON, None),
            (b'{"type": "ping"', m.INVALID_JSON, None),
            (b"\xff\xfe\x00", m.INVALID_JSON, None),  # binary frame, not UTF-8
            (b"[1, 2, 3]", m.NOT_AN_OBJECT, None),
            (b'"register"', m.NOT_AN_OBJECT, None),
            (b"null", m.NOT_AN_OBJECT, None),
            ({"type": "teleport", "id": 3}, m.UNKNOWN_TYPE, 3),
            ({"id": 4}, m.MISSING_FIELD, 4),
            ({"type": ["offer"], "id": 5}, m.INVALID_FIELD, 5),
            ({"type": "offer", "offer": {}, "id": 6}, m.MISSING_FIELD, 6),
            ({"type": "offer", "to": "observer", "id": 7}, m.MISSING_FIELD, 7),
            ({"type": "join-room", "roomId": 42, "id": 8}, m.INVALID_FIELD, 8),
            ({"type": "offer", "to": "observer", "offer": "sdp", "id": 9}, m.INVALID_FIELD, 9),
            ({"type": "answer", "to": ["observer"], "answer": {}, "id": 10}, m.INVALID_FIELD, 10),
            ({"type": "ping", "id": {"nested": True}}, m.INVALID_FIELD, None),
            ({"type": "ping", "pad": "x" * 5000, "id": 11}, m.MESSAGE_TOO_LARGE, None),
            ({"type": "register", "peerId": "other", "id": 12}, m.ALREADY_REGISTERED, 12),
            (
                {"type": "offer", "to": "observer", "from": "observer", "offer": {}, "id": 13},
                m.SPOOFED_FROM,
                13,
            ),
            (
                {"type": "ice-candidate", "to": "nobody", "candidate": {}, "id": 14},
                m.PEER_NOT_FOUND,
                14,
            ),
            ({"type": "leave-room", "roomId": "elsewhere", "id": 15}, m.NOT_IN_ROOM, 15),
            ({"type": "get-room-peers", "roomId": "elsewhere", "id": 16}, m.NOT_IN_ROOM, 16),
            (
                {"type": "connection-state", "peerId": "observer", "state": "elated", "id": 17},
                m.INVALID_FIELD,
                17,
            ),
        ]
        for data, code, request_id in cases:
            if isinstance(data, bytes):
                garbage.send_raw(data, binary=data.startswith(b"\xff"))
            else:
                garbage.send_json(data)
            reply = await garbage.next()
            self.assertEqual(
                (reply["type"], reply["code"], reply["id"]), ("error", code, request_id), data
            )
            self.assertIn(reply["code"], m.ERROR_CODES)
        # The sender's connection still works.
        self.assertEqual((await garbage.request({"type": "ping", "id": "alive"}))["id"], "alive")
        # The observer saw nothing in between: its next message answers its own ping.
        reply = await observer.request({"type": "ping", "id": "mine"})
        self.assertEqual((reply["type"], reply["id"]), ("pong", "mine"))
        self.assertEqual(observer.received, [])

    async def test_oversized_frame_closes(self) -> None:
        """A frame above the hard limit is refused by Autobahn: close code 1009."""
        _, url = await self.server(max_message_size=1024, max_frame_size=4096)
        proto = await self.raw(url)
        await proto.next()
        proto.send_raw(b"x" * 10000)
        was_clean, code, _ = await proto.lost
        self.assertEqual(code, m.CLOSE_MESSAGE_TOO_BIG)

    async def test_flood_closes_with_policy_code(self) -> None:
        """A client that keeps flooding past the rate limit is closed with 1008."""
        _, url = await self.server(
            clock=Clock(), messages_per_second=1, message_burst=5, rate_limit_violations=5
        )
        proto = await self.raw(url)
        for _ in range(50):
            proto.send_json({"type": "ping"})
        _, code, reason = await proto.lost
        self.assertEqual((code, reason), (m.CLOSE_POLICY_VIOLATION, "rate limit exceeded"))
        kinds = [r.get("code", r["type"]) for r in proto.received]
        self.assertEqual(kinds, ["welcome"] + ["pong"] * 5 + [m.RATE_LIMITED] * 5)


class EvictionTests(IntegrationTestCase):
    """Idle peers are evicted on the server's (injected) clock."""

    async def test_idle_peer_evicted(self) -> None:
        """A silent peer is closed with 4000 and its room hears peer-left; a talker stays."""
        clock = Clock()
        clock.advance(1_700_000_000)
        service, url = await self.server(clock=clock, peer_timeout=300, cleanup_interval=60)
        idle = await self.raw(url)
        await self.register_raw(idle, "idle")
        await idle.request({"type": "join-room", "roomId": "room"})
        busy = await self.raw(url)
        await self.register_raw(busy, "busy")
        await busy.request({"type": "join-room", "roomId": "room"})
        self.assertEqual((await idle.next())["type"], "peer-joined")
        for _ in range(4):
            clock.advance(60)
            self.assertEqual((await busy.request({"type": "ping"}))["type"], "pong")
        self.assertIn("idle", service.registry)
        clock.advance(60)
        was_clean, code, reason = await idle.lost
        self.assertEqual((code, reason), (m.CLOSE_IDLE_TIMEOUT, "idle timeout"))
        left = await busy.next()
        self.assertEqual(
            (left["type"], left["peerId"], left["roomId"]), ("peer-left", "idle", "room")
        )
        self.assertNotIn("idle", service.registry)
        self.assertEqual(service.stats()["evicted"], 1)


class ReconnectTests(IntegrationTestCase):
    """The client reconnects and reclaims its id with the reconnect token."""

    async def test_reconnect_with_token(self) -> None:
        """A half-dead connection's id is taken back with the token; the room notices nothing."""
        service, url = await self.server()
        port = int(url.split(":")[2].strip("/"))
        proxy = FreezingProxy(reactor, port)
        listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(proxy)
        self.addCleanup(listening.stopListening)
        self.addCleanup(proxy.close_all)
        proxied = f"ws://127.0.0.1:{listening.getHost().port}/"

        alice = await self.client(proxied, "alice")
        bob = await self.client(url, "bob")
        await alice.join_room("room")
        await bob.join_room("room")
        seen: list[Any] = []
        bob.on("peer-left", seen.append)
        bob.on("peer-joined", seen.append)
        first_token = alice.reconnect_token

        resumed = next_event(alice, "registered")
        rejoined = next_event(alice, "room-joined")
        proxy.sever_clients()
        registration = await resumed
        self.assertTrue(registration["resumed"])
        self.assertNotEqual(registration["reconnectToken"], first_token)
        self.assertEqual([p["peerId"] for p in (await rejoined)["peers"]], ["bob"])
        await bob.ping()  # anything the server sent Bob before this arrived before the pong
        self.assertEqual(seen, [])
        offer = next_event(alice, "offer")
        await bob.send_offer("alice", {"sdp": "again"})
        self.assertEqual((await offer)["from"], "bob")
        self.assertEqual(service.stats()["peers"], 2)

    async def test_taken_id_without_token(self) -> None:
        """A second connection claiming a live peer id without the token is refused."""
        _, url = await self.server()
        await self.client(url, "alice")
        proto = await self.raw(url)
        await proto.next()
        reply = await proto.request(
            {"type": "register", "peerId": "alice", "reconnectToken": "guess", "id": 1}
        )
        self.assertEqual(reply["code"], m.PEER_ID_TAKEN)


class AuthTests(IntegrationTestCase):
    """Tokens checked at the WebSocket handshake."""

    SECRET = "integration-secret"

    async def test_denied(self) -> None:
        """Missing, forged or expired tokens get HTTP 401 with a reason; the client gives up."""
        _, url = await self.server(auth_secret=self.SECRET)
        upgrade = {
            "Upgrade": ["websocket"],
            "Connection": ["Upgrade"],
            "Sec-WebSocket-Key": ["dGhlIHNhbXBsZSBub25jZQ=="],
            "Sec-WebSocket-Version": ["13"],
        }
        expired = auth.mint_token(self.SECRET, "alice", 1, reactor.seconds() - 10)
        forged = auth.mint_token("wrong", "alice", 60, reactor.seconds())
        for query, reason in [
            ("", b"authentication required: token missing"),
            (f"?token={expired}", b"authentication failed: token expired"),
            (f"?token={forged}", b"authentication failed: bad token signature"),
        ]:
            code, _, response = await self.http_get(url.replace("ws:", "http:") + query, upgrade)
            self.assertEqual((code, response.phrase), (401, reason))
        client = await self.client(url, "alice", register=False)
        failure = await self.assertFailure(client.register(), SignalingAuthError)
        self.assertEqual(failure.status, 401)

    async def test_granted(self) -> None:
        """A valid token (header or query string) admits its peer id, and only that one."""
        _, url = await self.server(auth_secret=self.SECRET)
        token = auth.mint_token(self.SECRET, "alice", 3600, reactor.seconds())
        alice = await self.client(url, "alice", token=token)
        self.assertTrue(alice.registered)
        browser = await self.raw(
            f"{url}?token={auth.mint_token(self.SECRET, 'web', 60, reactor.seconds())}"
        )
        await self.register_raw(browser, "web")
        mallory = await self.client(url, "mallory", register=False, token=token)
        failure = await self.assertFailure(mallory.register(), SignalingRequestError)
        self.assertEqual(failure.code, m.UNAUTHORIZED)


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)


class TLSTests(IntegrationTestCase):
    """wss:// with a certificate from a CA the test makes."""

    async def tls_server(self) -> tuple[dict[str, Any], str]:
        pki = make_pki(self.mktemp())
        _, url = await self.server(
            endpoint=f"ssl:0:interface=127.0.0.1:privateKey={pki['key']}:certKey={pki['cert']}"
        )
        return pki, url

    async def test_wss_with_trusted_ca(self) -> None:
        """A client that trusts the CA registers over wss://, the name checked by service-identity."""
        pki, url = await self.tls_server()
        self.assertTrue(url.startswith("wss://127.0.0.1:"))
        alice = await self.client(url, "alice", trust_root=pki["ca"])
        self.assertTrue(alice.registered)
        self.assertGreaterEqual(await alice.ping(), 0.0)

    async def test_wss_on_both_families(self) -> None:
        """``ssl:PORT`` with no interface listens on IPv4 and IPv6, as ``tcp:PORT`` does:
        one peer over wss://127.0.0.1, one over wss://[::1], on one port; they relay to
        each other, and the server sees each at its own family's address."""
        needs_ipv6()
        pki = make_pki(self.mktemp())
        _, url = await self.server(
            endpoint=f"ssl:0:privateKey={pki['key']}:certKey={pki['cert']}", open_relay=True
        )
        url6 = url.replace("127.0.0.1", "[::1]")
        seen = {}
        for peer_id, at in (("alice", url), ("bob", url6)):
            client = await self.client(at, peer_id, register=False, trust_root=pki["ca"])
            welcome = next_event(client, "welcome")
            await client.register()
            seen[peer_id] = ((await welcome)["yourAddress"]["address"], client)
        self.assertEqual([seen[p][0] for p in ("alice", "bob")], ["127.0.0.1", "::1"])
        alice, bob = seen["alice"][1], seen["bob"][1]
        arriving = next_event(bob, "offer")
        await alice.send_offer("bob", {"sdp": "over TLS"})
        offer = await arriving
        self.assertEqual((offer["from"], offer["offer"]), ("alice", {"sdp": "over TLS"}))

    async def test_wrong_name_or_untrusted_ca_refused(self) -> None:
        """TLS fails for a name the certificate lacks and for a CA the client distrusts."""
        from OpenSSL.SSL import Error as TLSError
        from service_identity import VerificationError

        pki, url = await self.tls_server()
        port = int(url.split(":")[2].strip("/"))
        for hostname, trust, error in [
            ("signaling.example", pki["ca"], VerificationError),
            ("127.0.0.1", None, TLSError),
        ]:
            endpoint = wrapClientTLS(
                optionsForClientTLS(hostname, trustRoot=trust),
                TCP4ClientEndpoint(reactor, "127.0.0.1", port),
            )
            proto = await endpoint.connect(Factory.forProtocol(_Recorder))
            await proto.lost
            assert proto.reason is not None
            self.assertTrue(proto.reason.check(error), proto.reason)
        # Twisted also logs the failed name check.
        self.flushLoggedErrors(VerificationError)


def no_delay(transport: Any) -> bool:
    """Whether Nagle's algorithm is off on the socket under ``transport`` (TCP, or TLS
    over TCP: the TLS transport's handle is the OpenSSL connection, its transport TCP's)."""
    sock = transport.getHandle()
    if not isinstance(sock, socket.socket):
        sock = transport.transport.getHandle()
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class _RecordingEndpoint:
    """A client endpoint that keeps the protocols it connected."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self.connected: list[Any] = []

    async def _connect(self, factory: Any) -> Any:
        protocol = await self.wrapped.connect(factory)
        self.connected.append(protocol)
        return protocol

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(self._connect(factory))


class SendAtOnceTests(IntegrationTestCase):
    """Both ends turn Nagle's algorithm off: a small message written while an earlier one
    is unacknowledged goes out at once instead of waiting for the acknowledgement."""

    async def test_server_and_client_sockets(self) -> None:
        """The server's socket for each WebSocket connection (Autobahn sets it) and our
        client's own socket (Autobahn's client means to and does not: we do) have
        TCP_NODELAY once the connection is open."""
        service, url = await self.server()
        port = int(url.split(":")[2].strip("/"))
        endpoint = _RecordingEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        await self.client(url, "alice", endpoint=endpoint)
        raw = await self.raw(url)
        await self.register_raw(raw, "bob")
        self.assertEqual(len(service.factory.protocols), 2)
        for server_side in service.factory.protocols:
            self.assertTrue(no_delay(server_side.transport))
        [client_side] = endpoint.connected
        self.assertTrue(no_delay(client_side.transport))
        # A plain Autobahn client keeps Nagle's algorithm: the check can fail.
        self.assertFalse(no_delay(raw.transport))

    async def test_over_tls(self) -> None:
        """Over wss:// our client sets the option on the TCP socket under its TLS
        connection, and the server's side has it too."""
        pki = make_pki(self.mktemp())
        service, url = await self.server(
            endpoint=f"ssl:0:interface=127.0.0.1:privateKey={pki['key']}:certKey={pki['cert']}"
        )
        port = int(url.split(":")[2].strip("/"))
        endpoint = _RecordingEndpoint(
            wrapClientTLS(
                optionsForClientTLS("127.0.0.1", trustRoot=pki["ca"]),
                TCP4ClientEndpoint(reactor, "127.0.0.1", port),
            )
        )
        await self.client(url, "alice", endpoint=endpoint)
        [server_side] = service.factory.protocols
        self.assertTrue(no_delay(server_side.transport))
        [client_side] = endpoint.connected
        self.assertTrue(no_delay(client_side.transport))


class BackToBackTests(IntegrationTestCase):
    """Relays caused by reads that come back to back (sockets all ready at once) are held
    to the end of the reactor's turn, then written: none lost, none out of order."""

    async def test_batch_of_ready_sockets(self) -> None:
        """Twenty senders write an offer each in one go, so the server finds their
        sockets ready together; every receiver gets its offer once, and each receiver's
        relays keep their order across batches.

        How far apart two reads of one batch are depends on the machine and its load,
        and the fake-clock unit tests hold the threshold to its definition; here every
        read within a second of the previous one counts, so that the batches are surely
        held and what crosses the sockets is checked."""
        self.patch(held, "back_to_back", 1.0)
        _, url = await self.server(open_relay=True)
        senders, receivers = [], []
        for i in range(20):
            for role, kept in (("s", senders), ("r", receivers)):
                proto = await self.raw(url)
                await self.register_raw(proto, f"{role}{i}")
                kept.append(proto)
        before = held.turns_held
        for round_ in range(3):
            for i, sender in enumerate(senders):
                sender.send_json({"type": "offer", "to": f"r{i}", "offer": {"n": round_}})
        for i, receiver in enumerate(receivers):
            got = [await receiver.next() for _ in range(3)]
            self.assertEqual([(m["type"], m["from"], m["offer"]["n"]) for m in got],
                             [("offer", f"s{i}", n) for n in range(3)])  # fmt: skip
        self.assertGreater(held.turns_held, before)  # the batches were held to their turn's end
        self.assertEqual(held.depth, 0)


class WebRootTests(IntegrationTestCase):
    """HTTP on the signaling port."""

    async def test_text_page_and_children(self) -> None:
        """A plain GET of / is a text page, and pages put under the root share the port."""
        service, url = await self.server()
        service.root.putChild(b"metrics", Data(b"signaling_peers 0\n", "text/plain"))
        http = url.replace("ws:", "http:")
        code, body, _ = await self.http_get(http)
        self.assertEqual(code, 200)
        self.assertIn(b"holepunch signaling server", body)
        code, body, _ = await self.http_get(http + "metrics")
        self.assertEqual((code, body), (200, b"signaling_peers 0\n"))
        alice = await self.client(url, "alice")
        self.assertTrue(alice.registered)
        self.assertEqual(json.loads(json.dumps(service.stats()))["peers"], 1)

    async def test_http_channel_released_after_upgrade(self) -> None:
        """Once upgraded, twisted.web's HTTPChannel is no longer the TCP transport's
        producer: the connection's own send-backlog counter is."""
        service, url = await self.server()
        proto = await self.raw(url)
        await self.register_raw(proto, "alice")
        [server] = service.factory.protocols
        self.assertIs(server.transport.producer, server.backlog)  # type: ignore[union-attr]
        self.assertIsInstance(server.backlog, SendBacklog)
        self.assertEqual((await proto.request({"type": "ping", "id": 1}))["type"], "pong")


class DaemonTests(IntegrationTestCase):
    """`twistd holepunch` wiring (holepunch.daemon.tap) runs the signaling server."""

    async def test_tap_runs_signaling(self) -> None:
        """The daemon's options reach the signaling service, which answers on its endpoint."""
        from holepunch.daemon.tap import Options, makeService

        options = Options()
        options.parseOptions(
            [
                "--no-stun",
                "--signaling",
                LOCAL,
                "--auth-secret",
                "tap-secret",
                "--peer-timeout",
                "120",
            ]
        )
        top = makeService(options, reactor)
        service = top.getServiceNamed("signaling")
        self.assertEqual(
            (service.config.peer_timeout, service.config.auth_secret), (120, "tap-secret")
        )
        top.startService()
        self.addCleanup(top.stopService)
        port = await service.when_listening()
        url = f"ws://127.0.0.1:{port.getHost().port}/"
        token = auth.mint_token("tap-secret", "alice", 60, reactor.seconds())
        alice = await self.client(url, "alice", token=token)
        self.assertEqual(alice.registration["peerTimeout"], 120)

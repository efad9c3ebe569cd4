"""A signaling server restarted under registered clients, on real sockets (127.0.0.1):
the clients reconnect with backoff and jitter, register afresh (the new server knows no
token), rejoin their rooms; the coordinator says so in events and metrics; connections
and encrypted streams already made carry on untouched."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from holepunch import P2PCoordinator
from holepunch.daemon.metrics import Metrics
from holepunch.signaling.client import (
    RECONNECTED,
    RECONNECTING,
    REGISTRATION_LOST,
    SignalingClient,
    SignalingTimeout,
)
from holepunch.signaling.server import SignalingConfig, SignalingService, make_signaling_service
from holepunch.testing.loopback import start_stun_server
from tests.integration.test_coordinator import LOOPBACK
from tests.stream_protocols import Echo


class RestartableServer:
    """A signaling server that can be stopped and started again on the same port."""

    def __init__(self, testcase: TestCase) -> None:
        self.testcase = testcase
        self.port = 0
        self.service: SignalingService | None = None

    async def start(self) -> SignalingService:
        interface = "127.0.0.1"
        config = SignalingConfig(endpoint=f"tcp:{self.port}:interface={interface}")
        service = make_signaling_service(config, reactor)
        service.startService()
        self.testcase.addCleanup(self.stop_if_running, service)
        listening = await service.when_listening()
        self.port = listening.getHost().port
        self.service = service
        return service

    async def stop(self) -> None:
        assert self.service is not None
        service, self.service = self.service, None
        await service.stopService()

    async def stop_if_running(self, service: SignalingService) -> None:
        if service.running:
            await service.stopService()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


def event_of(source: Any, event: str) -> defer.Deferred[dict[str, Any]]:
    """The next ``event`` of a coordinator or signaling client."""
    d: defer.Deferred[dict[str, Any]] = defer.Deferred()

    def seen(payload: dict[str, Any]) -> None:
        subscription.cancel()
        d.callback(payload)

    subscription = source.on(event, seen)
    return d


def next_datagram(connection: Any) -> defer.Deferred[bytes]:
    """The next datagram ``connection`` receives."""
    d: defer.Deferred[bytes] = defer.Deferred()

    def received(data: bytes) -> None:
        if not d.called:
            d.callback(data)

    unsubscribe = connection.on_datagram(received)
    d.addBoth(lambda result: (unsubscribe(), result)[1])
    return d


class Collect(protocol.Protocol):
    """Keeps what arrives; :meth:`until` fires once that many bytes are in."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[bytes] = defer.Deferred()
        self._waiting: list[tuple[int, defer.Deferred[bytes]]] = []

    def until(self, size: int) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self._waiting.append((size, d))
        self._check()
        return d

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._check()

    def _check(self) -> None:
        for size, d in list(self._waiting):
            if len(self.data) >= size:
                self._waiting.remove((size, d))
                d.callback(self.data)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.lost.called:
            self.lost.callback(self.data)


class ClientRestartTests(TestCase):
    """SignalingClients across a restart of their server."""

    timeout = 30

    async def client(self, url: str, peer_id: str, **kw: Any) -> SignalingClient:
        client = SignalingClient(url, peer_id, reactor=reactor, **kw)
        client.startService()
        self.addCleanup(client.stopService)
        await client.register()
        return client

    async def test_backoff_fresh_registration_rooms(self) -> None:
        """While the server is down the clients retry with a growing, jittered backoff; a
        request made meanwhile waits and is answered after the reconnect, one with a
        short timeout fails with SignalingTimeout, a room left meanwhile is not rejoined; the new server registers each id
        afresh, and both are back in the room."""
        server = RestartableServer(self)
        await server.start()
        fast = {"retry_initial": 0.05, "retry_factor": 2.0, "retry_max": 1.0}
        alice = await self.client(server.url, "alice", **fast)
        bob = await self.client(server.url, "bob", **fast)
        for room in ("swarm", "old"):
            await alice.join_room(room)
            await bob.join_room(room)
        first_token = alice.reconnect_token
        lost = [event_of(c, REGISTRATION_LOST) for c in (alice, bob)]
        retries: dict[str, list[dict[str, Any]]] = {"alice": [], "bob": []}
        enough: defer.Deferred[None] = defer.Deferred()

        def retrying(name: str, event: dict[str, Any]) -> None:
            retries[name].append(event)
            if min(len(r) for r in retries.values()) >= 3 and not enough.called:
                enough.callback(None)

        alice.on(RECONNECTING, lambda e: retrying("alice", e))
        bob.on(RECONNECTING, lambda e: retrying("bob", e))
        back = [event_of(c, RECONNECTED) for c in (alice, bob)]

        await server.stop()
        gone = await defer.gatherResults(lost)
        self.assertEqual([g["rooms"] for g in gone], [["swarm", "old"], ["swarm", "old"]])
        self.assertFalse(alice.connected)
        waiting = alice.get_room_peers("swarm")  # queued until registered again
        leaving = alice.leave_room("old")  # not rejoined: done once registered
        impatient = SignalingClient(server.url, "carol", reactor=reactor, request_timeout=0.3)
        impatient.startService()
        self.addCleanup(impatient.stopService)
        error = await self.assertFailure(impatient.join_room("swarm"), SignalingTimeout)
        self.assertIn("not registered", str(error))
        await enough  # three retries each, all refused
        await server.start()
        returned = reactor.seconds()
        events = await defer.gatherResults(back)
        back_after = reactor.seconds() - returned

        for name in ("alice", "bob"):
            attempts = [r["attempt"] for r in retries[name]]
            delays = [r["delay"] for r in retries[name]]
            self.assertEqual(attempts[:3], [1, 2, 3])
            for n, delay in enumerate(delays[:3], start=1):
                base = min(0.05 * 2.0**n, 1.0)
                self.assertTrue(base <= delay < base + 1.0, (name, n, delay))
        # random.random() jitter: the two clients do not retry in lockstep.
        self.assertNotEqual(
            [r["delay"] for r in retries["alice"][:3]], [r["delay"] for r in retries["bob"][:3]]
        )
        self.assertEqual([e["rooms"] for e in events], [["swarm"], ["swarm", "old"]])
        self.assertIsNone(await leaving)
        for event in events:
            self.assertEqual(event["resumed"], False)
            self.assertEqual(event["failedRooms"], [])
            self.assertGreaterEqual(event["attempt"], 3)
            self.assertGreater(event["downtime_ms"], 0)
        self.assertLess(back_after, 3.0)  # the backoff is capped at 1 s (+ 1 s jitter)
        self.assertNotEqual(alice.reconnect_token, first_token)
        # Answered once Alice was back in the room (Bob may not have been yet).
        self.assertIn([p["peerId"] for p in await waiting], ([], ["bob"]))
        self.assertEqual([p["peerId"] for p in await alice.get_room_peers("swarm")], ["bob"])
        self.assertEqual([p["peerId"] for p in await bob.get_room_peers("swarm")], ["alice"])
        assert server.service is not None
        self.assertIn("alice", server.service.registry)
        self.assertIn("bob", server.service.registry)
        self.assertEqual((alice.disconnects, alice.reconnects), (1, 1))


class CoordinatorRestartTests(TestCase):
    """Coordinators across a restart of their signaling server (the default backoff)."""

    timeout = 60

    def setUp(self) -> None:
        stun = start_stun_server(self, reactor)
        self.stun_server = (stun.responder.primary.host, stun.responder.primary.port)

    async def coordinators(self, url: str) -> tuple[P2PCoordinator, P2PCoordinator]:
        peers = []
        for peer_id in ("alice", "bob"):
            p2p = P2PCoordinator(
                {
                    "stun_servers": [self.stun_server],
                    "enable_signaling": False,
                    "signaling_url": url,
                },
                reactor=reactor,
                peer_id=peer_id,
                ice_config=LOOPBACK,
                environ={},
                nat_detection=False,
            )
            self.addCleanup(p2p.shutdown)
            p2p.metrics = Metrics()
            peers.append(p2p)
        await defer.gatherResults([p.initialize() for p in peers])
        return peers[0], peers[1]

    async def test_restart_events_metrics_rooms(self) -> None:
        """Both coordinators say signaling-disconnected, then signaling-reconnected with
        {attempt, downtime_ms, resumed, rooms} within a few seconds of the server's
        return, are back in their room, connect through the new server, and count it on
        /metrics."""
        server = RestartableServer(self)
        await server.start()
        alice, bob = await self.coordinators(server.url)
        await alice.join_room("torrent-abc")
        await bob.join_room("torrent-abc")
        lost = [event_of(p, "signaling-disconnected") for p in (alice, bob)]
        back = [event_of(p, "signaling-reconnected") for p in (alice, bob)]
        await server.stop()
        gone = await defer.gatherResults(lost)
        for event in gone:
            self.assertEqual(event["rooms"], ["torrent-abc"])
            self.assertEqual(event["url"], server.url)
            self.assertEqual(event["code"], 1001)  # going away
        self.assertFalse(alice.signaling_client.registered)
        self.assertEqual((await alice.health_check())["status"], "unhealthy")
        await server.start()
        returned = reactor.seconds()
        events = await defer.gatherResults(back)
        back_after = reactor.seconds() - returned
        for event in events:
            self.assertEqual(
                set(event), {"url", "attempt", "downtime_ms", "resumed", "rooms", "failedRooms"}
            )
            self.assertEqual(event["attempt"], 1)  # the server was back before the first retry
            self.assertFalse(event["resumed"])
            self.assertEqual(event["rooms"], ["torrent-abc"])
            # The first retry waits 1.5 s + jitter in [0, 1).
            self.assertTrue(1500 <= event["downtime_ms"] < 2500 + 500, event)
        self.assertLess(back_after, 3.0)
        self.assertEqual([p["peerId"] for p in await alice.get_room_peers("torrent-abc")], ["bob"])
        self.assertEqual([p["peerId"] for p in await bob.get_room_peers("torrent-abc")], ["alice"])
        self.assertEqual((await alice.health_check())["status"], "healthy")
        # New connections are negotiated through the new server.
        connection = await alice.connect_to_peer("bob")
        self.assertEqual(connection.method, "direct")
        stats = alice.get_stats()["signaling"]["client"]
        self.assertEqual((stats["disconnects"], stats["reconnects"]), (1, 1))
        body, _ = alice.metrics.render()
        text = body.decode()
        self.assertIn("holepunch_signaling_disconnects_total 1.0", text)
        self.assertIn('holepunch_signaling_reconnects_total{registration="fresh"} 1.0', text)
        self.assertIn("holepunch_signaling_downtime_seconds_count 1.0", text)

    async def test_established_stream_and_connection_carry_on(self) -> None:
        """An encrypted stream and a datagram connection made before the restart carry
        bytes byte-exact while the server is down and after it is back; nothing closes."""
        server = RestartableServer(self)
        await server.start()
        alice, bob = await self.coordinators(server.url)
        await alice.join_room("swarm")
        await bob.join_room("swarm")
        closed: list[Any] = []
        for p2p in (alice, bob):
            p2p.on("peer-disconnected", closed.append)

        bob.listen_streams(protocol.Factory.forProtocol(Echo))
        accepted = event_of(bob, "secure-session")
        collect = await alice.open_stream("bob", Collect())
        session = alice.sessions["bob"]
        session.on_closed(closed.append)
        (await accepted)["session"].on_closed(closed.append)
        connection = await alice.connect_to_peer("bob")
        datagrams: list[bytes] = []
        bob.connections["alice"].on_datagram(datagrams.append)
        chunks = [bytes([i]) * 200_000 + b"chunk %d" % i for i in range(3)]
        sent = b""

        async def exchange(chunk: bytes, datagram: bytes) -> None:
            nonlocal sent
            sent += chunk
            collect.transport.write(chunk)
            got = await collect.until(len(sent))
            self.assertEqual(got, sent)
            arrived = next_datagram(bob.connections["alice"])
            connection.send(datagram)
            self.assertEqual(await arrived, datagram)

        await exchange(chunks[0], b"before")
        lost = [event_of(p, "signaling-disconnected") for p in (alice, bob)]
        back = [event_of(p, "signaling-reconnected") for p in (alice, bob)]
        await server.stop()
        await defer.gatherResults(lost)
        await exchange(chunks[1], b"during")  # no signaling at all
        await server.start()
        await defer.gatherResults(back)
        await exchange(chunks[2], b"after")
        self.assertIs(alice.sessions["bob"], session)
        self.assertIsNone(session.closed)
        self.assertFalse(connection.closed)
        collect.transport.loseWriteConnection()
        self.assertEqual(await collect.lost, b"".join(chunks))
        self.assertEqual(closed, [])
        self.assertEqual(datagrams, [b"before", b"during", b"after"])

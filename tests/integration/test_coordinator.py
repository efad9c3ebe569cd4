"""Tests for holepunch.coordinator.P2PCoordinator, on loopback with real sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.trial.unittest import TestCase

from holepunch import P2PCoordinator
from holepunch.coordinator import CoordinatorError
from holepunch.ice.config import IceConfig
from holepunch.testing.loopback import registered_client, start_signaling_server, start_stun_server
from lab.coturn import free_port
from tests.stream_protocols import Collect, Echo

LOOPBACK = IceConfig.on("127.0.0.1")


class CoordinatorTests(TestCase):
    """The seed's API over real loopback sockets."""

    def setUp(self) -> None:
        self.stun = start_stun_server(self, reactor)
        responder = self.stun.responder
        self.stun_server = (responder.primary.host, responder.primary.port)

    def coordinator(self, config: dict[str, Any], **kw: Any) -> P2PCoordinator:
        p2p = P2PCoordinator(
            {"stun_servers": [self.stun_server], **config},
            reactor=reactor,
            ice_config=LOOPBACK,
            environ={},
            **kw,
        )
        self.addCleanup(p2p.shutdown)
        return p2p

    def host(self, **kw: Any) -> P2PCoordinator:
        return self.coordinator(
            {"signaling_port": 0, "enable_signaling": True, "signaling_interface": "127.0.0.1"},
            peer_id="host",
            **kw,
        )

    @defer.inlineCallbacks
    def meet(self, *peers: P2PCoordinator, room: str = "swarm") -> Any:
        """Put the coordinators in one room: by default they answer offers only from
        peers of their rooms (and the server relays only within rooms)."""
        for p2p in peers:
            yield p2p.join_room(room)

    def member(self, host: P2PCoordinator, peer_id: str) -> P2PCoordinator:
        port = host.signaling_server.port.getHost().port
        return self.coordinator(
            {"enable_signaling": False, "signaling_url": f"ws://127.0.0.1:{port}/"}, peer_id=peer_id
        )

    @defer.inlineCallbacks
    def test_quick_start(self) -> Any:
        """initialize() hosts signaling, detects the NAT (none on loopback), reports stats and health."""
        p2p = self.host()
        events: list[dict[str, Any]] = []
        p2p.on("initialized", events.append)
        p2p.on("hole-punching-ready", events.append)
        result = yield p2p.initialize()
        self.assertEqual(result["natInfo"]["type"], "open")
        self.assertEqual(p2p.get_nat_info()["publicAddress"], "127.0.0.1")
        self.assertEqual(p2p.getNATInfo(), p2p.get_nat_info())
        self.assertEqual(p2p.get_recommended_strategy()["strategy"], "direct")
        self.assertEqual(len(events), 2)
        stats = p2p.get_stats()
        self.assertEqual(
            {"initialized", "natInfo", "activeConnections", "signaling", "holePunching"}, set(stats)
        )
        self.assertTrue(stats["initialized"])
        health = yield p2p.health_check()
        self.assertEqual(health["status"], "healthy")
        from zope.interface.verify import verifyObject

        from holepunch.interfaces import IStatusProvider

        self.assertTrue(verifyObject(IStatusProvider, p2p))
        self.assertEqual({"status", "initialized", "timestamp", "services"}, set(health))

    @defer.inlineCallbacks
    def test_rooms_and_connect(self) -> Any:
        """Peers meet in a room, connect through the engine, and both see peer-connected."""
        host = self.host()
        yield host.initialize()
        alice = self.member(host, "alice")
        bob = self.member(host, "bob")
        yield defer.gatherResults([alice.initialize(), bob.initialize()])
        joined: list[dict[str, Any]] = []
        alice.on("peer-joined-room", joined.append)
        yield alice.join_room("torrent-abc123")
        yield bob.joinRoom("torrent-abc123")
        peers = yield alice.get_room_peers("torrent-abc123")
        self.assertEqual([p["peerId"] for p in peers], ["bob"])
        self.assertEqual([e["peerId"] for e in joined], ["bob"])
        connected: list[dict[str, Any]] = []
        bob.on("peer-connected", connected.append)
        connection = yield alice.connect_to_peer("bob")
        self.assertEqual(connection.method, "direct")
        self.assertEqual([e["peerId"] for e in connected], ["alice"])
        received: defer.Deferred[bytes] = defer.Deferred()
        bob.connections["alice"].on_datagram(received.callback)
        connection.send(b"piece 7")
        data = yield received
        self.assertEqual(data, b"piece 7")
        self.assertEqual(alice.get_stats()["activeConnections"], 1)
        self.assertEqual(alice.get_stats()["holePunching"]["byMethod"], {"direct": 1})
        again = yield alice.connectToPeer("bob")
        self.assertIs(again, connection)

    @defer.inlineCallbacks
    def test_registered_peers_punch_directly(self) -> Any:
        """Two peers that know each other's address only (no signaling) connect by a one-sided punch each."""
        port_a, port_b = free_port(), free_port()
        a = self.coordinator(
            {"enable_signaling": False, "hole_punching_port": port_a},
            peer_id="a",
            nat_detection=False,
        )
        b = self.coordinator(
            {"enable_signaling": False, "hole_punching_port": port_b},
            peer_id="b",
            nat_detection=False,
        )
        yield defer.gatherResults([a.initialize(), b.initialize()])
        registered: list[dict[str, Any]] = []
        a.on("peer-registered", registered.append)
        a.register_peer(
            "b", {"address": "127.0.0.1", "port": port_b, "metadata": {"source": "dht"}}
        )
        b.registerPeer("a", {"address": "127.0.0.1", "port": port_a})
        self.assertEqual(registered, [{"peerId": "b", "metadata": {"source": "dht"}}])
        ca, cb = yield defer.gatherResults([a.connect_to_peer("b"), b.connect_to_peer("a")])
        self.assertEqual((ca.remote_address, ca.remote_port), ("127.0.0.1", port_b))
        got: defer.Deferred[bytes] = defer.Deferred()
        cb.on_datagram(got.callback)
        ca.send(b"hello")
        data = yield got
        self.assertEqual(data, b"hello")

    @defer.inlineCallbacks
    def test_unknown_peer_and_errors(self) -> Any:
        """Connecting before initialize, or to a peer nobody knows, fails with a clear error."""
        p2p = self.coordinator({"enable_signaling": False}, nat_detection=False)
        yield self.assertFailure(p2p.connect_to_peer("x"), CoordinatorError)
        yield p2p.initialize()
        e = yield self.assertFailure(p2p.connect_to_peer("ghost"), CoordinatorError)
        self.assertIn("neither on signaling nor registered", str(e))
        self.assertRaises(ValueError, p2p.on, "no-such-event", lambda e: None)
        self.assertRaises(ValueError, p2p.register_peer, "p", {"address": "1.2.3.4", "port": 0})

    @defer.inlineCallbacks
    def test_shutdown_closes_everything(self) -> Any:
        """shutdown() closes connections, the signaling server and client; peers see peer-disconnected."""
        host = self.host()
        yield host.initialize()
        alice = self.member(host, "alice")
        bob = self.member(host, "bob")
        yield defer.gatherResults([alice.initialize(), bob.initialize()])
        yield self.meet(alice, bob)
        connection = yield alice.connect_to_peer("bob")
        gone: list[dict[str, Any]] = []
        alice.on("peer-disconnected", gone.append)
        yield alice.shutdown()
        self.assertTrue(connection.closed)
        self.assertEqual([g["peerId"] for g in gone], ["bob"])
        self.assertFalse(alice.initialized)
        yield host.shutdown()
        self.assertIsNone(host.signaling_server.port)


class CoordinatorStreamTests(TestCase):
    """open_stream / listen_streams: encrypted streams between coordinators."""

    setUp = CoordinatorTests.setUp
    coordinator = CoordinatorTests.coordinator
    host = CoordinatorTests.host
    member = CoordinatorTests.member
    meet = CoordinatorTests.meet

    @defer.inlineCallbacks
    def test_open_stream_byte_exact(self) -> Any:
        """Bytes go out and come back byte-exact over a stream bound to the signaled
        fingerprints; a second stream reuses the session; the seed's events are unchanged."""
        host = self.host()
        yield host.initialize()
        alice = self.member(host, "alice")
        bob = self.member(host, "bob")
        yield defer.gatherResults([alice.initialize(), bob.initialize()])
        yield self.meet(alice, bob)
        seen: list[tuple[str, Any]] = []
        bob.on("secure-session", lambda e: seen.append((e["peerId"], e["fingerprint"])))
        connected: list[Any] = []
        bob.on("peer-connected", connected.append)
        addresses: list[Any] = []

        class Factory(protocol.Factory):
            def buildProtocol(self, addr: Any) -> Any:
                addresses.append(addr)
                return Echo()

        bob.listen_streams(Factory())
        payload = bytes(range(256)) * 300
        results = []
        for _ in range(2):
            collect = yield alice.open_stream("bob", Collect())
            collect.transport.write(payload)
            collect.transport.loseWriteConnection()
            results.append((yield collect.done))
        self.assertEqual(results, [payload, payload])
        self.assertEqual(seen, [("alice", alice.identity.fingerprint)])
        self.assertEqual([a.peer_id for a in addresses], ["alice", "alice"])
        self.assertEqual(connected, [])  # peer-connected stays the seed's datagram connection
        self.assertEqual(alice.sessions["bob"].peer_fingerprint, bob.identity.fingerprint)

    @defer.inlineCallbacks
    def test_restart_under_a_stream_is_an_event_and_a_metric(self) -> Any:
        """An ICE restart under a secure session: the coordinator says so (ice-restart
        started and completed, path-changed with reason restart) and counts it on
        /metrics; the stream carries on byte-exact."""
        from holepunch.daemon.metrics import Metrics

        host = self.host()
        yield host.initialize()
        alice = self.member(host, "alice")
        bob = self.member(host, "bob")
        yield defer.gatherResults([alice.initialize(), bob.initialize()])
        yield self.meet(alice, bob)
        alice.metrics = Metrics()
        bob.listen_streams(protocol.Factory.forProtocol(Echo))
        collect = yield alice.open_stream("bob", Collect())
        collect.transport.write(b"before ")
        events: list[tuple[str, Any]] = []
        completed: defer.Deferred[None] = defer.Deferred()

        def restart_event(e: dict[str, Any]) -> None:
            events.append(("ice-restart", e["state"]))
            if e["state"] == "completed" and not completed.called:
                completed.callback(None)

        alice.on("ice-restart", restart_event)
        alice.on("path-changed", lambda e: events.append(("path-changed", e["reason"])))
        self.assertTrue(alice.negotiator.restart(alice.sessions["bob"]))
        yield completed.addTimeout(20, reactor)
        collect.transport.write(b"and after")
        collect.transport.loseWriteConnection()
        echoed = yield collect.done
        self.assertEqual(echoed, b"before and after")
        self.assertIn(("ice-restart", "started"), events)
        self.assertIn(("path-changed", "restart"), events)
        body, _ = alice.metrics.render()
        self.assertIn(b'holepunch_ice_restarts_total{reason="application"} 1.0', body)
        self.assertIn(b'holepunch_path_changes_total{reason="restart"} 1.0', body)

    @defer.inlineCallbacks
    def test_identity_dir(self) -> Any:
        """identity_dir keeps the coordinator's key: the same fingerprint next time."""
        directory = self.mktemp()
        first = self.coordinator({"enable_signaling": False, "identity_dir": directory})
        second = self.coordinator({"enable_signaling": False, "identityDir": directory})
        self.assertEqual(first.identity.fingerprint, second.identity.fingerprint)
        e = yield self.assertFailure(first.open_stream("x", Collect()), CoordinatorError)
        self.assertIn("initialize", str(e))


class OfferPolicyTests(TestCase):
    """Who may make a coordinator send ICE checks (issue 17, finding 3)."""

    setUp = CoordinatorTests.setUp
    coordinator = CoordinatorTests.coordinator

    async def open_server(self) -> str:
        """A signaling server that relays between any two peers (--open-relay), so that
        only the coordinator's own policy stands between a stranger and its agent."""
        _, url = await start_signaling_server(self, reactor, open_relay=True)
        return url

    async def peer(self, url: str, peer_id: str, **kw: Any) -> P2PCoordinator:
        p2p = self.coordinator(
            {"enable_signaling": False, "signaling_url": url}, peer_id=peer_id, **kw
        )
        await p2p.initialize()
        return p2p

    async def test_stranger_offer_is_not_answered(self) -> None:
        """By default an offer from a peer of none of the coordinator's rooms is refused
        before any agent exists; the application's accept_offer hook can allow it."""
        url = await self.open_server()
        bob = await self.peer(url, "bob")
        mallory = await self.peer(url, "mallory")
        decided: defer.Deferred[tuple[str, bool]] = defer.Deferred()
        default = bob.accept_offer

        def watching(peer_id: str, offer: dict[str, Any]) -> bool:
            answer = default(peer_id, offer)
            decided.callback((peer_id, answer))
            return answer

        bob.accept_offer = watching
        attempt = mallory.connect_to_peer("bob")
        attempt.addErrback(lambda f: None)
        self.assertEqual(await decided, ("mallory", False))
        await task.deferLater(reactor, 0, lambda: None)  # the offer's turn is over
        self.assertEqual((bob.negotiator.refused, bob.negotiator.sessions), (1, {}))
        await mallory.shutdown()  # its attempt, unanswered, ends with it
        await attempt

    async def test_accept_offer_hook(self) -> None:
        """accept_offer=lambda peer_id, offer: True answers peers met without a room."""
        url = await self.open_server()
        await self.peer(url, "bob", accept_offer=lambda peer_id, offer: True)
        alice = await self.peer(url, "alice")
        connection = await alice.connect_to_peer("bob")
        self.assertEqual(connection.method, "direct")

    async def test_candidate_and_session_caps(self) -> None:
        """An offer naming 100 candidates gives the agent 64 (the rest dropped and
        counted); a ninth concurrent session from one peer is refused."""
        url = await self.open_server()
        calls: list[str] = []
        ninth: defer.Deferred[None] = defer.Deferred()

        def everyone(peer_id: str, offer: dict[str, Any]) -> bool:
            calls.append(peer_id)
            if len(calls) == 9:
                ninth.callback(None)
            return True

        bob = await self.peer(url, "bob", accept_offer=everyone)
        stranger = await registered_client(self, reactor, url, "stranger")
        answers: list[dict[str, Any]] = []
        first_answer: defer.Deferred[None] = defer.Deferred()

        def answered(message: dict[str, Any]) -> None:
            answers.append(message)
            if not first_answer.called:
                first_answer.callback(None)

        stranger.on("answer", answered)

        def offer(session: str, count: int) -> dict[str, Any]:
            lines = [
                f"candidate:{i} 1 udp 2130706431 127.0.0.1 {20000 + i} typ host"
                for i in range(count)
            ]
            return {
                "type": "offer",
                "session": session,
                "ice": {"ufrag": "abcd", "pwd": "p" * 22, "candidates": lines},
            }

        await stranger.send_offer("bob", offer("s0", 100))
        await first_answer
        session = bob.negotiator.sessions["s0"]
        self.assertEqual((session.remote_candidates, session.dropped_candidates), (64, 36))
        self.assertEqual(bob.negotiator.dropped_candidates, 36)
        for n in range(1, 9):
            await stranger.send_offer("bob", offer(f"s{n}", 1))
        await ninth
        await task.deferLater(reactor, 0, lambda: None)  # the ninth offer's turn is over
        self.assertEqual(bob.negotiator.refused, 1)
        self.assertEqual(sum(s.peer_id == "stranger" for s in bob.negotiator.sessions.values()), 8)

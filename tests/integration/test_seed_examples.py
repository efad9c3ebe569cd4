"""The seed README's quick start and examples 1-4, in Python, against a real daemon.

``twistd -n holepunch`` runs on loopback (signaling + HTTP on one port, STUN with RFC 5780
on 127.0.0.1/127.0.0.2); the seed's code paths are driven through ``P2PCoordinator``
(and, for quick start step 3, a raw WebSocket client speaking the seed's JSON).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, cast

from twisted.internet import defer, reactor, task, utils
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from holepunch import P2PCoordinator
from holepunch.ice.config import IceConfig
from lab.coturn import coturn_fixture, free_port, free_port_pair
from lab.natlab import TWISTD
from tests.signaling_helpers import RawClientProtocol, raw_client_factory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOOPBACK = IceConfig.on("127.0.0.1")


STUN_HOSTS = ("127.0.0.1", "127.0.0.2")
"""The daemon's RFC 5780 server binds its two ports on both addresses."""


class _Daemon(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


class SeedExamplesTests(TestCase):
    """What the seed's users write, working against ``twistd holepunch``."""

    timeout = 90

    async def start_daemon(self) -> None:
        """``twistd holepunch`` on ports free a moment ago; started again on new ones (a
        few times) if another process took one in between."""
        for _ in range(3):
            output = await self._start_daemon()
            if output is None:
                return
            if b"Address already in use" not in output:
                break
        self.fail(f"twistd exited:\n{output.decode()}")

    async def _start_daemon(self) -> bytes | None:
        """One start: None once healthy, else what twistd printed before it exited."""
        self.port = free_port()
        self.stun_port = free_port_pair(STUN_HOSTS)
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
        argv = [*TWISTD, "-n", "--pidfile=", "holepunch",
                f"--signaling=tcp:{self.port}:interface=127.0.0.1",
                "--stun-interface=127.0.0.1", "--stun-alternate-address=127.0.0.2",
                f"--stun-port={self.stun_port}", f"--stun-alternate-port={self.stun_port + 1}"]  # fmt: skip
        daemon = _Daemon()
        transport = reactor.spawnProcess(daemon, sys.executable, argv, env=env, path=ROOT)

        def stop() -> Any:
            if daemon.ended.called:
                return None
            transport.signalProcess("TERM")
            return daemon.ended

        self.addCleanup(stop)
        for _ in range(100):
            if daemon.ended.called:
                return daemon.output
            out, _, code = await utils.getProcessOutputAndValue(
                "curl", ["-sS", "--max-time", "2", f"http://127.0.0.1:{self.port}/p2p/health"]
            )
            if code == 0 and json.loads(out or b"{}").get("status") == "healthy":
                return None
            await task.deferLater(reactor, 0.1, lambda: None)
        self.fail(f"twistd never became healthy:\n{daemon.output.decode()}")

    def p2p(self, peer_id: str, **config: Any) -> P2PCoordinator:
        ice = config.pop("ice_config", LOOPBACK)
        coordinator = P2PCoordinator(
            {
                "enable_signaling": False,
                "signaling_url": f"ws://127.0.0.1:{self.port}/",
                "stun_servers": [f"127.0.0.1:{self.stun_port}"],
                **config,
            },
            reactor=reactor,
            peer_id=peer_id,
            metadata={"client": "self-streme"},
            ice_config=ice,
            environ={},
        )
        self.addCleanup(coordinator.shutdown)
        return coordinator

    async def test_quick_start(self) -> None:
        """Quick start 1-3: initialize and read the NAT; register and connect; the raw WebSocket protocol."""
        await self.start_daemon()
        # 1. Basic setup
        p2p = self.p2p("me")
        await p2p.initialize()
        self.assertEqual(p2p.getNATInfo()["type"], "open")  # loopback: no NAT
        self.assertEqual(p2p.getNATInfo()["publicAddress"], "127.0.0.1")
        # 2. Register and connect to peers (a peer that is on signaling)
        other = self.p2p("peer-123")
        await other.initialize()
        p2p.registerPeer(
            "peer-123",
            {"address": "127.0.0.1", "port": 6881, "metadata": {"client": "self-streme"}},
        )
        # Peers answer offers from peers of their rooms (and the daemon relays only
        # within rooms): meet in one first, as a swarm does.
        await p2p.joinRoom("quick-start")
        await other.joinRoom("quick-start")
        connection = await p2p.connectToPeer("peer-123")
        self.assertIn(connection.method, ("direct", "udp-hole-punch"))
        # 3. Using the signaling server with a plain WebSocket, the seed's messages
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        ws = cast(
            RawClientProtocol,
            await endpoint.connect(raw_client_factory(f"ws://127.0.0.1:{self.port}")),
        )
        self.addCleanup(lambda: ws.transport.loseConnection() if ws.transport else None)
        await ws.opened
        self.assertEqual((await ws.next())["type"], "welcome")
        ws.send_json(
            {
                "type": "register",
                "peerId": "my-peer-id",
                "metadata": {"client": "self-streme", "version": "1.0.0"},
            }
        )
        self.assertEqual((await ws.next())["type"], "registered")
        ws.send_json({"type": "join-room", "peerId": "my-peer-id", "roomId": "torrent-abc123"})
        joined = await ws.next()
        self.assertEqual((joined["type"], joined["roomId"]), ("room-joined", "torrent-abc123"))
        await other.join_room("torrent-abc123")
        seen = await ws.next()
        self.assertEqual((seen["type"], seen["peerId"]), ("peer-joined", "peer-123"))

    async def test_example_1_registered_dht_peers(self) -> None:
        """Example 1: peers known from a DHT are registered and reached by connectToPeer."""
        await self.start_daemon()
        port_a, port_b = free_port(), free_port()
        a = self.p2p("a", hole_punching_port=port_a, signaling_url=None, enable_signaling=False)
        b = self.p2p("b", hole_punching_port=port_b, signaling_url=None, enable_signaling=False)
        await defer.gatherResults([a.initialize(), b.initialize()])
        a.registerPeer(
            "127-0-0-1-b",
            {"address": "127.0.0.1", "port": port_b, "metadata": {"source": "webtorrent-dht"}},
        )
        b.registerPeer(
            "127-0-0-1-a",
            {"address": "127.0.0.1", "port": port_a, "metadata": {"source": "webtorrent-dht"}},
        )
        ca, cb = await defer.gatherResults(
            [a.connectToPeer("127-0-0-1-b"), b.connectToPeer("127-0-0-1-a")]
        )
        self.assertEqual(ca.remote_port, port_b)
        got: defer.Deferred[bytes] = defer.Deferred()
        cb.on_datagram(got.callback)
        ca.send(b"piece")
        self.assertEqual(await got, b"piece")

    async def test_example_2_room_swarm(self) -> None:
        """Example 2: a room per torrent; on peer-joined-room, getRoomPeers and connect to each."""
        await self.start_daemon()
        me = self.p2p("me")
        await me.initialize()
        room = "torrent-abc123"
        await me.join_room(room)
        connected: defer.Deferred[Any] = defer.Deferred()

        async def on_join(event: dict[str, Any]) -> None:
            peers = await me.getRoomPeers(event["roomId"])
            for peer in peers:
                if peer["peerId"] != "me":
                    connection = await me.connectToPeer(peer["peerId"])
                    if not connected.called:
                        connected.callback((peer["peerId"], connection.method))

        me.on("peer-joined-room", lambda e: defer.ensureDeferred(on_join(e)))
        them = self.p2p("them")
        await them.initialize()
        await them.join_room(room)
        peer_id, method = await connected
        self.assertEqual(peer_id, "them")
        self.assertIn(method, ("direct", "udp-hole-punch"))

    async def test_example_3_monitoring(self) -> None:
        """Example 3: /p2p/health, /p2p/stats and /p2p/nat on the daemon, and the coordinator's own."""
        await self.start_daemon()
        for path, keys in [
            ("/p2p/health", {"status", "initialized", "timestamp", "services"}),
            (
                "/p2p/stats",
                {"initialized", "natInfo", "activeConnections", "signaling", "holePunching"},
            ),
            ("/p2p/nat", {"natInfo", "strategy"}),
        ]:
            out, _, code = await utils.getProcessOutputAndValue(
                "curl", ["-sS", "--max-time", "5", f"http://127.0.0.1:{self.port}{path}"]
            )
            self.assertEqual(code, 0)
            self.assertLessEqual(keys, set(json.loads(out)), path)
        p2p = self.p2p("monitor")
        await p2p.initialize()
        health = await p2p.healthCheck()
        self.assertEqual(health["status"], "healthy")
        self.assertEqual(p2p.getStats()["activeConnections"], 0)

    async def test_example_4_turn_fallback(self) -> None:
        """Example 4: turnServers configured, a relayed connection reports method turn-relay."""
        await self.start_daemon()
        coturn = coturn_fixture(self)
        turn = [
            {"urls": [coturn.uri("udp")], "username": coturn.user, "credential": coturn.password}
        ]
        relay_only = IceConfig.on("127.0.0.1")  # loopback is never hard
        relay_only.relay.only = True
        a = self.p2p("a", turn_servers=turn, ice_config=relay_only)
        b = self.p2p("b", turn_servers=turn, ice_config=relay_only)
        await defer.gatherResults([a.initialize(), b.initialize()])
        await a.join_room("example-4")
        await b.join_room("example-4")
        b_connected: defer.Deferred[dict[str, Any]] = defer.Deferred()
        b.on("peer-connected", lambda e: b_connected.called or b_connected.callback(e))
        connection = await a.connectToPeer("b")
        self.assertEqual(connection.method, "turn-relay")
        # Application data on the selected relay pair goes as ChannelData once bound.
        other = (await b_connected)["connection"]
        got: defer.DeferredQueue[bytes] = defer.DeferredQueue()
        other.on_datagram(got.put)
        back: defer.DeferredQueue[bytes] = defer.DeferredQueue()
        connection.on_datagram(back.put)
        relays = [
            allocation
            for c in (connection, other)
            for allocation in c.agent.relay_allocations
            if c.local_candidate.type == "relay"
        ]
        for _ in range(50):
            if any(r.stats.channels_bound for r in relays):
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        connection.send(b"through the relay")
        other.send(b"and back")  # whichever side owns the relayed candidate sends through it
        self.assertEqual(await got.get(), b"through the relay")
        self.assertEqual(await back.get(), b"and back")
        self.assertTrue(any(r.stats.channel_data_sent for r in relays), [r.stats for r in relays])

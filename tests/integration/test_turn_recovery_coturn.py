"""TURN recovery against a real coturn on loopback: two ICE agents connected only
through their relays; coturn is killed and started again under them (every allocation
lost); both agents notice, allocate again, announce their new relayed candidates to each
other, and the connection carries data again."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from holepunch.ice.agent import IceAgent
from holepunch.ice.config import IceConfig, RelayConfig
from holepunch.ice.connection import PeerConnection
from holepunch.turn import parse_turn_uri
from lab.coturn import LOOPBACK, Coturn, coturn_fixture, coturn_unavailable_reason


class RestartTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        reason = coturn_unavailable_reason()
        if reason is not None:
            self.skipTest(reason)

    def agent(self, coturn: Coturn, controlling: bool) -> IceAgent:
        server = parse_turn_uri(coturn.uri("udp"), coturn.user or "", coturn.password or "")
        config = IceConfig.on(LOOPBACK)
        # Relayed pairs only (ours on every pair), checked every second.
        config.relay = RelayConfig(servers=(server,), only=True, wait=0.0, liveness_interval=1.0)
        agent = IceAgent(reactor, controlling, config)
        self.addCleanup(agent.close)
        return agent

    @staticmethod
    def next_datagram(connection: PeerConnection) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()

        def got(data: bytes) -> None:
            unsubscribe()
            if not d.called:
                d.callback(data)

        unsubscribe = connection.on_datagram(got)
        return d

    @staticmethod
    def path_changed(connection: PeerConnection) -> defer.Deferred[PeerConnection]:
        d: defer.Deferred[PeerConnection] = defer.Deferred()

        def changed(c: PeerConnection) -> None:
            unsubscribe()
            if not d.called:
                d.callback(c)

        unsubscribe = connection.on_path_changed(changed)
        return d

    async def test_coturn_restarted_under_a_relayed_connection(self) -> None:
        """Kill and restart coturn: both relays are lost (437 to the watch Refresh),
        allocated again, re-announced; both connections move to the new relayed pair
        and datagrams flow both ways again, on the same PeerConnections."""
        coturn = coturn_fixture(self)
        a, b = self.agent(coturn, True), self.agent(coturn, False)
        relay_events: list[tuple[str, str, str]] = []
        for name, agent in (("a", a), ("b", b)):
            agent.on_relay_event = lambda kind, detail, n=name: relay_events.append(
                (n, kind, detail)
            )
        a.on_local_candidate = b.add_remote_candidate
        b.on_local_candidate = a.add_remote_candidate
        a.set_remote_credentials(b.local_ufrag, b.local_pwd)
        b.set_remote_credentials(a.local_ufrag, a.local_pwd)
        await defer.gatherResults([defer.ensureDeferred(x.gather()) for x in (a, b)])
        ca, cb = await defer.gatherResults([a.connect(), b.connect()])
        self.assertEqual((ca.method, cb.method), ("turn-relay", "turn-relay"))
        before = (ca.remote, cb.remote)
        arrived = self.next_datagram(cb)
        ca.send(b"before")
        self.assertEqual(await arrived, b"before")

        moved = defer.gatherResults([self.path_changed(ca), self.path_changed(cb)])
        coturn.restart()
        await moved
        self.assertNotEqual((ca.remote, cb.remote), before)
        self.assertEqual((ca.method, cb.method), ("turn-relay", "turn-relay"))
        for name in "ab":
            kinds = [kind for n, kind, _ in relay_events if n == name]
            self.assertEqual(kinds, ["relay-lost", "relay-reallocated"], relay_events)
        for agent in (a, b):
            self.assertEqual(agent.stats.relays_lost, 1)
            self.assertEqual(agent.stats.relays_reallocated, 1)
            self.assertEqual(agent.stats.paths_recovered, 1)
            self.assertEqual(len(agent.relay_allocations), 1)
        arrived, back = self.next_datagram(cb), self.next_datagram(ca)
        ca.send(b"after")
        cb.send(b"back")
        got: Any = await defer.gatherResults([arrived, back])
        self.assertEqual(got, [b"after", b"back"])

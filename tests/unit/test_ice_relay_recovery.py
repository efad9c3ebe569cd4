"""TURN recovery in the sans-I/O ICE core: a relay lost under the connection, the new
relayed candidate that replaces it, and permissions refused for one address.

Two IceCores on a memory wire, as in :mod:`tests.unit.test_ice_core`, with relays
modelled on the wire: what a core sends through relay ``via`` leaves from the relayed
address, and what reaches a relayed address arrives on that ``via``. Direct host-to-host
datagrams are dropped (two symmetric NATs), so only relayed pairs work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from holepunch.ice import events
from holepunch.ice.checklist import PairState, relayed
from holepunch.ice.config import IceConfig, RelayConfig
from holepunch.ice.core import IceCore
from holepunch.ice.relays import Relays
from holepunch.stun.transactions import RetransmissionPolicy
from holepunch.stun.wire import Address, Method
from holepunch.turn import TurnServer
from tests.unit.test_ice_core import Wire
from tests.unit.test_turn_client import FakeTurnServer

HOST_A = ("192.0.2.1", 5000)
HOST_B = ("192.0.2.2", 6000)


class RelayWire(Wire):
    """A wire whose relays (relayed address -> (core, via)) carry what hosts cannot."""

    def __init__(self, a: IceCore, b: IceCore) -> None:
        super().__init__(a, b)
        self.relays: dict[tuple[str, int], tuple[IceCore, int]] = {}
        self.signalled: dict[int, int] = {}

    def add_relay(self, core: IceCore, relayed_address: tuple[str, int]) -> int:
        via = core.add_relay(relayed_address, self.address[id(core)], "turn.test:3478", self.now)
        self.relays[relayed_address] = (core, via)
        return via

    def source_of(self, core: IceCore, destination: tuple[str, int], via: int) -> Any:
        if via == events.MAIN:
            if destination in self.cores:
                self.dropped += 1  # no direct path between the hosts
                return None
            return self.address[id(core)]
        live = [a for a, (c, v) in self.relays.items() if c is core and v == via]
        if not live:
            self.dropped += 1
            return None
        return live[0]

    def arrive(self, data: bytes, source: tuple[str, int], destination: tuple[str, int]) -> None:
        if destination in self.relays:
            core, via = self.relays[destination]
            core.receive_datagram(data, source, via, self.now)
        elif destination in self.cores:
            self.cores[destination].receive_datagram(data, source, events.MAIN, self.now)
        else:
            self.dropped += 1

    def trickle(self, a: IceCore, b: IceCore) -> None:
        """Signal the candidates each side announced since the last call."""
        self.flush()
        for src, dst in ((a, b), (b, a)):
            announced = self.of(src, events.LocalCandidate)
            start = self.signalled.get(id(src), 0)
            for event in announced[start:]:
                dst.add_remote_candidate(event.candidate, self.now)
            self.signalled[id(src)] = len(announced)


def relayed_cores(a_relay_only: bool = False) -> tuple[IceCore, IceCore, RelayWire]:
    """Two cores whose only working pairs go through relays (the controlling one's own
    relay with ``a_relay_only``)."""
    a = IceCore(True, IceConfig.on(HOST_A[0]), tie_breaker=2)
    b = IceCore(False, IceConfig.on(HOST_B[0]), tie_breaker=1)
    a.config.relay.only = a_relay_only
    for core in (a, b):
        core.config.relay.wait = 0.2
        core.config.relay.check_delay = 0.0
        core.config.checks.policy = RetransmissionPolicy(rto=0.05, rc=4, rm=2)
    wire = RelayWire(a, b)
    a.set_remote_credentials(b.local_ufrag, b.local_pwd, 0)
    b.set_remote_credentials(a.local_ufrag, a.local_pwd, 0)
    a.start_gathering([HOST_A[0]], HOST_A[1], [], 0)
    b.start_gathering([HOST_B[0]], HOST_B[1], [], 0)
    wire.add_relay(a, ("198.51.100.1", 40001))
    wire.add_relay(b, ("198.51.100.1", 40002))
    a.connect(0)
    b.connect(0)
    wire.trickle(a, b)
    return a, b, wire


class RelayRecoveryTests(SynchronousTestCase):
    """The connection moves off a lost relay to the new one."""

    def connected(self, a_relay_only: bool = False) -> tuple[IceCore, IceCore, RelayWire]:
        a, b, wire = relayed_cores(a_relay_only)
        wire.run(3.0, step=0.005)
        self.assertEqual(len(wire.of(a, events.PairSelected)), 1)
        self.assertEqual(len(wire.of(b, events.PairSelected)), 1)
        assert a.selected is not None
        self.assertTrue(relayed(a.selected))
        return a, b, wire

    def lose_relay_of(self, owner: IceCore, other: IceCore, wire: RelayWire) -> None:
        """``owner``'s relay is lost and replaced; its new candidate is signalled."""
        [(old_address, (_, via))] = [(a, cv) for a, cv in wire.relays.items() if cv[0] is owner]
        del wire.relays[old_address]
        owner.relay_lost(via, "TURN error 437: Allocation Mismatch", wire.now)
        before = len(wire.of(owner, events.LocalCandidate))
        new_address = (old_address[0], old_address[1] + 100)
        via = owner.replace_relay(new_address, wire.address[id(owner)], "turn.test:3478", wire.now)
        wire.relays[new_address] = (owner, via)
        self.assertEqual(owner.stats.relays_reallocated, 1)
        wire.flush()
        [announced] = wire.of(owner, events.LocalCandidate)[before:]
        assert announced.candidate is not None
        self.assertEqual(announced.candidate.address, new_address)
        wire.trickle(owner, other)

    def assertRecovered(self, a: IceCore, b: IceCore, wire: RelayWire, lost_at: float) -> None:
        wire.run(lost_at + 3.0, step=0.005)
        for core in (a, b):
            moved = wire.of(core, events.PathChanged)
            self.assertEqual(len(moved), 1, core.controlling)
            assert core.selected is not None
            self.assertIs(moved[0].pair, core.selected)
            self.assertTrue(core.selected.valid)
            self.assertEqual(moved[0].method, "turn-relay")
            self.assertEqual(core.stats.paths_recovered, 1)
        # Data flows both ways on the new pair.
        assert a.selected is not None and b.selected is not None
        a.send_datagram(b"after", a.selected.remote.address, wire.now)
        b.send_datagram(b"back", b.selected.remote.address, wire.now)
        wire.run(wire.now + 0.1)
        self.assertIn(b"after", [e.data for e in wire.of(b, events.DatagramReceived)])
        self.assertIn(b"back", [e.data for e in wire.of(a, events.DatagramReceived)])
        self.assertEqual(wire.of(a, events.ConsentLost) + wire.of(b, events.ConsentLost), [])

    def test_relay_only_makes_no_pair_from_a_host_socket(self) -> None:
        """With ``relay.only`` the peer's checks from its relay to our host candidate
        (which reach us, as they would on one host) are not answered and make no
        peer-reflexive pair: every pair of ours, the selected one too, is relayed."""
        a, b, wire = self.connected(a_relay_only=True)
        self.assertGreater(a.stats.relay_only_ignored, 0)
        self.assertEqual([p.local.type for p in a.checklist if p.local.type != "relay"], [])
        assert a.selected is not None and b.selected is not None
        self.assertEqual(a.selected.local.type, "relay")
        self.assertEqual(a.method(a.selected), "turn-relay")
        self.assertNotEqual(b.selected.remote.address, HOST_A)

    def test_lost_relay_of_the_controlling_side(self) -> None:
        """The controlling agent's relay under the selected pair is lost: its pairs fail,
        data waits (dropped, counted), the new relayed candidate is announced, and both
        sides move to a pair that works."""
        a, b, wire = self.connected(a_relay_only=True)
        assert a.selected is not None
        self.assertEqual(a.selected.local.type, "relay")
        lost_at = wire.now
        self.lose_relay_of(a, b, wire)
        self.assertFalse(a.selected.valid)  # lost, until a new pair works
        self.assertEqual(a.stats.relays_lost, 1)
        self.assertNotIn(a.selected.local, a.local_candidates)
        a.send_datagram(b"into the void", a.selected.remote.address, wire.now)
        self.assertEqual(a.stats.data_dropped, 1)
        self.assertEqual(b.stats.remote_relays_replaced, 1)
        self.assertRecovered(a, b, wire, lost_at)

    def test_lost_relay_of_the_controlled_side(self) -> None:
        """The controlled agent's relay under the selected pair is lost: the controlling
        side learns it from the new relayed candidate (the peer replaced its relay),
        nominates a pair through it, and both sides move."""
        a, b, wire = self.connected()
        assert a.selected is not None and b.selected is not None
        self.assertEqual(b.selected.local.type, "relay")
        lost_at = wire.now
        self.lose_relay_of(b, a, wire)
        self.assertEqual(a.stats.remote_relays_replaced, 1)
        self.assertRecovered(a, b, wire, lost_at)

    def test_no_new_relay_loses_consent(self) -> None:
        """A relay lost and never replaced: nothing else works, so consent runs out and
        the connection ends, as with any dead path."""
        a, b, wire = self.connected(a_relay_only=True)
        a.config.consent.timeout = 3.0
        [(old_address, (_, via))] = [(x, cv) for x, cv in wire.relays.items() if cv[0] is a]
        del wire.relays[old_address]
        a.relay_lost(via, "no answer", wire.now)
        wire.run(wire.now + 8.0, step=0.01)
        self.assertEqual(len(wire.of(a, events.ConsentLost)), 1)
        self.assertTrue(a.closed)

    def test_permission_refused_fails_only_its_pairs(self) -> None:
        """A 403 for one remote address fails the pairs from that relay to it at once; the
        relay, its candidate and its other pairs stay."""
        a, b, wire = relayed_cores()
        wire.run(0.01)
        [(_, via)] = [cv for cv in wire.relays.values() if cv[0] is a]
        relay = a.socket_bases[via]
        to_host = [p for p in a.checklist if p.local == relay and p.remote.host == HOST_B[0]]
        others = [p for p in a.checklist if p.local == relay and p.remote.host != HOST_B[0]]
        self.assertTrue(to_host and others)
        a.permission_refused(via, HOST_B[0], "TURN error 403: Forbidden IP", wire.now)
        self.assertEqual({p.state for p in to_host}, {PairState.FAILED})
        self.assertNotIn(PairState.FAILED, {p.state for p in others})
        self.assertIn(relay, a.local_candidates)
        self.assertEqual(a.stats.permissions_refused, 1)
        wire.run(3.0, step=0.005)
        self.assertEqual(len(wire.of(a, events.PairSelected)), 1)
        assert a.selected is not None
        self.assertNotIn(a.selected, to_host)


class FakeServers:
    """Fake TURN servers (:class:`tests.unit.test_turn_client.FakeTurnServer`) behind
    one send function, answering through :meth:`Relays.demultiplex`, as the agent's main
    socket would."""

    def __init__(self, clock: Clock, relays: Relays, *addresses: Address) -> None:
        self.relays = relays
        self.servers = {a: FakeTurnServer(clock, a) for a in addresses}
        for server in self.servers.values():
            server.deliver = self.deliverer(server)  # type: ignore[method-assign]

    def deliverer(self, server: FakeTurnServer) -> Callable[[bytes], None]:
        def deliver(raw: bytes) -> None:
            self.relays.demultiplex(raw, server.address)

        return deliver

    def __call__(self, data: bytes, address: tuple[str, int]) -> None:
        self.servers[Address(*address)](data, address)


class RelaysTests(SynchronousTestCase):
    """The agent's relays: watched, lost, allocated again on the same server first."""

    def setUp(self) -> None:
        self.clock = Clock()
        first, second = Address("192.0.2.1", 3478), Address("192.0.2.2", 3478)
        self.configured = tuple(
            TurnServer(a.host, a.port, "udp", "alice", "correct horse") for a in (first, second)
        )
        self.relays = Relays(
            self.clock, RelayConfig(servers=self.configured, liveness_interval=5.0)
        )
        self.fakes = FakeServers(self.clock, self.relays, first, second)
        self.first, self.second = self.fakes.servers[first], self.fakes.servers[second]
        self.lost: list[tuple[int, Any]] = []

    def allocate(self, first: Any = None) -> Any:
        d = defer.ensureDeferred(self.relays.allocate(self.fakes, False, first=first))
        for _ in range(20):
            self.clock.advance(0.01)
        allocation = self.successResultOf(d)
        self.assertIsNotNone(allocation)
        return allocation

    def test_watched_relay_lost_and_allocated_again(self) -> None:
        """While watched, a 437 to the Refresh loses the relay (on_lost with its via);
        it is forgotten and names its server, which is asked first again."""
        allocation = self.allocate()
        self.assertEqual(allocation.server, self.first.address)
        self.relays.add(3, allocation, lambda *_: None, lambda via, e: self.lost.append((via, e)))
        self.relays.watch(False)
        self.clock.advance(10)
        self.assertEqual(self.first.requests(Method.REFRESH), [])  # not watched
        self.relays.watch(True)
        self.first.refuse[Method.REFRESH] = 437
        self.clock.advance(5)
        for _ in range(5):
            self.clock.advance(0.01)
        [(via, error)] = self.lost
        self.assertEqual((via, error.code), (3, 437))
        self.assertEqual(self.relays.lost(3), self.configured[0])
        self.assertNotIn(3, self.relays)
        self.assertFalse(self.relays.send(3, b"x", ("203.0.113.9", 7000)))
        # The second server first when asked so; then the list wraps around.
        again = self.allocate(first=self.configured[1])
        self.assertEqual(again.server, self.second.address)
        self.assertEqual(len(self.first.requests(Method.ALLOCATE)), 2)  # only the first

    def test_same_server_first(self) -> None:
        """``first`` names the server a lost relay came from: it is asked first, even
        when it is not first in the list."""
        again = self.allocate(first=self.configured[1])
        self.assertEqual(again.server, self.second.address)
        self.assertEqual(self.first.requests(Method.ALLOCATE), [])

    def test_refused_permission_reported(self) -> None:
        """A 403 on CreatePermission is reported with the relay's via and the host; the
        relay lives on."""
        allocation = self.allocate()
        self.relays.add(4, allocation, lambda *_: None, lambda via, e: self.lost.append((via, e)))
        self.first.refuse[Method.CREATE_PERMISSION] = 403
        refused: list[tuple[int, str, str]] = []
        self.relays.permit("10.1.0.2", None, lambda *args: refused.append(args))
        for _ in range(5):
            self.clock.advance(0.01)
        [(via, host, reason)] = refused
        self.assertEqual((via, host), (4, "10.1.0.2"))
        self.assertIn("403", reason)
        self.assertEqual(self.lost, [])
        self.assertIn(4, self.relays)

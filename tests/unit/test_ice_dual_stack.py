"""IPv6 and dual stack in the ICE engine (issue 16): RFC 8421 preferences, pairing within
one family, IPv4-only mapping samples; in memory (sans-I/O cores) and on real sockets
(``::1`` and ``127.0.0.1``)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from holepunch.addresses import ip_version, unmapped
from holepunch.ice import events
from holepunch.ice.agent import IceAgent
from holepunch.ice.candidate import host_preferences
from holepunch.ice.config import IceConfig
from holepunch.ice.core import IceCore
from holepunch.ice.sockets import IceSocket, bind_interface, usable_address
from holepunch.stun.server import StunResponder, StunServerService
from holepunch.stun.wire import Address
from holepunch.testing.loopback import connect_loopback_agents
from tests.signaling_helpers import needs_ipv6
from tests.unit.test_ice_core import answer_gathering


class PreferenceTests(SynchronousTestCase):
    """RFC 8421 section 4: IPv6 first, the families interleaved."""

    def test_interleaved_v6_first_global_before_unique_local(self) -> None:
        prefs = host_preferences(["10.0.0.2", "fd00::5", "2001:db8::2", "10.0.0.3"])
        order = sorted(prefs, key=prefs.__getitem__, reverse=True)
        self.assertEqual(order, ["2001:db8::2", "10.0.0.2", "fd00::5", "10.0.0.3"])
        self.assertEqual(prefs["2001:db8::2"], 65535)

    def test_one_family_keeps_the_given_order(self) -> None:
        prefs = host_preferences(["10.0.0.3", "10.0.0.2"])
        self.assertGreater(prefs["10.0.0.3"], prefs["10.0.0.2"])

    def test_usable_addresses(self) -> None:
        self.assertTrue(usable_address("2001:db8::1"))
        self.assertTrue(usable_address("fd00::1"))
        for bad in ("fe80::1", "::ffff:10.0.0.1", "::", "ff02::1", "::1", "not-an-ip"):
            self.assertFalse(usable_address(bad), bad)
        self.assertTrue(usable_address("::1", include_loopback=True))

    def test_bind_interface(self) -> None:
        self.assertEqual(bind_interface(["10.0.0.2"]), "10.0.0.2")
        self.assertEqual(bind_interface(["10.0.0.2", "10.0.0.3"]), "")
        self.assertEqual(bind_interface(["10.0.0.2", "2001:db8::2"]), "::")
        self.assertEqual(unmapped("::ffff:10.0.0.2"), "10.0.0.2")
        self.assertEqual(unmapped("2001:db8::2"), "2001:db8::2")


A4, A6 = "192.0.2.1", "2001:db8:1::1"
B4, B6 = "192.0.2.2", "2001:db8:2::1"


class DualWire:
    """Two dual-stack cores, each with one address per family on one port; datagrams
    arrive after 5 ms. ``blocked`` families lose every datagram."""

    def __init__(self, a: IceCore, b: IceCore, hosts: dict[int, tuple[str, ...]]) -> None:
        self.hosts = hosts
        self.cores = {id(a): a, id(b): b}
        self.at: dict[tuple[str, int], IceCore] = {}
        for core, port in ((a, 5000), (b, 6000)):
            for host in hosts[id(core)]:
                self.at[(host, port)] = core
        self.port = {id(a): 5000, id(b): 6000}
        self.now = 0.0
        self.in_flight: list[tuple[float, bytes, tuple[str, int], tuple[str, int]]] = []
        self.events: dict[int, list[Any]] = {id(a): [], id(b): []}
        self.blocked: set[int] = set()
        self.latency = {4: 0.005, 6: 0.005}
        self.sent_families: list[tuple[int, int]] = []

    def flush(self) -> None:
        for core in self.cores.values():
            for data, destination, _via in core.datagrams_to_send(self.now):
                family = ip_version(destination[0])
                source = next((h for h in self.hosts[id(core)] if ip_version(h) == family), None)
                self.sent_families.append((family, ip_version(source) if source else 0))
                if source is None or family in self.blocked:
                    continue
                arrival = self.now + self.latency[family]
                self.in_flight.append((arrival, data, (source, self.port[id(core)]), destination))
            while (event := core.next_event()) is not None:
                self.events[id(core)].append(event)

    def run(self, until: float) -> None:
        while self.now < until:
            self.flush()
            self.now = round(self.now + 0.001, 6)
            due = [d for d in self.in_flight if d[0] <= self.now]
            self.in_flight = [d for d in self.in_flight if d[0] > self.now]
            for _, data, source, destination in due:
                target = self.at.get(destination)
                if target is not None:
                    target.receive_datagram(data, source, events.MAIN, self.now)
            for core in self.cores.values():
                timer = core.get_timer()
                if timer is not None and timer <= self.now:
                    core.handle_timer(self.now)
        self.flush()

    def of(self, core: IceCore, kind: type) -> list[Any]:
        return [e for e in self.events[id(core)] if isinstance(e, kind)]


def dual_cores(
    a_hosts: tuple[str, ...], b_hosts: tuple[str, ...]
) -> tuple[IceCore, IceCore, DualWire]:
    a = IceCore(True, IceConfig.on(*a_hosts), tie_breaker=2)
    b = IceCore(False, IceConfig.on(*b_hosts), tie_breaker=1)
    wire = DualWire(a, b, {id(a): a_hosts, id(b): b_hosts})
    a.set_remote_credentials(b.local_ufrag, b.local_pwd, 0)
    b.set_remote_credentials(a.local_ufrag, a.local_pwd, 0)
    a.start_gathering(list(a_hosts), 5000, [], 0)
    b.start_gathering(list(b_hosts), 6000, [], 0)
    a.connect(0)
    b.connect(0)
    wire.flush()
    for src, dst in ((a, b), (b, a)):
        for event in wire.of(src, events.LocalCandidate):
            dst.add_remote_candidate(event.candidate, 0)
    return a, b, wire


class DualStackCoreTests(SynchronousTestCase):
    """Two dual-stack cores in memory."""

    def test_pairs_stay_within_a_family_and_v6_wins(self) -> None:
        a, b, wire = dual_cores((A4, A6), (B4, B6))
        for core in (a, b):
            families = {
                (ip_version(p.local.host), ip_version(p.remote.host)) for p in core.checklist
            }
            self.assertEqual(families, {(4, 4), (6, 6)})
        wire.run(0.5)
        [sa] = wire.of(a, events.PairSelected)
        [sb] = wire.of(b, events.PairSelected)
        self.assertEqual(sa.pair.remote.address, (B6, 6000))
        self.assertEqual(sb.pair.remote.address, (A6, 5000))
        self.assertNotIn((4, 6), wire.sent_families)
        self.assertNotIn((6, 4), wire.sent_families)

    def test_v4_blocked_v6_connects(self) -> None:
        """A v4 path that loses everything does not matter: IPv6 carries."""
        a, b, wire = dual_cores((A4, A6), (B4, B6))
        wire.blocked.add(4)
        wire.run(1.0)
        [sa] = wire.of(a, events.PairSelected)
        self.assertEqual(ip_version(sa.pair.remote.host), 6)

    def test_slower_v6_still_wins_within_the_ipv6_wait(self) -> None:
        """Happy eyeballs: IPv4 answers in 10 ms, IPv6 in 160 ms; the controlling side
        waits past the 150 ms nomination delay for the IPv6 pair (``ipv6_wait``)."""
        a, b, wire = dual_cores((A4, A6), (B4, B6))
        wire.latency[6] = 0.08
        wire.run(2.0)
        [sa] = wire.of(a, events.PairSelected)
        self.assertEqual(ip_version(sa.pair.remote.host), 6)

    def test_v6_that_never_answers_costs_the_ipv6_wait_only(self) -> None:
        """IPv6 loses everything: the IPv4 pair (valid within 30 ms) is nominated once
        ``ipv6_wait`` (0.5 s) has passed, not later."""
        a, b, wire = dual_cores((A4, A6), (B4, B6))
        wire.blocked.add(6)
        wire.run(2.0)
        [sa] = wire.of(a, events.PairSelected)
        self.assertEqual(sa.pair.remote.address, (B4, 6000))
        self.assertGreaterEqual(sa.elapsed, a.config.checks.ipv6_wait)
        self.assertLess(sa.elapsed, a.config.checks.ipv6_wait + 0.1)

    def test_no_common_family_fails_without_cross_family_checks(self) -> None:
        """A v4-only and a v6-only peer have no pair: the attempt fails, nothing is sent
        across families."""
        a, b, wire = dual_cores((A4,), (B6,))
        a.add_remote_candidate(None, 0)
        b.add_remote_candidate(None, 0)
        self.assertEqual(list(a.checklist), [])
        wire.run(1.0)
        self.assertEqual(wire.of(a, events.PairSelected), [])
        self.assertEqual(len(wire.of(a, events.Failed)), 1)
        self.assertEqual([f for f in wire.sent_families if f[0] != f[1]], [])


class GatheringFamiliesTests(SynchronousTestCase):
    """STUN servers of both families from one dual-stack socket."""

    def gather(self, servers: list[Address]) -> IceCore:
        """A core on 10.0.0.2 (behind a port-preserving v4 NAT at 203.0.113.5) and
        2001:db8:1::2 (no NAT); the servers answer."""
        hosts = ["10.0.0.2", "2001:db8:1::2"]
        core = IceCore(True, IceConfig.on(*hosts), tie_breaker=1)
        core.start_gathering(hosts, 5000, servers, 0)
        responders = {s: StunResponder(s) for s in servers}

        def source_of(via: int, target: Address) -> Address:
            v6 = ":" in target.host
            return Address("2001:db8:1::2" if v6 else "203.0.113.5", 5000)

        answer_gathering(core, responders, source_of)
        return core

    def test_v6_server_is_no_mapping_sample(self) -> None:
        v4a, v4b = Address("198.51.100.1", 3478), Address("198.51.100.2", 3478)
        v6 = Address("2001:db8:ff::10", 3478)
        core = self.gather([v6, v4a, v4b])
        self.assertEqual(
            core.gatherer.evidence, ["stun:198.51.100.1:3478", "stun:198.51.100.2:3478"]
        )
        mapping = core.mapping
        assert mapping is not None
        self.assertEqual(mapping.address, "203.0.113.5")
        srflx = [c for c in core.local_candidates if c.type == "srflx"]
        # The v6 server saw the host address itself: no server-reflexive v6 candidate.
        self.assertEqual([c.host for c in srflx], ["203.0.113.5"])
        self.assertEqual(core.gatherer.stun_answers, 3)

    def test_silent_v6_server_does_not_hold_the_mapping(self) -> None:
        """A v6 STUN server that never answers (an IPv6 address with no route, say)
        holds neither the mapping nor the checks: StunSettled comes with the v4
        answers, while the v6 Binding is still retransmitted; STUN completes when it
        gives up."""
        v4a, v4b = Address("198.51.100.1", 3478), Address("198.51.100.2", 3478)
        v6 = Address("2001:db8:ff::10", 3478)
        hosts = ["10.0.0.2", "2001:db8:1::2"]
        core = IceCore(True, IceConfig.on(*hosts), tie_breaker=1)
        core.start_gathering(hosts, 5000, [v6, v4a, v4b], 0)
        responders = {s: StunResponder(s) for s in (v4a, v4b)}
        seen: list[Any] = []
        steps: list[float] = []

        def step(now: float) -> None:
            steps.append(now)
            while (event := core.next_event()) is not None:
                seen.append((type(event), now, core.stun_complete, core.checker.holding()))

        asked = answer_gathering(
            core, responders, lambda via, t: Address("203.0.113.5", 5000), step
        )
        self.assertIn(v6, asked)
        [(_, mapped_at, stun_then, holding)] = [e for e in seen if e[0] is events.StunSettled]
        self.assertEqual(mapped_at, 0.0)  # with the v4 answers, not the v6 timeout
        self.assertFalse(stun_then)
        self.assertFalse(holding)  # checks may start
        self.assertTrue(core.stun_complete)
        self.assertGreater(steps[-1], 1.0)  # the v6 Binding went on trying until it gave up
        mapping = core.mapping
        assert mapping is not None
        self.assertEqual(mapping.address, "203.0.113.5")

    def test_no_answer_at_all_waits_to_say_udp_blocked(self) -> None:
        """An IPv6-only host whose UDP is blocked: there is no mapping to wait for, but a
        description must say whether UDP is blocked (the peer starts TCP punching on
        it), so StunSettled waits until the only server gave up, and then says so."""
        v6 = Address("2001:db8:ff::10", 3478)
        config = IceConfig.on("2001:db8:1::2", stun_servers=[(v6.host, v6.port)])
        core = IceCore(True, config, tie_breaker=1)
        core.start_gathering(["2001:db8:1::2"], 5000, [v6], 0)
        self.assertTrue(core.mapping_complete)  # no IPv4 flow: nothing to measure
        settled: list[tuple[float, bool]] = []

        def step(now: float) -> None:
            while (event := core.next_event()) is not None:
                if isinstance(event, events.StunSettled):
                    settled.append((now, core.udp_blocked))

        answer_gathering(core, {}, lambda via, t: t, step)
        [(at, blocked)] = settled
        self.assertGreater(at, 1.0)  # after the Binding's retransmissions
        self.assertTrue(blocked)

    def test_servers_of_a_missing_family_are_not_asked(self) -> None:
        core = IceCore(True, IceConfig.on("10.0.0.2"), tie_breaker=1)
        core.start_gathering(["10.0.0.2"], 5000, [Address("2001:db8:ff::10", 3478)], 0)
        self.assertEqual(core.datagrams_to_send(0), [])
        self.assertTrue(core.stun_complete)


class RealSocketTests(TestCase):
    """Agents on real UDP sockets on ``::1`` and ``127.0.0.1``."""

    def setUp(self) -> None:
        needs_ipv6()

    @defer.inlineCallbacks
    def test_ipv6_loopback(self) -> Any:
        ca, cb = yield defer.ensureDeferred(connect_loopback_agents(self, reactor, "::1"))
        self.assertEqual(ca.remote[0], "::1")
        yield self.assert_carries(ca, cb)

    @defer.inlineCallbacks
    def test_dual_stack_prefers_v6(self) -> Any:
        hosts = ("127.0.0.1", "::1")
        ca, cb = yield defer.ensureDeferred(connect_loopback_agents(self, reactor, hosts))
        self.assertEqual((ca.remote[0], cb.remote[0]), ("::1", "::1"))
        yield self.assert_carries(ca, cb)

    @defer.inlineCallbacks
    def test_dual_stack_socket_talks_v4_to_a_v4_only_peer(self) -> Any:
        """One socket on ``::`` serves both families: a v4-only peer is heard and
        answered as plain IPv4, not as ``::ffff:`` addresses."""
        ca, cb = yield defer.ensureDeferred(
            connect_loopback_agents(self, reactor, ("127.0.0.1", "::1"), "127.0.0.1")
        )
        self.assertEqual(ca.remote[0], "127.0.0.1")
        self.assertEqual(cb.remote[0], "127.0.0.1")
        yield self.assert_carries(ca, cb)

    async def test_silent_v6_stun_server_holds_nothing(self) -> None:
        """Two STUN servers on 127.0.0.1 answer, one on ::1 never does (a v6 path that
        goes nowhere): the agent's mapping is complete, and a description could go out,
        while the v6 Binding is still being retransmitted."""
        from twisted.internet.protocol import DatagramProtocol

        class Silent(DatagramProtocol):
            def __init__(self) -> None:
                self.heard = 0

            def datagramReceived(self, data: bytes, addr: Any) -> None:
                self.heard += 1

        servers = []
        for _ in range(2):
            stun = StunServerService(StunResponder(Address("127.0.0.1", 0)), reactor, tcp=False)
            stun.startService()
            self.addCleanup(stun.stopService)
            servers.append((stun.responder.primary.host, stun.responder.primary.port))
        silent = Silent()
        silent_port = reactor.listenUDP(0, silent, interface="::1")
        self.addCleanup(silent_port.stopListening)
        servers.append(("::1", silent_port.getHost().port))
        config = IceConfig.on("127.0.0.1", "::1", stun_servers=servers)
        agent = IceAgent(reactor, True, config)
        self.addCleanup(agent.close)
        gathered = defer.ensureDeferred(agent.gather())
        gathered.addErrback(lambda _: None)
        await agent.when_stun_settled()
        self.assertGreater(silent.heard, 0)  # the v6 server was asked ...
        self.assertFalse(agent.core.stun_complete)  # ... and is still waited for
        self.assertFalse(gathered.called)
        self.assertEqual(
            sorted(evidence.rsplit(":", 1)[1] for evidence in agent.core.gatherer.evidence),
            sorted(str(port) for _, port in servers[:2]),
        )

    @defer.inlineCallbacks
    def assert_carries(self, ca: Any, cb: Any) -> Any:
        received: defer.Deferred[bytes] = defer.Deferred()
        cb.on_datagram(lambda data: received.callback(data) if not received.called else None)
        ca.send(b"over the selected family")
        self.assertEqual((yield received), b"over the selected family")

    @defer.inlineCallbacks
    def test_dual_stack_socket_maps_v4_both_ways(self) -> Any:
        """The socket itself: a datagram from an IPv4 socket arrives with an IPv4
        source, and a reply to that IPv4 address gets back."""
        import socket

        got: list[tuple[bytes, tuple[str, int]]] = []
        arrived: defer.Deferred[None] = defer.Deferred()

        def received(data: bytes, source: tuple[str, int], via: int) -> None:
            got.append((data, source))
            arrived.callback(None)

        sock = IceSocket.bind(reactor, 0, "::", 0, received)
        self.addCleanup(sock.close)
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(plain.close)
        plain.bind(("127.0.0.1", 0))
        plain.sendto(b"ping", ("127.0.0.1", sock.local[1]))
        yield arrived
        [(data, source)] = got
        self.assertEqual((data, source), (b"ping", plain.getsockname()))
        sock.write(b"pong", source)
        plain.settimeout(5)
        self.assertEqual(plain.recvfrom(100), (b"pong", ("127.0.0.1", sock.local[1])))


class SignalledV6CandidateTests(SynchronousTestCase):
    """RFC 8839 candidate lines with IPv6 addresses."""

    def test_round_trip(self) -> None:
        from holepunch.ice.candidate import Candidate, make_candidate

        candidate = make_candidate("host", "2001:db8::1", 5000)
        line = candidate.to_sdp()
        self.assertIn(" 2001:db8::1 5000 typ host", line)
        self.assertEqual(Candidate.from_sdp(line), candidate)
        spelled_out = line.replace("2001:db8::1", "2001:DB8:0:0:0:0:0:1")
        self.assertEqual(Candidate.from_sdp(spelled_out), candidate)
        srflx = make_candidate("srflx", "2001:db8::2", 6000, base=("fd00::2", 5000))
        self.assertEqual(Candidate.from_sdp(srflx.to_sdp()).related_address, "fd00::2")

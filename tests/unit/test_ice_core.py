"""Tests for the sans-I/O ICE core: two IceCores wired in memory, datagrams and a clock only.

No reactor and no socket: a Wire moves what one core wants sent into the other core's
``receive_datagram`` after a fixed latency, and time is a number the test advances.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from holepunch.ice import events
from holepunch.ice.candidate import Candidate, make_candidate
from holepunch.ice.checklist import CandidatePair
from holepunch.ice.config import IceConfig, RelayConfig, TcpConfig
from holepunch.ice.core import IceCore
from holepunch.ice.timers import Timers
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.server import StunResponder
from holepunch.stun.transactions import (
    ClientTransactions,
    RetransmissionPolicy,
    StunTimeout,
    TransactionOutcome,
)
from holepunch.stun.wire import Address, Attr


class Wire:
    """Two cores on two addresses; datagrams arrive after ``latency`` seconds."""

    def __init__(self, a: IceCore, b: IceCore, latency: float = 0.005) -> None:
        self.cores = {("192.0.2.1", 5000): a, ("192.0.2.2", 6000): b}
        self.address = {id(a): ("192.0.2.1", 5000), id(b): ("192.0.2.2", 6000)}
        self.latency = latency
        self.now = 0.0
        self.in_flight: list[tuple[float, bytes, tuple[str, int], tuple[str, int]]] = []
        self.events: dict[int, list[events.Event]] = {id(a): [], id(b): []}
        self.dropped = 0
        self.blocked = False

    def source_of(self, core: IceCore, destination: tuple[str, int], via: int) -> Any:
        """Where a datagram that ``core`` sends on ``via`` leaves from (None: lost)."""
        assert via == events.MAIN
        return None if self.blocked else self.address[id(core)]

    def arrive(self, data: bytes, source: tuple[str, int], destination: tuple[str, int]) -> None:
        """A datagram reaches ``destination``."""
        core = self.cores.get(destination)
        if core is None:
            self.dropped += 1
        else:
            core.receive_datagram(data, source, events.MAIN, self.now)

    def flush(self) -> None:
        for core in self.cores.values():
            for data, destination, via in core.datagrams_to_send(self.now):
                source = self.source_of(core, destination, via)
                if source is not None:
                    self.in_flight.append((self.now + self.latency, data, source, destination))
            event = core.next_event()
            while event is not None:
                self.events[id(core)].append(event)
                event = core.next_event()

    def run(self, until: float, step: float = 0.001) -> None:
        """Advance time to ``until``, delivering datagrams and firing timers."""
        while self.now < until:
            self.flush()
            self.now = round(self.now + step, 6)
            due = [d for d in self.in_flight if d[0] <= self.now]
            self.in_flight = [d for d in self.in_flight if d[0] > self.now]
            for _, data, source, destination in due:
                self.arrive(data, source, destination)
            for core in self.cores.values():
                timer = core.get_timer()
                if timer is not None and timer <= self.now:
                    core.handle_timer(self.now)
        self.flush()

    def of(self, core: IceCore, kind: type) -> list:
        return [e for e in self.events[id(core)] if isinstance(e, kind)]


def pair_of_cores(**checks: float) -> tuple[IceCore, IceCore, Wire]:
    a = IceCore(True, IceConfig.on("192.0.2.1"), tie_breaker=2)
    b = IceCore(False, IceConfig.on("192.0.2.2"), tie_breaker=1)
    for core in (a, b):
        for name, value in checks.items():
            setattr(core.config.checks, name, value)
    wire = Wire(a, b)
    a.set_remote_credentials(b.local_ufrag, b.local_pwd, 0)
    b.set_remote_credentials(a.local_ufrag, a.local_pwd, 0)
    a.start_gathering(["192.0.2.1"], 5000, [], 0)
    b.start_gathering(["192.0.2.2"], 6000, [], 0)
    a.connect(0)
    b.connect(0)
    return a, b, wire


def exchange_candidates(a: IceCore, b: IceCore, wire: Wire) -> None:
    wire.flush()
    for src, dst in ((a, b), (b, a)):
        for event in wire.of(src, events.LocalCandidate):
            dst.add_remote_candidate(event.candidate, wire.now)


class CoreExchangeTests(SynchronousTestCase):
    """A whole check exchange between two cores, in memory."""

    def test_full_exchange_selects_the_same_pair(self) -> None:
        """Gathering, checks, nomination: both cores select the direct pair toward each other."""
        a, b, wire = pair_of_cores()
        exchange_candidates(a, b, wire)
        wire.run(0.5)
        [sa] = wire.of(a, events.PairSelected)
        [sb] = wire.of(b, events.PairSelected)
        self.assertEqual(sa.pair.remote.address, ("192.0.2.2", 6000))
        self.assertEqual(sb.pair.remote.address, ("192.0.2.1", 5000))
        self.assertEqual((sa.method, sb.method), ("direct", "direct"))
        self.assertTrue(sa.pair.nominated and sb.pair.nominated)
        self.assertEqual(wire.of(a, events.Failed) + wire.of(b, events.Failed), [])

    def test_application_data_after_selection(self) -> None:
        """send_datagram goes out on the selected pair and arrives as DatagramReceived."""
        a, b, wire = pair_of_cores()
        exchange_candidates(a, b, wire)
        wire.run(0.5)
        a.send_datagram(b"hello", ("192.0.2.2", 6000), wire.now)
        wire.run(0.6)
        [got] = wire.of(b, events.DatagramReceived)
        self.assertEqual((got.data, got.source), (b"hello", ("192.0.2.1", 5000)))

    def test_checks_are_paced(self) -> None:
        """New checks leave at most one per Ta (here 50 ms)."""
        a, b, wire = pair_of_cores(ta=0.05)
        for port in range(7000, 7005):  # five dead remote candidates
            a.add_remote_candidate(make_candidate("host", "192.0.2.9", port), 0)
        first_sent: dict[tuple[str, int], float] = {}
        original = a.datagrams_to_send

        def record(now: float) -> list[tuple[bytes, tuple[str, int], int]]:
            out = original(now)
            for data, destination, _ in out:
                if destination[0] == "192.0.2.9" and _is_request(data):
                    first_sent.setdefault(destination, now)
            return out

        a.datagrams_to_send = record  # type: ignore[method-assign]
        wire.run(0.3)
        firsts = sorted(first_sent.values())
        gaps = [round(y - x, 3) for x, y in itertools.pairwise(firsts)]
        self.assertEqual(len(firsts), 5)
        # The wire's clock moves in 1 ms steps, so a 50 ms pace can show as 49 ms.
        self.assertTrue(all(gap >= 0.048 for gap in gaps), gaps)

    def test_role_conflict_resolved_in_memory(self) -> None:
        """Two controlling cores: the smaller tie-breaker yields (487) and they connect."""
        a = IceCore(True, IceConfig.on("192.0.2.1"), tie_breaker=2)
        b = IceCore(True, IceConfig.on("192.0.2.2"), tie_breaker=1)
        wire = Wire(a, b)
        a.set_remote_credentials(b.local_ufrag, b.local_pwd, 0)
        b.set_remote_credentials(a.local_ufrag, a.local_pwd, 0)
        a.start_gathering(["192.0.2.1"], 5000, [], 0)
        b.start_gathering(["192.0.2.2"], 6000, [], 0)
        a.connect(0)
        b.connect(0)
        exchange_candidates(a, b, wire)
        wire.run(1.0)
        self.assertTrue(a.controlling)
        self.assertFalse(b.controlling)
        self.assertEqual(len(wire.of(a, events.PairSelected)), 1)
        self.assertEqual(len(wire.of(b, events.PairSelected)), 1)

    def test_timeout_without_peer(self) -> None:
        """With the wire cut, the attempt fails at connection_timeout with a stage and a reason."""
        a, b, wire = pair_of_cores(connection_timeout=3.0)
        exchange_candidates(a, b, wire)
        wire.blocked = True
        wire.run(3.1, step=0.01)
        [failed] = wire.of(a, events.Failed)
        self.assertIn(failed.error.stage, ("connectivity-checks", "nomination"))
        self.assertTrue(a.closed)
        self.assertIsNone(a.get_timer())

    def test_forged_check_is_dropped(self) -> None:
        """A check whose MESSAGE-INTEGRITY uses the wrong password is counted, not answered."""
        a, b, wire = pair_of_cores()
        request = StunMessage.request()
        request.add_string(Attr.USERNAME, f"{a.local_ufrag}:{b.local_ufrag}")
        request.add_uint32(Attr.PRIORITY, 1)
        data = encode(request, integrity_key=b"wrong password!!!!!!!!", fingerprint=True)
        a.receive_datagram(data, ("198.51.100.7", 9), events.MAIN, 0)
        a.receive_datagram(b"\x00\x01garbage", ("198.51.100.7", 9), events.MAIN, 0)
        self.assertEqual(a.stats.unauthenticated, 1)
        self.assertEqual([d for d in a.datagrams_to_send(0) if d[1][0] == "198.51.100.7"], [])

    def test_consent_lost_after_timeout(self) -> None:
        """After selection, a silent peer costs consent after consent.timeout and the core closes."""
        a, b, wire = pair_of_cores()
        for core in (a, b):
            core.config.consent.timeout = 6.0
        exchange_candidates(a, b, wire)
        wire.run(0.5)
        wire.blocked = True
        wire.run(16.0, step=0.01)
        [lost] = wire.of(a, events.ConsentLost)
        self.assertGreater(lost.seconds, 6.0)
        self.assertTrue(a.closed)


def _is_request(data: bytes) -> bool:
    try:
        return decode(data).message_class.name == "REQUEST"
    except Exception:
        return False


class TimersTests(SynchronousTestCase):
    """Named deadlines."""

    def test_earliest_first_and_moving(self) -> None:
        """due() returns what has come, earliest first; set() again moves a deadline."""
        timers = Timers()
        timers.set("b", 2.0)
        timers.set("a", 1.0)
        timers.set("c", 3.0)
        timers.set("c", 0.5)
        self.assertEqual(timers.get_timer(), 0.5)
        self.assertEqual(timers.due(2.0), ["c", "a", "b"])
        self.assertIsNone(timers.get_timer())


class ClientTransactionsTests(SynchronousTestCase):
    """The sans-I/O STUN transaction table."""

    def test_retransmission_schedule(self) -> None:
        """RTO 0.1 s, Rc 3, Rm 2: sends at 0, 0.1, 0.3, then a timeout at 0.5."""
        table = ClientTransactions()
        table.start(
            StunMessage.request(),
            Address("192.0.2.9", 3478),
            0.0,
            policy=RetransmissionPolicy(rto=0.1, rc=3, rm=2),
        )
        sends = [0.0] if table.datagrams_to_send() else []
        outcomes: list[TransactionOutcome] = []
        now = 0.0
        while (at := table.get_timer()) is not None:
            now = at
            outcomes.extend(table.handle_timer(now))
            if table.datagrams_to_send():
                sends.append(round(now, 6))
        self.assertEqual(sends, [0.0, 0.1, 0.3])
        self.assertEqual(round(now, 6), 0.5)
        [outcome] = outcomes
        self.assertIsInstance(outcome.error, StunTimeout)

    def test_response_matches_and_ends(self) -> None:
        """A success response with the transaction's id ends it with the response."""
        table = ClientTransactions()
        request = StunMessage.request()
        table.start(request, Address("192.0.2.9", 3478), 0.0, context="ctx", via=3)
        response = decode(encode(request.success_response()))
        self.assertFalse(table.receive(response, Address("192.0.2.9", 3478), via=4))
        outcome = table.receive(response, Address("192.0.2.9", 3478), via=3)
        assert isinstance(outcome, TransactionOutcome)
        self.assertEqual((outcome.context, outcome.via), ("ctx", 3))
        self.assertIsNotNone(outcome.response)
        self.assertEqual(len(table), 0)
        self.assertIsNone(table.get_timer())

    def test_quiet_stops_sending_but_takes_the_answer(self) -> None:
        """RFC 8445 7.3.1.4 cancellation: after quiet() at 0.1 s nothing more is sent,
        a response until the original timeout (0.5 s) still ends the transaction, and a
        quiet transaction that times out reports nothing."""
        table = ClientTransactions()
        policy = RetransmissionPolicy(rto=0.1, rc=3, rm=2)
        request = StunMessage.request()
        table.start(request, Address("192.0.2.9", 3478), 0.0, policy=policy)
        table.datagrams_to_send()
        table.handle_timer(0.1)
        self.assertEqual(len(table.datagrams_to_send()), 1)
        self.assertTrue(table.quiet(request.transaction_id))
        self.assertEqual(table.handle_timer(0.3), [])
        self.assertEqual(table.datagrams_to_send(), [])
        response = decode(encode(request.success_response()))
        outcome = table.receive(response, Address("192.0.2.9", 3478))
        assert isinstance(outcome, TransactionOutcome)
        self.assertIsNotNone(outcome.response)
        other = StunMessage.request()
        table.start(other, Address("192.0.2.9", 3478), 0.0, policy=policy)
        table.quiet(other.transaction_id)
        self.assertEqual(table.get_timer(), 0.5)
        self.assertEqual(table.handle_timer(0.5), [])
        self.assertEqual(len(table), 0)


class MemoryNat:
    """A NAT in memory: public ports for (socket, destination) flows, by preset."""

    def __init__(self, preset: str, public: str = "203.0.113.5") -> None:
        self.preset = preset
        self.public = public
        self.flows: dict[tuple[int, Address], int] = {}
        self.counter = 20000
        self.rng = random.Random(7)

    def port(self, via: int, destination: Address) -> int:
        key = (via, destination)
        if self.preset == "eim":
            key = (via, Address("0.0.0.0", 0))
        if key not in self.flows:
            if self.preset == "random":
                self.flows[key] = self.rng.randrange(1024, 65536)
            else:
                self.counter += 1
                self.flows[key] = self.counter
        return self.flows[key]


def answer_gathering(
    core: IceCore,
    responders: dict[Address, StunResponder],
    source_of: Callable[[int, Address], Address],
    each_step: Callable[[float], None] | None = None,
) -> list[Address]:
    """Run ``core``'s gathering to its end: each Binding to a server in ``responders`` is
    answered as if it came from ``source_of(via, server)`` (the NAT's mapping), the rest
    are lost; ``each_step(now)`` is called after each instant's datagrams; returns the
    destinations asked, in order."""
    asked: list[Address] = []
    now = 0.0
    for _ in range(200):
        for data, destination, via in core.datagrams_to_send(now):
            target = Address(*destination)
            if _is_request(data) and target not in asked:
                asked.append(target)
            responder = responders.get(target)
            if responder is None:
                continue
            reply = responder.handle(data, source_of(via, target), target, now)
            assert reply is not None
            core.receive_datagram(reply.data, destination, via, now)
        if each_step is not None:
            each_step(now)
        if core.stun_complete:
            break
        timer = core.get_timer()
        assert timer is not None
        now = timer
        core.handle_timer(now)
    return asked


def gather_behind(
    preset: str, servers: list[Address], answering: set[Address] | None = None
) -> tuple[IceCore, MemoryNat, list[Address]]:
    """Gather behind a MemoryNat; STUN servers answer (sans-I/O StunResponders) where
    ``answering`` says (default: every server and, RFC 5780 aside, nothing else)."""
    nat = MemoryNat(preset)
    responders = {s: StunResponder(s) for s in (answering or set(servers))}
    core = IceCore(True, IceConfig.on("10.0.0.2"), tie_breaker=1)
    core.start_gathering(["10.0.0.2"], 5000, servers, 0)
    asked = answer_gathering(
        core, responders, lambda via, target: Address(nat.public, nat.port(via, target))
    )
    return core, nat, asked


class MappingWithoutRfc5780Tests(SynchronousTestCase):
    """Our mapping, measured from ordinary one-address STUN servers."""

    ONE = Address("198.51.100.1", 3478)
    TWO = Address("198.51.100.2", 3478)

    def test_two_servers_sequential(self) -> None:
        """Two servers on different addresses: ports one apart make a sequential mapping."""
        core, nat, _ = gather_behind("sequential", [self.ONE, self.TWO])
        mapping = core.mapping
        assert mapping is not None
        self.assertTrue(mapping.sequential)
        self.assertEqual((mapping.delta, mapping.last_port), (1, nat.counter))
        self.assertEqual(core.gatherer.evidence[0], "stun:198.51.100.1:3478")

    def test_two_servers_endpoint_independent(self) -> None:
        """The same public port toward both servers: endpoint-independent."""
        core, _, _ = gather_behind("eim", [self.ONE, self.TWO])
        assert core.mapping is not None
        self.assertTrue(core.mapping.endpoint_independent)

    def test_two_servers_random(self) -> None:
        """Random ports: neither sequential nor endpoint-independent."""
        core, _, _ = gather_behind("random", [self.ONE, self.TWO])
        assert core.mapping is not None
        self.assertTrue(core.mapping.random)

    def test_lone_server_second_port(self) -> None:
        """One server (the daemon on 3478 and 3479): its port + 1 is the second sample."""
        second = Address(self.ONE.host, 3479)
        core, nat, asked = gather_behind("sequential", [self.ONE], {self.ONE, second})
        self.assertEqual(asked, [self.ONE, second])
        assert core.mapping is not None
        self.assertEqual((core.mapping.delta, core.mapping.last_port), (1, nat.counter))
        srflx = [c for c in core.local_candidates if c.type == "srflx"]
        self.assertEqual(len(srflx), 1, "the second port gives no extra candidate")

    def test_lone_server_without_second_port(self) -> None:
        """A public-style server with nothing on port + 1: no guess, and STUN still ends."""
        core, _, asked = gather_behind("sequential", [self.ONE])
        self.assertEqual(len(asked), 2)
        self.assertIsNone(core.mapping)
        self.assertTrue(core.stun_complete)

    def test_remeasure_from_a_fresh_socket(self) -> None:
        """With no unused server destination, the re-measure opens a fresh socket; a
        sequential NAT's shared counter gives the latest port."""
        core, nat, _ = gather_behind("sequential", [self.ONE, self.TWO])
        for _ in range(3):  # other flows (TCP, say) move the counter
            nat.port(9, Address("192.0.2.77", nat.counter))
        self.assertTrue(core.remeasure_mapping(5.0))
        [wanted] = [e for e in _drain(core) if isinstance(e, events.SocketWanted)]
        core.socket_opened(wanted.via, ("10.0.0.2", 5001), 5.0)
        [(data, destination, via)] = core.datagrams_to_send(5.0)
        self.assertEqual(via, wanted.via)
        target = Address(*destination)
        reply = StunResponder(target).handle(
            data, Address(nat.public, nat.port(via, target)), target, 5.0
        )
        assert reply is not None
        core.receive_datagram(reply.data, destination, via, 5.0)
        after = _drain(core)
        self.assertIn(events.SocketReleased(wanted.via), after)
        self.assertTrue(any(isinstance(e, events.MappingMeasured) for e in after))
        assert core.mapping is not None
        self.assertEqual(core.mapping.last_port, nat.counter)


def _drain(core: IceCore) -> list[events.Event]:
    out = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out


class PortMappingCoreTests(SynchronousTestCase):
    """The router's mapping as a candidate, in the sans-I/O core."""

    def core(self) -> IceCore:
        config = IceConfig.on("10.0.0.2", port_mapping=True)
        return IceCore(True, config, tie_breaker=1)

    def test_candidate_and_end_of_candidates_wait_for_the_router(self) -> None:
        """The core asks for a mapping of its port; end-of-candidates waits for the answer;
        the mapped address becomes a server-reflexive candidate that says how it was made."""
        core = self.core()
        core.start_gathering(["10.0.0.2", "127.0.0.1"], 5000, [], 0)
        first = _drain(core)
        self.assertIn(events.PortMappingWanted(5000, ("10.0.0.2",)), first)
        self.assertNotIn(events.LocalCandidate(None), first)
        core.port_mapping_done(("203.0.113.5", 40000), "10.0.0.2", "pcp", 0.3)
        after = [e for e in _drain(core) if isinstance(e, events.LocalCandidate)]
        [mapped, end] = after
        assert mapped.candidate is not None
        self.assertEqual(mapped.candidate.address, ("203.0.113.5", 40000))
        self.assertEqual(mapped.candidate.type, "srflx")
        self.assertIn(("x-port-mapping", "pcp"), mapped.candidate.extensions)
        self.assertIn("x-port-mapping pcp", mapped.candidate.to_sdp())
        self.assertIsNone(end.candidate)

    def test_no_mapping_still_ends_candidates(self) -> None:
        """A router that answers nothing costs the wait, then candidates end."""
        core = self.core()
        core.start_gathering(["10.0.0.2"], 5000, [], 0)
        _drain(core)
        core.port_mapping_done(None, None, "", 1.0)
        self.assertEqual(
            [e for e in _drain(core) if isinstance(e, events.LocalCandidate)],
            [events.LocalCandidate(None)],
        )

    def test_loopback_only_asks_nothing(self) -> None:
        """No router is asked for loopback or link-local sockets."""
        core = self.core()
        core.start_gathering(["127.0.0.1", "169.254.1.2"], 5000, [], 0)
        emitted = _drain(core)
        self.assertFalse(any(isinstance(e, events.PortMappingWanted) for e in emitted))
        self.assertIn(events.LocalCandidate(None), emitted)

    def test_method_names_the_port_mapping(self) -> None:
        """A pair toward the peer's port-mapped candidate reports ``port-mapping``."""
        core = self.core()
        core.start_gathering(["10.0.0.2"], 5000, [], 0)
        remote = Candidate.from_sdp(
            "candidate:1 1 udp 1686052607 203.0.113.9 41000 typ srflx raddr 10.1.0.2 "
            "rport 5000 x-port-mapping upnp"
        )
        local = core.local_candidates[0]
        self.assertEqual(core.method(CandidatePair(local, remote)), "port-mapping")
        plain = Candidate.from_sdp(
            "candidate:1 1 udp 1686052607 203.0.113.9 41001 typ srflx raddr 10.1.0.2 rport 5000"
        )
        self.assertEqual(core.method(CandidatePair(local, plain)), "udp-hole-punch")


class UdpPresumedBlockedTests(SynchronousTestCase):
    """A STUN server answered over TCP and none over UDP: UDP is taken as blocked one
    retransmission interval later, not when every Binding gives up (about 1.4 s)."""

    SERVER = Address("198.51.100.1", 3478)

    def core(self, *, relays: bool = False, presume: bool = True) -> IceCore:
        config = dataclasses.replace(
            IceConfig.on("10.0.0.2", stun_servers=[("198.51.100.1", 3478)]),
            tcp=TcpConfig(presume_udp_blocked=presume),
            relay=RelayConfig(servers=["turn:198.51.100.9"] if relays else ()),
        )
        return IceCore(True, config, tie_breaker=1)

    def run_until(self, core: IceCore, end: float) -> list[events.Event]:
        """Lose every datagram and run the core's timers up to ``end``."""
        seen = []
        while True:
            core.datagrams_to_send(core.now)
            seen += _drain(core)
            at = core.get_timer()
            if at is None or at > end:
                return seen
            core.handle_timer(at)

    def answer_bindings(self, core: IceCore, now: float) -> None:
        """Answer the Bindings that go out at ``now`` (the mapping 203.0.113.5:40000)."""
        for data, destination, via in core.datagrams_to_send(now):
            target = Address(*destination)
            reply = StunResponder(target).handle(data, Address("203.0.113.5", 40000), target, now)
            if reply is not None:
                core.receive_datagram(reply.data, destination, via, now)

    def test_presumed_one_rto_after_the_tcp_answer(self) -> None:
        """Settled (the description can go), udp_blocked, while the Bindings go on."""
        core = self.core()
        core.start_gathering(["10.0.0.2"], 5000, [self.SERVER], 0.0)
        self.run_until(core, 0.05)
        core.tcp_stun_answered(4, 0.05)
        rto = core.config.gathering.policy.rto
        before = self.run_until(core, 0.05 + rto - 0.01)
        self.assertNotIn(events.StunSettled(), before)
        self.assertFalse(core.stun_settled)
        self.assertTrue(core.checker.holding(), "checks wait for the mapping")
        after = self.run_until(core, 0.05 + rto)
        self.assertEqual(after.count(events.StunSettled()), 1)
        self.assertTrue(core.stun_settled)
        self.assertTrue(core.udp_blocked)
        self.assertFalse(core.checker.holding(), "no mapping to wait for")
        self.assertFalse(core.stun_complete, "the Bindings are still retransmitted")
        rest = self.run_until(core, 5.0)
        self.assertTrue(core.stun_complete)
        self.assertNotIn(events.StunSettled(), rest, "settled once")
        self.assertTrue(core.udp_blocked)

    def test_without_the_tcp_answer_the_bindings_decide(self) -> None:
        """No TCP answer: UDP is blocked only once every Binding gave up (the old way)."""
        core = self.core()
        core.start_gathering(["10.0.0.2"], 5000, [self.SERVER], 0.0)
        self.run_until(core, 0.5)
        self.assertFalse(core.stun_settled)
        self.assertFalse(core.udp_blocked)
        self.run_until(core, 5.0)
        self.assertTrue(core.stun_complete)
        self.assertTrue(core.udp_blocked)

    def test_every_family_asked_needs_its_tcp_answer(self) -> None:
        """Bindings to an IPv6 server too: an IPv4 answer over TCP is not enough (IPv6
        UDP may work where IPv4's is blocked); with an IPv6 one as well, UDP is presumed
        blocked."""
        v6 = Address("2001:db8::1", 3478)
        config = dataclasses.replace(
            IceConfig.on(
                "10.0.0.2", "2001:db8:1::2", stun_servers=[("198.51.100.1", 3478), (v6.host, 3478)]
            ),
        )
        core = IceCore(True, config, tie_breaker=1)
        core.start_gathering(["10.0.0.2", "2001:db8:1::2"], 5000, [self.SERVER, v6], 0.0)
        core.tcp_stun_answered(4, 0.0)
        self.run_until(core, 0.5)
        self.assertFalse(core.udp_blocked)
        core.tcp_stun_answered(6, 0.5)
        rto = core.config.gathering.policy.rto
        self.run_until(core, 0.5 + rto)
        self.assertTrue(core.udp_blocked)
        self.assertFalse(core.stun_complete)

    def test_turned_off(self) -> None:
        """``presume_udp_blocked=False``: the TCP answer changes nothing."""
        core = self.core(presume=False)
        core.start_gathering(["10.0.0.2"], 5000, [self.SERVER], 0.0)
        core.tcp_stun_answered(4, 0.0)
        self.run_until(core, 0.5)
        self.assertFalse(core.stun_settled)
        self.assertFalse(core.udp_blocked)

    def test_udp_answered_first(self) -> None:
        """A UDP answer before the interval ends: nothing is presumed."""
        core = self.core()
        core.start_gathering(["10.0.0.2"], 5000, [self.SERVER], 0.0)
        core.tcp_stun_answered(4, 0.0)
        self.answer_bindings(core, 0.01)
        self.run_until(core, 5.0)
        self.assertFalse(core.udp_blocked)
        self.assertFalse(core.gatherer.udp_presumed_blocked)

    def test_a_late_udp_answer_still_counts(self) -> None:
        """After the presumption, an answer to a retransmitted Binding: its candidate is
        gathered and UDP is no longer blocked."""
        core = self.core()
        core.start_gathering(["10.0.0.2"], 5000, [self.SERVER], 0.0)
        core.tcp_stun_answered(4, 0.0)
        self.run_until(core, 0.3)
        self.assertTrue(core.udp_blocked)
        late: list[events.Event] = []
        while core.udp_blocked:
            at = core.get_timer()
            assert at is not None and at < 2.0, "a Binding is retransmitted"
            core.handle_timer(at)  # the next retransmission, answered this time
            self.answer_bindings(core, at)
            late += _drain(core)
        srflx = [
            e.candidate
            for e in late
            if isinstance(e, events.LocalCandidate)
            and e.candidate is not None
            and e.candidate.type == "srflx"
        ]
        self.assertEqual([c.address for c in srflx], [("203.0.113.5", 40000)])
        self.assertFalse(core.udp_blocked)
        self.assertTrue(core.stun_settled, "settled stays settled")

    def test_tcp_answer_before_the_bindings_go_out(self) -> None:
        """UDP gets its interval from when its Bindings are sent."""
        core = self.core()
        core.tcp_stun_answered(4, 0.0)
        core.start_gathering(["10.0.0.2"], 5000, [self.SERVER], 1.0)
        rto = core.config.gathering.policy.rto
        self.assertNotIn(events.StunSettled(), self.run_until(core, 1.0 + rto - 0.01))
        self.assertIn(events.StunSettled(), self.run_until(core, 1.0 + rto))

    def test_relays_asked_at_once_and_candidates_end_after_the_bindings(self) -> None:
        """TURN is asked for when UDP is presumed blocked, once; end-of-candidates waits
        for the Bindings even when the relays are done first."""
        core = self.core(relays=True)
        core.start_gathering(["10.0.0.2"], 5000, [self.SERVER], 0.0)
        core.tcp_stun_answered(4, 0.0)
        presumed = self.run_until(core, 0.3)
        self.assertEqual(presumed.count(events.RelaysWanted()), 1)
        core.relays_done(0.35)
        self.assertNotIn(events.LocalCandidate(None), _drain(core))
        rest = self.run_until(core, 5.0)
        self.assertTrue(core.stun_complete)
        self.assertIn(events.LocalCandidate(None), rest)
        self.assertNotIn(events.RelaysWanted(), rest, "asked once")


def connected_cores(**checks: float) -> tuple[IceCore, IceCore, Wire]:
    """Two cores that selected their direct pair."""
    a, b, wire = pair_of_cores(**checks)
    exchange_candidates(a, b, wire)
    wire.run(0.5)
    assert wire.of(a, events.PairSelected) and wire.of(b, events.PairSelected)
    return a, b, wire


def restart_both(a: IceCore, b: IceCore, wire: Wire, reason: str = "application") -> None:
    """``a`` restarts, ``b`` follows when the new credentials reach it (the signaling's
    offer and answer), and both learn the other's new candidates."""
    seen = {id(a): len(wire.events[id(a)]), id(b): len(wire.events[id(b)])}
    assert a.restart(wire.now, reason)
    assert b.restart(wire.now, "peer")
    a.set_remote_credentials(b.local_ufrag, b.local_pwd, wire.now)
    b.set_remote_credentials(a.local_ufrag, a.local_pwd, wire.now)
    wire.flush()
    for src, dst in ((a, b), (b, a)):
        for event in wire.events[id(src)][seen[id(src)] :]:
            if isinstance(event, events.LocalCandidate):
                dst.add_remote_candidate(event.candidate, wire.now)


class RestartTests(SynchronousTestCase):
    """ICE restart (RFC 8445 9) in memory."""

    def test_restart_moves_to_the_new_generation(self) -> None:
        """New credentials, new checks; the connection moves (PathChanged, reason
        restart) and the restart ends well on both sides; the old credentials are gone."""
        a, b, wire = connected_cores()
        old_ufrag = a.local_ufrag
        restart_both(a, b, wire)
        self.assertNotEqual(a.local_ufrag, old_ufrag)
        [restarting] = wire.of(a, events.Restarting)
        self.assertEqual((restarting.generation, restarting.reason), (1, "application"))
        wire.run(wire.now + 0.5)
        for core in (a, b):
            [changed] = wire.of(core, events.PathChanged)
            self.assertEqual(changed.reason, "restart")
            [ended] = wire.of(core, events.RestartEnded)
            self.assertTrue(ended.ok)
            self.assertIs(core.selected, changed.pair)
            self.assertIsNone(core.previous)
            self.assertIsNone(core.previous_credentials)
            self.assertEqual((core.stats.restarts, core.stats.restarts_completed), (1, 1))
        self.assertEqual(wire.of(a, events.Failed) + wire.of(b, events.Failed), [])

    def test_data_flows_during_the_restart(self) -> None:
        """Until the new pair is selected, data goes on the old one, both ways."""
        a, b, wire = connected_cores()
        assert a.restart(wire.now, "application")  # b has not heard yet
        self.assertIsNone(a.selected)
        a.send_datagram(b"during", ("192.0.2.2", 6000), wire.now)
        b.send_datagram(b"back", ("192.0.2.1", 5000), wire.now)
        wire.run(wire.now + 0.1)
        self.assertEqual([e.data for e in wire.of(b, events.DatagramReceived)], [b"during"])
        self.assertEqual([e.data for e in wire.of(a, events.DatagramReceived)], [b"back"])

    def test_old_consent_is_answered_during_the_restart(self) -> None:
        """The peer's consent checks on the old pair, with the old credentials, are still
        answered while our restart runs: consent stays fresh on both sides."""
        a, b, wire = connected_cores()
        assert a.restart(wire.now, "application")
        wire.run(wire.now + 40)  # b never restarts; more than a consent timeout
        self.assertEqual(wire.of(a, events.ConsentLost) + wire.of(b, events.ConsentLost), [])
        self.assertFalse(a.closed or b.closed)
        [ended] = wire.of(a, events.RestartEnded)
        self.assertFalse(ended.ok)  # abandoned after RestartConfig.timeout
        self.assertIsNotNone(a.selected)
        self.assertEqual(a.stats.restarts_abandoned, 1)

    def test_consent_failures_start_a_restart(self) -> None:
        """Consent checks that go unanswered (a NAT lost its mapping) start a restart
        rather than ending the connection; once the path works again the restart
        selects a pair and the connection goes on."""
        a, b, wire = connected_cores()
        wire.blocked = True
        wire.run(wire.now + 15)
        self.assertGreaterEqual(a.stats.consent_failures, 2)
        restarting = wire.of(a, events.Restarting) + wire.of(b, events.Restarting)
        self.assertTrue(restarting)
        self.assertEqual({r.reason for r in restarting}, {"consent"})
        self.assertFalse(a.closed or b.closed)
        wire.blocked = False
        # Whichever restarted first, the other follows (the signaling's part).
        for core in (a, b):
            if not wire.of(core, events.Restarting):
                core.restart(wire.now, "peer")
        a.set_remote_credentials(b.local_ufrag, b.local_pwd, wire.now)
        b.set_remote_credentials(a.local_ufrag, a.local_pwd, wire.now)
        exchange_candidates(a, b, wire)
        wire.run(wire.now + 1)
        for core in (a, b):
            self.assertTrue([e for e in wire.of(core, events.RestartEnded) if e.ok])
            self.assertIsNotNone(core.selected)
        self.assertEqual(wire.of(a, events.ConsentLost) + wire.of(b, events.ConsentLost), [])

    def test_consent_lost_after_the_overall_deadline(self) -> None:
        """If nothing works, the connection still ends after the consent timeout."""
        a, b, wire = connected_cores()
        wire.blocked = True
        wire.run(wire.now + 40)
        self.assertTrue(wire.of(a, events.ConsentLost))
        self.assertTrue(a.closed)

    def test_restart_before_selection_does_nothing(self) -> None:
        a, b, wire = pair_of_cores()
        self.assertFalse(a.restart(0, "application"))
        self.assertEqual(a.generation, 0)


class BetterPathTests(SynchronousTestCase):
    """The search for a better path while connected (holepunch.ice.betterpath)."""

    def rounds_at(self, core: IceCore, wire: Wire, until: float) -> list[float]:
        """When each round of the search ran, relative to now."""
        start, seen, times = wire.now, core.paths.rounds, []
        while wire.now < until:
            wire.run(wire.now + 0.05, step=0.005)
            if core.paths.rounds != seen:
                seen = core.paths.rounds
                times.append(round(wire.now - start))
        return times

    def test_healthy_direct_path_does_not_search(self) -> None:
        """A direct pair with fast consent answers is left alone."""
        a, b, wire = connected_cores()
        wire.run(wire.now + 40, step=0.01)
        self.assertEqual((a.paths.rounds, b.paths.rounds), (0, 0))
        self.assertEqual(a.stats.better_path_checks, 0)

    def test_degraded_path_searches_on_an_exponential_schedule(self) -> None:
        """Slow consent answers make the path degraded: the direct pairs are checked
        again 2 s after selection, then after 4, 8, 16 and 30 s (the cap), and a pair
        that does not answer is checked on every round."""
        a, b, wire = connected_cores()
        a.config.restart.degraded_rtt = 0.0  # every answer counts as slow
        a.add_remote_candidate(
            make_candidate("srflx", "192.0.2.9", 7000, base=("10.0.0.9", 7000)), wire.now
        )
        wire.run(wire.now + 13, step=0.01)  # two consent checks at least: degraded
        self.assertTrue(a.consent.degraded)
        a.paths.start()  # measure the schedule from here
        times = self.rounds_at(a, wire, wire.now + 65)
        self.assertEqual(times, [2, 6, 14, 30, 60])
        self.assertGreaterEqual(a.stats.better_path_checks, 5)
        self.assertIsNotNone(a.selected)

    def test_relayed_pair_is_better_left_for_a_direct_one(self) -> None:
        """The upgrade rule: a direct valid pair beats a relayed selection, and beats a
        direct one only when that one is degraded."""
        a, b, wire = connected_cores()
        selected = a.selected
        assert selected is not None
        other = CandidatePair(selected.local, make_candidate("host", "192.0.2.7", 7000))
        relay = CandidatePair(
            make_candidate("relay", "198.51.100.1", 9000, base=("192.0.2.1", 5000)),
            selected.remote,
        )
        self.assertFalse(a.selector.better(other))
        self.assertFalse(a.selector.better(relay))
        a.config.restart.degraded_rtt = 0.0
        wire.run(wire.now + 13, step=0.01)  # two consent checks at least
        self.assertTrue(a.selector.better(other))
        self.assertFalse(a.selector.better(relay))
        a.selected = relay
        self.assertTrue(a.selector.better(other))


class KeepTryingTests(SynchronousTestCase):
    """While another path (TCP) carries the connection, UDP does not give up
    (IceCore.keep_trying): failed pairs are checked again until one works."""

    def test_blocked_past_the_timeout_then_selected_once_open(self) -> None:
        """The wire is cut for longer than the connection timeout: no Failed event; the
        failed pair is checked again 2, 6, 14 s after keep_trying, and once the wire
        works again the next round selects it on both sides."""
        a, b, wire = pair_of_cores(connection_timeout=3.0)
        for core in (a, b):
            core.keep_trying(wire.now)
        exchange_candidates(a, b, wire)
        wire.blocked = True
        wire.run(10.0, step=0.01)
        self.assertEqual(wire.of(a, events.Failed) + wire.of(b, events.Failed), [])
        self.assertTrue(a.checklist.all_failed())
        self.assertEqual(a.paths.rounds, 2)  # at 2 s and 6 s
        checks = a.stats.checks_sent
        wire.blocked = False
        wire.run(13.9, step=0.01)
        self.assertEqual(wire.of(a, events.PairSelected), [])  # nothing until the round
        self.assertEqual(a.stats.checks_sent, checks)
        wire.run(14.5, step=0.01)
        [sa] = wire.of(a, events.PairSelected)
        [sb] = wire.of(b, events.PairSelected)
        self.assertEqual(sa.pair.remote.address, ("192.0.2.2", 6000))
        self.assertEqual(sb.pair.remote.address, ("192.0.2.1", 5000))
        self.assertGreater(a.stats.better_path_checks, 0)

    def test_stop_trying_after_the_deadline_fails(self) -> None:
        """The other path failed after the connection timeout: the core fails at once,
        with the usual stage."""
        a, b, wire = pair_of_cores(connection_timeout=3.0)
        a.keep_trying(wire.now)
        exchange_candidates(a, b, wire)
        wire.blocked = True
        wire.run(5.0, step=0.01)
        self.assertEqual(wire.of(a, events.Failed), [])
        a.stop_trying(wire.now)
        wire.flush()
        [failed] = wire.of(a, events.Failed)
        self.assertIn(failed.error.stage, ("connectivity-checks", "nomination"))
        self.assertTrue(a.closed)

    def test_stop_trying_before_the_deadline_fails_as_usual(self) -> None:
        """Given up on while checks are in flight: the core fails as it would have
        without keep_trying, once every pair has failed (before the timeout)."""
        a, b, wire = pair_of_cores(connection_timeout=30.0)
        a.keep_trying(wire.now)
        exchange_candidates(a, b, wire)
        wire.blocked = True
        wire.run(0.5, step=0.01)
        self.assertFalse(a.checklist.all_failed())
        a.stop_trying(wire.now)
        self.assertFalse(a.closed)
        wire.run(29.0, step=0.05)
        [failed] = wire.of(a, events.Failed)
        self.assertEqual(failed.error.stage, "connectivity-checks")
        self.assertIn("pairs failed", failed.error.detail)


class SilenceTests(SynchronousTestCase):
    """Sending and hearing nothing brings the consent check forward."""

    def test_silence_while_sending_restarts_within_seconds(self) -> None:
        """The path breaks while a sends data: 2 s of silence, one fast consent check
        (1.25 s) unanswered, and a restart, well before the next regular consent check
        would have noticed."""
        a, b, wire = connected_cores()
        a.consent.last_consent = wire.now  # a regular check just went
        a.timers.set("consent", wire.now + 6)
        wire.blocked = True
        broke = wire.now
        while not wire.of(a, events.Restarting) and wire.now < broke + 10:
            a.send_datagram(b"data", ("192.0.2.2", 6000), wire.now)
            wire.run(wire.now + 0.1)
        [restarting] = wire.of(a, events.Restarting)
        self.assertEqual(restarting.reason, "consent")
        self.assertLess(wire.now - broke, 4.5)

    def test_idle_connection_is_not_checked_more(self) -> None:
        """Nothing sent, nothing heard: no extra consent checks."""
        a, b, wire = connected_cores()
        wire.run(wire.now + 60, step=0.01)
        self.assertLessEqual(a.stats.consent_checks, 60 / 4 + 1)

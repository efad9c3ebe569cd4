"""TCP hole punching by simultaneous open (holepunch.punch.tcp).

Unit tests use task.Clock; the loopback tests use real sockets on 127.0.0.1 only; the lab
tests run the driver (lab.tcp_punch_driver) in hosts behind real kernel
NATs (lab.natlab) and need root.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from holepunch.punch.tcp import (
    METHOD,
    PunchedStream,
    TcpMapping,
    TcpPunchError,
    reusable_socket,
    simultaneous_open,
    sync_moment,
    tcp_mapping,
)
from holepunch.punch.tcpsession import TcpTrack
from holepunch.stun.server import StunResponder, StunServerService
from holepunch.stun.wire import Address
from lab.natlab import PUBLIC_A, lab_fixture
from lab.tcp_punch_lab import STUN_PORT, PunchDriver, build_hosts, measure, summary
from tests.signaling_helpers import needs_ipv6

_log = Logger()

LOOPBACK = "127.0.0.1"


class SyncMomentTests(TestCase):
    """The DCUtR-style dial moment."""

    def test_formula(self) -> None:
        """The initiator dials half a round trip plus the lead after sending."""
        self.assertAlmostEqual(sync_moment(100.0, 0.2, 0.1), 100.2)
        self.assertAlmostEqual(sync_moment(100.0, 0.0), 100.1)

    def test_rejects_negative(self) -> None:
        """A negative round trip or lead is an error."""
        self.assertRaises(ValueError, sync_moment, 0.0, -0.1)
        self.assertRaises(ValueError, sync_moment, 0.0, 0.1, -1.0)

    def simulate(self, forward: float, back: float, lead: float) -> tuple[float, float]:
        """Measure the round trip over a path, send "dial", return both dial times."""
        clock = task.Clock()
        clock.advance(1000.0)
        dials: dict[str, float] = {}
        # Round-trip measurement: ping out, pong back.
        sent = clock.seconds()
        clock.advance(forward)
        clock.advance(back)
        rtt = clock.seconds() - sent
        # The initiator sends "dial" and schedules its own dial; the message travels
        # ``forward`` seconds; the responder dials ``lead`` after it arrives.
        now = clock.seconds()
        clock.callLater(
            sync_moment(now, rtt, lead) - now, lambda: dials.setdefault("a", clock.seconds())
        )
        clock.callLater(
            forward, lambda: clock.callLater(lead, lambda: dials.setdefault("b", clock.seconds()))
        )
        while clock.getDelayedCalls():
            clock.advance(min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds())
        self.assertEqual(clock.getDelayedCalls(), [])
        return dials["a"], dials["b"]

    def test_symmetric_path_dials_together(self) -> None:
        """With equal delays both ways, both sides dial at the same moment."""
        a, b = self.simulate(0.040, 0.040, 0.1)
        self.assertEqual(round(a - b, 9), 0)

    def test_asymmetric_path_skew(self) -> None:
        """With unequal delays, the skew is the forward delay minus half the round trip."""
        a, b = self.simulate(0.060, 0.020, 0.1)
        self.assertAlmostEqual(b - a, 0.060 - 0.040, places=9)


class _Exchange(Protocol):
    """Sends ``greeting`` on connect and collects what arrives."""

    def __init__(self, greeting: bytes, expect: int) -> None:
        self.greeting = greeting
        self.expect = expect
        self.received = b""
        self.got: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expect and not self.got.called:
            self.got.callback(self.received)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.lost.called:
            self.lost.callback(None)


def _factory(greeting: bytes = b"", expect: int = 0) -> Factory:
    return Factory.forProtocol(lambda: _Exchange(greeting, expect))


def _free_port() -> tuple[socket.socket, int]:
    """A bound (not listening) reusable socket holding a loopback port."""
    sock = reusable_socket(LOOPBACK, 0)
    return sock, sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    """Whether a socket *without* SO_REUSEADDR/SO_REUSEPORT can bind the port."""
    probe = socket.socket()
    try:
        probe.bind((LOOPBACK, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return False
        raise
    finally:
        probe.close()
    return True


class _LoopbackBase(TestCase):
    def assertNear(self, value: float, expected: float, tolerance: float) -> None:
        self.assertTrue(
            abs(value - expected) <= tolerance, f"{value} is not {expected} ± {tolerance}"
        )

    def our_descriptors(self) -> list[Any]:
        """Readers and writers that belong to this module (none should survive a test)."""
        names = ("_PendingConnect", "_Acceptor")
        return [
            d for d in [*reactor.getReaders(), *reactor.getWriters()] if type(d).__name__ in names
        ]

    def our_delayed_calls(self) -> list[Any]:
        return [
            c
            for c in reactor.getDelayedCalls()
            if "holepunch.punch.tcp" in repr(getattr(c, "func", None))
            or "Deferred.addTimeout" in repr(c)  # the mapping's deadline
        ]

    def close_stream(self, stream: PunchedStream) -> defer.Deferred[None]:
        protocol = stream.protocol
        assert isinstance(protocol, _Exchange)
        stream.transport.loseConnection()
        return protocol.lost


class LoopbackMappingTests(_LoopbackBase):
    """tcp_mapping against our STUN server on 127.0.0.1 (no NAT: mapped == local)."""

    def setUp(self) -> None:
        self.stun = StunServerService(StunResponder(Address(LOOPBACK, 0), None), reactor)
        self.stun.startService()
        self.addCleanup(self.stun.stopService)
        self.server = (LOOPBACK, self.stun.responder.primary.port)

    @defer.inlineCallbacks
    def test_mapping_kernel_port(self) -> Any:
        """With port 0 the kernel picks a port; without NAT the mapped address is the local one."""
        mapping = yield defer.ensureDeferred(
            tcp_mapping(reactor, self.server, interface=LOOPBACK, timeout=2)
        )
        self.assertIsInstance(mapping, TcpMapping)
        self.assertEqual(mapping.local[0], LOOPBACK)
        self.assertNotEqual(mapping.local[1], 0)
        self.assertEqual(mapping.mapped, mapping.local)
        self.assertEqual(self.our_descriptors(), [])

    @defer.inlineCallbacks
    def test_dial_from_the_mapped_port(self) -> Any:
        """A given port is mapped, then dials elsewhere from that same port at once."""
        holder, port = _free_port()
        holder.close()
        mapping = yield defer.ensureDeferred(
            tcp_mapping(reactor, self.server, local_port=port, interface=LOOPBACK)
        )
        self.assertEqual(mapping.local, (LOOPBACK, port))
        peer = reusable_socket(LOOPBACK, 0)
        peer.listen(4)
        self.addCleanup(peer.close)
        stream = yield simultaneous_open(
            reactor,
            port,
            peer.getsockname(),
            start_at=reactor.seconds(),
            interface=LOOPBACK,
            protocol_factory=_factory(),
        )
        self.assertEqual(stream.local, (LOOPBACK, port))
        self.assertEqual(stream.attempts[-1].result, "connected")
        yield self.close_stream(stream)

    @defer.inlineCallbacks
    def test_mapping_again_within_time_wait(self) -> Any:
        """The same port toward the same server again: refused while the old 4-tuple is in TIME_WAIT."""
        first = yield defer.ensureDeferred(tcp_mapping(reactor, self.server, interface=LOOPBACK))
        with self.assertRaises(TcpPunchError) as caught:
            yield defer.ensureDeferred(
                tcp_mapping(reactor, self.server, local_port=first.local[1], interface=LOOPBACK)
            )
        self.assertIn("address in use", str(caught.exception))

    @defer.inlineCallbacks
    def test_mapping_refused(self) -> Any:
        """No server on the port: a TcpPunchError at stage mapping saying it was refused."""
        holder, port = _free_port()
        self.addCleanup(holder.close)
        with self.assertRaises(TcpPunchError) as caught:
            yield defer.ensureDeferred(tcp_mapping(reactor, (LOOPBACK, port), interface=LOOPBACK))
        self.assertEqual(caught.exception.stage, "mapping")
        self.assertIn("refused", str(caught.exception))
        self.assertEqual(self.our_descriptors(), [])

    @defer.inlineCallbacks
    def test_mapping_timeout(self) -> Any:
        """A server that accepts and never answers: TcpPunchError after the timeout, socket closed."""
        silent = reusable_socket(LOOPBACK, 0)
        silent.listen(1)
        self.addCleanup(silent.close)
        with self.assertRaises(TcpPunchError) as caught:
            yield defer.ensureDeferred(
                tcp_mapping(reactor, silent.getsockname(), interface=LOOPBACK, timeout=0.3)
            )
        self.assertEqual(caught.exception.stage, "mapping")
        self.assertIn("within 0.3s", str(caught.exception))
        yield task.deferLater(reactor, 0, lambda: None)  # let the aborted transport go
        self.assertEqual(self.our_descriptors(), [])

    @defer.inlineCallbacks
    def test_cancel_mapping(self) -> Any:
        """Cancelling a mapping whose SYN is unanswered closes its socket and timeout."""
        listener = reusable_socket(LOOPBACK, 0)
        listener.listen(0)
        port = listener.getsockname()[1]
        held = [listener]
        for _ in range(2):  # fill the accept queue: the next SYN is dropped
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((LOOPBACK, port))
            held.append(filler)
        for s in held:
            self.addCleanup(s.close)
        d = defer.ensureDeferred(tcp_mapping(reactor, (LOOPBACK, port), interface=LOOPBACK))
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([type(x).__name__ for x in self.our_descriptors()], ["_PendingConnect"])
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            yield d
        self.assertEqual(self.our_descriptors(), [])
        self.assertEqual(self.our_delayed_calls(), [])


class LoopbackPunchTests(_LoopbackBase):
    """simultaneous_open with real sockets on 127.0.0.1."""

    @defer.inlineCallbacks
    def test_two_sides_connect_and_carry_bytes(self) -> Any:
        """Two punches toward each other connect, carry bytes both ways, method tcp-hole-punch."""
        # On loopback the first SYN reaches the other port before that side has dialled,
        # so it is the listening socket that completes it (via "accept" on one side):
        # without listening both dials are refused every time (see the docs).
        a_holder, a_port = _free_port()
        b_holder, b_port = _free_port()
        a_holder.close()
        b_holder.close()
        start = reactor.seconds() + 0.05
        da = simultaneous_open(
            reactor,
            a_port,
            (LOOPBACK, b_port),
            start_at=start,
            interface=LOOPBACK,
            protocol_factory=_factory(b"from a", 6),
        )
        db = simultaneous_open(
            reactor,
            b_port,
            (LOOPBACK, a_port),
            start_at=start,
            interface=LOOPBACK,
            protocol_factory=_factory(b"from b", 6),
        )
        a, b = yield defer.gatherResults([da, db])
        for stream in (a, b):
            self.assertEqual(stream.method, METHOD)
            self.assertEqual(stream.method, "tcp-hole-punch")
        self.assertEqual(a.local, (LOOPBACK, a_port))
        self.assertEqual(a.remote, (LOOPBACK, b_port))
        self.assertEqual(b.local, (LOOPBACK, b_port))
        self.assertEqual(b.remote, (LOOPBACK, a_port))
        self.assertEqual(sorted([a.via, b.via]), ["accept", "connect"])
        got_a, got_b = yield defer.gatherResults([a.protocol.got, b.protocol.got])
        self.assertEqual((got_a, got_b), (b"from b", b"from a"))
        self.assertEqual(self.our_descriptors(), [])
        yield defer.gatherResults([self.close_stream(a), self.close_stream(b)])

    @defer.inlineCallbacks
    def test_retries_catch_a_late_listener(self) -> Any:
        """Dials refused while nothing listens are retried; the retry after a listener appears wins."""
        holder, port = _free_port()  # bound, not listening: SYNs to it draw a RST
        self.addCleanup(holder.close)
        start = reactor.seconds()
        d = simultaneous_open(
            reactor,
            0,
            (LOOPBACK, port),
            start_at=start,
            attempts=8,
            interval=0.1,
            interface=LOOPBACK,
            listen=False,
            protocol_factory=_factory(b"x", 0),
        )
        listener = reusable_socket(LOOPBACK, port)
        self.addCleanup(listener.close)
        yield task.deferLater(reactor, 0.25, listener.listen, 4)
        stream = yield d
        results = [o.result for o in stream.attempts]
        self.assertGreaterEqual(len(results), 3, results)
        self.assertEqual(set(results[:-1]), {"refused"})
        self.assertEqual(results[-1], "connected")
        self.assertEqual(stream.via, "connect")
        # Dial n started on the grid start + n * interval (refusals are instant here).
        for n, outcome in enumerate(stream.attempts):
            self.assertNear(outcome.started, start + n * 0.1, 0.05)
        conn, _ = listener.accept()
        conn.close()
        yield self.close_stream(stream)

    @defer.inlineCallbacks
    def test_first_dial_waits_for_the_moment(self) -> Any:
        """Nothing is dialled before start_at."""
        listener = reusable_socket(LOOPBACK, 0)
        listener.listen(4)
        self.addCleanup(listener.close)
        start = reactor.seconds() + 0.3
        stream = yield simultaneous_open(
            reactor,
            0,
            listener.getsockname(),
            start_at=start,
            interface=LOOPBACK,
            protocol_factory=_factory(),
        )
        self.assertGreaterEqual(stream.attempts[0].started, start)
        self.assertGreaterEqual(stream.connected, start)
        self.assertEqual(stream.started, start)
        yield self.close_stream(stream)

    @defer.inlineCallbacks
    def test_every_attempt_refused(self) -> Any:
        """All dials refused: TcpPunchError(connect) naming the count and each outcome."""
        holder, port = _free_port()
        self.addCleanup(holder.close)
        d = simultaneous_open(
            reactor,
            0,
            (LOOPBACK, port),
            start_at=reactor.seconds(),
            attempts=3,
            interval=0.05,
            interface=LOOPBACK,
            listen=False,
            protocol_factory=_factory(),
        )
        with self.assertRaises(TcpPunchError) as caught:
            yield d
        error = caught.exception
        self.assertEqual(error.stage, "connect")
        self.assertEqual([o.result for o in error.attempts], ["refused"] * 3)
        self.assertIn("3 attempts from port ", str(error))
        self.assertNotIn("from port 0 ", str(error))  # the kernel's port, kept for every dial
        self.assertIn("#3 refused", str(error))
        self.assertEqual(self.our_descriptors(), [])
        self.assertEqual(self.our_delayed_calls(), [])

    def saturated_listener(self) -> tuple[int, list[socket.socket]]:
        """A listener whose accept queue is full: further SYNs are dropped silently."""
        listener = reusable_socket(LOOPBACK, 0)
        listener.listen(0)
        port = listener.getsockname()[1]
        held = [listener]
        for _ in range(2):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((LOOPBACK, port))
            held.append(filler)
        for s in held:
            self.addCleanup(s.close)
        return port, held

    @defer.inlineCallbacks
    def test_attempt_timeout(self) -> Any:
        """A SYN that is never answered ends the dial after connect_timeout."""
        port, _ = self.saturated_listener()
        with self.assertRaises(TcpPunchError) as caught:
            yield simultaneous_open(
                reactor,
                0,
                (LOOPBACK, port),
                start_at=reactor.seconds(),
                attempts=2,
                interval=0.01,
                connect_timeout=0.2,
                interface=LOOPBACK,
                listen=False,
                protocol_factory=_factory(),
            )
        self.assertEqual([o.result for o in caught.exception.attempts], ["timeout"] * 2)
        for outcome in caught.exception.attempts:
            self.assertNear(outcome.ended - outcome.started, 0.2, 0.05)
        self.assertEqual(self.our_descriptors(), [])

    @defer.inlineCallbacks
    def test_cancel_before_the_moment(self) -> Any:
        """Cancelling while waiting for start_at closes the listener and the timer."""
        holder, port = _free_port()
        holder.close()
        d = simultaneous_open(
            reactor,
            port,
            (LOOPBACK, 9),
            start_at=reactor.seconds() + 30,
            interface=LOOPBACK,
            protocol_factory=_factory(),
        )
        self.assertFalse(_port_is_free(port))
        self.assertNotEqual(self.our_delayed_calls(), [])
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            yield d
        self.assertTrue(_port_is_free(port))
        self.assertEqual(self.our_descriptors(), [])
        self.assertEqual(self.our_delayed_calls(), [])

    @defer.inlineCallbacks
    def test_cancel_during_a_dial(self) -> Any:
        """Cancelling while a SYN is outstanding closes that socket, the listener and the timeout."""
        target, _ = self.saturated_listener()
        holder, port = _free_port()
        holder.close()
        d = simultaneous_open(
            reactor,
            port,
            (LOOPBACK, target),
            start_at=reactor.seconds(),
            connect_timeout=30,
            interface=LOOPBACK,
            protocol_factory=_factory(),
        )
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(
            sorted(type(x).__name__ for x in self.our_descriptors()),
            ["_Acceptor", "_PendingConnect"],
        )
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            yield d
        self.assertTrue(_port_is_free(port))
        self.assertEqual(self.our_descriptors(), [])
        self.assertEqual(self.our_delayed_calls(), [])

    @defer.inlineCallbacks
    def test_listener_ignores_other_hosts(self) -> Any:
        """A connection to the listening port from another address is closed; the punch goes on."""
        holder, port = _free_port()
        holder.close()
        peer = reusable_socket(LOOPBACK, 0)
        peer.listen(4)
        self.addCleanup(peer.close)
        d = simultaneous_open(
            reactor,
            port,
            peer.getsockname(),
            start_at=reactor.seconds() + 0.3,
            interface=LOOPBACK,
            protocol_factory=_factory(),
        )
        stranger = socket.socket()
        self.addCleanup(stranger.close)
        stranger.bind(("127.0.0.2", 0))
        stranger.setblocking(False)
        stranger.connect_ex((LOOPBACK, port))
        yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(stranger.recv(10), b"")  # closed by the punch's listener
        self.assertFalse(d.called)
        stream = yield d
        self.assertEqual(stream.via, "connect")
        yield self.close_stream(stream)

    @defer.inlineCallbacks
    def test_factory_building_nothing(self) -> Any:
        """A factory that returns None: TcpPunchError at stage adopt, and the socket is closed."""
        listener = reusable_socket(LOOPBACK, 0)
        listener.listen(4)
        self.addCleanup(listener.close)
        factory = Factory()
        factory.buildProtocol = lambda addr: None  # type: ignore[method-assign]
        with self.assertRaises(TcpPunchError) as caught:
            yield simultaneous_open(
                reactor,
                0,
                listener.getsockname(),
                start_at=reactor.seconds(),
                interface=LOOPBACK,
                protocol_factory=factory,
            )
        self.assertEqual(caught.exception.stage, "adopt")
        conn, _ = listener.accept()
        self.addCleanup(conn.close)
        conn.settimeout(2)
        self.assertEqual(conn.recv(10), b"")

    def test_bad_arguments(self) -> None:
        """Zero attempts or a remote that is not an IP address are refused at once."""
        self.assertRaises(
            ValueError,
            simultaneous_open,
            reactor,
            0,
            (LOOPBACK, 9),
            start_at=0.0,
            attempts=0,
            protocol_factory=_factory(),
        )
        self.assertRaises(
            ValueError,
            simultaneous_open,
            reactor,
            0,
            ("example.org", 9),
            start_at=0.0,
            protocol_factory=_factory(),
        )


CONES = ("open", "full-cone", "restricted-cone", "port-restricted", "udp-blocked")
SYMMETRIC = ("symmetric-sequential", "symmetric-random")


class LabTcpPunchTests(TestCase):
    """TCP hole punching between hosts behind real kernel NATs (needs root)."""

    timeout = 120

    def test_every_pair_of_presets(self) -> None:
        """Every ordered pair of open, cone and udp-blocked hosts connects every round; symmetric ones are recorded."""
        # Two hosts per preset (one initiates, one responds), one driver per host, our STUN
        # server in the public namespace; three DCUtR-style rounds per cone pair, one per
        # pair involving a symmetric NAT. The table goes to the test log and to
        # tcp_punch_lab.md in trial's working directory.
        lab = lab_fixture(self)  # type: ignore[arg-type]  # natlab's protocol vs trial's
        began = time.monotonic()
        hosts = build_hosts(lab, CONES + SYMMETRIC)
        lab.start_holepunch_daemon(stun_port=STUN_PORT, stun_alt_port=STUN_PORT + 1)
        built = time.monotonic()
        presets = CONES + SYMMETRIC
        pairs = [(a, b) for a in presets for b in presets]
        once = {pair: 1 for pair in pairs if set(pair) & set(SYMMETRIC)}
        results = measure(hosts, pairs, rounds=3, workers=len(pairs), rounds_by_pair=once)
        table = summary(results)
        took = time.monotonic() - built
        with open("tcp_punch_lab.md", "w") as f:
            f.write(f"{table}\n\nlab built in {built - began:.1f}s, measured in {took:.1f}s\n")
        _log.info("TCP hole punching in the lab:\n{table}", table=table)
        problems = [
            f"{pair.initiator} -> {pair.responder}: {r.describe()}"
            for pair in results
            if pair.initiator in CONES and pair.responder in CONES
            for r in pair.rounds
            if not r.ok
        ]
        self.assertEqual(problems, [], "\n" + table)
        for pair in results:
            for r in pair.rounds:
                # Every round ended in a result on both sides, success or not.
                self.assertEqual(
                    (r.initiator["event"], r.responder["event"]), ("result", "result"), r
                )
                if r.ok:
                    self.assertEqual(r.initiator["method"], METHOD)
                    self.assertEqual(r.responder["method"], METHOD)

    def test_once_with_an_absolute_start(self) -> None:
        """The one-shot driver: mapping out, peer mapping and absolute start in, a line each way."""
        lab = lab_fixture(self)  # type: ignore[arg-type]  # natlab's protocol vs trial's
        a = lab.add_host("a", "port-restricted")
        b = lab.add_host("b", "udp-blocked")
        lab.start_holepunch_daemon(stun_port=STUN_PORT, stun_alt_port=STUN_PORT + 1)
        server = f"{PUBLIC_A}:{STUN_PORT}"
        da = PunchDriver(a, server, ["--once"])
        db = PunchDriver(b, server, ["--once"])
        self.addCleanup(da.close)
        self.addCleanup(db.close)
        ma, mb = da.event("", 10), db.event("", 10)
        self.assertEqual((ma["event"], mb["event"]), ("mapping", "mapping"))
        self.assertEqual(ma["mapped"], [a.public_address, ma["local"][1]])  # port preserved
        self.assertEqual(mb["mapped"], [b.public_address, mb["local"][1]])
        start = time.time() + 0.2
        da.send("", "punch", remote=mb["mapped"], start=start, line="from a")
        db.send("", "punch", remote=ma["mapped"], start=start, line="from b")
        ra, rb = da.event("", 10), db.event("", 10)
        self.assertTrue(ra["ok"] and rb["ok"], (ra, rb))
        self.assertEqual((ra["peer_line"], rb["peer_line"]), ("from b", "from a"))
        self.assertEqual((ra["method"], rb["method"]), (METHOD, METHOD))
        self.assertEqual(ra["remote"], mb["mapped"])
        self.assertGreaterEqual(min(ra["connect_time"], rb["connect_time"]), 0.0)
        self.assertEqual(da.proc.wait(10), 0, da.stderr)
        self.assertEqual(db.proc.wait(10), 0, db.stderr)


class Ipv6TrackTests(TestCase):
    """The negotiation's TCP track over IPv6 (issue 16): candidates per family, the
    family both sides pick, and a punch between two tracks on ``::1``."""

    def track(self, **kw: Any) -> TcpTrack:
        return TcpTrack(reactor, kw.pop("stun_server", None), **kw)

    def test_both_pick_v6_when_both_offer_it(self) -> None:
        a, b = self.track(), self.track()
        a.mappings = {4: TcpMapping(("10.0.0.1", 1), ("203.0.113.1", 1)),
                      6: TcpMapping(("2001:db8:1::1", 2), ("2001:db8:1::1", 2))}  # fmt: skip
        b.mappings = {4: TcpMapping(("10.0.0.2", 3), ("203.0.113.2", 3)),
                      6: TcpMapping(("2001:db8:2::1", 4), ("2001:db8:2::1", 4))}  # fmt: skip
        a.set_remotes([c.address for c in b.candidates()])
        b.set_remotes([c.address for c in a.candidates()])
        self.assertEqual((a.remote, b.remote), (("2001:db8:2::1", 4), ("2001:db8:1::1", 2)))
        self.assertEqual((a.mapping, b.mapping), (a.mappings[6], b.mappings[6]))

    def test_v4_when_one_side_has_no_v6(self) -> None:
        a, b = self.track(), self.track()
        a.mappings = {4: TcpMapping(("10.0.0.1", 1), ("203.0.113.1", 1)),
                      6: TcpMapping(("2001:db8:1::1", 2), ("2001:db8:1::1", 2))}  # fmt: skip
        b.mappings = {4: TcpMapping(("10.0.0.2", 3), ("203.0.113.2", 3))}
        a.set_remotes([c.address for c in b.candidates()])
        b.set_remotes([c.address for c in a.candidates()])
        self.assertEqual((a.remote, b.remote), (("203.0.113.2", 3), ("203.0.113.1", 1)))
        self.assertEqual(a.mapping, a.mappings[4])

    def test_nothing_starts_after_cancel(self) -> None:
        """Another path won (cancel): a sync that comes after it dials nothing, and the
        offerer's begin sends nothing."""
        track = self.track()
        track.mappings = {4: TcpMapping(("127.0.0.1", 1), ("127.0.0.1", 1))}
        track.set_remotes([("127.0.0.1", 2)])
        track.cancel()
        sent: list[Any] = []
        track.begin(sent.append)
        track.sync(sent.append, "go")
        self.assertEqual(sent, [])
        self.assertFalse(track.started)
        self.assertEqual(
            [c for c in reactor.getDelayedCalls() if "holepunch.punch" in repr(c.func)], []
        )

    @defer.inlineCallbacks
    def test_punch_between_two_tracks_on_ipv6_loopback(self) -> Any:
        """No STUN server: each track offers its own IPv6 address (a ``host`` tcp so
        candidate), the sync runs through plain calls, and the punch connects over IPv6
        and carries frames both ways."""
        needs_ipv6()
        a, b = self.track(ipv6_host="::1"), self.track(ipv6_host="::1")
        yield defer.ensureDeferred(a.learn_mapping())
        yield defer.ensureDeferred(b.learn_mapping())
        [ca], [cb] = a.candidates(), b.candidates()
        self.assertEqual((ca.host, ca.type, ca.tcptype), ("::1", "host", "so"))
        a.set_remotes([cb.address])
        b.set_remotes([ca.address])

        def relay(to: TcpTrack, sender: TcpTrack) -> Any:
            return lambda payload: reactor.callLater(
                0, to.sync, relay(sender, to), payload["tcpSync"]
            )

        a.begin(relay(b, a))
        ra, rb = yield defer.gatherResults([a.result, b.result])
        self.addCleanup(ra.close)
        self.addCleanup(rb.close)
        self.assertEqual((ra.remote, rb.remote), (cb.address, ca.address))
        self.assertEqual(ra.method, "tcp-hole-punch")
        got: defer.Deferred[bytes] = defer.Deferred()
        rb.on_datagram(lambda data: got.callback(data) if not got.called else None)
        ra.send(b"over a TCP punch on IPv6")
        self.assertEqual((yield got), b"over a TCP punch on IPv6")

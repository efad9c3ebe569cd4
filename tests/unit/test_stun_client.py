"""Tests for holepunch.stun.client: transactions, retransmission, several servers."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from holepunch.addresses import ip_version
from holepunch.stun.client import (
    BindingResult,
    NoStunServerAnswered,
    RetransmissionPolicy,
    StunError,
    StunErrorResponse,
    StunTimeout,
    TransactionTable,
    binding_over_tcp,
    first_answer,
    listen_stun,
    parse_server,
    resolve_addresses,
    resolve_server,
)
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.server import StunResponder, StunServerService
from holepunch.stun.wire import Address, Attr
from tests.resolver_helpers import NameReactor
from tests.signaling_helpers import needs_ipv6

SERVER = Address("192.0.2.1", 3478)


class Wire:
    """Records what a TransactionTable sends, with the clock time of each send."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, bytes, Address]] = []

    def __call__(self, data: bytes, address: Address) -> None:
        self.sent.append((self.clock.seconds(), data, address))


def table() -> tuple[Clock, Wire, TransactionTable]:
    clock = Clock()
    wire = Wire(clock)
    return clock, wire, TransactionTable(wire, clock)


class RetransmissionTests(SynchronousTestCase):
    """RFC 8489 6.2.1 timers, driven by a fake clock."""

    def test_default_schedule(self) -> None:
        """Defaults send at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s and give up at 39.5 s."""
        clock, wire, txns = table()
        d = txns.request(StunMessage.request(), SERVER)
        clock.pump([0.25] * 200)
        self.assertEqual([t for t, _, _ in wire.sent], [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        failure = self.failureResultOf(d, StunTimeout)
        self.assertIn("7 attempts", failure.getErrorMessage())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(txns), 0)

    def test_give_up_time(self) -> None:
        """The transaction is still pending just before 39.5 s and failed just after."""
        clock, wire, txns = table()
        d = txns.request(StunMessage.request(), SERVER)
        clock.advance(0.5)
        clock.advance(1.0)
        clock.advance(2.0)
        clock.advance(4.0)
        clock.advance(8.0)
        clock.advance(16.0)
        clock.advance(7.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.failureResultOf(d, StunTimeout)

    def test_custom_policy(self) -> None:
        """RTO, Rc and Rm are configurable."""
        policy = RetransmissionPolicy(rto=0.1, rc=3, rm=2)
        self.assertEqual(policy.waits(), [0.1, 0.2, 0.2])
        self.assertAlmostEqual(policy.total, 0.5)
        self.assertRaises(ValueError, RetransmissionPolicy, 0, 1, 1)

    def test_response_stops_retransmission(self) -> None:
        """A matching response fires the Deferred and cancels the timer."""
        clock, wire, txns = table()
        req = StunMessage.request()
        d = txns.request(req, SERVER)
        clock.advance(0.5)
        response = req.success_response().add_address(Attr.XOR_MAPPED_ADDRESS, ("203.0.113.5", 9))
        self.assertTrue(txns.handle(decode(encode(response)), SERVER))
        result = self.successResultOf(d)
        self.assertEqual(result.message.get_address(Attr.XOR_MAPPED_ADDRESS), ("203.0.113.5", 9))
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(100)
        self.assertEqual(len(wire.sent), 2)

    def test_unrelated_response_not_consumed(self) -> None:
        """A response for an unknown transaction is not ours and does not touch running ones."""
        clock, wire, txns = table()
        d = txns.request(StunMessage.request(), SERVER)
        other = StunMessage.request().success_response()
        self.assertFalse(txns.handle(other, SERVER))
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)

    def test_error_response(self) -> None:
        """An error response fails the transaction with its code and reason."""
        clock, wire, txns = table()
        req = StunMessage.request()
        d = txns.request(req, SERVER)
        txns.handle(decode(encode(req.error_response(401, "Unauthorized"))), SERVER)
        e = self.failureResultOf(d, StunErrorResponse).value
        self.assertEqual((e.code, e.reason), (401, "Unauthorized"))

    def test_cancel_releases_timers(self) -> None:
        """Cancelling the Deferred stops retransmission and forgets the transaction."""
        clock, wire, txns = table()
        d = txns.request(StunMessage.request(), SERVER)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(txns), 0)
        clock.advance(100)
        self.assertEqual(len(wire.sent), 1)

    def test_integrity_checked_on_response(self) -> None:
        """With a key, a response failing MESSAGE-INTEGRITY is ignored; a good one is taken."""
        clock, wire, txns = table()
        req = StunMessage.request()
        d = txns.request(req, SERVER, integrity_key=b"secret")
        sent = decode(wire.sent[0][1])
        self.assertTrue(sent.check_integrity(b"secret"))
        forged = decode(encode(req.success_response(), integrity_key=b"wrong"))
        self.assertTrue(txns.handle(forged, SERVER))
        self.assertNoResult(d)
        good = decode(encode(req.success_response(), integrity_key=b"secret"))
        txns.handle(good, SERVER)
        self.successResultOf(d)

    def test_send_error_is_retried_not_raised(self) -> None:
        """An OSError from the socket does not escape; the schedule goes on to its timeout."""
        clock = Clock()

        def broken(data: bytes, address: Address) -> None:
            raise OSError("network unreachable")

        txns = TransactionTable(broken, clock)
        d = txns.request(StunMessage.request(), SERVER, policy=RetransmissionPolicy(0.1, 2, 1))
        clock.pump([0.1] * 5)
        self.failureResultOf(d, StunTimeout)


class FirstAnswerTests(SynchronousTestCase):
    """Asking several servers at once."""

    def test_first_success_wins_and_cancels_rest(self) -> None:
        """The first answer wins; the other attempts are cancelled."""
        cancelled: list[object] = []
        slow: defer.Deferred[BindingResult] = defer.Deferred(cancelled.append)
        fast: defer.Deferred[BindingResult] = defer.Deferred()
        d = first_answer([("slow", lambda: slow), ("fast", lambda: fast)])
        answer = BindingResult(mapped=Address("203.0.113.1", 1), source=SERVER)
        fast.callback(answer)
        self.assertIs(self.successResultOf(d), answer)
        self.assertEqual(cancelled, [slow])

    def test_all_fail_names_each(self) -> None:
        """When every server fails, the error names each server and its reason."""
        d = first_answer(
            [
                ("a:1", lambda: defer.fail(StunTimeout("no response"))),
                ("b:2", lambda: defer.fail(StunTimeout("unreachable"))),
            ]
        )
        e = self.failureResultOf(d, NoStunServerAnswered).value
        self.assertEqual(e.failures, {"a:1": "no response", "b:2": "unreachable"})
        self.assertIn("a:1: no response", str(e))

    def test_no_servers(self) -> None:
        """No servers at all is a clear error, not a hang."""
        self.failureResultOf(first_answer([]), NoStunServerAnswered)


class ParseServerTests(SynchronousTestCase):
    """Server address strings."""

    def test_forms(self) -> None:
        """HOST, HOST:PORT, [V6]:PORT and stun: URLs parse; bad ports are refused."""
        self.assertEqual(parse_server("example.org"), ("example.org", 3478))
        self.assertEqual(parse_server("1.2.3.4:19302"), ("1.2.3.4", 19302))
        self.assertEqual(parse_server("stun:example.org:3479"), ("example.org", 3479))
        self.assertEqual(parse_server("[2001:db8::1]:5000"), ("2001:db8::1", 5000))
        self.assertEqual(parse_server("2001:db8::1"), ("2001:db8::1", 3478))
        for bad in ["", "host:0", "host:99999", "host:abc", "[::1"]:
            self.assertRaises(ValueError, parse_server, bad)


class RealSocketTests(TestCase):
    """The client against real loopback sockets."""

    @defer.inlineCallbacks
    def test_several_servers_one_dead(self) -> Any:
        """With a dead server first, the live one answers and the dead one is abandoned."""
        svc = StunServerService(StunResponder(Address("127.0.0.1", 0)), reactor)
        svc.startService()
        self.addCleanup(svc.stopService)
        dead = listen_stun(reactor, "127.0.0.1")  # a socket that never answers
        self.addCleanup(dead.close)
        client = listen_stun(reactor, "127.0.0.1")
        self.addCleanup(client.close)
        result = yield first_answer(
            [
                ("dead", lambda: client.binding(dead.local)),
                ("live", lambda: client.binding(svc.responder.primary)),
            ]
        )
        self.assertEqual(result.mapped, client.local)
        self.assertEqual(len(client.transactions), 0)

    @defer.inlineCallbacks
    def test_tcp_refused_is_an_error(self) -> Any:
        """A TCP Binding to a closed port fails promptly with a connection error."""
        probe = listen_stun(reactor, "127.0.0.1")
        port = probe.local.port
        yield probe.close()
        from twisted.internet.error import ConnectionRefusedError

        yield self.assertFailure(
            binding_over_tcp(reactor, Address("127.0.0.1", port), timeout=5),
            ConnectionRefusedError,
        )

    @defer.inlineCallbacks
    def test_close_cancels_transactions(self) -> Any:
        """Closing the client socket cancels what is running and frees its timers."""
        client = listen_stun(reactor, "127.0.0.1")
        d = client.binding(Address("127.0.0.1", 9))
        yield client.close()
        yield self.assertFailure(d, defer.CancelledError)
        self.assertEqual(len(client.transactions), 0)


class FamilyTests(SynchronousTestCase):
    """Address families: resolution by family, and sockets of the server's family."""

    TABLE = {"both.test": ["2001:db8::1", "192.0.2.1"], "v6only.test": ["2001:db8::2"]}

    def resolve(self, *args: Any, **kw: Any) -> Any:
        return self.successResultOf(defer.ensureDeferred(resolve_server(*args, **kw)))

    def test_ip_version(self) -> None:
        """ip_version: 4 or 6 for addresses (zones allowed, "" is IPv4), ValueError otherwise."""
        self.assertEqual(
            [ip_version(h) for h in ("", "192.0.2.1", "::1", "fe80::1%eth0")], [4, 4, 6, 6]
        )
        self.assertRaises(ValueError, ip_version, "example.org")

    def test_resolve_server_family(self) -> None:
        """Names: IPv4 first by default, IPv6 only when asked or when there is no A record."""
        r = NameReactor(self.TABLE)
        self.assertEqual(self.resolve(r, "both.test", 1), Address("192.0.2.1", 1))
        self.assertEqual(self.resolve(r, "both.test", 1, 6), Address("2001:db8::1", 1))
        self.assertEqual(self.resolve(r, "v6only.test", 1), Address("2001:db8::2", 1))
        self.assertEqual(self.resolve(r, "::1", 1, 6), Address("::1", 1))
        for args in [("v6only.test", 1, 4), ("nothing.test", 1, None), ("::1", 1, 4)]:
            self.failureResultOf(defer.ensureDeferred(resolve_server(r, *args)), DNSLookupError)

    def test_resolve_addresses(self) -> None:
        """resolve_addresses: every address of the families asked, A before AAAA."""
        r = NameReactor(self.TABLE)
        found = self.successResultOf(defer.ensureDeferred(resolve_addresses(r, "both.test", 7)))
        self.assertEqual(found, [Address("192.0.2.1", 7), Address("2001:db8::1", 7)])
        only6 = defer.ensureDeferred(resolve_addresses(r, "both.test", 7, (6,)))
        self.assertEqual(self.successResultOf(only6), [Address("2001:db8::1", 7)])
        literal = defer.ensureDeferred(resolve_addresses(r, "192.0.2.9", 7, (6,)))
        self.assertEqual(self.successResultOf(literal), [])


class FamilySocketTests(TestCase):
    """Client sockets of either family on loopback."""

    @defer.inlineCallbacks
    def test_v6_socket_and_mismatch(self) -> Any:
        """family=6 gives an IPv6 socket that gets its [::1] mapping; an IPv4 server from it fails at once."""
        needs_ipv6()
        svc = StunServerService(StunResponder(Address("::1", 0)), reactor)
        svc.startService()
        self.addCleanup(svc.stopService)
        client = listen_stun(reactor, family=6)
        self.addCleanup(client.close)
        result = yield client.binding(svc.responder.primary)
        self.assertEqual(result.mapped, Address("::1", client.local.port))
        error = yield self.assertFailure(client.binding(Address("127.0.0.1", 9)), StunError)
        self.assertIn("IPv6 socket", str(error))
        self.assertEqual(len(client.transactions), 0)

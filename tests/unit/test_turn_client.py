# -*- test-case-name: tests.unit.test_turn_client -*-
"""Tests for holepunch.turn: URIs, REST API credentials, and TurnAllocation against a
fake server on a fake clock (authentication, timers, permissions, channels, data,
cancellation, failover)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from holepunch.stun.client import RetransmissionPolicy
from holepunch.stun.credentials import long_term_key
from holepunch.stun.framing import StreamFramer, decode_channel_data, encode_channel_data
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.wire import Address, Attr, MessageClass, Method
from holepunch.turn import (
    AllocationState,
    NoTurnServerAvailable,
    TurnAllocation,
    TurnAuthError,
    TurnError,
    TurnRedirect,
    TurnServer,
    TurnTimeoutError,
    TurnTimers,
    allocate_first,
    parse_turn_uri,
    rest_api_credentials,
)
from holepunch.turn.families import (
    ADDRESS_ERROR_CODE,
    AddressFamily,
    encode_address_error,
    family_of,
    get_requested_family,
)

SERVER = Address("192.0.2.1", 3478)
ALTERNATE = Address("192.0.2.2", 3478)
RELAYED = Address("198.51.100.1", 50000)
RELAYED6 = Address("2001:db8::100", 50002)
MAPPED = Address("203.0.113.5", 40000)
PEER = Address("203.0.113.9", 7000)
OTHER_PEER = Address("203.0.113.10", 7001)
LATENCY = 0.01


class FakeTurnServer:
    """A small TURN server model: long-term credentials, nonces, the four requests,
    indications and ChannelData. Answers after LATENCY on the test's clock.

    Address families (RFC 8656 7.2): it relays the families in ``relay_families``
    (IPv4 only unless told), honours REQUESTED-ADDRESS-FAMILY, a dual allocation only if
    ``dual_codepoint`` names the ADDITIONAL-ADDRESS-FAMILY codepoint it knows (it then
    answers a refused family as coturn does: a ``0.0.0.0:0`` placeholder and an
    ADDRESS-ERROR-CODE at ``error_codepoint``), answers 443 to a permission or channel
    for a peer of a family it did not allocate, and a Refresh with LIFETIME 0 and
    REQUESTED-ADDRESS-FAMILY gives that family back (RFC 8656 7.3)."""

    def __init__(self, clock: Clock, address: Address = SERVER, stream: bool = False) -> None:
        self.clock = clock
        self.address = address
        self.stream = stream
        self.realm = "example.org"
        self.username = "alice"
        self.password = "correct horse"
        self.lifetime = 600
        self.nonce_counter = 0
        self.nonce = self.new_nonce()
        self.silent = False
        self.stale_next = 0
        self.redirect_to: Address | None = None
        self.refuse: dict[int, int] = {}
        self.bad_integrity_next = 0
        self.received: list[tuple[float, StunMessage]] = []
        self.indications: list[tuple[Address, bytes]] = []
        self.channel_data: list[tuple[int, bytes, bytes]] = []
        self.channels: dict[int, Address] = {}
        self.permissions: set[str] = set()
        self.allocation: TurnAllocation | None = None
        self.framer = StreamFramer()
        self.relay_families = {AddressFamily.IPV4}
        self.dual_codepoint: int | None = None
        self.error_codepoint = ADDRESS_ERROR_CODE
        self.allocated_families: set[AddressFamily] = set()

    def new_nonce(self) -> str:
        self.nonce_counter += 1
        return f"nonce-{self.nonce_counter}"

    @property
    def key(self) -> bytes:
        return long_term_key(self.username, self.realm, self.password)

    def requests(self, method: int) -> list[tuple[float, StunMessage]]:
        return [
            (t, m)
            for t, m in self.received
            if m.method == method and m.message_class == MessageClass.REQUEST
        ]

    def __call__(self, data: bytes, address: tuple[str, int]) -> None:
        """The allocation's send function."""
        assert (address[0], address[1]) == (self.address.host, self.address.port)
        frames = self.framer.feed(data) if self.stream else [data]
        for frame in frames:
            self.receive(frame)

    def receive(self, data: bytes) -> None:
        if 0x40 <= data[0] <= 0x7F:
            channel, payload = decode_channel_data(data)
            self.channel_data.append((channel, payload, data))
            return
        message = decode(data)
        self.received.append((self.clock.seconds(), message))
        if self.silent:
            return
        if message.message_class == MessageClass.INDICATION:
            if message.method == Method.SEND:
                peer = message.get_address(Attr.XOR_PEER_ADDRESS)
                assert peer is not None
                self.indications.append((peer, message.get(Attr.DATA) or b""))
            return
        answer, key = self.answer(message)
        raw = encode(answer, integrity_key=key, fingerprint=True)
        self.clock.callLater(LATENCY, self.deliver, raw)

    def deliver(self, raw: bytes) -> None:
        if self.allocation is not None:
            self.allocation.datagram_received(raw, self.address)

    def answer(self, request: StunMessage) -> tuple[StunMessage, bytes | None]:
        if not request.has(Attr.MESSAGE_INTEGRITY):
            response = request.error_response(401)
            response.add_string(Attr.REALM, self.realm).add_string(Attr.NONCE, self.nonce)
            return response, None
        if request.get_string(Attr.USERNAME) != self.username or not request.check_integrity(
            self.key
        ):
            response = request.error_response(401)
            response.add_string(Attr.REALM, self.realm).add_string(Attr.NONCE, self.nonce)
            return response, None
        if self.stale_next or request.get_string(Attr.NONCE) != self.nonce:
            self.stale_next = max(0, self.stale_next - 1)
            self.nonce = self.new_nonce()
            response = request.error_response(438)
            response.add_string(Attr.REALM, self.realm).add_string(Attr.NONCE, self.nonce)
            return response, None
        if request.method == Method.ALLOCATE and self.redirect_to is not None:
            response = request.error_response(300)
            response.add_address(Attr.ALTERNATE_SERVER, self.redirect_to)
            return response, self.key
        if request.method in self.refuse:
            return request.error_response(self.refuse[request.method]), self.key
        response = request.success_response()
        if request.method == Method.ALLOCATE:
            requested = get_requested_family(request)
            dual = self.dual_codepoint is not None and request.has(self.dual_codepoint)
            if requested is not None and dual:
                return request.error_response(400), self.key
            wanted = [requested or AddressFamily.IPV4] + ([AddressFamily.IPV6] if dual else [])
            granted = [f for f in wanted if f in self.relay_families]
            if not granted:
                return request.error_response(440), self.key
            self.allocated_families = set(granted)
            for family in wanted:
                if family in granted:
                    relayed = RELAYED if family is AddressFamily.IPV4 else RELAYED6
                    response.add_address(Attr.XOR_RELAYED_ADDRESS, relayed)
                else:
                    response.add_address(Attr.XOR_RELAYED_ADDRESS, ("0.0.0.0", 0))
                    error = encode_address_error(family, 440, "Address Family not Supported")
                    response.add(self.error_codepoint, error)
            response.add_address(Attr.XOR_MAPPED_ADDRESS, MAPPED)
            response.add_uint32(Attr.LIFETIME, self.lifetime)
        elif request.method == Method.REFRESH:
            requested = request.get_uint32(Attr.LIFETIME)
            family = get_requested_family(request)
            if family is not None and family not in self.allocated_families:
                return request.error_response(443), self.key
            if family is not None and requested == 0:  # one family of a dual allocation
                self.allocated_families.discard(family)
                self.permissions = {ip for ip in self.permissions if family_of(ip) is not family}
            response.add_uint32(Attr.LIFETIME, self.lifetime if requested != 0 else 0)
        elif request.method == Method.CREATE_PERMISSION:
            peer = request.get_address(Attr.XOR_PEER_ADDRESS)
            assert peer is not None
            if family_of(peer.host) not in self.allocated_families:
                return request.error_response(443), self.key
            self.permissions.add(peer.host)
        elif request.method == Method.CHANNEL_BIND:
            peer = request.get_address(Attr.XOR_PEER_ADDRESS)
            number = request.get_channel_number()
            assert peer is not None and number is not None
            if family_of(peer.host) not in self.allocated_families:
                return request.error_response(443), self.key
            self.channels[number] = peer
            self.permissions.add(peer.host)
        if self.bad_integrity_next:
            self.bad_integrity_next -= 1
            return response, b"not the key"
        return response, self.key

    def data_indication(self, peer: Address, payload: bytes) -> bytes:
        message = StunMessage.indication(Method.DATA)
        message.add_address(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, payload)
        return encode(message)


def make(
    clock: Clock | None = None,
    *,
    stream: bool = False,
    send: Callable[[bytes, tuple[str, int]], None] | None = None,
    **kwargs: Any,
) -> tuple[Clock, FakeTurnServer, TurnAllocation]:
    """An allocation talking to a fake server at SERVER (or through ``send``)."""
    clock = clock or Clock()
    server = FakeTurnServer(clock, stream=stream)
    kwargs.setdefault("username", server.username)
    kwargs.setdefault("password", server.password)
    allocation = TurnAllocation(SERVER, send or server, clock, stream=stream, **kwargs)
    server.allocation = allocation
    return clock, server, allocation


def pump(clock: Clock, steps: int = 10) -> None:
    for _ in range(steps):
        clock.advance(LATENCY)


class AllocatedMixin:
    def allocated(self, **kwargs: Any) -> tuple[Clock, FakeTurnServer, TurnAllocation]:
        clock, server, allocation = make(**kwargs)
        d = allocation.allocate()
        pump(clock)
        self.successResultOf(d)  # type: ignore[attr-defined]
        return clock, server, allocation

    def close(self, clock: Clock, allocation: TurnAllocation) -> None:
        d = allocation.close()
        pump(clock, 300)
        self.successResultOf(d)  # type: ignore[attr-defined]
        self.assertEqual(clock.getDelayedCalls(), [])  # type: ignore[attr-defined]


class UriTests(SynchronousTestCase):
    """TURN URIs (RFC 7065), the CLI form with credentials, and WebRTC's urls."""

    def test_udp_default(self) -> None:
        """turn:HOST means UDP on 3478."""
        self.assertEqual(parse_turn_uri("turn:turn.example.org"), TurnServer("turn.example.org"))

    def test_transport_tcp(self) -> None:
        """?transport=tcp selects TCP; the port is kept."""
        server = parse_turn_uri("turn:192.0.2.1:3479?transport=tcp")
        self.assertEqual((server.host, server.port, server.transport), ("192.0.2.1", 3479, "tcp"))

    def test_turns_default_port(self) -> None:
        """turns:HOST is TLS over TCP on 5349, with or without ?transport=tcp."""
        for uri in ("turns:example.org", "turns:example.org?transport=tcp"):
            server = parse_turn_uri(uri)
            self.assertEqual((server.port, server.transport), (5349, "tls"))
            self.assertEqual(server.name_to_check, "example.org")

    def test_turns_udp_refused(self) -> None:
        """turns: with transport=udp (DTLS) is refused with a clear reason."""
        with self.assertRaisesRegex(ValueError, "DTLS"):
            parse_turn_uri("turns:example.org?transport=udp")

    def test_ipv6(self) -> None:
        """IPv6 hosts go in brackets and round-trip through .uri."""
        server = parse_turn_uri("turn:[2001:db8::1]:3478?transport=udp")
        self.assertEqual(server.host, "2001:db8::1")
        self.assertEqual(server.uri, "turn:[2001:db8::1]:3478?transport=udp")

    def test_credentials_in_uri(self) -> None:
        """The CLI form turn:USER:PASS@HOST:PORT carries percent-decoded credentials."""
        server = parse_turn_uri("turn:bob:p%40ss%3Aw0rd@127.0.0.1:3478?transport=tcp")
        self.assertEqual(
            (server.username, server.password, server.host, server.port, server.transport),
            ("bob", "p@ss:w0rd", "127.0.0.1", 3478, "tcp"),
        )
        self.assertNotIn("p@ss", repr(server))

    def test_credentials_arguments(self) -> None:
        """Credentials given beside the URI are used when the URI has none."""
        server = parse_turn_uri("turn:127.0.0.1", "u", "p")
        self.assertEqual((server.username, server.password), ("u", "p"))

    def test_errors(self) -> None:
        """Wrong schemes, ports, transports and parameters are refused."""
        for bad in (
            "stun:example.org",
            "example.org:3478",
            "turn:example.org:0",
            "turn:example.org:port",
            "turn:example.org?transport=sctp",
            "turn:example.org?foo=1",
            "turn:2001:db8::1",
            "turn:",
            "turn:user@example.org",
        ):
            with self.assertRaises(ValueError, msg=bad):
                parse_turn_uri(bad)

    def test_ice_server_entry(self) -> None:
        """A WebRTC iceServers entry gives one server per turn URL, stun URLs skipped."""
        servers = TurnServer.from_ice_server(
            {
                "urls": ["stun:example.org", "turn:example.org", "turns:example.org:443"],
                "username": "u",
                "credential": "p",
            }
        )
        self.assertEqual(
            [s.uri for s in servers],
            [
                "turn:example.org:3478?transport=udp",
                "turns:example.org:443?transport=tcp",
            ],
        )
        self.assertEqual({(s.username, s.password) for s in servers}, {("u", "p")})
        single = TurnServer.from_ice_server({"urls": "turn:example.org?transport=tcp"})
        self.assertEqual(single[0].transport, "tcp")


class RestApiTests(SynchronousTestCase):
    """Ephemeral credentials of the TURN REST API (coturn use-auth-secret)."""

    def test_format(self) -> None:
        """The username is EXPIRY:USER; the password the base64 HMAC-SHA1 of it."""
        username, password = rest_api_credentials("s3cret", "alice", 3600, 1_700_000_000.7)
        self.assertEqual(username, "1700003600:alice")
        expected = hmac.new(b"s3cret", b"1700003600:alice", hashlib.sha1).digest()
        self.assertEqual(password, base64.b64encode(expected).decode())

    def test_without_user(self) -> None:
        """Without a user name the username is the expiry alone."""
        username, _ = rest_api_credentials(b"k", "", 10, 100)
        self.assertEqual(username, "110")

    def test_server_helper(self) -> None:
        """TurnServer.with_rest_api_credentials mints and sets both."""
        server = TurnServer("127.0.0.1").with_rest_api_credentials("k", "bob", 60, 1000)
        self.assertEqual(
            (server.username, server.password), rest_api_credentials("k", "bob", 60, 1000)
        )

    def test_ttl_positive(self) -> None:
        """A non-positive lifetime is refused."""
        self.assertRaises(ValueError, rest_api_credentials, "k", "u", 0, 1000)


class AuthenticationTests(AllocatedMixin, SynchronousTestCase):
    """The long-term credential mechanism (RFC 8489 9.2) around Allocate."""

    def test_allocate_after_401(self) -> None:
        """The first Allocate goes without credentials; the retry carries them and the result has both addresses."""
        clock, server, allocation = make()
        d = allocation.allocate()
        pump(clock)
        result = self.successResultOf(d)
        self.assertEqual((result.relayed, result.mapped, result.lifetime), (RELAYED, MAPPED, 600))
        first, second = (m for _, m in server.requests(Method.ALLOCATE))
        self.assertFalse(first.has(Attr.MESSAGE_INTEGRITY))
        self.assertNotEqual(first.transaction_id, second.transaction_id)
        self.assertEqual(second.get_string(Attr.USERNAME), "alice")
        self.assertEqual(second.get_string(Attr.REALM), "example.org")
        self.assertEqual(second.get_string(Attr.NONCE), "nonce-1")
        self.assertTrue(second.check_integrity(server.key))
        self.assertEqual(second.get_requested_transport(), 17)
        self.assertEqual(allocation.state, AllocationState.ALLOCATED)
        self.assertEqual(allocation.relayed_address, RELAYED)
        self.assertEqual(allocation.mapped_address, MAPPED)

    def test_requested_lifetime(self) -> None:
        """A requested lifetime goes in LIFETIME."""
        clock, server, allocation = make(lifetime=1200)
        allocation.allocate()
        pump(clock)
        self.assertEqual(server.requests(Method.ALLOCATE)[-1][1].get_uint32(Attr.LIFETIME), 1200)

    def test_wrong_password(self) -> None:
        """A second 401 fails with TurnAuthError naming the user and realm, and frees everything."""
        closed: list[bool] = []
        clock, server, allocation = make(password="wrong", on_close=lambda: closed.append(True))
        d = allocation.allocate()
        pump(clock)
        error = self.failureResultOf(d, TurnAuthError).value
        self.assertEqual(error.code, 401)
        self.assertIn("'alice'", str(error))
        self.assertIn("example.org", str(error))
        self.assertIn("wrong username or password", str(error))
        self.assertEqual(len(server.requests(Method.ALLOCATE)), 2)
        self.assertEqual(allocation.state, AllocationState.CLOSED)
        self.assertEqual(closed, [True])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_credentials(self) -> None:
        """A server that wants credentials when none were given fails with TurnAuthError."""
        clock, server, allocation = make(username="", password="")
        d = allocation.allocate()
        pump(clock)
        self.assertIn("none were given", str(self.failureResultOf(d, TurnAuthError).value))

    def test_stale_nonce_retried(self) -> None:
        """438 is answered by retrying with the new nonce."""
        clock, server, allocation = make()
        server.stale_next = 2
        d = allocation.allocate()
        pump(clock)
        self.successResultOf(d)
        nonces = [m.get_string(Attr.NONCE) for _, m in server.requests(Method.ALLOCATE)]
        self.assertEqual(nonces, [None, "nonce-1", "nonce-2", "nonce-3"])
        self.assertEqual(allocation.stats.stale_nonce_retries, 2)

    def test_stale_nonce_bounded(self) -> None:
        """A server that answers 438 forever makes the request fail, not loop."""
        clock, server, allocation = make()
        server.stale_next = 100
        d = allocation.allocate()
        pump(clock, 50)
        self.assertEqual(self.failureResultOf(d, TurnError).value.code, 438)
        self.assertEqual(len(server.requests(Method.ALLOCATE)), 5)

    def test_stale_nonce_on_refresh(self) -> None:
        """A nonce that went stale between requests is renewed transparently."""
        clock, server, allocation = self.allocated()
        server.nonce = server.new_nonce()
        d = allocation.refresh()
        pump(clock)
        self.assertEqual(self.successResultOf(d), 600)
        self.assertEqual(allocation.stats.stale_nonce_retries, 1)

    def test_error_response(self) -> None:
        """Another error (486 quota) fails with TurnError carrying the code."""
        clock, server, allocation = make()
        server.refuse[Method.ALLOCATE] = 486
        d = allocation.allocate()
        pump(clock)
        error = self.failureResultOf(d, TurnError).value
        self.assertEqual(error.code, 486)
        self.assertNotIsInstance(error, TurnAuthError)

    def test_success_without_integrity_ignored(self) -> None:
        """A success response that fails MESSAGE-INTEGRITY is ignored; the retransmission's answer counts."""
        clock, server, allocation = make()
        server.bad_integrity_next = 1
        d = allocation.allocate()
        pump(clock)
        self.assertNoResult(d)
        clock.advance(0.5)  # RTO: the retransmission is answered properly
        pump(clock)
        self.successResultOf(d)

    def test_timeout(self) -> None:
        """A silent server fails with TurnTimeoutError after the retransmission schedule."""
        clock, server, allocation = make(policy=RetransmissionPolicy(rto=0.1, rc=3, rm=2))
        server.silent = True
        d = allocation.allocate()
        clock.pump([0.05] * 20)
        self.assertIn("no answer", str(self.failureResultOf(d, TurnTimeoutError).value))
        self.assertEqual(clock.getDelayedCalls(), [])


class RedirectTests(SynchronousTestCase):
    """300 Try Alternate (RFC 8656 7.2, RFC 8489 10)."""

    def test_followed_once_over_udp(self) -> None:
        """Over UDP the allocation moves to ALTERNATE-SERVER and starts over there."""
        servers: dict[tuple[str, int], FakeTurnServer] = {}
        clock, first, allocation = make(send=lambda data, to: servers[to](data, to))
        first.redirect_to = ALTERNATE
        second = FakeTurnServer(clock, ALTERNATE)
        second.allocation = allocation
        servers.update({SERVER: first, ALTERNATE: second})
        d = allocation.allocate()
        pump(clock)
        result = self.successResultOf(d)
        self.assertEqual(result.server, ALTERNATE)
        self.assertEqual(allocation.server, ALTERNATE)
        self.assertEqual(allocation.stats.redirects, 1)
        self.assertFalse(second.requests(Method.ALLOCATE)[0][1].has(Attr.MESSAGE_INTEGRITY))

    def test_not_followed_twice(self) -> None:
        """A second 300 fails with TurnError 300."""
        servers: dict[tuple[str, int], FakeTurnServer] = {}
        clock, first, allocation = make(send=lambda data, to: servers[to](data, to))
        first.redirect_to = ALTERNATE
        second = FakeTurnServer(clock, ALTERNATE)
        second.redirect_to = SERVER
        second.allocation = allocation
        servers.update({SERVER: first, ALTERNATE: second})
        d = allocation.allocate()
        pump(clock)
        self.assertEqual(self.failureResultOf(d, TurnError).value.code, 300)

    def test_stream_raises_redirect(self) -> None:
        """Over a stream a 300 fails with TurnRedirect for the caller to reconnect."""
        clock, server, allocation = make(stream=True)
        server.redirect_to = ALTERNATE
        d = allocation.allocate()
        pump(clock)
        self.assertEqual(self.failureResultOf(d, TurnRedirect).value.alternate, ALTERNATE)
        self.assertEqual(allocation.state, AllocationState.CLOSED)


class TimerTests(AllocatedMixin, SynchronousTestCase):
    """Refresh timers: allocation at 5/6 of LIFETIME, permissions < 300 s, channels < 600 s."""

    def test_allocation_refresh_at_five_sixths(self) -> None:
        """With LIFETIME 600 the Refresh goes at 500 s, then again 500 s after its answer."""
        clock, server, allocation = self.allocated()
        start = clock.seconds()
        clock.advance(499)
        self.assertEqual(server.requests(Method.REFRESH), [])
        clock.advance(1)
        times = [t - start for t, _ in server.requests(Method.REFRESH)]
        self.assertEqual(len(times), 1)
        self.assertAlmostEqual(times[0], 500, delta=0.001)
        pump(clock)
        self.assertEqual(allocation.stats.refreshes, 1)
        clock.advance(500)
        self.assertEqual(len(server.requests(Method.REFRESH)), 2)
        self.close(clock, allocation)

    def test_refresh_follows_granted_lifetime(self) -> None:
        """A shorter granted lifetime (60 s) brings the refresh to 50 s."""
        clock, server, allocation = make()
        server.lifetime = 60
        allocation.allocate()
        pump(clock)
        start = clock.seconds()
        clock.advance(50)
        self.assertAlmostEqual(server.requests(Method.REFRESH)[0][0] - start, 50, delta=0.001)

    def test_permission_refresh_under_300(self) -> None:
        """A permission is refreshed every 240 s, under the 300 s it lives."""
        clock, server, allocation = self.allocated()
        d = allocation.create_permission(PEER.host)
        pump(clock)
        self.successResultOf(d)
        installed = clock.seconds()
        self.assertEqual(allocation.permissions, {PEER.host})
        clock.pump([10] * 60)  # 600 s
        times = [t - installed for t, _ in server.requests(Method.CREATE_PERMISSION)[1:]]
        self.assertGreaterEqual(len(times), 2)
        gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
        self.assertTrue(all(g < 300 for g in gaps), gaps)
        self.assertGreaterEqual(allocation.stats.permission_refreshes, 2)
        self.close(clock, allocation)

    def test_channel_refresh_under_600(self) -> None:
        """A channel binding is re-sent every 540 s, under its 600 s; its permission keeps its 240 s refresh."""
        clock, server, allocation = self.allocated()
        d = allocation.bind_channel(PEER)
        pump(clock)
        self.assertEqual(self.successResultOf(d), 0x4000)
        bound = clock.seconds()
        self.assertEqual(allocation.channels, {PEER: 0x4000})
        self.assertEqual(allocation.permissions, {PEER.host})
        clock.pump([10] * 120)  # 1200 s
        binds = [t - bound for t, _ in server.requests(Method.CHANNEL_BIND)[1:]]
        self.assertEqual(len(binds), 2)
        self.assertTrue(all(b - a < 600 for a, b in zip([0.0, *binds], binds, strict=False)))
        permissions = [t - bound for t, _ in server.requests(Method.CREATE_PERMISSION)]
        self.assertGreaterEqual(len(permissions), 4)
        self.assertLess(permissions[0], 300)
        self.assertEqual(allocation.stats.channel_refreshes, 2)
        self.close(clock, allocation)

    def test_custom_timers(self) -> None:
        """TurnTimers shortens the refresh intervals (for servers with short lifetimes)."""
        timers = TurnTimers(permission_refresh=2.0, channel_refresh=3.0)
        clock, server, allocation = self.allocated(timers=timers)
        allocation.create_permission(PEER.host)
        pump(clock)
        clock.advance(2)
        pump(clock)
        self.assertEqual(allocation.stats.permission_refreshes, 1)
        self.close(clock, allocation)

    def test_refresh_failure_loses_allocation(self) -> None:
        """A refused refresh loses the allocation: on_lost is called and every timer stops."""
        closed: list[bool] = []
        clock, server, allocation = self.allocated(on_close=lambda: closed.append(True))
        lost: list[TurnError] = []
        allocation.on_lost(lost.append)
        server.refuse[Method.REFRESH] = 437
        clock.advance(500)
        pump(clock)
        self.assertEqual([e.code for e in lost], [437])
        self.assertEqual(allocation.state, AllocationState.CLOSED)
        self.assertEqual(closed, [True])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertRaises(OSError, allocation.send, b"x", PEER)

    def test_refresh_timeout_retried(self) -> None:
        """A refresh that times out is retried while the lifetime allows; the allocation survives."""
        policy = RetransmissionPolicy(rto=1, rc=2, rm=2)  # 3 s per attempt
        clock, server, allocation = self.allocated(policy=policy)
        server.silent = True
        clock.advance(500)
        clock.pump([1] * 4)
        server.silent = False
        clock.pump([1] * 4)
        self.assertEqual(allocation.state, AllocationState.ALLOCATED)
        self.assertEqual(allocation.stats.refreshes, 1)
        self.close(clock, allocation)


class LossTests(AllocatedMixin, SynchronousTestCase):
    """What says a granted allocation is gone (437, 438 again, no answer, a watched
    Refresh) and what does not (403 for one peer)."""

    def watched(self, **kwargs: Any) -> tuple[Clock, FakeTurnServer, TurnAllocation, list[Any]]:
        clock, server, allocation = self.allocated(**kwargs)
        lost: list[TurnError] = []
        allocation.on_lost(lost.append)
        return clock, server, allocation, lost

    def assertLost(self, clock: Clock, allocation: TurnAllocation, lost: list[Any]) -> None:
        self.assertEqual(len(lost), 1)
        self.assertEqual(allocation.state, AllocationState.CLOSED)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_437_on_create_permission(self) -> None:
        """437 Allocation Mismatch on CreatePermission (a restarted server) loses the
        allocation at once."""
        clock, server, allocation, lost = self.watched()
        server.refuse[Method.CREATE_PERMISSION] = 437
        d = allocation.create_permission(PEER.host)
        pump(clock)
        self.assertEqual(self.failureResultOf(d, TurnError).value.code, 437)
        self.assertEqual([e.code for e in lost], [437])
        self.assertLost(clock, allocation, lost)

    def test_437_on_channel_bind(self) -> None:
        """437 on ChannelBind loses it too."""
        clock, server, allocation, lost = self.watched()
        server.refuse[Method.CHANNEL_BIND] = 437
        d = allocation.bind_channel(PEER)
        pump(clock)
        self.failureResultOf(d, TurnError)
        self.assertEqual([e.code for e in lost], [437])
        self.assertLost(clock, allocation, lost)

    def test_one_stale_nonce_is_not_a_loss(self) -> None:
        """A 438 is retried with the new nonce; the allocation lives on."""
        clock, server, allocation, lost = self.watched()
        server.stale_next = 1
        d = allocation.create_permission(PEER.host)
        pump(clock)
        self.successResultOf(d)
        self.assertEqual(lost, [])
        self.assertEqual(allocation.state, AllocationState.ALLOCATED)
        self.close(clock, allocation)

    def test_stale_nonce_again_and_again(self) -> None:
        """438 after every retry with the new nonce loses the allocation."""
        clock, server, allocation, lost = self.watched()
        server.stale_next = 100
        d = allocation.create_permission(PEER.host)
        pump(clock, 50)
        self.failureResultOf(d, TurnError)
        self.assertEqual([e.code for e in lost], [438])
        self.assertLost(clock, allocation, lost)

    def test_403_costs_only_that_peer(self) -> None:
        """403 Forbidden on CreatePermission (a denied peer address) fails that
        permission only: the allocation and another peer's permission stay."""
        clock, server, allocation, lost = self.watched()
        server.refuse[Method.CREATE_PERMISSION] = 403
        d = allocation.create_permission(PEER.host)
        pump(clock)
        self.assertEqual(self.failureResultOf(d, TurnError).value.code, 403)
        del server.refuse[Method.CREATE_PERMISSION]
        other = allocation.create_permission(OTHER_PEER.host)
        pump(clock)
        self.successResultOf(other)
        self.assertEqual(lost, [])
        self.assertEqual(allocation.state, AllocationState.ALLOCATED)
        self.close(clock, allocation)

    def test_unanswered_permission(self) -> None:
        """No answer to CreatePermission after its retransmissions loses the allocation."""
        policy = RetransmissionPolicy(rto=1, rc=2, rm=2)  # 3 s
        clock, server, allocation, lost = self.watched(policy=policy)
        server.silent = True
        d = allocation.create_permission(PEER.host)
        clock.pump([1] * 2)
        self.assertEqual(lost, [])
        clock.pump([1] * 2)
        self.failureResultOf(d, TurnTimeoutError)
        self.assertIsInstance(lost[0], TurnTimeoutError)
        self.assertLost(clock, allocation, lost)

    def test_watch_refreshes_on_schedule(self) -> None:
        """watch(5): a Refresh every 5 s while the server answers; watch(None) stops."""
        clock, server, allocation, lost = self.watched()
        allocation.watch(5)
        clock.advance(5)
        pump(clock)
        clock.advance(5 - 10 * LATENCY)
        pump(clock)
        self.assertEqual(len(server.requests(Method.REFRESH)), 2)
        self.assertEqual(allocation.stats.liveness_checks, 2)
        allocation.watch(None)
        clock.advance(60)
        self.assertEqual(len(server.requests(Method.REFRESH)), 2)
        self.assertEqual(lost, [])
        self.close(clock, allocation)

    def test_watch_notices_a_restarted_server(self) -> None:
        """A restarted server answers the watch Refresh with 437: lost at once."""
        clock, server, allocation, lost = self.watched()
        allocation.watch(5)
        server.refuse[Method.REFRESH] = 437
        clock.advance(5)
        pump(clock)
        self.assertEqual([e.code for e in lost], [437])
        self.assertLost(clock, allocation, lost)

    def test_watch_notices_silence(self) -> None:
        """A server that stopped answering is lost 3.5 s after the watch Refresh (sent
        at 0, 0.5 and 1.5 s), not after the 39.5 s of an ordinary request."""
        clock, server, allocation, lost = self.watched()
        allocation.watch(5)
        server.silent = True
        clock.advance(5)
        clock.pump([0.5, 1, 1.9])
        self.assertEqual(lost, [])
        self.assertEqual(len(server.requests(Method.REFRESH)), 3)
        clock.advance(0.1)
        self.assertEqual(len(lost), 1)
        self.assertIsInstance(lost[0], TurnTimeoutError)
        self.assertLost(clock, allocation, lost)


class DataTests(AllocatedMixin, SynchronousTestCase):
    """Send and Data indications, ChannelData, and what datagram_received takes."""

    def test_send_waits_for_permission(self) -> None:
        """Data to a peer without a permission waits for CreatePermission, then goes as a Send indication."""
        clock, server, allocation = self.allocated()
        allocation.send(b"one", PEER)
        allocation.send(b"two", PEER)
        self.assertEqual(server.indications, [])
        self.assertEqual(len(server.requests(Method.CREATE_PERMISSION)), 1)
        pump(clock)
        self.assertEqual(server.indications, [(PEER, b"one"), (PEER, b"two")])
        self.assertEqual(allocation.stats.indications_sent, 2)
        allocation.send(b"three", PEER)
        self.assertEqual(server.indications[-1], (PEER, b"three"))

    def test_refused_permission_drops_queue(self) -> None:
        """If the permission is refused (403) the waiting data is dropped and counted."""
        clock, server, allocation = self.allocated()
        server.refuse[Method.CREATE_PERMISSION] = 403
        allocation.send(b"one", PEER)
        pump(clock)
        self.assertEqual(server.indications, [])
        self.assertEqual(allocation.stats.dropped, 1)
        self.assertEqual(allocation.permissions, frozenset())
        d = allocation.create_permission(PEER.host)
        pump(clock)
        self.assertEqual(self.failureResultOf(d, TurnError).value.code, 403)

    def test_channel_data_when_bound(self) -> None:
        """Once a channel is bound, data to that peer goes as ChannelData (unpadded over UDP)."""
        clock, server, allocation = self.allocated()
        allocation.bind_channel(PEER)
        pump(clock)
        allocation.send(b"hello", PEER)
        self.assertEqual(server.channel_data[-1][:2], (0x4000, b"hello"))
        self.assertEqual(len(server.channel_data[-1][2]), 4 + 5)
        allocation.send(b"other", OTHER_PEER)  # no channel: indication after permission
        pump(clock)
        self.assertEqual(server.indications[-1], (OTHER_PEER, b"other"))
        self.assertEqual(allocation.stats.channel_data_sent, 1)

    def test_bind_channel_twice(self) -> None:
        """Binding the same peer again gives the same number; another peer gets the next."""
        clock, server, allocation = self.allocated()
        first = allocation.bind_channel(PEER)
        again = allocation.bind_channel(PEER)
        other = allocation.bind_channel(OTHER_PEER)
        pump(clock)
        self.assertEqual(
            [self.successResultOf(d) for d in (first, again, other)], [0x4000, 0x4000, 0x4001]
        )
        self.assertEqual(len(server.requests(Method.CHANNEL_BIND)), 2)

    def test_data_indication_delivered(self) -> None:
        """A Data indication from the server reaches on_data with the peer's address."""
        clock, server, allocation = self.allocated()
        got: list[tuple[bytes, Address]] = []
        allocation.on_data(lambda data, peer: got.append((data, peer)))
        self.assertTrue(allocation.datagram_received(server.data_indication(PEER, b"hi"), SERVER))
        self.assertEqual(got, [(b"hi", PEER)])

    def test_channel_data_delivered(self) -> None:
        """ChannelData on a bound channel reaches on_data; on an unknown channel it is dropped."""
        clock, server, allocation = self.allocated()
        got: list[tuple[bytes, Address]] = []
        allocation.on_data(lambda data, peer: got.append((data, peer)))
        allocation.bind_channel(PEER)
        pump(clock)
        self.assertTrue(allocation.datagram_received(encode_channel_data(0x4000, b"yo"), SERVER))
        self.assertTrue(allocation.datagram_received(encode_channel_data(0x4007, b"no"), SERVER))
        self.assertEqual(got, [(b"yo", PEER)])
        self.assertEqual(allocation.stats.dropped, 1)

    def test_foreign_datagrams_not_taken(self) -> None:
        """Datagrams from elsewhere, and STUN answers to other transactions, are left to the caller."""
        clock, server, allocation = self.allocated()
        indication = server.data_indication(PEER, b"hi")
        self.assertFalse(allocation.datagram_received(indication, PEER))
        other = StunMessage.request().success_response()
        other.add_address(Attr.XOR_MAPPED_ADDRESS, MAPPED)
        self.assertFalse(allocation.datagram_received(encode(other), SERVER))
        self.assertFalse(allocation.datagram_received(b"plain application data", SERVER))
        self.assertFalse(allocation.datagram_received(b"\x80\x00rtp-like", SERVER))

    def test_callback_error_contained(self) -> None:
        """An exception in the data callback is logged, not raised into the socket."""
        clock, server, allocation = self.allocated()

        def broken(data: bytes, peer: Address) -> None:
            raise RuntimeError("boom")

        allocation.on_data(broken)
        allocation.datagram_received(server.data_indication(PEER, b"hi"), SERVER)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_send_before_allocation(self) -> None:
        """Sending without an allocation raises OSError, like a closed socket."""
        clock, server, allocation = make()
        self.assertRaises(OSError, allocation.send, b"x", PEER)

    def test_peer_must_be_ip(self) -> None:
        """A peer given by name is refused (the relay needs an address)."""
        clock, server, allocation = self.allocated()
        self.assertRaises(ValueError, allocation.send, b"x", ("example.org", 1))


class StreamTests(AllocatedMixin, SynchronousTestCase):
    """Over TCP/TLS: one send per transaction, padded ChannelData, connection loss."""

    def test_no_retransmission(self) -> None:
        """Over a stream a request is sent once and fails after the policy's total time."""
        clock, server, allocation = make(stream=True)
        server.silent = True
        d = allocation.allocate()
        clock.pump([1] * 38)
        self.assertNoResult(d)
        clock.pump([1] * 2)
        self.failureResultOf(d, TurnTimeoutError)
        self.assertEqual(len(server.requests(Method.ALLOCATE)), 1)

    def test_channel_data_padded(self) -> None:
        """ChannelData is padded to a multiple of 4 bytes over a stream (RFC 8656 12.5)."""
        clock, server, allocation = self.allocated(stream=True)
        allocation.bind_channel(PEER)
        pump(clock)
        allocation.send(b"hello", PEER)
        self.assertEqual(server.channel_data[-1][:2], (0x4000, b"hello"))
        self.assertEqual(len(server.channel_data[-1][2]), 12)

    def test_connection_lost_while_allocating(self) -> None:
        """Losing the connection during Allocate fails it with the reason."""
        clock, server, allocation = make(stream=True)
        server.silent = True
        d = allocation.allocate()
        allocation.connection_lost("Connection was refused by other side")
        error = self.failureResultOf(d, TurnError).value
        self.assertIn("refused by other side", str(error))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connection_lost_when_allocated(self) -> None:
        """Losing the connection of a granted allocation calls on_lost."""
        clock, server, allocation = self.allocated(stream=True)
        lost: list[TurnError] = []
        allocation.on_lost(lost.append)
        allocation.connection_lost("reset")
        self.assertEqual(len(lost), 1)
        self.assertEqual(allocation.state, AllocationState.CLOSED)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connection_lost_while_closing(self) -> None:
        """Losing the connection during the deallocation ends close() at once."""
        clock, server, allocation = self.allocated(stream=True)
        server.silent = True
        d = allocation.close()
        self.assertNoResult(d)
        allocation.connection_lost("closed by peer")
        self.successResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [])


class CloseTests(AllocatedMixin, SynchronousTestCase):
    """Deallocation, cancellation, and that nothing is left running."""

    def test_close_deallocates(self) -> None:
        """close() sends Refresh with LIFETIME 0, then calls on_close and leaves no timer."""
        closed: list[bool] = []
        clock, server, allocation = self.allocated(on_close=lambda: closed.append(True))
        allocation.bind_channel(PEER)
        allocation.create_permission(OTHER_PEER.host)
        pump(clock)
        d = allocation.close()
        self.assertEqual(allocation.state, AllocationState.CLOSING)
        pump(clock)
        self.successResultOf(d)
        refresh = server.requests(Method.REFRESH)[-1][1]
        self.assertEqual(refresh.get_uint32(Attr.LIFETIME), 0)
        self.assertTrue(refresh.check_integrity(server.key))
        self.assertEqual(closed, [True])
        self.assertEqual(allocation.state, AllocationState.CLOSED)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.successResultOf(allocation.close())  # idempotent
        self.assertEqual(closed, [True])

    def test_close_bounded(self) -> None:
        """close() against a silent server gives up after close_timeout."""
        clock, server, allocation = self.allocated()
        server.silent = True
        d = allocation.close()
        clock.pump([0.1] * 15)
        self.assertNoResult(d)
        clock.pump([0.1] * 6)
        self.successResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel_allocate(self) -> None:
        """Cancelling allocate() stops retransmissions and calls on_close."""
        closed: list[bool] = []
        clock, server, allocation = make(on_close=lambda: closed.append(True))
        server.silent = True
        d = allocation.allocate()
        clock.advance(1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(closed, [True])
        self.assertEqual(allocation.state, AllocationState.CLOSED)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_close_while_allocating(self) -> None:
        """close() during Allocate cancels it and fires once everything is freed."""
        clock, server, allocation = make()
        server.silent = True
        d = allocation.allocate()
        closing = allocation.close()
        self.failureResultOf(d, CancelledError)
        self.successResultOf(closing)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_close_waits_for_on_close(self) -> None:
        """close() fires only when on_close's Deferred does (the socket is really closed)."""
        released: Deferred[None] = Deferred()
        clock, server, allocation = self.allocated(on_close=lambda: released)
        d = allocation.close()
        pump(clock)
        self.assertNoResult(d)
        released.callback(None)
        self.successResultOf(d)

    def test_close_fails_pending_requests(self) -> None:
        """Closing fails outstanding permission and channel requests."""
        clock, server, allocation = self.allocated()
        server.silent = True
        permission = allocation.create_permission(PEER.host)
        channel = allocation.bind_channel(PEER)
        allocation.close()
        clock.pump([0.5] * 10)
        self.failureResultOf(permission)
        self.failureResultOf(channel)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_allocate_once(self) -> None:
        """allocate() can be called once."""
        clock, server, allocation = self.allocated()
        self.failureResultOf(allocation.allocate(), TurnError)


class AllocateFirstTests(SynchronousTestCase):
    """Several servers in order, each with its own timeout."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.started: list[tuple[float, str]] = []
        self.cancelled: list[str] = []
        self.behaviour: dict[str, str] = {}

    def open_one(self, server: TurnServer) -> Deferred[Any]:
        self.started.append((self.clock.seconds(), server.host))
        what = self.behaviour[server.host]
        if what == "dead":
            return Deferred(lambda d: self.cancelled.append(server.host))
        if what == "auth":
            return defer.fail(TurnAuthError(401, "wrong username or password"))
        d: Deferred[Any] = Deferred()
        self.clock.callLater(0.2, d.callback, f"allocation on {server.host}")
        return d

    def test_dead_first_costs_its_timeout(self) -> None:
        """A dead first server is cancelled after its timeout and the second starts then."""
        self.behaviour = {"a": "dead", "b": "live"}
        servers = [TurnServer("a"), TurnServer("b")]
        d = allocate_first(servers, reactor=self.clock, timeout=3.0, open_one=self.open_one)
        self.clock.pump([0.1] * 40)
        self.assertEqual(self.successResultOf(d), "allocation on b")
        self.assertEqual([h for _, h in self.started], ["a", "b"])
        self.assertAlmostEqual(self.started[1][0], 3.0, delta=1e-6)
        self.assertEqual(self.cancelled, ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refusal_hands_over_at_once(self) -> None:
        """A server that refuses (bad credentials) hands over to the next at once."""
        self.behaviour = {"a": "auth", "b": "live"}
        d = allocate_first(
            [TurnServer("a"), TurnServer("b")], reactor=self.clock, open_one=self.open_one
        )
        self.clock.pump([0.1] * 5)
        self.successResultOf(d)
        self.assertEqual(self.started, [(0, "a"), (0, "b")])

    def test_first_live_wins(self) -> None:
        """A live first server is used and the others are never contacted."""
        self.behaviour = {"a": "live", "b": "live"}
        d = allocate_first(
            [TurnServer("a"), TurnServer("b")], reactor=self.clock, open_one=self.open_one
        )
        self.clock.pump([0.1] * 5)
        self.assertEqual(self.successResultOf(d), "allocation on a")
        self.assertEqual([h for _, h in self.started], ["a"])

    def test_all_fail(self) -> None:
        """When every server fails, NoTurnServerAvailable names each failure."""
        self.behaviour = {"a": "dead", "b": "auth"}
        d = allocate_first(
            [TurnServer("a"), TurnServer("b")],
            reactor=self.clock,
            timeout=1.0,
            open_one=self.open_one,
        )
        self.clock.pump([0.1] * 20)
        error = self.failureResultOf(d, NoTurnServerAvailable).value
        self.assertIn("no allocation within 1 s", error.failures["turn:a:3478?transport=udp"])
        self.assertIn("wrong username", error.failures["turn:b:3478?transport=udp"])

    def test_cancel(self) -> None:
        """Cancelling stops the attempt in progress."""
        self.behaviour = {"a": "dead"}
        d = allocate_first([TurnServer("a")], reactor=self.clock, open_one=self.open_one)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.cancelled, ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

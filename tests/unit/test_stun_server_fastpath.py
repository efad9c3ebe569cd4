"""Tests for the STUN server's fast path (StunResponder.answer_plain_binding): the same
bytes, counters and refusals as the full path (StunResponder.handle), on generated
requests, and on real loopback sockets (IPv4 and IPv6)."""

from __future__ import annotations

import socket
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.server import (
    REFUSED,
    SOFTWARE,
    StunResponder,
    StunServerService,
)
from holepunch.stun.wire import MAGIC_COOKIE, Address, Attr, MessageClass, Method
from tests.signaling_helpers import needs_ipv6

V4 = (Address("192.0.2.10", 3478), Address("192.0.2.11", 3479))
V6 = (Address("2001:db8::1", 3478), Address("2001:db8::2", 3479))

sources = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)).flatmap(
    lambda host: st.builds(Address, st.just(host), st.integers(0, 0xFFFF))
)


@st.composite
def responders(draw: Any) -> tuple[StunResponder, StunResponder, Address]:
    """Two responders alike (one for each path), and a local address they listen on."""
    primary, alternate = draw(st.sampled_from([V4, V6]))
    kwargs = {
        "alternate": draw(st.sampled_from([None, alternate])),
        "software": draw(st.sampled_from([None, SOFTWARE])),
        "rate": 0,
    }
    pair = StunResponder(primary, **kwargs), StunResponder(primary, **kwargs)
    return pair[0], pair[1], draw(st.sampled_from(pair[0].local_addresses()))


def plain_request(transaction_id: bytes, fingerprint: bool) -> bytes:
    return encode(StunMessage.request(Method.BINDING, transaction_id), fingerprint=fingerprint)


@st.composite
def near_plain_datagrams(draw: Any) -> bytes:
    """Datagrams that look like a plain Binding request, and many that almost do."""
    message_type = draw(st.sampled_from([0x0001, 0x0001, 0x0101, 0x0011, 0x0003, 0x4001]))
    cookie = draw(st.sampled_from([MAGIC_COOKIE, MAGIC_COOKIE, 0x01020304]))
    tid = draw(st.binary(min_size=12, max_size=12))
    fingerprint = encode(StunMessage.request(Method.BINDING, tid), fingerprint=True)[20:]
    body = draw(
        st.sampled_from(
            [
                b"",
                fingerprint,
                fingerprint[:4] + bytes(4),  # a wrong CRC
                struct.pack("!HH", Attr.SOFTWARE, 4) + b"abcd",
                struct.pack("!HH", 0x7F01, 0),  # unknown, comprehension-required
                struct.pack("!HHI", Attr.CHANGE_REQUEST, 4, 6),
                struct.pack("!HHI", Attr.FINGERPRINT, 8, 0),
            ]
        )
        | st.binary(max_size=40)
    )
    length = draw(st.sampled_from([len(body), len(body), 0, 8, len(body) + 4]))
    datagram = struct.pack("!HHI", message_type, length, cookie) + tid + body
    cut = draw(st.integers(0, len(datagram)))
    return datagram if draw(st.booleans()) else datagram[:cut]


def both_paths(
    fast: StunResponder, full: StunResponder, data: bytes, source: Address, local: Address,
    transport: str = "udp", now: float = 0.0,
) -> tuple[bytes | None, bytes | None, bytes | None]:  # fmt: skip
    """What the adapters send: fast path first (handle() when it declines), full path alone."""
    quick = fast.answer_plain_binding(data, source.host, source.port, local, now, transport)
    sent = quick
    if quick is None:
        reply = fast.handle(data, source, local, now, transport)
        sent = reply.data if reply is not None else None
    full_reply = full.handle(data, source, local, now, transport)
    if quick and full_reply is not None:  # the fast path answers from local to the source
        assert (full_reply.local, full_reply.destination) == (local, source)
    return quick, sent or None, full_reply.data if full_reply is not None else None


class FastPathEqualityTests(SynchronousTestCase):
    """The fast path answers exactly as the full path does."""

    @settings(max_examples=400, deadline=None)
    @given(
        responders(),
        sources,
        st.binary(min_size=12, max_size=12),
        st.booleans(),
        st.sampled_from(["udp", "tcp"]),
    )
    def test_plain_requests_same_bytes(
        self,
        pair: tuple[StunResponder, StunResponder, Address],
        source: Address,
        tid: bytes,
        fingerprint: bool,
        transport: str,
    ) -> None:
        """Plain Binding requests (with and without FINGERPRINT, IPv4 and IPv6 sources, every
        configuration) take the fast path, whose bytes and counters equal the full path's."""
        fast, full, local = pair
        data = plain_request(tid, fingerprint)
        quick, _, expected = both_paths(fast, full, data, source, local, transport)
        self.assertIsNotNone(quick)
        self.assertEqual(quick, expected)
        self.assertEqual(fast.stats, full.stats)
        answer = decode(quick)  # type: ignore[arg-type]
        self.assertEqual(answer.get_address(Attr.XOR_MAPPED_ADDRESS), source)
        self.assertEqual(answer.has(Attr.FINGERPRINT), fingerprint)

    @settings(max_examples=600, deadline=None)
    @given(responders(), sources, st.lists(near_plain_datagrams(), min_size=1, max_size=5))
    def test_anything_else_same_outcome(
        self,
        pair: tuple[StunResponder, StunResponder, Address],
        source: Address,
        datagrams: list[bytes],
    ) -> None:
        """On near-plain and malformed datagrams, fast-then-full sends what the full path sends,
        and counts the same (malformed, ignored, errors, requests, responses)."""
        fast, full, local = pair
        for data in datagrams:
            quick, sent, expected = both_paths(fast, full, data, source, local)
            self.assertEqual(sent, expected, data.hex())
            if quick is not None:
                self.assertEqual(data[:2], b"\x00\x01")
        self.assertEqual(fast.stats, full.stats)

    def test_fast_path_declines_the_unusual(self) -> None:
        """RFC 3489, CHANGE-REQUEST, a wrong FINGERPRINT, other methods: left to handle()."""
        responder = StunResponder(V4[0], V4[1], rate=0)
        tid = bytes(range(12))
        rfc3489 = StunMessage.request(Method.BINDING, tid)
        rfc3489.cookie = 0x01020304
        bad_crc = bytearray(plain_request(tid, True))
        bad_crc[-1] ^= 1
        for data in [
            encode(rfc3489),
            encode(StunMessage.request(Method.BINDING, tid).add_change_request(True, False)),
            bytes(bad_crc),
            encode(StunMessage.request(Method.ALLOCATE, tid)),
            plain_request(tid, False) + b"\x00",
            plain_request(tid, False)[:19],
        ]:
            self.assertIsNone(
                responder.answer_plain_binding(data, "198.51.100.7", 4000, V4[0], 0.0), data
            )
        self.assertEqual(responder.stats.requests, 0)

    def test_rate_limit_same_as_full_path(self) -> None:
        """Beyond its burst a source is refused by the fast path too: nothing sent, counted."""
        fast = StunResponder(V4[0], rate=10, burst=3)
        full = StunResponder(V4[0], rate=10, burst=3)
        source = Address("198.51.100.7", 4000)
        outcomes = []
        for i in range(6):
            data = plain_request(bytes([i]) * 12, i % 2 == 0)
            quick, sent, expected = both_paths(fast, full, data, source, V4[0], now=0.0)
            self.assertEqual(sent, expected)
            outcomes.append(quick)
        self.assertEqual([o == REFUSED for o in outcomes], [False] * 3 + [True] * 3)
        self.assertEqual(fast.stats.rate_limited, 3)
        self.assertEqual(fast.stats, full.stats)
        quick, _, _ = both_paths(
            fast, full, plain_request(bytes(12), False), source, V4[0], now=0.1
        )
        self.assertTrue(quick)


class _FastCounting(StunResponder):
    fast = 0

    def answer_plain_binding(self, *a: Any, **kw: Any) -> Any:
        answer = super().answer_plain_binding(*a, **kw)
        self.fast += answer is not None
        return answer


def _exchange(family: socket.AddressFamily, host: str, port: int, data: bytes) -> tuple[bytes, Any]:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.settimeout(5)
        sock.sendto(data, (host, port))
        return sock.recv(2048), sock.getsockname()


class FastPathSocketTests(TestCase):
    """The fast path across real UDP sockets on loopback (TCP: test_stun_server)."""

    @defer.inlineCallbacks
    def check_udp(self, family: socket.AddressFamily, host: str) -> Any:
        responder = _FastCounting(Address(host, 0), rate=0)
        svc = StunServerService(responder, reactor, tcp=False)
        svc.startService()
        self.addCleanup(svc.stopService)
        for fingerprint in (False, True):
            request = StunMessage.request(Method.BINDING)
            data = encode(request, fingerprint=fingerprint)
            answer, local = yield threads.deferToThread(
                _exchange, family, host, responder.primary.port, data
            )
            msg = decode(answer)
            self.assertEqual(msg.transaction_id, request.transaction_id)
            self.assertEqual(msg.message_class, MessageClass.SUCCESS)
            self.assertEqual(msg.get_address(Attr.XOR_MAPPED_ADDRESS), Address(*local[:2]))
            self.assertEqual(msg.has(Attr.FINGERPRINT), fingerprint)
        self.assertEqual(responder.fast, 2)
        self.assertEqual((responder.stats.requests, responder.stats.responses), (2, 2))

    def test_udp_ipv4(self) -> Any:
        """Plain Binding requests over UDP on 127.0.0.1 are answered by the fast path."""
        return self.check_udp(socket.AF_INET, "127.0.0.1")

    def test_udp_ipv6(self) -> Any:
        """Plain Binding requests over UDP on ::1 are answered by the fast path (IPv6 XOR)."""
        needs_ipv6()
        return self.check_udp(socket.AF_INET6, "::1")

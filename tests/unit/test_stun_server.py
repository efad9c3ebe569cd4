"""Tests for holepunch.stun.server: the responder's rules, the protocols, real sockets."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import time
from typing import Any

from twisted.internet import defer, reactor, utils
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from holepunch.logsummary import RefusalSummary
from holepunch.ratelimit import TokenBuckets
from holepunch.stun.client import StunErrorResponse, binding_over_tcp, listen_stun
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.server import (
    MAX_PADDED_RESPONSE,
    SOFTWARE,
    StunDatagramProtocol,
    StunResponder,
    StunServerService,
    StunStreamProtocol,
    make_stun_service,
)
from holepunch.stun.wire import MAX_ATTRIBUTES, Address, Attr, MessageClass, Method
from holepunch.testing.fakenet import FakeNetwork
from lab.coturn import free_port

A = Address("192.0.2.10", 3478)
B = Address("192.0.2.11", 3479)
CLIENT = Address("198.51.100.7", 40000)


def request(**kw: Any) -> StunMessage:
    return StunMessage.request(Method.BINDING)


def answer(responder: StunResponder, msg: StunMessage | bytes, **kw: Any) -> Any:
    data = msg if isinstance(msg, bytes) else encode(msg, fingerprint=True)
    return responder.handle(
        data,
        kw.get("source", CLIENT),
        kw.get("local", A),
        kw.get("now", 0.0),
        kw.get("transport", "udp"),
    )


class ResponderTests(SynchronousTestCase):
    """The pure rules of the STUN server."""

    def test_binding_reflects_source(self) -> None:
        """A Binding request with FINGERPRINT is answered with XOR-MAPPED-ADDRESS and FINGERPRINT only."""
        req = request()
        reply = answer(StunResponder(A), req)
        msg = decode(reply.data)
        self.assertEqual(msg.message_class, MessageClass.SUCCESS)
        self.assertEqual(msg.transaction_id, req.transaction_id)
        self.assertEqual(msg.get_address(Attr.XOR_MAPPED_ADDRESS), CLIENT)
        self.assertTrue(msg.check_fingerprint())
        self.assertEqual(
            [a.type for a in msg.attributes], [Attr.XOR_MAPPED_ADDRESS, Attr.FINGERPRINT]
        )
        self.assertEqual((reply.local, reply.destination), (A, CLIENT))

    def test_plain_request_gets_only_xor_mapped_address(self) -> None:
        """A Binding request without FINGERPRINT gets XOR-MAPPED-ADDRESS alone: no SOFTWARE, no FINGERPRINT."""
        msg = decode(answer(StunResponder(A), encode(request())).data)
        self.assertEqual([a.type for a in msg.attributes], [Attr.XOR_MAPPED_ADDRESS])

    def test_software_only_when_configured(self) -> None:
        """SOFTWARE is sent only by a responder given a software string."""
        msg = decode(answer(StunResponder(A, software=SOFTWARE), request()).data)
        self.assertEqual(msg.get_string(Attr.SOFTWARE), SOFTWARE)
        self.assertTrue(msg.check_fingerprint())

    def test_amplification_ratio(self) -> None:
        """Answers to minimal requests are at most 1.6x (IPv4) / 2.2x (IPv6) their size.

        A 20-byte Binding request must get the 20-byte header and XOR-MAPPED-ADDRESS (12
        bytes for IPv4, 24 for IPv6): 32/20 = 1.6 and 44/20 = 2.2 are the floor RFC 8489
        allows, and we send nothing more. With FINGERPRINT (28 bytes) it is 40/28.
        """
        responder = StunResponder(A)
        v6 = Address("2001:db8::7", 40000)
        local6 = Address("2001:db8::1", 3478)
        cases = [
            (encode(request()), CLIENT, A, 1.6),
            (encode(request(), fingerprint=True), CLIENT, A, 40 / 28),
            (encode(request()), v6, local6, 2.2),
            (encode(_rfc3489_request()), CLIENT, A, 2.2),  # MAPPED- and SOURCE-ADDRESS
        ]
        for data, source, local, bound in cases:
            reply = answer(responder, data, source=source, local=local)
            self.assertLessEqual(len(reply.data) / len(data), bound + 1e-9, (len(data), source))
        self.assertEqual(len(answer(responder, encode(request())).data), 32)

    def test_error_responses_stay_small(self) -> None:
        """The default server's error answers stay under 2.5x the request that provoked them."""
        responder = StunResponder(A)
        for req in [
            StunMessage.request(Method.ALLOCATE),
            request().add(0x7F01, b""),
            request().add(Attr.CHANGE_REQUEST, b"\x00\x00"),
        ]:
            data = encode(req)
            reply = answer(responder, data)
            self.assertEqual(decode(reply.data).message_class, MessageClass.ERROR)
            self.assertLessEqual(len(reply.data), 2.5 * len(data), req)

    def test_too_many_attributes_dropped_and_counted(self) -> None:
        """An 8 KB datagram of distinct unknown attributes is dropped and counted, not answered."""
        responder = StunResponder(A)
        data = _datagram_of_unknown_attributes(2043)
        self.assertIsNone(answer(responder, data))
        self.assertEqual(responder.stats.too_many_attributes, 1)
        self.assertEqual(responder.stats.malformed, 1)
        self.assertEqual(responder.stats.as_dict()["tooManyAttributes"], 1)

    def test_cpu_budget_per_message(self) -> None:
        """The costliest datagrams cost well under 5 ms each (the 8 KB one took ~25 ms before the cap)."""
        responder = StunResponder(A, rate=0)
        worst = [
            _datagram_of_unknown_attributes(2043),  # 8 KB, over the cap
            _datagram_of_unknown_attributes(MAX_ATTRIBUTES),  # at the cap: a 420 listing all
        ]
        for data in worst:
            best = min(_time(lambda d=data: answer(responder, d)) for _ in range(5))
            self.assertLess(best, 0.005, len(data))

    def test_rfc3489_request_gets_mapped_address(self) -> None:
        """A cookie-less RFC 3489 request gets MAPPED-ADDRESS (and no FINGERPRINT), cookie echoed."""
        req = StunMessage.request(Method.BINDING)
        req.cookie = 0x01020304
        reply = answer(StunResponder(A, B), encode(req))
        msg = decode(reply.data)
        self.assertTrue(msg.is_rfc3489)
        self.assertEqual(msg.cookie, 0x01020304)
        self.assertEqual(msg.get_address(Attr.MAPPED_ADDRESS), CLIENT)
        self.assertIsNone(msg.get(Attr.FINGERPRINT))
        self.assertEqual(msg.get_address(0x0005), Address(B.host, B.port))  # CHANGED-ADDRESS

    def test_unknown_comprehension_required_gets_420(self) -> None:
        """Unknown comprehension-required attributes get 420 listing them; optional ones are ignored."""
        req = request().add(0x7F01, b"abcd").add(0xFF01, b"ok")
        msg = decode(answer(StunResponder(A), req).data)
        self.assertEqual(msg.message_class, MessageClass.ERROR)
        self.assertEqual(msg.get_error_code()[0], 420)  # type: ignore[index]
        self.assertEqual(msg.get_unknown_attributes(), [0x7F01])

    def test_change_request_without_alternate_gets_420(self) -> None:
        """Without an alternate address CHANGE-REQUEST cannot be honoured: 420 naming it."""
        req = request().add_change_request(True, True)
        msg = decode(answer(StunResponder(A), req).data)
        self.assertEqual(msg.get_error_code()[0], 420)  # type: ignore[index]
        self.assertEqual(msg.get_unknown_attributes(), [Attr.CHANGE_REQUEST])

    def test_change_request_without_flags_is_plain(self) -> None:
        """A CHANGE-REQUEST with neither flag set is an ordinary Binding."""
        req = request().add_change_request(False, False)
        msg = decode(answer(StunResponder(A), req).data)
        self.assertEqual(msg.message_class, MessageClass.SUCCESS)

    def test_rfc5780_other_address_and_origin(self) -> None:
        """With an alternate, responses carry OTHER-ADDRESS (relative to the receiving socket) and RESPONSE-ORIGIN."""
        responder = StunResponder(A, B)
        local = Address(B.host, A.port)
        reply = answer(responder, request(), local=local)
        msg = decode(reply.data)
        self.assertEqual(msg.get_address(Attr.OTHER_ADDRESS), Address(A.host, B.port))
        self.assertEqual(msg.get_address(Attr.RESPONSE_ORIGIN), local)
        self.assertEqual(reply.local, local)

    def test_rfc5780_change_request(self) -> None:
        """CHANGE-REQUEST picks the socket the answer leaves from, named in RESPONSE-ORIGIN."""
        responder = StunResponder(A, B)
        cases = {
            (True, True): B,
            (True, False): Address(B.host, A.port),
            (False, True): Address(A.host, B.port),
        }
        for flags, expected in cases.items():
            reply = answer(responder, request().add_change_request(*flags))
            self.assertEqual(reply.local, expected)
            self.assertEqual(decode(reply.data).get_address(Attr.RESPONSE_ORIGIN), expected)
            self.assertEqual(reply.destination, CLIENT)

    def test_response_port_keeps_the_address(self) -> None:
        """RESPONSE-PORT redirects the answer to another port of the same IP address only."""
        reply = answer(StunResponder(A, B), request().add_response_port(5555))
        self.assertEqual(reply.destination, Address(CLIENT.host, 5555))

    def test_response_port_over_tcp_is_refused(self) -> None:
        """RESPONSE-PORT and CHANGE-REQUEST are UDP-only (RFC 5780 7.5): 420 over TCP."""
        req = request().add_response_port(5555).add_change_request(True, False)
        msg = decode(answer(StunResponder(A, B), req, transport="tcp").data)
        self.assertEqual(msg.get_error_code()[0], 420)  # type: ignore[index]
        self.assertEqual(
            sorted(msg.get_unknown_attributes() or []),
            sorted([Attr.CHANGE_REQUEST, Attr.RESPONSE_PORT]),
        )

    def test_padding_never_amplifies(self) -> None:
        """A PADDING request gets a padded answer no larger than the request itself."""
        small = request().add_padding(8)
        small.add_padding(1200)
        data = encode(small, fingerprint=True)
        reply = answer(StunResponder(A, B), data)
        self.assertLessEqual(len(reply.data), len(data))
        self.assertLessEqual(len(reply.data), MAX_PADDED_RESPONSE)
        self.assertIsNotNone(decode(reply.data).get(Attr.PADDING))

    def test_garbage_is_dropped_and_counted(self) -> None:
        """Bytes that are not STUN get no answer and count as malformed."""
        responder = StunResponder(A)
        for junk in [b"", b"\x00" * 19, b"GET / HTTP/1.1\r\n\r\n", b"\xff" * 40]:
            self.assertIsNone(answer(responder, junk))
        self.assertEqual(responder.stats.malformed, 4)
        self.assertEqual(responder.stats.responses, 0)

    def test_responses_and_indications_are_ignored(self) -> None:
        """A success response or an indication arriving at the server is never answered."""
        responder = StunResponder(A)
        self.assertIsNone(answer(responder, request().success_response()))
        self.assertIsNone(answer(responder, StunMessage.indication(Method.BINDING)))
        self.assertEqual(responder.stats.ignored, 2)

    def test_other_methods_get_400(self) -> None:
        """A request of a method other than Binding gets 400."""
        msg = decode(answer(StunResponder(A), StunMessage.request(Method.ALLOCATE)).data)
        self.assertEqual(msg.get_error_code()[0], 400)  # type: ignore[index]
        self.assertEqual(StunResponder(A).stats.errors[400], 0)

    def test_malformed_attribute_gets_400(self) -> None:
        """A request whose CHANGE-REQUEST is the wrong size is answered 400, not a crash."""
        req = request().add(Attr.CHANGE_REQUEST, b"\x00\x00")
        responder = StunResponder(A, B)
        msg = decode(answer(responder, req).data)
        self.assertEqual(msg.get_error_code()[0], 400)  # type: ignore[index]
        self.assertEqual(responder.stats.errors[400], 1)

    def test_rate_limit_per_source(self) -> None:
        """A source beyond its burst is dropped and counted; other sources are unaffected; tokens refill."""
        responder = StunResponder(A, rate=10, burst=3)
        results = [answer(responder, request(), now=0.0) for _ in range(5)]
        self.assertEqual([r is not None for r in results], [True, True, True, False, False])
        self.assertEqual(responder.stats.rate_limited, 2)
        other = Address("198.51.100.8", 1)
        self.assertIsNotNone(answer(responder, request(), source=other, now=0.0))
        self.assertIsNotNone(answer(responder, request(), now=0.1))


def _rfc3489_request() -> StunMessage:
    req = request()
    req.cookie = 0x01020304
    return req


def _datagram_of_unknown_attributes(n: int) -> bytes:
    body = b"".join(struct.pack("!HH", 0x4000 + i, 0) for i in range(n))
    header = struct.pack("!HHI", 0x0001, len(body), 0x2112A442) + bytes(12)
    return header + body


def _time(f: Any) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


class TokenBucketTests(SynchronousTestCase):
    """The per-source token buckets: a fixed table no churn of sources can reset."""

    def test_churn_cannot_reset_a_limited_source(self) -> None:
        """After 70,000 other sources, a source that used up its burst is still limited."""
        buckets = TokenBuckets(rate=1, burst=3)
        victim = "203.0.113.9"
        self.assertEqual([buckets.allow(victim, 0.0) for _ in range(4)], [True] * 3 + [False])
        for i in range(70_000):
            buckets.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 0.0)
        self.assertFalse(buckets.allow(victim, 0.0))
        self.assertLess(buckets.tokens(victim, 0.0), 1.0)
        self.assertTrue(buckets.allow(victim, 1.0))  # it still refills at its rate

    def test_colliding_keys_share_a_bucket(self) -> None:
        """Keys in the same slot share one bucket: a collision never adds tokens."""
        buckets = TokenBuckets(rate=1, burst=2, slots=1)
        self.assertTrue(buckets.allow("a", 0.0))
        self.assertTrue(buckets.allow("b", 0.0))
        self.assertFalse(buckets.allow("c", 0.0))

    def test_slots_spread_keys(self) -> None:
        """Keys land in many different slots (a keyed hash), all within the table."""
        buckets = TokenBuckets(rate=1, burst=1, slots=1024, secret=b"k" * 16)
        slots = {buckets.slot(f"198.51.100.{i}") for i in range(256)}
        self.assertGreater(len(slots), 200)
        self.assertTrue(all(0 <= n < 1024 for n in slots))
        other = TokenBuckets(rate=1, burst=1, slots=1024, secret=b"j" * 16)
        self.assertNotEqual(
            [buckets.slot(str(i)) for i in range(8)], [other.slot(str(i)) for i in range(8)]
        )

    def test_cached_slots_are_the_hashed_slots(self) -> None:
        """The slot cache never changes a key's slot, however often a flood of new keys empties it."""
        buckets = TokenBuckets(rate=1, burst=1, slots=65536, secret=b"k" * 16)
        fresh = TokenBuckets(rate=1, burst=1, slots=65536, secret=b"k" * 16)
        keys = [f"10.0.{i >> 8}.{i & 255}" for i in range(3 * buckets.cached_keys)]
        first = [buckets.slot(k) for k in keys]
        self.assertEqual([buckets.slot(k) for k in keys], first)
        self.assertEqual([fresh.slot(k) for k in reversed(keys)], first[::-1])

    def test_refill_is_capped_at_burst(self) -> None:
        """A bucket refills at its rate up to the burst and no further."""
        buckets = TokenBuckets(rate=2, burst=3)
        self.assertEqual([buckets.allow("a", 0.0) for _ in range(4)], [True] * 3 + [False])
        self.assertEqual(buckets.tokens("a", 0.5), 1.0)
        self.assertEqual([buckets.allow("a", 100.0) for _ in range(4)], [True] * 3 + [False])
        self.assertFalse(buckets.allow("a", 50.0))  # time going back adds nothing

    def test_unlimited(self) -> None:
        """A rate of 0 allows everything."""
        buckets = TokenBuckets(rate=0, burst=0)
        self.assertTrue(all(buckets.allow("a", 0.0) for _ in range(100)))


def _summaries(events: Any) -> list[LogEvent]:
    return [
        e
        for e in events
        if "refusals" in e and e.get("log_namespace", "").startswith("holepunch.stun")
    ]


class RefusalLogTests(SynchronousTestCase):
    """Refused traffic is logged as a summary line per interval, not a line per refusal."""

    def test_flood_of_garbage_gives_summary_lines(self) -> None:
        """1,000 malformed datagrams and 100 rate-limited requests over 61 s give three summary lines."""
        responder = StunResponder(A, rate=1, burst=1, log_interval=60)
        with capturedLogs() as events:
            for i in range(1000):
                answer(responder, b"\xff" * 24, now=i * 0.06)
            for _ in range(101):
                answer(responder, request(), now=60.0)
            answer(responder, b"junk", now=61.0)
            responder.log_refusals(120.0)
        self.assertEqual(len(events), 3, [e.get("log_format") for e in events])
        first, second, third = _summaries(events)
        self.assertEqual(first["refusals"], {"malformed": 1})  # the start of a flood: at once
        self.assertEqual(second["refusals"], {"malformed": 999, "rateLimited": 1})  # at 60 s
        self.assertEqual(third["refusals"], {"malformed": 1, "rateLimited": 99})
        self.assertEqual(responder.stats.malformed, 1001)
        self.assertEqual(responder.stats.rate_limited, 100)

    def test_log_refusals_flushes_the_rest(self) -> None:
        """log_refusals writes what was counted since the last line, once; nothing when quiet."""
        responder = StunResponder(A, log_interval=60)
        with capturedLogs() as events:
            answer(responder, b"x", now=0.0)
            answer(responder, b"y", now=1.0)
            answer(responder, b"z", now=2.0)
            responder.log_refusals(30.0)
            responder.log_refusals(90.0)
        [_, rest] = _summaries(events)
        self.assertEqual(rest["refusals"], {"malformed": 2})
        self.assertIn("malformed=2", rest["counts"])

    def test_service_writes_summary_on_its_timer(self) -> None:
        """The running service writes held refusals after log_interval and the rest at stop, leaving no timer."""
        network = FakeNetwork()
        svc = StunServerService(StunResponder(A, log_interval=60), network, tcp=False)
        with capturedLogs() as events:
            svc.startService()
            server = network.ports[(A.host, A.port)].protocol
            for junk in (b"x", b"y", b"z"):
                server.datagramReceived(junk, tuple(CLIENT))
            network.advance(60)
            server.datagramReceived(b"late", tuple(CLIENT))
            svc.stopService()
        first, on_timer, at_stop = _summaries(events)
        self.assertEqual(first["refusals"], {"malformed": 1})
        self.assertEqual(on_timer["refusals"], {"malformed": 2})
        self.assertEqual(at_stop["refusals"], {"malformed": 1})
        self.assertEqual(network.getDelayedCalls(), [])

    def test_summary_model(self) -> None:
        """RefusalSummary: first refusal due at once, then one per interval; take() empties it."""
        summary = RefusalSummary(interval=10)
        self.assertIsNotNone(summary.note("a", 0.0))
        self.assertIsNone(summary.note("a", 1.0))
        self.assertIsNone(summary.note("b", 9.0, "detail"))
        due = summary.note("b", 10.0)
        assert due is not None
        self.assertEqual((due.counts, due.total, due.seconds), ({"a": 1, "b": 2}, 3, 9.0))
        self.assertEqual(due.describe(), "b=2, a=1")
        self.assertIsNone(summary.take(20.0))


class RecordingUDP:
    """A datagram transport that records writes."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))

    def stopListening(self) -> None:
        pass


def stream_on(
    svc: StunServerService,
) -> tuple[StunServerService, StunStreamProtocol, StringTransport]:
    """A STUN/TCP connection from CLIENT to ``svc`` at A, over a StringTransport."""
    proto = StunStreamProtocol(svc, A)
    transport = StringTransport(peerAddress=_Peer(CLIENT))
    proto.makeConnection(transport)
    return svc, proto, transport


class ProtocolTests(SynchronousTestCase):
    """The thin protocols move bytes between sockets and the responder."""

    def service(self) -> StunServerService:
        svc = StunServerService(StunResponder(A, B), Clock(), tcp=False)
        for local in svc.responder.local_addresses():
            svc._udp[local] = RecordingUDP()
        return svc

    def test_datagram_answered_from_changed_socket(self) -> None:
        """A CHANGE-REQUEST datagram is answered through the other address's socket."""
        svc = self.service()
        proto = StunDatagramProtocol(svc, A)
        proto.datagramReceived(encode(request().add_change_request(True, True)), tuple(CLIENT))
        self.assertEqual(svc._udp[A].written, [])
        [(data, addr)] = svc._udp[B].written
        self.assertEqual(addr, tuple(CLIENT))
        self.assertEqual(decode(data).get_address(Attr.XOR_MAPPED_ADDRESS), CLIENT)

    def test_datagram_garbage_is_harmless(self) -> None:
        """Garbage datagrams write nothing and raise nothing; a good request afterwards is answered."""
        svc = self.service()
        proto = StunDatagramProtocol(svc, A)
        for junk in [b"\x00", b"\x01\x01" * 30, b"x" * 2000]:
            proto.datagramReceived(junk, tuple(CLIENT))
        proto.datagramReceived(encode(request()), tuple(CLIENT))
        self.assertEqual(len(svc._udp[A].written), 1)

    def test_stream_frames_and_answers(self) -> None:
        """Over TCP, requests split across segments are framed and each is answered in order."""
        clock = Clock()
        svc, proto, transport = stream_on(StunServerService(StunResponder(A), clock))
        r1, r2 = request(), request()
        data = encode(r1) + encode(r2)
        proto.dataReceived(data[:7])
        proto.dataReceived(data[7:33])
        proto.dataReceived(data[33:])
        out = transport.value()
        first = decode(out[: len(out) // 2])
        second = decode(out[len(out) // 2 :])
        self.assertEqual(
            [first.transaction_id, second.transaction_id], [r1.transaction_id, r2.transaction_id]
        )
        self.assertEqual(first.get_address(Attr.XOR_MAPPED_ADDRESS), CLIENT)

    def test_stream_is_its_transports_producer(self) -> None:
        """The TCP protocol registers as streaming producer with the output cap as buffer size."""
        svc = StunServerService(StunResponder(A), Clock(), max_tcp_output=1000)
        proto = StunStreamProtocol(svc, A)
        transport = StringTransport(peerAddress=_Peer(CLIENT))
        transport.bufferSize = 0
        proto.makeConnection(transport)
        self.assertIs(transport.producer, proto)
        self.assertTrue(transport.streaming)
        self.assertEqual(transport.bufferSize, 1000)

    def test_stream_paused_is_dropped(self) -> None:
        """When the transport pauses us (too much output waiting) the connection is aborted and counted."""
        svc, proto, transport = stream_on(StunServerService(StunResponder(A), Clock()))
        proto.pauseProducing()
        self.assertTrue(transport.disconnected)  # aborted, not closed gracefully
        self.assertEqual(svc.responder.stats.tcp_slow_readers, 1)
        proto.dataReceived(encode(request()))
        self.assertEqual(svc.responder.stats.requests, 0)

    def test_incomplete_frame_input_is_capped(self) -> None:
        """A frame header announcing more than max_frame bytes closes the connection at once."""
        svc, proto, transport = stream_on(StunServerService(StunResponder(A), Clock()))
        proto.dataReceived(struct.pack("!HHI", 1, 8000, 0x2112A442) + bytes(12))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(svc.responder.stats.malformed, 1)

    def test_stream_channel_data_closes(self) -> None:
        """ChannelData frames on a STUN-only TCP connection close it at the first one."""
        svc, proto, transport = stream_on(StunServerService(StunResponder(A), Clock()))
        proto.dataReceived(encode(request()) + b"\x40\x00\x00\x00" * 1000 + encode(request()))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(svc.responder.stats.malformed, 1)
        self.assertEqual(svc.responder.stats.requests, 1)

    def test_stream_garbage_closes(self) -> None:
        """A TCP stream that is not STUN is closed and counted."""
        svc, proto, transport = stream_on(StunServerService(StunResponder(A), Clock()))
        proto.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(svc.responder.stats.malformed, 1)

    def test_stream_idle_timeout(self) -> None:
        """An idle TCP connection is closed after the idle timeout, and its timer released."""
        clock = Clock()
        svc, proto, transport = stream_on(
            StunServerService(StunResponder(A), clock, tcp_idle_timeout=10)
        )
        clock.advance(9)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(svc.tcp_connections, 0)


class _Peer:
    def __init__(self, address: Address) -> None:
        self.host = address.host
        self.port = address.port


class _RecordingResponder(StunResponder):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.sources: list[Address] = []

    def handle(self, data: bytes, source: Address, *a: Any, **kw: Any) -> Any:
        self.sources.append(source)
        return super().handle(data, source, *a, **kw)

    def answer_plain_binding(self, data: bytes, host: str, port: int, *a: Any, **kw: Any) -> Any:
        answer = super().answer_plain_binding(data, host, port, *a, **kw)
        if answer is not None:
            self.sources.append(Address(host, port))
        return answer


class RealSocketTests(TestCase):
    """The server on real loopback sockets (127.0.0.1 and 127.0.0.2 for RFC 5780)."""

    def start(self, alternate: bool = True) -> StunServerService:
        responder = _RecordingResponder(
            Address("127.0.0.1", 0), Address("127.0.0.2", 0) if alternate else None
        )
        svc = StunServerService(responder, reactor)
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    def client(self) -> Any:
        proto = listen_stun(reactor, "127.0.0.1")
        self.addCleanup(proto.close)
        return proto

    @defer.inlineCallbacks
    def test_udp_binding(self) -> Any:
        """A client on loopback learns its own address and port, and the RFC 5780 addresses."""
        svc = self.start()
        client = self.client()
        result = yield client.binding(svc.responder.primary)
        self.assertEqual(result.mapped, client.local)
        self.assertEqual(result.other_address, svc.responder.alternate)
        self.assertEqual(result.response_origin, svc.responder.primary)

    @defer.inlineCallbacks
    def test_udp_change_request(self) -> Any:
        """A CHANGE-REQUEST for both is answered from the alternate address and port."""
        svc = self.start()
        client = self.client()
        result = yield client.binding(svc.responder.primary, change_ip=True, change_port=True)
        self.assertEqual(result.source, svc.responder.alternate)
        self.assertEqual(result.mapped, client.local)

    @defer.inlineCallbacks
    def test_tcp_binding(self) -> Any:
        """A Binding over TCP gets the client's TCP source address."""
        svc = self.start(alternate=False)
        result = yield binding_over_tcp(reactor, svc.responder.primary, timeout=5)
        self.assertEqual(result.mapped.host, "127.0.0.1")
        self.assertIn(result.mapped, svc.responder.sources)

    @defer.inlineCallbacks
    def test_error_response_reaches_client(self) -> Any:
        """A CHANGE-REQUEST to a server without alternate fails with the server's 420."""
        svc = self.start(alternate=False)
        client = self.client()
        e = yield self.assertFailure(
            client.binding(svc.responder.primary, change_ip=True), StunErrorResponse
        )
        self.assertEqual(e.code, 420)

    @defer.inlineCallbacks
    def test_garbage_then_service_continues(self) -> Any:
        """Garbage datagrams do not disturb the service: the next real request is answered."""
        svc = self.start(alternate=False)
        sender = DatagramProtocol()
        port = reactor.listenUDP(0, sender, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        for junk in [b"\xff" * 20, b"\x00\x01\x00\x08" + b"\x21\x12\xa4\x42" + b"\x00" * 12]:
            port.write(junk, tuple(svc.responder.primary))
        client = self.client()
        result = yield client.binding(svc.responder.primary)
        self.assertEqual(result.mapped, client.local)
        self.assertEqual(svc.responder.stats.malformed, 2)

    @defer.inlineCallbacks
    def test_turnutils_stunclient_reads_our_answers(self) -> Any:
        """coturn's turnutils_stunclient gets its correct reflexive address from our server (RFC 5780 mode)."""
        if shutil.which("turnutils_stunclient") is None:
            raise self.skipTest("turnutils_stunclient not installed (Debian package coturn)")
        svc = self.start()
        out, err, code = yield utils.getProcessOutputAndValue(
            "turnutils_stunclient",
            ["-f", "-p", str(svc.responder.primary.port), "127.0.0.1"],
            reactor=reactor,
        )
        self.assertEqual(code, 0, err)
        text = out.decode()
        reflexive = {
            Address(h, int(p)) for h, p in re.findall(r"UDP reflexive addr: ([\d.]+):(\d+)", text)
        }
        origins = {
            Address(h, int(p)) for h, p in re.findall(r"Response origin: : ([\d.]+):(\d+)", text)
        }
        self.assertTrue(reflexive)
        self.assertTrue(reflexive <= set(svc.responder.sources), (reflexive, svc.responder.sources))
        self.assertIn(svc.responder.alternate, origins)


class _SlowReader(Protocol):
    """A STUN/TCP client that sends all its requests at once and never reads."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # type: ignore[attr-defined]
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.transport.write(self.data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class _MeasuredStream(StunStreamProtocol):
    """The server's TCP protocol, recording the most answer bytes its transport held."""

    peak = 0

    def send_reply(self, data: bytes) -> None:
        # What Twisted itself counts against bufferSize (FileDescriptor._isSendBufferFull);
        # read before the write, since a write that crosses the cap aborts and empties it.
        t: Any = self.transport
        held = len(t.dataBuffer) + t._tempDataLen + len(data)
        type(self).peak = max(type(self).peak, held)
        super().send_reply(data)


class _WatchedService(StunServerService):
    stream_protocol = _MeasuredStream

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.closed: defer.Deferred[None] = defer.Deferred()

    def stream_closed(self, protocol: StunStreamProtocol) -> None:
        super().stream_closed(protocol)
        self.closed.callback(None)


class _CountingResponder(StunResponder):
    def __init__(self, *a: Any, expected: int, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.expected = expected
        self.handled = 0
        self.all_handled: defer.Deferred[None] = defer.Deferred()

    def counted(self) -> None:
        self.handled += 1
        if self.handled == self.expected:
            self.all_handled.callback(None)

    def handle(self, *a: Any, **kw: Any) -> Any:
        self.counted()
        return super().handle(*a, **kw)

    def answer_plain_binding(self, *a: Any, **kw: Any) -> Any:
        answer = super().answer_plain_binding(*a, **kw)
        if answer is not None:
            self.counted()
        return answer


class SlowReaderTests(TestCase):
    """STUN over a real TCP socket on 127.0.0.1: a client that never reads is dropped."""

    @defer.inlineCallbacks
    def test_client_that_never_reads_is_dropped(self) -> Any:
        """40,000 pipelined requests, nothing read: answers held stay under the cap, the client is dropped and counted."""
        cap = 8192
        n = 40_000
        responder = _CountingResponder(Address("127.0.0.1", 0), rate=0, expected=n)
        svc = _WatchedService(responder, reactor, max_tcp_output=cap)
        svc.startService()
        self.addCleanup(svc.stopService)
        _MeasuredStream.peak = 0
        data = b"".join(encode(request()) for _ in range(n))
        client = _SlowReader(data)
        factory = ClientFactory.forProtocol(lambda: client)
        connector = reactor.connectTCP("127.0.0.1", responder.primary.port, factory)
        self.addCleanup(connector.disconnect)
        yield defer.DeferredList(
            [svc.closed, responder.all_handled], fireOnOneCallback=True, consumeErrors=True
        )
        self.assertTrue(svc.closed.called, f"all {n} requests answered: nothing was dropped")
        self.assertEqual(responder.stats.tcp_slow_readers, 1)
        self.assertLess(responder.handled, n)
        self.assertGreater(_MeasuredStream.peak, cap)  # it did reach the cap ...
        self.assertLessEqual(_MeasuredStream.peak, cap + MAX_PADDED_RESPONSE)  # ... by one answer
        self.assertEqual(svc.tcp_connections, 0)
        if client.transport is not None:
            client.transport.abortConnection()  # type: ignore[attr-defined]
        yield client.lost


class _TakenOnce(StunServerService):
    """The first TCP listen fails as if another socket held the port the kernel gave
    the UDP socket."""

    refused = 0

    def _listen_tcp(self, port: int, interface: str) -> Any:
        if not self.refused:
            self.refused = port
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super()._listen_tcp(port, interface)


class BindRetryTests(TestCase):
    """A port the kernel picked for UDP but taken for TCP: everything is bound again on
    fresh ports, and the server answers on the new one."""

    @defer.inlineCallbacks
    def test_taken_tcp_port_is_retried(self) -> Any:
        service = _TakenOnce(StunResponder(Address("127.0.0.1", 0)), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        primary = service.responder.primary
        self.assertNotEqual(service.refused, 0)
        self.assertEqual(len(service.listening_on()), 1)
        result = yield defer.ensureDeferred(binding_over_tcp(reactor, primary, timeout=5))
        self.assertEqual(result.mapped.host, "127.0.0.1")

    def test_configured_port_is_not_retried(self) -> None:
        """A port the operator named fails at once, with nothing left bound."""
        number = free_port()
        service = _TakenOnce(StunResponder(Address("127.0.0.1", number)), reactor)
        self.assertRaises(CannotListenError, service.startService)
        self.assertEqual(service.refused, number)
        self.assertEqual(service.listening_on(), [])


class MakeServiceTests(SynchronousTestCase):
    """The daemon's STUN service factory."""

    def test_family_mismatch(self) -> None:
        """An alternate address of another family than the primary is refused."""
        self.assertRaises(ValueError, make_stun_service, "127.0.0.1", 0, "::1", 0, reactor=Clock())

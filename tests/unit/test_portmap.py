"""Port mapping: the NAT-PMP and PCP sans-I/O cores in memory, the UDP adapter with a fake
clock, and PortMapper against a small fake gateway on loopback UDP (real sockets)."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from holepunch.nat.portmap import (
    MalformedResponse,
    Method,
    NoResponse,
    PortMapper,
    PortMapping,
    PortMappingError,
    ResultCodeError,
    natpmp,
    pcp,
    ssdp,
)
from holepunch.nat.portmap._core import RetransmittingRequest
from holepunch.nat.portmap.gateway import parse_proc_net_route
from holepunch.nat.portmap.gateway_udp import GatewayRefused, GatewayRequestProtocol

NONCE = bytes(range(1, 13))
V4MAPPED_ANY = bytes(10) + b"\xff\xff" + bytes(4)


def v4mapped(address: str) -> bytes:
    return bytes(10) + b"\xff\xff" + ipaddress.IPv4Address(address).packed


def pcp_map_response(
    nonce: bytes = NONCE,
    *,
    result: int = 0,
    lifetime: int = 3600,
    epoch: int = 99,
    protocol: int = 17,
    internal_port: int = 4000,
    external_port: int = 40000,
    external: str = "198.51.100.7",
    version: int = 2,
    opcode: int = 0x81,
) -> bytes:
    header = struct.pack("!BBBBII", version, opcode, 0, result, lifetime, epoch) + bytes(12)
    body = nonce + struct.pack("!B3xHH", protocol, internal_port, external_port)
    return header + body + v4mapped(external)


class NatPmpCodecTests(TestCase):
    """RFC 6886 section 3 message layouts."""

    def test_external_address_request(self):
        """The external address request is version 0, opcode 0: two bytes."""
        self.assertEqual(natpmp.encode_external_address_request(), b"\x00\x00")

    def test_map_request_layout(self):
        """A UDP map request is version, opcode 1, reserved, internal, external, lifetime."""
        self.assertEqual(
            natpmp.encode_map_request(4000, 4001, 7200),
            bytes.fromhex("0001 0000 0fa0 0fa1 00001c20"),
        )

    def test_delete_request(self):
        """A delete is a map request with external port and lifetime 0 (section 3.4)."""
        self.assertEqual(
            natpmp.encode_map_request(4000, 0, 0), bytes.fromhex("000100000fa0000000000000")
        )

    def test_bad_ports_rejected(self):
        """Port 0 and ports above 65535 cannot be encoded."""
        self.assertRaises(ValueError, natpmp.encode_map_request, 0)
        self.assertRaises(ValueError, natpmp.encode_map_request, 70000)

    def test_decode_external_address(self):
        """Section 3.2's answer carries the epoch and the public IPv4 address."""
        data = bytes.fromhex("0080 0000 00000010") + bytes([203, 0, 113, 1])
        answer = natpmp.decode_external_address_response(data)
        self.assertEqual((answer.epoch, answer.external_address), (16, "203.0.113.1"))

    def test_decode_map(self):
        """Section 3.3's answer: opcode 129, internal and mapped port, granted lifetime."""
        data = bytes.fromhex("0081 0000 00000010 0fa0 9c40 00000e10")
        answer = natpmp.decode_map_response(data, 4000)
        self.assertEqual((answer.external_port, answer.lifetime, answer.epoch), (40000, 3600, 16))

    def test_short(self):
        """A truncated answer is malformed, not a crash."""
        self.assertRaises(MalformedResponse, natpmp.decode_map_response, b"\x00\x81\x00", 4000)
        data = bytes.fromhex("0081 0000 00000010 0fa0 9c40")
        self.assertRaises(MalformedResponse, natpmp.decode_map_response, data, 4000)
        self.assertRaises(
            MalformedResponse, natpmp.decode_external_address_response, b"\x00\x80\x00\x00"
        )

    def test_wrong_opcode_and_version(self):
        """An answer to another opcode, or of another version, is malformed."""
        good = bytes.fromhex("0081 0000 00000010 0fa0 9c40 00000e10")
        self.assertRaises(
            MalformedResponse, natpmp.decode_map_response, b"\x00\x82" + good[2:], 4000
        )
        self.assertRaises(
            MalformedResponse, natpmp.decode_map_response, b"\x00\x01" + good[2:], 4000
        )
        self.assertRaises(MalformedResponse, natpmp.decode_map_response, b"\x02" + good[1:], 4000)

    def test_other_port(self):
        """An answer for another internal port is not ours."""
        data = bytes.fromhex("0081 0000 00000010 0fa1 9c40 00000e10")
        self.assertRaises(MalformedResponse, natpmp.decode_map_response, data, 4000)

    def test_result_code(self):
        """A non-zero result code fails with its number and RFC name, even when short."""
        e = self.assertRaises(
            ResultCodeError, natpmp.decode_map_response, bytes.fromhex("0081 0002 00000010"), 4000
        )
        self.assertEqual((e.code, e.name), (2, "Not Authorized/Refused"))

    def test_schedule(self):
        """Section 3.1: 250 ms, doubling, nine transmissions."""
        waits = list(natpmp.retransmission_schedule())
        self.assertEqual(waits[:4], [0.25, 0.5, 1.0, 2.0])
        self.assertEqual(len(waits), 9)


class PcpCodecTests(TestCase):
    """RFC 6887 sections 7 and 11 message layouts."""

    def test_map_request_layout(self):
        """MAP: 24-byte header with the client address, then nonce, protocol, ports, IP."""
        data = pcp.encode_map_request(NONCE, 4000, "10.1.0.2", 7200, suggested_external_port=4000)
        self.assertEqual(len(data), 60)
        self.assertEqual(data[:8], bytes.fromhex("0201 0000 00001c20"))
        self.assertEqual(data[8:24], v4mapped("10.1.0.2"))
        self.assertEqual(data[24:36], NONCE)
        self.assertEqual(data[36:44], bytes.fromhex("11 000000 0fa0 0fa0"))
        self.assertEqual(data[44:60], V4MAPPED_ANY)

    def test_suggested_external_address(self):
        """A renewal can suggest the external address it had (as IPv4-mapped IPv6)."""
        data = pcp.encode_map_request(
            NONCE, 4000, "10.1.0.2", 7200, suggested_external_address="198.51.100.7"
        )
        self.assertEqual(data[44:60], v4mapped("198.51.100.7"))

    def test_bad_nonce(self):
        """The nonce is exactly 96 bits."""
        self.assertRaises(ValueError, pcp.encode_map_request, b"short", 4000, "10.1.0.2", 7200)

    def test_announce(self):
        """ANNOUNCE is the bare header: version 2, opcode 0, lifetime 0."""
        data = pcp.encode_announce_request("10.1.0.2")
        self.assertEqual(data, bytes.fromhex("0200 0000 00000000") + v4mapped("10.1.0.2"))

    def test_decode_map(self):
        """A success answer gives lifetime, epoch, external port and address."""
        answer = pcp.decode_map_response(pcp_map_response(), NONCE, 4000)
        self.assertEqual(
            (answer.lifetime, answer.epoch, answer.external_port, answer.external_address),
            (3600, 99, 40000, "198.51.100.7"),
        )

    def test_decode_with_options(self):
        """Options after the MAP payload are skipped."""
        data = pcp_map_response() + bytes.fromhex("01 00 0004") + bytes(4)
        self.assertEqual(pcp.decode_map_response(data, NONCE, 4000).external_port, 40000)

    def test_wrong_nonce(self):
        """An answer with another nonce is discarded (section 11.3)."""
        self.assertRaises(
            MalformedResponse, pcp.decode_map_response, pcp_map_response(bytes(12)), NONCE, 4000
        )
        error = pcp_map_response(bytes(12), result=8)
        self.assertRaises(MalformedResponse, pcp.decode_map_response, error, NONCE, 4000)

    def test_wrong_port_or_protocol(self):
        """An answer for another internal port or protocol is not ours."""
        self.assertRaises(
            MalformedResponse,
            pcp.decode_map_response,
            pcp_map_response(internal_port=1),
            NONCE,
            4000,
        )
        self.assertRaises(
            MalformedResponse, pcp.decode_map_response, pcp_map_response(protocol=6), NONCE, 4000
        )

    def test_not_a_response(self):
        """A datagram with the R bit clear, or for another opcode, is malformed."""
        self.assertRaises(
            MalformedResponse, pcp.decode_map_response, pcp_map_response(opcode=0x01), NONCE, 4000
        )
        self.assertRaises(
            MalformedResponse, pcp.decode_map_response, pcp_map_response(opcode=0x82), NONCE, 4000
        )

    def test_lengths(self):
        """Short answers and lengths not a multiple of 4 are malformed."""
        full = pcp_map_response()
        for data in (full[:3], full[:20], full[:40], full + b"\x00"):
            self.assertRaises(MalformedResponse, pcp.decode_map_response, data, NONCE, 4000)

    def test_result_code(self):
        """A non-zero result code fails with its number and name (section 7.4)."""
        e = self.assertRaises(
            ResultCodeError, pcp.decode_map_response, pcp_map_response(result=8), NONCE, 4000
        )
        self.assertEqual((e.code, e.name), (8, "NO_RESOURCES"))
        short = pcp_map_response(result=2)[:24]
        e = self.assertRaises(ResultCodeError, pcp.decode_map_response, short, NONCE, 4000)
        self.assertEqual(e.name, "NOT_AUTHORIZED")

    def test_natpmp_only_server(self):
        """A NAT-PMP server's version-0 answer reads as UNSUPP_VERSION (section 9)."""
        e = self.assertRaises(
            ResultCodeError,
            pcp.decode_map_response,
            bytes.fromhex("0081 0001 00000010"),
            NONCE,
            4000,
        )
        self.assertEqual(e.code, pcp.UNSUPP_VERSION)

    def test_schedule(self):
        """Section 8.1.1: about 3 s, then doubling (RAND 0 here), capped near 1024 s."""
        schedule = pcp.retransmission_schedule(rand=lambda: 0.5)
        waits = [next(schedule) for _ in range(12)]
        self.assertEqual(waits[:4], [3.0, 6.0, 12.0, 24.0])
        self.assertEqual(max(waits), 1024.0)

    def test_schedule_randomised(self):
        """RAND spreads the first wait over 2.7-3.3 s."""
        self.assertAlmostEqual(next(pcp.retransmission_schedule(rand=lambda: 0.0)), 2.7)
        self.assertAlmostEqual(
            next(pcp.retransmission_schedule(rand=lambda: 0.999999)), 3.3, places=5
        )


class SsdpCodecTests(TestCase):
    """UDA 1.3 M-SEARCH and its answer."""

    ANSWER = (
        b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n"
        b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
        b"USN: uuid:x::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\n"
        b"SERVER: Debian/12 UPnP/1.1 MiniUPnPd/2.3.1\r\n"
        b"Location: http://10.1.0.1:5000/rootDesc.xml\r\n\r\n"
    )

    def test_msearch(self):
        """The M-SEARCH names the multicast host, ssdp:discover, MX and the IGD type."""
        text = ssdp.encode_msearch().decode()
        self.assertTrue(text.startswith("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"))
        self.assertIn('MAN: "ssdp:discover"\r\nMX: 1\r\n', text)
        self.assertIn("ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n", text)
        self.assertTrue(text.endswith("\r\n\r\n"))

    def test_answer(self):
        """The answer's LOCATION (any header case) and ST are read."""
        answer = ssdp.decode_search_response(self.ANSWER)
        self.assertEqual(answer.location, "http://10.1.0.1:5000/rootDesc.xml")
        self.assertIn("MiniUPnPd", answer.server)

    def test_not_an_igd_or_not_ok(self):
        """Answers from other devices, errors, non-HTTP and binary junk are malformed."""
        other = self.ANSWER.replace(b"device:InternetGatewayDevice", b"device:MediaRenderer")
        for data in (
            other,
            self.ANSWER.replace(b"200 OK", b"404 Not Found"),
            self.ANSWER.replace(b"Location: http://10.1.0.1:5000/rootDesc.xml\r\n", b""),
            b"NOTIFY * HTTP/1.1\r\n\r\n",
            b"\xff\xfe",
        ):
            self.assertRaises(MalformedResponse, ssdp.decode_search_response, data)

    def test_only_the_gateway_counts(self):
        """On the multicast adapter an IGD answer from another host is ignored."""
        clock = Clock()
        core = RetransmittingRequest(
            ssdp.encode_msearch(),
            ssdp.decode_search_response,
            ssdp.retransmission_schedule(),
            0.0,
            1.0,
        )
        protocol = GatewayRequestProtocol(
            core, clock, "ssdp", destination=("239.255.255.250", 1900), accept_from="10.1.0.1"
        )
        transport = RecordingTransport()
        protocol.makeConnection(transport)
        protocol.start()
        self.assertEqual(transport.destinations, [("239.255.255.250", 1900)])
        protocol.datagramReceived(self.ANSWER, ("10.1.0.99", 1900))
        self.assertNoResult(protocol.deferred)
        clock.advance(0.25)
        self.assertEqual(len(transport.written), 2)
        protocol.datagramReceived(self.ANSWER, ("10.1.0.1", 1900))
        self.assertEqual(
            self.successResultOf(protocol.deferred).location, "http://10.1.0.1:5000/rootDesc.xml"
        )
        self.assertEqual(clock.getDelayedCalls(), [])


class RetransmittingRequestTests(TestCase):
    """The shared sans-I/O request: send, resend, accept, give up."""

    def make(self, deadline: float = 2.0) -> RetransmittingRequest[natpmp.MapResponse]:
        return RetransmittingRequest(
            natpmp.encode_map_request(4000),
            lambda data: natpmp.decode_map_response(data, 4000),
            natpmp.retransmission_schedule(),
            now=0.0,
            deadline=deadline,
        )

    def test_retransmits_until_deadline(self):
        """Sends at 0, 0.25, 0.75, 1.75 and gives up at the 2 s deadline."""
        request = self.make()
        sent_at = []
        now = 0.0
        while not request.done:
            if request.datagrams_to_send():
                sent_at.append(now)
            when = request.get_timer()
            assert when is not None
            now = when
            request.handle_timer(now)
        self.assertEqual(sent_at, [0.0, 0.25, 0.75, 1.75])
        self.assertEqual(now, 2.0)
        self.assertRaises(NoResponse, request.result)

    def test_answer_ends_it(self):
        """A valid answer ends the request with its result and no timer."""
        request = self.make()
        request.datagrams_to_send()
        self.assertFalse(request.receive_datagram(b"junk"))
        self.assertTrue(
            request.receive_datagram(bytes.fromhex("0081 0000 00000010 0fa0 9c40 00000e10"))
        )
        self.assertEqual(request.result().external_port, 40000)
        self.assertIsNone(request.get_timer())
        self.assertEqual(request.datagrams_to_send(), [])

    def test_result_code_ends_it(self):
        """An error result code fails the request at once."""
        request = self.make()
        self.assertTrue(request.receive_datagram(bytes.fromhex("0081 0004 00000010")))
        self.assertRaises(ResultCodeError, request.result)

    def test_ignored_listed_on_timeout(self):
        """The timeout error says what was received and discarded."""
        request = self.make(deadline=0.1)
        request.receive_datagram(b"\x00")
        request.handle_timer(0.1)
        e = self.assertRaises(NoResponse, request.result)
        self.assertIn("too short", str(e))


class RecordingTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.destinations: list[Any] = []
        self.stopped = False

    def write(self, data: bytes, addr: Any = None) -> None:
        assert not self.stopped
        self.written.append(data)
        self.destinations.append(addr)

    def stopListening(self) -> None:
        self.stopped = True


class GatewayRequestProtocolTests(TestCase):
    """The UDP adapter, driven by task.Clock and a recording transport."""

    def setUp(self):
        self.clock = Clock()
        self.core = RetransmittingRequest(
            natpmp.encode_map_request(4000),
            lambda data: natpmp.decode_map_response(data, 4000),
            natpmp.retransmission_schedule(),
            now=0.0,
            deadline=1.0,
        )
        self.protocol = GatewayRequestProtocol(self.core, self.clock, "test")
        self.transport = RecordingTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.start()

    def test_retransmits_on_schedule(self):
        """Retransmissions at 250 and 750 ms, then NoResponse at 1 s with no timer left."""
        self.assertEqual(len(self.transport.written), 1)
        self.clock.advance(0.25)
        self.assertEqual(len(self.transport.written), 2)
        self.clock.advance(0.5)
        self.assertEqual(len(self.transport.written), 3)
        self.clock.advance(0.25)
        self.failureResultOf(self.protocol.deferred, NoResponse)
        self.assertTrue(self.transport.stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answer(self):
        """An answer fires the Deferred, closes the socket and leaves no timer."""
        self.protocol.datagramReceived(
            bytes.fromhex("0081 0000 00000010 0fa0 9c40 00000e10"), ("192.0.2.1", 5351)
        )
        self.assertEqual(self.successResultOf(self.protocol.deferred).external_port, 40000)
        self.assertTrue(self.transport.stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_stops_retransmissions(self):
        """Cancelling stops the timer and closes the socket; nothing more is sent."""
        self.protocol.deferred.cancel()
        self.failureResultOf(self.protocol.deferred, defer.CancelledError)
        self.assertTrue(self.transport.stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(len(self.transport.written), 1)

    def test_icmp_refused(self):
        """ICMP port unreachable ends the request at once with GatewayRefused."""
        self.protocol.connectionRefused()
        self.failureResultOf(self.protocol.deferred, GatewayRefused)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class GatewayDiscoveryTests(TestCase):
    """The default gateway from /proc/net/route."""

    TABLE = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth1\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        "eth0\t00000000\t0100010A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eth0\t0000010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )

    def test_lowest_metric_default_route(self):
        """The default route with the lowest metric wins; addresses are little-endian hex."""
        self.assertEqual(parse_proc_net_route(self.TABLE), "10.1.0.1")

    def test_no_default_route(self):
        """Without a default route there is no gateway."""
        self.assertIsNone(
            parse_proc_net_route(self.TABLE.splitlines()[0] + "\n" + self.TABLE.splitlines()[3])
        )


# --- a fake gateway on loopback ------------------------------------------------------------


class FakeGateway(DatagramProtocol):
    """A small NAT-PMP + PCP server: answers like a gateway, and records what it got."""

    EXTERNAL = "198.51.100.7"

    def __init__(
        self, speaks: tuple[str, ...] = ("pcp", "natpmp"), max_lifetime: int = 7200
    ) -> None:
        self.speaks = speaks
        self.max_lifetime = max_lifetime
        self.received: list[bytes] = []
        self.table: dict[int, int] = {}  # internal port -> external port
        self.got_request: defer.Deferred[bytes] | None = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        if self.got_request is not None:
            d, self.got_request = self.got_request, None
            d.callback(data)
        if not self.speaks:
            return
        if data[0] == 2:
            answer = (
                self.pcp(data)
                if "pcp" in self.speaks
                else struct.pack("!BBHI", 0, 128 + data[1], 1, 5)
            )
        elif data[0] == 0 and "natpmp" in self.speaks:
            answer = self.natpmp(data)
        else:
            return
        self.transport.write(answer, addr)

    def pcp(self, data: bytes) -> bytes:
        opcode = data[1]
        lifetime = min(struct.unpack_from("!I", data, 4)[0], self.max_lifetime)
        header = struct.pack("!BBBBII", 2, 0x80 | opcode, 0, 0, lifetime, 7) + bytes(12)
        if opcode == 0:
            return header
        nonce, protocol, internal, suggested = (
            data[24:36],
            data[36],
            *struct.unpack_from("!HH", data, 40),
        )
        if lifetime == 0:
            self.table.pop(internal, None)
        else:
            self.table[internal] = suggested or 50000
        body = nonce + struct.pack("!B3xHH", protocol, internal, self.table.get(internal, 0))
        return header + body + v4mapped(self.EXTERNAL)

    def natpmp(self, data: bytes) -> bytes:
        if data[1] == 0:
            return struct.pack("!BBHI", 0, 128, 0, 7) + ipaddress.IPv4Address(self.EXTERNAL).packed
        internal, suggested, lifetime = struct.unpack_from("!HHI", data, 4)
        lifetime = min(lifetime, self.max_lifetime)
        if lifetime == 0:
            self.table.pop(internal, None)
        else:
            self.table[internal] = suggested or 50000
        return struct.pack(
            "!BBHIHHI", 0, 128 + data[1], 0, 7, internal, self.table.get(internal, 0), lifetime
        )

    def next_request(self) -> defer.Deferred[bytes]:
        self.got_request = defer.Deferred()
        return self.got_request


class ClockedReactor:
    """Real UDP from the reactor, but time (timers, seconds) from a task.Clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def listenUDP(self, *args: Any, **kwargs: Any) -> Any:
        return reactor.listenUDP(*args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(*args, **kwargs)


class LoopbackGatewayTests(TestCase):
    """PortMapper over real loopback UDP sockets against FakeGateway."""

    def start_gateway(self, **kwargs: Any) -> FakeGateway:
        self.gateway = FakeGateway(**kwargs)
        port = reactor.listenUDP(0, self.gateway, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.gateway_port = port.getHost().port
        return self.gateway

    def mapper(self, methods=(Method.PCP, Method.NATPMP), reactor_: Any = reactor) -> PortMapper:
        return PortMapper(
            reactor_,
            "127.0.0.1",
            local_address="127.0.0.1",
            methods=methods,
            server_port=self.gateway_port,
        )

    @defer.inlineCallbacks
    def test_pcp_map_renew_unmap(self):
        """PCP maps, renews with the same nonce and external port, and deletes with lifetime 0."""
        gateway = self.start_gateway()
        mapper = self.mapper()
        mapping = yield mapper.map_udp(4000, lifetime=600)
        self.assertEqual(mapping.method, Method.PCP)
        self.assertEqual(mapping.external, ("198.51.100.7", 4000))
        self.assertEqual(
            (mapping.internal_address, mapping.internal_port, mapping.lifetime),
            ("127.0.0.1", 4000, 600),
        )
        self.assertEqual(mapper.mappings, [mapping])
        renewed = yield mapper.renew(mapping)
        self.assertEqual(renewed.external, mapping.external)
        self.assertEqual(gateway.received[1][24:36], mapping.nonce)
        self.assertEqual(gateway.received[1][44:60], v4mapped("198.51.100.7"))
        yield mapper.unmap(renewed)
        delete = gateway.received[2]
        self.assertEqual(
            (delete[24:36], struct.unpack_from("!I", delete, 4)[0]), (mapping.nonce, 0)
        )
        self.assertEqual(gateway.table, {})
        self.assertEqual(mapper.mappings, [])

    @defer.inlineCallbacks
    def test_falls_back_to_natpmp(self):
        """A NAT-PMP-only gateway answers PCP with version 0; NAT-PMP then maps."""
        gateway = self.start_gateway(speaks=("natpmp",))
        mapper = self.mapper()
        mapping = yield mapper.map_udp(4000, lifetime=600)
        self.assertEqual(
            (mapping.method, mapping.external), (Method.NATPMP, ("198.51.100.7", 4000))
        )
        self.assertEqual([d[0] for d in gateway.received], [2, 0, 0])
        yield mapper.close()
        self.assertEqual(gateway.table, {})
        self.assertEqual(gateway.received[-1], natpmp.encode_map_request(4000, 0, 0))

    @defer.inlineCallbacks
    def test_nothing_listening(self):
        """With no server on the gateway port, ICMP ends each method at once: a clear error."""
        probe = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.gateway_port = probe.getHost().port
        yield probe.stopListening()
        mapper = self.mapper()
        started = reactor.seconds()
        e = yield self.assertFailure(mapper.map_udp(4000, timeout=5.0), PortMappingError)
        self.assertLess(reactor.seconds() - started, 1.0)
        self.assertEqual(set(e.attempts), {"pcp", "natpmp"})
        self.assertIn("GatewayRefused", e.attempts["pcp"])
        self.assertIn("unreachable", str(e))

    @defer.inlineCallbacks
    def test_silent_gateway_times_out(self):
        """A gateway that never answers fails map_udp within its timeout, naming each method."""
        gateway = self.start_gateway(speaks=())
        clock = Clock()
        mapper = self.mapper(reactor_=ClockedReactor(clock))
        d = mapper.map_udp(4000, timeout=1.0)
        yield gateway.next_request()
        clock.advance(0.5)  # PCP's share: one transmission (its first retry is at ~3 s)
        yield gateway.next_request()
        for _ in range(3):
            clock.advance(0.25)
        e = yield self.assertFailure(d, PortMappingError)
        self.assertIn("NoResponse", e.attempts["pcp"])
        self.assertIn("NoResponse", e.attempts["natpmp"])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(clock.seconds(), 1.25)  # the last step passed the 1 s deadline

    @defer.inlineCallbacks
    def test_cancel_stops_retransmissions(self):
        """Cancelling map_udp stops the request: no more datagrams, no timers."""
        gateway = self.start_gateway(speaks=())
        clock = Clock()
        mapper = self.mapper(methods=(Method.NATPMP,), reactor_=ClockedReactor(clock))
        d = mapper.map_udp(4000, timeout=10.0)
        yield gateway.next_request()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(5)
        self.assertEqual(len(gateway.received), 1)

    @defer.inlineCallbacks
    def test_auto_renew(self):
        """Automatic renewal asks again at half the granted lifetime and reports the grant."""
        gateway = self.start_gateway(max_lifetime=100)
        clock = Clock()
        mapper = self.mapper(reactor_=ClockedReactor(clock))
        mapping: PortMapping = yield mapper.map_udp(4000, lifetime=7200)
        self.assertEqual(mapping.lifetime, 100)
        renewed: defer.Deferred[PortMapping] = defer.Deferred()
        renewal = mapper.auto_renew(mapping, on_renewed=renewed.callback)
        clock.advance(49)
        self.assertEqual(len(gateway.received), 1)
        clock.advance(1)
        new = yield renewed
        self.assertEqual(new.nonce, mapping.nonce)
        self.assertEqual(renewal.current, new)
        self.assertEqual(new.expires, 150)
        yield mapper.unmap(new)
        self.assertTrue(renewal.stopped)
        self.assertEqual(clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_auto_renew_reports_a_lapse(self):
        """When renewals keep failing, they retry at half the time left, then report the lapse."""
        gateway = self.start_gateway(max_lifetime=20)
        clock = Clock()
        mapper = self.mapper(reactor_=ClockedReactor(clock))
        mapping = yield mapper.map_udp(4000)
        gateway.speaks = ()
        lost: list[Exception] = []
        renewal = mapper.auto_renew(mapping, on_lost=lost.append)
        clock.pump([1.0] * 19)
        self.assertEqual(lost, [])
        clock.advance(1.0)  # renewals at 10, 16 and 19 (the 1 s steps), each failing 1 s later
        self.assertEqual(len(lost), 1)
        self.assertIsInstance(lost[0], PortMappingError)
        self.assertIn("NoResponse", str(lost[0]))
        self.assertTrue(renewal.stopped)
        self.assertEqual(clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_probe_nothing_there(self):
        """probe says plainly that neither PCP nor NAT-PMP answers a port with no server."""
        probe = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.gateway_port = probe.getHost().port
        yield probe.stopListening()
        report = yield self.mapper().probe(timeout=1.0)
        self.assertEqual(report["pcp"]["available"], False)
        self.assertEqual(report["natpmp"]["available"], False)
        self.assertIn("unreachable", report["natpmp"]["detail"])

    @defer.inlineCallbacks
    def test_probe_pcp(self):
        """probe finds a PCP server by ANNOUNCE, changing nothing on the gateway."""
        gateway = self.start_gateway()
        report = yield self.mapper().probe(timeout=1.0)
        self.assertEqual(report["pcp"], {"available": True, "detail": "epoch 7"})
        self.assertEqual(gateway.table, {})

    @defer.inlineCallbacks
    def test_probe(self):
        """probe reports which of PCP and NAT-PMP answer, with the external address."""
        self.start_gateway(speaks=("natpmp",))
        report = yield self.mapper().probe(timeout=1.0)
        self.assertEqual(report["natpmp"]["available"], True)
        self.assertEqual(report["natpmp"]["external_address"], "198.51.100.7")
        self.assertEqual(report["pcp"]["available"], False)
        self.assertIn("NAT-PMP only", report["pcp"]["detail"])

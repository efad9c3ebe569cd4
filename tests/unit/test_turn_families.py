# -*- test-case-name: tests.unit.test_turn_families -*-
"""Tests for TURN relayed address families (RFC 8656 7, 14.6, 14.8, 14.9): the
attributes' codec (holepunch.turn.families), TurnAllocation asking for one family or
both against the fake server of tests.unit.test_turn_client, and the ICE agent's
relays (holepunch.ice.relays) with dual allocations, all sans-I/O on a fake clock."""

from __future__ import annotations

import dataclasses
import errno
import struct
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from holepunch.ice.config import RelayConfig
from holepunch.ice.relays import Relays
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.wire import (
    MAGIC_COOKIE,
    Address,
    Attr,
    Method,
    StunDecodeError,
    StunEncodeError,
)
from holepunch.turn import (
    AddressFamily,
    AddressFamilyNotSupported,
    Allocated,
    PeerAddressFamilyMismatch,
    TurnAllocation,
    TurnError,
    TurnServer,
)
from holepunch.turn.families import (
    ADDITIONAL_ADDRESS_FAMILY,
    DRAFT_ADDITIONAL_ADDRESS_FAMILY,
    DRAFT_ADDRESS_ERROR_CODE,
    REQUESTED_ADDRESS_FAMILY,
    FamilyRefused,
    add_additional_family,
    add_requested_family,
    decode_address_error,
    decode_family,
    encode_address_error,
    encode_family,
    get_additional_family,
    get_address_errors,
    get_relayed_addresses,
    own_family,
    parse_families,
    resolve_families,
)
from tests.unit.test_turn_client import (
    RELAYED,
    RELAYED6,
    SERVER,
    AllocatedMixin,
    FakeTurnServer,
    make,
    pump,
)

IPV4, IPV6 = AddressFamily.IPV4, AddressFamily.IPV6
PEER6 = Address("2001:db8::9", 7000)
PEER4 = Address("203.0.113.9", 7000)
TID = bytes(range(1, 13))


class CodecTests(SynchronousTestCase):
    """The attributes on the wire."""

    def test_family_values(self) -> None:
        """REQUESTED-/ADDITIONAL-ADDRESS-FAMILY: the family byte, then three zero bytes."""
        self.assertEqual(encode_family(IPV4), b"\x01\x00\x00\x00")
        self.assertEqual(encode_family(IPV6), b"\x02\x00\x00\x00")
        self.assertIs(decode_family(b"\x02\x00\x00\x00"), IPV6)

    def test_family_errors(self) -> None:
        """A wrong length or an unknown family does not decode; an unknown family does
        not encode."""
        for bad in (b"", b"\x01", b"\x01\x00\x00\x00\x00", b"\x03\x00\x00\x00"):
            with self.assertRaises(StunDecodeError):
                decode_family(bad)
        with self.assertRaises(StunEncodeError):
            encode_family(3)

    def test_requested_family_round_trip(self) -> None:
        """REQUESTED-ADDRESS-FAMILY is attribute 0x0017 and survives the codec."""
        message = add_requested_family(StunMessage.request(Method.ALLOCATE), IPV6)
        raw = encode(message)
        self.assertIn(struct.pack("!HH", 0x0017, 4) + b"\x02\x00\x00\x00", raw)
        self.assertEqual(decode(raw).get(REQUESTED_ADDRESS_FAMILY), b"\x02\x00\x00\x00")

    def test_additional_family_both_codepoints(self) -> None:
        """A dual request carries ADDITIONAL-ADDRESS-FAMILY IPv6 at 0x8000 (RFC 8656) and
        at 0x8032 (coturn 4.6); either is read back."""
        message = decode(encode(add_additional_family(StunMessage.request(Method.ALLOCATE))))
        self.assertEqual(message.get(ADDITIONAL_ADDRESS_FAMILY), b"\x02\x00\x00\x00")
        self.assertEqual(message.get(DRAFT_ADDITIONAL_ADDRESS_FAMILY), b"\x02\x00\x00\x00")
        self.assertIs(get_additional_family(message), IPV6)
        only_draft = StunMessage.request(Method.ALLOCATE).add(
            DRAFT_ADDITIONAL_ADDRESS_FAMILY, encode_family(IPV6)
        )
        self.assertIs(get_additional_family(only_draft), IPV6)

    def test_address_error_code(self) -> None:
        """ADDRESS-ERROR-CODE: family, reserved, class, number, reason; round trip."""
        value = encode_address_error(IPV6, 440, "Address Family not Supported")
        self.assertEqual(value[:4], b"\x02\x00\x04\x28")
        self.assertEqual(
            decode_address_error(value), FamilyRefused(IPV6, 440, "Address Family not Supported")
        )

    def test_address_error_code_malformed(self) -> None:
        """Too short, an unknown family and codes out of range are decode errors."""
        for bad in (b"\x02\x00\x04", b"\x07\x00\x04\x28", b"\x02\x00\x02\x00", b"\x02\x00\x04\x64"):
            with self.assertRaises(StunDecodeError):
                decode_address_error(bad)
        with self.assertRaises(StunEncodeError):
            encode_address_error(IPV6, 200, "OK")

    def test_address_errors_both_codepoints(self) -> None:
        """ADDRESS-ERROR-CODE is read at 0x8001 and coturn's 0x8033, once per family."""
        message = StunMessage.request(Method.ALLOCATE).success_response()
        message.add(DRAFT_ADDRESS_ERROR_CODE, encode_address_error(IPV6, 508, "Full"))
        self.assertEqual(get_address_errors(message), [FamilyRefused(IPV6, 508, "Full")])

    def test_xor_peer_address_v6_on_the_wire(self) -> None:
        """An IPv6 XOR-PEER-ADDRESS is family 0x02, the port XORed with the cookie's top
        half and the address with the cookie and the transaction ID."""
        message = StunMessage.indication(Method.SEND, TID)
        message.add_address(Attr.XOR_PEER_ADDRESS, PEER6)
        raw = encode(message)
        value = raw[24:44]
        key = struct.pack("!I", MAGIC_COOKIE) + TID
        address = bytes.fromhex("20010db8" + "0" * 23 + "9")
        packed = bytes(a ^ b for a, b in zip(address, key, strict=True))
        self.assertEqual(value, struct.pack("!BBH", 0, 2, 7000 ^ 0x2112) + packed)
        self.assertEqual(decode(raw).get_address(Attr.XOR_PEER_ADDRESS), PEER6)

    def test_two_relayed_addresses(self) -> None:
        """Both XOR-RELAYED-ADDRESS of a dual allocation are read, in order; coturn's
        0.0.0.0:0 placeholder for a refused family is not a relayed address."""
        response = StunMessage.request(Method.ALLOCATE, TID).success_response()
        response.add_address(Attr.XOR_RELAYED_ADDRESS, RELAYED)
        response.add_address(Attr.XOR_RELAYED_ADDRESS, RELAYED6)
        self.assertEqual(get_relayed_addresses(decode(encode(response))), [RELAYED, RELAYED6])
        placeholder = StunMessage.request(Method.ALLOCATE, TID).success_response()
        placeholder.add_address(Attr.XOR_RELAYED_ADDRESS, ("0.0.0.0", 0))
        placeholder.add_address(Attr.XOR_RELAYED_ADDRESS, RELAYED6)
        self.assertEqual(get_relayed_addresses(decode(encode(placeholder))), [RELAYED6])

    def test_parse_families(self) -> None:
        """Families are read from names or numbers, in order; repeats and unknowns fail."""
        self.assertEqual(parse_families(["ipv6", "IPv4"]), (IPV6, IPV4))
        self.assertEqual(parse_families([1, "6"]), (IPV4, IPV6))
        for bad in ([], ["ipv4", "4"], ["ipx"], [True]):
            with self.assertRaises(ValueError):
                parse_families(bad)

    def test_auto(self) -> None:
        """ "auto" asks for both families, the server's first; an IPv4-mapped address
        (a dual-stack socket) counts as IPv4."""
        self.assertEqual(resolve_families("auto", "192.0.2.1"), (IPV4, IPV6))
        self.assertEqual(resolve_families("auto", "2001:db8::1"), (IPV6, IPV4))
        self.assertIs(own_family("::ffff:192.0.2.1"), IPV4)
        self.assertEqual(resolve_families("ipv6", "192.0.2.1"), (IPV6,))
        self.assertIsNone(resolve_families(None, "192.0.2.1"))


def requests(server: FakeTurnServer, method: int) -> list[StunMessage]:
    return [m for _, m in server.requests(method)]


class AllocationFamilyTests(SynchronousTestCase, AllocatedMixin):
    """TurnAllocation asking for one family, or both, and its peers' families."""

    def dual_server(self, **kwargs: Any) -> tuple[Clock, FakeTurnServer, TurnAllocation]:
        clock, server, allocation = make(**kwargs)
        server.relay_families = {IPV4, IPV6}
        server.dual_codepoint = DRAFT_ADDITIONAL_ADDRESS_FAMILY
        return clock, server, allocation

    def allocate(self, clock: Clock, allocation: TurnAllocation) -> Any:
        d = allocation.allocate()
        pump(clock)
        return self.successResultOf(d)

    def test_requested_family(self) -> None:
        """families=["ipv6"] sends REQUESTED-ADDRESS-FAMILY IPv6 and gets an IPv6 relay
        while we talk to the server over IPv4."""
        clock, server, allocation = self.dual_server(families=["ipv6"])
        allocated = self.allocate(clock, allocation)
        self.assertEqual(allocated.relayed, RELAYED6)
        self.assertEqual(allocated.relayed_addresses, (RELAYED6,))
        allocate = requests(server, Method.ALLOCATE)[-1]
        self.assertEqual(allocate.get(REQUESTED_ADDRESS_FAMILY), b"\x02\x00\x00\x00")
        self.assertFalse(allocate.has(DRAFT_ADDITIONAL_ADDRESS_FAMILY))
        self.close(clock, allocation)

    def test_relayed_is_the_first_relayed_address(self) -> None:
        """Allocated.relayed is the first of relayed_addresses, whatever replaces them; none at all is refused."""
        allocated = Allocated((RELAYED6, RELAYED), None, 600, SERVER)
        self.assertEqual(allocated.relayed, RELAYED6)
        self.assertEqual(
            dataclasses.replace(allocated, relayed_addresses=(RELAYED,)).relayed, RELAYED
        )
        with self.assertRaisesRegex(ValueError, "at least one relayed address"):
            Allocated((), None, 600, SERVER)

    def test_no_families_asks_nothing(self) -> None:
        """Without families the Allocate carries no family attribute (server default)."""
        clock, server, allocation = self.dual_server()
        self.assertEqual(self.allocate(clock, allocation).relayed_addresses, (RELAYED,))
        allocate = requests(server, Method.ALLOCATE)[-1]
        for attr in (REQUESTED_ADDRESS_FAMILY, ADDITIONAL_ADDRESS_FAMILY):
            self.assertFalse(allocate.has(attr))
        self.close(clock, allocation)

    def test_dual_allocation(self) -> None:
        """Both families: two relayed addresses, the preferred family first."""
        clock, server, allocation = self.dual_server(families=["ipv6", "ipv4"])
        allocated = self.allocate(clock, allocation)
        self.assertEqual(allocated.relayed_addresses, (RELAYED6, RELAYED))
        self.assertEqual(allocated.relayed, RELAYED6)
        self.assertEqual(allocated.refused, ())
        self.assertEqual(allocation.relayed_for(PEER4.host), RELAYED)
        self.assertEqual(allocation.relayed_for(PEER6.host), RELAYED6)
        self.close(clock, allocation)

    def test_dual_allocation_rfc_codepoints(self) -> None:
        """A server that knows RFC 8656's 0x8000 and 0x8001 (not coturn's) works too."""
        clock, server, allocation = self.dual_server(families=["ipv4", "ipv6"])
        server.dual_codepoint = ADDITIONAL_ADDRESS_FAMILY
        server.relay_families = {IPV4}
        allocated = self.allocate(clock, allocation)
        self.assertEqual(allocated.relayed_addresses, (RELAYED,))
        self.assertEqual(
            allocated.refused, (FamilyRefused(IPV6, 440, "Address Family not Supported"),)
        )
        self.close(clock, allocation)

    def test_one_family_refused(self) -> None:
        """A dual allocation whose IPv6 half the server refuses keeps IPv4 and names the
        refusal (coturn's placeholder and ADDRESS-ERROR-CODE at 0x8033)."""
        clock, server, allocation = self.dual_server(families=["ipv6", "ipv4"])
        server.relay_families = {IPV4}
        server.error_codepoint = DRAFT_ADDRESS_ERROR_CODE
        allocated = self.allocate(clock, allocation)
        self.assertEqual(allocated.relayed_addresses, (RELAYED,))
        (refused,) = allocated.refused
        self.assertEqual((refused.family, refused.code), (IPV6, 440))
        self.assertEqual(str(refused), "no IPv6 relayed address: 440 Address Family not Supported")
        self.close(clock, allocation)

    def test_release_family(self) -> None:
        """release_family gives one family of a dual allocation back (Refresh, LIFETIME 0,
        REQUESTED-ADDRESS-FAMILY) and keeps the other: that family's permission stops,
        its peers are refused here, the other family's go on."""
        clock, server, allocation = self.dual_server(families=["ipv4", "ipv6"])
        self.allocate(clock, allocation)
        bound = allocation.bind_channel(PEER6)
        pump(clock)
        self.successResultOf(bound)
        released = allocation.release_family("ipv6")
        pump(clock)
        self.assertIs(self.successResultOf(released), True)
        refresh = requests(server, Method.REFRESH)[-1]
        self.assertEqual(refresh.get_uint32(Attr.LIFETIME), 0)
        self.assertEqual(refresh.get(REQUESTED_ADDRESS_FAMILY), b"\x02\x00\x00\x00")
        self.assertEqual(server.allocated_families, {IPV4})
        self.assertEqual(allocation.state.value, "allocated")
        self.assertEqual(allocation.relayed_addresses, (RELAYED,))
        self.assertEqual(
            (allocation.peers.permissions, allocation.peers.channels), (frozenset(), {})
        )
        with self.assertRaises(OSError) as raised:
            allocation.send(b"x", PEER6)
        self.assertEqual(raised.exception.errno, errno.EAFNOSUPPORT)
        self.failureResultOf(allocation.create_permission(PEER6.host), PeerAddressFamilyMismatch)
        before = len(server.received)
        for _ in range(11):  # ten minutes: refreshes go on for IPv4, none for the IPv6 peer
            clock.advance(55)
            pump(clock)
        later = {m.method for _, m in server.received[before:]}
        self.assertIn(Method.REFRESH, later)
        self.assertFalse({Method.CREATE_PERMISSION, Method.CHANNEL_BIND} & later)
        permitted4 = allocation.create_permission(PEER4.host)
        pump(clock)
        self.successResultOf(permitted4)
        self.close(clock, allocation)

    def test_release_family_with_requests_under_way(self) -> None:
        """A permission and a channel still being installed for a peer of the family
        given back: their requests stop and their waiters fail, with the reason."""
        clock, server, allocation = self.dual_server(families=["ipv4", "ipv6"])
        self.allocate(clock, allocation)
        server.silent = True  # what is asked now goes unanswered
        permitting = allocation.create_permission(PEER6.host)
        binding = allocation.bind_channel(PEER6)
        server.silent = False
        released = allocation.release_family("ipv6")
        pump(clock)
        self.assertIs(self.successResultOf(released), True)
        for waiting in (permitting, binding):
            failure = self.failureResultOf(waiting, TurnError)
            self.assertIn("IPv6 relayed address was given back", str(failure.value))
        before = len(server.received)
        clock.advance(30)  # retransmissions would have gone out by now
        pump(clock)
        self.assertEqual(server.received[before:], [])
        self.close(clock, allocation)

    def test_release_family_refused_changes_nothing(self) -> None:
        """A server that refuses the per-family Refresh (420 from one of RFC 5766): False,
        both relayed addresses kept, the allocation not lost."""
        clock, server, allocation = self.dual_server(families=["ipv4", "ipv6"])
        self.allocate(clock, allocation)
        server.refuse = {Method.REFRESH: 420}
        released = allocation.release_family(IPV6)
        pump(clock)
        self.assertIs(self.successResultOf(released), False)
        self.assertEqual(allocation.state.value, "allocated")
        self.assertEqual(allocation.relayed_addresses, (RELAYED, RELAYED6))
        server.refuse = {}
        self.close(clock, allocation)

    def test_release_family_needs_another(self) -> None:
        """Only one of two relayed addresses can be given back; the last, or a family
        the allocation lacks, is an error at once and nothing is sent."""
        clock, server, allocation = self.dual_server(families=["ipv4"])
        self.allocate(clock, allocation)
        for family in ("ipv4", "ipv6"):
            failure = self.failureResultOf(allocation.release_family(family), TurnError)
            self.assertIn("close() gives back the last", str(failure.value))
        self.assertEqual(requests(server, Method.REFRESH), [])
        self.close(clock, allocation)
        self.failureResultOf(allocation.release_family("ipv4"), TurnError)

    def test_peer_of_refused_family(self) -> None:
        """A permission, channel or send toward a peer of a family without a relayed
        address fails here, naming the family and the server's refusal; nothing is sent."""
        clock, server, allocation = self.dual_server(families=["ipv4", "ipv6"])
        server.relay_families = {IPV4}
        self.allocate(clock, allocation)
        sent_before = len(server.received)
        error = self.failureResultOf(allocation.create_permission(PEER6.host)).value
        self.assertIsInstance(error, PeerAddressFamilyMismatch)
        self.assertEqual(error.code, 0)
        self.assertIn("no IPv6 relayed address", error.reason)
        self.assertIn("IPv6 peer 2001:db8::9", error.reason)
        failure = self.failureResultOf(allocation.bind_channel(PEER6))
        failure.trap(PeerAddressFamilyMismatch)
        with self.assertRaises(OSError) as raised:
            allocation.send(b"x", PEER6)
        self.assertEqual(raised.exception.errno, errno.EAFNOSUPPORT)
        pump(clock)
        self.assertEqual(len(server.received), sent_before)
        got: list[bytes] = []
        allocation.on_data(lambda data, peer: got.append(data))
        allocation.datagram_received(server.data_indication(PEER6, b"forged"), SERVER)
        self.assertEqual((got, allocation.stats.dropped), ([], 1))
        self.close(clock, allocation)

    def test_server_ignores_dual(self) -> None:
        """A server that knows no ADDITIONAL-ADDRESS-FAMILY gives one address; the other
        family is reported as ignored."""
        clock, server, allocation = self.dual_server(families=["ipv4", "ipv6"])
        server.dual_codepoint = None
        allocated = self.allocate(clock, allocation)
        self.assertEqual(allocated.relayed_addresses, (RELAYED,))
        (refused,) = allocated.refused
        self.assertEqual((refused.family, refused.code), (IPV6, 0))
        self.assertIn("ignored", str(refused))
        self.close(clock, allocation)

    def test_dual_refused_falls_back(self) -> None:
        """A 400 to the dual request: asked again for the preferred family alone, the
        other reported with the server's reason."""
        clock, server, allocation = self.dual_server(families=["ipv6", "ipv4"])
        server.refuse = {}
        original = server.answer

        def refuse_dual(request: StunMessage) -> Any:
            if request.method == Method.ALLOCATE and request.has(DRAFT_ADDITIONAL_ADDRESS_FAMILY):
                if request.has(Attr.MESSAGE_INTEGRITY):
                    return request.error_response(400, "No dual here"), server.key
            return original(request)

        server.answer = refuse_dual  # type: ignore[method-assign]
        allocated = self.allocate(clock, allocation)
        self.assertEqual(allocated.relayed_addresses, (RELAYED6,))
        self.assertEqual(allocated.refused, (FamilyRefused(IPV4, 400, "No dual here"),))
        last = requests(server, Method.ALLOCATE)[-1]
        self.assertEqual(last.get(REQUESTED_ADDRESS_FAMILY), b"\x02\x00\x00\x00")
        self.close(clock, allocation)

    def test_440(self) -> None:
        """440 to a single family: AddressFamilyNotSupported naming the family; the
        allocation is closed."""
        clock, server, allocation = make(families=["ipv6"])
        d = allocation.allocate()
        pump(clock)
        error = self.failureResultOf(d, AddressFamilyNotSupported).value
        self.assertEqual((error.code, error.families), (440, (IPV6,)))
        self.assertIn("cannot allocate a relayed address of IPv6", str(error))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_443(self) -> None:
        """443 from the server: PeerAddressFamilyMismatch with code 443."""
        clock, server, allocation = self.dual_server(families=["ipv4", "ipv6"])
        self.allocate(clock, allocation)
        server.allocated_families = {IPV4}  # the server forgot the IPv6 half
        d = allocation.create_permission(PEER6.host)
        pump(clock)
        error = self.failureResultOf(d, PeerAddressFamilyMismatch).value
        self.assertEqual(error.code, 443)
        self.assertIn("relays IPv4 and IPv6 only", error.reason)
        self.close(clock, allocation)

    def test_v6_peer_data_both_ways(self) -> None:
        """Through an IPv6 relay: a Send indication with an IPv6 XOR-PEER-ADDRESS, a Data
        indication from an IPv6 peer, then a channel and ChannelData both ways."""
        clock, server, allocation = self.dual_server(families=["ipv6"])
        self.allocate(clock, allocation)
        got: list[tuple[bytes, Address]] = []
        allocation.on_data(lambda data, peer: got.append((data, peer)))
        allocation.send(b"hello", PEER6)
        pump(clock)
        self.assertEqual(server.permissions, {PEER6.host})
        self.assertEqual(server.indications, [(PEER6, b"hello")])
        allocation.datagram_received(server.data_indication(PEER6, b"hi"), SERVER)
        number = self.successResultOf(_pumped(clock, allocation.bind_channel(PEER6)))
        self.assertEqual(server.channels[number], PEER6)
        allocation.send(b"on channel", PEER6)
        self.assertEqual(server.channel_data[-1][:2], (number, b"on channel"))
        allocation.datagram_received(struct.pack("!HH", number, 3) + b"abc" + b"\x00", SERVER)
        self.assertEqual(got, [(b"hi", PEER6), (b"abc", PEER6)])
        self.close(clock, allocation)


def _pumped(clock: Clock, d: Any) -> Any:
    pump(clock)
    return d


class RelaysFamilyTests(SynchronousTestCase):
    """The ICE agent's relays (holepunch.ice.relays.Relays) with a dual allocation on
    the agent's socket."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = FakeTurnServer(self.clock)
        self.server.relay_families = {IPV4, IPV6}
        self.server.dual_codepoint = DRAFT_ADDITIONAL_ADDRESS_FAMILY
        turn = TurnServer(SERVER.host, SERVER.port, "udp", "alice", "correct horse")
        self.relays = Relays(self.clock, RelayConfig(servers=[turn], liveness_interval=0))
        self.delivered: list[tuple[bytes, tuple[str, int], int]] = []
        self.refused: list[tuple[int, str, str]] = []
        self.lost: list[int] = []

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        self.server(data, address)

    def deliver_to_relays(self, raw: bytes) -> None:
        self.relays.demultiplex(raw, SERVER)

    def allocate(self) -> Any:
        # The fake server answers whatever allocation it is told about: the relays'.
        self.server.deliver = self.deliver_to_relays  # type: ignore[method-assign]
        d = defer.ensureDeferred(self.relays.allocate(self.write, udp_blocked=False))
        pump(self.clock)
        allocation = self.successResultOf(d)
        self.assertIsNotNone(allocation)
        return allocation

    def add_both(self, allocation: Any) -> None:
        for via, relayed in enumerate(allocation.allocated.relayed_addresses, start=1):
            self.relays.add(
                via,
                allocation,
                lambda data, peer, via: self.delivered.append((data, peer, via)),
                lambda via, error: self.lost.append(via),
                relayed=relayed,
            )

    def test_auto_is_dual_own_family_first(self) -> None:
        """By default an allocation asks for both families, the server's family first."""
        allocation = self.allocate()
        self.assertEqual(allocation.allocated.relayed_addresses, (RELAYED, RELAYED6))
        allocate = requests(self.server, Method.ALLOCATE)[-1]
        self.assertTrue(allocate.has(ADDITIONAL_ADDRESS_FAMILY))
        self.relays.close()
        pump(self.clock, 300)

    def test_one_via_per_family(self) -> None:
        """Each relayed address is a via: data from a peer goes to its family's via,
        sends and permissions across families are refused without asking the server."""
        allocation = self.allocate()
        self.add_both(allocation)
        self.assertEqual(self.relays.allocations, [allocation])
        self.assertEqual(self.relays.siblings(1), [2])
        self.relays.permit(PEER6.host, None, lambda v, h, r: self.refused.append((v, h, r)))
        pump(self.clock)
        self.assertEqual(self.server.permissions, {PEER6.host})
        self.assertEqual([(v, h) for v, h, _ in self.refused], [(1, PEER6.host)])
        self.assertIn("address family mismatch", self.refused[0][2])
        self.deliver_to_relays(self.server.data_indication(PEER6, b"six"))
        self.deliver_to_relays(self.server.data_indication(PEER4, b"four"))
        self.assertEqual(
            self.delivered,
            [(b"six", (PEER6.host, PEER6.port), 2), (b"four", (PEER4.host, PEER4.port), 1)],
        )
        with self.assertRaises(OSError):
            self.relays.send(1, b"x", (PEER6.host, PEER6.port))
        self.assertTrue(self.relays.send(2, b"y", (PEER6.host, PEER6.port)))
        pump(self.clock)
        self.assertEqual(self.server.indications[-1], (PEER6, b"y"))
        self.relays.close()
        pump(self.clock, 300)

    def test_release_one_family(self) -> None:
        """Releasing one family's via keeps the allocation for the other and gives that
        family's relayed address back to the server; releasing the last closes it."""
        allocation = self.allocate()
        self.add_both(allocation)
        self.assertTrue(self.relays.release(2))
        pump(self.clock)
        self.assertEqual(allocation.state.value, "allocated")
        self.assertEqual(self.server.allocated_families, {IPV4})
        self.assertEqual(allocation.relayed_addresses, (RELAYED,))
        self.assertTrue(self.relays.release(1))
        pump(self.clock, 300)
        self.assertEqual(allocation.state.value, "closed")

    def test_lost_together(self) -> None:
        """A lost dual allocation is reported once (the first via); lost() forgets both."""
        allocation = self.allocate()
        self.add_both(allocation)
        self.server.refuse = {Method.REFRESH: 437}
        allocation.refresh().addErrback(lambda _: None)
        pump(self.clock)
        self.assertEqual(self.lost, [1])
        self.assertEqual(self.relays.siblings(1), [2])
        self.assertIsNotNone(self.relays.lost(1))
        self.assertNotIn(2, self.relays)

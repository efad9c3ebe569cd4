# -*- test-case-name: tests.integration.test_turn_families_coturn -*-
"""IPv4 and IPv6 through a real coturn on loopback (RFC 8656 address families).

Each test starts its own ``turnserver`` (lab.coturn) listening on 127.0.0.1 and ::1,
relaying from the families the test asks for, and plain UDP echo peers that listen
only on ::1 or only on 127.0.0.1: a v4 client reaches a v6-only peer through a v6
relay, a v6 client a v4-only peer through a v4 relay, a dual allocation both, and a
family the server does not relay is refused clearly. Skipped, with a one-line reason,
where coturn is not installed.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase

from holepunch.ice.agent import IceAgent
from holepunch.ice.config import RelayConfig
from holepunch.ice.connection import PeerConnection
from holepunch.ice.relays import Relays
from holepunch.stun.wire import Address
from holepunch.testing.loopback import connect_loopback_agents
from holepunch.turn import (
    AddressFamily,
    AddressFamilyNotSupported,
    PeerAddressFamilyMismatch,
    TurnAllocation,
    TurnServer,
    open_allocation,
    parse_turn_uri,
)
from lab.coturn import LOOPBACK, LOOPBACK6, Coturn, coturn_fixture, coturn_unavailable_reason
from tests.datagram_peers import WAIT, Arrivals, EchoPeer

reactor: Any = _reactor


class Received(Arrivals[tuple[bytes, Address]]):
    """What comes through an allocation, in order (:meth:`next`)."""

    def __init__(self, allocation: TurnAllocation) -> None:
        super().__init__(reactor)
        allocation.on_data(lambda data, peer: self.arrived((data, peer)))


def refused_when_closed(address: Address, every: float = 0.1) -> Deferred[None]:
    """Fires once nothing listens on UDP ``address`` any more: a datagram sent there
    every ``every`` seconds from a connected, non-blocking socket is refused (ICMP port
    unreachable comes back as ECONNREFUSED on the next send). The socket is not given
    to the reactor, whose epoll would take the error for the end of the socket."""
    probe = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET,
                          socket.SOCK_DGRAM)  # fmt: skip
    probe.setblocking(False)
    probe.connect((address.host, address.port))
    closed: Deferred[None] = Deferred()

    def send() -> None:
        try:
            probe.send(b"probe")
        except ConnectionRefusedError:
            sending.stop()
            closed.callback(None)

    sending = LoopingCall(send)
    sending.clock = reactor
    sending.start(every)

    def stop(result: object) -> object:
        if sending.running:
            sending.stop()
        probe.close()
        return result

    return closed.addBoth(stop)


class CoturnFamilies(TestCase):
    """Helpers: coturn on both loopbacks, echo peers of one family, allocations."""

    timeout = 30

    def setUp(self) -> None:
        reason = coturn_unavailable_reason()
        if reason is not None:
            self.skipTest(reason)

    def coturn(self, relay: tuple[str, ...] = (LOOPBACK, LOOPBACK6)) -> Coturn:
        return coturn_fixture(self, listen=(LOOPBACK, LOOPBACK6), relay=relay)

    def peer(self, host: str) -> tuple[EchoPeer, Address]:
        echo = EchoPeer(reactor)
        port = reactor.listenUDP(0, echo, interface=host)
        self.addCleanup(port.stopListening)
        return echo, Address(host, port.getHost().port)

    def server(self, coturn: Coturn, host: str) -> TurnServer:
        return parse_turn_uri(coturn.uri("udp", host), coturn.user or "", coturn.password or "")

    async def open(self, server: TurnServer, families: Any) -> TurnAllocation:
        allocation = await open_allocation(server, reactor=reactor, families=families)
        self.addCleanup(allocation.close)
        return allocation


class FamiliesTestCase(CoturnFamilies):
    """TurnAllocation asking coturn for one family, or both."""

    async def exchange(self, allocation: TurnAllocation, echo: EchoPeer, peer: Address) -> None:
        """Data both ways with ``peer``: Send/Data indications, then a channel."""
        received = Received(allocation)
        relayed = allocation.relayed_for(peer.host)
        assert relayed is not None
        allocation.send(b"indication", peer)
        data, source = await echo.next()
        self.assertEqual((data, source), (b"indication", (relayed.host, relayed.port)))
        self.assertEqual(await received.next(), (b"echo:indication", peer))
        await allocation.bind_channel(peer)
        allocation.send(b"channel", peer)
        data, source = await echo.next()
        self.assertEqual((data, source), (b"channel", (relayed.host, relayed.port)))
        self.assertEqual(await received.next(), (b"echo:channel", peer))
        self.assertGreaterEqual(allocation.stats.channel_data_sent, 1)

    async def test_v4_client_v6_relay(self) -> None:
        """A client on 127.0.0.1 asks for an IPv6 relay and talks to a peer that
        listens only on ::1, through Send/Data and through a channel."""
        coturn = self.coturn()
        echo, peer = self.peer(LOOPBACK6)
        allocation = await self.open(self.server(coturn, LOOPBACK), ["ipv6"])
        self.assertEqual(allocation.relayed_address.host, LOOPBACK6)  # type: ignore[union-attr]
        self.assertEqual(allocation.mapped_address.host, LOOPBACK)  # type: ignore[union-attr]
        await self.exchange(allocation, echo, peer)

    async def test_v6_client_v4_relay(self) -> None:
        """A client on ::1 (turn:[::1]:PORT, an IPv6 socket) asks for an IPv4 relay and
        talks to a peer that listens only on 127.0.0.1."""
        coturn = self.coturn()
        echo, peer = self.peer(LOOPBACK)
        server = self.server(coturn, LOOPBACK6)
        self.assertTrue(server.uri.startswith("turn:[::1]:"))
        allocation = await self.open(server, ["ipv4"])
        self.assertEqual(allocation.relayed_address.host, LOOPBACK)  # type: ignore[union-attr]
        self.assertEqual(allocation.mapped_address.host, LOOPBACK6)  # type: ignore[union-attr]
        await self.exchange(allocation, echo, peer)

    async def test_dual_allocation(self) -> None:
        """ "auto" from a v4 client: one allocation, two relayed addresses (IPv4 first),
        each reaching the peer of its family."""
        coturn = self.coturn()
        echo4, peer4 = self.peer(LOOPBACK)
        echo6, peer6 = self.peer(LOOPBACK6)
        allocation = await self.open(self.server(coturn, LOOPBACK), "auto")
        allocated = allocation.allocated
        assert allocated is not None
        self.assertEqual(allocated.families, (AddressFamily.IPV4, AddressFamily.IPV6))
        self.assertEqual([a.host for a in allocated.relayed_addresses], [LOOPBACK, LOOPBACK6])
        self.assertEqual(allocated.refused, ())
        await self.exchange(allocation, echo4, peer4)
        await self.exchange(allocation, echo6, peer6)

    async def test_release_family(self) -> None:
        """Giving the IPv6 half of a dual allocation back: it carried data before, coturn
        closes it after (a datagram sent to it is refused), and the IPv4 half still
        carries data both ways."""
        coturn = self.coturn()
        echo4, peer4 = self.peer(LOOPBACK)
        echo6, peer6 = self.peer(LOOPBACK6)
        allocation = await self.open(self.server(coturn, LOOPBACK), "auto")
        relayed6 = allocation.relayed_for(LOOPBACK6)
        assert relayed6 is not None
        await self.exchange(allocation, echo6, peer6)
        self.assertIs(await allocation.release_family("ipv6"), True)
        allocated = allocation.allocated
        assert allocated is not None
        self.assertEqual(allocated.families, (AddressFamily.IPV4,))
        # coturn takes LIFETIME 0 as one second: the address closes when it is up.
        await refused_when_closed(relayed6).addTimeout(5, reactor)
        await self.exchange(allocation, echo4, peer4)

    async def test_refused_family_in_dual(self) -> None:
        """A server that relays only IPv4: the dual allocation keeps IPv4, names the IPv6
        refusal (440), and a permission for an IPv6 peer fails here, clearly."""
        coturn = self.coturn(relay=(LOOPBACK,))
        echo4, peer4 = self.peer(LOOPBACK)
        allocation = await self.open(self.server(coturn, LOOPBACK6), ["ipv6", "ipv4"])
        allocated = allocation.allocated
        assert allocated is not None
        self.assertEqual([a.host for a in allocated.relayed_addresses], [LOOPBACK])
        (refused,) = allocated.refused
        self.assertEqual((refused.family, refused.code), (AddressFamily.IPV6, 440))
        with self.assertRaises(PeerAddressFamilyMismatch) as raised:
            await allocation.create_permission(LOOPBACK6)
        self.assertIn("no IPv6 relayed address: 440", str(raised.exception))
        await self.exchange(allocation, echo4, peer4)

    async def test_refused_family(self) -> None:
        """Asking a server that relays only IPv4 for an IPv6 relay fails with
        AddressFamilyNotSupported (440)."""
        coturn = self.coturn(relay=(LOOPBACK,))
        with self.assertRaises(AddressFamilyNotSupported) as raised:
            await open_allocation(self.server(coturn, LOOPBACK), reactor=reactor, families=["ipv6"])
        self.assertEqual(raised.exception.code, 440)
        self.assertIn("IPv6", str(raised.exception))

    async def test_peer_family_mismatch_from_server(self) -> None:
        """coturn's 443 to a permission for a family the allocation lacks reaches the
        caller as PeerAddressFamilyMismatch (the local check is bypassed by pretending
        the allocation has an IPv6 half, so that the request goes out)."""
        coturn = self.coturn()
        allocation = await self.open(self.server(coturn, LOOPBACK), ["ipv4"])
        assert allocation.allocated is not None
        fake6 = Address(LOOPBACK6, 9)
        allocation.allocated = dataclasses.replace(
            allocation.allocated,
            relayed_addresses=(*allocation.allocated.relayed_addresses, fake6),
        )
        with self.assertRaises(PeerAddressFamilyMismatch) as raised:
            await allocation.create_permission(LOOPBACK6)
        self.assertEqual(raised.exception.code, 443)


class AgentSocket(DatagramProtocol):
    """The ICE agent's one socket, as far as its relays see it: what the relays do not
    take is kept."""

    def __init__(self, relays: Relays) -> None:
        self.relays = relays
        self.other: list[bytes] = []

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.write(data, address)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if not self.relays.demultiplex(datagram, (addr[0], addr[1])):
            self.other.append(datagram)


class RelaysTestCase(CoturnFamilies):
    """The ICE agent's relays (holepunch.ice.relays) on one socket, against coturn."""

    async def test_one_candidate_per_family(self) -> None:
        """By default one allocation from the agent's IPv4 socket gets a relayed address
        per family; each is a via that reaches the peer of its family, and data from
        each peer comes back on its family's via."""
        coturn = self.coturn()
        echo4, peer4 = self.peer(LOOPBACK)
        echo6, peer6 = self.peer(LOOPBACK6)
        config = RelayConfig(servers=[self.server(coturn, LOOPBACK)], liveness_interval=0)
        relays = Relays(reactor, config)
        sock = AgentSocket(relays)
        port = reactor.listenUDP(0, sock, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        self.addCleanup(relays.close)
        allocation = await relays.allocate(sock.write, udp_blocked=False)
        self.assertIsNotNone(allocation)
        arrived: dict[int, Deferred[tuple[bytes, tuple[str, int]]]] = {1: Deferred(), 2: Deferred()}

        def deliver(data: bytes, peer: tuple[str, int], via: int) -> None:
            arrived[via].callback((data, peer))

        relayed = allocation.allocated.relayed_addresses
        self.assertEqual([a.host for a in relayed], [LOOPBACK, LOOPBACK6])
        for via, address in enumerate(relayed, start=1):
            relays.add(via, allocation, deliver, relayed=address)
        refused: list[tuple[int, str]] = []
        for via, echo, peer in ((1, echo4, peer4), (2, echo6, peer6)):
            relays.permit(peer.host, None, lambda v, h, why: refused.append((v, h)))
            self.assertEqual(refused[-1], (3 - via, peer.host))  # the other family's via
            await allocation.create_permission(peer.host)
            self.assertTrue(relays.send(via, b"hello", (peer.host, peer.port)))
            data, source = await echo.next()
            self.assertEqual(source, (relayed[via - 1].host, relayed[via - 1].port))
            got = await arrived[via].addTimeout(WAIT, reactor)
            self.assertEqual(got, (b"echo:hello", (peer.host, peer.port)))


class AgentAcrossFamiliesTests(CoturnFamilies):
    """Whole ICE agents: a v4-only agent reaches a v6-only one through coturn's IPv6
    relayed address (relayed pairs only), and an agent on a dual-stack socket (``::``)
    allocates over it with its IPv4 server address unmapped."""

    async def connect(self, coturn: Coturn, a_hosts: tuple[str, ...], b_host: str) -> Any:
        server = self.server(coturn, LOOPBACK)
        relay = RelayConfig(servers=(server,), only=True, wait=0.0, liveness_interval=0)
        ca, cb = await connect_loopback_agents(self, reactor, a_hosts, b_host, relay=relay)
        agent = ca.agent
        assert isinstance(agent, IceAgent)
        relayed = sorted(c.host for c in agent.local_candidates if c.type == "relay")
        return ca, cb, relayed

    async def carries(self, ca: PeerConnection, cb: PeerConnection) -> None:
        got: Deferred[bytes] = Deferred()
        cb.on_datagram(lambda data: got.callback(data) if not got.called else None)
        ca.send(b"across the families")
        self.assertEqual(await got.addTimeout(WAIT, reactor), b"across the families")

    async def test_v4_agent_reaches_v6_agent_through_a_v6_relay(self) -> None:
        coturn = self.coturn()
        ca, cb, relayed = await self.connect(coturn, (LOOPBACK,), LOOPBACK6)
        self.assertEqual(relayed, [LOOPBACK, LOOPBACK6])
        self.assertEqual(ca.method, "turn-relay")
        self.assertEqual(ca.local[0], LOOPBACK6)  # the v6 relayed address carries it
        await self.carries(ca, cb)

    async def test_dual_stack_socket_allocates_over_ipv4(self) -> None:
        coturn = self.coturn()
        ca, cb, relayed = await self.connect(coturn, (LOOPBACK, LOOPBACK6), LOOPBACK6)
        self.assertEqual(relayed, [LOOPBACK, LOOPBACK6])
        agent = ca.agent
        assert isinstance(agent, IceAgent)
        # The server saw us at 127.0.0.1 (its answers matched our IPv4 transactions,
        # not ::ffff:127.0.0.1): every relayed candidate's base says so.
        bases = {c.related_address for c in agent.local_candidates if c.type == "relay"}
        self.assertEqual(bases, {LOOPBACK})
        self.assertEqual(ca.method, "turn-relay")
        await self.carries(ca, cb)

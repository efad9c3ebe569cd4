# -*- test-case-name: tests.integration.test_turn_coturn -*-
"""Integration tests of holepunch.turn against a real coturn on 127.0.0.1.

Each test starts its own ``turnserver`` (lab.coturn: random free ports,
files in a temporary directory, stopped on cleanup) and relays to a plain UDP echo peer on
127.0.0.1. Skipped, with a one-line reason, where coturn is not installed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.ssl import Certificate
from twisted.trial.unittest import TestCase

from holepunch.stun.client import TransactionTable, parse_binding_response
from holepunch.stun.framing import is_stun
from holepunch.stun.message import StunMessage, decode
from holepunch.stun.wire import Address
from holepunch.turn import (
    NoTurnServerAvailable,
    TurnAllocation,
    TurnAuthError,
    TurnError,
    TurnServer,
    TurnTimers,
    allocate_first,
    open_allocation,
    parse_turn_uri,
)
from lab.coturn import (
    Coturn,
    coturn_fixture,
    coturn_unavailable_reason,
    make_test_certificate,
)
from tests.datagram_peers import EchoPeer

LOOPBACK = "127.0.0.1"
reactor: Any = _reactor


class SharedSocket(DatagramProtocol):
    """A socket the test owns, as the ICE agent does: its own STUN transactions, plus
    whatever allocations are attached."""

    def __init__(self) -> None:
        self.transactions = TransactionTable(self._send, reactor)
        self.allocations: list[TurnAllocation] = []
        self.other: list[bytes] = []

    def _send(self, data: bytes, address: tuple[str, int]) -> None:
        self.write(data, address)

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.write(data, (address[0], address[1]))

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        source = Address(addr[0], addr[1])
        if is_stun(datagram) and self.transactions.handle(decode(datagram), source):
            return
        for allocation in self.allocations:
            if allocation.datagram_received(datagram, source):
                return
        self.other.append(datagram)


async def wait_for(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await task.deferLater(reactor, 0.02, lambda: None)


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class CoturnTestCase(TestCase):
    timeout = 30

    def setUp(self) -> None:
        reason = coturn_unavailable_reason()
        if reason is not None:
            self.skipTest(reason)
        self.echo = EchoPeer(reactor)
        self.echo_port = reactor.listenUDP(0, self.echo, interface=LOOPBACK)
        self.addCleanup(self.echo_port.stopListening)
        self.peer = Address(LOOPBACK, self.echo_port.getHost().port)

    def coturn(self, **kwargs: Any) -> Coturn:
        return coturn_fixture(self, **kwargs)

    def server(self, coturn: Coturn, transport: str = "udp") -> TurnServer:
        return parse_turn_uri(coturn.uri(transport), coturn.user or "", coturn.password or "")

    async def open(self, server: TurnServer, **kwargs: Any) -> TurnAllocation:
        kwargs.setdefault("interface", LOOPBACK)
        kwargs.setdefault("reactor", reactor)
        allocation = await open_allocation(server, **kwargs)
        self.addCleanup(allocation.close)
        return allocation

    async def assert_relays(self, allocation: TurnAllocation, channel: bool) -> None:
        """Data goes to the echo peer through the relay and its answer comes back."""
        got: list[tuple[bytes, Address]] = []
        allocation.on_data(lambda data, peer: got.append((data, peer)))
        if channel:
            await allocation.bind_channel(self.peer)
        payload = b"via channel" if channel else b"via indication"
        before = allocation.stats.channel_data_sent
        allocation.send(payload, self.peer)
        await wait_for(lambda: (b"echo:" + payload, self.peer) in got)
        relayed = allocation.relayed_address
        assert relayed is not None
        self.assertIn((payload, (relayed.host, relayed.port)), self.echo.received)
        if channel:
            self.assertEqual(allocation.stats.channel_data_sent, before + 1)


class UdpTests(CoturnTestCase):
    """Allocations over UDP: relaying, sharing a socket, refresh, stale nonce, refusals."""

    async def test_allocation_and_relay(self) -> None:
        """Allocate, then relay both ways by Send/Data indication and by ChannelData."""
        coturn = self.coturn()
        allocation = await self.open(self.server(coturn))
        relayed, mapped = allocation.relayed_address, allocation.mapped_address
        assert relayed is not None and mapped is not None
        self.assertEqual(relayed.host, LOOPBACK)
        self.assertNotEqual(relayed.port, coturn.port)
        self.assertEqual(mapped.host, LOOPBACK)
        self.assertEqual(allocation.allocated.lifetime, 600)  # type: ignore[union-attr]
        await self.assert_relays(allocation, channel=False)
        await self.assert_relays(allocation, channel=True)
        self.assertEqual(allocation.channels, {self.peer: 0x4000})
        self.assertGreaterEqual(allocation.stats.data_received, 2)

    async def test_shared_socket_and_deallocation(self) -> None:
        """On a caller's socket, Binding answers stay with the caller; close() deallocates, so the same socket can allocate again (437 before)."""
        coturn = self.coturn()
        shared = SharedSocket()
        port = reactor.listenUDP(0, shared, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        server = Address(LOOPBACK, coturn.port)

        def allocation() -> TurnAllocation:
            a = TurnAllocation(server, shared.write, reactor, username="user", password="secret")
            shared.allocations.append(a)
            return a

        first = allocation()
        granted = await first.allocate()
        binding = await shared.transactions.request(StunMessage.request(), server)
        self.assertEqual(parse_binding_response(binding).mapped, granted.mapped)
        self.assertEqual(granted.mapped, Address(LOOPBACK, port.getHost().port))
        await self.assert_relays(first, channel=True)
        self.assertEqual(shared.other, [])
        with self.assertRaises(TurnError) as caught:
            await allocation().allocate()  # this 5-tuple has an allocation already
        self.assertEqual(caught.exception.code, 437)
        await first.close()
        # coturn keeps answering 437 for about a second after the deallocation: ask again
        # until it grants one (each refused attempt is over, nothing of it stays).
        deadline = time.monotonic() + 5.0
        while True:
            second = allocation()
            try:
                await second.allocate()
                break
            except TurnError as e:
                shared.allocations.remove(second)
                if e.code != 437 or time.monotonic() > deadline:
                    raise
                await sleep(0.1)
        self.addCleanup(second.close)
        await self.assert_relays(second, channel=False)
        self.assertEqual(shared.other, [])

    async def test_refresh_keeps_everything_alive(self) -> None:
        """With 3 s lifetimes on the server, refreshed allocation, permission and channel still relay after 4 s; unrefreshed ones do not."""
        coturn = self.coturn(
            extra_args=[
                "--max-allocate-lifetime=3",
                "--permission-lifetime=3",
                "--channel-lifetime=3",
            ]
        )
        timers = TurnTimers(permission_refresh=1.2, channel_refresh=1.2)
        kept = await self.open(self.server(coturn), timers=timers)
        idle = await self.open(self.server(coturn), timers=TurnTimers())
        self.assertEqual(kept.allocated.lifetime, 3)  # type: ignore[union-attr]
        await kept.bind_channel(self.peer)
        await kept.create_permission(self.peer.host)
        await idle.create_permission(self.peer.host)
        await sleep(4.0)
        self.assertGreaterEqual(kept.stats.refreshes, 1)
        self.assertGreaterEqual(kept.stats.permission_refreshes, 2)
        self.assertGreaterEqual(kept.stats.channel_refreshes, 2)
        await self.assert_relays(kept, channel=True)
        idle.send(b"too late", self.peer)  # its permission has expired: coturn drops it
        # Then a marker through the same allocation to the same peer (binding a channel
        # permits the peer again): coturn handles one client's datagrams in order and
        # the relay socket sends to the echo peer in order, so once the marker is there
        # a relayed "too late" would be there before it.
        await self.assert_relays(idle, channel=True)
        self.assertNotIn(b"too late", [d for d, _ in self.echo.received])

    async def test_stale_nonce(self) -> None:
        """With --stale-nonce=1, requests after the nonce expired are retried with the new one."""
        coturn = self.coturn(extra_args=["--stale-nonce=1"])
        allocation = await self.open(self.server(coturn))
        await sleep(2.2)  # coturn counts whole seconds: stale after 2 s
        await allocation.create_permission(self.peer.host)
        self.assertEqual(allocation.stats.stale_nonce_retries, 1)
        self.assertEqual(await allocation.refresh(), 600)
        await self.assert_relays(allocation, channel=False)

    async def test_wrong_password(self) -> None:
        """A wrong password fails quickly with a TurnAuthError that says so."""
        coturn = self.coturn()
        server = self.server(coturn).with_credentials("user", "not the password")
        started = time.monotonic()
        with self.assertRaises(TurnAuthError) as caught:
            await self.open(server)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertIn("wrong username or password", str(caught.exception))
        self.assertIn("'user'", str(caught.exception))

    async def test_rest_api_credentials(self) -> None:
        """Credentials minted from coturn's static-auth-secret work; expired ones are refused."""
        coturn = self.coturn(auth_secret="s3cret")
        base = TurnServer(LOOPBACK, coturn.port)
        now = reactor.seconds()
        good = base.with_rest_api_credentials("s3cret", "alice", 600, now)
        allocation = await self.open(good)
        await self.assert_relays(allocation, channel=True)
        expired = base.with_rest_api_credentials("s3cret", "alice", 60, now - 3600)
        with self.assertRaises(TurnAuthError):
            await self.open(expired)
        wrong = base.with_rest_api_credentials("other secret", "alice", 600, now)
        with self.assertRaises(TurnAuthError):
            await self.open(wrong)

    async def test_alternate_server(self) -> None:
        """A 300 ALTERNATE-SERVER from coturn is followed, over UDP and over TCP."""
        target = self.coturn()
        redirector = self.coturn(extra_args=[f"--alternate-server={LOOPBACK}:{target.port}"])
        for transport in ("udp", "tcp"):
            allocation = await self.open(self.server(redirector, transport))
            self.assertEqual(allocation.server.port, target.port)
            self.assertEqual(allocation.stats.redirects, 1)
            await self.assert_relays(allocation, channel=True)


class StreamTests(CoturnTestCase):
    """Allocations over TCP and TLS."""

    async def test_tcp(self) -> None:
        """Over TCP: allocation, indication and (padded) ChannelData both ways, refresh, close."""
        coturn = self.coturn()
        allocation = await self.open(self.server(coturn, "tcp"))
        self.assertTrue(allocation.stream)
        await self.assert_relays(allocation, channel=False)
        await self.assert_relays(allocation, channel=True)
        allocation.send(b"odd", self.peer)  # 3 bytes: padded to 4 on the stream
        await wait_for(lambda: b"odd" in [d for d, _ in self.echo.received])
        self.assertEqual(await allocation.refresh(), 600)
        await allocation.close()
        self.assertEqual(allocation.state.value, "closed")

    async def test_tls(self) -> None:
        """Over TLS (turns:) with a generated certificate checked against the server's name."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        certificate = make_test_certificate(directory, names=["localhost"], ips=[LOOPBACK])
        coturn = self.coturn(certificate=certificate)
        trust = Certificate.loadPEM(certificate.ca_pem)
        server = TurnServer(
            "localhost", coturn.tls_port or 0, "tls", username="user", password="secret"
        )
        allocation = await self.open(server, trust_root=trust)
        await self.assert_relays(allocation, channel=False)
        await self.assert_relays(allocation, channel=True)

        wrong_name = TurnServer(
            LOOPBACK,
            coturn.tls_port or 0,
            "tls",
            username="user",
            password="secret",
            tls_name="turn.example.org",
        )
        with self.assertRaises(TurnError) as caught:
            await self.open(wrong_name, trust_root=trust, timeout=5)
        self.assertIn("turn.example.org", str(caught.exception))
        untrusted = TurnServer("localhost", coturn.tls_port or 0, "tls", "user", "secret")
        with self.assertRaises(TurnError) as caught:
            await self.open(untrusted, timeout=5)
        self.assertIn("certificate verify failed", str(caught.exception))


class FailoverTests(CoturnTestCase):
    """Several servers: a dead one costs its timeout and no more."""

    async def test_dead_first_server(self) -> None:
        """A UDP port that never answers is abandoned after its timeout; the live second server then allocates at once."""
        coturn = self.coturn()
        silent = reactor.listenUDP(0, DatagramProtocol(), interface=LOOPBACK)
        self.addCleanup(silent.stopListening)
        dead = TurnServer(LOOPBACK, silent.getHost().port, username="user", password="secret")
        live = self.server(coturn)
        timeout = 1.5
        started = time.monotonic()
        allocation = await allocate_first(
            [dead, live], reactor=reactor, timeout=timeout, interface=LOOPBACK
        )
        elapsed = time.monotonic() - started
        self.addCleanup(allocation.close)
        self.assertEqual(allocation.server.port, coturn.port)
        self.assertGreaterEqual(elapsed, timeout)
        self.assertLess(elapsed, timeout + 0.5)
        await self.assert_relays(allocation, channel=True)

    async def test_all_dead(self) -> None:
        """With no live server the failure names each server and comes after the sum of timeouts."""
        silent = reactor.listenUDP(0, DatagramProtocol(), interface=LOOPBACK)
        self.addCleanup(silent.stopListening)
        dead = TurnServer(LOOPBACK, silent.getHost().port, username="u", password="p")
        refused = TurnServer(LOOPBACK, silent.getHost().port, "tcp", username="u", password="p")
        started = time.monotonic()
        with self.assertRaises(NoTurnServerAvailable) as caught:
            await allocate_first([dead, refused], reactor=reactor, timeout=0.5)
        self.assertLess(time.monotonic() - started, 1.5)
        self.assertEqual(len(caught.exception.failures), 2)

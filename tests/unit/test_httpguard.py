"""The HTTP guard's cap on connections per address (holepunch.httpguard), in memory."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from holepunch.httpguard import GuardedSite

ALICE = IPv4Address("TCP", "192.0.2.1", 40000)
BOB = IPv4Address("TCP", "192.0.2.2", 40000)


class PerAddressCapTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.site = GuardedSite(Resource(), max_connections_per_address=2, reactor=self.clock)

    def connect(self, address: IPv4Address) -> Any:
        channel = self.site.buildProtocol(address)
        if channel is not None:
            channel.makeConnection(StringTransport(peerAddress=address))
        return channel

    def test_cap(self) -> None:
        """An address at the cap is refused (and counted); another address is not."""
        self.connect(ALICE)
        self.connect(ALICE)
        self.assertIsNone(self.connect(ALICE))
        self.assertIsNotNone(self.connect(BOB))
        self.assertEqual(self.site.refused, 1)
        self.assertEqual(dict(self.site.per_address), {"192.0.2.1": 2, "192.0.2.2": 1})

    def test_closed_connection_frees_its_slot(self) -> None:
        """A closed connection leaves the count: its address may connect again."""
        first = self.connect(ALICE)
        self.connect(ALICE)
        first.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(dict(self.site.per_address), {"192.0.2.1": 1})
        self.assertIsNotNone(self.connect(ALICE))

    def test_handed_over_leaves_the_count(self) -> None:
        """A connection handed over (to WebSocket) leaves the count once, not again on close."""
        first = self.connect(ALICE)
        first.handed_over()
        self.assertEqual(dict(self.site.per_address), {})
        first.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(dict(self.site.per_address), {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_cap(self) -> None:
        """Without a cap every connection is let in."""
        site = GuardedSite(Resource(), max_connections_per_address=None, reactor=self.clock)
        channels = [site.buildProtocol(ALICE) for _ in range(100)]
        self.assertNotIn(None, channels)
        self.assertEqual((site.refused, len(site.per_address)), (0, 1))

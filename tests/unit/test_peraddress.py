"""The count of open connections per address, with its cap (holepunch.peraddress)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from holepunch.peraddress import ConnectionsPerAddress


class ConnectionsPerAddressTests(SynchronousTestCase):
    def test_counts_by_address(self) -> None:
        """Each address counts its own connections; a mapping of those that hold any."""
        counts = ConnectionsPerAddress()
        for host in ("192.0.2.1", "192.0.2.1", "2001:db8::1"):
            counts.add(host)
        self.assertEqual(dict(counts), {"192.0.2.1": 2, "2001:db8::1": 1})
        self.assertEqual(len(counts), 2)
        self.assertNotIn("192.0.2.9", counts)

    def test_removed_at_zero(self) -> None:
        """An address whose last connection closed is no longer in the count."""
        counts = ConnectionsPerAddress()
        counts.add("192.0.2.1")
        counts.add("192.0.2.1")
        counts.remove("192.0.2.1")
        self.assertEqual(dict(counts), {"192.0.2.1": 1})
        counts.remove("192.0.2.1")
        self.assertEqual(dict(counts), {})

    def test_remove_unknown(self) -> None:
        """Removing an address that holds nothing leaves the count empty, not negative."""
        counts = ConnectionsPerAddress()
        counts.remove("192.0.2.1")
        self.assertEqual(dict(counts), {})
        counts.add("192.0.2.1")
        self.assertEqual(counts["192.0.2.1"], 1)

    def test_cap(self) -> None:
        """An address is full at the cap, and no longer once one of its connections closes."""
        counts = ConnectionsPerAddress(2)
        counts.add("192.0.2.1")
        self.assertFalse(counts.full("192.0.2.1"))
        counts.add("192.0.2.1")
        self.assertTrue(counts.full("192.0.2.1"))
        self.assertFalse(counts.full("192.0.2.2"))
        counts.remove("192.0.2.1")
        self.assertFalse(counts.full("192.0.2.1"))

    def test_no_cap(self) -> None:
        """Without a cap no address is ever full."""
        counts = ConnectionsPerAddress(None)
        for _ in range(1000):
            counts.add("192.0.2.1")
        self.assertFalse(counts.full("192.0.2.1"))
        self.assertEqual(counts["192.0.2.1"], 1000)

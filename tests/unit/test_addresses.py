"""holepunch.addresses: the package's one set of textual-address helpers."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from holepunch.addresses import format_address, ip_version, split_host_port, unmapped


class AddressTests(SynchronousTestCase):
    def test_split_host_port(self) -> None:
        cases = {
            "[2001:db8::1]:3478": ("2001:db8::1", "3478"),
            "[2001:db8::1]": ("2001:db8::1", ""),
            "example.org:8080": ("example.org", "8080"),
            "192.0.2.1": ("192.0.2.1", ""),
            "2001:db8::1": ("2001:db8::1", ""),
        }
        for text, expected in cases.items():
            self.assertEqual(split_host_port(text), expected, text)
        for bad in ("[2001:db8::1", "[::1]x"):
            self.assertRaises(ValueError, split_host_port, bad)

    def test_format_round_trips(self) -> None:
        for address in (("2001:db8::1", 3478), ("192.0.2.1", 80)):
            host, port = split_host_port(format_address(address))
            self.assertEqual((host, int(port)), address)

    def test_versions_and_unmapping(self) -> None:
        self.assertEqual([ip_version(h) for h in ("", "192.0.2.1", "fe80::1%eth0")], [4, 4, 6])
        self.assertRaises(ValueError, ip_version, "example.org")
        self.assertEqual(unmapped("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(unmapped("2001:db8::1"), "2001:db8::1")

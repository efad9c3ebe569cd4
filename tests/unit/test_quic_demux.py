"""First-byte demultiplexing of STUN, TURN ChannelData and QUIC (RFC 7983, RFC 9443)."""

from twisted.trial import unittest

from holepunch.quic.demux import classify


class ClassifyTests(unittest.TestCase):
    def test_ranges(self):
        """Each first byte falls in the range RFC 9443 section 2 gives it."""
        for value in range(256):
            kind = classify(value)
            if value <= 3:
                self.assertEqual(kind, "stun", value)
            elif value >= 64:
                self.assertEqual(kind, "quic", value)
            else:
                self.assertEqual(kind, "unknown", value)

    def test_channel_data_by_source(self):
        """64..79 is ChannelData only from a TURN server; QUIC otherwise."""
        for value in range(64, 80):
            self.assertEqual(classify(value, from_turn_server=True), "channel-data")
            self.assertEqual(classify(value), "quic")
        self.assertEqual(classify(80, from_turn_server=True), "quic")
        self.assertEqual(classify(0, from_turn_server=True), "stun")

    def test_datagram(self):
        """A datagram is classified by its first byte; empty is unknown."""
        self.assertEqual(classify(b"\x00\x01rest"), "stun")
        self.assertEqual(classify(b"\xc0rest"), "quic")
        self.assertEqual(classify(b""), "unknown")

    def test_out_of_range(self):
        """A value that is not a byte is a ValueError."""
        self.assertRaises(ValueError, classify, 256)
        self.assertRaises(ValueError, classify, -1)

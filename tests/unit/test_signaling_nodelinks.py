"""The record format of the worker links (holepunch.signaling.nodelinks), sans-I/O."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from holepunch.signaling.nodelinks import (
    MAX_RECORD,
    LinkError,
    RecordReader,
    encode_record,
    usable_node_id,
)

RECORDS = [
    ("bob", b'{"type":"offer","from":"alice","offer":{}}'),
    ("\u00e9t\u00e9", b""),
    ("x", b"y" * 70000),
]


class RecordReaderTests(SynchronousTestCase):
    def test_every_cut(self) -> None:
        """The same records in order, whatever the sizes of the reads."""
        data = b"".join(encode_record(to, message) for to, message in RECORDS)
        for size in (1, 2, 5, 7, 100, len(data)):
            reader = RecordReader()
            got = []
            for i in range(0, len(data), size):
                got += reader.feed(data[i : i + size])
            self.assertEqual(got, RECORDS, size)

    def test_bad_lengths(self) -> None:
        """A record longer than MAX_RECORD, or a peer id longer than its record, is bad."""
        with self.assertRaises(LinkError):
            RecordReader().feed(struct.pack("!IH", MAX_RECORD + 1, 1))
        with self.assertRaises(LinkError):
            RecordReader().feed(struct.pack("!IH", 3, 2))

    def test_peer_id_not_utf8(self) -> None:
        """A peer id that is not UTF-8 is bad."""
        with self.assertRaises(LinkError):
            RecordReader().feed(struct.pack("!IH", 3, 1) + b"\xff")

    def test_usable_node_id(self) -> None:
        """Node ids name sockets only with safe characters and a short enough path."""
        self.assertTrue(usable_node_id("/tmp/d", "0123abcdef"))
        self.assertFalse(usable_node_id("/tmp/d", "../x"))
        self.assertFalse(usable_node_id("/tmp/" + "d" * 100, "node"))

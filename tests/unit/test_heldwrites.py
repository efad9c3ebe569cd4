"""Writes held while a read is handled (holepunch.signaling.heldwrites), without sockets."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from holepunch.signaling.heldwrites import HeldWrites, HoldingWriter


class RecordingWriter(HoldingWriter):
    """Holds through a given :class:`HeldWrites` and records each write it makes."""

    def __init__(self, held: HeldWrites, name: str, log: list[tuple[str, bytes]]) -> None:
        self.held, self.name, self.log = held, name, log

    def write(self, data: bytes) -> None:
        if self.held.depth:
            self.hold(data)
        else:
            self.log.append((self.name, data))

    def flush_held(self) -> None:
        data = self.take_held()
        if data:
            self.log.append((self.name, data))


class HeldWritesTests(SynchronousTestCase):
    def setUp(self) -> None:
        import holepunch.signaling.heldwrites as heldwrites

        self.held = HeldWrites()
        self.patch(heldwrites, "held", self.held)  # HoldingWriter enlists in this one
        self.log: list[tuple[str, bytes]] = []
        self.a = RecordingWriter(self.held, "a", self.log)
        self.b = RecordingWriter(self.held, "b", self.log)

    def test_written_at_once_outside_a_read(self) -> None:
        """Outside a read nothing is held."""
        self.a.write(b"x")
        self.assertEqual((self.log, self.held.holders), ([("a", b"x")], []))

    def test_held_until_the_read_is_done(self) -> None:
        """Writes during a read go out when it is done, each writer's in one write, in
        the order the writers first wrote."""
        self.held.read_started()
        self.b.write(b"1")
        self.a.write(b"2")
        self.b.write(b"3")
        self.assertEqual(self.log, [])
        self.held.read_done()
        self.assertEqual(self.log, [("b", b"13"), ("a", b"2")])
        self.assertEqual((self.held.depth, self.held.holders), (0, []))

    def test_nested_reads(self) -> None:
        """Only the outermost read's end releases what is held."""
        self.held.read_started()
        self.a.write(b"1")
        self.held.read_started()
        self.a.write(b"2")
        self.held.read_done()
        self.assertEqual(self.log, [])
        self.held.read_done()
        self.assertEqual(self.log, [("a", b"12")])

    def test_take_held_empties(self) -> None:
        """take_held gives what is held once; after it nothing is held."""
        self.held.read_started()
        self.a.write(b"1")
        self.assertEqual(self.a.take_held(), b"1")
        self.assertEqual(self.a.take_held(), b"")
        self.held.read_done()
        self.assertEqual(self.log, [])

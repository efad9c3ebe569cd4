"""Writes held while a read is handled (holepunch.signaling.heldwrites), without sockets."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from holepunch.signaling.heldwrites import BACK_TO_BACK, HeldWrites, HoldingWriter


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


class RunningClock(Clock):
    """A fake reactor that says it is running (a turn exists only while one runs)."""

    running = True


class BackToBackTests(SynchronousTestCase):
    """Reads that come back to back (a batch of ready sockets) are held to the end of the
    reactor's turn; a read that comes alone is written at its end."""

    def setUp(self) -> None:
        import holepunch.signaling.heldwrites as heldwrites

        self.now = 100.0
        self.held = HeldWrites(monotonic=lambda: self.now)
        self.patch(heldwrites, "held", self.held)
        self.log: list[tuple[str, bytes]] = []
        self.a = RecordingWriter(self.held, "a", self.log)
        self.b = RecordingWriter(self.held, "b", self.log)
        self.turns = RunningClock()

    def read(self, writer: RecordingWriter, data: bytes, after: float) -> None:
        """A read that starts ``after`` seconds after the previous one ended, takes no
        time, and makes ``writer`` write ``data``."""
        self.now += after
        self.held.read_started(self.turns)
        writer.write(data)
        self.held.read_done()

    def test_alone(self) -> None:
        """Reads with a wait between them: each written at its end, no timer."""
        self.read(self.a, b"1", after=1e-3)
        self.read(self.b, b"2", after=1e-3)
        self.assertEqual(self.log, [("a", b"1"), ("b", b"2")])
        self.assertEqual(self.turns.getDelayedCalls(), [])

    def test_back_to_back_held_to_the_end_of_the_turn(self) -> None:
        """The first read of a batch goes out at its end; the ones right after it wait
        for the turn's end, then go out together, each writer's in one write, in order."""
        self.read(self.a, b"1", after=1e-3)
        self.read(self.b, b"2", after=BACK_TO_BACK / 5)
        self.read(self.a, b"3", after=BACK_TO_BACK / 5)
        self.read(self.b, b"4", after=BACK_TO_BACK / 5)
        self.assertEqual(self.log, [("a", b"1")])
        self.assertEqual(len(self.turns.getDelayedCalls()), 1)  # one timer for the batch
        self.assertEqual(self.held.depth, 1)
        self.a.write(b"5")  # a write outside a read, during the turn: after what is held
        self.turns.advance(0)
        self.assertEqual(self.log, [("a", b"1"), ("b", b"24"), ("a", b"35")])
        self.assertEqual((self.held.depth, self.held.holders), (0, []))
        self.read(self.b, b"6", after=1e-3)  # alone again
        self.assertEqual(self.log[-1], ("b", b"6"))

    def test_threshold(self) -> None:
        """A read 40 µs after the previous one's end is one of a batch by default (the
        reactor's dispatch and ``recv`` between two ready sockets took that long on one
        machine measured), and alone for a writes-holder given 25 µs."""
        self.read(self.a, b"1", after=1e-3)
        self.read(self.b, b"2", after=40e-6)
        self.assertEqual(self.log, [("a", b"1")])
        self.turns.advance(0)
        self.held.back_to_back = 25e-6
        self.read(self.a, b"3", after=1e-3)
        self.read(self.b, b"4", after=40e-6)
        self.assertEqual(self.log, [("a", b"1"), ("b", b"2"), ("a", b"3"), ("b", b"4")])
        self.assertEqual(self.turns.getDelayedCalls(), [])

    def test_no_writes_no_timer(self) -> None:
        """A back-to-back read that wrote nothing leaves nothing to wait for."""
        self.read(self.a, b"1", after=1e-3)
        self.now += BACK_TO_BACK / 5
        self.held.read_started(self.turns)
        self.held.read_done()
        self.assertEqual((self.turns.getDelayedCalls(), self.held.depth), ([], 0))

    def test_not_running_or_no_reactor(self) -> None:
        """Without a running reactor (a clock in a test, a factory without one) every
        read is written at its end, however close together."""
        self.turns.running = False
        self.read(self.a, b"1", after=1e-3)
        self.read(self.b, b"2", after=0.0)
        self.held.read_started(None)
        self.a.write(b"3")
        self.held.read_done()
        self.assertEqual(self.log, [("a", b"1"), ("b", b"2"), ("a", b"3")])
        self.assertEqual(self.turns.getDelayedCalls(), [])


class AloneTests(SynchronousTestCase):
    """``alone``: a read that may write at once, holding nothing."""

    def setUp(self) -> None:
        self.now = 100.0
        self.held = HeldWrites(monotonic=lambda: self.now)
        self.turns = RunningClock()

    def test_after_a_wait(self) -> None:
        """A read that starts a wait after the previous one's end is alone; one that
        starts right after a read taken alone is not (it is one of a batch)."""
        self.now += 1e-3
        self.assertTrue(self.held.alone(self.turns))
        self.held.alone_done()
        self.now += BACK_TO_BACK / 5
        self.assertFalse(self.held.alone(self.turns))
        self.now += BACK_TO_BACK
        self.assertTrue(self.held.alone(self.turns))

    def test_timed_from_a_held_read(self) -> None:
        """A read right after the end of a held read is not alone either."""
        self.held.read_started(self.turns)
        self.held.read_done()
        self.now += BACK_TO_BACK / 5
        self.assertFalse(self.held.alone(self.turns))

    def test_not_during_a_read(self) -> None:
        """A read nested in another (or in a turn being held) is never alone: the outer
        one holds the writes."""
        self.held.read_started(None)
        self.assertFalse(self.held.alone(None))
        self.held.read_done()
        self.assertTrue(self.held.alone(None))

    def test_not_running_or_no_reactor(self) -> None:
        """Without a running reactor every read outside another is alone."""
        self.held.alone_done()
        self.assertTrue(self.held.alone(None))
        self.turns.running = False
        self.assertTrue(self.held.alone(self.turns))

# -*- test-case-name: tests.unit.test_heldwrites,tests.unit.test_websocket_frames -*-
"""Writes held while a read is handled, then sent in one go, straight to the socket.

A read on one connection (a WebSocket client's, a link from another worker) makes the
server write to other connections: relays, replies. Writing each at once costs a system
call each; handing each to Twisted's ``transport.write`` costs two more (Twisted queues
the bytes, registers the socket for writability, sends on the next reactor turn and
unregisters it). So the protocols that read (``QuietWebSocketServerProtocol``, the
worker links of :mod:`holepunch.signaling.nodelinks`) call :meth:`HeldWrites.read_started`
and :meth:`HeldWrites.read_done` around the handling of a read; the writers they cause
(:class:`HoldingWriter`) hold their bytes and enlist in :data:`held`; when the outermost
read is done, each writer sends what it holds with one :func:`write_through`.

Reads that come back to back (the reactor going through a batch of sockets that were all
ready at once: the backlog after a pause) are held together, to the end of the reactor's
turn: the relays of the whole batch then go out one after the other, and the process at
the other end, woken by the first, takes the rest without being woken again for each.
A read that comes alone (after the reactor waited) is written at once, with no timer;
when it is one message, there is nothing to gather its writes with, and the reader can ask
:meth:`HeldWrites.alone` and let them go out as they are made, holding nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import tcp


class HoldsWrites(Protocol):
    """A writer holding bytes until the read under way is handled."""

    def flush_held(self) -> None:
        """Write what is held (in one write), in order."""


def write_through(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sending at once what the socket takes when the transport
    is a plain TCP connection with nothing queued (Twisted would queue it all and send it
    on the next reactor turn, registering the socket for writability and unregistering
    it again: two ``epoll_ctl`` calls). What the socket does not take is queued as
    ``write`` queues it, in order; on any other transport this is ``write``.

    Reads Twisted's own record of what it has queued (``dataBuffer``, ``_tempDataLen``
    of ``tcp.Connection``): there is no public way to ask.
    """
    if (
        isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport.TLS
        and not transport.dataBuffer
        and not getattr(transport, "_tempDataLen", 1)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN, or a broken connection Twisted will find and report
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


BACK_TO_BACK = 60e-6
"""A read that starts less than this long (seconds) after the previous one ended did not
wait for the reactor: it is part of a batch of ready sockets. Between two ready sockets
the reactor dispatches and the next read's ``recv`` runs: 10-20 µs on one machine
measured here, 35-55 µs on another whose system calls cost more (docs/benchmarks.md); a
read that waited for its data came later than that. Taking a read that came alone for
one of a batch costs little: its writes go out at the start of the next turn, which
comes at once."""


class HeldWrites:
    """The writers holding bytes while reads are handled.

    One per process (reads run one at a time on the reactor thread): ``depth`` counts
    the reads under way (and the turn being held, below); a writer that holds bytes
    while it is above 0 enlists in ``holders`` (once). A reader brackets its work with
    :meth:`read_started` and, in a ``finally``, :meth:`read_done`; when ``depth`` comes
    back to 0 what is held is released. (Two plain calls rather than a ``with`` block:
    this runs on every read of every connection.)

    A reader that passes its running reactor as ``turns`` lets back-to-back reads be
    held together: when the outermost read started within ``back_to_back`` of the
    previous one's end, the end of this read holds on (``depth`` stays 1) until a
    ``callLater(0)`` at the start of the reactor's next turn, after every socket of
    the batch was read. Without ``turns`` (a reactor that is not running, a clock in
    a test) every read releases at its end.
    """

    __slots__ = (
        "_batched",
        "_last_end",
        "_monotonic",
        "back_to_back",
        "depth",
        "holders",
        "turns_held",
    )

    def __init__(
        self, monotonic: Callable[[], float] = time.perf_counter, back_to_back: float = BACK_TO_BACK
    ) -> None:
        self.back_to_back = back_to_back
        """Reads that start less than this long after the previous one ended are held
        together (:data:`BACK_TO_BACK` by default)."""
        self.depth = 0
        self.holders: list[HoldsWrites] = []
        self.turns_held = 0
        """How many times back-to-back reads were held to the end of a turn."""
        self._monotonic = monotonic
        self._last_end = -1.0
        self._batched: Any = None
        """The reactor of a read that came back to back, until its end."""

    def read_started(self, turns: Any = None) -> None:
        """A read is being handled: writes are held until it is done (and, given the
        running reactor as ``turns``, to the end of the turn when it came back to back
        with the previous read)."""
        if not self.depth and turns is not None and getattr(turns, "running", False):
            if self._monotonic() - self._last_end < self.back_to_back:
                self._batched = turns
        self.depth += 1

    def alone(self, turns: Any = None) -> bool:
        """Whether a read starting now may write at once, holding nothing: no read is
        under way, and (given the running reactor as ``turns``) it did not come back to
        back with the previous one. A reader that takes this way calls :meth:`alone_done`
        at its end instead of bracketing with :meth:`read_started` and :meth:`read_done`;
        it suits a read whose writes there is nothing to gather with (one message)."""
        if self.depth:
            return False
        if turns is None or not getattr(turns, "running", False):
            return True
        return self._monotonic() - self._last_end >= self.back_to_back

    def alone_done(self) -> None:
        """The read :meth:`alone` let through is handled: the next one is timed from now."""
        self._last_end = self._monotonic()

    def read_done(self) -> None:
        """The read begun by the matching :meth:`read_started` is handled; if it was the
        outermost, every holder writes what it holds (or, in a batch, they wait for the
        end of the turn)."""
        self.depth -= 1
        if self.depth:
            return
        self._last_end = self._monotonic()
        batched, self._batched = self._batched, None
        if batched is not None and self.holders:
            self.depth = 1
            self.turns_held += 1
            batched.callLater(0, self.read_done)  # the turn's end: depth back to 0
            return
        if self.holders:
            self.release()

    def release(self) -> None:
        """Every holder writes what it holds."""
        holders, self.holders = self.holders, []
        for writer in holders:
            writer.flush_held()


held = HeldWrites()
"""The process's writes held while reads are handled."""


class HoldingWriter:
    """A mixin for a protocol whose writes are held while a read is handled.

    :meth:`hold` keeps bytes (enlisting the writer in :data:`held` the first time);
    the class's :meth:`flush_held` takes them back, joined, with :meth:`take_held`, and
    writes them (with whatever it counts on the way).
    """

    _held_chunks: list[bytes] | None = None

    def hold(self, data: bytes) -> None:
        """Keep ``data`` until the read under way is handled (after what is held)."""
        chunks = self._held_chunks
        if chunks is None:
            self._held_chunks = [data]
            held.holders.append(self)
        else:
            chunks.append(data)

    def take_held(self) -> bytes:
        """What is held, joined (``b""`` when nothing is); it is no longer held."""
        chunks = self._held_chunks
        if chunks is None:
            return b""
        self._held_chunks = None
        return b"".join(chunks)

    def flush_held(self) -> None:
        """Write what :meth:`take_held` gives, in one write (the protocol's to define)."""
        raise NotImplementedError

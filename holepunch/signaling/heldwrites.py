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
"""

from __future__ import annotations

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


class HeldWrites:
    """The writers holding bytes while reads are handled.

    One per process (reads run one at a time on the reactor thread): ``depth`` counts
    the reads under way; a writer that holds bytes while it is above 0 enlists in
    ``holders`` (once). A reader brackets its work with :meth:`read_started` and, in a
    ``finally``, :meth:`read_done`; the read that brings ``depth`` back to 0 releases
    what is held. (Two plain calls rather than a ``with`` block: this runs on every read
    of every connection.)
    """

    __slots__ = ("depth", "holders")

    def __init__(self) -> None:
        self.depth = 0
        self.holders: list[HoldsWrites] = []

    def read_started(self) -> None:
        """A read is being handled: writes are held until it is done."""
        self.depth += 1

    def read_done(self) -> None:
        """The read begun by the matching :meth:`read_started` is handled; if it was the
        outermost, every holder writes what it holds."""
        self.depth -= 1
        if not self.depth and self.holders:
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

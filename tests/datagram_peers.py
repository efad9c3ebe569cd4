"""Plain UDP peers for tests that relay datagrams (TURN, ICE): an echo peer and a queue
of arrivals to wait on, each wait bounded."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol

T = TypeVar("T")

WAIT = 5.0
"""The longest a test waits for the next arrival, seconds."""


class Arrivals(Generic[T]):
    """Things that arrive, in order; :meth:`next` fires with the next one (at most
    ``timeout`` seconds later, else TimeoutError)."""

    def __init__(self, reactor: Any, timeout: float = WAIT) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.waiting: list[Deferred[T]] = []
        self.queue: list[T] = []

    def arrived(self, item: T) -> None:
        if self.waiting:
            self.waiting.pop(0).callback(item)
        else:
            self.queue.append(item)

    def next(self) -> Deferred[T]:
        if self.queue:
            return defer.succeed(self.queue.pop(0))
        d: Deferred[T] = Deferred()
        self.waiting.append(d)
        return d.addTimeout(self.timeout, self.reactor)


class EchoPeer(DatagramProtocol):
    """A plain UDP peer: answers each datagram with ``echo:`` + it, keeps every one in
    ``received`` and hands them out in order through :meth:`next`."""

    def __init__(self, reactor: Any) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.arrivals: Arrivals[tuple[bytes, tuple[str, int]]] = Arrivals(reactor)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.write(b"echo:" + datagram, addr)
        item = (datagram, (addr[0], addr[1]))
        self.received.append(item)
        self.arrivals.arrived(item)

    def next(self) -> Deferred[tuple[bytes, tuple[str, int]]]:
        return self.arrivals.next()

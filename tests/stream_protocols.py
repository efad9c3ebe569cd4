"""Small protocols the stream tests share: one that collects, one that echoes."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol


class Collect(protocol.Protocol):
    """Keeps what arrives; ``done`` fires with it when the peer half-closes (or the
    stream is lost)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.data))

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.data))


class Echo(protocol.Protocol):
    """Writes back what arrives; half-closes when the peer does."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseWriteConnection()  # type: ignore[attr-defined]

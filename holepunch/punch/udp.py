# -*- test-case-name: tests.integration.test_coordinator -*-
"""The one-sided UDP punch: reach a peer known only by its address (a DHT, a tracker).

Both sides send toward each other's address until one hears the other; no ICE, no
signaling. :class:`DirectConnection` is the resulting path, with the
:class:`Channel <holepunch.ice.connection.Channel>` API of every connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol

from holepunch.ice.connection import Channel


class PunchTimeout(Exception):
    """The peer did not answer the punch in time."""


PUNCH_MARKER = b"holepunch:punch"
"""What a one-sided punch sends until the peer answers (it is never delivered as data)."""


class DirectConnection(DatagramProtocol, Channel):
    """A UDP path to a peer reached at its registered address (no ICE, no signaling).

    The :class:`Channel <holepunch.ice.connection.Channel>` API; used for peers known only
    by address (a DHT, a tracker) when both sides punch toward each other.
    """

    def __init__(self, reactor: Any, remote: tuple[str, int]) -> None:
        Channel.__init__(self, "udp-hole-punch", ("", 0), remote, None)
        self.reactor = reactor
        self.ready: defer.Deferred[DirectConnection] = defer.Deferred()
        self._sent_at = 0.0

    def punch(self) -> None:
        if self.transport is not None and not self.closed:
            self._sent_at = self.reactor.seconds()
            self.transport.write(PUNCH_MARKER, self.remote)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if (addr[0], addr[1]) != self.remote or self.closed:
            return
        if not self.ready.called:
            self.rtt = self.reactor.seconds() - self._sent_at
            self.punch()  # make sure the peer hears from us too
            self.ready.callback(self)
        if datagram != PUNCH_MARKER:
            self.deliver(datagram)

    def transmit(self, data: bytes) -> None:
        if self.transport is None:
            raise OSError("socket closed")
        self.transport.write(data, self.remote)

    def release(self) -> defer.Deferred[None]:
        port: Any = self.transport
        if port is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.maybeDeferred(port.stopListening)
        return d


async def one_sided_punch(
    reactor: Any,
    remote: tuple[str, int],
    *,
    interface: str = "",
    port: int = 0,
    timeout: float = 30.0,
    interval: float = 0.2,
) -> DirectConnection:
    """Send to ``remote`` every ``interval`` until it answers (or ``timeout``).

    This opens our NAT toward the peer; it works when the peer is reachable (no NAT, a
    full cone, a forwarded port) or is punching toward us at the same time.

    :raises PunchTimeout: no answer within ``timeout``.
    """
    from twisted.internet.task import LoopingCall

    connection = DirectConnection(reactor, remote)
    listening = reactor.listenUDP(port, connection, interface=interface)
    host = listening.getHost()
    connection.local = (host.host, host.port)
    loop = LoopingCall(connection.punch)
    loop.clock = reactor
    loop.start(interval)
    connection.ready.addTimeout(timeout, reactor)
    try:
        await connection.ready
    except defer.TimeoutError:
        await connection.close("no answer")
        raise PunchTimeout(f"{remote[0]}:{remote[1]} did not answer within {timeout:g}s") from None
    except BaseException:
        await connection.close("cancelled")
        raise
    finally:
        if loop.running:
            loop.stop()
    return connection


__all__ = ["PUNCH_MARKER", "DirectConnection", "PunchTimeout", "one_sided_punch"]

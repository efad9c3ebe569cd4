# -*- test-case-name: tests.unit.test_httpguard,tests.integration.test_signaling_integration -*-
"""Limits on the plain HTTP side of the daemon's TCP ports: a deadline for each request
head and a cap on the connections one address may hold open.

twisted.web's own idle timeout restarts with every byte, so a client that sends one
header line every few seconds keeps a connection (and a file descriptor) for as long as
it likes; and the signaling server's per-address limit is applied only once a WebSocket
handshake arrives. :class:`GuardedSite` closes those gaps for every HTTP port the daemon
serves (the signaling port and ``--http``):

- the request head (request line and headers) must be complete within
  ``head_timeout`` seconds of the connection opening, or of the previous response
  ending (an idle keep-alive connection is closed after as long); else the connection
  is aborted;
- one address may have at most ``max_connections_per_address`` connections in the HTTP
  phase; more are closed as soon as they are accepted. A connection that becomes a
  WebSocket (:meth:`GuardedChannel.handed_over`) leaves the count: the signaling
  server counts it from then on (its own ``max_connections_per_address``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site

from holepunch.peraddress import ConnectionsPerAddress

_log = Logger()

DEFAULT_HEAD_TIMEOUT = 10.0
"""Seconds a client has to send a whole request head."""


def address_host(address: object) -> str:
    """The host part of a peer address (the whole address for non-IP ones)."""
    return str(getattr(address, "host", address))


class GuardedChannel(HTTPChannel):
    """An ``HTTPChannel`` with a request-head deadline that counts itself per address."""

    site: GuardedSite
    _deadline: IDelayedCall | None = None
    _counted_host: str | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    def allHeadersReceived(self) -> None:
        self._disarm()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        if self.persistent:
            self._arm()  # before the next pipelined head, which super() feeds in
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        self._release()
        super().connectionLost(reason)

    def handed_over(self) -> None:
        """Another protocol (WebSocket) took the connection: stop timing and counting it."""
        self._disarm()
        self._release()

    def _arm(self) -> None:
        self._disarm()
        timeout = self.site.head_timeout
        if timeout is not None and self.transport is not None:
            self._deadline = self.callLater(timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        self.site.heads_timed_out += 1
        transport: Any = self.transport
        if transport is not None:
            _log.debug("closing {peer}: no request head within the deadline",
                       peer=transport.getPeer())  # fmt: skip
            transport.abortConnection()

    def _release(self) -> None:
        if self._counted_host is not None:
            self.site.per_address.remove(self._counted_host)
            self._counted_host = None


class GuardedSite(Site):
    """A twisted.web ``Site`` whose channels are :class:`GuardedChannel`.

    ``head_timeout`` None: no deadline; ``max_connections_per_address`` None: no cap.
    ``per_address`` counts the connections in the HTTP phase; ``refused`` and
    ``heads_timed_out`` count what the guard did.
    """

    protocol = GuardedChannel  # type: ignore[assignment]  # HTTP/1.1 only (no h2 here)

    def __init__(
        self,
        resource: Resource,
        *,
        head_timeout: float | None = DEFAULT_HEAD_TIMEOUT,
        max_connections_per_address: int | None = None,
        reactor: Any = None,
    ) -> None:
        super().__init__(resource, reactor=reactor)
        self.noisy = False
        self.head_timeout = head_timeout
        self.per_address = ConnectionsPerAddress(max_connections_per_address)
        self.refused = 0
        self.heads_timed_out = 0

    def buildProtocol(self, addr: IAddress | None) -> Any:
        host = address_host(addr)
        if self.per_address.full(host):
            self.refused += 1
            return None  # the reactor closes the connection at once
        channel = super().buildProtocol(addr)
        if channel is not None:
            self.per_address.add(host)
            channel._counted_host = host
        return channel


__all__ = ["DEFAULT_HEAD_TIMEOUT", "GuardedChannel", "GuardedSite", "address_host"]

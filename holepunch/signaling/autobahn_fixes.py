# -*- test-case-name: tests.unit.test_signaling_client,tests.unit.test_signaling_protocol -*-
"""Small fixes to Autobahn's Twisted protocols shared by our server and client.

- :func:`cancel_close_timer`: no closing-handshake timer outlives its connection.
- :class:`QuietWebSocketServerProtocol`: Autobahn's server protocol without the per-message
  costs we do not use. Autobahn formats the arguments of a ``log.debug`` call on every
  read and every write (``hltype``/``hlval``, which style text with ``click``) even when
  debug logging is off and the call does nothing, and fires a ``message`` event through
  txaio Deferreds for every message whether anyone listens or not. The overrides below
  skip exactly that work when it would be wasted, and call Autobahn's own method whenever
  its preconditions do not hold (debug logging on, octet logging, chopped or synchronous
  writes, a send queue, a state other than open, listeners on ``message``).
- :func:`release_http_channel`: after twisted.web hands a connection over to WebSocket,
  drop the HTTP channel that stays registered as the transport's producer.
"""

from __future__ import annotations

from typing import Any

import txaio
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.interfaces import IPushProducer

txaio.use_twisted()
from txaio import tx as _txaio_tx  # noqa: E402  (needs use_twisted() first)

# txaio binds a logger's disabled levels to this one function; when it cannot be found
# (another txaio), nothing compares equal to the sentinel and Autobahn's methods run.
_NO_OP: object = getattr(_txaio_tx, "_no_op", object())


def cancel_close_timer(protocol: Any) -> None:
    """Cancel Autobahn's closing-handshake timer once the connection is lost.

    Autobahn leaves that timer running when the TCP connection goes before the peer's
    close frame arrives; it would outlive the connection (and dirty trial's reactor).
    """
    call = getattr(protocol, "closeHandshakeTimeoutCall", None)
    if call is not None:
        protocol.closeHandshakeTimeoutCall = None
        call.cancel()


def debug_logging_off(log: Any) -> bool:
    """True when ``log.debug(...)`` (a txaio logger's) is a no-op."""
    return getattr(log, "debug", None) is _NO_OP


class QuietWebSocketServerProtocol(WebSocketServerProtocol):
    """Autobahn's server protocol minus its wasted per-message work (see the module doc).

    Behaviour is Autobahn's: the same bytes on the wire, the same traffic statistics,
    the same ``onMessage`` calls; only dropped debug-log formatting and the ``message``
    event nobody listens to are skipped.
    """

    logOctets: bool  # set from the factory's protocol options when the connection is made

    def dataReceived(self, data: bytes) -> None:
        if debug_logging_off(self.log):
            # Autobahn's dataReceived: log.debug(...) (formatted, then dropped), then this.
            self._dataReceived(data)
        else:
            super().dataReceived(data)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if (
            sync
            or chopsize
            or self.send_queue
            or self.logOctets
            or self.state != self.STATE_OPEN
            or not debug_logging_off(self.log)
        ):
            super().sendData(data, sync, chopsize)
            return
        # Autobahn's path for an unqueued write on an open connection, without log.debug.
        assert self.transport is not None
        self.transport.write(data)
        self.trafficStats.outgoingOctetsWireLevel += len(data)

    def onMessageEnd(self) -> None:
        if self._listeners or self._parent is not None:
            super().onMessageEnd()  # someone listens to the "message" event: fire it
            return
        # Autobahn's onMessageEnd without fire("message") and its Deferreds.
        if not self.failedByMe:
            payload = b"".join(self.message_data)
            if self.trackedTimings:
                self.trackedTimings.track("onMessage")
            self.onMessage(payload, self.message_is_binary)
        self.message_data = None  # type: ignore[assignment]


def release_http_channel(transport: Any) -> None:
    """Unregister twisted.web's ``HTTPChannel`` from a transport WebSocket took over.

    ``HTTPChannel.connectionMade`` registers the channel as the transport's streaming
    producer. After Autobahn's ``WebSocketResource`` takes the transport over, the request
    never finishes, so the channel's ``pauseProducing``/``resumeProducing`` do nothing
    (they pause reading only between requests): it provides no backpressure, yet it keeps
    the channel, its ``Request``, headers and buffers alive for the whole connection
    (twisted.web does the same before handing a connection to HTTP/2).
    """
    consumer: Any = transport  # HTTPChannel registered on IPushProducer(transport), if any
    if IPushProducer.providedBy(transport):
        consumer.unregisterProducer()

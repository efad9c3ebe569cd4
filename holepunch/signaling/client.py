# -*- test-case-name: tests.unit.test_signaling_client -*-
"""``SignalingClient``: a peer's connection to the signaling server, kept alive.

An Autobahn WebSocket client run by a ``twisted.application.internet.ClientService``,
so a lost connection is retried with exponential backoff and jitter. After each
(re)connection the client registers its peer id again, with the reconnect token the server
issued last time (which takes the id back from a connection the server still thinks is
alive), and rejoins the rooms it was in. A server that restarted knows no token: it
registers the id afresh (``resumed`` absent), and a token the server refuses is dropped,
so the next attempt registers afresh too. Either way the client rejoins its rooms, then
emits ``reconnected`` (:data:`RECONNECTED`); the loss was ``registration-lost``
(:data:`REGISTRATION_LOST`), one of each per outage.

Requests (:meth:`SignalingClient.join_room`, :meth:`send_offer <SignalingClient.send_offer>`, ...)
return Deferreds matched to the server's reply by ``id``, with a timeout; a request made
while disconnected waits for the next registration (within the same timeout, then fails
with :class:`SignalingTimeout`); a request sent on a connection that closes before the
reply fails with :class:`SignalingDisconnected` (it is not resent: the caller decides).
Every server message is also an event: ``client.on("offer", callback)``.

For ``wss://`` URLs the server's certificate is checked against the URL's host name with
service-identity (``twisted.internet.ssl.optionsForClientTLS``); pass ``trust_root``
to trust a private CA.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectingRequest
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from holepunch.signaling import messages as msg
from holepunch.signaling.autobahn_fixes import cancel_timers, send_at_once
from holepunch.signaling.iceservers import ParsedIceServers, parse_ice_servers
from holepunch.signaling.messages import JSONObject
from holepunch.subscription import Subscription

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot

_log = Logger()

EventCallback = Callable[[JSONObject], object]

# Events that are not server message types.
CONNECTED = "connected"
"""The WebSocket is open (before registration); the argument is ``{}``."""
DISCONNECTED = "disconnected"
"""The connection closed: ``{"code": int|None, "reason": str|None, "wasClean": bool}``."""
MESSAGE = "message"
"""Every message from the server, whatever its type."""
REGISTRATION_LOST = "registration-lost"
"""The connection of a registered client closed (once per outage):
``{"code", "reason", "wasClean", "rooms"}``, ``rooms`` being the rooms it will rejoin."""
RECONNECTING = "reconnecting"
"""A retry is scheduled: ``{"attempt": int, "delay": float}``, ``attempt`` counting the
retries in a row (from 1), ``delay`` the backoff before it, jitter included."""
RECONNECTED = "reconnected"
"""Registered again after a :data:`REGISTRATION_LOST`, rooms rejoined:
``{"attempt": int, "downtime_ms": float, "resumed": bool, "rooms": [str],
"failedRooms": [str]}``. ``attempt`` counts the connection attempts since the loss (1:
the first worked), ``downtime_ms`` runs from the loss to the rooms rejoined, ``resumed``
says the server still knew the reconnect token (else the id was registered afresh)."""

_HANDSHAKE_STATUS = re.compile(r"upgrade failed \[(\d{3})\]")
_REPLY_TYPES = frozenset(
    {"registered", "room-joined", "room-left", "room-peers", "pong", "ack", "error"}
)


DIRECT_ROOM_PREFIX = "direct:"


def direct_room(peer_id: str) -> str:
    """The room in which ``peer_id`` takes offers from anyone who knows its id.

    The server relays only between peers that share a room (unless it runs with
    ``--open-relay``). A peer that accepts calls from strangers (``holepunch connect
    --accept`` without ``--room``, a ``holepunch:`` server endpoint) joins its own
    direct room, and whoever calls it joins that room too (docs/protocol.md,
    "Who may relay to whom").
    """
    return DIRECT_ROOM_PREFIX + peer_id


class SignalingRequestError(Exception):
    """The server answered a request with ``error``."""

    def __init__(self, code: str, message: str, request_type: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_type = request_type


class SignalingDisconnected(Exception):
    """The connection closed before the server answered the request."""


class SignalingTimeout(defer.TimeoutError):
    """No answer within the request timeout (the client may not have been connected)."""


class SignalingAuthError(Exception):
    """The server refused the WebSocket handshake for authentication (HTTP 401/403)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


class SessionReplaced(Exception):
    """Another connection took this peer id over (close code 4001); the client stopped."""


class ClientStopped(Exception):
    """The client was stopped before the request was answered."""


@dataclass
class _Request:
    message: JSONObject | None
    """None: nothing to send, just wait for the registration."""
    deferred: defer.Deferred[JSONObject]
    needs_registration: bool
    protocol: SignalingClientProtocol | None = None


class SignalingClientProtocol(WebSocketClientProtocol):
    """Autobahn glue: hands everything to the :class:`SignalingClient`."""

    factory: _SignalingClientFactory

    def onConnecting(self, transport_details: Any) -> ConnectingRequest | None:
        """The handshake's request, with an IPv6 host in brackets: Autobahn writes
        ``Host: 2001:db8::1:8080``, which a server cannot split into host and port (and
        ours would advertise its STUN server at an address that does not exist)."""
        factory = self.factory
        if ":" not in factory.host or factory.host.startswith("["):
            return None
        return ConnectingRequest(
            host=f"[{factory.host}]",
            port=factory.port,
            resource=factory.resource,
            headers=factory.headers,
            useragent=factory.useragent,
            origin=factory.origin,
            protocols=factory.protocols,
        )

    def onOpen(self) -> None:
        send_at_once(self.transport)
        self.factory.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.client._received(self, payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.client._closed(self, wasClean, code, reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        cancel_timers(self)


class _SignalingClientFactory(WebSocketClientFactory):
    protocol = SignalingClientProtocol  # type: ignore[assignment]

    def __init__(self, client: SignalingClient, url: str, reactor: Any, headers: Any) -> None:
        super().__init__(url, reactor=reactor, headers=headers)
        self.client = client


@implementer(IStreamClientEndpoint)
class _CountingEndpoint:
    """Tells the client of each connection attempt (for ``reconnected``'s ``attempt``),
    and with several server URLs moves to the next one after a failed attempt or a
    lost connection (the WebSocket handshake names the URL tried)."""

    def __init__(
        self,
        endpoints: Sequence[tuple[str, IStreamClientEndpoint]],
        client: SignalingClient,
        factory: WebSocketClientFactory,
        headers: Any,
    ) -> None:
        self.endpoints = list(endpoints)
        self.client = client
        self.factory = factory
        self.headers = headers
        self.index = 0
        self._used = False

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        self.client._attempting()
        if self._used and len(self.endpoints) > 1:
            self.index = (self.index + 1) % len(self.endpoints)
            url = self.endpoints[self.index][0]
            self.factory.setSessionParameters(url=url, headers=self.headers)
            self.client.url = url
        self._used = True
        return self.endpoints[self.index][1].connect(protocolFactory)


def endpoint_for_url(
    reactor: Any, url: str, trust_root: IOpenSSLTrustRoot | None = None
) -> IStreamClientEndpoint:
    """The client endpoint for a ``ws://`` or ``wss://`` URL (TLS checks the host name)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, parts.hostname, port)
    if secure:
        options = optionsForClientTLS(parts.hostname, trustRoot=trust_root)
        endpoint = wrapClientTLS(options, endpoint)
    return endpoint


class SignalingClient(MultiService):
    """A registered peer on a signaling server, reconnecting as needed.

    :param url: ``ws://host:port/`` or ``wss://...``; or a list of them, the nodes of
        one service (sharing a Redis registry): the client starts with the first, and
        after a failed attempt or a lost connection tries the next, so a peer whose node
        died is back on another one with its id (its reconnect token).
    :param peer_id: the id to register; ``metadata`` goes with it.
    :param token: an auth token (sent as ``Authorization: Bearer``), if the server wants one.
    :param trust_root: for ``wss://``, the CA to trust instead of the platform's.
    :param request_timeout: seconds a request may take, waiting for a connection included.
    :param keepalive_interval: seconds between ``ping`` messages that keep the peer from
        idle eviction; default a third of the server's ``peerTimeout``.
    :param retry_initial, retry_max, retry_factor, jitter: the reconnect backoff
        (``twisted.application.internet.backoffPolicy``): the n-th retry in a row waits
        ``min(retry_initial * retry_factor ** n, retry_max) + jitter()`` seconds, so by
        default the first retry after a lost connection comes 1.5 to 2.5 s later, the
        next 2.25 to 3.25 s after that, and so on up to 30 to 31 s.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        peer_id: str,
        metadata: JSONObject | None = None,
        *,
        reactor: Any = None,
        token: str | None = None,
        trust_root: IOpenSSLTrustRoot | None = None,
        request_timeout: float = 10.0,
        keepalive_interval: float | None = None,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
        retry_factor: float = 1.5,
        jitter: Callable[[], float] = random.random,
        auto_ping_interval: float = 30.0,
        auto_ping_timeout: float = 20.0,
        max_message_size: int = 16 * 1024 * 1024,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("no signaling server URL")
        self.urls = urls
        """Every server URL: after a failed attempt or a lost connection the next is tried."""
        self.url = urls[0]
        """The URL of the current (or last) connection attempt."""
        self.peer_id = peer_id
        self.metadata: JSONObject = dict(metadata or {})
        self.request_timeout = request_timeout
        self.keepalive_interval = keepalive_interval
        self.reconnect_token: str | None = None
        self.registration: JSONObject | None = None
        self.ice_servers = ParsedIceServers()
        """The STUN and TURN servers the server named in ``welcome`` (``iceServers``)."""
        """The last ``registered`` message, while registered on the current connection."""
        self.rooms: dict[str, None] = {}
        """The rooms the client is in (and rejoins after a reconnect), in join order."""
        self.disconnects = 0
        """Registrations lost (:data:`REGISTRATION_LOST` events)."""
        self.reconnects = 0
        """Registrations regained after a loss (:data:`RECONNECTED` events)."""
        self.retry_delays: list[float] = []
        """The backoff delays (seconds, jitter included) waited since the last loss."""
        self._lost_at: float | None = None
        self._attempts = 0
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._ids = itertools.count(1)
        self._protocol: SignalingClientProtocol | None = None
        self._queued: list[_Request] = []
        self._in_flight: dict[int, _Request] = {}
        self._subscribers: dict[str, list[EventCallback]] = {}
        self._keepalive: task.LoopingCall | None = None
        self._stopped_error: Exception | None = None
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._factory = _SignalingClientFactory(self, self.url, reactor, headers)
        self._factory.setProtocolOptions(
            maxFramePayloadSize=max_message_size,
            maxMessagePayloadSize=max_message_size,
            autoPingInterval=auto_ping_interval,
            autoPingTimeout=auto_ping_timeout,
            openHandshakeTimeout=request_timeout,
            closeHandshakeTimeout=2,
            failByDrop=False,
        )
        policy = backoffPolicy(retry_initial, retry_max, retry_factor, jitter)

        def retry_delay(attempt: int) -> float:
            delay = policy(attempt)
            self.retry_delays.append(delay)
            self._emit(RECONNECTING, {"attempt": attempt, "delay": delay})
            return delay

        endpoints = (
            [(self.url, endpoint)]
            if endpoint is not None
            else [(u, endpoint_for_url(reactor, u, trust_root)) for u in urls]
        )
        self._endpoint = _CountingEndpoint(endpoints, self, self._factory, headers)
        self._service = ClientService(
            self._endpoint,
            self._factory,
            retryPolicy=retry_delay,
            clock=reactor,
        )
        self._service.setServiceParent(self)

    # -- public API ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """The WebSocket is open."""
        return self._protocol is not None

    @property
    def registered(self) -> bool:
        """The peer id is registered on the current connection."""
        return self.registration is not None

    def on(self, event: str, callback: EventCallback) -> Subscription[EventCallback]:
        """Call ``callback(message)`` for every server message of type ``event``.

        ``event`` is a server message type (``offer``, ``peer-joined``, ``error``, ...) or
        ``connected``, ``disconnected``, or ``message`` (every message). Returns a
        :class:`Subscription`; call its ``cancel()`` to unsubscribe.
        """
        callbacks = self._subscribers.setdefault(event, [])
        callbacks.append(callback)
        return Subscription(callbacks, callback)

    def register(self) -> defer.Deferred[JSONObject]:
        """Fires with the ``registered`` message once the peer id is registered."""
        if self.registration is not None:
            return defer.succeed(self.registration)
        return self._request(None)

    def join_room(self, room_id: str) -> defer.Deferred[list[JSONObject]]:
        """Join a room (and rejoin it after reconnects); fires with its other peers."""

        def joined(reply: JSONObject) -> list[JSONObject]:
            self.rooms[room_id] = None
            peers: list[JSONObject] = reply.get("peers", [])
            return peers

        return self._request({"type": "join-room", "roomId": room_id}).addCallback(joined)

    def leave_room(self, room_id: str) -> defer.Deferred[None]:
        """Leave a room. Left during an outage, the room is not rejoined, so the server's
        ``not-in-room`` then means done."""
        member = room_id in self.rooms
        self.rooms.pop(room_id, None)

        def not_in_room(failure: Failure) -> Failure | None:
            error = failure.value
            if member and isinstance(error, SignalingRequestError):
                if error.code == msg.NOT_IN_ROOM:
                    return None
            return failure

        d = self._request({"type": "leave-room", "roomId": room_id})
        return d.addCallbacks(lambda _: None, not_in_room)

    def get_room_peers(self, room_id: str) -> defer.Deferred[list[JSONObject]]:
        """The other peers of a room this client is in."""
        return self._request({"type": "get-room-peers", "roomId": room_id}).addCallback(
            lambda reply: list(reply.get("peers", []))
        )

    def send_offer(self, to: str, offer: JSONObject) -> defer.Deferred[None]:
        """Relay an offer to ``to``; fires once the server delivered it."""
        return self._relay("offer", to, offer)

    def send_answer(self, to: str, answer: JSONObject) -> defer.Deferred[None]:
        """Relay an answer to ``to``."""
        return self._relay("answer", to, answer)

    def send_ice_candidate(self, to: str, candidate: JSONObject | None) -> defer.Deferred[None]:
        """Relay an ICE candidate (None: end of candidates) to ``to``."""
        return self._relay("ice-candidate", to, candidate)

    def send_connection_state(
        self, peer_id: str, state: str, method: str | None = None
    ) -> defer.Deferred[None]:
        """Tell the server how this peer's connection to ``peer_id`` is doing."""
        message: JSONObject = {"type": "connection-state", "peerId": peer_id, "state": state}
        if method is not None:
            message["method"] = method
        return self._request(message).addCallback(lambda _: None)

    def ping(self) -> defer.Deferred[float]:
        """Round trip to the server; fires with the seconds it took."""
        started = self._clock.seconds()
        return self._request({"type": "ping"}, needs_registration=False).addCallback(
            lambda _: self._clock.seconds() - started
        )

    # -- service -------------------------------------------------------------------------

    def startService(self) -> None:
        self._stopped_error = None
        super().startService()

    def stopService(self) -> defer.Deferred[None]:
        """Close the connection (1000), stop reconnecting, fail what is outstanding."""
        if self._stopped_error is None:
            self._stopped_error = ClientStopped("the signaling client was stopped")
        self._fail_all(self._stopped_error)
        protocol = self._protocol
        if protocol is not None and protocol.state == protocol.STATE_OPEN:
            protocol.sendClose(1000, "client stopping")
        result = super().stopService()
        stopped = result if isinstance(result, defer.Deferred) else defer.succeed(None)
        return stopped.addCallback(lambda _: None)

    def _give_up(self, error: Exception) -> None:
        """Stop reconnecting for good, failing everything outstanding with ``error``."""
        self._stopped_error = error
        self._fail_all(error)

        def stop() -> None:
            if self.running:
                d = self.stopService()
                d.addErrback(lambda f: _log.failure("stopping the signaling client", f))

        # Not from within the connection's callbacks: ClientService is not reentrant.
        self._clock.callLater(0, stop)

    # -- requests ------------------------------------------------------------------------

    def _relay(self, kind: str, to: str, payload: JSONObject | None) -> defer.Deferred[None]:
        message: JSONObject = {"type": kind, "to": to, msg.RELAY_FIELDS[kind]: payload}
        return self._request(message).addCallback(lambda _: None)

    def _request(
        self, message: JSONObject | None, needs_registration: bool = True
    ) -> defer.Deferred[JSONObject]:
        request: _Request

        def cancel(_: defer.Deferred[JSONObject]) -> None:
            if request in self._queued:
                self._queued.remove(request)
            if request.message is not None:
                self._in_flight.pop(request.message.get("id", -1), None)

        d: defer.Deferred[JSONObject] = defer.Deferred(cancel)
        request = _Request(None if message is None else dict(message), d, needs_registration)
        if self._stopped_error is not None:
            d.errback(self._stopped_error)
            return d
        self._add_timeout(d, "registered" if needs_registration else "connected")
        if self._ready_for(request):
            self._send_request(request)
        else:
            self._queued.append(request)
        return d

    def _add_timeout(self, d: defer.Deferred[Any], state: str) -> None:
        timeout = self.request_timeout

        def timed_out(result: Any, _timeout: float) -> Any:
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                where = "" if self._ready_now(state) else f" (not {state} to {self.url})"
                return Failure(SignalingTimeout(f"no answer within {timeout:g}s{where}"))
            return result

        d.addTimeout(timeout, self._clock, onTimeoutCancel=timed_out)

    def _ready_now(self, state: str) -> bool:
        return self.registration is not None if state == "registered" else self.connected

    def _ready_for(self, request: _Request) -> bool:
        if request.needs_registration:
            return self.registration is not None
        return self._protocol is not None

    def _send_request(self, request: _Request) -> None:
        if request.message is None:
            request.deferred.callback(self.registration or {})
            return
        request_id = next(self._ids)
        request.message["id"] = request_id
        request.protocol = self._protocol
        self._in_flight[request_id] = request
        if not self._send(request.message):
            del self._in_flight[request_id]
            request.deferred.errback(SignalingDisconnected("not connected"))

    def _send(self, message: JSONObject) -> bool:
        protocol = self._protocol
        if protocol is None or protocol.state != protocol.STATE_OPEN:
            return False
        try:
            protocol.sendMessage(msg.encode(message), isBinary=False)
        except Disconnected:
            return False
        return True

    def _flush_queue(self) -> None:
        queued, self._queued = self._queued, []
        for request in queued:
            if self._ready_for(request):
                self._send_request(request)
            else:
                self._queued.append(request)

    def _fail_all(self, error: Exception) -> None:
        requests = [*self._queued, *self._in_flight.values()]
        self._queued.clear()
        self._in_flight.clear()
        for request in requests:
            if not request.deferred.called:
                request.deferred.errback(error)

    # -- connection events (from the protocol) -------------------------------------------

    def _opened(self, protocol: SignalingClientProtocol) -> None:
        self._protocol = protocol
        self._emit(CONNECTED, {})
        self._register()
        self._flush_queue()  # pings may go before registration

    def _register(self) -> None:
        message: JSONObject = {"type": "register", "peerId": self.peer_id}
        if self.metadata:
            message["metadata"] = self.metadata
        if self.reconnect_token is not None:
            message["reconnectToken"] = self.reconnect_token
        request = _Request(message, defer.Deferred(), needs_registration=False)
        self._add_timeout(request.deferred, "connected")
        request.deferred.addCallbacks(self._registered, self._registration_failed)
        self._send_request(request)

    def _registered(self, reply: JSONObject) -> None:
        self.registration = reply
        self.reconnect_token = reply.get("reconnectToken", self.reconnect_token)
        _log.info("registered as {peer} at {url}", peer=self.peer_id, url=self.url)
        rooms = list(self.rooms)
        rejoins = [
            self._request({"type": "join-room", "roomId": room_id}).addCallbacks(
                lambda _, room_id=room_id: (room_id, True),
                lambda f, room_id=room_id: self._rejoin_failed(f, room_id),
            )
            for room_id in rooms
        ]
        self._start_keepalive(reply)
        self._flush_queue()
        if self._lost_at is not None:
            gathered = defer.gatherResults(rejoins)
            gathered.addCallback(self._rejoined, reply)
            gathered.addErrback(lambda f: _log.failure("after reconnecting", f))

    def _rejoin_failed(self, failure: Failure, room_id: str) -> tuple[str, bool]:
        _log.warn(
            "could not rejoin room {room}: {error}", room=room_id, error=failure.getErrorMessage()
        )
        return room_id, False

    def _rejoined(self, outcomes: list[tuple[str, bool]], reply: JSONObject) -> None:
        """The rooms are rejoined (or refused) after a reconnect: say so, unless the
        connection was lost again meanwhile (the outage goes on)."""
        if self.registration is not reply or self._lost_at is None:
            return
        downtime = self._clock.seconds() - self._lost_at
        event: JSONObject = {
            "attempt": self._attempts,
            "downtime_ms": round(downtime * 1000, 1),
            "resumed": bool(reply.get("resumed", False)),
            "rooms": [room for room, ok in outcomes if ok],
            "failedRooms": [room for room, ok in outcomes if not ok],
        }
        self._lost_at = None
        self._attempts = 0
        self.reconnects += 1
        _log.info(
            "back on signaling as {peer} after {ms} ms ({attempt} attempts, resumed: "
            "{resumed}), rooms {rooms}",
            peer=self.peer_id,
            ms=event["downtime_ms"],
            attempt=event["attempt"],
            resumed=event["resumed"],
            rooms=event["rooms"],
        )
        self._emit(RECONNECTED, event)

    def _attempting(self) -> None:
        """The endpoint is asked for a connection (one attempt)."""
        if self._lost_at is not None:
            self._attempts += 1

    def _registration_failed(self, failure: Any) -> None:
        if failure.check(SignalingDisconnected, ClientStopped, defer.CancelledError):
            return
        _log.warn("registration as {peer} failed: {error}", peer=self.peer_id, error=failure.value)
        error = failure.value
        if self.reconnect_token is not None and failure.check(SignalingRequestError):
            # The server refused the id with our token: the next attempt registers afresh.
            self.reconnect_token = None
        for request in list(self._queued):
            if request.needs_registration:
                self._queued.remove(request)
                request.deferred.errback(error)
        # Try again on a fresh connection (with backoff): the id may free up.
        protocol = self._protocol
        if protocol is not None:
            protocol.sendClose(1000, "registration failed")

    def _start_keepalive(self, reply: JSONObject) -> None:
        interval = self.keepalive_interval
        if interval is None:
            peer_timeout = reply.get("peerTimeout")
            if not isinstance(peer_timeout, int | float) or peer_timeout <= 0:
                return
            interval = peer_timeout / 3.0
        self._stop_keepalive()
        self._keepalive = task.LoopingCall(self._send, {"type": "ping"})
        self._keepalive.clock = self._clock
        self._keepalive.start(interval, now=False).addErrback(
            lambda f: _log.failure("signaling keepalive", f)
        )

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None

    def _received(self, protocol: SignalingClientProtocol, payload: bytes) -> None:
        try:
            message = msg.decode_object(payload, max_size=len(payload))
        except msg.MessageError as e:
            _log.warn("ignoring a bad message from the server: {error}", error=e)
            return
        kind = message.get("type")
        request_id = message.get("id")
        if kind in _REPLY_TYPES and isinstance(request_id, int):
            request = self._in_flight.pop(request_id, None)
            if request is not None and not request.deferred.called:
                if kind == "error":
                    request.deferred.errback(
                        SignalingRequestError(
                            str(message.get("code")),
                            str(message.get("message")),
                            (request.message or {}).get("type"),
                        )
                    )
                else:
                    request.deferred.callback(message)
        if kind == "welcome":
            self.ice_servers = parse_ice_servers(message.get("iceServers"))
        if isinstance(kind, str):
            self._emit(kind, message)
        self._emit(MESSAGE, message)

    def _closed(
        self,
        protocol: SignalingClientProtocol,
        was_clean: bool,
        code: int | None,
        reason: str | None,
    ) -> None:
        if protocol is self._protocol:
            was_registered = self.registration is not None
            self._protocol = None
            self.registration = None
            self._stop_keepalive()
            lost = [(i, r) for i, r in self._in_flight.items() if r.protocol is protocol]
            for request_id, request in lost:
                del self._in_flight[request_id]
                if not request.deferred.called:
                    request.deferred.errback(SignalingDisconnected(reason or "connection lost"))
            reconnecting = self._stopped_error is None and code != msg.CLOSE_SESSION_REPLACED
            if was_registered and reconnecting and self._lost_at is None:
                self._lost_at = self._clock.seconds()
                self._attempts = 0
                self.retry_delays = []
                self.disconnects += 1
                _log.info(
                    "lost the signaling server {url} ({reason}); reconnecting",
                    url=self.url,
                    reason=reason,
                )
                self._emit(
                    REGISTRATION_LOST,
                    {
                        "code": code,
                        "reason": reason,
                        "wasClean": was_clean,
                        "rooms": list(self.rooms),
                    },
                )
        self._emit(DISCONNECTED, {"code": code, "reason": reason, "wasClean": was_clean})
        status = _HANDSHAKE_STATUS.search(reason or "")
        if status is not None and int(status.group(1)) in (401, 403):
            self._give_up(SignalingAuthError(int(status.group(1)), reason or ""))
        elif code == msg.CLOSE_SESSION_REPLACED:
            self._give_up(SessionReplaced(reason or "peer id taken over"))

    def _emit(self, event: str, message: JSONObject) -> None:
        for callback in list(self._subscribers.get(event, ())):
            try:
                callback(message)
            except Exception:
                _log.failure("signaling event handler for {event!r} failed", event=event)

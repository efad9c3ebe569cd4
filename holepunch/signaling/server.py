# -*- test-case-name: tests.unit.test_signaling_protocol -*-
"""The WebSocket signaling server: Autobahn protocol, limits, auth, and its service.

Layers, from the wire inwards:

- :class:`SignalingServerProtocol` (Autobahn, thin): the handshake checks (connection
  limits, auth token) in ``onConnect``, then frames in and out of a session.
- :class:`SignalingSession`: one connection's state (its peer id, its rate limiter),
  turning parsed requests (:mod:`holepunch.signaling.messages`) into calls on the room
  model (:mod:`holepunch.signaling.model`) and the model's callbacks into messages. No
  Autobahn in here: it gets a ``send`` and a ``close`` function.
- :func:`make_signaling_service`: the wiring, a :class:`SignalingService` that listens on
  a strports endpoint with a twisted.web site whose root ``/`` answers WebSocket upgrades
  (and a short text page to plain GETs), so other code can serve HTTP on the same port with
  ``service.root.putChild(b"metrics", ...)``, and sweeps idle peers every
  ``cleanup_interval`` seconds.

The protocol is described in ``docs/protocol.md``.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import txaio
from autobahn.exception import Disconnected, PayloadExceededError
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from holepunch.addresses import ip_version, split_host_port, unmapped
from holepunch.httpguard import GuardedChannel, GuardedSite
from holepunch.interfaces import DisconnectReason, IRoomRegistry, ISignalingClient, Registration
from holepunch.logsummary import RefusalSummary, Summary
from holepunch.peraddress import ConnectionsPerAddress
from holepunch.ratelimit import TokenBucket
from holepunch.reuseport import server_endpoint
from holepunch.signaling import auth
from holepunch.signaling import messages as msg
from holepunch.signaling.autobahn_fixes import (
    QuietWebSocketServerProtocol,
    cancel_timers,
    release_http_channel,
)
from holepunch.signaling.iceservers import IceServerHints
from holepunch.signaling.model import (
    JSONObject,
    Limits,
    RoomRegistry,
    SignalingError,
)
from holepunch.signaling.singleuse import SingleUseTokens
from holepunch.textpage import index_text, render_text

_log = Logger()


@dataclass
class SignalingConfig:
    """Everything the signaling server can be told. Times are in seconds."""

    endpoint: str = "tcp:8080"
    """Where to listen, a strports string: ``tcp:8080`` (both IPv4 and IPv6; see
    :mod:`holepunch.reuseport`), ``tcp6:8080`` (IPv6 only), ``ssl:8443:privateKey=...``."""
    peer_timeout: float = 300.0
    """Evict a registered peer after this long without a message from it."""
    cleanup_interval: float = 60.0
    """How often idle peers are looked for."""
    max_message_size: int = 64 * 1024
    """Larger messages get ``error`` ``message-too-large``; the connection stays."""
    max_frame_size: int = 256 * 1024
    """Larger WebSocket messages make Autobahn close the connection (1009)."""
    messages_per_second: float = 20.0
    """Sustained message rate per connection (token bucket refill)."""
    message_burst: int = 60
    """Token bucket size: how many messages may arrive at once."""
    rate_limit_violations: int = 30
    """Refused (``rate-limited``) messages tolerated per 10 s before closing with 1008."""
    max_connections: int = 10_000
    max_connections_per_address: int = 64
    max_peers: int = 10_000
    max_peers_per_room: int = 100
    max_rooms_per_peer: int = 16
    auth_secret: str | None = None
    """When set, every connection needs a token signed with it (see ``auth``)."""
    auto_ping_interval: float = 30.0
    """WebSocket ping every so often, so dead TCP connections are found."""
    auto_ping_timeout: float = 20.0
    """Drop the connection when a ping is not answered within this time."""
    open_handshake_timeout: float = 10.0
    close_handshake_timeout: float = 2.0
    trust_x_forwarded_for: int = 0
    """Number of reverse proxies in front whose ``X-Forwarded-For`` is to be believed."""
    ice_servers: IceServerHints | None = None
    """STUN (and TURN) servers named in ``welcome`` as ``iceServers`` (None: none)."""
    redis_url: str | None = None
    """``redis://HOST:PORT/DB``: share peers and rooms with the other nodes on this Redis
    (:mod:`holepunch.signaling.redisregistry`); None keeps them in this process."""
    presence_ttl: float = 30.0
    """With Redis: seconds after which a node that stopped beating (crashed) is gone."""
    node_links: str | None = None
    """With Redis: a private directory shared by the nodes of this machine (the workers of
    one daemon), where each listens on a UNIX socket for the relays of the others
    (:mod:`holepunch.signaling.nodelinks`); None: every relay between nodes goes through
    Redis."""
    reuse_port: bool = False
    """Listen with ``SO_REUSEPORT`` so other worker processes share the port
    (``--workers``); ``endpoint`` must then be a plain ``tcp:`` description."""
    open_relay: bool = False
    """Relay offers, answers and candidates between any two peers. False (the default):
    only between peers that share a room; others get ``error`` ``no-shared-room``."""
    send_buffer_limit: int = 1024 * 1024
    """Bytes the server queues for a client that does not read, beyond the transport's own
    64 KiB write buffer; over it the client is dropped (close 1013) and the relay's
    sender gets ``peer-too-slow``."""
    token_single_use: bool = False
    """With auth: a token opens one connection at a time (a second one is refused, 409)."""
    http_head_timeout: float = 10.0
    """Seconds a client has to send a whole HTTP request head (plain HTTP or a WebSocket
    handshake) before the connection is closed."""

    def __post_init__(self) -> None:
        for name in (
            "peer_timeout",
            "cleanup_interval",
            "messages_per_second",
            "presence_ttl",
            "http_head_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "max_message_size",
            "message_burst",
            "rate_limit_violations",
            "max_connections",
            "max_connections_per_address",
            "max_peers",
            "max_peers_per_room",
            "max_rooms_per_peer",
            "send_buffer_limit",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_frame_size < self.max_message_size:
            raise ValueError("max_frame_size must be at least max_message_size")

    def limits(self) -> Limits:
        """The room model's share of the configuration."""
        return Limits(
            max_peers=self.max_peers,
            max_peers_per_room=self.max_peers_per_room,
            max_rooms_per_peer=self.max_rooms_per_peer,
            peer_timeout=self.peer_timeout,
            open_relay=self.open_relay,
        )


_OPTION_FIELDS = {
    "signaling": "endpoint",
    "auth-secret": "auth_secret",
    "peer-timeout": "peer_timeout",
    "cleanup-interval": "cleanup_interval",
    "max-message-size": "max_message_size",
    "max-frame-size": "max_frame_size",
    "message-rate": "messages_per_second",
    "message-burst": "message_burst",
    "max-connections": "max_connections",
    "max-connections-per-address": "max_connections_per_address",
    "max-peers": "max_peers",
    "max-peers-per-room": "max_peers_per_room",
    "max-rooms-per-peer": "max_rooms_per_peer",
    "trust-x-forwarded-for": "trust_x_forwarded_for",
    "redis": "redis_url",
    "presence-ttl": "presence_ttl",
    "worker-links": "node_links",
    "open-relay": "open_relay",
    "send-buffer-limit": "send_buffer_limit",
    "token-single-use": "token_single_use",
    "http-head-timeout": "http_head_timeout",
}
_FLAG_FIELDS = frozenset({"open_relay", "token_single_use"})


def config_from_options(
    options: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> SignalingConfig:
    """The signaling configuration from ``twistd holepunch`` options (``holepunch.daemon.tap``).

    Options left out (or None) keep their defaults; the auth secret falls back to the
    ``P2P_AUTH_SECRET`` environment variable, so it need not appear in a process list.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option, field_name in _OPTION_FIELDS.items():
        try:
            value = options[option]
        except KeyError:
            continue
        if value is not None:
            values[field_name] = bool(value) if field_name in _FLAG_FIELDS else value
    if not values.get("auth_secret"):
        values["auth_secret"] = environ.get("P2P_AUTH_SECRET") or None
    return SignalingConfig(**values)


class ServerStats:
    """Counters of one server, beyond what the room model counts."""

    def __init__(self) -> None:
        self.connections = 0
        self.connections_total = 0
        self.denied: Counter[int] = Counter()
        self.messages: dict[str, int] = {}
        """Requests by type (a plain dict: counting in a Counter costs twice as much)."""
        self.errors: Counter[str] = Counter()
        self.slow_readers = 0
        """Connections dropped for not reading what they were sent (close 1013)."""
        self.tokens_expired = 0
        """Connections closed because their auth token expired (close 4002)."""


def _address_family(host: str) -> tuple[str, str]:
    """``host`` and its family name; an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``,
    what a dual-stack ``::`` socket sees of an IPv4 client) is the IPv4 address it is.
    Proxies' spellings with a port (``[2001:db8::1]:443``, ``192.0.2.1:443``) lose it."""
    try:
        host = unmapped(split_host_port(host)[0])
        version = ip_version(host)
    except ValueError:
        return host, "unknown"
    return host, f"IPv{version}"


def describe_address(address: object, forwarded: str | None = None) -> JSONObject:
    """The ``yourAddress`` of ``welcome``: how the server sees the client."""
    if forwarded is not None:
        host, family = _address_family(forwarded)
        return {"address": host, "family": family}
    if isinstance(address, IPv4Address | IPv6Address):
        host, family = _address_family(address.host)
        return {"address": host, "port": address.port, "family": family}
    return {"address": str(address), "family": "unknown"}


def _discard(result: object) -> None:
    return None


def _then(result: Any, action: Callable[[Any], object]) -> defer.Deferred[Any] | None:
    """``action(result)`` now, or when ``result``, a Deferred, fires (which is returned)."""
    if isinstance(result, defer.Deferred):
        return result.addCallback(action)
    action(result)
    return None


class SerialSteps:
    """Runs steps one after another, in the order given.

    A step returns None when it is done, or a Deferred that fires when it is; the steps
    after it wait for that. Steps that finish at once run at once, without recursion
    however many there are. A step's Deferred should not fail (failures are logged).
    """

    __slots__ = ("_busy", "_steps")

    def __init__(self) -> None:
        self._steps: deque[tuple[Callable[..., defer.Deferred[Any] | None], tuple[Any, ...]]]
        self._steps = deque()
        self._busy = False
        """Running steps, or waiting for one to finish."""

    def submit(self, step: Callable[..., defer.Deferred[Any] | None], *args: Any) -> None:
        """Run ``step(*args)`` after every step submitted before it."""
        if self._busy:
            self._steps.append((step, args))
            return
        self._busy = True  # idle: run it now, without queueing it
        result = step(*args)
        if result is None and not self._steps:
            self._busy = False
            return
        self._carry_on(result)

    def _carry_on(self, result: defer.Deferred[Any] | None) -> None:
        """Wait for ``result`` (the last step's), then run the queued steps."""
        while True:
            if result is not None:
                state = ["running"]

                def finished(outcome: object, state: list[str] = state) -> None:
                    if isinstance(outcome, Failure):
                        _log.failure("a signaling step failed", outcome)
                    if state[0] == "waiting":  # _carry_on returned: carry on from here
                        self._carry_on(None)
                    else:
                        state[0] = "done"

                result.addBoth(finished)
                if state[0] == "running":
                    state[0] = "waiting"
                    return
            if not self._steps:
                break
            step, args = self._steps.popleft()
            result = step(*args)
        self._busy = False


@implementer(ISignalingClient)
class SignalingSession:
    """One connection of the JSON signaling protocol, without the WebSocket.

    ``send`` delivers one server message, and returns False when it refused to because
    the client does not read what it is sent (it is then being dropped); ``send_encoded``
    does the same with a message already encoded (None: relays are given to ``send``);
    ``close(code,
    reason)`` starts closing the connection. ``address`` is the client's
    ``yourAddress``; ``auth_peer_id`` the peer id its token grants (None when auth is
    off), ``token_expires`` when that token expires: the connection is closed then (4002)
    unless a ``renew`` brings a fresh token. ``swap_token(token)`` (single-use tokens)
    makes a renewed token the connection's, or returns False when another connection
    holds it.
    """

    __slots__ = (
        "__weakref__",
        "_bucket",
        "_close",
        "_expiry_call",
        "_send",
        "_send_encoded",
        "_steps",
        "_swap_token",
        "_violations",
        "address",
        "auth_peer_id",
        "clock",
        "closing",
        "config",
        "ice_servers",
        "last_activity",
        "opened_at",
        "peer_id",
        "registry",
        "stats",
        "token_expires",
    )

    def __init__(
        self,
        registry: IRoomRegistry,
        config: SignalingConfig,
        clock: IReactorTime,
        stats: ServerStats,
        send: Callable[[JSONObject], bool | None],
        close: Callable[[int, str], None],
        address: JSONObject,
        auth_peer_id: str | None = None,
        ice_servers: list[JSONObject] | None = None,
        token_expires: float | None = None,
        swap_token: Callable[[str], bool] | None = None,
        send_encoded: Callable[[bytes], bool | None] | None = None,
    ) -> None:
        self.registry = registry
        self.config = config
        self.clock = clock
        self.stats = stats
        self._send = send
        self._send_encoded = send_encoded
        self._close = close
        self.address = address
        self.auth_peer_id = auth_peer_id
        self.ice_servers = ice_servers or []
        self.token_expires = token_expires
        self._swap_token = swap_token
        self._expiry_call: IDelayedCall | None = None
        self.peer_id: str | None = None
        self.opened_at = clock.seconds()
        self.last_activity = self.opened_at
        self.closing = False
        self._steps = SerialSteps()
        self._bucket = TokenBucket(config.messages_per_second, config.message_burst, self.opened_at)
        self._violations = TokenBucket(
            config.rate_limit_violations / 10.0, config.rate_limit_violations, self.opened_at
        )

    # -- from the connection ---------------------------------------------------------------

    def opened(self) -> None:
        """The WebSocket is open: greet the client (and time its token)."""
        if self.token_expires is not None:
            self._arm_expiry(self.token_expires)
        self._send(msg.welcome(self.clock.seconds(), self.address, self.ice_servers))

    def _arm_expiry(self, expires: float) -> None:
        self._disarm_expiry()
        self.token_expires = expires
        delay = max(0.0, expires - self.clock.seconds())
        self._expiry_call = self.clock.callLater(delay, self._token_expired)

    def _disarm_expiry(self) -> None:
        call, self._expiry_call = self._expiry_call, None
        if call is not None and call.active():
            call.cancel()

    def _token_expired(self) -> None:
        self._expiry_call = None
        if self.closing:
            return
        self.stats.tokens_expired += 1
        _log.info("closing {address}: its token expired", address=self.address)
        self.close(msg.CLOSE_TOKEN_EXPIRED, "token expired")

    def message_received(self, payload: bytes) -> None:
        """One complete WebSocket message arrived.

        It is handled after the messages before it: a request the registry answers later
        (a Deferred, as with Redis) holds the following ones back.
        """
        if self.closing:
            return
        now = self.clock.seconds()
        if not self._bucket.take(now):
            self._rate_limited(payload)
            return
        self.last_activity = now
        if self.peer_id is not None:
            self.registry.touch(self.peer_id, now)
        self._steps.submit(self._handle, payload, now)

    def _handle(self, payload: bytes, now: float) -> defer.Deferred[Any] | None:
        if self.closing:
            return None
        try:
            request = msg.parse_request(payload, self.config.max_message_size)
        except msg.MessageError as e:
            self._error(e.code, e.message, e.request_id)
            return None
        try:
            if type(request) is msg.Relay:  # nearly every message: straight to it
                messages = self.stats.messages
                messages[request.kind] = messages.get(request.kind, 0) + 1
                if (
                    request.id is None
                    and self.peer_id is not None
                    and (request.claimed_sender is None or request.claimed_sender == self.peer_id)
                ):  # _relay without an ack to send, in one call
                    result = self.registry.relay(
                        self.peer_id, request.to, request.kind, request.payload
                    )
                    if result is not None:
                        result.addCallback(_discard)
                else:
                    result = self._relay(request, now)
            else:
                messages = self.stats.messages
                kind = msg.request_type(request)
                messages[kind] = messages.get(kind, 0) + 1
                result = self._dispatch(request, now)
        except Exception:
            self._failed(Failure(), request)
            return None
        if result is None:
            return None
        return result.addErrback(self._failed, request)

    def _failed(self, failure: Failure, request: msg.Request) -> None:
        if isinstance(failure.value, SignalingError):
            self._error(failure.value.code, failure.value.message, request.id)
        else:
            _log.failure("signaling request {request!r} failed", failure, request=request)
            self._error(msg.INTERNAL_ERROR, "internal server error", request.id)

    def closed(self) -> None:
        """The connection is gone: the peer leaves its rooms (after pending requests)."""
        self.closing = True
        self._disarm_expiry()
        self._steps.submit(self._unregister)

    def _unregister(self) -> defer.Deferred[Any] | None:
        if self.peer_id is None:
            return None
        peer_id, self.peer_id = self.peer_id, None
        result = self.registry.unregister(peer_id, self, self.clock.seconds())
        if isinstance(result, defer.Deferred):
            return result.addErrback(
                lambda f: _log.warn("unregistering {peer}: {e}", peer=peer_id, e=f.value)
            )
        return None

    def close(self, code: int, reason: str) -> None:
        """Close the connection from the server side."""
        if not self.closing:
            self.closing = True
            self._disarm_expiry()
            self._close(code, reason)

    # -- helpers -----------------------------------------------------------------------------

    def _rate_limited(self, payload: bytes) -> None:
        self.stats.errors[msg.RATE_LIMITED] += 1
        if not self._violations.take(self.clock.seconds()):
            _log.info("closing {address}: sustained rate limit abuse", address=self.address)
            self.close(msg.CLOSE_POLICY_VIOLATION, "rate limit exceeded")
            return
        request_id = None
        if len(payload) <= self.config.max_message_size:
            try:
                request_id = msg.request_from_object(
                    msg.decode_object(payload, self.config.max_message_size)
                ).id
            except msg.MessageError as e:
                request_id = e.request_id
        refusal = msg.error(
            msg.RATE_LIMITED,
            f"more than {self.config.messages_per_second:g} messages per second",
            request_id,
        )

        def refuse() -> None:
            self._send(refusal)

        self._steps.submit(refuse)  # after the replies before it

    def _error(self, code: str, message: str, request_id: msg.RequestId | None) -> None:
        self.stats.errors[code] += 1
        self._send(msg.error(code, message, request_id))

    def _registered_sender(self, request: msg.Request) -> str:
        if self.peer_id is None:
            raise SignalingError(msg.NOT_REGISTERED, "send 'register' first")
        if request.claimed_sender is not None and request.claimed_sender != self.peer_id:
            raise SignalingError(
                msg.SPOOFED_FROM,
                f"this connection is registered as {self.peer_id!r}, "
                f"not {request.claimed_sender!r}",
            )
        return self.peer_id

    def _relay(self, request: msg.Relay, now: float) -> defer.Deferred[Any] | None:
        """Hand an offer, answer or candidate to the registry; ``ack`` it if it has an id.
        Errors (raised, or a failed Deferred) are answered by :meth:`_handle`."""
        me = self._registered_sender(request)
        result = self.registry.relay(me, request.to, request.kind, request.payload)
        if request.id is None:
            return None if result is None else result.addCallback(_discard)
        return _then(result, lambda _: self._send(msg.ack(request.kind, now, request.id)))

    def _dispatch(self, request: msg.Request, now: float) -> defer.Deferred[Any] | None:
        """Carry out one request; a Deferred when the registry answers later."""
        match request:  # relays never come here (_handle takes them), the rest by frequency
            case msg.Ping():
                self._send(msg.pong(now, request.id))
            case msg.Renew():
                self._renew(request, now)
            case msg.Register():
                return self._register(request, now)
            case msg.JoinRoom():
                me = self._registered_sender(request)
                room_id = request.room_id
                return _then(
                    self.registry.join(me, room_id, now),
                    lambda peers: self._send(msg.room_joined(room_id, peers, now, request.id)),
                )
            case msg.LeaveRoom():
                me = self._registered_sender(request)
                room_id = request.room_id
                return _then(
                    self.registry.leave(me, room_id, now),
                    lambda _: self._send(msg.room_left(room_id, now, request.id)),
                )
            case msg.GetRoomPeers():
                me = self._registered_sender(request)
                room_id = request.room_id
                return _then(
                    self.registry.room_peers(me, room_id),
                    lambda peers: self._send(msg.room_peers(room_id, peers, now, request.id)),
                )
            case msg.ConnectionStateReport():
                me = self._registered_sender(request)
                self.registry.set_connection_state(
                    me, request.peer_id, request.state, request.method, now
                )
                if request.id is not None:
                    self._send(msg.ack("connection-state", now, request.id))
        return None

    def _renew(self, request: msg.Renew, now: float) -> None:
        """A fresh token for this connection: it now lives until the new expiry."""
        secret = self.config.auth_secret
        if not secret or self.auth_peer_id is None:
            raise SignalingError(msg.INVALID_TOKEN, "auth is off: there is no token to renew")
        try:
            grant = auth.check_token(secret, request.token, now)
        except auth.InvalidToken as e:
            raise SignalingError(msg.INVALID_TOKEN, e.reason) from None
        if grant.peer_id != self.auth_peer_id:
            raise SignalingError(
                msg.UNAUTHORIZED, f"this connection's tokens must grant {self.auth_peer_id!r}"
            )
        if self._swap_token is not None and not self._swap_token(request.token):
            raise SignalingError(msg.INVALID_TOKEN, "token in use by another connection")
        self._arm_expiry(grant.expires)
        self._send(msg.renewed(grant.expires, now, request.id))

    def _register(self, request: msg.Register, now: float) -> defer.Deferred[Any] | None:
        if self.peer_id is not None:
            raise SignalingError(
                msg.ALREADY_REGISTERED, f"this connection is registered as {self.peer_id!r}"
            )
        if self.auth_peer_id is not None and request.peer_id != self.auth_peer_id:
            raise SignalingError(
                msg.UNAUTHORIZED, f"the token grants peer id {self.auth_peer_id!r} only"
            )
        result = self.registry.register(
            self, request.peer_id, request.metadata, now, request.reconnect_token
        )
        return _then(result, lambda registration: self._registered(registration, request, now))

    def _registered(self, registration: Registration, request: msg.Register, now: float) -> None:
        self.peer_id = request.peer_id
        _log.debug("peer {peer} registered", peer=request.peer_id)
        self._send(
            msg.registered(
                registration.peer_id,
                registration.reconnect_token,
                self.config.peer_timeout,
                now,
                request.id,
                replaced=registration.resumed,
            )
        )

    # -- ISignalingClient ----------------------------------------------------------------

    def peer_joined(
        self, room_id: str, peer_id: str, metadata: JSONObject, timestamp: float
    ) -> None:
        self._send(msg.peer_joined(room_id, peer_id, metadata, timestamp))

    def peer_left(self, room_id: str, peer_id: str, metadata: JSONObject, timestamp: float) -> None:
        self._send(msg.peer_left(room_id, peer_id, metadata, timestamp))

    def relayed(self, kind: str, from_peer: str, payload: JSONObject | None) -> None:
        if self._send_encoded is None:
            sent = self._send(msg.relayed(kind, from_peer, payload))
        else:
            sent = self._send_encoded(msg.encode_relayed(kind, from_peer, payload))
        if sent is False:
            self._too_slow()

    def relayed_encoded(self, message: bytes) -> None:
        if self._send_encoded is None:
            sent = self._send(msg.decode_object(message, len(message)))
        else:
            sent = self._send_encoded(message)
        if sent is False:
            self._too_slow()

    def _too_slow(self) -> None:
        raise SignalingError(
            msg.PEER_TOO_SLOW,
            f"peer {self.peer_id!r} does not read what it is sent; it was disconnected",
        )

    def disconnect(self, reason: DisconnectReason) -> None:
        self.peer_id = None
        if reason is DisconnectReason.REPLACED:
            self.close(msg.CLOSE_SESSION_REPLACED, "peer id taken over by a new connection")
        else:
            self.close(msg.CLOSE_IDLE_TIMEOUT, "idle timeout")


@implementer(IPushProducer)
class SendBacklog:
    """Counts what is written to a transport while its write buffer is full.

    Registered as the transport's streaming producer: Twisted pauses it when the
    transport buffers more than its ``bufferSize`` (64 KiB) and resumes it once
    everything went out. ``backlog`` is the bytes written since the pause.
    """

    __slots__ = ("backlog", "paused")

    def __init__(self) -> None:
        self.paused = False
        self.backlog = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.backlog = 0

    def stopProducing(self) -> None:
        self.paused = False
        self.backlog = 0


class SignalingServerProtocol(QuietWebSocketServerProtocol):
    """The Autobahn side of one connection: handshake checks, then a session."""

    factory: SignalingServerFactory
    session: SignalingSession | None = None
    backlog: SendBacklog | None = None
    _backlog_attempts = 0
    _counted_host: str | None = None
    _auth_peer_id: str | None = None
    _token: str | None = None
    _token_expires: float | None = None
    _forwarded: str | None = None
    _host_header: str | None = None
    _finished = False
    _refused = False

    def onConnect(self, request: ConnectionRequest) -> None:
        factory = self.factory
        config = factory.config
        assert self.transport is not None
        peer = self.transport.getPeer()
        host = getattr(peer, "host", str(peer))
        if config.trust_x_forwarded_for and not str(request.peer).startswith(("tcp", "unix")):
            self._forwarded = host = str(request.peer)
        if factory.accepted >= config.max_connections:
            factory.stats.denied[503] += 1
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "server full")
        if factory.per_address.full(host):
            factory.stats.denied[429] += 1
            raise ConnectionDeny(429, "too many connections from your address")
        if config.auth_secret:
            token = auth.token_from_request(request.params, request.headers)
            if token is None:
                factory.stats.denied[401] += 1
                raise ConnectionDeny(401, "authentication required: token missing")
            try:
                grant = auth.check_token(config.auth_secret, token, factory.clock.seconds())
            except auth.InvalidToken as e:
                factory.stats.denied[401] += 1
                raise ConnectionDeny(401, f"authentication failed: {e.reason}") from None
            if config.token_single_use:
                if not factory.tokens_in_use.claim(token):
                    factory.stats.denied[409] += 1
                    raise ConnectionDeny(409, "token already in use by another connection")
                self._token = token
            self._auth_peer_id, self._token_expires = grant.peer_id, grant.expires
        factory.accepted += 1
        factory.per_address.add(host)
        self._counted_host = host
        self._host_header = request.headers.get("host")
        return None

    def onOpen(self) -> None:
        factory = self.factory
        assert self.transport is not None
        self.session = SignalingSession(
            factory.registry,
            factory.config,
            factory.clock,
            factory.stats,
            self._send_json,
            self._close_with,
            describe_address(self.transport.getPeer(), self._forwarded),
            self._auth_peer_id,
            self._ice_servers(),
            self._token_expires,
            self._swap_token if self._token is not None else None,
            self._send_encoded,
        )
        factory.protocols.add(self)
        factory.stats.connections_total += 1
        self.turns = factory.turns
        self.session.opened()

    def _watch_backlog(self) -> None:
        """Register a :class:`SendBacklog` as the transport's producer.

        During the handshake twisted.web's channel is still registered (it is released
        once Autobahn has taken the connection over), so this is tried again at the next
        few sends; a transport that keeps someone else's producer goes unwatched.
        """
        self._backlog_attempts += 1
        backlog = SendBacklog()
        try:
            self.transport.registerProducer(backlog, True)  # type: ignore[union-attr]
        except RuntimeError:
            return
        self.backlog = backlog

    def _swap_token(self, token: str) -> bool:
        held = self._token
        if held is None or not self.factory.tokens_in_use.swap(held, token):
            return False
        self._token = token
        return True

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Autobahn's, without its two log lines per refusal (an ``info`` here and a
        ``warn`` in ``dropConnection``): refusals are counted and summarised
        (:meth:`SignalingServerFactory.handshake_refused`)."""
        self.wasNotCleanReason = reason
        self.factory.handshake_refused(code, reason)
        self.sendHttpErrorResponse(code, reason, responseHeaders)
        self._refused = True
        self.dropConnection(abort=False)

    def dropConnection(self, abort: bool = False) -> None:
        if not self._refused or self.state == self.STATE_CLOSED:
            super().dropConnection(abort)
            return
        # Autobahn's dropConnection for an open connection, without its warning.
        self.unregisterProducer()
        self.droppedByMe = True
        self.state = self.STATE_CLOSED
        txaio.resolve(self.is_closed, self)  # type: ignore[attr-defined]
        self._closeConnection(abort)

    def _ice_servers(self) -> list[JSONObject]:
        hints = self.factory.config.ice_servers
        if hints is None:
            return []
        # TURN REST-API usernames name the token's peer, else an id for this connection.
        user = self._auth_peer_id or secrets.token_hex(6)
        return hints.for_client(self._host_header, user, self.factory.clock.seconds())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.session is not None:
            self.session.message_received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._finish()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        cancel_timers(self)
        self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        factory = self.factory
        factory.protocols.discard(self)
        if self._counted_host is not None:
            factory.accepted -= 1
            factory.per_address.remove(self._counted_host)
            self._counted_host = None
        if self._token is not None:
            factory.tokens_in_use.release(self._token)
            self._token = None
        if self.session is not None:
            self.session.closed()

    def _send_json(self, message: JSONObject) -> bool:
        """Send one message; False when the client is too far behind to take it (it is
        then dropped, close 1013)."""
        if self.state != self.STATE_OPEN:
            return True
        return self._send_encoded(msg.encode(message), message)

    def _send_encoded(self, data: bytes, message: JSONObject | None = None) -> bool:
        """:meth:`_send_json` for a message already encoded."""
        if self.state != self.STATE_OPEN:
            return True
        if self.backlog is None and self._backlog_attempts < 4:
            self._watch_backlog()
        backlog = self.backlog
        if backlog is not None and backlog.paused:
            if backlog.backlog + len(data) > self.factory.config.send_buffer_limit:
                self._drop_slow_reader(backlog.backlog)
                return False
            backlog.backlog += len(data)
        try:
            self.sendMessage(data)
        except (Disconnected, PayloadExceededError):
            kind = "relayed" if message is None else message.get("type")
            _log.failure("could not send a {type} message", type=kind)
        return True

    def _drop_slow_reader(self, waiting: int) -> None:
        """The client does not read: close 1013 and abort at once, freeing what it left
        unread (the close frame reaches it only if it catches up first)."""
        self.factory.stats.slow_readers += 1
        _log.info(
            "dropping {address}: {waiting} bytes unread beyond the transport's buffer",
            address=self.session.address if self.session is not None else None,
            waiting=waiting,
        )
        if self.session is not None:
            self.session.close(msg.CLOSE_TRY_AGAIN_LATER, "reading too slowly")
        self.dropConnection(abort=True)

    def _close_with(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            # sendClose() refuses the 1xxx codes; the frame itself may carry any valid code.
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)
        else:
            self.dropConnection(abort=True)


class SignalingServerFactory(WebSocketServerFactory):
    """Builds :class:`SignalingServerProtocol`; owns the per-server state they share."""

    protocol = SignalingServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        config: SignalingConfig,
        registry: IRoomRegistry,
        clock: IReactorTime,
        reactor: Any = None,
    ) -> None:
        super().__init__(reactor=reactor if reactor is not None else clock)
        self.turns = reactor
        """The reactor given to listen with (None in tests that build the factory alone):
        its connections' back-to-back reads are held to the end of its turn."""
        self.config = config
        self.registry = registry
        self.clock = clock
        self.stats = ServerStats()
        self.refusals = RefusalSummary(write=_log_refusals)
        """Refused handshakes, logged as one summary line a minute at most."""
        self.accepted = 0
        self.per_address = ConnectionsPerAddress(config.max_connections_per_address)
        """Open WebSocket connections by client address (the forwarded one behind a
        trusted proxy), capped at ``max_connections_per_address``."""
        self.protocols: set[SignalingServerProtocol] = set()
        self.tokens_in_use = SingleUseTokens()
        """With ``token_single_use``: the tokens of the open connections."""
        self.setProtocolOptions(
            maxFramePayloadSize=config.max_frame_size,
            maxMessagePayloadSize=config.max_frame_size,
            autoPingInterval=config.auto_ping_interval,
            autoPingTimeout=config.auto_ping_timeout,
            maxConnections=config.max_connections,
            openHandshakeTimeout=config.open_handshake_timeout,
            closeHandshakeTimeout=config.close_handshake_timeout,
            trustXForwardedFor=config.trust_x_forwarded_for,
            failByDrop=False,
            webStatus=False,
            # Text frames are not UTF-8-validated by Autobahn: the JSON decoder validates
            # UTF-8 anyway, and invalid text then gets ``invalid-json`` like a bad binary
            # frame instead of a 1007 close.
            utf8validateIncoming=False,
        )

    def handshake_refused(self, code: int, reason: str) -> None:
        """Count a refused WebSocket handshake for the log summary (anyone on the
        internet can make these: a line each would let them fill the log)."""
        self.refusals.record(str(code), self.clock.seconds(), reason)

    def log_refusals(self, now: float) -> None:
        """Write the summary of refusals not yet logged, if any (on the sweep timer)."""
        self.refusals.flush(now)

    def sweep(self, now: float) -> None:
        """Evict idle peers; close connections that never registered within the timeout."""
        self.log_refusals(now)
        d: defer.Deferred[Any] = defer.maybeDeferred(self.registry.sweep, now)
        d.addCallback(_log_evicted)
        d.addErrback(lambda f: _log.failure("sweeping idle signaling peers failed", f))
        for proto in list(self.protocols):
            session = proto.session
            if (
                session is not None
                and session.peer_id is None
                and now - session.last_activity >= self.config.peer_timeout
            ):
                session.close(msg.CLOSE_IDLE_TIMEOUT, "idle timeout")

    def close_all(self, code: int, reason: str) -> list[defer.Deferred[Any]]:
        """Start closing every connection; return Deferreds that fire as each is gone."""
        waiting: list[defer.Deferred[Any]] = []
        for proto in list(self.protocols):
            waiting.append(_observe(proto.is_closed))
            if proto.session is not None:
                proto.session.close(code, reason)
        return waiting


def _log_refusals(summary: Summary) -> None:
    _log.info(
        "refused {total} WebSocket handshakes in {seconds:.0f}s ({counts}); last: {last_detail}",
        **summary.log_fields(),
    )


def _log_evicted(evicted: list[str]) -> None:
    if evicted:
        _log.info("evicted {count} idle peers", count=len(evicted))


def _observe(d: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A new Deferred that fires (with None) when ``d`` does, leaving ``d``'s result alone."""
    observer: defer.Deferred[None] = defer.Deferred()

    def fire(result: object) -> object:
        observer.callback(None)
        return result

    d.addBoth(fire)
    return observer


_INDEX_TEXT = index_text(
    "holepunch signaling server",
    "Connect a WebSocket client to this URL (ws:// or wss://) and speak the JSON\n"
    "signaling protocol: register, join-room, offer, answer, ice-candidate.\n",
)


class SignalingRootPage(Resource):
    """``/``: the WebSocket upgrade, or a short text page for a plain GET."""

    isLeaf = True

    def __init__(self, websocket: WebSocketResource) -> None:
        super().__init__()
        self._websocket = websocket

    def render(self, request: Request) -> bytes | int:
        upgrade = request.getHeader(b"upgrade") or b""
        if upgrade.strip().lower() == b"websocket":
            channel = request.channel
            transport = channel.transport
            result: bytes | int = self._websocket.render(request)
            if transport is not None and channel.transport is None:
                # Autobahn took the connection over: the HTTP channel is done with it.
                release_http_channel(transport)
                if isinstance(channel, GuardedChannel):
                    channel.handed_over()
            return result
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return b""
        return render_text(request, _INDEX_TEXT)


class _ListeningService(Service):
    """Listens on an endpoint while running; ``port`` is the listening port."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Site) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._listening: defer.Deferred[IListeningPort] | None = None
        self._waiters: list[defer.Deferred[IListeningPort]] = []

    def startService(self) -> None:
        super().startService()
        self._listening = self.endpoint.listen(self.factory)
        failures: list[Failure] = []
        self._listening.addCallbacks(self._listened, failures.append)
        if failures:
            # Like StreamServerEndpointService: a port in use stops twistd at startup.
            self._fire_waiters(failures[0])
            failures[0].raiseException()

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        self._fire_waiters(port)

    def _fire_waiters(self, result: IListeningPort | Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def when_listening(self) -> defer.Deferred[IListeningPort]:
        if self.port is not None:
            return defer.succeed(self.port)
        d: defer.Deferred[IListeningPort] = defer.Deferred()
        self._waiters.append(d)
        return d

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        listening, self._listening = self._listening, None
        port, self.port = self.port, None
        if port is not None:
            stopped = port.stopListening()
            if isinstance(stopped, defer.Deferred):
                return stopped.addCallback(lambda _: None)
            return defer.succeed(None)
        if listening is not None:
            listening.cancel()
        return defer.succeed(None)


class SignalingService(MultiService):
    """The signaling server as a service: listener, idle sweeper, registry and web root.

    - ``registry``: the :class:`RoomRegistry <holepunch.signaling.model.RoomRegistry>`,
      or with Redis a :class:`RedisRoomRegistry
      <holepunch.signaling.redisregistry.RedisRoomRegistry>` (a child service);
    - ``root``: the twisted.web resource served on the port (``putChild`` more pages);
    - ``port``: the listening port once listening, else None; ``when_listening()``;
    - ``stats()``: counters for health and metrics pages.
    """

    def __init__(
        self,
        config: SignalingConfig,
        registry: IRoomRegistry,
        factory: SignalingServerFactory,
        root: Resource,
        site: Site,
        endpoint: IStreamServerEndpoint,
        clock: IReactorTime,
    ) -> None:
        super().__init__()
        self.config = config
        self.registry = registry
        self.factory = factory
        self.root = root
        self.site = site
        self.clock = clock
        if IService.providedBy(registry):
            IService(registry).setServiceParent(self)  # started first, stopped last
        self._listener = _ListeningService(endpoint, site)
        self._listener.setServiceParent(self)
        self._sweeper = TimerService(config.cleanup_interval, self._sweep)
        self._sweeper.clock = clock
        self._sweeper.setServiceParent(self)

    @property
    def port(self) -> IListeningPort | None:
        return self._listener.port

    def when_listening(self) -> defer.Deferred[IListeningPort]:
        """Fires with the listening port once the server listens."""
        return self._listener.when_listening()

    def _sweep(self) -> None:
        try:
            self.factory.sweep(self.clock.seconds())
        except Exception:
            _log.failure("sweeping idle signaling peers failed")

    def stats(self) -> dict[str, Any]:
        """Peers, rooms, connections, messages relayed by type, errors by code."""
        stats = self.factory.stats
        result = self.registry.stats()
        result.update(
            connections=len(self.factory.protocols),
            connections_total=stats.connections_total,
            denied={str(code): n for code, n in sorted(stats.denied.items())},
            messages=dict(stats.messages),
            errors=dict(stats.errors),
            slow_readers_dropped=stats.slow_readers,
            tokens_expired=stats.tokens_expired,
        )
        return result

    def stopService(self) -> defer.Deferred[None]:
        """Stop listening, tell every client we are going away (1001), wait for them."""
        self.factory.log_refusals(self.clock.seconds())
        closing = self.factory.close_all(msg.CLOSE_GOING_AWAY, "server shutting down")
        result = super().stopService()
        stopped = result if isinstance(result, defer.Deferred) else defer.succeed(None)
        everything = defer.gatherResults([stopped, *closing], consumeErrors=True)
        deadline = self.config.close_handshake_timeout + 1.0
        everything.addTimeout(deadline, self.clock, onTimeoutCancel=self._abort_all)
        everything.addErrback(lambda f: _log.failure("stopping the signaling server", f))
        return everything.addCallback(lambda _: None)

    def _abort_all(self, result: object, timeout: float) -> None:
        for proto in list(self.factory.protocols):
            proto.dropConnection(abort=True)
        return None


def make_registry(config: SignalingConfig, clock: IReactorTime) -> IRoomRegistry:
    """The room registry ``config`` asks for: in memory, or shared on ``redis_url``."""
    if config.redis_url is None:
        return RoomRegistry(config.limits())
    from holepunch.signaling.redisregistry import RedisRoomRegistry
    from holepunch.signaling.redisstate import parse_redis_url

    return RedisRoomRegistry(
        parse_redis_url(config.redis_url),
        config.limits(),
        clock,
        config.presence_ttl,
        link_directory=config.node_links,
    )


def make_signaling_service(
    config: SignalingConfig, reactor: Any = None, clock: IReactorTime | None = None
) -> SignalingService:
    """Build the signaling server described by ``config`` (not yet started).

    ``reactor`` listens; ``clock`` (default: the reactor) times the protocol: idle
    eviction, rate limits, token expiry and timestamps. With ``config.redis_url`` the
    registry is shared with the other nodes on that Redis (see :func:`make_registry`).
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if clock is None:
        clock = cast(IReactorTime, reactor)
    registry = make_registry(config, clock)
    factory = SignalingServerFactory(config, registry, clock, reactor=reactor)
    root = Resource()
    root.putChild(b"", SignalingRootPage(WebSocketResource(factory)))
    # Behind a trusted proxy every connection comes from the proxy's address: the cap
    # per address then applies to the forwarded client address, in the handshake.
    per_address = None if config.trust_x_forwarded_for else config.max_connections_per_address
    site = GuardedSite(
        root,
        head_timeout=config.http_head_timeout,
        max_connections_per_address=per_address,
        reactor=reactor,
    )
    endpoint = server_endpoint(reactor, config.endpoint, config.reuse_port)
    return SignalingService(config, registry, factory, root, site, endpoint, clock)

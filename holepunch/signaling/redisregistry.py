# -*- test-case-name: tests.integration.test_signaling_redis -*-
"""The room registry shared by several signaling nodes through Redis.

:class:`RedisRoomRegistry` provides :class:`holepunch.interfaces.IRoomRegistry` with
Deferred results. Each node keeps its own connections (``ISignalingClient``) in memory;
peers, rooms, membership and reconnect tokens live in Redis, changed only by the Lua
scripts of :mod:`holepunch.signaling.redisstate` (so the rules hold across nodes), which
publish every delivery on the channel of the recipient's node. The node subscribes to
its channel and hands what arrives to its clients, in the order Redis published it.

Presence: the node's key carries a TTL (``presence_ttl``), refreshed every third of it;
a node that stops cleanly removes its peers at once, a crashed one's peers vanish when
its key expires and are reaped (their rooms get ``peer-left``) by the next heartbeat of
any live node. Redis going away mid-run is logged; txredisapi reconnects, requests wait
for it up to ``request_timeout`` seconds, then fail with ``internal-error``.
"""

from __future__ import annotations

import secrets
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import txredisapi
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from holepunch.interfaces import (
    DisconnectReason,
    IRoomRegistry,
    ISignalingClient,
    Registration,
)
from holepunch.signaling import messages as codes
from holepunch.signaling import redisstate as rs
from holepunch.signaling.messages import JSONObject, PeerEntry
from holepunch.signaling.model import (
    MAX_CONNECTION_STATES,
    ConnectionState,
    Limits,
    SignalingError,
    shares_room,
)
from holepunch.signaling.nodelinks import NodeLinks, usable_node_id

log = Logger()


class RedisUnavailable(Exception):
    """Redis could not be reached (or refused us) when the daemon started."""


def check_redis(url: rs.RedisURL, timeout: float = 5.0) -> None:
    """Connect to ``url``, authenticate, select the database and PING, blocking.

    For start-up only (before the reactor runs); raise :class:`RedisUnavailable` with a
    one-line reason naming the URL.
    """
    commands = rs.startup_commands(url)
    try:
        with _connect(url, timeout) as sock:
            sock.sendall(b"".join(commands))
            replies = sock.makefile("rb")
            for _ in commands:
                line = replies.readline().decode("utf-8", "replace").strip()
                if not line:
                    raise RedisUnavailable(f"Redis at {url} closed the connection")
                if line.startswith("-"):
                    raise RedisUnavailable(f"Redis at {url} refused: {line[1:]}")
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise RedisUnavailable(f"cannot reach Redis at {url}: {reason}") from None


def _connect(url: rs.RedisURL, timeout: float) -> socket.socket:
    if url.path is None:
        return socket.create_connection((url.host, url.port), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(url.path)
    except OSError:
        sock.close()
        raise
    return sock


def _default_token() -> str:
    return secrets.token_urlsafe(24)


ROUTE_TTL = 1.0
"""Seconds a peer's node, learnt when the relay script let a sender reach it, is used
to relay that sender's messages to it directly. A relay that reaches a node the peer
has just left is sent on from there. Within this time a relay may still reach a peer
that has just left the last room it shared with the sender (the sender's own leaving
clears its routes at once)."""
MAX_ROUTES = 256
"""Routes kept per sender at most (the oldest go first): memory per peer stays bounded."""


@dataclass(slots=True)
class LocalPeer:
    """A peer whose connection is on this node."""

    peer_id: str
    client: ISignalingClient
    conn: str
    last_seen: float
    connection_states: dict[str, ConnectionState] = field(default_factory=dict)
    rooms: set[str] = field(default_factory=set)
    """The rooms it joined through this node (a resumed peer's older ones are in Redis
    only: relays between such peers go through the relay script, which knows them)."""
    routes: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Peers it relayed to lately through the script: peer id -> (node, valid until)."""


class _BusProtocol(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.deliver(message)


class _BusFactory(txredisapi.SubscriberFactory):
    """The subscriber connection: (re)subscribes to the node's channel on every connect."""

    protocol = _BusProtocol

    def __init__(
        self, channel: str, deliver: Callable[[str], None], subscribed: Callable[[], None]
    ) -> None:
        super().__init__()
        self.channel = channel
        self.deliver = deliver
        self.subscribed = subscribed

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            d = conn.subscribe(self.channel)
            d.addCallbacks(lambda _: self.subscribed(), self._failed)

    def _failed(self, failure: Failure) -> None:
        log.warn("could not subscribe to {channel}: {error}", channel=self.channel,
                 error=failure.getErrorMessage())  # fmt: skip


@implementer(IRoomRegistry)
class RedisRoomRegistry(Service):
    """A node's view of the room registry shared through Redis.

    A service: started, it connects (command and subscriber connections) and beats;
    stopped, it removes its node's peers from Redis and disconnects. Operations wait for
    the connections, so they may be called as soon as it is started.

    ``limits.max_peers`` bounds this node's peers (its capacity); the room and per-peer
    limits hold across nodes. ``clock`` is the reactor: its time, and its TCP for the
    connections to Redis (the global reactor when None).
    """

    def __init__(
        self,
        url: rs.RedisURL,
        limits: Limits | None = None,
        clock: Any = None,
        presence_ttl: float = 30.0,
        request_timeout: float = 10.0,
        prefix: str = rs.DEFAULT_PREFIX,
        node_id: str | None = None,
        token_factory: Callable[[], str] = _default_token,
        link_directory: str | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as default_reactor

            clock = default_reactor
        assert clock is not None
        self.url = url
        self.limits = limits or Limits()
        self.clock = clock
        self.presence_ttl = presence_ttl
        self.request_timeout = request_timeout
        self.prefix = prefix
        self.keys = rs.Keys(prefix)
        self.node_id = node_id or uuid.uuid4().hex
        self._new_token = token_factory
        self._local: dict[str, LocalPeer] = {}
        self._serial = 0
        self._redis: Any = None
        self._factory: Any = None
        self._bus: _BusFactory | None = None
        self._connected: defer.Deferred[Any] | None = None
        self._subscribed: defer.Deferred[None] = defer.Deferred()
        self._ready: defer.Deferred[None] | None = None
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self._beating: defer.Deferred[Any] | None = None
        self._stopping = False
        """Stopping: no new operations (the last ones and the node's removal may run)."""
        self._stopped = False
        self.relayed: dict[str, int] = {"offer": 0, "answer": 0, "ice-candidate": 0}
        self._outbox: dict[str, list[rs.RelayEvent]] = {}
        self._flushing: Any = None
        self.published = 0
        """Relays sent to another node on its Redis channel (not over a link)."""
        self.forwarded = 0
        """Relays that reached this node after their peer had left it, sent on."""
        self.evicted = 0
        self.reaped_local = 0
        self.links: NodeLinks | None = None
        """With ``link_directory``: direct links to the nodes of this machine (the
        workers of one daemon), which carry the relays for their peers instead of Redis."""
        if link_directory is not None and not usable_node_id(link_directory, self.node_id):
            log.warn("no worker links: {path} is too long a socket path for node {node}",
                     path=link_directory, node=self.node_id)  # fmt: skip
        elif link_directory is not None:
            self.links = NodeLinks(
                clock, link_directory, self.node_id, self._link_arrived, self._link_failed
            )

    @property
    def peer_timeout(self) -> float:
        return self.limits.peer_timeout

    # -- lifecycle ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = self._stopped = False
        log.info("sharing signaling peers and rooms through {url} as node {node}",
                 url=str(self.url), node=self.node_id)  # fmt: skip
        self._bus = _BusFactory(self.keys.bus(self.node_id), self._deliver, self._on_subscribed)
        self._bus.password = self.url.password
        self._bus.username = self.url.username
        self._bus.startConnecting(_endpoint(self.clock, self.url))
        self._factory = txredisapi.RedisFactory(
            str(self.url),
            self.url.db,
            1,
            password=self.url.password,
            username=self.url.username,
            convertNumbers=False,
        )
        self._factory.startConnecting(_endpoint(self.clock, self.url))
        self._connected = self._factory.deferred
        self._connected.addCallback(self._got_connection)
        ready = defer.gatherResults([self._connected, self._subscribed], consumeErrors=True)
        self._ready = ready.addCallback(self._first_beat)
        if self.links is not None:
            self.links.startService()

    def _got_connection(self, redis: Any) -> Any:
        self._redis = redis
        return redis

    def _on_subscribed(self) -> None:
        log.debug("node {node} subscribed", node=self.node_id)
        if not self._subscribed.called:
            self._subscribed.callback(None)

    def _first_beat(self, _: object) -> defer.Deferred[None]:
        first: defer.Deferred[None] = defer.Deferred()
        self._beat().addBoth(lambda _: first.callback(None))
        self._heartbeat.start(self.presence_ttl / 3, now=False)
        return first

    def when_ready(self) -> defer.Deferred[None]:
        """Fires once connected, subscribed and present in Redis."""
        if self._ready is None:
            return defer.fail(RuntimeError("the registry is not started"))
        waiter: defer.Deferred[None] = defer.Deferred()
        self._ready.addBoth(_pass_to(waiter))
        return waiter

    def stopService(self) -> defer.Deferred[None]:
        """Take this node's peers out of Redis (their rooms hear it), then disconnect."""
        super().stopService()
        return defer.ensureDeferred(self._stop(clean=True))

    def abandon(self) -> defer.Deferred[None]:
        """Stop as a crashed node would: disconnect, leaving everything in Redis to expire."""
        super().stopService()
        return defer.ensureDeferred(self._stop(clean=False))

    async def _stop(self, clean: bool) -> None:
        self._stopping = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        self._local = {}  # what the node's connections do now is no longer shared
        if clean and self._redis is not None:
            try:
                if self._beating is not None:
                    await self._beating
                now = rs.encode_time(self.clock.seconds())
                await self._eval(rs.DROP_NODE, self.node_id, now, early=True)
            except Exception as e:
                log.warn("could not remove node {node} from Redis: {error}",
                         node=self.node_id, error=e)  # fmt: skip
        self._stopped = True
        waits = []
        if self.links is not None and self.links.running:
            waits.append(self.links.stopService())
        if self._factory is not None:
            waits.append(self._factory.disconnect())
        if self._bus is not None:
            waits.append(self._bus.disconnect())
        await defer.gatherResults(waits, consumeErrors=True).addErrback(lambda _: None)

    # -- talking to Redis -----------------------------------------------------------------

    def _eval(self, script: str, *args: str, early: bool = False) -> defer.Deferred[list[Any]]:
        """Run ``script`` with the prefix and ``args`` once ready (``early``: connected).

        Ready is connected, subscribed and present: a peer registered before the node's
        channel and presence exist would be unreachable.
        """
        gate = self._connected if early else self._ready
        if self._stopped or gate is None:
            return defer.fail(SignalingError(codes.INTERNAL_ERROR, "the registry is stopped"))

        def run(_: object) -> defer.Deferred[list[Any]]:
            return self._redis.eval(script, [], [self.prefix, *args])

        opened: defer.Deferred[Any] = defer.Deferred()
        gate.addBoth(_pass_to(opened))
        reply = opened.addCallback(run)
        # Not reply.addTimeout: cancelling a command would upset txredisapi's reply queue.
        answer: defer.Deferred[list[Any]] = defer.Deferred()
        timer = self.clock.callLater(
            self.request_timeout, answer.errback, defer.TimeoutError("no answer from Redis")
        )

        def settle(result: Any) -> None:
            if timer.active():
                timer.cancel()
            if not answer.called:
                if isinstance(result, Failure):
                    answer.errback(result)
                else:
                    answer.callback(result)
            elif isinstance(result, Failure):
                log.debug("late Redis failure: {error}", error=result.getErrorMessage())

        reply.addBoth(settle)
        return answer.addErrback(self._unavailable)

    def _unavailable(self, failure: Failure) -> Failure:
        if failure.check(SignalingError):
            return failure
        log.warn("the shared registry at {url} failed: {error}", url=str(self.url),
                 error=failure.getErrorMessage())  # fmt: skip
        raise SignalingError(codes.INTERNAL_ERROR, "the shared registry is unavailable")

    def _beat(self) -> defer.Deferred[Any]:
        pairs = [x for p in self._local.values() for x in (p.peer_id, p.conn)]
        ttl_ms = str(max(1, round(self.presence_ttl * 1000)))
        now = rs.encode_time(self.clock.seconds())
        d = self._eval(rs.HEARTBEAT, self.node_id, ttl_ms, now, *pairs, early=True)
        d.addCallback(self._lost)
        d.addErrback(lambda f: None)  # logged by _unavailable; the next beat tries again
        self._beating = d
        return d

    def _lost(self, reply: list[Any]) -> None:
        """Peers Redis no longer has for us (our presence expired while cut off)."""
        lost = reply[1:]
        for peer_id, conn in zip(lost[::2], lost[1::2], strict=True):
            peer = self._local.get(peer_id)
            if peer is not None and peer.conn == conn:
                del self._local[peer_id]
                log.warn("peer {peer} was reaped from Redis; disconnecting it", peer=peer_id)
                self.reaped_local += 1
                peer.client.disconnect(DisconnectReason.IDLE_TIMEOUT)

    def _check(self, reply: list[Any], **values: object) -> list[Any]:
        code = rs.script_error(reply)
        if code is not None:
            values.setdefault("max_rooms", self.limits.max_rooms_per_peer)
            values.setdefault("max_per_room", self.limits.max_peers_per_room)
            raise SignalingError(code, rs.ERROR_MESSAGES.get(code, code).format(**values))
        return reply

    # -- deliveries from the node's channel ----------------------------------------------------

    def _deliver(self, text: Any) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        try:
            event = rs.decode_event(text)
        except rs.EventError as e:
            log.warn("ignoring a bad message on {node}'s channel: {error}",
                     node=self.node_id, error=e)  # fmt: skip
            return
        match event:
            case rs.BatchEvent(relays):
                for relay in relays:
                    self._relay_arrived(relay)
            case rs.RelayEvent() as relay:
                # The relay or forward script found the peer here: if it is gone, so is
                # the relay (it is not sent on again).
                self._deliver_local(relay.to, relay)
            case rs.RoomEvent(joined, to, room_id, peer_id, timestamp, metadata):
                peer = self._local.get(to)
                if peer is not None:
                    notify = peer.client.peer_joined if joined else peer.client.peer_left
                    notify(room_id, peer_id, metadata, timestamp)
            case rs.ReplacedEvent(peer_id, conn):
                peer = self._local.get(peer_id)
                if peer is not None and peer.conn == conn:
                    del self._local[peer_id]
                    peer.client.disconnect(DisconnectReason.REPLACED)

    def _deliver_local(self, to: str, relay: rs.RelayEvent | bytes) -> bool:
        """Hand a relay for ``to`` to its connection if that is on this node (else
        False): ``relay`` is the relay, or the relayed message already encoded (from a
        worker link)."""
        peer = self._local.get(to)
        if peer is None:
            return False
        try:
            if isinstance(relay, bytes):
                peer.client.relayed_encoded(relay)
            else:
                peer.client.relayed(relay.kind, relay.from_peer, relay.payload)
        except SignalingError as e:
            # peer-too-slow: the connection dropped itself; the sender, on another node
            # (or acked already), is not told.
            log.info("relay to {peer} refused: {error}", peer=to, error=e.code)
        return True

    def _relay_arrived(self, relay: rs.RelayEvent) -> None:
        """A relay routed here by another node's route cache."""
        if self._deliver_local(relay.to, relay):
            return
        # The route was stale (the peer moved or left within ROUTE_TTL): send it on.
        self.forwarded += 1
        d = self._eval(rs.FORWARD, self.node_id, relay.to, rs.encode_event(relay))
        d.addErrback(lambda _: None)  # gone for good: lost, as on one node

    def _link_arrived(self, to: str, message: bytes) -> None:
        """A relay another node of this machine sent through its link, encoded."""
        if self._deliver_local(to, message):
            return
        # The route was stale (the peer moved or left within ROUTE_TTL): send it on.
        try:
            relay = _relay_event(to, message)
        except ValueError as e:
            log.warn("ignoring a bad relay from a worker link: {error}", error=e)
            return
        self._relay_arrived(relay)

    def _link_failed(self, node: str, records: list[tuple[str, bytes]]) -> None:
        """Relays for ``node`` its link could not take: through Redis, in order."""
        for to, message in records:
            try:
                self._post(node, _relay_event(to, message))
            except ValueError:
                pass  # we encoded it: cannot happen

    # -- routing relays -------------------------------------------------------------------

    @staticmethod
    def _route(sender: LocalPeer, to_peer: str, now: float) -> str | None:
        """The node of ``to_peer`` if the relay script let ``sender`` reach it lately."""
        route = sender.routes.get(to_peer)
        if route is None:
            return None
        if route[1] < now:
            del sender.routes[to_peer]
            return None
        return route[0]

    @staticmethod
    def _learn_route(sender: LocalPeer, to_peer: str, node: str, now: float) -> None:
        routes = sender.routes
        routes.pop(to_peer, None)
        routes[to_peer] = (node, now + ROUTE_TTL)
        while len(routes) > MAX_ROUTES:
            del routes[next(iter(routes))]

    def _post(self, node: str, relay: rs.RelayEvent) -> None:
        """Queue a relay for ``node``; every queue goes out at the end of this turn."""
        self.published += 1
        self._outbox.setdefault(node, []).append(relay)
        if self._flushing is None:
            self._flushing = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flushing = None
        outbox, self._outbox = self._outbox, {}
        if self._redis is None or self._stopped:
            return
        for node, relays in outbox.items():
            event = rs.BatchEvent(tuple(relays))
            d = self._redis.publish(self.keys.bus(node), rs.encode_event(event))
            d.addErrback(lambda f: log.debug("publishing relays failed: {e}",
                                             e=f.getErrorMessage()))  # fmt: skip

    # -- IRoomRegistry --------------------------------------------------------------------

    def _holder(self, peer_id: str) -> LocalPeer:
        peer = self._local.get(peer_id)
        if peer is None:
            raise SignalingError(codes.NOT_REGISTERED, f"peer {peer_id!r} is not registered")
        return peer

    def local_peer(self, peer_id: str) -> LocalPeer | None:
        """The peer with this id if its connection is on this node."""
        return self._local.get(peer_id)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._local

    def register(
        self,
        client: ISignalingClient,
        peer_id: str,
        metadata: JSONObject,
        now: float,
        reconnect_token: str | None = None,
    ) -> defer.Deferred[Registration]:
        """Bind ``peer_id`` to ``client`` across the nodes (see ``RoomRegistry.register``)."""
        if self._stopping:
            return defer.fail(SignalingError(codes.INTERNAL_ERROR, "the node is shutting down"))
        existing = self._local.get(peer_id)
        if existing is not None and existing.client is client:
            return defer.fail(
                SignalingError(codes.ALREADY_REGISTERED, f"already registered as {peer_id!r}")
            )
        if existing is None and len(self._local) >= self.limits.max_peers:
            return defer.fail(
                SignalingError(
                    codes.SERVER_FULL,
                    f"the server holds its limit of {self.limits.max_peers} peers",
                )
            )
        self._serial += 1
        conn = f"{self.node_id}:{self._serial}"
        token = self._new_token()
        given = rs.token_digest(reconnect_token) if reconnect_token is not None else ""
        d = self._eval(
            rs.REGISTER,
            self.node_id,
            peer_id,
            conn,
            rs.encode_json(metadata),
            rs.token_digest(token),
            given,
            rs.encode_time(now),
        )

        def registered(reply: list[Any]) -> Registration:
            self._check(reply, peer=peer_id)
            resumed = reply[0] == "resumed"
            old = self._local.pop(peer_id, None)
            self._local[peer_id] = LocalPeer(peer_id, client, conn, now)
            if old is not None and old.client is not client:
                old.client.disconnect(DisconnectReason.REPLACED)
            return Registration(peer_id, token, resumed=resumed)

        return d.addCallback(registered)

    def unregister(
        self, peer_id: str, client: ISignalingClient, now: float
    ) -> defer.Deferred[None] | None:
        """``client``'s connection closed: remove its peer unless someone took it over."""
        peer = self._local.get(peer_id)
        if peer is None or peer.client is not client:
            return None
        del self._local[peer_id]
        if self._stopping:
            return None  # the node's removal takes care of it
        d = self._eval(rs.UNREGISTER, peer_id, peer.conn, rs.encode_time(now))
        return d.addCallback(lambda _: None)

    def touch(self, peer_id: str, now: float) -> None:
        """Something arrived from the peer (on this node): postpone its eviction."""
        peer = self._local.get(peer_id)
        if peer is not None and now > peer.last_seen:
            peer.last_seen = now

    def join(self, peer_id: str, room_id: str, now: float) -> defer.Deferred[list[PeerEntry]]:
        """Put the peer in a room; fires with the room's other peers."""
        try:
            peer = self._holder(peer_id)
        except SignalingError:
            return defer.fail()
        d = self._eval(
            rs.JOIN,
            peer_id,
            peer.conn,
            room_id,
            rs.encode_time(now),
            str(self.limits.max_rooms_per_peer),
            str(self.limits.max_peers_per_room),
        )

        def joined(reply: list[Any]) -> list[PeerEntry]:
            entries = rs.decode_entries(self._check(reply, peer=peer_id, room=room_id)[1:])
            peer.rooms.add(room_id)
            return entries

        return d.addCallback(joined)

    def leave(self, peer_id: str, room_id: str, now: float) -> defer.Deferred[None]:
        """Take the peer out of a room."""
        try:
            peer = self._holder(peer_id)
        except SignalingError:
            return defer.fail()
        d = self._eval(rs.LEAVE, peer_id, peer.conn, room_id, rs.encode_time(now))

        def left(reply: list[Any]) -> None:
            self._check(reply, peer=peer_id, room=room_id)
            peer.rooms.discard(room_id)
            peer.routes.clear()  # the room may have been what let it reach them

        return d.addCallback(left)

    def room_peers(self, peer_id: str, room_id: str) -> defer.Deferred[list[PeerEntry]]:
        """The other peers of a room the peer is in."""
        try:
            peer = self._holder(peer_id)
        except SignalingError:
            return defer.fail()
        d = self._eval(rs.ROOM_PEERS, peer_id, peer.conn, room_id)
        return d.addCallback(
            lambda reply: rs.decode_entries(self._check(reply, peer=peer_id, room=room_id)[1:])
        )

    def relay(
        self, from_peer: str, to_peer: str, kind: str, payload: JSONObject | None
    ) -> defer.Deferred[None] | None:
        """Deliver the message to ``to_peer``: at once when it is on this node; else on
        the channel of its node, straight there (batched per reactor turn) when that node
        is known from the last :data:`ROUTE_TTL` seconds, through the relay script
        otherwise (which checks the peer and teaches the route)."""
        local = self._local
        peer = local.get(from_peer)
        if peer is None:
            return defer.fail(
                SignalingError(codes.NOT_REGISTERED, f"peer {from_peer!r} is not registered")
            )
        target = local.get(to_peer)
        if target is not None and (self.limits.open_relay or shares_room(peer.rooms, target.rooms)):
            try:
                target.client.relayed(kind, from_peer, payload)
            except SignalingError:
                return defer.fail()  # peer-too-slow
            self.relayed[kind] = self.relayed.get(kind, 0) + 1
            return None  # done now: no Deferred to build and fire
        now = self.clock.seconds()
        node = self._route(peer, to_peer, now)
        if node is not None:
            self._send_to_node(node, to_peer, kind, from_peer, payload)
            self.relayed[kind] = self.relayed.get(kind, 0) + 1
            return None
        open_relay = "1" if self.limits.open_relay else "0"
        # With links, the script only checks and names the node; the relay then goes the
        # way the ones after it will (a link), so that it cannot arrive after them.
        publish = "0" if self.links is not None else "1"
        d = self._eval(
            rs.RELAY,
            from_peer,
            peer.conn,
            to_peer,
            kind,
            rs.encode_json(payload),
            open_relay,
            publish,
        )

        def relayed(reply: list[Any]) -> None:
            self._check(reply, peer=from_peer, to=to_peer)
            node = str(reply[1])
            if node != self.node_id:
                self._learn_route(peer, to_peer, node, now)
            if publish == "0":
                self._send_to_node(node, to_peer, kind, from_peer, payload)
            self.relayed[kind] = self.relayed.get(kind, 0) + 1

        return d.addCallback(relayed)

    def _send_to_node(
        self, node: str, to_peer: str, kind: str, from_peer: str, payload: JSONObject | None
    ) -> None:
        """Send a relay to the node of ``to_peer``: through its link if it has one, else on
        its Redis channel (with the others of this reactor turn)."""
        if node == self.node_id:  # the peer was here when the script ran
            self._relay_arrived(rs.RelayEvent(to_peer, kind, from_peer, payload))
            return
        links = self.links
        if links is not None:
            message = codes.encode_relayed(kind, from_peer, payload)
            if links.send(node, to_peer, message):
                return
        self._post(node, rs.RelayEvent(to_peer, kind, from_peer, payload))

    def set_connection_state(
        self, peer_id: str, remote_peer_id: str, state: str, method: str | None, now: float
    ) -> None:
        """Record (on this node) what the peer reports about a connection."""
        states = self._holder(peer_id).connection_states
        states.pop(remote_peer_id, None)
        states[remote_peer_id] = ConnectionState(state, method, now)
        while len(states) > MAX_CONNECTION_STATES:
            del states[next(iter(states))]

    def sweep(self, now: float) -> defer.Deferred[list[str]]:
        """Evict this node's idle peers; fires with their ids once Redis forgot them."""
        idle = [p for p in self._local.values() if now - p.last_seen >= self.peer_timeout]
        for peer in idle:
            del self._local[peer.peer_id]
        removals = [self._eval(rs.UNREGISTER, p.peer_id, p.conn, rs.encode_time(now)) for p in idle]

        def evicted(_: object) -> list[str]:
            for peer in idle:
                peer.client.disconnect(DisconnectReason.IDLE_TIMEOUT)
            self.evicted += len(idle)
            return [p.peer_id for p in idle]

        return defer.gatherResults(removals, consumeErrors=True).addBoth(evicted)

    def share_stats(
        self, group: str, member: str, snapshot: str, ttl: float
    ) -> defer.Deferred[dict[str, str]]:
        """Store ``snapshot`` (this process's counters, JSON) as ``member`` of ``group``
        (one daemon's workers) for ``ttl`` seconds; fires with every member's snapshot."""

        def pairs(reply: list[Any]) -> dict[str, str]:
            text = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in reply]
            return dict(zip(text[::2], text[1::2], strict=True))

        d = self._eval(rs.SHARE_STATS, group, member, snapshot, str(int(ttl * 1000)), early=True)
        return d.addCallback(pairs)

    @property
    def connected(self) -> bool:
        """Whether both connections to Redis (commands, subscription) are up."""
        factories = [self._factory, self._bus]
        return all(f is not None and f.size > 0 for f in factories) and not self._stopped

    def stats(self) -> dict[str, Any]:
        """Counts of this node: its peers (rooms are shared, not counted per node)."""
        return {
            "peers": len(self._local),
            "relayed": dict(self.relayed),
            "evicted": self.evicted,
            "forwarded": self.forwarded,
            "published": self.published,
            **({"links": self.links.stats()} if self.links is not None else {}),
            "redis": {"node": self.node_id, "url": str(self.url), "connected": self.connected},
        }


def _relay_event(to: str, message: bytes) -> rs.RelayEvent:
    """The relay an encoded relayed message (``{"type", "from", <payload field>}``) is;
    ``ValueError`` if it is none."""
    obj = rs.decode_json(message.decode("utf-8"))
    kind = obj.get("type") if isinstance(obj, dict) else None
    field = codes.RELAY_FIELDS.get(kind) if isinstance(kind, str) else None
    if field is None or not isinstance(obj.get("from"), str) or field not in obj:
        raise ValueError("not a relayed message")
    return rs.RelayEvent(to, str(kind), obj["from"], obj[field])


def _pass_to(waiter: defer.Deferred[Any]) -> Callable[[Any], Any]:
    """A callback that fires ``waiter`` with the result and passes the result on."""

    def fire(result: Any) -> Any:
        if isinstance(result, Failure):
            waiter.errback(result)
            return None
        waiter.callback(result)
        return result

    return fire


def _endpoint(reactor: Any, url: rs.RedisURL) -> Any:
    from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint

    if url.path is not None:
        return UNIXClientEndpoint(reactor, url.path)
    return HostnameEndpoint(reactor, url.host, url.port)


__all__ = ["LocalPeer", "RedisRoomRegistry", "RedisUnavailable", "check_redis"]

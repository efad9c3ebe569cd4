# -*- test-case-name: tests.unit.test_signaling_model -*-
"""The room model of the signaling server: peers, rooms, membership and eviction.

Pure state and rules. Nothing here touches a socket or reads a clock: every operation
takes ``now`` (seconds since the epoch, from the caller's injected clock), and idle peers
are evicted by :meth:`RoomRegistry.sweep`, which the wiring calls every
``cleanupInterval`` seconds.

The model talks back to connected peers through :class:`ISignalingClient`, one provider
per connection, so several front doors can feed the same registry (as the magic-wormhole
transit relay feeds one state machine from TCP and WebSocket through ``ITransitClient``):
the JSON-over-WebSocket protocol in :mod:`holepunch.signaling.server` today, a tracker
protocol or a Redis bus later.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from zope.interface import implementer

from holepunch.interfaces import (
    DisconnectReason,
    IRoomRegistry,
    ISignalingClient,
    Registration,
)
from holepunch.signaling import messages as codes
from holepunch.signaling.messages import JSONObject, PeerEntry

MAX_CONNECTION_STATES = 256
"""Most remote peers whose connection state one peer may report; the oldest is dropped."""


class SignalingError(Exception):
    """A request the rules refuse; ``code`` is one of :mod:`messages`' error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Limits:
    """Capacity limits of one registry."""

    max_peers: int = 10_000
    max_peers_per_room: int = 100
    max_rooms_per_peer: int = 16
    peer_timeout: float = 300.0
    open_relay: bool = False
    """Relay offers, answers and candidates between any two peers; False (the default):
    only between peers that share a room (else ``no-shared-room``)."""


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """What a peer last reported about its connection to one other peer."""

    state: str
    method: str | None
    updated_at: float


@dataclass(slots=True)
class Peer:
    """A registered peer and the connection that currently speaks for it."""

    peer_id: str
    client: ISignalingClient
    metadata: JSONObject
    reconnect_token: str
    registered_at: float
    last_seen: float
    rooms: dict[str, float] = field(default_factory=dict)
    """room id -> when the peer joined it (insertion ordered)."""
    connection_states: dict[str, ConnectionState] = field(default_factory=dict)


@dataclass(slots=True)
class Room:
    """A room: the peers in it, in the order they joined."""

    room_id: str
    created_at: float
    members: dict[str, float] = field(default_factory=dict)
    """peer id -> when it joined."""


def shares_room(rooms: Iterable[str], other_rooms: Container[str]) -> bool:
    """Whether two peers' room sets meet."""
    return any(room in other_rooms for room in rooms)


def _default_token() -> str:
    return secrets.token_urlsafe(24)


@implementer(IRoomRegistry)
class RoomRegistry:
    """Every registered peer and room of one signaling server.

    Rooms exist while they have members: the first ``join`` creates one, the last
    ``leave`` removes it.
    """

    def __init__(
        self, limits: Limits | None = None, token_factory: Callable[[], str] = _default_token
    ) -> None:
        self.limits = limits or Limits()
        self._new_token = token_factory
        self._peers: dict[str, Peer] = {}
        self._rooms: dict[str, Room] = {}
        self.relayed: dict[str, int] = {"offer": 0, "answer": 0, "ice-candidate": 0}
        self.evicted = 0

    @property
    def peer_timeout(self) -> float:
        return self.limits.peer_timeout

    # -- lookups -------------------------------------------------------------------------

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def peer(self, peer_id: str) -> Peer | None:
        """The registered peer with this id, if any."""
        return self._peers.get(peer_id)

    def peers(self) -> Iterator[Peer]:
        """Every registered peer."""
        return iter(list(self._peers.values()))

    def room(self, room_id: str) -> Room | None:
        """The room with this id, if it has members."""
        return self._rooms.get(room_id)

    def rooms(self) -> Iterator[Room]:
        """Every room that has members."""
        return iter(list(self._rooms.values()))

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def _require(self, peer_id: str) -> Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            raise SignalingError(codes.NOT_REGISTERED, f"peer {peer_id!r} is not registered")
        return peer

    def _entries(self, room: Room, excluding: str | None) -> list[PeerEntry]:
        return [
            PeerEntry(pid, self._peers[pid].metadata, joined)
            for pid, joined in room.members.items()
            if pid != excluding
        ]

    # -- registration --------------------------------------------------------------------

    def register(
        self,
        client: ISignalingClient,
        peer_id: str,
        metadata: JSONObject,
        now: float,
        reconnect_token: str | None = None,
    ) -> Registration:
        """Bind ``peer_id`` to ``client``.

        A peer id held by another live connection is refused with ``peer-id-taken``
        unless ``reconnect_token`` is the token issued to it, which moves the peer, with
        its rooms, to ``client``; the old connection is told to go
        (:attr:`DisconnectReason.REPLACED`). Every registration issues a fresh token.
        """
        existing = self._peers.get(peer_id)
        if existing is not None:
            if existing.client is client:
                raise SignalingError(codes.ALREADY_REGISTERED, f"already registered as {peer_id!r}")
            if reconnect_token is None or not hmac.compare_digest(
                reconnect_token.encode("utf-8"), existing.reconnect_token.encode("utf-8")
            ):
                raise SignalingError(
                    codes.PEER_ID_TAKEN, f"peer id {peer_id!r} is held by another connection"
                )
            old_client = existing.client
            existing.client = client
            existing.metadata = metadata
            existing.reconnect_token = self._new_token()
            existing.last_seen = now
            old_client.disconnect(DisconnectReason.REPLACED)
            return Registration(peer_id, existing.reconnect_token, resumed=True)
        if len(self._peers) >= self.limits.max_peers:
            raise SignalingError(
                codes.SERVER_FULL, f"the server holds its limit of {self.limits.max_peers} peers"
            )
        token = self._new_token()
        self._peers[peer_id] = Peer(peer_id, client, metadata, token, now, now)
        return Registration(peer_id, token, resumed=False)

    def unregister(self, peer_id: str, client: ISignalingClient, now: float) -> None:
        """``client``'s connection closed: remove its peer, unless someone took it over.

        Every room the peer was in gets ``peer-left``.
        """
        peer = self._peers.get(peer_id)
        if peer is None or peer.client is not client:
            return
        self._remove(peer, now)

    def _remove(self, peer: Peer, now: float) -> None:
        del self._peers[peer.peer_id]
        for room_id in list(peer.rooms):
            self._leave(peer, room_id, now)

    def touch(self, peer_id: str, now: float) -> None:
        """Something arrived from the peer: it is not idle."""
        peer = self._peers.get(peer_id)
        if peer is not None and now > peer.last_seen:
            peer.last_seen = now

    def sweep(self, now: float) -> list[str]:
        """Evict every peer silent for at least ``peer_timeout`` seconds.

        Their rooms get ``peer-left``, then their connections are told to go
        (:attr:`DisconnectReason.IDLE_TIMEOUT`). Returns the evicted peer ids.
        """
        idle = [p for p in self._peers.values() if now - p.last_seen >= self.peer_timeout]
        for peer in idle:
            self._remove(peer, now)
        for peer in idle:
            peer.client.disconnect(DisconnectReason.IDLE_TIMEOUT)
        self.evicted += len(idle)
        return [p.peer_id for p in idle]

    # -- rooms ---------------------------------------------------------------------------

    def join(self, peer_id: str, room_id: str, now: float) -> list[PeerEntry]:
        """Put the peer in ``room_id`` and return the room's other peers.

        The others get ``peer-joined``. Joining a room one is already in changes nothing
        and returns the same list (so a reconnecting client can simply rejoin).
        """
        peer = self._require(peer_id)
        room = self._rooms.get(room_id)
        if room is not None and peer_id in room.members:
            return self._entries(room, excluding=peer_id)
        if len(peer.rooms) >= self.limits.max_rooms_per_peer:
            raise SignalingError(
                codes.TOO_MANY_ROOMS,
                f"a peer may be in at most {self.limits.max_rooms_per_peer} rooms",
            )
        if room is not None and len(room.members) >= self.limits.max_peers_per_room:
            raise SignalingError(
                codes.ROOM_FULL,
                f"room {room_id!r} holds its limit of {self.limits.max_peers_per_room} peers",
            )
        if room is None:
            room = self._rooms[room_id] = Room(room_id, now)
        others = self._entries(room, excluding=peer_id)
        room.members[peer_id] = now
        peer.rooms[room_id] = now
        for other in others:
            self._peers[other.peer_id].client.peer_joined(room_id, peer_id, peer.metadata, now)
        return others

    def leave(self, peer_id: str, room_id: str, now: float) -> None:
        """Take the peer out of ``room_id``; the others get ``peer-left``."""
        peer = self._require(peer_id)
        if room_id not in peer.rooms:
            raise SignalingError(codes.NOT_IN_ROOM, f"not in room {room_id!r}")
        self._leave(peer, room_id, now)

    def _leave(self, peer: Peer, room_id: str, now: float) -> None:
        del peer.rooms[room_id]
        room = self._rooms[room_id]
        del room.members[peer.peer_id]
        if not room.members:
            del self._rooms[room_id]
            return
        for other_id in list(room.members):
            self._peers[other_id].client.peer_left(room_id, peer.peer_id, peer.metadata, now)

    def room_peers(self, peer_id: str, room_id: str) -> list[PeerEntry]:
        """The other peers of ``room_id``; only a member may ask."""
        peer = self._require(peer_id)
        if room_id not in peer.rooms:
            raise SignalingError(codes.NOT_IN_ROOM, f"not in room {room_id!r}")
        return self._entries(self._rooms[room_id], excluding=peer_id)

    # -- relaying and state --------------------------------------------------------------

    def relay(self, from_peer: str, to_peer: str, kind: str, payload: JSONObject | None) -> None:
        """Hand ``payload`` to ``to_peer``'s connection as a ``kind`` message from
        ``from_peer``. The payload is opaque. Sender and recipient must share a room,
        unless the limits say ``open_relay``.

        The recipient's connection may refuse it (``peer-too-slow``: it does not read
        what it is sent); that :class:`SignalingError` reaches the caller.
        """
        sender = self._peers.get(from_peer)
        if sender is None:
            sender = self._require(from_peer)  # raises not-registered
        target = self._peers.get(to_peer)
        if target is None:
            raise SignalingError(codes.PEER_NOT_FOUND, f"peer {to_peer!r} is not connected")
        if not self.limits.open_relay and not shares_room(sender.rooms, target.rooms):
            raise SignalingError(codes.NO_SHARED_ROOM, f"peer {to_peer!r} is in none of your rooms")
        target.client.relayed(kind, from_peer, payload)
        self.relayed[kind] = self.relayed.get(kind, 0) + 1

    def set_connection_state(
        self, peer_id: str, remote_peer_id: str, state: str, method: str | None, now: float
    ) -> None:
        """Record what the peer reports about its connection to ``remote_peer_id``."""
        peer = self._require(peer_id)
        states = peer.connection_states
        states.pop(remote_peer_id, None)
        states[remote_peer_id] = ConnectionState(state, method, now)
        while len(states) > MAX_CONNECTION_STATES:
            del states[next(iter(states))]

    def stats(self) -> dict[str, Any]:
        """Counts for monitoring."""
        return {
            "peers": len(self._peers),
            "rooms": len(self._rooms),
            "relayed": dict(self.relayed),
            "evicted": self.evicted,
        }

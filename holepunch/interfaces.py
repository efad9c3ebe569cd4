"""The zope interfaces between holepunch's parts.

Here so that a part can say what it provides without importing the part that uses it:
the signaling room model and its front doors meet at :class:`IRoomRegistry` and
:class:`ISignalingClient`; the coordinator implements :class:`IStatusProvider` without
importing the HTTP pages (:mod:`holepunch.daemon.http`) that show it. The values that
cross these interfaces (:class:`Registration`, :class:`DisconnectReason`) live here too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from holepunch.signaling.messages import JSONObject, PeerEntry

JSONDict = dict[str, Any]


class DisconnectReason(enum.Enum):
    """Why the model let go of a peer's connection."""

    IDLE_TIMEOUT = "idle-timeout"
    """Nothing arrived from the peer for ``peer_timeout`` seconds."""
    REPLACED = "replaced"
    """Another connection took the peer id over with the reconnect token."""


@dataclass(frozen=True, slots=True)
class Registration:
    """The result of a successful :meth:`holepunch.signaling.model.RoomRegistry.register`."""

    peer_id: str
    reconnect_token: str
    resumed: bool
    """True when the peer id was taken over from a live connection with the token."""


class IStatusProvider(Interface):
    """What the HTTP endpoints show: implemented by ``P2PCoordinator`` and
    ``holepunch.daemon.status.DaemonStatus``."""

    def health_check() -> defer.Deferred[JSONDict]:
        """Fires with ``{status, initialized, timestamp, services}``.

        ``status`` is ``healthy`` when everything enabled works (``/p2p/health`` answers
        200), anything else (``unhealthy``) otherwise (503); ``timestamp`` is in
        milliseconds since the epoch; ``services`` maps each part to its state.
        """

    def get_stats() -> JSONDict:
        """``{initialized, natInfo, activeConnections, signaling, holePunching}``."""

    def get_nat_info() -> JSONDict | None:
        """The NAT this side is behind (``NatInfo.to_json()``), or None when unknown."""

    def get_recommended_strategy() -> JSONDict | None:
        """``{strategy, recommendation, methods, difficulty, natType, ...}``, or None."""

    def get_nat_families() -> JSONDict | None:
        """Each address family's NAT report, keyed ``IPv4`` / ``IPv6`` as in
        ``holepunch nat-check --json``'s ``families``
        (:func:`holepunch.nat.model.families_json`), or None where both families were not
        checked (before the discovery ends, or a single-family one)."""


class ISignalingClient(Interface):
    """One connected peer, as the room model sees it.

    Each front door (WebSocket, tracker, bus) provides one per connection and turns these
    calls into its own wire format. The methods must not call back into the registry
    synchronously; ``disconnect`` in particular only starts closing the channel.
    """

    def peer_joined(room_id: str, peer_id: str, metadata: JSONObject, timestamp: float) -> None:
        """Another peer joined the room ``room_id``, which this peer is in."""

    def peer_left(room_id: str, peer_id: str, metadata: JSONObject, timestamp: float) -> None:
        """Another peer left ``room_id`` (or disconnected, or was evicted)."""

    def relayed(kind: str, from_peer: str, payload: JSONObject | None) -> None:
        """``from_peer`` sent this peer an ``offer``, ``answer`` or ``ice-candidate``."""

    def relayed_encoded(message: bytes) -> None:
        """A relay as :meth:`relayed`, already encoded as the JSON message the peer is to
        get (by the node of the sender, which sent it here over a worker link)."""

    def disconnect(reason: DisconnectReason) -> None:
        """The registry dropped this connection's peer: close the channel."""


class IRoomRegistry(Interface):
    """The operations a front door calls on the room model.

    Each method but :meth:`touch` and :meth:`set_connection_state` returns its result
    either directly (the in-memory ``RoomRegistry``) or as a Deferred that fires with it
    (the Redis-backed ``RedisRoomRegistry``, shared by several nodes); a refusal is a
    :class:`SignalingError` raised or failing the Deferred. Callers accept both, and keep
    a connection's requests in order (``SignalingSession`` waits for one before the
    next). The ``ISignalingClient`` callbacks may come later than the result.
    """

    peer_timeout = Attribute("Seconds of silence after which a peer is evicted.")

    def register(
        client: ISignalingClient,
        peer_id: str,
        metadata: JSONObject,
        now: float,
        reconnect_token: str | None = None,
    ) -> Registration | defer.Deferred[Registration]:
        """Bind ``peer_id`` to ``client``; raise :class:`SignalingError` if refused."""

    def unregister(
        peer_id: str, client: ISignalingClient, now: float
    ) -> defer.Deferred[None] | None:
        """``client`` went away: if it still holds ``peer_id``, remove the peer."""

    def touch(peer_id: str, now: float) -> None:
        """Something arrived from the peer: postpone its idle eviction."""

    def join(
        peer_id: str, room_id: str, now: float
    ) -> list[PeerEntry] | defer.Deferred[list[PeerEntry]]:
        """Put the peer in a room; return the room's other peers."""

    def leave(peer_id: str, room_id: str, now: float) -> defer.Deferred[None] | None:
        """Take the peer out of a room."""

    def room_peers(peer_id: str, room_id: str) -> list[PeerEntry] | defer.Deferred[list[PeerEntry]]:
        """The other peers of a room the peer is in."""

    def relay(
        from_peer: str, to_peer: str, kind: str, payload: JSONObject | None
    ) -> defer.Deferred[None] | None:
        """Deliver an offer, answer or ICE candidate to a connected peer."""

    def set_connection_state(
        peer_id: str, remote_peer_id: str, state: str, method: str | None, now: float
    ) -> None:
        """Record how the peer's connection to another peer is doing."""

    def sweep(now: float) -> list[str] | defer.Deferred[list[str]]:
        """Evict idle peers; return their ids."""

    def stats() -> dict[str, Any]:
        """Counts for monitoring: ``peers``, ``rooms``, ``relayed`` by kind, ``evicted``."""


__all__ = ["IRoomRegistry", "ISignalingClient", "IStatusProvider", "JSONDict"]

# -*- test-case-name: tests.unit.test_signaling_protocol -*-
"""The signaling wire format: JSON text messages, parsed into typed requests.

Every client message is a JSON object with a ``type``; any message may carry an ``id``
(a string or an integer) which the server echoes in its reply or error. This module
turns bytes into one of the request classes below or raises :class:`MessageError` with a
stable error code, and builds the server's messages as plain dicts. It knows nothing of
sockets, WebSocket or time: timestamps are passed in (milliseconds since the epoch, as a
browser's ``Date.now()``).

The full protocol, with an example of every message, is in ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import orjson

# ---------------------------------------------------------------------------------------
# Error codes: stable strings, the ``code`` of an ``error`` message.

INVALID_JSON: Final = "invalid-json"
NOT_AN_OBJECT: Final = "not-an-object"
UNKNOWN_TYPE: Final = "unknown-type"
MISSING_FIELD: Final = "missing-field"
INVALID_FIELD: Final = "invalid-field"
MESSAGE_TOO_LARGE: Final = "message-too-large"
NOT_REGISTERED: Final = "not-registered"
ALREADY_REGISTERED: Final = "already-registered"
PEER_ID_TAKEN: Final = "peer-id-taken"
SPOOFED_FROM: Final = "spoofed-from"
PEER_NOT_FOUND: Final = "peer-not-found"
ROOM_FULL: Final = "room-full"
TOO_MANY_ROOMS: Final = "too-many-rooms"
SERVER_FULL: Final = "server-full"
NOT_IN_ROOM: Final = "not-in-room"
RATE_LIMITED: Final = "rate-limited"
UNAUTHORIZED: Final = "unauthorized"
INTERNAL_ERROR: Final = "internal-error"
NO_SHARED_ROOM: Final = "no-shared-room"
PEER_TOO_SLOW: Final = "peer-too-slow"
INVALID_TOKEN: Final = "invalid-token"

ERROR_CODES: Final[frozenset[str]] = frozenset(
    {
        INVALID_JSON,
        NOT_AN_OBJECT,
        UNKNOWN_TYPE,
        MISSING_FIELD,
        INVALID_FIELD,
        MESSAGE_TOO_LARGE,
        NOT_REGISTERED,
        ALREADY_REGISTERED,
        PEER_ID_TAKEN,
        SPOOFED_FROM,
        PEER_NOT_FOUND,
        ROOM_FULL,
        TOO_MANY_ROOMS,
        SERVER_FULL,
        NOT_IN_ROOM,
        RATE_LIMITED,
        UNAUTHORIZED,
        INTERNAL_ERROR,
        NO_SHARED_ROOM,
        PEER_TOO_SLOW,
        INVALID_TOKEN,
    }
)

# WebSocket close codes the server uses (RFC 6455 section 7.4; 4000-4999 are private).
CLOSE_POLICY_VIOLATION: Final = 1008  # sustained rate-limit abuse
CLOSE_MESSAGE_TOO_BIG: Final = 1009  # frame above the hard limit (Autobahn closes)
CLOSE_GOING_AWAY: Final = 1001  # server shutting down
CLOSE_IDLE_TIMEOUT: Final = 4000  # nothing received for peerTimeout seconds
CLOSE_SESSION_REPLACED: Final = 4001  # the peer id was taken over with the reconnect token
CLOSE_TRY_AGAIN_LATER: Final = 1013  # the client does not read what it is sent (slow reader)
CLOSE_TOKEN_EXPIRED: Final = 4002  # the connection's auth token expired and was not renewed

# ---------------------------------------------------------------------------------------
# Limits on field shapes (the message size limit is the server's configuration).

MAX_ID_LENGTH: Final = 256
"""Longest peer id, room id, request id or reconnect token, in characters."""
MAX_METHOD_LENGTH: Final = 64
MAX_METADATA_SIZE: Final = 1024
"""Largest ``metadata`` object, in bytes of compact JSON: it is repeated in every peer list."""
MAX_TOKEN_LENGTH: Final = 1024
"""Longest auth token a ``renew`` may carry, in characters."""

CONNECTION_STATES: Final[frozenset[str]] = frozenset(
    # RTCPeerConnectionState and RTCIceConnectionState values.
    {"new", "checking", "connecting", "connected", "completed", "disconnected", "failed", "closed"}
)

RelayKind: TypeAlias = Literal["offer", "answer", "ice-candidate"]
RELAY_FIELDS: Final[dict[str, str]] = {
    "offer": "offer",
    "answer": "answer",
    "ice-candidate": "candidate",
}
"""Relayed message type -> the name of its opaque payload field."""

RequestId: TypeAlias = "str | int"
JSONObject: TypeAlias = dict[str, Any]


class MessageError(Exception):
    """A client message the server refuses; ``code`` is one of the error codes above."""

    def __init__(self, code: str, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


# ---------------------------------------------------------------------------------------
# Requests (client -> server)


@dataclass(frozen=True, slots=True)
class Register:
    """``register {peerId, metadata?, reconnectToken?}``."""

    peer_id: str
    metadata: JSONObject = field(default_factory=dict)
    reconnect_token: str | None = None
    id: RequestId | None = None
    claimed_sender: str | None = None


@dataclass(frozen=True, slots=True)
class JoinRoom:
    """``join-room {roomId}``."""

    room_id: str
    id: RequestId | None = None
    claimed_sender: str | None = None


@dataclass(frozen=True, slots=True)
class LeaveRoom:
    """``leave-room {roomId}``."""

    room_id: str
    id: RequestId | None = None
    claimed_sender: str | None = None


@dataclass(frozen=True, slots=True)
class GetRoomPeers:
    """``get-room-peers {roomId}``."""

    room_id: str
    id: RequestId | None = None
    claimed_sender: str | None = None


@dataclass(slots=True)
class Relay:
    """``offer {to, offer}``, ``answer {to, answer}`` or ``ice-candidate {to, candidate}``.

    ``payload`` is opaque to the server: a JSON object (or ``null`` for an end-of-candidates
    ``ice-candidate``). Not frozen, unlike the other requests: one is built for every
    relayed message, and a frozen dataclass's ``__init__`` costs three times as much.
    """

    kind: RelayKind
    to: str
    payload: JSONObject | None
    id: RequestId | None = None
    claimed_sender: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectionStateReport:
    """``connection-state {peerId, state, method?}``: how the sender's link to a peer is."""

    peer_id: str
    state: str
    method: str | None = None
    id: RequestId | None = None
    claimed_sender: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: keeps the peer from idle eviction; answered with ``pong``."""

    id: RequestId | None = None
    claimed_sender: str | None = None


@dataclass(frozen=True, slots=True)
class Renew:
    """``renew``: a fresh auth token for this connection, before the current one expires."""

    token: str
    id: RequestId | None = None
    claimed_sender: str | None = None


Request: TypeAlias = (
    Register | JoinRoom | LeaveRoom | GetRoomPeers | Relay | ConnectionStateReport | Ping | Renew
)


_REQUEST_TYPES: Final[dict[type, str]] = {
    Register: "register",
    JoinRoom: "join-room",
    LeaveRoom: "leave-room",
    GetRoomPeers: "get-room-peers",
    ConnectionStateReport: "connection-state",
    Ping: "ping",
    Renew: "renew",
}


def request_type(request: Request) -> str:
    """The wire ``type`` of a parsed request."""
    if isinstance(request, Relay):
        return request.kind
    return _REQUEST_TYPES[type(request)]


# ---------------------------------------------------------------------------------------
# Parsing

_ABSENT: Final = object()

_IDENTIFIER: Final = re.compile(f"[^\\x00-\\x1f\\x7f-\\x9f]{{1,{MAX_ID_LENGTH}}}")
"""1 to MAX_ID_LENGTH characters, none of them a C0 or C1 control character."""


def _request_id(obj: Mapping[str, Any]) -> RequestId | None:
    value = obj.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MessageError(INVALID_FIELD, "'id' must be a string or an integer")
    if isinstance(value, str) and not 0 < len(value) <= MAX_ID_LENGTH:
        raise MessageError(INVALID_FIELD, f"'id' must be 1 to {MAX_ID_LENGTH} characters")
    if isinstance(value, int) and abs(value) > 2**53:
        raise MessageError(INVALID_FIELD, "'id' must be within +-2**53")
    return value


class _Fields:
    """Typed field access on one message object, raising the right error code."""

    __slots__ = ("obj", "request_id")

    def __init__(self, obj: Mapping[str, Any], request_id: RequestId | None) -> None:
        self.obj = obj
        self.request_id = request_id

    def _missing(self, name: str) -> MessageError:
        return MessageError(MISSING_FIELD, f"'{name}' is required", self.request_id)

    def _invalid(self, name: str, what: str) -> MessageError:
        return MessageError(INVALID_FIELD, f"'{name}' must be {what}", self.request_id)

    def identifier(self, name: str) -> str:
        value = self.obj.get(name, _ABSENT)
        if isinstance(value, str) and _IDENTIFIER.fullmatch(value) is not None:
            return value
        if value is _ABSENT:
            raise self._missing(name)
        raise self._invalid(
            name, f"a string of 1 to {MAX_ID_LENGTH} characters without control characters"
        )

    def optional_identifier(self, name: str) -> str | None:
        if self.obj.get(name) is None:
            return None
        return self.identifier(name)

    def metadata(self, name: str) -> JSONObject:
        value = self.obj.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._invalid(name, "a JSON object")
        if len(encode(value)) > MAX_METADATA_SIZE:
            raise self._invalid(name, f"at most {MAX_METADATA_SIZE} bytes of JSON")
        return value

    def payload(self, name: str, nullable: bool) -> JSONObject | None:
        value = self.obj.get(name, _ABSENT)
        if isinstance(value, dict):
            return value
        if value is None and nullable:
            return None
        if value is _ABSENT:
            raise self._missing(name)
        raise self._invalid(name, "a JSON object" + (" or null" if nullable else ""))

    def choice(self, name: str, choices: frozenset[str]) -> str:
        if name not in self.obj:
            raise self._missing(name)
        value = self.obj[name]
        if not isinstance(value, str) or value not in choices:
            raise self._invalid(name, "one of " + ", ".join(sorted(choices)))
        return value

    def optional_short_string(self, name: str, limit: int) -> str | None:
        value = self.obj.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            raise self._invalid(name, f"a string of 1 to {limit} characters")
        return value


def decode_object(payload: bytes | str, max_size: int) -> JSONObject:
    """Decode one message into a JSON object, enforcing the size limit (in bytes).

    Raises :class:`MessageError` with ``message-too-large``, ``invalid-json`` or
    ``not-an-object``. Strict RFC 8259 JSON in UTF-8 (orjson): no ``NaN`` or
    ``Infinity``, no numbers beyond a double's range, no lone surrogates; integers beyond
    64 bits are read as doubles, as JavaScript reads them.
    """
    if isinstance(payload, bytes):
        size = len(payload)
    else:
        size = len(payload.encode("utf-8", "surrogatepass"))
    if size > max_size:
        raise MessageError(MESSAGE_TOO_LARGE, f"message of {size} bytes exceeds {max_size}")
    try:
        obj = orjson.loads(payload)
    except (ValueError, RecursionError) as e:  # orjson.JSONDecodeError is a ValueError
        raise MessageError(INVALID_JSON, f"not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MessageError(NOT_AN_OBJECT, f"a message must be a JSON object, not {_kind(obj)}")
    return obj


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def parse_request(payload: bytes | str, max_size: int) -> Request:
    """Parse one client message into a typed request, or raise :class:`MessageError`.

    The error carries the request's ``id`` whenever the message got far enough to have
    one, so that the reply can echo it.
    """
    if type(payload) is bytes and len(payload) <= max_size:
        # The common case first, in as few calls as it takes: a well-formed relay
        # without an ``id``. Anything else, errors included, takes the general path.
        try:
            obj = orjson.loads(payload)
        except (ValueError, RecursionError):
            obj = None
        if type(obj) is dict:
            kind = obj.get("type")
            payload_field = RELAY_FIELDS.get(kind) if type(kind) is str else None
            if payload_field is not None and obj.get("id") is None:
                relay = _well_formed_relay(obj, kind, payload_field, None)  # type: ignore[arg-type]
                if relay is not None:
                    return relay
            return request_from_object(obj)
    return request_from_object(decode_object(payload, max_size))


def request_from_object(obj: Mapping[str, Any]) -> Request:
    """Validate a decoded message object and build its typed request."""
    request_id = _request_id(obj)
    kind = obj.get("type", _ABSENT)
    if not isinstance(kind, str):
        if kind is _ABSENT:
            raise MessageError(MISSING_FIELD, "'type' is required", request_id)
        raise MessageError(INVALID_FIELD, "'type' must be a string", request_id)
    # The most frequent messages first: relays, then keepalives.
    payload_field = RELAY_FIELDS.get(kind)
    if payload_field is not None:
        relay = _well_formed_relay(obj, kind, payload_field, request_id)
        if relay is not None:
            return relay
    f = _Fields(obj, request_id)
    if payload_field is not None:
        # A registered peer may name itself as the sender in ``from``, as the seed does.
        sender = f.optional_identifier("from")
        to = f.identifier("to")
        payload = f.payload(payload_field, nullable=kind == "ice-candidate")
        return Relay(kind, to, payload, request_id, sender)  # type: ignore[arg-type]
    if kind == "ping":
        return Ping(request_id, f.optional_identifier("from"))
    if kind == "register":
        token = f.optional_identifier("reconnectToken")
        return Register(f.identifier("peerId"), f.metadata("metadata"), token, request_id)
    # Every other message comes from a registered peer, who may name itself as the sender:
    # in ``from`` or ``peerId`` (the seed's join-room).
    sender = f.optional_identifier("from")
    if kind in ("join-room", "leave-room", "get-room-peers"):
        sender = sender or f.optional_identifier("peerId")
        room_id = f.identifier("roomId")
        if kind == "join-room":
            return JoinRoom(room_id, request_id, sender)
        if kind == "leave-room":
            return LeaveRoom(room_id, request_id, sender)
        return GetRoomPeers(room_id, request_id, sender)
    if kind == "connection-state":
        return ConnectionStateReport(
            f.identifier("peerId"),
            f.choice("state", CONNECTION_STATES),
            f.optional_short_string("method", MAX_METHOD_LENGTH),
            request_id,
            sender,
        )
    if kind == "renew":
        token = f.optional_short_string("token", MAX_TOKEN_LENGTH)
        if token is None:
            raise MessageError(MISSING_FIELD, "'token' is required", request_id)
        return Renew(token, request_id, sender)
    shown = kind if len(kind) <= 64 else kind[:64] + "..."
    raise MessageError(UNKNOWN_TYPE, f"unknown message type {shown!r}", request_id)


def _plainly_identifier(value: object) -> bool:
    """Whether ``value`` is an identifier (as :data:`_IDENTIFIER` defines it), answered
    without the regular expression for the printable ones: a printable string holds no
    control character (C0 and C1 are not printable)."""
    if type(value) is not str:
        return False
    if 0 < len(value) <= MAX_ID_LENGTH and value.isprintable():
        return True
    return _IDENTIFIER.fullmatch(value) is not None


def _well_formed_relay(
    obj: Mapping[str, Any], kind: str, payload_field: str, request_id: RequestId | None
) -> Relay | None:
    """The relay ``obj`` asks for when every field is as it should be, else None (then
    :class:`_Fields` finds the first bad field and its error): the same checks, without
    the per-field calls, for the message nearly every request is."""
    to = obj.get("to")
    sender = obj.get("from")
    payload = obj.get(payload_field, _ABSENT)
    if (
        # _plainly_identifier(to), with its first answer inline
        (
            (type(to) is str and 0 < len(to) <= MAX_ID_LENGTH and to.isprintable())
            or _plainly_identifier(to)
        )
        and (sender is None or _plainly_identifier(sender))
        and (type(payload) is dict or (payload is None and kind == "ice-candidate"))
    ):
        return Relay(kind, to, payload, request_id, sender)  # type: ignore[arg-type]
    return None


# ---------------------------------------------------------------------------------------
# Server -> client messages


def _with_id(message: JSONObject, request_id: RequestId | None) -> JSONObject:
    if request_id is not None:
        message["id"] = request_id
    return message


def encode(message: Mapping[str, Any]) -> bytes:
    """Serialise one message as compact UTF-8 JSON.

    orjson, unless the message holds what it refuses and the standard library takes
    (integers beyond 64 bits, non-string keys, a non-dict mapping): those go through
    ``json`` as before.
    """
    try:
        return orjson.dumps(message)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def milliseconds(seconds: float) -> int:
    """Seconds since the epoch -> the integer milliseconds the protocol uses."""
    return math.floor(seconds * 1000)


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """A peer as listed in ``room-joined`` and ``room-peers``."""

    peer_id: str
    metadata: JSONObject
    joined_at: float

    def to_json(self) -> JSONObject:
        return {
            "peerId": self.peer_id,
            "metadata": self.metadata,
            "joinedAt": milliseconds(self.joined_at),
        }


def welcome(
    now: float, address: Mapping[str, Any], ice_servers: list[JSONObject] | None = None
) -> JSONObject:
    """``welcome``: the first message on every connection (with ``iceServers`` when the
    server advertises its STUN/TURN servers)."""
    message: JSONObject = {
        "type": "welcome",
        "message": "Connected to signaling server",
        "timestamp": milliseconds(now),
        "yourAddress": dict(address),
    }
    if ice_servers:
        message["iceServers"] = ice_servers
    return message


def registered(
    peer_id: str,
    reconnect_token: str,
    peer_timeout: float,
    now: float,
    request_id: RequestId | None,
    replaced: bool = False,
) -> JSONObject:
    """``registered``: the peer id is this connection's; keep the token to reclaim it."""
    message: JSONObject = {
        "type": "registered",
        "peerId": peer_id,
        "reconnectToken": reconnect_token,
        "peerTimeout": int(peer_timeout) if float(peer_timeout).is_integer() else peer_timeout,
        "timestamp": milliseconds(now),
    }
    if replaced:
        message["resumed"] = True
    return _with_id(message, request_id)


def room_joined(
    room_id: str, peers: Sequence[PeerEntry], now: float, request_id: RequestId | None
) -> JSONObject:
    """``room-joined``: the room's other peers."""
    return _with_id(
        {
            "type": "room-joined",
            "roomId": room_id,
            "peers": [p.to_json() for p in peers],
            "timestamp": milliseconds(now),
        },
        request_id,
    )


def room_left(room_id: str, now: float, request_id: RequestId | None) -> JSONObject:
    """``room-left``: the sender is no longer in the room."""
    return _with_id(
        {"type": "room-left", "roomId": room_id, "timestamp": milliseconds(now)}, request_id
    )


def room_peers(
    room_id: str, peers: Sequence[PeerEntry], now: float, request_id: RequestId | None
) -> JSONObject:
    """``room-peers``: the answer to ``get-room-peers``."""
    return _with_id(
        {
            "type": "room-peers",
            "roomId": room_id,
            "peers": [p.to_json() for p in peers],
            "timestamp": milliseconds(now),
        },
        request_id,
    )


def peer_joined(room_id: str, peer_id: str, metadata: JSONObject, now: float) -> JSONObject:
    """``peer-joined``: another peer entered one of the recipient's rooms."""
    return {
        "type": "peer-joined",
        "roomId": room_id,
        "peerId": peer_id,
        "metadata": metadata,
        "timestamp": milliseconds(now),
    }


def peer_left(room_id: str, peer_id: str, metadata: JSONObject, now: float) -> JSONObject:
    """``peer-left``: a peer left, disconnected or was evicted from one of the rooms."""
    return {
        "type": "peer-left",
        "roomId": room_id,
        "peerId": peer_id,
        "metadata": metadata,
        "timestamp": milliseconds(now),
    }


def relayed(kind: str, from_peer: str, payload: JSONObject | None) -> JSONObject:
    """A relayed ``offer``/``answer``/``ice-candidate``, with ``from`` set by the server."""
    return {"type": kind, "from": from_peer, RELAY_FIELDS[kind]: payload}


def encode_relayed(kind: str, from_peer: str, payload: JSONObject | None) -> bytes:
    """:func:`relayed`, encoded (:func:`encode`): what both registries hand a recipient."""
    return encode(relayed(kind, from_peer, payload))


def ack(for_type: str, now: float, request_id: RequestId | None) -> JSONObject:
    """``ack``: sent for a relay or ``connection-state`` only when it carried an ``id``."""
    return _with_id({"type": "ack", "for": for_type, "timestamp": milliseconds(now)}, request_id)


def pong(now: float, request_id: RequestId | None) -> JSONObject:
    """``pong``: the answer to ``ping``."""
    return _with_id({"type": "pong", "timestamp": milliseconds(now)}, request_id)


def renewed(expires: float, now: float, request_id: RequestId | None) -> JSONObject:
    """The reply to ``renew``: the connection now lives until ``expires`` (seconds)."""
    return _with_id(
        {"type": "renewed", "expires": milliseconds(expires), "timestamp": milliseconds(now)},
        request_id,
    )


def error(code: str, message: str, request_id: RequestId | None) -> JSONObject:
    """``error {code, message, id}``; ``id`` is null when the request had none."""
    return {"type": "error", "code": code, "message": message, "id": request_id}

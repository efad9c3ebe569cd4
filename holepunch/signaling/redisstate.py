# -*- test-case-name: tests.unit.test_signaling_redisstate -*-
"""The shared room registry's state on Redis, without I/O: URLs, keys, scripts, events.

:mod:`holepunch.signaling.redisregistry` is the thin Twisted adapter that runs these
scripts with txredisapi; everything it sends and decodes is defined here.

Data model (``P`` is the key prefix, ``holepunch:`` by default):

- ``P node:<node>``: a string with a TTL (the *presence* TTL), refreshed by its node's
  heartbeat. A node whose key expired is dead: its peers are invisible at once and the
  next heartbeat of any live node reaps them (their rooms get ``peer-left``);
- ``P nodes``: the set of node ids, ``P node-peers:<node>``: each node's peer ids;
- ``P peer:<id>``: a hash ``node``, ``conn`` (the connection holding the id), ``meta``
  (compact JSON), ``token`` (SHA-256 of the reconnect token: the token itself is never
  stored) and ``at`` (registration time);
- ``P peer-rooms:<id>``: a hash room id -> when the peer joined it;
- ``P room:<id>``: a sorted set of member peer ids, scored by ``P seq`` (join order).

Every rule runs as one Lua script, so a check and its change are atomic across nodes.
Deliveries to a peer (relays, ``peer-joined``, ``peer-left``, takeovers) are published by
the scripts on the channel ``P bus:<node>`` of the peer's node, as an :data:`Event`
encoded by :func:`encode_event`: fields separated by newlines, which identifiers cannot
hold (:mod:`holepunch.signaling.messages` refuses control characters), the opaque JSON
last. Times are ``repr(float)`` strings, so they come back exactly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

import orjson

from holepunch.signaling import messages as codes
from holepunch.signaling.messages import JSONObject, PeerEntry

DEFAULT_PREFIX = "holepunch:"


@dataclass(frozen=True, slots=True)
class RedisURL:
    """Where the shared registry lives: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``,
    or a UNIX socket, ``unix:///PATH[?db=DB]`` (``path`` set, ``host`` empty)."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        """The URL without its password (for messages and logs)."""
        if self.path is not None:
            return f"unix://{self.path}?db={self.db}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisURL:
    """Parse a ``redis://`` (or ``unix://``) URL; raise ``ValueError`` naming what is
    wrong."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return _parse_unix_url(url, parts.path, parts.query)
    if parts.scheme != "redis":
        raise ValueError(f"not a redis:// URL: {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in the Redis URL {url!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"bad port in the Redis URL {url!r}") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the Redis URL's path must be a database number: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"the Redis URL takes no query or fragment: {url!r}")
    return RedisURL(
        host=parts.hostname,
        port=port,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _parse_unix_url(url: str, path: str, query: str) -> RedisURL:
    if not path.startswith("/"):
        raise ValueError(f"the unix:// Redis URL needs an absolute socket path: {url!r}")
    db = 0
    if query:
        key, _, value = query.partition("=")
        if key != "db" or not value.isdigit():
            raise ValueError(f"the unix:// Redis URL takes only ?db=N: {url!r}")
        db = int(value)
    return RedisURL(host="", port=0, db=db, path=unquote(path))


def token_digest(token: str) -> str:
    """What Redis keeps of a reconnect token (and compares in the register script)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def encode_time(t: float) -> str:
    """A time as the scripts store it: exact when read back by ``float()``."""
    return repr(float(t))


def encode_json(value: JSONObject | None) -> str:
    """Metadata or a relayed payload as the compact JSON the scripts carry opaquely."""
    return "null" if value is None else codes.encode(value).decode("utf-8")


def decode_json(text: str) -> Any:
    """The inverse of :func:`encode_json` (orjson; the standard library for what orjson
    refuses, such as integers beyond 64 bits, which :func:`encode_json` lets through)."""
    try:
        return orjson.loads(text)
    except ValueError:
        return json.loads(text)


# -- keys ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keys:
    """Key and channel names under one prefix (the scripts build the same names)."""

    prefix: str = DEFAULT_PREFIX

    def node(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    def nodes(self) -> str:
        return f"{self.prefix}nodes"

    def node_peers(self, node: str) -> str:
        return f"{self.prefix}node-peers:{node}"

    def peer(self, peer_id: str) -> str:
        return f"{self.prefix}peer:{peer_id}"

    def peer_rooms(self, peer_id: str) -> str:
        return f"{self.prefix}peer-rooms:{peer_id}"

    def room(self, room_id: str) -> str:
        return f"{self.prefix}room:{room_id}"

    def sequence(self) -> str:
        return f"{self.prefix}seq"

    def bus(self, node: str) -> str:
        """The pub/sub channel of a node."""
        return f"{self.prefix}bus:{node}"


# -- events on a node's channel -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayEvent:
    """``from_peer`` sent ``to`` an offer, answer or candidate."""

    to: str
    kind: str
    from_peer: str
    payload: JSONObject | None


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """``peer_id`` joined (``joined``) or left ``room_id``; ``to`` is a member."""

    joined: bool
    to: str
    room_id: str
    peer_id: str
    timestamp: float
    metadata: JSONObject


@dataclass(frozen=True, slots=True)
class ReplacedEvent:
    """Connection ``conn`` no longer holds ``peer_id``: another took it with the token."""

    peer_id: str
    conn: str


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """Relays a node routed straight to this one (its route cache knew the node), all
    those of one reactor turn in one message."""

    relays: tuple[RelayEvent, ...]


Event: TypeAlias = RelayEvent | RoomEvent | ReplacedEvent | BatchEvent

BATCH_SEPARATOR = "\x1e"
"""Between the relays of a batch: compact JSON never holds a raw control character."""


class EventError(ValueError):
    """A message on a node's channel that is not an :data:`Event`."""


def encode_event(event: Event) -> str:
    """The text the scripts publish for ``event``."""
    match event:
        case RelayEvent(to, kind, from_peer, payload):
            return "\n".join(["relay", to, kind, from_peer, encode_json(payload)])
        case RoomEvent(joined, to, room_id, peer_id, timestamp, metadata):
            fields = [to, room_id, peer_id, encode_time(timestamp), encode_json(metadata)]
            return "\n".join(["joined" if joined else "left", *fields])
        case ReplacedEvent(peer_id, conn):
            return "\n".join(["replaced", peer_id, conn])
        case BatchEvent(relays):
            return "batch\n" + BATCH_SEPARATOR.join(encode_event(r) for r in relays)
    raise TypeError(f"not an event: {event!r}")


def decode_event(text: str) -> Event:
    """Parse what a script published; raise :class:`EventError` if it is malformed."""
    kind, _, rest = text.partition("\n")
    try:
        if kind == "relay":
            to, relay_kind, from_peer, payload = rest.split("\n", 3)
            return RelayEvent(to, relay_kind, from_peer, decode_json(payload))
        if kind in ("joined", "left"):
            to, room_id, peer_id, ts, meta = rest.split("\n", 4)
            return RoomEvent(kind == "joined", to, room_id, peer_id, float(ts), decode_json(meta))
        if kind == "replaced":
            peer_id, conn = rest.split("\n")
            return ReplacedEvent(peer_id, conn)
        if kind == "batch":
            relays = [decode_event(part) for part in rest.split(BATCH_SEPARATOR)]
            if not all(isinstance(r, RelayEvent) for r in relays):
                raise ValueError("a batch holds relays only")
            return BatchEvent(tuple(r for r in relays if isinstance(r, RelayEvent)))
    except ValueError as e:
        raise EventError(f"malformed {kind!r} event: {e}") from None
    raise EventError(f"unknown event {kind!r}")


# -- script replies -----------------------------------------------------------------------

ERROR_MESSAGES: dict[str, str] = {
    codes.NOT_REGISTERED: "peer {peer!r} is not registered",
    codes.PEER_ID_TAKEN: "peer id {peer!r} is held by another connection",
    codes.PEER_NOT_FOUND: "peer {to!r} is not connected",
    codes.NO_SHARED_ROOM: "peer {to!r} is in none of your rooms",
    codes.NOT_IN_ROOM: "not in room {room!r}",
    codes.TOO_MANY_ROOMS: "a peer may be in at most {max_rooms} rooms",
    codes.ROOM_FULL: "room {room!r} holds its limit of {max_per_room} peers",
}
"""Error code -> message (the in-memory model's words), formatted with the request's values."""


def script_error(reply: list[Any]) -> str | None:
    """The error code of a script's reply ``["error", code]``, or None when it succeeded."""
    if reply and reply[0] == "error":
        return str(reply[1])
    return None


def decode_entries(flat: list[Any]) -> list[PeerEntry]:
    """``[id, meta, joined, id, meta, joined, ...]`` -> the room's peer entries."""
    return [
        PeerEntry(str(flat[i]), decode_json(flat[i + 1]), float(flat[i + 2]))
        for i in range(0, len(flat) - 2, 3)
    ]


# -- the scripts ----------------------------------------------------------------------------
# ARGV[1] is always the prefix. Keys are computed in the scripts (one Redis, not a cluster).

_COMMON = r"""
local P = ARGV[1]
local function pkey(id) return P .. 'peer:' .. id end
local function rkey(id) return P .. 'peer-rooms:' .. id end
local function roomkey(id) return P .. 'room:' .. id end
local function npkey(n) return P .. 'node-peers:' .. n end
local function nodekey(n) return P .. 'node:' .. n end
local function bus(n) return P .. 'bus:' .. n end

-- the node of a peer whose node is alive, else nil
local function alive(peer)
  local node = redis.call('HGET', pkey(peer), 'node')
  if node and redis.call('EXISTS', nodekey(node)) == 1 then return node end
  return nil
end

-- whether connection conn (on a live node) holds peer
local function holds(peer, conn)
  return alive(peer) ~= nil and redis.call('HGET', pkey(peer), 'conn') == conn
end

-- the live members of room but one, flattened: id, meta, joined, ...
local function entries(room, except)
  local out = {}
  for _, m in ipairs(redis.call('ZRANGE', roomkey(room), 0, -1)) do
    if m ~= except and alive(m) then
      out[#out + 1] = m
      out[#out + 1] = redis.call('HGET', pkey(m), 'meta') or '{}'
      out[#out + 1] = redis.call('HGET', rkey(m), room) or '0.0'
    end
  end
  return out
end

local function notify(room, peer, kind, ts, meta)
  for _, m in ipairs(redis.call('ZRANGE', roomkey(room), 0, -1)) do
    if m ~= peer then
      local node = alive(m)
      if node then
        redis.call('PUBLISH', bus(node),
          kind .. '\n' .. m .. '\n' .. room .. '\n' .. peer .. '\n' .. ts .. '\n' .. meta)
      end
    end
  end
end

local function leave(peer, room, ts, meta)
  redis.call('HDEL', rkey(peer), room)
  redis.call('ZREM', roomkey(room), peer)
  if redis.call('EXISTS', roomkey(room)) == 1 then
    notify(room, peer, 'left', ts, meta)
  end
end

local function remove(peer, ts)
  local meta = redis.call('HGET', pkey(peer), 'meta') or '{}'
  local node = redis.call('HGET', pkey(peer), 'node')
  for _, room in ipairs(redis.call('HKEYS', rkey(peer))) do
    leave(peer, room, ts, meta)
  end
  redis.call('DEL', pkey(peer), rkey(peer))
  if node then redis.call('SREM', npkey(node), peer) end
end

-- remove every peer of a node, and the node
local function drop_node(n, ts)
  for _, peer in ipairs(redis.call('SMEMBERS', npkey(n))) do
    if redis.call('HGET', pkey(peer), 'node') == n then remove(peer, ts) end
  end
  redis.call('DEL', npkey(n), nodekey(n))
  redis.call('SREM', P .. 'nodes', n)
end
"""

REGISTER = (
    _COMMON
    + r"""
-- ARGV: prefix, node, peer, conn, meta, new token digest, given token digest or '', now
local node, peer, conn, meta = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local digest, given, now = ARGV[6], ARGV[7], ARGV[8]
local key = pkey(peer)
local old_node = redis.call('HGET', key, 'node')
if old_node then
  local live = alive(peer) ~= nil
  if given ~= '' and given == redis.call('HGET', key, 'token') then
    local old_conn = redis.call('HGET', key, 'conn')
    redis.call('HSET', key, 'node', node, 'conn', conn, 'meta', meta, 'token', digest)
    redis.call('SREM', npkey(old_node), peer)
    redis.call('SADD', npkey(node), peer)
    if live and old_node ~= node then
      redis.call('PUBLISH', bus(old_node), 'replaced\n' .. peer .. '\n' .. old_conn)
    end
    return {'resumed', old_node, old_conn}
  end
  if live then return {'error', 'peer-id-taken'} end
  remove(peer, now)
end
redis.call('HSET', key, 'node', node, 'conn', conn, 'meta', meta, 'token', digest, 'at', now)
redis.call('SADD', npkey(node), peer)
return {'registered'}
"""
)

UNREGISTER = (
    _COMMON
    + r"""
-- ARGV: prefix, peer, conn, now
if redis.call('HGET', pkey(ARGV[2]), 'conn') == ARGV[3] then remove(ARGV[2], ARGV[4]) end
return {'ok'}
"""
)

JOIN = (
    _COMMON
    + r"""
-- ARGV: prefix, peer, conn, room, now, max rooms per peer, max peers per room
local peer, conn, room, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not holds(peer, conn) then return {'error', 'not-registered'} end
local others = entries(room, peer)
if redis.call('HEXISTS', rkey(peer), room) == 1 then return {'ok', unpack(others)} end
if redis.call('HLEN', rkey(peer)) >= tonumber(ARGV[6]) then return {'error', 'too-many-rooms'} end
if #others / 3 >= tonumber(ARGV[7]) then return {'error', 'room-full'} end
redis.call('ZADD', roomkey(room), redis.call('INCR', P .. 'seq'), peer)
redis.call('HSET', rkey(peer), room, now)
notify(room, peer, 'joined', now, redis.call('HGET', pkey(peer), 'meta'))
return {'ok', unpack(others)}
"""
)

LEAVE = (
    _COMMON
    + r"""
-- ARGV: prefix, peer, conn, room, now
local peer, conn, room = ARGV[2], ARGV[3], ARGV[4]
if not holds(peer, conn) then return {'error', 'not-registered'} end
if redis.call('HEXISTS', rkey(peer), room) == 0 then return {'error', 'not-in-room'} end
leave(peer, room, ARGV[5], redis.call('HGET', pkey(peer), 'meta'))
return {'ok'}
"""
)

ROOM_PEERS = (
    _COMMON
    + r"""
-- ARGV: prefix, peer, conn, room
local peer, conn, room = ARGV[2], ARGV[3], ARGV[4]
if not holds(peer, conn) then return {'error', 'not-registered'} end
if redis.call('HEXISTS', rkey(peer), room) == 0 then return {'error', 'not-in-room'} end
return {'ok', unpack(entries(room, peer))}
"""
)

RELAY = (
    _COMMON
    + r"""
-- ARGV: prefix, from, conn, to, kind, payload, open ('1': any two peers; else a shared room),
-- publish ('0': only check, and name the peer's node: the caller sends it itself)
local from, conn, to = ARGV[2], ARGV[3], ARGV[4]
if not holds(from, conn) then return {'error', 'not-registered'} end
local node = alive(to)
if not node then return {'error', 'peer-not-found'} end
if ARGV[7] ~= '1' then
  local shared = false
  for _, room in ipairs(redis.call('HKEYS', rkey(from))) do
    if redis.call('HEXISTS', rkey(to), room) == 1 then shared = true break end
  end
  if not shared then return {'error', 'no-shared-room'} end
end
if ARGV[8] == '0' then
  if redis.call('PUBSUB', 'NUMSUB', bus(node))[2] == 0 then
    return {'error', 'peer-not-found'}  -- its node is not listening
  end
  return {'ok', node}
end
local event = 'relay\n' .. to .. '\n' .. ARGV[5] .. '\n' .. from .. '\n' .. ARGV[6]
if redis.call('PUBLISH', bus(node), event) == 0 then
  return {'error', 'peer-not-found'}  -- its node is not listening: the message is lost
end
return {'ok', node}
"""
)

FORWARD = (
    _COMMON
    + r"""
-- ARGV: prefix, this node, to, event
-- A relay that reached a node its target has left (a stale route): on to its node now.
local node = alive(ARGV[3])
if not node or node == ARGV[2] then return {'error', 'peer-not-found'} end
if redis.call('PUBLISH', bus(node), ARGV[4]) == 0 then return {'error', 'peer-not-found'} end
return {'ok', node}
"""
)

HEARTBEAT = (
    _COMMON
    + r"""
-- ARGV: prefix, node, ttl in ms, now, then peer, conn pairs of the node's connections.
-- Refreshes the node's presence, reaps dead nodes, returns the given pairs it lost.
local node, now = ARGV[2], ARGV[4]
redis.call('SET', nodekey(node), '1', 'PX', ARGV[3])
redis.call('SADD', P .. 'nodes', node)
for _, n in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if redis.call('EXISTS', nodekey(n)) == 0 then drop_node(n, now) end
end
local lost = {}
for i = 5, #ARGV, 2 do
  if not holds(ARGV[i], ARGV[i + 1]) then
    lost[#lost + 1] = ARGV[i]
    lost[#lost + 1] = ARGV[i + 1]
  end
end
return {'ok', unpack(lost)}
"""
)

DROP_NODE = (
    _COMMON
    + r"""
-- ARGV: prefix, node, now: the node stops; its peers leave their rooms.
drop_node(ARGV[2], ARGV[3])
return {'ok'}
"""
)


# -- RESP, for the start-up check ----------------------------------------------------------


def resp_command(*args: str) -> bytes:
    """One command in the Redis protocol (RESP2 array of bulk strings)."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


SHARE_STATS = r"""
-- ARGV: prefix, group, member, snapshot, ttl_ms
-- One worker's counters into its daemon's hash; every member's back.
local key = ARGV[1] .. 'stats:' .. ARGV[2]
redis.call('HSET', key, ARGV[3], ARGV[4])
redis.call('PEXPIRE', key, ARGV[5])
return redis.call('HGETALL', key)
"""


def startup_commands(url: RedisURL) -> list[bytes]:
    """What the start-up check sends: AUTH if a password is given, SELECT, PING."""
    commands = []
    if url.password is not None:
        auth = [url.username, url.password] if url.username else [url.password]
        commands.append(resp_command("AUTH", *auth))
    commands.append(resp_command("SELECT", str(url.db)))
    commands.append(resp_command("PING"))
    return commands


__all__ = [
    "DEFAULT_PREFIX",
    "DROP_NODE",
    "ERROR_MESSAGES",
    "FORWARD",
    "HEARTBEAT",
    "JOIN",
    "LEAVE",
    "REGISTER",
    "RELAY",
    "ROOM_PEERS",
    "SHARE_STATS",
    "UNREGISTER",
    "BatchEvent",
    "Event",
    "EventError",
    "Keys",
    "RedisURL",
    "RelayEvent",
    "ReplacedEvent",
    "RoomEvent",
    "decode_entries",
    "decode_event",
    "encode_event",
    "encode_json",
    "encode_time",
    "parse_redis_url",
    "resp_command",
    "script_error",
    "startup_commands",
    "token_digest",
]

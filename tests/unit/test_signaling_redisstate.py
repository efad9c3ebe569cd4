"""Tests for the shared registry's pure parts (holepunch.signaling.redisstate), the
session's ordering with a registry that answers later, and the daemon's --redis option."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from holepunch.daemon.tap import Options
from holepunch.signaling import messages as m
from holepunch.signaling import redisstate as rs
from holepunch.signaling.model import RoomRegistry
from holepunch.signaling.server import (
    SerialSteps,
    ServerStats,
    SignalingConfig,
    SignalingSession,
    config_from_options,
)


class URLTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """Host, port, database and credentials; defaults 6379 and 0."""
        self.assertEqual(rs.parse_redis_url("redis://h"), rs.RedisURL("h", 6379, 0))
        self.assertEqual(
            rs.parse_redis_url("redis://u:p%40ss@10.0.0.1:7000/3"),
            rs.RedisURL("10.0.0.1", 7000, 3, "u", "p@ss"),
        )
        self.assertEqual(rs.parse_redis_url("redis://:secret@h/").password, "secret")
        self.assertEqual(rs.parse_redis_url("redis://[::1]:6380/1").host, "::1")

    def test_bad(self) -> None:
        """Other schemes, no host, a bad port or path, a query: ValueError naming it."""
        for bad in ["http://h", "redis://", "redis://h:99999", "redis://h/x", "redis://h/0?a=1"]:
            self.assertRaises(ValueError, rs.parse_redis_url, bad)

    def test_str_hides_password(self) -> None:
        """The URL as logged and in errors has no credentials."""
        url = rs.parse_redis_url("redis://u:secret@h:1/2")
        self.assertEqual(str(url), "redis://h:1/2")
        self.assertEqual(str(rs.parse_redis_url("redis://[::1]")), "redis://[::1]:6379/0")


class KeysTests(SynchronousTestCase):
    def test_names(self) -> None:
        """Every name is under the prefix (as the scripts build them)."""
        keys = rs.Keys("p:")
        self.assertEqual(
            [keys.node("n"), keys.nodes(), keys.node_peers("n"), keys.peer("a"),
             keys.peer_rooms("a"), keys.room("r"), keys.sequence(), keys.bus("n")],
            ["p:node:n", "p:nodes", "p:node-peers:n", "p:peer:a", "p:peer-rooms:a", "p:room:r",
             "p:seq", "p:bus:n"],
        )  # fmt: skip
        scripts = "".join([rs.REGISTER, rs.JOIN, rs.HEARTBEAT])
        for part in [
            "'peer:'",
            "'peer-rooms:'",
            "'room:'",
            "'node:'",
            "'bus:'",
            "'seq'",
            "'nodes'",
        ]:
            self.assertIn(part, scripts)

    def test_token_digest(self) -> None:
        """Redis keeps a SHA-256 of the token, never the token."""
        digest = rs.token_digest("tok")
        self.assertEqual(len(digest), 64)
        self.assertNotIn("tok", digest)
        self.assertNotEqual(digest, rs.token_digest("tok2"))


class EventTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """Every event comes back equal, newlines and odd JSON in payloads included."""
        events: list[rs.Event] = [
            rs.RelayEvent("bob", "offer", "alice", {"sdp": "v=0\r\na=x\n", "n": 2**70}),
            rs.RelayEvent("bob", "ice-candidate", "alice", None),
            rs.RoomEvent(True, "bob", "r 1", "caf\u00e9", 1_700_000_000.123456, {"a": [1, {}]}),
            rs.RoomEvent(False, "bob", "r", "alice", 0.1 + 0.2, {}),
            rs.ReplacedEvent("alice", "node:7"),
        ]
        for event in events:
            self.assertEqual(rs.decode_event(rs.encode_event(event)), event)

    def test_time_exact(self) -> None:
        """Times survive as the scripts store them."""
        for t in [0.1 + 0.2, 1_700_000_000.000001, 1e-300]:
            self.assertEqual(float(rs.encode_time(t)), t)

    def test_malformed(self) -> None:
        """Unknown kinds and missing fields are EventError."""
        for bad in ["", "dance\nx", "relay\nbob", "joined\na\nb\nc\nnot-a-time\n{}",
                    "replaced\na", "relay\na\noffer\nb\n{bad json"]:  # fmt: skip
            self.assertRaises(rs.EventError, rs.decode_event, bad)


class RepliesTests(SynchronousTestCase):
    def test_entries(self) -> None:
        """Flattened id, metadata, joined triples become PeerEntry values, in order."""
        flat = ["b", '{"v":1}', "5.5", "a", "{}", "1.0"]
        self.assertEqual(
            rs.decode_entries(flat),
            [m.PeerEntry("b", {"v": 1}, 5.5), m.PeerEntry("a", {}, 1.0)],
        )
        self.assertEqual(rs.decode_entries([]), [])

    def test_script_error(self) -> None:
        """A script's refusal carries one of the protocol's error codes."""
        self.assertEqual(rs.script_error(["error", "room-full"]), "room-full")
        self.assertIsNone(rs.script_error(["ok"]))
        for code in rs.ERROR_MESSAGES:
            self.assertIn(code, m.ERROR_CODES)
        for script in [rs.REGISTER, rs.JOIN, rs.LEAVE, rs.ROOM_PEERS, rs.RELAY]:
            for code in script.split("'error', '")[1:]:
                self.assertIn(code.split("'")[0], rs.ERROR_MESSAGES)

    def test_resp(self) -> None:
        """The start-up check's commands in RESP: AUTH only with a password."""
        self.assertEqual(rs.resp_command("PING"), b"*1\r\n$4\r\nPING\r\n")
        self.assertEqual(
            rs.resp_command("SELECT", "\u00e9"), b"*2\r\n$6\r\nSELECT\r\n$2\r\n\xc3\xa9\r\n"
        )
        plain = rs.startup_commands(rs.RedisURL("h", db=2))
        self.assertEqual(plain, [rs.resp_command("SELECT", "2"), rs.resp_command("PING")])
        secret = rs.startup_commands(rs.RedisURL("h", username="u", password="p"))
        self.assertEqual(secret[0], rs.resp_command("AUTH", "u", "p"))


class SerialStepsTests(SynchronousTestCase):
    def test_order(self) -> None:
        """A step that waits holds the later ones back; steps that finish at once run at
        once, many of them without deep recursion."""
        steps = SerialSteps()
        ran: list[int] = []
        pending: defer.Deferred[None] = defer.Deferred()

        def step(i: int, result: Any = None) -> Any:
            def run() -> Any:
                ran.append(i)
                return result

            return run

        steps.submit(step(1))
        steps.submit(step(2, pending))
        for i in range(3, 3000):
            steps.submit(step(i, defer.succeed(None) if i % 2 else None))
        self.assertEqual(ran, [1, 2])
        pending.callback(None)
        self.assertEqual(ran, list(range(1, 3000)))
        steps.submit(step(0))
        self.assertEqual(ran[-1], 0)


class LaterRegistry:
    """A RoomRegistry whose answers (all but touch) wait for :meth:`release`."""

    def __init__(self, registry: RoomRegistry) -> None:
        self.registry = registry
        self.held: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []
        self.peer_timeout = registry.peer_timeout

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.registry, name)
        if name in ("touch", "set_connection_state", "stats"):
            return method

        def later(*args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append((d, method, args))
            return d

        return later

    def release(self) -> None:
        while self.held:
            d, method, args = self.held.pop(0)
            try:
                result = method(*args)
            except Exception:
                d.errback()
            else:
                d.callback(result)


class LaterSessionTests(SynchronousTestCase):
    """A session in front of a registry that answers later (as Redis does)."""

    def test_requests_in_order(self) -> None:
        """Replies, errors and pongs come in request order, each request handled after the
        one before it has its answer; closing unregisters after the pending requests."""
        clock = Clock()
        registry = LaterRegistry(RoomRegistry())
        sent: list[dict[str, Any]] = []
        session = SignalingSession(
            registry,  # type: ignore[arg-type]
            SignalingConfig(),
            clock,
            ServerStats(),
            sent.append,
            lambda code, reason: None,
            {"address": "192.0.2.1"},
        )
        for message in [
            {"type": "register", "peerId": "alice", "id": 1},
            {"type": "join-room", "roomId": "r", "id": 2},
            {"type": "ping", "id": 3},
            {"type": "leave-room", "roomId": "nope", "id": 4},
            b"garbage",
            {"type": "get-room-peers", "roomId": "r", "id": 5},
        ]:
            data = message if isinstance(message, bytes) else json.dumps(message).encode()
            session.message_received(data)
        self.assertEqual(len(registry.held), 1)  # only register has been asked
        for _ in range(4):
            registry.release()
        self.assertEqual(
            [(r["type"], r.get("id"), r.get("code")) for r in sent],
            [("registered", 1, None), ("room-joined", 2, None), ("pong", 3, None),
             ("error", 4, m.NOT_IN_ROOM), ("error", None, m.INVALID_JSON),
             ("room-peers", 5, None)],
        )  # fmt: skip
        session.closed()
        self.assertIn("alice", registry.registry)
        registry.release()
        self.assertNotIn("alice", registry.registry)


class OptionsTests(SynchronousTestCase):
    def test_redis_option(self) -> None:
        """--redis (or P2P_REDIS_URL) reaches the signaling configuration; bad URLs and
        TTLs are usage errors; without it the registry stays in memory."""
        options = Options(environ={})
        options.parseOptions(["--redis", "redis://127.0.0.1:6380/2", "--presence-ttl", "5"])
        config = config_from_options(options, environ={})
        self.assertEqual((config.redis_url, config.presence_ttl), ("redis://127.0.0.1:6380/2", 5))
        options = Options(environ={"P2P_REDIS_URL": "redis://r"})
        options.parseOptions([])
        self.assertEqual(options["redis"], "redis://r")
        options = Options(environ={})
        options.parseOptions([])
        self.assertIsNone(config_from_options(options, environ={}).redis_url)
        for bad in [["--redis", "http://x"], ["--presence-ttl", "0"]]:
            self.assertRaises(usage.UsageError, Options(environ={}).parseOptions, bad)

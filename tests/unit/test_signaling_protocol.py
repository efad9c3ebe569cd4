"""Tests for the signaling wire format, the per-connection session and the Autobahn
server protocol, all in memory (no sockets)."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import txaio
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from holepunch.interfaces import DisconnectReason, ISignalingClient
from holepunch.ratelimit import TokenBucket
from holepunch.signaling import auth
from holepunch.signaling import messages as m
from holepunch.signaling.autobahn_fixes import debug_logging_off
from holepunch.signaling.model import RoomRegistry
from holepunch.signaling.server import (
    ServerStats,
    SignalingConfig,
    SignalingServerFactory,
    SignalingSession,
    config_from_options,
    describe_address,
    make_signaling_service,
)
from tests.signaling_helpers import connect_memory, disconnect_memory

T0 = 1_700_000_000.0


class ParseTests(SynchronousTestCase):
    """Bytes -> typed requests, or an error with a stable code."""

    def parse(self, message: Any) -> m.Request:
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        return m.parse_request(data, 4096)

    def assertCode(self, code: str, message: Any, request_id: Any = None) -> m.MessageError:
        e = self.assertRaises(m.MessageError, self.parse, message)
        self.assertEqual((e.code, e.request_id), (code, request_id))
        self.assertIn(e.code, m.ERROR_CODES)
        return e

    def test_every_request(self) -> None:
        """Each client message type parses into its request, fields and id included."""
        cases: list[tuple[dict[str, Any], m.Request]] = [
            (
                {"type": "register", "peerId": "p", "metadata": {"a": 1}, "id": 1},
                m.Register("p", {"a": 1}, None, 1),
            ),
            ({"type": "register", "peerId": "p", "reconnectToken": "t"}, m.Register("p", {}, "t")),
            ({"type": "join-room", "roomId": "r", "peerId": "p"}, m.JoinRoom("r", None, "p")),
            ({"type": "leave-room", "roomId": "r", "id": "x"}, m.LeaveRoom("r", "x")),
            ({"type": "get-room-peers", "roomId": "r"}, m.GetRoomPeers("r")),
            (
                {"type": "offer", "to": "b", "offer": {"sdp": "v=0"}, "from": "a"},
                m.Relay("offer", "b", {"sdp": "v=0"}, None, "a"),
            ),
            ({"type": "answer", "to": "b", "answer": {}}, m.Relay("answer", "b", {})),
            (
                {"type": "ice-candidate", "to": "b", "candidate": None},
                m.Relay("ice-candidate", "b", None),
            ),
            (
                {"type": "connection-state", "peerId": "b", "state": "connected", "method": "udp"},
                m.ConnectionStateReport("b", "connected", "udp"),
            ),
            ({"type": "ping", "id": 7}, m.Ping(7)),
        ]
        for message, expected in cases:
            self.assertEqual(self.parse(message), expected)
            self.assertEqual(m.request_type(expected), message["type"])

    def test_not_json(self) -> None:
        """Bytes that are not JSON (or not UTF-8, or NaN, or absurdly nested) are invalid-json."""
        for data in [b"{", b"hello", b"\xff\xfe", b"NaN", b'{"a": Infinity}', b"[" * 900]:
            self.assertCode(m.INVALID_JSON, data)

    def test_strict_json(self) -> None:
        """Lone surrogates and numbers beyond a double's range are invalid-json too."""
        for data in [b'{"type": "ping", "id": "\\ud800"}', b'{"a": 1e400}', b"\xef\xbb\xbf{}"]:
            self.assertCode(m.INVALID_JSON, data)

    def test_text_with_surrogates(self) -> None:
        """Text input holding a lone surrogate is invalid-json, not an encoding crash."""
        e = self.assertRaises(m.MessageError, m.parse_request, '{"type":"\ud800"}', 100)
        self.assertEqual(e.code, m.INVALID_JSON)

    def test_identifier_characters(self) -> None:
        """Identifiers: 1 to 256 characters, C0 and C1 controls refused, the rest allowed."""
        for good in ["a", "x" * 256, "caf\u00e9", "\u00a0", "\u2028", "\U0001f600", "~"]:
            request = self.parse({"type": "join-room", "roomId": good})
            self.assertEqual(request, m.JoinRoom(good))
        for bad in ["", "x" * 257, "a\x00", "\x1f", "\x7f", "a\x85b", "\x9f"]:
            self.assertCode(m.INVALID_FIELD, {"type": "join-room", "roomId": bad, "id": 1}, 1)

    def test_not_object(self) -> None:
        """JSON that is not an object is not-an-object."""
        for data in [b"[]", b'"register"', b"42", b"null", b"true"]:
            self.assertCode(m.NOT_AN_OBJECT, data)

    def test_too_large(self) -> None:
        """A message above the size limit is message-too-large, before any parsing."""
        self.assertCode(m.MESSAGE_TOO_LARGE, b"{" + b" " * 4095 + b"}")

    def test_type(self) -> None:
        """No type is missing-field, a non-string one invalid-field, an unknown one unknown-type."""
        self.assertCode(m.MISSING_FIELD, {"id": 3}, 3)
        self.assertCode(m.INVALID_FIELD, {"type": 5, "id": "a"}, "a")
        e = self.assertCode(m.UNKNOWN_TYPE, {"type": "x" * 200, "id": 4}, 4)
        self.assertLess(len(e.message), 120)

    def test_bad_id(self) -> None:
        """An id that is not a short string or a safe integer is invalid-field (with no id)."""
        for bad in [{}, [], 1.5, True, "", "x" * 300, 2**60]:
            self.assertCode(m.INVALID_FIELD, {"type": "ping", "id": bad})
        self.assertEqual(self.parse({"type": "ping", "id": None}), m.Ping(None))

    def test_missing_fields(self) -> None:
        """Each required field, left out, is missing-field with the request's id."""
        for message in [
            {"type": "register"},
            {"type": "join-room"},
            {"type": "offer", "to": "b"},
            {"type": "offer", "offer": {}},
            {"type": "ice-candidate", "to": "b"},
            {"type": "connection-state", "peerId": "b"},
        ]:
            self.assertCode(m.MISSING_FIELD, {**message, "id": 9}, 9)

    def test_mistyped_fields(self) -> None:
        """Fields of the wrong type or shape are invalid-field."""
        for message in [
            {"type": "register", "peerId": 5},
            {"type": "register", "peerId": ""},
            {"type": "register", "peerId": "a\nb"},
            {"type": "register", "peerId": "x" * 257},
            {"type": "register", "peerId": "p", "metadata": []},
            {"type": "register", "peerId": "p", "metadata": {"big": "x" * 1100}},
            {"type": "register", "peerId": "p", "reconnectToken": 7},
            {"type": "join-room", "roomId": ["r"]},
            {"type": "offer", "to": "b", "offer": "v=0"},
            {"type": "offer", "to": "b", "offer": None},
            {"type": "answer", "to": None, "answer": {}},
            {"type": "ice-candidate", "to": "b", "candidate": "candidate:1"},
            {"type": "connection-state", "peerId": "b", "state": "happy"},
            {"type": "connection-state", "peerId": "b", "state": "new", "method": 3},
            {"type": "offer", "to": "b", "offer": {}, "from": 12},
        ]:
            self.assertCode(m.INVALID_FIELD, {**message, "id": "q"}, "q")

    def test_str_input(self) -> None:
        """Text input is measured in UTF-8 bytes."""
        self.assertEqual(m.parse_request('{"type":"ping"}', 100), m.Ping())
        e = self.assertRaises(m.MessageError, m.parse_request, '"' + "é" * 60 + '"', 100)
        self.assertEqual(e.code, m.MESSAGE_TOO_LARGE)

    def test_encoders(self) -> None:
        """Server messages carry the seed's fields, ids when asked, millisecond timestamps."""
        self.assertEqual(
            m.error("room-full", "full", 3),
            {"type": "error", "code": "room-full", "message": "full", "id": 3},
        )
        self.assertEqual(m.pong(1.5, None), {"type": "pong", "timestamp": 1500})
        self.assertEqual(
            m.peer_joined("r", "p", {"a": 1}, 2.0),
            {
                "type": "peer-joined",
                "roomId": "r",
                "peerId": "p",
                "metadata": {"a": 1},
                "timestamp": 2000,
            },
        )
        self.assertEqual(
            m.relayed("ice-candidate", "a", None),
            {"type": "ice-candidate", "from": "a", "candidate": None},
        )
        self.assertEqual(json.loads(m.encode({"x": "é"})), {"x": "é"})

    def test_encode_what_orjson_refuses(self) -> None:
        """Integers past 64 bits and non-string keys are still encoded as json would."""
        self.assertEqual(m.encode({"n": 2**70}), b'{"n":1180591620717411303424}')
        self.assertEqual(m.encode({"a": {1: "x"}}), b'{"a":{"1":"x"}}')
        self.assertEqual(
            m.encode({"type": "pong", "x": "\u2028é"}), '{"type":"pong","x":"\u2028é"}'.encode()
        )

    def test_encode_relayed(self) -> None:
        """A relay encoded in one call is encode(relayed(...)), payloads orjson refuses
        included."""
        for kind, payload in [
            ("offer", {"sdp": "v=0", "type": "offer"}),
            ("answer", {"n": 2**70}),
            ("ice-candidate", None),
        ]:
            self.assertEqual(
                m.encode_relayed(kind, "a", payload), m.encode(m.relayed(kind, "a", payload))
            )
        self.assertEqual(
            m.encode_relayed("answer", "a", {"n": 2**70}),
            b'{"type":"answer","from":"a","answer":{"n":1180591620717411303424}}',
        )


class TokenBucketTests(SynchronousTestCase):
    """The rate limiter, on an injected clock."""

    def test_burst_then_rate(self) -> None:
        """A full bucket allows its capacity at once, then one token per 1/rate seconds."""
        clock = Clock()
        bucket = TokenBucket(2.0, 3, clock.seconds())
        self.assertEqual(
            [bucket.take(clock.seconds()) for _ in range(4)], [True, True, True, False]
        )
        clock.advance(0.5)
        self.assertEqual(
            [bucket.take(clock.seconds()), bucket.take(clock.seconds())], [True, False]
        )
        clock.advance(100)
        self.assertEqual(bucket.tokens(clock.seconds()), 3)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: list[tuple[int, str]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(json.loads(m.encode(message)))

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))

    def take(self) -> list[dict[str, Any]]:
        sent, self.sent = self.sent, []
        return sent


class SessionTests(SynchronousTestCase):
    """One connection's protocol logic, without Autobahn."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.config = SignalingConfig(
            messages_per_second=10, message_burst=100, rate_limit_violations=3
        )
        self.registry = RoomRegistry(self.config.limits())
        self.stats = ServerStats()

    def session(self, auth_peer_id: str | None = None) -> tuple[SignalingSession, Recorder]:
        recorder = Recorder()
        session = SignalingSession(
            self.registry,
            self.config,
            self.clock,
            self.stats,
            recorder.send,
            recorder.close,
            {"address": "192.0.2.1", "port": 4000, "family": "IPv4"},
            auth_peer_id,
        )
        session.opened()
        return session, recorder

    def send(self, session: SignalingSession, message: Any) -> None:
        session.message_received(json.dumps(message).encode())

    def registered(self, peer_id: str) -> tuple[SignalingSession, Recorder]:
        session, recorder = self.session()
        self.send(session, {"type": "register", "peerId": peer_id})
        recorder.take()
        return session, recorder

    def in_room(self, *pairs: tuple[SignalingSession, Recorder], room: str = "swarm") -> None:
        """Put registered sessions in one room (relays need a shared room); forget the
        replies and peer-joined messages that causes."""
        for session, _ in pairs:
            self.send(session, {"type": "join-room", "roomId": room})
        for _, recorder in pairs:
            recorder.take()

    def test_provides_interface(self) -> None:
        """A session is what the room model talks to."""
        self.assertTrue(verifyObject(ISignalingClient, self.session()[0]))

    def test_welcome(self) -> None:
        """The first message is welcome, with a timestamp and the client's address."""
        _, recorder = self.session()
        self.assertEqual(
            recorder.take(),
            [
                {
                    "type": "welcome",
                    "message": "Connected to signaling server",
                    "timestamp": int(T0 * 1000),
                    "yourAddress": {"address": "192.0.2.1", "port": 4000, "family": "IPv4"},
                }
            ],
        )

    def test_register(self) -> None:
        """register answers registered with the id, a reconnect token and peerTimeout."""
        session, recorder = self.session()
        recorder.take()
        self.send(
            session, {"type": "register", "peerId": "alice", "metadata": {"v": 1}, "id": "r1"}
        )
        [reply] = recorder.take()
        self.assertEqual(reply["type"], "registered")
        self.assertEqual((reply["peerId"], reply["id"], reply["peerTimeout"]), ("alice", "r1", 300))
        self.assertIsInstance(reply["reconnectToken"], str)
        self.assertEqual(session.peer_id, "alice")

    def test_only_register_and_ping_before_registering(self) -> None:
        """Before register, everything but ping gets not-registered."""
        session, recorder = self.session()
        recorder.take()
        for message in [
            {"type": "join-room", "roomId": "r", "id": 1},
            {"type": "leave-room", "roomId": "r", "id": 2},
            {"type": "get-room-peers", "roomId": "r", "id": 3},
            {"type": "offer", "to": "b", "offer": {}, "id": 4},
            {"type": "connection-state", "peerId": "b", "state": "new", "id": 5},
        ]:
            self.send(session, message)
            self.assertEqual(
                [(r["type"], r.get("code"), r["id"]) for r in recorder.take()],
                [("error", m.NOT_REGISTERED, message["id"])],
            )
        self.send(session, {"type": "ping", "id": 6})
        self.assertEqual(recorder.take(), [{"type": "pong", "timestamp": int(T0 * 1000), "id": 6}])

    def test_register_twice(self) -> None:
        """A registered connection cannot register again, under any id."""
        session, recorder = self.registered("alice")
        for peer_id in ["alice", "bob"]:
            self.send(session, {"type": "register", "peerId": peer_id})
            self.assertEqual(recorder.take()[0]["code"], m.ALREADY_REGISTERED)

    def test_peer_id_taken_and_takeover(self) -> None:
        """A live id is refused without its token; with it, the old connection is closed (4001)."""
        old, old_rec = self.session()
        self.send(old, {"type": "register", "peerId": "alice"})
        token = old_rec.take()[-1]["reconnectToken"]
        new, new_rec = self.session()
        self.send(new, {"type": "register", "peerId": "alice", "id": 1})
        self.assertEqual(new_rec.take()[-1]["code"], m.PEER_ID_TAKEN)
        self.send(new, {"type": "register", "peerId": "alice", "reconnectToken": token, "id": 2})
        reply = new_rec.take()[-1]
        self.assertEqual((reply["type"], reply["resumed"], reply["id"]), ("registered", True, 2))
        self.assertNotEqual(reply["reconnectToken"], token)
        self.assertEqual(
            old_rec.closed, [(m.CLOSE_SESSION_REPLACED, "peer id taken over by a new connection")]
        )
        old.closed()  # the old connection's close does not unregister the new one
        self.assertIn("alice", self.registry)

    def test_spoofed_from(self) -> None:
        """A message naming another sender in from (or peerId) is refused with spoofed-from."""
        session, recorder = self.registered("alice")
        self.in_room((session, recorder), self.registered("bob"))
        for message in [
            {"type": "offer", "to": "bob", "offer": {}, "from": "mallory", "id": 1},
            {"type": "join-room", "roomId": "r", "peerId": "mallory", "id": 2},
            {"type": "ping", "from": "mallory", "id": 3},
        ]:
            self.send(session, message)
            if message["type"] == "ping":
                self.assertEqual(recorder.take()[0]["type"], "pong")  # ping needs no identity
            else:
                self.assertEqual(recorder.take()[0]["code"], m.SPOOFED_FROM)
        self.send(session, {"type": "offer", "to": "bob", "offer": {}, "from": "alice", "id": 4})
        self.assertEqual(recorder.take()[0]["type"], "ack")

    def test_relay_and_ack(self) -> None:
        """Relays reach the target with from stamped by the server; an id asks for an ack."""
        alice, alice_rec = self.registered("alice")
        bob, bob_rec = self.registered("bob")
        self.in_room((alice, alice_rec), (bob, bob_rec))
        self.send(alice, {"type": "offer", "to": "bob", "offer": {"sdp": "x"}})
        self.send(alice, {"type": "ice-candidate", "to": "bob", "candidate": {"c": 1}, "id": 5})
        self.assertEqual(
            alice_rec.take(),
            [{"type": "ack", "for": "ice-candidate", "timestamp": int(T0 * 1000), "id": 5}],
        )
        self.assertEqual(
            bob_rec.take(),
            [
                {"type": "offer", "from": "alice", "offer": {"sdp": "x"}},
                {"type": "ice-candidate", "from": "alice", "candidate": {"c": 1}},
            ],
        )
        self.send(alice, {"type": "answer", "to": "nobody", "answer": {}, "id": 6})
        self.assertEqual(alice_rec.take()[0]["code"], m.PEER_NOT_FOUND)

    def test_rooms(self) -> None:
        """join-room, get-room-peers, leave-room and what the other member sees."""
        alice, alice_rec = self.registered("alice")
        bob, bob_rec = self.registered("bob")
        self.send(alice, {"type": "join-room", "roomId": "t", "id": 1})
        self.assertEqual(
            alice_rec.take()[0],
            {
                "type": "room-joined",
                "roomId": "t",
                "peers": [],
                "timestamp": int(T0 * 1000),
                "id": 1,
            },
        )
        self.send(bob, {"type": "join-room", "roomId": "t"})
        self.assertEqual([p["peerId"] for p in bob_rec.take()[0]["peers"]], ["alice"])
        self.assertEqual(alice_rec.take()[0]["type"], "peer-joined")
        self.send(alice, {"type": "get-room-peers", "roomId": "t", "id": 2})
        reply = alice_rec.take()[0]
        self.assertEqual(
            (reply["type"], [p["peerId"] for p in reply["peers"]]), ("room-peers", ["bob"])
        )
        self.send(bob, {"type": "leave-room", "roomId": "t", "id": 3})
        self.assertEqual(bob_rec.take()[0]["type"], "room-left")
        self.assertEqual(alice_rec.take()[0]["type"], "peer-left")
        self.send(bob, {"type": "leave-room", "roomId": "t", "id": 4})
        self.assertEqual(bob_rec.take()[0]["code"], m.NOT_IN_ROOM)

    def test_close_leaves_rooms(self) -> None:
        """A closed connection's peer leaves its rooms with peer-left."""
        alice, _ = self.registered("alice")
        bob, bob_rec = self.registered("bob")
        self.send(alice, {"type": "join-room", "roomId": "t"})
        self.send(bob, {"type": "join-room", "roomId": "t"})
        bob_rec.take()
        alice.closed()
        self.assertEqual(
            [(r["type"], r["peerId"]) for r in bob_rec.take()], [("peer-left", "alice")]
        )
        self.assertNotIn("alice", self.registry)

    def test_connection_state(self) -> None:
        """connection-state is recorded and acknowledged when it has an id."""
        alice, rec = self.registered("alice")
        self.send(
            alice,
            {
                "type": "connection-state",
                "peerId": "bob",
                "state": "connected",
                "method": "udp-hole-punch",
                "id": 1,
            },
        )
        self.assertEqual(rec.take()[0]["for"], "connection-state")
        peer = self.registry.peer("alice")
        assert peer is not None
        self.assertEqual(peer.connection_states["bob"].method, "udp-hole-punch")

    def test_auth_restricts_peer_id(self) -> None:
        """A connection authenticated for one peer id may register only that id."""
        session, recorder = self.session(auth_peer_id="alice")
        recorder.take()
        self.send(session, {"type": "register", "peerId": "bob", "id": 1})
        self.assertEqual(recorder.take()[0]["code"], m.UNAUTHORIZED)
        self.send(session, {"type": "register", "peerId": "alice", "id": 2})
        self.assertEqual(recorder.take()[0]["type"], "registered")

    def test_rate_limit(self) -> None:
        """Past the burst, messages get rate-limited (with their id); sustained abuse closes 1008."""
        self.config.message_burst = 5
        session, recorder = self.session()
        recorder.take()
        for i in range(5):
            self.send(session, {"type": "ping", "id": i})
        self.assertEqual([r["type"] for r in recorder.take()], ["pong"] * 5)
        for i in range(3):
            self.send(session, {"type": "ping", "id": 10 + i})
        self.assertEqual(
            [(r["code"], r["id"]) for r in recorder.take()],
            [(m.RATE_LIMITED, 10 + i) for i in range(3)],
        )
        self.clock.advance(0.15)  # one token back
        self.send(session, {"type": "ping", "id": 20})
        self.assertEqual(recorder.take()[0]["type"], "pong")
        self.send(session, {"type": "ping"})
        self.assertEqual(recorder.closed, [(m.CLOSE_POLICY_VIOLATION, "rate limit exceeded")])
        self.assertEqual(recorder.take(), [])
        self.send(session, {"type": "ping"})
        self.assertEqual(recorder.take(), [])  # closing: nothing more is answered

    def test_garbage_keeps_session(self) -> None:
        """Each kind of bad input gets its code, and the session goes on working."""
        session, recorder = self.registered("alice")
        session.message_received(b"\x00not json")
        session.message_received(b"[1,2]")
        session.message_received(b'{"type":"dance"}')
        self.assertEqual(
            [r["code"] for r in recorder.take()], [m.INVALID_JSON, m.NOT_AN_OBJECT, m.UNKNOWN_TYPE]
        )
        self.send(session, {"type": "ping", "id": 1})
        self.assertEqual(recorder.take()[0]["type"], "pong")
        self.assertEqual(self.stats.errors[m.INVALID_JSON], 1)

    def test_internal_error(self) -> None:
        """An unexpected failure in the model is reported as internal-error, not a crash."""
        session, recorder = self.registered("alice")

        def broken(*args: Any) -> None:
            raise RuntimeError("boom")

        self.patch(self.registry, "join", broken)
        self.send(session, {"type": "join-room", "roomId": "r", "id": 1})
        self.assertEqual(recorder.take()[0]["code"], m.INTERNAL_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_disconnect_reasons(self) -> None:
        """The model's disconnects become close codes 4000 (idle) and 4001 (replaced)."""
        session, recorder = self.registered("alice")
        session.disconnect(DisconnectReason.IDLE_TIMEOUT)
        session.disconnect(DisconnectReason.REPLACED)  # already closing: ignored
        self.assertEqual(recorder.closed, [(m.CLOSE_IDLE_TIMEOUT, "idle timeout")])

    def test_describe_address(self) -> None:
        """yourAddress names the family, and a trusted forwarded address replaces the socket's."""
        from twisted.internet.address import IPv6Address, UNIXAddress

        self.assertEqual(
            describe_address(IPv6Address("TCP", "::1", 5)),
            {"address": "::1", "port": 5, "family": "IPv6"},
        )
        self.assertEqual(describe_address(None, "2001:db8::1")["family"], "IPv6")
        self.assertEqual(describe_address(None, "garbage")["family"], "unknown")
        self.assertEqual(describe_address(UNIXAddress(None))["family"], "unknown")


class AutobahnProtocolTests(SynchronousTestCase):
    """The Autobahn server protocol, connected to an Autobahn client in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)

    def factory(self, **options: Any) -> SignalingServerFactory:
        config = SignalingConfig(**options)
        return SignalingServerFactory(config, RoomRegistry(config.limits()), self.clock)

    def connect(self, factory: SignalingServerFactory, **kw: Any) -> Any:
        client, server, pump = connect_memory(factory, **kw)
        self.addCleanup(disconnect_memory, client, pump)
        return client, server, pump

    def test_welcome_on_open(self) -> None:
        """The handshake succeeds and the client is greeted with its address."""
        client, _, _ = self.connect(self.factory())
        [welcome] = client.take()
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(
            welcome["yourAddress"], {"address": "192.0.2.7", "port": 50000, "family": "IPv4"}
        )

    def test_round_trip(self) -> None:
        """A register over WebSocket frames is answered over WebSocket frames."""
        client, _, pump = self.connect(self.factory())
        client.take()
        client.send_json({"type": "register", "peerId": "alice", "id": 1})
        pump.flush()
        self.assertEqual(client.take()[0]["type"], "registered")

    def test_binary_frames(self) -> None:
        """A JSON message in a binary frame is accepted as well."""
        client, _, pump = self.connect(self.factory())
        client.take()
        client.send_raw(b'{"type":"ping","id":1}', binary=True)
        pump.flush()
        self.assertEqual(client.take()[0]["type"], "pong")

    def test_invalid_utf8_text_frame(self) -> None:
        """A text frame that is not UTF-8 gets invalid-json (no 1007 close): the connection stays."""
        client, _, pump = self.connect(self.factory())
        client.take()
        client.send_raw(b'{"type":"ping","id":"\xff"}')
        pump.flush()
        [reply] = client.take()
        self.assertEqual(
            (reply["type"], reply["code"], reply["id"]), ("error", m.INVALID_JSON, None)
        )
        client.send_json({"type": "ping", "id": 2})
        pump.flush()
        self.assertEqual(client.take()[0]["type"], "pong")
        self.assertIsNone(client.close_info)

    def test_message_event_still_fires(self) -> None:
        """With a listener on Autobahn's "message" event, Autobahn's path fires it as before."""
        client, server, pump = self.connect(self.factory())
        client.take()
        seen: list[tuple[bytes, bool]] = []
        server.on("message", lambda payload, is_binary: seen.append((payload, is_binary)))
        client.send_raw(b'{"type":"ping","id":1}')
        pump.flush()
        self.assertEqual(client.take()[0]["type"], "pong")
        self.assertEqual(seen, [(b'{"type":"ping","id":1}', False)])

    def test_writes_the_same_on_either_path(self) -> None:
        """Direct writes put on the wire what Autobahn's own path puts there (octet
        logging makes Autobahn write)."""
        client, server, pump = self.connect(self.factory())
        client.take()
        received: list[bytes] = []
        for log_octets in (False, True):
            server.logOctets = log_octets
            client.send_json({"type": "ping", "id": 1})
            pump.flush()
            received.append(json.dumps(client.take()[0]).encode())
        self.assertEqual(received[0], received[1])

    def test_debug_logging_takes_autobahns_path(self) -> None:
        """With Autobahn's debug logging on, reads and writes go through Autobahn's methods."""
        client, server, pump = self.connect(self.factory())
        client.take()
        make_logger = txaio.make_logger  # type: ignore[attr-defined]
        debug_log = make_logger()
        debug_log.set_log_level("debug")
        self.assertFalse(debug_logging_off(debug_log))
        self.assertTrue(debug_logging_off(make_logger()))
        formats: list[str] = []
        recording = mock.Mock(wraps=debug_log)
        recording.debug.side_effect = lambda fmt, *a, **kw: formats.append(fmt)
        server.log = recording
        client.send_json({"type": "ping", "id": 1})
        pump.flush()
        self.assertEqual(client.take()[0]["type"], "pong")
        self.assertTrue(any("received" in f for f in formats), formats)
        self.assertTrue(any("sent" in f for f in formats), formats)

    def test_message_too_large_then_frame_too_large(self) -> None:
        """Over the message limit: an error, connection kept; over the frame limit: 1009."""
        factory = self.factory(max_message_size=512, max_frame_size=1024)
        client, _, pump = self.connect(factory)
        client.take()
        client.send_raw(b'{"type":"ping","pad":"' + b"x" * 600 + b'","id":1}')
        pump.flush()
        self.assertEqual(client.take()[0]["code"], m.MESSAGE_TOO_LARGE)
        client.send_json({"type": "ping", "id": 2})
        pump.flush()
        self.assertEqual(client.take()[0]["type"], "pong")
        client.send_raw(b"x" * 2000)
        pump.flush()
        self.assertIsNotNone(client.close_info)
        self.assertEqual(client.close_info[1], m.CLOSE_MESSAGE_TOO_BIG)

    def test_rate_limit_closes_with_policy_code(self) -> None:
        """Sustained flooding closes the connection with 1008."""
        factory = self.factory(messages_per_second=1, message_burst=2, rate_limit_violations=2)
        client, _, pump = self.connect(factory)
        for _ in range(6):
            client.send_json({"type": "ping"})
        pump.flush()
        kinds = [r.get("code", r["type"]) for r in client.take()]
        self.assertEqual(kinds, ["welcome", "pong", "pong", m.RATE_LIMITED, m.RATE_LIMITED])
        self.assertEqual(client.close_info[1], m.CLOSE_POLICY_VIOLATION)

    def test_per_address_limit(self) -> None:
        """A source address past max_connections_per_address is refused with HTTP 429."""
        factory = self.factory(max_connections_per_address=1)
        first, _, _ = self.connect(factory)
        second, server, _ = self.connect(factory)
        self.assertEqual(len(first.take()), 1)
        self.assertIsNone(second.session if hasattr(second, "session") else None)
        self.assertIn("429", second.close_info[2])
        self.assertEqual(factory.stats.denied[429], 1)
        third, _, _ = self.connect(factory, client_host="192.0.2.8")
        self.assertEqual(third.take()[0]["type"], "welcome")

    def test_total_limit(self) -> None:
        """Past max_connections the handshake is refused with HTTP 503."""
        factory = self.factory(max_connections=1)
        self.connect(factory)
        second, _, _ = self.connect(factory, client_host="192.0.2.9")
        self.assertIn("503", second.close_info[2])

    def test_connection_slots_released(self) -> None:
        """A closed connection frees its per-address slot."""
        factory = self.factory(max_connections_per_address=1)
        first, _, pump = connect_memory(factory)
        disconnect_memory(first, pump)
        self.assertEqual((factory.accepted, dict(factory.per_address)), (0, {}))
        again, _, _ = self.connect(factory)
        self.assertEqual(again.take()[0]["type"], "welcome")

    def test_auth_required(self) -> None:
        """With a secret, a handshake without a token, with a bad one or an expired one is 401."""
        factory = self.factory(auth_secret="s3cret")
        expired = auth.mint_token("s3cret", "alice", 10, T0 - 20)
        forged = auth.mint_token("other", "alice", 10, T0)
        for url, headers in [
            ("ws://127.0.0.1:8080/", None),
            (f"ws://127.0.0.1:8080/?token={expired}", None),
            ("ws://127.0.0.1:8080/", {"Authorization": f"Bearer {forged}"}),
        ]:
            client, _, _ = self.connect(factory, url=url, headers=headers)
            self.assertEqual(client.take(), [])
            self.assertIn("[401]", client.close_info[2])
        self.assertEqual(factory.stats.denied[401], 3)

    def test_auth_granted(self) -> None:
        """A valid token in the query or the header opens the connection for its peer id."""
        factory = self.factory(auth_secret="s3cret")
        token = auth.mint_token("s3cret", "alice", 60, T0)
        for url, headers in [
            (f"ws://127.0.0.1:8080/?token={token}", None),
            ("ws://127.0.0.1:8080/", {"Authorization": f"Bearer {token}"}),
        ]:
            client, _, pump = self.connect(factory, url=url, headers=headers)
            client.send_json({"type": "register", "peerId": "mallory", "id": 1})
            pump.flush()
            self.assertEqual([r.get("code") for r in client.take()], [None, m.UNAUTHORIZED])


class ServiceTests(SynchronousTestCase):
    """The wired service, on a memory reactor and a fake clock."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(T0)
        self.service = make_signaling_service(
            SignalingConfig(
                endpoint="tcp:8080:interface=127.0.0.1", peer_timeout=300, cleanup_interval=60
            ),
            self.reactor,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def connect(self, **kw: Any) -> Any:
        client, server, pump = connect_memory(self.service.factory, **kw)
        self.addCleanup(disconnect_memory, client, pump)
        return client, server, pump

    def test_listens_on_endpoint(self) -> None:
        """The service listens on its endpoint, and when_listening() fires with the port."""
        self.assertEqual(self.reactor.tcpServers[0][0], 8080)
        ports: list[Any] = []
        self.service.when_listening().addCallback(ports.append)
        self.assertEqual(ports, [self.service.port])
        self.assertIsNotNone(self.service.port)

    def test_sweeper_evicts_idle_peers(self) -> None:
        """Every cleanup_interval the registry is swept: idle peers go, their rooms hear it."""
        idle, _, idle_pump = self.connect()
        busy, _, busy_pump = self.connect(client_host="192.0.2.8")
        for client, name, pump in [(idle, "idle", idle_pump), (busy, "busy", busy_pump)]:
            client.send_json({"type": "register", "peerId": name})
            client.send_json({"type": "join-room", "roomId": "t"})
            pump.flush()
            client.take()
        for _ in range(4):
            self.reactor.advance(60)
            busy.send_json({"type": "ping"})
            busy_pump.flush()
            idle_pump.flush()
        self.assertEqual([r["type"] for r in busy.take()], ["pong"] * 4)
        self.assertIn("idle", self.service.registry)
        self.reactor.advance(60)
        idle_pump.flush()
        busy_pump.flush()
        self.assertEqual(idle.close_info[1], m.CLOSE_IDLE_TIMEOUT)
        self.assertEqual([(r["type"], r["peerId"]) for r in busy.take()], [("peer-left", "idle")])
        self.assertNotIn("idle", self.service.registry)
        self.assertEqual(self.service.stats()["evicted"], 1)

    def test_sweeper_closes_silent_unregistered(self) -> None:
        """A connection that never registers is closed after peer_timeout too."""
        client, _, pump = self.connect()
        self.reactor.advance(300)
        pump.flush()
        self.assertEqual(client.close_info[1], m.CLOSE_IDLE_TIMEOUT)

    def test_stats(self) -> None:
        """stats() has peers, rooms, connections, relays by type and errors by code."""
        client, _, pump = self.connect()
        client.send_json({"type": "register", "peerId": "a"})
        client.send_json({"type": "join-room", "roomId": "r"})
        client.send_json({"type": "offer", "to": "a", "offer": {}})
        client.send_json({"type": "offer", "to": "zz", "offer": {}})
        client.send_raw(b"nope")
        pump.flush()
        stats = self.service.stats()
        self.assertEqual((stats["peers"], stats["rooms"], stats["connections"]), (1, 1, 1))
        self.assertEqual(stats["relayed"]["offer"], 1)
        self.assertEqual(stats["errors"], {m.PEER_NOT_FOUND: 1, m.INVALID_JSON: 1})
        self.assertEqual(stats["messages"], {"register": 1, "join-room": 1, "offer": 2})

    def test_stop_closes_connections(self) -> None:
        """Stopping the service says going-away (1001) to every client."""
        client, _, pump = self.connect()
        d = self.service.stopService()
        pump.flush()
        self.assertEqual(client.close_info[1], m.CLOSE_GOING_AWAY)
        self.successResultOf(d)
        self.assertIsNone(self.service.port)

    def test_root_page(self) -> None:
        """A plain GET of / is a short text page; other methods are 405."""
        page = self.service.root.getChildWithDefault(b"", DummyRequest([b""]))
        request = DummyRequest([b""])
        body = page.render(request)
        self.assertIn(b"signaling server", body)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"]
        )
        post = DummyRequest([b""])
        post.method = b"POST"
        page.render(post)
        self.assertEqual(post.responseCode, 405)


class ConfigTests(SynchronousTestCase):
    """SignalingConfig and its construction from daemon options."""

    def test_seed_defaults(self) -> None:
        """The defaults are the seed's: 300 s peer timeout, 60 s cleanup, port 8080, no auth."""
        config = SignalingConfig()
        self.assertEqual((config.peer_timeout, config.cleanup_interval), (300, 60))
        self.assertEqual((config.endpoint, config.auth_secret), ("tcp:8080", None))
        self.assertEqual(config.max_message_size, 64 * 1024)

    def test_from_options(self) -> None:
        """Daemon options map onto the config; the secret falls back to P2P_AUTH_SECRET."""
        config = config_from_options(
            {
                "signaling": "tcp:9000",
                "peer-timeout": 10.0,
                "message-rate": 5.0,
                "auth-secret": None,
            },
            {"P2P_AUTH_SECRET": "from-env"},
        )
        self.assertEqual((config.endpoint, config.peer_timeout), ("tcp:9000", 10.0))
        self.assertEqual((config.messages_per_second, config.auth_secret), (5.0, "from-env"))
        explicit = config_from_options({"auth-secret": "given"}, {"P2P_AUTH_SECRET": "env"})
        self.assertEqual(explicit.auth_secret, "given")
        self.assertIsNone(config_from_options({}, {}).auth_secret)

    def test_nonsense_refused(self) -> None:
        """Non-positive limits and a frame limit below the message limit are refused."""
        for bad in [
            {"peer_timeout": 0},
            {"max_peers": 0},
            {"messages_per_second": -1},
            {"max_message_size": 1000, "max_frame_size": 999},
        ]:
            self.assertRaises(ValueError, SignalingConfig, **bad)


def _outcome(parse: Any) -> Any:
    try:
        return parse()
    except m.MessageError as e:
        return (e.code, e.message, e.request_id)


class RelayFastPathTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(
        st.sampled_from(["offer", "answer", "ice-candidate"]),
        st.dictionaries(
            st.sampled_from(["to", "from", "id", "offer", "answer", "candidate", "x"]),
            st.none()
            | st.booleans()
            | st.integers(-(2**60), 2**60)
            | st.text(alphabet=st.sampled_from(["a", "\x00", "\x85", "\u00a0", "\u2028", "é"]))
            | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        ),
    )
    def test_same_as_the_general_path(self, kind: str, fields: dict[str, Any]) -> None:
        """parse_request's shortcut for relays gives what the general path gives: the same
        request, or the same error code, message and id."""
        payload = json.dumps({"type": kind, **fields}).encode()
        general = _outcome(lambda: m.request_from_object(m.decode_object(payload, 65536)))
        self.assertEqual(_outcome(lambda: m.parse_request(payload, 65536)), general)

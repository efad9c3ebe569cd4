"""Tests for holepunch.signaling.model (the room registry) and .auth (signed tokens)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from holepunch.interfaces import DisconnectReason, IRoomRegistry, ISignalingClient
from holepunch.signaling import auth
from holepunch.signaling import messages as codes
from holepunch.signaling.model import (
    MAX_CONNECTION_STATES,
    Limits,
    RoomRegistry,
    SignalingError,
)


@implementer(ISignalingClient)
class RecordingClient:
    """An ISignalingClient that records every call the registry makes."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def peer_joined(self, room_id: str, peer_id: str, metadata: Any, timestamp: float) -> None:
        self.events.append(("peer-joined", room_id, peer_id, metadata, timestamp))

    def peer_left(self, room_id: str, peer_id: str, metadata: Any, timestamp: float) -> None:
        self.events.append(("peer-left", room_id, peer_id, metadata, timestamp))

    def relayed(self, kind: str, from_peer: str, payload: Any) -> None:
        self.events.append(("relayed", kind, from_peer, payload))

    def relayed_encoded(self, message: bytes) -> None:
        self.events.append(("relayed-encoded", message))

    def disconnect(self, reason: DisconnectReason) -> None:
        self.events.append(("disconnect", reason))

    def take(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events


class RegistryTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.tokens = iter(f"token-{i}" for i in range(1000))
        self.registry = RoomRegistry(
            Limits(max_peers=5, max_peers_per_room=3, max_rooms_per_peer=2, peer_timeout=300),
            token_factory=lambda: next(self.tokens),
        )

    def now(self) -> float:
        return self.clock.seconds()

    def add(self, peer_id: str, metadata: Any = None) -> RecordingClient:
        client = RecordingClient()
        self.registry.register(client, peer_id, metadata or {}, self.now())
        return client

    def assertCode(self, code: str, f: Any, *args: Any) -> SignalingError:
        e = self.assertRaises(SignalingError, f, *args)
        self.assertEqual(e.code, code)
        return e


class InterfaceTests(RegistryTestCase):
    """The seams other front doors plug into."""

    def test_interfaces(self) -> None:
        """RoomRegistry provides IRoomRegistry and the test double ISignalingClient."""
        self.assertTrue(verifyObject(IRoomRegistry, self.registry))
        self.assertTrue(verifyObject(ISignalingClient, RecordingClient()))

    def test_error_codes_are_known(self) -> None:
        """Every code the model raises is one of the protocol's documented codes."""
        for code in [codes.PEER_ID_TAKEN, codes.ROOM_FULL, codes.NOT_IN_ROOM]:
            self.assertIn(code, codes.ERROR_CODES)


class RegistrationTests(RegistryTestCase):
    """Registering peer ids, taking them over, the peer limit."""

    def test_register_issues_token(self) -> None:
        """A registration returns the peer id and a fresh reconnect token."""
        result = self.registry.register(RecordingClient(), "alice", {"v": 1}, self.now())
        self.assertEqual(
            (result.peer_id, result.reconnect_token, result.resumed), ("alice", "token-0", False)
        )
        peer = self.registry.peer("alice")
        assert peer is not None
        self.assertEqual(peer.metadata, {"v": 1})
        self.assertIn("alice", self.registry)

    def test_same_connection_twice(self) -> None:
        """A connection that registers again gets already-registered."""
        client = self.add("alice")
        self.assertCode(codes.ALREADY_REGISTERED, self.registry.register, client, "alice", {}, 0)

    def test_taken_without_token(self) -> None:
        """A live peer id is refused to another connection without or with a wrong token."""
        self.add("alice")
        for token in [None, "token-1", "", "token-0x"]:
            self.assertCode(
                codes.PEER_ID_TAKEN,
                self.registry.register,
                RecordingClient(),
                "alice",
                {},
                self.now(),
                token,
            )

    def test_takeover_with_token(self) -> None:
        """The reconnect token moves the peer, rooms and all, to the new connection."""
        old = self.add("alice")
        self.registry.join("alice", "room", self.now())
        new = RecordingClient()
        result = self.registry.register(new, "alice", {"v": 2}, self.now(), "token-0")
        self.assertTrue(result.resumed)
        self.assertEqual(result.reconnect_token, "token-1")
        self.assertEqual(old.take(), [("disconnect", DisconnectReason.REPLACED)])
        peer = self.registry.peer("alice")
        assert peer is not None
        self.assertIs(peer.client, new)
        self.assertEqual(list(peer.rooms), ["room"])
        self.assertEqual(peer.metadata, {"v": 2})
        # The old token is spent, and the old connection's close changes nothing.
        self.assertCode(
            codes.PEER_ID_TAKEN,
            self.registry.register,
            RecordingClient(),
            "alice",
            {},
            self.now(),
            "token-0",
        )
        self.registry.unregister("alice", old, self.now())
        self.assertIn("alice", self.registry)

    def test_server_full(self) -> None:
        """Past max_peers, registration is refused with server-full."""
        for i in range(5):
            self.add(f"p{i}")
        self.assertCode(codes.SERVER_FULL, self.registry.register, RecordingClient(), "p5", {}, 0)
        self.registry.unregister("p0", self.registry.peer("p0").client, self.now())  # type: ignore[union-attr]
        self.add("p5")

    def test_unregister_leaves_rooms(self) -> None:
        """A peer whose connection closes leaves every room; the others get peer-left."""
        alice = self.add("alice", {"a": 1})
        bob = self.add("bob")
        self.registry.join("alice", "r1", self.now())
        self.registry.join("alice", "r2", self.now())
        self.registry.join("bob", "r1", self.now())
        self.registry.join("bob", "r2", self.now())
        self.clock.advance(5)
        self.registry.unregister("alice", alice, self.now())
        self.assertEqual(
            bob.take(),
            [
                ("peer-left", "r1", "alice", {"a": 1}, self.now()),
                ("peer-left", "r2", "alice", {"a": 1}, self.now()),
            ],
        )
        self.assertNotIn("alice", self.registry)
        self.assertEqual(self.registry.room_count, 2)

    def test_unregister_unknown(self) -> None:
        """Unregistering a peer that is not there is harmless."""
        self.registry.unregister("ghost", RecordingClient(), self.now())
        self.assertEqual(self.registry.peer_count, 0)


class RoomTests(RegistryTestCase):
    """Joining, leaving, listing, and the room limits."""

    def test_join_lists_others_and_notifies(self) -> None:
        """A joiner gets the others; each of them gets peer-joined with the joiner's metadata."""
        alice = self.add("alice", {"client": "a"})
        self.assertEqual(self.registry.join("alice", "room", self.now()), [])
        self.clock.advance(1)
        bob = self.add("bob", {"client": "b"})
        others = self.registry.join("bob", "room", self.now())
        self.assertEqual([(p.peer_id, p.metadata) for p in others], [("alice", {"client": "a"})])
        self.assertEqual(others[0].joined_at, self.now() - 1)
        self.assertEqual(
            alice.take(), [("peer-joined", "room", "bob", {"client": "b"}, self.now())]
        )
        self.assertEqual(bob.take(), [])

    def test_join_is_idempotent(self) -> None:
        """Joining a room again returns the same list and tells nobody."""
        alice = self.add("alice")
        self.add("bob")
        self.registry.join("alice", "room", self.now())
        self.registry.join("bob", "room", self.now())
        alice.take()
        again = self.registry.join("bob", "room", self.now())
        self.assertEqual([p.peer_id for p in again], ["alice"])
        self.assertEqual(alice.take(), [])

    def test_join_requires_registration(self) -> None:
        """Only registered peers join rooms."""
        self.assertCode(codes.NOT_REGISTERED, self.registry.join, "ghost", "room", self.now())

    def test_room_full(self) -> None:
        """The fourth peer of a three-peer room gets room-full."""
        for name in "abc":
            self.add(name)
            self.registry.join(name, "room", self.now())
        self.add("d")
        self.assertCode(codes.ROOM_FULL, self.registry.join, "d", "room", self.now())

    def test_too_many_rooms(self) -> None:
        """A peer in max_rooms_per_peer rooms gets too-many-rooms for another."""
        self.add("alice")
        self.registry.join("alice", "r1", self.now())
        self.registry.join("alice", "r2", self.now())
        self.assertCode(codes.TOO_MANY_ROOMS, self.registry.join, "alice", "r3", self.now())

    def test_leave(self) -> None:
        """Leaving tells the others; the last one out removes the room."""
        alice = self.add("alice")
        self.add("bob")
        self.registry.join("alice", "room", self.now())
        self.registry.join("bob", "room", self.now())
        alice.take()
        self.registry.leave("bob", "room", self.now())
        self.assertEqual(alice.take(), [("peer-left", "room", "bob", {}, self.now())])
        self.registry.leave("alice", "room", self.now())
        self.assertIsNone(self.registry.room("room"))
        self.assertEqual(self.registry.room_count, 0)

    def test_leave_not_in_room(self) -> None:
        """Leaving a room one is not in gets not-in-room."""
        self.add("alice")
        self.assertCode(codes.NOT_IN_ROOM, self.registry.leave, "alice", "room", self.now())

    def test_room_peers(self) -> None:
        """Members may list the others of a room; outsiders get not-in-room."""
        self.add("alice")
        self.add("bob")
        self.add("carol")
        self.registry.join("alice", "room", self.now())
        self.registry.join("bob", "room", self.now())
        listed = self.registry.room_peers("alice", "room")
        self.assertEqual([p.peer_id for p in listed], ["bob"])
        self.assertEqual(listed[0].to_json()["peerId"], "bob")
        self.assertCode(codes.NOT_IN_ROOM, self.registry.room_peers, "carol", "room")

    def test_rooms_listing(self) -> None:
        """rooms() and peers() list what exists."""
        self.add("alice")
        self.registry.join("alice", "room", self.now())
        self.assertEqual([r.room_id for r in self.registry.rooms()], ["room"])
        self.assertEqual([p.peer_id for p in self.registry.peers()], ["alice"])


class RelayTests(RegistryTestCase):
    """Offers, answers and candidates between connected peers."""

    def test_relay(self) -> None:
        """The target gets the payload with the sender's id, and the relay is counted."""
        self.add("alice")
        bob = self.add("bob")
        self.registry.join("alice", "swarm", self.now())
        self.registry.join("bob", "swarm", self.now())
        bob.take()
        self.registry.relay("alice", "bob", "offer", {"sdp": "v=0"})
        self.registry.relay("alice", "bob", "ice-candidate", None)
        self.assertEqual(
            bob.take(),
            [
                ("relayed", "offer", "alice", {"sdp": "v=0"}),
                ("relayed", "ice-candidate", "alice", None),
            ],
        )
        self.assertEqual(
            self.registry.stats()["relayed"], {"offer": 1, "answer": 0, "ice-candidate": 1}
        )

    def test_relay_needs_a_shared_room(self) -> None:
        """Peers that share no room cannot relay to each other (no-shared-room), in either
        direction; leaving the shared room ends it."""
        alice = self.add("alice")
        bob = self.add("bob")
        self.registry.join("alice", "one", self.now())
        self.registry.join("bob", "two", self.now())
        self.assertCode(codes.NO_SHARED_ROOM, self.registry.relay, "alice", "bob", "offer", {})
        self.assertCode(codes.NO_SHARED_ROOM, self.registry.relay, "bob", "alice", "answer", {})
        self.registry.join("bob", "one", self.now())
        self.registry.relay("alice", "bob", "offer", {})
        self.registry.leave("bob", "one", self.now())
        self.assertCode(
            codes.NO_SHARED_ROOM, self.registry.relay, "alice", "bob", "ice-candidate", None
        )
        self.assertEqual([e[0] for e in bob.take()], ["relayed"])  # bob joined second
        self.assertEqual(self.registry.stats()["relayed"]["offer"], 1)
        alice.take()

    def test_open_relay(self) -> None:
        """With open_relay any two registered peers relay to each other, as before rooms."""
        self.registry = RoomRegistry(Limits(open_relay=True))
        self.add("alice")
        bob = self.add("bob")
        self.registry.relay("alice", "bob", "offer", {"x": 1})
        self.assertEqual(bob.take(), [("relayed", "offer", "alice", {"x": 1})])

    def test_relay_to_unknown(self) -> None:
        """A relay to a peer that is not connected gets peer-not-found."""
        self.add("alice")
        self.assertCode(codes.PEER_NOT_FOUND, self.registry.relay, "alice", "bob", "offer", {})

    def test_relay_from_unregistered(self) -> None:
        """Only registered peers relay."""
        self.add("bob")
        self.assertCode(codes.NOT_REGISTERED, self.registry.relay, "ghost", "bob", "offer", {})

    def test_connection_state(self) -> None:
        """Reported connection states are kept per remote peer, bounded in number."""
        self.add("alice")
        self.registry.set_connection_state("alice", "bob", "connected", "udp-hole-punch", 5.0)
        peer = self.registry.peer("alice")
        assert peer is not None
        state = peer.connection_states["bob"]
        self.assertEqual(
            (state.state, state.method, state.updated_at), ("connected", "udp-hole-punch", 5.0)
        )
        for i in range(MAX_CONNECTION_STATES + 10):
            self.registry.set_connection_state("alice", f"p{i}", "new", None, 6.0)
        self.assertEqual(len(peer.connection_states), MAX_CONNECTION_STATES)
        self.assertNotIn("bob", peer.connection_states)


class EvictionTests(RegistryTestCase):
    """Idle peers are evicted by sweep(now)."""

    def test_sweep_evicts_idle(self) -> None:
        """A peer silent for peer_timeout is evicted: rooms get peer-left, it is told to go."""
        alice = self.add("alice")
        self.clock.advance(200)
        bob = self.add("bob")
        self.registry.join("bob", "room", self.now())
        self.registry.join("alice", "room", self.now())
        bob.take()
        self.clock.advance(99)
        self.assertEqual(self.registry.sweep(self.now()), [])
        self.clock.advance(1)
        # Joining is not a sign of life on its own: touch() is (the front door calls it).
        self.assertEqual(self.registry.sweep(self.now()), ["alice"])
        self.assertEqual(alice.take(), [("disconnect", DisconnectReason.IDLE_TIMEOUT)])
        self.assertEqual(bob.take(), [("peer-left", "room", "alice", {}, self.now())])
        self.assertEqual(self.registry.stats()["evicted"], 1)
        self.assertNotIn("alice", self.registry)

    def test_touch_postpones(self) -> None:
        """touch() keeps a peer alive for another peer_timeout."""
        alice = self.add("alice")
        self.clock.advance(250)
        self.registry.touch("alice", self.now())
        self.clock.advance(250)
        self.assertEqual(self.registry.sweep(self.now()), [])
        self.clock.advance(50)
        self.assertEqual(self.registry.sweep(self.now()), ["alice"])
        self.assertEqual(alice.take(), [("disconnect", DisconnectReason.IDLE_TIMEOUT)])

    def test_touch_unknown(self) -> None:
        """Touching an unknown peer is harmless."""
        self.registry.touch("ghost", self.now())

    def test_stats(self) -> None:
        """stats() counts peers and rooms."""
        self.add("alice")
        self.registry.join("alice", "room", self.now())
        stats = self.registry.stats()
        self.assertEqual((stats["peers"], stats["rooms"]), (1, 1))


class TokenTests(SynchronousTestCase):
    """HMAC-signed tokens: peer id + expiry."""

    SECRET = "s3cret"

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def test_round_trip(self) -> None:
        """A minted token verifies to its peer id until it expires."""
        token = auth.mint_token(self.SECRET, "alice", 3600, self.clock.seconds())
        self.assertEqual(auth.verify_token(self.SECRET, token, self.clock.seconds()), "alice")
        self.clock.advance(3599)
        self.assertEqual(auth.verify_token(self.SECRET, token, self.clock.seconds()), "alice")
        self.clock.advance(1)
        e = self.assertRaises(
            auth.InvalidToken, auth.verify_token, self.SECRET, token, self.clock.seconds()
        )
        self.assertEqual(e.reason, "token expired")

    def test_url_safe(self) -> None:
        """Tokens need no escaping in a query string."""
        token = auth.mint_token(b"k", "peer/with+odd?chars", 60, 0)
        self.assertRegex(token, r"^[A-Za-z0-9_.\-]+$")

    def test_wrong_secret(self) -> None:
        """A token signed with another secret is refused."""
        token = auth.mint_token("other", "alice", 60, self.clock.seconds())
        e = self.assertRaises(
            auth.InvalidToken, auth.verify_token, self.SECRET, token, self.clock.seconds()
        )
        self.assertEqual(e.reason, "bad token signature")

    def test_tampered(self) -> None:
        """Changing the peer id or the expiry breaks the signature."""
        token = auth.mint_token(self.SECRET, "alice", 60, self.clock.seconds())
        version, peer, expiry, mac = token.split(".")
        other_peer = auth.mint_token(self.SECRET, "mallory", 60, 0).split(".")[1]
        for forged in [
            f"{version}.{other_peer}.{expiry}.{mac}",
            f"{version}.{peer}.{int(expiry) + 1000}.{mac}",
        ]:
            e = self.assertRaises(
                auth.InvalidToken, auth.verify_token, self.SECRET, forged, self.clock.seconds()
            )
            self.assertEqual(e.reason, "bad token signature")

    def test_malformed(self) -> None:
        """Garbage is refused as malformed, never with an exception of another kind."""
        for garbage in ["", "abc", "hp1.a.b", "hp2.a.1.b", "hp1.a.1.!!!", "hp1..1."]:
            e = self.assertRaises(auth.InvalidToken, auth.verify_token, self.SECRET, garbage, 0)
            self.assertIn(e.reason, ("malformed token", "bad token signature"))

    def test_bad_arguments(self) -> None:
        """Empty secrets, empty peer ids and non-positive lifetimes are programming errors."""
        self.assertRaises(ValueError, auth.mint_token, "", "alice", 60, 0)
        self.assertRaises(ValueError, auth.mint_token, "k", "", 60, 0)
        self.assertRaises(ValueError, auth.mint_token, "k", "alice", 0, 0)

    def test_token_from_request(self) -> None:
        """The handshake token comes from ?token= first, else Authorization: Bearer."""
        self.assertEqual(
            auth.token_from_request({"token": ["q"]}, {"authorization": "Bearer h"}), "q"
        )
        self.assertEqual(auth.token_from_request({}, {"authorization": "bearer  h "}), "h")
        self.assertIsNone(auth.token_from_request({}, {"authorization": "Basic xyz"}))
        self.assertIsNone(auth.token_from_request({}, {}))

    @given(st.text(min_size=1, max_size=100), st.integers(min_value=1, max_value=10**8))
    def test_any_peer_id_round_trips(self, peer_id: str, ttl: int) -> None:
        """Any non-empty peer id survives minting and verification."""
        token = auth.mint_token(self.SECRET, peer_id, ttl, 1000.0)
        self.assertEqual(auth.verify_token(self.SECRET, token, 1000.0), peer_id)

    @given(st.data())
    def test_any_change_is_refused(self, data: st.DataObject) -> None:
        """Changing any one character of a token makes it invalid."""
        token = auth.mint_token(self.SECRET, "alice", 60, 1000.0)
        i = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
        c = data.draw(st.sampled_from("AZaz09-_.x"))
        forged = token[:i] + c + token[i + 1 :]
        if forged != token:
            self.assertRaises(auth.InvalidToken, auth.verify_token, self.SECRET, forged, 1000.0)

"""Tests for holepunch.signaling.client: SignalingClient against the real server protocol,
connected in memory, on a fake clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from holepunch.signaling import auth
from holepunch.signaling import messages as m
from holepunch.signaling.client import (
    ClientStopped,
    SessionReplaced,
    SignalingAuthError,
    SignalingClient,
    SignalingRequestError,
    endpoint_for_url,
)
from holepunch.signaling.model import RoomRegistry
from holepunch.signaling.server import SignalingConfig, SignalingServerFactory
from tests.signaling_helpers import MemoryEndpoint

T0 = 1_700_000_000.0
URL = "ws://127.0.0.1:8080/"


class ClientTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.server(SignalingConfig(peer_timeout=300))

    def server(self, config: SignalingConfig) -> None:
        self.config = config
        self.registry = RoomRegistry(config.limits())
        self.factory = SignalingServerFactory(config, self.registry, self.clock)
        self.endpoint = MemoryEndpoint(self.factory)

    def client(self, peer_id: str, start: bool = True, **kw: Any) -> SignalingClient:
        kw.setdefault("endpoint", self.endpoint)
        client = SignalingClient(
            URL,
            peer_id,
            kw.pop("metadata", {"name": peer_id}),
            reactor=self.clock,
            retry_initial=kw.pop("retry_initial", 1.0),
            retry_factor=kw.pop("retry_factor", 1.0),
            jitter=lambda: 0.0,
            **kw,
        )
        if start:
            client.startService()
            self.addCleanup(self.stop, client)
            self.flush()
        return client

    def stop(self, client: SignalingClient) -> None:
        if client.running:
            d = client.stopService()
            self.flush()
            self.successResultOf(d)

    def flush(self) -> None:
        self.endpoint.flush()
        self.clock.advance(0)

    def events(self, client: SignalingClient, *names: str) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        for name in names:
            client.on(name, seen.append)
        return seen


class RequestTests(ClientTestCase):
    """Requests and their replies, matched by id."""

    def test_registers_on_connect(self) -> None:
        """The client registers its peer id and metadata as soon as it connects."""
        alice = self.client("alice")
        registration = self.successResultOf(alice.register())
        self.assertEqual((registration["type"], registration["peerId"]), ("registered", "alice"))
        self.assertTrue(alice.connected and alice.registered)
        self.assertEqual(alice.reconnect_token, registration["reconnectToken"])
        peer = self.registry.peer("alice")
        assert peer is not None
        self.assertEqual(peer.metadata, {"name": "alice"})

    def test_rooms(self) -> None:
        """join_room gives the other peers, get_room_peers lists them, leave_room leaves."""
        alice = self.client("alice")
        bob = self.client("bob")
        d = alice.join_room("t")
        self.flush()
        self.assertEqual(self.successResultOf(d), [])
        d = bob.join_room("t")
        self.flush()
        self.assertEqual([p["peerId"] for p in self.successResultOf(d)], ["alice"])
        d = alice.get_room_peers("t")
        self.flush()
        self.assertEqual([p["metadata"] for p in self.successResultOf(d)], [{"name": "bob"}])
        self.assertEqual(list(alice.rooms), ["t"])
        d = alice.leave_room("t")
        self.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(alice.rooms, {})

    def test_relays_and_events(self) -> None:
        """Offers, answers and candidates arrive as events carrying the sender's id."""
        alice = self.client("alice")
        bob = self.client("bob")
        for client in (alice, bob):  # the server relays only within rooms
            client.join_room("swarm")
            self.flush()
        got = self.events(bob, "offer", "answer", "ice-candidate")
        for d in [
            alice.send_offer("bob", {"sdp": "o"}),
            alice.send_answer("bob", {"sdp": "a"}),
            alice.send_ice_candidate("bob", {"candidate": "c"}),
            alice.send_ice_candidate("bob", None),
        ]:
            self.flush()
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(
            got,
            [
                {"type": "offer", "from": "alice", "offer": {"sdp": "o"}},
                {"type": "answer", "from": "alice", "answer": {"sdp": "a"}},
                {"type": "ice-candidate", "from": "alice", "candidate": {"candidate": "c"}},
                {"type": "ice-candidate", "from": "alice", "candidate": None},
            ],
        )

    def test_error_reply(self) -> None:
        """A server error fails the request with its code."""
        alice = self.client("alice")
        d = alice.send_offer("nobody", {})
        self.flush()
        e = self.failureResultOf(d, SignalingRequestError).value
        self.assertEqual((e.code, e.request_type), (m.PEER_NOT_FOUND, "offer"))

    def test_connection_state_and_ping(self) -> None:
        """send_connection_state is acknowledged; ping measures the round trip."""
        alice = self.client("alice")
        d = alice.send_connection_state("bob", "connected", "udp-hole-punch")
        self.flush()
        self.successResultOf(d)
        peer = self.registry.peer("alice")
        assert peer is not None
        self.assertEqual(peer.connection_states["bob"].state, "connected")
        d2 = alice.ping()
        self.flush()
        self.assertEqual(self.successResultOf(d2), 0.0)

    def test_timeout(self) -> None:
        """A request with no answer fails with TimeoutError after request_timeout."""
        self.endpoint.refuse = True
        alice = self.client("alice", request_timeout=5)
        d = alice.join_room("t")
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, defer.TimeoutError)

    def test_cancel(self) -> None:
        """A cancelled request fails with CancelledError and is never sent."""
        self.endpoint.refuse = True
        alice = self.client("alice")
        d = alice.send_offer("bob", {})
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.endpoint.refuse = False
        self.clock.advance(10)
        self.flush()
        self.assertTrue(alice.registered)
        self.assertEqual(dict(self.factory.stats.messages), {"register": 1})

    def test_waits_for_connection(self) -> None:
        """A request made while disconnected is sent once the client has registered."""
        self.endpoint.refuse = True
        alice = self.client("alice")
        d = alice.register()
        self.assertNoResult(d)
        self.endpoint.refuse = False
        self.clock.advance(1.0)
        self.flush()
        self.assertEqual(self.successResultOf(d)["peerId"], "alice")

    def test_unsubscribe(self) -> None:
        """Cancelling a subscription stops its events; a failing handler is only logged."""
        alice = self.client("alice")
        seen: list[dict[str, Any]] = []
        subscription = alice.on("pong", seen.append)

        def broken(message: dict[str, Any]) -> None:
            raise ValueError("handler bug")

        alice.on("pong", broken)
        alice.ping()
        self.flush()
        subscription.cancel()
        subscription.cancel()
        alice.ping()
        self.flush()
        self.assertEqual(len(seen), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)

    def test_every_message_event(self) -> None:
        """The message event sees every server message, welcome first."""
        alice = self.client("alice", start=False)
        seen = self.events(alice, "message", "connected")
        alice.startService()
        self.addCleanup(self.stop, alice)
        self.flush()
        self.assertEqual([s.get("type") for s in seen], [None, "welcome", "registered"])


class ReconnectTests(ClientTestCase):
    """Reconnection, re-registration and rejoining."""

    def test_reconnect_rejoins(self) -> None:
        """After a lost connection the client reconnects with backoff, re-registers, rejoins."""
        alice = self.client("alice")
        bob = self.client("bob")
        for client in (alice, bob):
            client.join_room("t")
            self.flush()
        seen = self.events(bob, "peer-left", "peer-joined")
        states = self.events(alice, "disconnected", "connected")
        self.endpoint.drop(0)
        self.assertFalse(alice.connected)
        self.assertEqual(states[0]["code"], 1006)
        self.clock.advance(0.9)
        self.flush()
        self.assertFalse(alice.connected)
        self.clock.advance(0.1)
        self.flush()
        self.assertTrue(alice.registered)
        self.assertEqual(
            [(e["type"], e["peerId"]) for e in seen],
            [("peer-left", "alice"), ("peer-joined", "alice")],
        )
        room = self.registry.room("t")
        assert room is not None
        self.assertEqual(sorted(room.members), ["alice", "bob"])

    def test_backoff_grows(self) -> None:
        """Failed attempts are retried after growing delays."""
        self.endpoint.refuse = True
        self.client("alice", retry_factor=2.0)
        attempts = []
        original = self.endpoint.connect

        def counting(factory: Any) -> Any:
            attempts.append(self.clock.seconds() - T0)
            return original(factory)

        self.endpoint.connect = counting  # type: ignore[method-assign]
        self.clock.pump([0.5] * 30)
        self.assertEqual(attempts[:3], [2.0, 6.0, 14.0])

    def test_token_takes_over_half_dead_connection(self) -> None:
        """The token takes the id back from a half-dead connection; the room sees nothing."""
        alice = self.client("alice")
        bob = self.client("bob")
        for client in (alice, bob):
            client.join_room("t")
            self.flush()
        seen = self.events(bob, "peer-left", "peer-joined")
        token = alice.reconnect_token
        # The client's side of the connection dies; the server's does not notice.
        orphan = self.endpoint.pumps.pop(0)
        orphan.client.connectionLost(Failure(ConnectionLost("network down")))
        self.addCleanup(orphan.server.connectionLost, Failure(ConnectionLost("cleanup")))
        self.clock.advance(1.0)
        self.flush()
        registration = self.successResultOf(alice.register())
        self.assertTrue(registration["resumed"])
        self.assertNotEqual(registration["reconnectToken"], token)
        self.assertEqual(seen, [])
        peer = self.registry.peer("alice")
        assert peer is not None
        self.assertEqual(list(peer.rooms), ["t"])
        self.assertEqual(orphan.server.localCloseCode, m.CLOSE_SESSION_REPLACED)

    def test_replaced_client_stops(self) -> None:
        """A client whose id is taken over (4001) stops for good and fails its requests."""
        alice = self.client("alice")
        thief = self.client("alice", start=False)
        thief.reconnect_token = alice.reconnect_token
        thief.startService()
        self.addCleanup(self.stop, thief)
        self.flush()
        self.assertTrue(thief.registered)
        self.assertFalse(alice.running)
        d = alice.ping()
        self.failureResultOf(d, SessionReplaced)
        connections = len(self.endpoint.pumps)
        self.clock.advance(100)
        self.assertEqual(len(self.endpoint.pumps), connections)

    def test_registration_refused_retries(self) -> None:
        """A taken peer id fails register(); the client retries later on a new connection."""
        self.client("alice")
        second = self.client("alice", start=False)
        d = second.register()
        second.startService()
        self.addCleanup(self.stop, second)
        self.flush()
        self.assertEqual(self.failureResultOf(d, SignalingRequestError).value.code, m.PEER_ID_TAKEN)
        self.assertFalse(second.connected)
        self.clock.advance(1.0)
        self.flush()
        self.assertEqual(len(self.endpoint.pumps), 3)

    def test_restarted_server_refusing_token_gets_fresh_registration(self) -> None:
        """After a server restart whose new registry has the id (an impostor got there
        first), the token is refused: the client drops it, retries with backoff,
        registers afresh once the id is free, rejoins its room, and says so once (two
        connection attempts, six seconds after the loss on the fake clock)."""
        alice = self.client("alice", retry_factor=2.0)
        alice.join_room("t")
        self.flush()
        events = self.events(alice, "registration-lost", "reconnecting", "reconnected")
        old_token = alice.reconnect_token
        # The server restarts: a new registry behind the same address.
        self.endpoint.drop(0)
        endpoint = self.endpoint
        self.server(SignalingConfig(peer_timeout=300))
        endpoint.server_factory = self.factory
        self.endpoint = endpoint
        impostor = self.client("alice")
        self.assertTrue(impostor.registered)
        self.assertEqual(events[0]["rooms"], ["t"])
        self.clock.advance(2.0)  # first retry: 1.0 * 2 ** 1
        self.flush()
        self.assertFalse(alice.registered)
        self.assertIsNone(alice.reconnect_token)  # refused (peer-id-taken): dropped
        self.stop(impostor)
        # The refused registration closed that connection, so the backoff starts over:
        # the next retry comes 2 s later (advancing 4 s covers it).
        self.clock.advance(4.0)
        self.flush()
        self.assertTrue(alice.registered)
        self.assertNotEqual(alice.reconnect_token, old_token)
        self.assertEqual(
            [(e.get("attempt"), e.get("delay")) for e in events[1:3]], [(1, 2.0), (1, 2.0)]
        )
        [back] = [e for e in events if "downtime_ms" in e]
        self.assertEqual(
            back,
            {
                "attempt": 2,
                "downtime_ms": 6000.0,
                "resumed": False,
                "rooms": ["t"],
                "failedRooms": [],
            },
        )
        room = self.registry.room("t")
        assert room is not None
        self.assertEqual(list(room.members), ["alice"])
        self.assertEqual((alice.disconnects, alice.reconnects), (1, 1))

    def test_keepalive(self) -> None:
        """The client pings every peerTimeout/3, so the server never evicts it."""
        alice = self.client("alice")
        for _ in range(10):
            self.clock.advance(100)
            self.flush()
            self.factory.sweep(self.clock.seconds())
        self.assertTrue(alice.registered)
        peer = self.registry.peer("alice")
        assert peer is not None
        self.assertEqual(peer.last_seen, self.clock.seconds())

    def test_stop(self) -> None:
        """Stopping closes with 1000, fails what is outstanding, and refuses new requests."""
        self.client("bob")
        alice = self.client("alice")
        bob_events = self.events(self.client("carol"), "peer-left")
        pending = alice.join_room("t")
        d = alice.stopService()
        self.flush()
        self.successResultOf(d)
        self.failureResultOf(pending, ClientStopped)
        self.failureResultOf(alice.ping(), ClientStopped)
        self.assertNotIn("alice", self.registry)
        self.assertEqual(bob_events, [])
        self.assertEqual(self.endpoint.servers[1].remoteCloseCode, 1000)


class AuthTests(ClientTestCase):
    """The client and the server's handshake check."""

    def setUp(self) -> None:
        super().setUp()
        self.server(SignalingConfig(auth_secret="s3cret"))

    def test_token(self) -> None:
        """A client with a valid token registers."""
        token = auth.mint_token("s3cret", "alice", 60, self.clock.seconds())
        alice = self.client("alice", token=token)
        self.assertEqual(self.successResultOf(alice.register())["peerId"], "alice")

    def test_refused(self) -> None:
        """A refused handshake (401) stops the client and fails register() with the status."""
        alice = self.client("alice", start=False)
        d = alice.register()
        alice.startService()
        self.flush()
        e = self.failureResultOf(d, SignalingAuthError).value
        self.assertEqual(e.status, 401)
        self.assertIn("token missing", e.reason)
        self.assertFalse(alice.running)


class EndpointTests(SynchronousTestCase):
    """URLs to endpoints."""

    def test_ws(self) -> None:
        """ws:// gives a host-name endpoint on port 80 by default."""
        self.assertIsInstance(endpoint_for_url(Clock(), "ws://example.com/"), HostnameEndpoint)

    def test_wss(self) -> None:
        """wss:// wraps the connection in TLS (checked against the host name)."""
        endpoint = endpoint_for_url(Clock(), "wss://example.com:8443/")
        self.assertNotIsInstance(endpoint, HostnameEndpoint)
        self.assertEqual(endpoint._wrappedEndpoint._port, 8443)  # type: ignore[attr-defined]

    def test_bad_url(self) -> None:
        """Anything but ws:// or wss:// is refused."""
        for url in ["http://example.com/", "ws:///nohost", "example.com"]:
            self.assertRaises(ValueError, endpoint_for_url, Clock(), url)


class TokenCommandTests(SynchronousTestCase):
    """``holepunch token``."""

    def run_command(self, argv: list[str], environ: dict[str, str]) -> tuple[int, str, str]:
        import argparse
        import io

        from holepunch.cli import token as token_cli

        parser = argparse.ArgumentParser()
        token_cli.add_arguments(parser)
        out, err = io.StringIO(), io.StringIO()
        status = token_cli.run(parser.parse_args(argv), lambda: T0, environ, out, err)
        return status, out.getvalue(), err.getvalue()

    def test_mints_verifiable_token(self) -> None:
        """The printed token verifies with the secret, for the peer id, until the ttl ends."""
        status, out, _ = self.run_command(
            ["--peer-id", "alice", "--ttl", "60", "--secret", "k"], {}
        )
        self.assertEqual(status, 0)
        token = out.strip()
        self.assertEqual(auth.verify_token("k", token, T0 + 59), "alice")
        self.assertRaises(auth.InvalidToken, auth.verify_token, "k", token, T0 + 60)

    def test_secret_from_environment(self) -> None:
        """Without --secret, P2P_AUTH_SECRET is used; JSON output names the expiry."""
        import json

        status, out, _ = self.run_command(
            ["--peer-id", "bob", "--json"], {"P2P_AUTH_SECRET": "env"}
        )
        self.assertEqual(status, 0)
        printed = json.loads(out)
        self.assertEqual((printed["peerId"], printed["expires"]), ("bob", int(T0) + 3600))
        self.assertEqual(auth.verify_token("env", printed["token"], T0), "bob")

    def test_no_secret(self) -> None:
        """No secret anywhere is a usage error (status 2) with a message."""
        status, out, err = self.run_command(["--peer-id", "bob"], {})
        self.assertEqual((status, out), (2, ""))
        self.assertIn("P2P_AUTH_SECRET", err)

    def test_bad_ttl(self) -> None:
        """A non-positive ttl is refused."""
        status, _, err = self.run_command(["--peer-id", "bob", "--ttl", "0", "--secret", "k"], {})
        self.assertEqual(status, 2)
        self.assertIn("ttl", err)

    def test_registered_subcommand(self) -> None:
        """`holepunch token` is a subcommand of the holepunch command."""
        from holepunch.cli import build_parser

        args = build_parser().parse_args(["token", "--peer-id", "x", "--secret", "s"])
        self.assertEqual(args.command_module.__name__, "holepunch.cli.token")

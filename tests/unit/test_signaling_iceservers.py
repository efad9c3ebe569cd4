"""Tests for holepunch.signaling.iceservers: what ``welcome`` advertises, and how a client
reads it."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from holepunch.signaling.iceservers import (
    IceServerHints,
    host_of,
    parse_ice_servers,
)
from holepunch.turn.config import TurnServer, rest_api_credentials


class HintsTests(SynchronousTestCase):
    """The server side."""

    def test_stun_on_the_host_the_client_used(self) -> None:
        """Both STUN ports, on the host of the client's Host header (port stripped)."""
        hints = IceServerHints(stun_ports=(3478, 3479))
        self.assertEqual(
            hints.for_client("signal.example.org:8080", "c1", 0.0),
            [{"urls": ["stun:signal.example.org:3478", "stun:signal.example.org:3479"]}],
        )
        self.assertEqual(
            hints.for_client("[2001:db8::1]:8080", "c1", 0.0),
            [{"urls": ["stun:[2001:db8::1]:3478", "stun:[2001:db8::1]:3479"]}],
        )
        self.assertEqual(hints.for_client(None, "c1", 0.0), [])
        fixed = IceServerHints(stun_ports=(3478,), host="203.0.113.10")
        self.assertEqual(
            fixed.for_client("10.0.0.1", "c1", 0.0), [{"urls": ["stun:203.0.113.10:3478"]}]
        )

    def test_turn_rest_credentials_minted_per_client(self) -> None:
        """With a shared secret the TURN entry carries coturn REST-API credentials."""
        turn = TurnServer("turn.example.org", 3478)
        hints = IceServerHints(turn_servers=(turn,), turn_secret="s3cret", turn_ttl=600)
        [entry] = hints.for_client("x", "peer-a", 1000.0)
        username, credential = rest_api_credentials("s3cret", "peer-a", 600, 1000.0)
        self.assertEqual(entry["urls"], ["turn:turn.example.org:3478?transport=udp"])
        self.assertEqual((entry["username"], entry["credential"]), (username, credential))
        self.assertTrue(entry["username"].startswith("1600:"))

    def test_host_of(self) -> None:
        self.assertEqual(host_of("example.org"), "example.org")
        self.assertEqual(host_of("example.org:80"), "example.org")
        self.assertEqual(host_of("[::1]:80"), "::1")
        self.assertIsNone(host_of(""))


class ParseTests(SynchronousTestCase):
    """The client side: what a server says is validated, never trusted blindly."""

    def test_round_trip(self) -> None:
        """What the hints produce, the parser reads back."""
        hints = IceServerHints(
            stun_ports=(3478, 3479),
            turn_servers=(TurnServer("turn.example.org", 3478, "tcp"),),
            turn_secret="k",
        )
        parsed = parse_ice_servers(hints.for_client("203.0.113.10:8080", "u", 0.0))
        self.assertEqual(parsed.stun_servers, [("203.0.113.10", 3478), ("203.0.113.10", 3479)])
        [turn] = parsed.turn_servers
        self.assertEqual((turn.host, turn.port, turn.transport), ("turn.example.org", 3478, "tcp"))
        self.assertTrue(turn.username and turn.password)

    def test_garbage_is_skipped(self) -> None:
        """Malformed entries and URLs are skipped; good ones beside them are kept."""
        parsed = parse_ice_servers(
            [
                "stun:x",
                {"urls": 7},
                {"urls": ["stun:bad:port:here", "http://x", "stun:good.example:3478", 5]},
                {"urls": "turn:t.example:99999"},
            ]
        )
        self.assertEqual(parsed.stun_servers, [("good.example", 3478)])
        self.assertEqual(parsed.turn_servers, [])
        self.assertFalse(parse_ice_servers("nope"))
        self.assertFalse(parse_ice_servers(None))

    def test_bounded(self) -> None:
        """A server cannot make a client try a thousand servers."""
        many = [{"urls": [f"stun:192.0.2.{i % 250}:{1000 + i}" for i in range(100)]}] * 100
        parsed = parse_ice_servers(many)
        self.assertLessEqual(len(parsed.stun_servers), 8)

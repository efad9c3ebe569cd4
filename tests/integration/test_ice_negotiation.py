"""ICE negotiation through a real signaling server on loopback."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from holepunch.ice.config import IceConfig
from holepunch.ice.negotiation import NegotiationError, Negotiator, parse_description
from holepunch.quic.identity import PeerIdentity
from holepunch.stun.server import Reply, StunResponder
from holepunch.stun.wire import Address
from holepunch.testing.loopback import (
    registered_client,
    start_signaling_server,
    start_stun_server,
)


class NegotiationTestBase(TestCase):
    """A signaling server on 127.0.0.1 and helpers to make registered peers."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.service, self.url = yield defer.ensureDeferred(start_signaling_server(self, reactor))

    @defer.inlineCallbacks
    def peer(self, peer_id: str, **kw: Any) -> Any:
        client = yield defer.ensureDeferred(registered_client(self, reactor, self.url, peer_id))
        negotiator = Negotiator(reactor, client, IceConfig.on("127.0.0.1"), **kw)
        self.addCleanup(negotiator.stop)
        return client, negotiator


class NegotiationTests(NegotiationTestBase):
    """Offer, answer and trickle over our signaling messages."""

    @defer.inlineCallbacks
    def test_connect_and_accept(self) -> Any:
        """An offerer and an accepting peer end up with a working datagram path."""
        _, alice = yield self.peer("alice")
        _, bob = yield self.peer("bob")
        accepted = bob.accept()
        ca = yield alice.connect("bob")
        cb = yield accepted
        self.addCleanup(ca.close)
        self.addCleanup(cb.close)
        self.assertEqual(ca.method, "direct")
        self.assertEqual(ca.remote, cb.local)
        got: defer.Deferred[bytes] = defer.Deferred()
        ca.on_datagram(lambda d: got.callback(d) if not got.called else None)
        cb.send(b"hi alice")
        data = yield got
        self.assertEqual(data, b"hi alice")

    @defer.inlineCallbacks
    def test_fingerprints_are_signaled(self) -> Any:
        """With identities, the offer and the answer carry each side's certificate
        fingerprint (SDP's a=fingerprint), which the streams will bind to."""
        alice_id, bob_id = PeerIdentity.generate(), PeerIdentity.generate()
        alice_client, alice = yield self.peer("alice", identity=alice_id)
        bob_client, bob = yield self.peer("bob", identity=bob_id)
        seen: dict[str, Any] = {}
        bob_client.on("offer", lambda m: seen.setdefault("offer", m.get("offer")))
        alice_client.on("answer", lambda m: seen.setdefault("answer", m.get("answer")))
        accepted = bob.accept()
        ca = yield alice.connect("bob")
        cb = yield accepted
        self.addCleanup(ca.close)
        self.addCleanup(cb.close)
        self.assertEqual(parse_description(seen["offer"]).fingerprint, alice_id.fingerprint)
        self.assertEqual(parse_description(seen["answer"]).fingerprint, bob_id.fingerprint)

    @defer.inlineCallbacks
    def test_unknown_peer_fails_at_signaling(self) -> Any:
        """Offering to a peer that is not connected fails at the signaling stage, without retries."""
        _, alice = yield self.peer("alice", max_retries=3)
        e = yield self.assertFailure(alice.connect("nobody"), NegotiationError)
        self.assertEqual(e.stage, "signaling")
        self.assertIn("peer-not-found", str(e))
        self.assertEqual(alice.sessions, {})

    @defer.inlineCallbacks
    def test_parallel_sessions_kept_apart(self) -> Any:
        """Two attempts between the same peers at once get two separate connections."""
        _, alice = yield self.peer("alice")
        _, bob = yield self.peer("bob")
        accepts = [bob.accept("alice"), bob.accept("alice")]
        first, second = yield defer.gatherResults([alice.connect("bob"), alice.connect("bob")])
        others = yield defer.gatherResults(accepts)
        for c in [first, second, *others]:
            self.addCleanup(c.close)
        self.assertNotEqual(first.local, second.local)
        self.assertEqual({first.remote, second.remote}, {o.local for o in others})

    @defer.inlineCallbacks
    def test_garbage_negotiation_ignored(self) -> Any:
        """Malformed offers and candidates from a peer are ignored and counted; a good offer still works."""
        mallory, _ = yield self.peer("mallory")
        _, bob = yield self.peer("bob")
        accepted = bob.accept()
        for payload in [
            {"sdp": "v=0", "type": "offer"},
            {"ice": {"ufrag": "x"}, "session": "s"},
            {},
        ]:
            yield mallory.send_offer("bob", payload)
        yield mallory.send_ice_candidate("bob", {"candidate": "candidate:bogus", "session": "nope"})
        yield mallory.ping()
        self.assertGreaterEqual(bob.ignored, 4)
        self.assertNoResult(accepted)
        _, alice = yield self.peer("alice")
        connection = yield alice.connect("bob")
        self.addCleanup(connection.close)
        other = yield accepted
        self.addCleanup(other.close)

    @defer.inlineCallbacks
    def test_cancel_frees_the_agent(self) -> Any:
        """Cancelling a connect while the peer never answers closes the session's socket."""
        _, alice = yield self.peer("alice")
        silent, _ = yield self.peer("silent")  # registered, but nobody accepts offers
        d = alice.connect("silent")
        yield silent.ping()
        self.assertEqual(len(alice.sessions), 1)
        session = next(iter(alice.sessions.values()))
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        self.assertFalse(session.agent.listening)
        self.assertEqual(alice.sessions, {})


class TcpOnlyResponder(StunResponder):
    """A STUN server that answers over TCP only: to its clients UDP looks blocked (as
    behind a firewall that drops UDP), while STUN over TCP works."""

    def answer_plain_binding(
        self, data: bytes, host: str, port: int, local: Address, now: float, transport: str = "udp"
    ) -> bytes | None:
        if transport == "udp":
            return b""  # nothing sent
        return super().answer_plain_binding(data, host, port, local, now, transport)

    def handle(
        self, data: bytes, source: Address, local: Address, now: float, transport: str = "udp"
    ) -> Reply | None:
        if transport == "udp":
            return None
        return super().handle(data, source, local, now, transport)


class UdpPresumedBlockedTests(NegotiationTestBase):
    """A STUN server that answers over TCP and not over UDP: the descriptions say UDP is
    blocked without waiting for the Bindings to give up (TcpConfig.presume_udp_blocked)."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        stun = start_stun_server(
            self, reactor, responder=TcpOnlyResponder(Address("127.0.0.1", 0), None)
        )
        self.stun = ("127.0.0.1", stun.responder.primary.port)

    @defer.inlineCallbacks
    def negotiator(self, peer_id: str) -> Any:
        client = yield defer.ensureDeferred(registered_client(self, reactor, self.url, peer_id))
        config = IceConfig.on("127.0.0.1", stun_servers=[self.stun])
        negotiator = Negotiator(reactor, client, config)
        self.addCleanup(negotiator.stop)
        return client, negotiator

    @defer.inlineCallbacks
    def test_descriptions_say_udp_blocked_while_bindings_go_on(self) -> Any:
        """The offer and the answer carry udpBlocked while their sender's Bindings to the
        server are still being sent (they give up about 1.4 s after they start)."""
        alice_client, alice = yield self.negotiator("alice")
        bob_client, bob = yield self.negotiator("bob")
        seen: dict[str, Any] = {}

        def record(kind: str, sender: Negotiator, message: Any) -> None:
            [session] = sender.sessions.values()
            seen[kind] = (message.get(kind), session.agent.core.stun_complete)

        bob_client.on("offer", lambda m: record("offer", alice, m))
        alice_client.on("answer", lambda m: record("answer", bob, m))
        accepted = bob.accept()
        ca = yield alice.connect("bob")
        cb = yield accepted
        self.addCleanup(ca.close)
        self.addCleanup(cb.close)
        for kind in ("offer", "answer"):
            description, bindings_done = seen[kind]
            self.assertTrue(parse_description(description).udp_blocked, kind)
            self.assertFalse(bindings_done, f"the {kind} waited for the Bindings to give up")


class DescriptionTests(TestCase):
    """Parsing offer/answer payloads."""

    def test_browser_offer_is_not_native(self) -> None:
        """A browser's SDP offer is refused as not native, with a reason."""
        e = self.assertRaises(NegotiationError, parse_description, {"type": "offer", "sdp": "v=0"})
        self.assertIn("not a native ICE description", str(e))

    def test_fingerprint_validated(self) -> None:
        """The peer's certificate fingerprint is read back normalised; a malformed one
        refuses the whole description, naming the problem."""
        identity = PeerIdentity.generate()
        payload = {
            "session": "s",
            "ice": {"ufrag": "abcd", "pwd": "x" * 22, "candidates": []},
            "fingerprint": identity.fingerprint.lower(),
        }
        self.assertEqual(parse_description(payload).fingerprint, identity.fingerprint)
        for bad in ["sha-1 AB:CD", "sha-256 ZZ:00", "sha-256 AB", 7]:
            e = self.assertRaises(
                NegotiationError, parse_description, {**payload, "fingerprint": bad}
            )
            self.assertIn("bad fingerprint", str(e))
        del payload["fingerprint"]
        self.assertIsNone(parse_description(payload).fingerprint)

    def test_short_credentials_refused(self) -> None:
        """ufrag under 4 or pwd under 22 characters is refused (RFC 8445 5.3)."""
        payload = {"session": "s", "ice": {"ufrag": "abc", "pwd": "x" * 22, "candidates": []}}
        self.assertRaises(NegotiationError, parse_description, payload)

    def test_bad_candidates_skipped(self) -> None:
        """Unparseable candidate lines are skipped, good ones kept."""
        payload = {
            "session": "s",
            "ice": {
                "ufrag": "abcd",
                "pwd": "x" * 22,
                "candidates": ["candidate:1 1 udp 1 1.2.3.4 5 typ host", "garbage", 7],
            },
        }
        description = parse_description(payload)
        self.assertEqual([c.port for c in description.candidates], [5])
        self.assertIsNone(description.nat)
        self.assertIsNone(description.mapping)

    def test_mapping_round_trip_and_garbage(self) -> None:
        """ice.mapping is read back; a malformed one is ignored, not fatal."""
        base = {"session": "s", "ice": {"ufrag": "abcd", "pwd": "x" * 22, "candidates": []}}
        good = {"address": "203.0.113.1", "port": 20003, "endpointIndependent": False,
                "allocation": "sequential", "delta": 1}  # fmt: skip
        base["ice"]["mapping"] = good
        mapping = parse_description(base).mapping
        assert mapping is not None
        self.assertEqual(mapping.to_json(), good)
        self.assertTrue(mapping.sequential)
        for bad in [{"address": "x"}, {**good, "port": 0}, "nope", {**good, "allocation": 5}]:
            base["ice"]["mapping"] = bad
            self.assertIsNone(parse_description(base).mapping)

"""Encrypted, authenticated streams after ICE: the fingerprints signaled in the offer and
the answer bind the QUIC connection to the peers' identities (real sockets on loopback,
a real signaling server)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from holepunch.ice.config import IceConfig
from holepunch.ice.negotiation import NegotiationError, Negotiator
from holepunch.quic.identity import PeerIdentity
from holepunch.quic.session import PeerAuthenticationError, SessionClosed
from holepunch.signaling.client import SignalingClient
from holepunch.testing.loopback import registered_client, start_signaling_server
from tests.stream_protocols import Collect, Echo


class SecureNegotiationTests(TestCase):
    """connect_secure / accept_secure."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.service, self.url = yield defer.ensureDeferred(start_signaling_server(self, reactor))

    def client(self, peer_id: str) -> defer.Deferred[SignalingClient]:
        return defer.ensureDeferred(registered_client(self, reactor, self.url, peer_id))

    def negotiator(self, client: Any, identity: PeerIdentity | None) -> Negotiator:
        negotiator = Negotiator(reactor, client, IceConfig.on("127.0.0.1"), identity=identity)
        self.addCleanup(negotiator.stop)
        return negotiator

    @defer.inlineCallbacks
    def test_stream_between_signaled_identities(self) -> Any:
        """Each side checks the other's certificate against the signaled fingerprint; a
        stream then carries bytes both ways, byte-exact."""
        alice_id, bob_id = PeerIdentity.generate(), PeerIdentity.generate()
        alice = self.negotiator((yield self.client("alice")), alice_id)
        bob = self.negotiator((yield self.client("bob")), bob_id)
        accepting = bob.accept_secure()
        client_session = yield alice.connect_secure("bob")
        server_session = yield accepting
        self.addCleanup(client_session.close, "test over")
        self.addCleanup(server_session.close, "test over")
        self.assertEqual(client_session.peer_fingerprint, bob_id.fingerprint)
        self.assertEqual(server_session.peer_fingerprint, alice_id.fingerprint)
        server_session.listen_streams(protocol.Factory.forProtocol(Echo))
        collect = Collect()
        yield client_session.open_stream(collect)
        payload = bytes(range(256)) * 512
        assert collect.transport is not None
        collect.transport.write(payload)
        collect.transport.loseWriteConnection()  # type: ignore[attr-defined]
        echoed = yield collect.done
        self.assertEqual(echoed, payload)

    @defer.inlineCallbacks
    def test_swapped_fingerprint_is_refused(self) -> Any:
        """If the fingerprint bob receives is not alice's (a meddling signaling path), the
        handshake fails on bob's side naming both fingerprints, and no stream opens."""
        alice_id, bob_id, other = (PeerIdentity.generate() for _ in range(3))
        alice = self.negotiator((yield self.client("alice")), alice_id)
        bob_client = yield self.client("bob")

        def tamper(message: Any) -> None:
            message["offer"]["fingerprint"] = other.fingerprint

        bob_client.on("offer", tamper)  # before the Negotiator's own handler
        bob = self.negotiator(bob_client, bob_id)
        accepting = bob.accept_secure()
        connecting = alice.connect_secure("bob")
        error = yield self.assertFailure(accepting, PeerAuthenticationError)
        self.assertIn(other.fingerprint, str(error))
        self.assertIn(alice_id.fingerprint, str(error))
        # TLS 1.3: the client may finish its handshake before the server has judged its
        # certificate; either way its session ends, closed by bob, and carries nothing.
        try:
            client_session = yield connecting
        except SessionClosed as e:
            closed = e
        else:
            closed = yield client_session.when_closed()
        self.assertTrue(closed.by_peer, closed)
        self.assertIn("peer authentication failed", closed.reason)

    @defer.inlineCallbacks
    def test_no_identity_is_a_clear_error(self) -> Any:
        """Asking for a secure connection without an identity fails at once, naming why."""
        alice = self.negotiator((yield self.client("alice")), None)
        error = yield self.assertFailure(alice.connect_secure("bob"), NegotiationError)
        self.assertEqual(error.stage, "security")

    @defer.inlineCallbacks
    def test_wait_for_a_peer_that_registers_later(self) -> Any:
        """With ``wait_for_peer`` the offer waits for the peer to register, then the
        secure session comes up as usual."""
        alice_id, bob_id = PeerIdentity.generate(), PeerIdentity.generate()
        alice = self.negotiator((yield self.client("alice")), alice_id)
        connecting = alice.connect_secure("bob", wait_for_peer=20.0)
        self.assertFalse(connecting.called)
        bob = self.negotiator((yield self.client("bob")), bob_id)
        server_session = yield bob.accept_secure()
        client_session = yield connecting
        self.addCleanup(client_session.close, "test over")
        self.addCleanup(server_session.close, "test over")
        self.assertEqual(client_session.peer_fingerprint, bob_id.fingerprint)

"""QUIC streams over a real ICE connection: two IceAgents on 127.0.0.1, unmodified."""

import hashlib
import os

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from holepunch.quic.identity import PeerIdentity
from holepunch.quic.session import session_over_channel
from holepunch.testing.loopback import connect_loopback_agents

from .test_quic_udp import TIMEOUT, BulkPeer


class IceTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_stream_over_ice_connection(self):
        """A QuicSession on each side of an ICE PeerConnection carries 4 MiB each way intact."""
        ca, cb = yield defer.ensureDeferred(connect_loopback_agents(self, reactor)).addTimeout(
            TIMEOUT, reactor
        )

        # The fingerprints would travel in the offer/answer; the ICE role picks the QUIC role.
        id_a, id_b = PeerIdentity.generate(), PeerIdentity.generate()
        client = session_over_channel(reactor, ca, True, id_a, id_b.fingerprint)
        server = session_over_channel(reactor, cb, False, id_b, id_a.fingerprint)
        self.addCleanup(server.close, "test over")
        self.addCleanup(client.close, "test over")

        size = 4 << 20
        up, down = os.urandom(size), os.urandom(size)
        server_peers = []

        def build(addr):
            server_peers.append(BulkPeer(down))
            return server_peers[-1]

        factory = protocol.Factory()
        factory.buildProtocol = build
        server.listen_streams(factory)
        yield client.when_connected(timeout=10)
        client_peer = BulkPeer(up)
        yield client.open_stream(client_peer)
        got = yield client_peer.done.addTimeout(TIMEOUT, reactor)
        self.assertEqual(got, (size, hashlib.sha256(down).hexdigest()))
        got = yield server_peers[0].done.addTimeout(TIMEOUT, reactor)
        self.assertEqual(got, (size, hashlib.sha256(up).hexdigest()))
        self.assertEqual(server.peer_fingerprint, id_a.fingerprint)

"""ICE restart under a secure session (real sockets on loopback, a real signaling
server): the path moves to a new generation's pair and the QUIC stream on it goes on,
byte-exact."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from holepunch.ice.config import IceConfig
from holepunch.ice.connection import PeerConnection, RestartInfo
from holepunch.ice.negotiation import Negotiator
from holepunch.quic.identity import PeerIdentity
from holepunch.signaling.client import SignalingClient
from holepunch.testing.loopback import registered_client, start_signaling_server
from tests.stream_protocols import Collect, Echo


def restart_done(path: PeerConnection) -> defer.Deferred[RestartInfo]:
    """Fires with the news that the next restart under ``path`` ended."""
    d: defer.Deferred[RestartInfo] = defer.Deferred()

    def news(info: RestartInfo) -> None:
        if info.state != "started" and not d.called:
            d.callback(info)

    path.on_restart(news)
    return d


class IceRestartTests(TestCase):
    """Negotiator.restart between two negotiators."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.service, self.url = yield defer.ensureDeferred(start_signaling_server(self, reactor))

    def client(self, peer_id: str) -> defer.Deferred[SignalingClient]:
        return defer.ensureDeferred(registered_client(self, reactor, self.url, peer_id))

    def negotiator(self, client: Any) -> Negotiator:
        negotiator = Negotiator(
            reactor, client, IceConfig.on("127.0.0.1"), identity=PeerIdentity.generate()
        )
        self.addCleanup(negotiator.stop)
        return negotiator

    @defer.inlineCallbacks
    def connected(self) -> Any:
        alice = self.negotiator((yield self.client("alice")))
        bob = self.negotiator((yield self.client("bob")))
        accepting = bob.accept_secure()
        client_session = yield alice.connect_secure("bob")
        server_session = yield accepting
        self.addCleanup(client_session.close, "test over")
        self.addCleanup(server_session.close, "test over")
        return alice, bob, client_session, server_session

    @defer.inlineCallbacks
    def test_stream_survives_an_application_restart(self) -> Any:
        """Half a stream goes, alice restarts ICE, the other half goes after the path
        moved: the echo is byte-exact, both paths report the restart and the move."""
        alice, bob, client_session, server_session = yield self.connected()
        alice_path, bob_path = alice.path_of(client_session), bob.path_of(server_session)
        assert alice_path is not None and bob_path is not None
        old_ufrag = alice_path.agent.local_ufrag  # type: ignore[attr-defined]
        server_session.listen_streams(protocol.Factory.forProtocol(Echo))
        collect = Collect()
        yield client_session.open_stream(collect)
        assert collect.transport is not None
        payload = bytes(range(256)) * 2048
        half = len(payload) // 2
        collect.transport.write(payload[:half])
        alice_done, bob_done = restart_done(alice_path), restart_done(bob_path)
        self.assertTrue(alice.restart(client_session))
        collect.transport.write(payload[half : half + 4096])  # during the restart
        alice_info, bob_info = yield defer.gatherResults([alice_done, bob_done])
        self.assertEqual((alice_info.state, alice_info.reason), ("completed", "application"))
        self.assertEqual((bob_info.state, bob_info.reason), ("completed", "peer"))
        collect.transport.write(payload[half + 4096 :])
        collect.transport.loseWriteConnection()  # type: ignore[attr-defined]
        echoed = yield collect.done
        self.assertEqual(echoed, payload)
        self.assertNotEqual(alice_path.agent.local_ufrag, old_ufrag)  # type: ignore[attr-defined]
        for path in (alice_path, bob_path):
            self.assertEqual(path.path_change_reason, "restart")
            self.assertEqual(path.path_changes, 1)
            self.assertEqual(path.agent.stats.restarts_completed, 1)  # type: ignore[attr-defined]
            self.assertFalse(path.closed)

    @defer.inlineCallbacks
    def test_both_restart_at_once(self) -> Any:
        """Both sides restart at the same moment (a NAT dropped the path under both):
        the offers cross, each takes the other's as its answer, and both move."""
        alice, bob, client_session, server_session = yield self.connected()
        alice_path, bob_path = alice.path_of(client_session), bob.path_of(server_session)
        assert alice_path is not None and bob_path is not None
        alice_done, bob_done = restart_done(alice_path), restart_done(bob_path)
        self.assertTrue(alice.restart(client_session))
        self.assertTrue(bob.restart(server_session))
        alice_info, bob_info = yield defer.gatherResults([alice_done, bob_done])
        self.assertEqual((alice_info.state, bob_info.state), ("completed", "completed"))
        self.assertEqual(alice_info.reason, "application")
        server_session.listen_streams(protocol.Factory.forProtocol(Echo))
        collect = Collect()
        yield client_session.open_stream(collect)
        assert collect.transport is not None
        collect.transport.write(b"after the restart")
        collect.transport.loseWriteConnection()  # type: ignore[attr-defined]
        self.assertEqual((yield collect.done), b"after the restart")

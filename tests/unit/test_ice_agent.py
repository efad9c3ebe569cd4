"""Tests for holepunch.ice.agent: checks, roles, nomination, consent, timeouts.

Most run on FakeNetwork (a Clock with in-memory UDP) so every timer is exact; the last
class runs two agents on real loopback sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from holepunch.ice.agent import IceAgent
from holepunch.ice.candidate import Candidate
from holepunch.ice.config import IceConfig
from holepunch.ice.connection import ConnectionClosed, PeerConnection
from holepunch.ice.events import IceError
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.wire import Attr
from holepunch.testing.fakenet import FakeNetwork
from holepunch.testing.loopback import connect_loopback_agents


def config(host: str, **kw: Any) -> IceConfig:
    """Defaults on one address; keyword arguments set CheckConfig/ConsentConfig fields."""
    ice = IceConfig.on(host)
    for name, value in kw.items():
        part = ice.checks if hasattr(ice.checks, name) else ice.consent
        assert hasattr(part, name), name
        setattr(part, name, value)
    return ice


class Pair:
    """Two agents on one fake network, wired to each other like signaling would."""

    def __init__(
        self,
        net: FakeNetwork,
        a_controlling: bool = True,
        b_controlling: bool = False,
        signal_a: bool = True,
        signal_b: bool = True,
        **kw: Any,
    ) -> None:
        self.net = net
        self.a = IceAgent(net, a_controlling, config("192.0.2.1", **kw), tie_breaker=2)
        self.b = IceAgent(net, b_controlling, config("192.0.2.2", **kw), tie_breaker=1)
        if signal_a:
            self.a.on_local_candidate = self.b.add_remote_candidate
        if signal_b:
            self.b.on_local_candidate = self.a.add_remote_candidate
        self.a.set_remote_credentials(self.b.local_ufrag, self.b.local_pwd)
        self.b.set_remote_credentials(self.a.local_ufrag, self.a.local_pwd)

    def gather(self) -> None:
        defer.ensureDeferred(self.a.gather())
        defer.ensureDeferred(self.b.gather())

    def connect(
        self, test: SynchronousTestCase, advance: float = 1.0
    ) -> tuple[PeerConnection, PeerConnection]:
        da, db = self.a.connect(), self.b.connect()
        self.gather()
        self.net.pump([0.001] * int(advance / 0.001))
        return test.successResultOf(da), test.successResultOf(db)


class AgentTests(SynchronousTestCase):
    """Two agents on a fake network."""

    def test_connect_and_exchange(self) -> None:
        """Two agents connect directly, and datagrams flow both ways on the checked path."""
        net = FakeNetwork()
        pair = Pair(net)
        ca, cb = pair.connect(self)
        self.assertEqual((ca.method, cb.method), ("direct", "direct"))
        self.assertEqual(ca.remote, ("192.0.2.2", pair.b.local_port))
        self.assertEqual(cb.remote, ("192.0.2.1", pair.a.local_port))
        got_a: list[bytes] = []
        got_b: list[bytes] = []
        ca.on_datagram(got_a.append)
        cb.on_datagram(got_b.append)
        ca.send(b"ping")
        cb.send(b"pong")
        net.advance(0.01)
        self.assertEqual((got_a, got_b), ([b"pong"], [b"ping"]))
        self.assertIsNotNone(ca.rtt)

    def test_trickle_after_start(self) -> None:
        """Candidates that arrive after the checks started are paired and checked."""
        net = FakeNetwork()
        pair = Pair(net, signal_a=False, signal_b=False)
        da, db = pair.a.connect(), pair.b.connect()
        pair.gather()
        net.advance(0.5)
        self.assertNoResult(da)
        for c in pair.b.local_candidates:
            pair.a.add_remote_candidate(c)
        for c in pair.a.local_candidates:
            pair.b.add_remote_candidate(c)
        net.pump([0.001] * 500)
        self.successResultOf(da)
        self.successResultOf(db)

    def test_peer_reflexive_learning(self) -> None:
        """When only one side knows the other's candidates, the other learns a peer-reflexive one."""
        net = FakeNetwork()
        pair = Pair(net, signal_a=False, signal_b=True)  # A knows B; B knows nothing of A
        ca, cb = pair.connect(self)
        self.assertEqual(cb.remote_candidate.type, "prflx")
        self.assertEqual(cb.remote, ("192.0.2.1", pair.a.local_port))

    def test_both_controlling_resolved(self) -> None:
        """Two controlling agents settle the role conflict by tie-breaker (487) and connect."""
        net = FakeNetwork()
        pair = Pair(net, a_controlling=True, b_controlling=True)
        pair.connect(self)
        self.assertNotEqual(pair.a.controlling, pair.b.controlling)
        self.assertTrue(pair.a.controlling)  # the larger tie-breaker stays controlling
        self.assertGreater(pair.a.stats.role_conflicts + pair.b.stats.role_conflicts, 0)

    def test_both_controlled_resolved(self) -> None:
        """Two controlled agents settle the conflict too and connect."""
        net = FakeNetwork()
        pair = Pair(net, a_controlling=False, b_controlling=False)
        pair.connect(self)
        self.assertNotEqual(pair.a.controlling, pair.b.controlling)

    def test_unauthenticated_check_dropped(self) -> None:
        """A check with the wrong password or ufrag gets no answer and is counted."""
        net = FakeNetwork()
        agent = IceAgent(net, False, config("192.0.2.1"))
        defer.ensureDeferred(agent.gather())
        attacker = net.listenUDP(0, _Sink(), interface="192.0.2.9")
        target = ("192.0.2.1", agent.local_port)
        forged = StunMessage.request()
        forged.add_string(Attr.USERNAME, f"{agent.local_ufrag}:evil")
        forged.add_uint32(Attr.PRIORITY, 1)
        attacker.write(encode(forged, integrity_key=b"wrong password", fingerprint=True), target)
        no_user = StunMessage.request().add_uint32(Attr.PRIORITY, 1)
        attacker.write(
            encode(no_user, integrity_key=agent.local_pwd.encode(), fingerprint=True), target
        )
        wrong_ufrag = StunMessage.request().add_string(Attr.USERNAME, "someone:else")
        attacker.write(
            encode(wrong_ufrag, integrity_key=agent.local_pwd.encode(), fingerprint=True), target
        )
        net.advance(0.1)
        self.assertEqual(agent.stats.unauthenticated, 3)
        self.assertEqual(agent.stats.responses_sent, 0)
        self.assertEqual(agent.remote_candidates, [])
        agent.close()

    def test_garbage_and_strangers_ignored(self) -> None:
        """Garbage and data from unknown addresses neither crash the agent nor reach the app."""
        net = FakeNetwork()
        pair = Pair(net)
        ca, cb = pair.connect(self)
        got: list[bytes] = []
        cb.on_datagram(got.append)
        stranger = net.listenUDP(0, _Sink(), interface="192.0.2.66")
        for junk in [b"", b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"x" * 12, b"\xff" * 100]:
            stranger.write(junk, ("192.0.2.2", pair.b.local_port))
        net.advance(0.01)
        self.assertEqual(got, [])
        self.assertGreaterEqual(pair.b.stats.data_dropped, 2)
        ca.send(b"still fine")
        net.advance(0.01)
        self.assertEqual(got, [b"still fine"])

    def test_consent_lost_closes(self) -> None:
        """When the peer stops answering, consent expires after 30 s: disconnected fires, timers and socket go."""
        net = FakeNetwork()
        pair = Pair(net)
        ca, cb = pair.connect(self)
        reasons: list[str] = []
        ca.on_disconnected(reasons.append)
        net.block(("192.0.2.1", pair.a.local_port), ("192.0.2.2", pair.b.local_port))
        net.advance(25)
        self.assertEqual(reasons, [])
        for _ in range(40):
            net.advance(1)
        self.assertEqual(len(reasons), 1)
        self.assertIn("consent", reasons[0])
        self.assertTrue(ca.closed)
        self.assertRaises(ConnectionClosed, ca.send, b"x")
        self.assertNotIn(("192.0.2.1", pair.a.local_port), net.ports)
        pair.b.close()
        self.assertEqual(net.getDelayedCalls(), [])

    def test_consent_keeps_idle_connection(self) -> None:
        """An idle connection whose peer answers stays up for minutes, with consent checks every ~5 s."""
        net = FakeNetwork()
        pair = Pair(net)
        ca, cb = pair.connect(self)
        for _ in range(120):
            net.advance(1)
        self.assertFalse(ca.closed or cb.closed)
        self.assertGreaterEqual(pair.a.stats.consent_checks, 120 / 6)
        self.assertLessEqual(pair.a.stats.consent_checks, 120 / 4 + 1)

    def test_keepalive_when_silent(self) -> None:
        """With consent checks off, a Binding indication goes out after keepalive_interval of silence, never later."""
        net = FakeNetwork()
        pair = Pair(net, interval=0, keepalive_interval=25)
        ca, cb = pair.connect(self)
        port = net.ports[("192.0.2.1", pair.a.local_port)]
        start = len(port.sent)
        net.pump([1] * 100)
        sent = port.sent[start:]
        self.assertEqual(len(sent), 4)
        for data, _ in sent:
            self.assertEqual(decode(data).message_class.name, "INDICATION")
        # Application data resets the timer: no keepalive while we keep sending.
        before = pair.a.stats.keepalives
        for _ in range(60):
            ca.send(b"x")
            net.advance(1)
        self.assertEqual(pair.a.stats.keepalives, before)

    def test_all_pairs_fail_after_end_of_candidates(self) -> None:
        """An unreachable peer: when every pair failed and candidates ended, connect fails naming the stage."""
        net = FakeNetwork()
        pair = Pair(net)
        net.block(("192.0.2.2", 0))
        net.block(("192.0.2.1", pair.a.local_port) if pair.a.listening else ("0", 0))
        net.filter = lambda data, src, dst: False
        da = pair.a.connect()
        pair.b.connect().addErrback(lambda f: None)
        pair.gather()
        net.pump([0.05] * 400)
        failure = self.failureResultOf(da, IceError)
        self.assertEqual(failure.value.stage, "connectivity-checks")
        self.assertIn("failed", str(failure.value))
        self.assertEqual(net.getDelayedCalls(), [])

    def test_connection_timeout(self) -> None:
        """Without end-of-candidates, connection_timeout bounds the attempt."""
        net = FakeNetwork()
        agent = IceAgent(net, True, config("192.0.2.1", connection_timeout=5))
        agent.set_remote_credentials("abcd", "x" * 22)
        d = agent.connect()
        defer.ensureDeferred(agent.gather())
        net.advance(4.9)
        self.assertNoResult(d)
        net.advance(0.2)
        failure = self.failureResultOf(d, IceError)
        self.assertEqual(failure.value.stage, "candidates")
        self.assertEqual(net.getDelayedCalls(), [])

    def test_cancel_frees_everything(self) -> None:
        """Cancelling connect() closes the socket and cancels every timer."""
        net = FakeNetwork()
        pair = Pair(net)
        net.filter = lambda data, src, dst: False
        da = pair.a.connect()
        pair.gather()
        net.advance(0.3)
        da.cancel()
        self.failureResultOf(da)
        self.assertNotIn(("192.0.2.1", pair.a.local_port if pair.a.listening else 0), net.ports)
        pair.b.close()
        self.assertEqual(net.getDelayedCalls(), [])

    def test_early_check_before_credentials(self) -> None:
        """A check that arrives before the peer's answer is answered, and triggers a check once credentials come."""
        net = FakeNetwork()
        a = IceAgent(net, True, config("192.0.2.1"))
        b = IceAgent(net, False, config("192.0.2.2"))
        b.on_local_candidate = a.add_remote_candidate
        a.on_local_candidate = b.add_remote_candidate
        b.set_remote_credentials(a.local_ufrag, a.local_pwd)  # B has the offer; A lacks the answer
        da, db = a.connect(), b.connect()
        defer.ensureDeferred(a.gather())
        defer.ensureDeferred(b.gather())
        net.pump([0.001] * 300)
        self.assertGreater(a.stats.responses_sent, 0)
        self.assertNoResult(da)
        a.set_remote_credentials(b.local_ufrag, b.local_pwd)
        net.pump([0.001] * 500)
        self.successResultOf(da)
        self.successResultOf(db)

    def test_close_fires_disconnected_once(self) -> None:
        """Closing a connection fires its observers once and releases the agent."""
        net = FakeNetwork()
        pair = Pair(net)
        ca, cb = pair.connect(self)
        reasons: list[str] = []
        ca.on_disconnected(reasons.append)
        ca.close()
        ca.close()
        self.assertEqual(reasons, ["closed locally"])
        self.assertIn("closed locally", self.successResultOf(ca.when_closed()))


class _Sink:
    def makeConnection(self, transport: Any) -> None:
        pass

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        pass

    def doStop(self) -> None:
        pass


class LoopbackAgentTests(TestCase):
    """Two agents on real UDP sockets on 127.0.0.1."""

    @defer.inlineCallbacks
    def test_real_sockets(self) -> Any:
        """Agents on loopback connect directly and carry datagrams both ways."""
        ca, cb = yield defer.ensureDeferred(connect_loopback_agents(self, reactor))
        self.assertEqual(ca.method, "direct")
        received: defer.Deferred[bytes] = defer.Deferred()
        cb.on_datagram(lambda data: received.callback(data) if not received.called else None)
        ca.send(b"across a real socket")
        data = yield received
        self.assertEqual(data, b"across a real socket")
        self.assertEqual(Candidate.from_sdp(ca.local_candidate.to_sdp()).host, "127.0.0.1")


class RestartAgentTests(SynchronousTestCase):
    """ICE restarts through the agent (the signaling's part done by the test)."""

    def follow(self, pair: Pair) -> None:
        """When ``a`` restarts, ``b`` restarts too and both learn the new credentials,
        as the negotiation's offer and answer would do."""

        def restarted(reason: str) -> None:
            pair.b.restart("peer")
            pair.a.set_remote_credentials(pair.b.local_ufrag, pair.b.local_pwd)
            pair.b.set_remote_credentials(pair.a.local_ufrag, pair.a.local_pwd)

        pair.a.on_restart = restarted

    def test_application_restart_moves_the_path(self) -> None:
        """restart() keeps the connection; its observers hear started then completed,
        and its path observers the move; data flows after it."""
        pair = Pair(FakeNetwork())
        ca, cb = pair.connect(self)
        self.follow(pair)
        news: list[Any] = []
        moves: list[str] = []
        ca.on_restart(news.append)
        ca.on_path_changed(lambda c: moves.append(c.path_change_reason))
        self.assertTrue(pair.a.restart())
        pair.net.pump([0.001] * 1000)
        self.assertEqual([(n.state, n.reason) for n in news],
                         [("started", "application"), ("completed", "application")])  # fmt: skip
        self.assertEqual(moves, ["restart"])
        got: list[bytes] = []
        cb.on_datagram(got.append)
        ca.send(b"after")
        pair.net.pump([0.001] * 50)
        self.assertEqual(got, [b"after"])
        self.assertFalse(ca.closed or cb.closed)

    def test_address_change_restarts(self) -> None:
        """The interface watch sees a new local address and restarts ICE with it."""
        pair = Pair(FakeNetwork())
        ca, _ = pair.connect(self)
        self.follow(pair)
        news: list[Any] = []
        ca.on_restart(news.append)
        pair.a.local_addresses = lambda: ["192.0.2.1", "192.0.2.9"]
        pair.net.pump([0.01] * 600)  # the watch looks every 5 s
        self.assertEqual([(n.state, n.reason) for n in news],
                         [("started", "address-change"), ("completed", "address-change")])  # fmt: skip
        hosts = {c.host for c in pair.a.local_candidates if c.type == "host"}
        self.assertEqual(hosts, {"192.0.2.1", "192.0.2.9"})

    def test_restart_before_connecting_is_refused(self) -> None:
        pair = Pair(FakeNetwork())
        self.assertFalse(pair.a.restart())

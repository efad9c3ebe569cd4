"""SwitchingChannel: a connection that moves from one carrier (TCP) to another (UDP)."""

from types import SimpleNamespace

from twisted.internet import defer, task
from twisted.trial import unittest

from holepunch.ice.connection import ConnectionClosed
from holepunch.ice.events import IceError
from holepunch.ice.negotiation import Negotiator
from holepunch.ice.switching import SwitchingChannel
from holepunch.quic.session import session_over_channel

from .quic_pipe import identities
from .test_quic_channel import MemoryChannel
from .test_quic_session import Collect, listen


def pair(clock, method):
    a = MemoryChannel(clock, ("10.0.0.1", 1), ("10.0.0.2", 2))
    b = MemoryChannel(clock, ("10.0.0.2", 2), ("10.0.0.1", 1))
    a.method = b.method = method
    a.peer, b.peer = b, a
    return a, b


class SwitchingChannelTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.tcp_a, self.tcp_b = pair(self.clock, "tcp-hole-punch")
        self.udp_a, self.udp_b = pair(self.clock, "udp-hole-punch")
        self.udp_a.local, self.udp_a.remote = ("192.0.2.1", 4000), ("198.51.100.2", 5000)
        self.a = SwitchingChannel(self.clock, self.tcp_a, grace=2.0)
        self.b = SwitchingChannel(self.clock, self.tcp_b, grace=2.0)

    def test_datagrams_cross_the_switch(self):
        """Datagrams flow before and after the switch; observers hear of it once, with
        the new path; the old carrier drains and closes after the grace period."""
        got = []
        self.b.on_datagram(got.append)
        changes = []
        self.a.on_path_changed(lambda c: changes.append((c.method, c.path_change_reason)))
        self.a.send(b"one")
        self.clock.advance(0)
        self.a.switch_to(self.udp_a)
        self.assertEqual(changes, [("udp-hole-punch", "upgrade")])
        self.assertEqual(self.a.method, "udp-hole-punch")
        self.assertEqual(self.a.local, ("192.0.2.1", 4000))
        self.assertEqual(self.a.remote, ("198.51.100.2", 5000))
        self.assertEqual(self.a.path_changes, 1)
        self.a.send(b"two")  # goes over UDP: b still listens on TCP until it switches
        self.tcp_a.deliver(b"late")  # in flight on the old carrier: still delivered
        self.clock.advance(0)
        self.assertEqual(got, [b"one"])
        self.b.switch_to(self.udp_b)  # the backlog of the new carrier arrives
        self.assertEqual(got, [b"one", b"two"])
        self.assertFalse(self.tcp_a.closed)
        self.clock.advance(2.0)
        self.assertTrue(self.tcp_a.closed)
        self.assertTrue(self.tcp_b.closed)
        self.assertFalse(self.a.closed)
        self.a.send(b"three")
        self.clock.advance(0)
        self.assertEqual(got, [b"one", b"two", b"three"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_previous_carrier_stays_while_the_peer_uses_it(self):
        """A peer that has not switched (or whose side of the new path failed) keeps
        sending on the old carrier: it stays open and delivers until it has been quiet
        for the grace period."""
        got = []
        self.a.on_datagram(got.append)
        self.a.switch_to(self.udp_a)
        for i in range(5):  # the peer keeps sending on TCP every 1.5 s
            self.clock.advance(1.5)
            self.tcp_b.send(b"%d" % i)
            self.clock.advance(0)
            self.assertFalse(self.tcp_a.closed)
        self.assertEqual(got, [b"0", b"1", b"2", b"3", b"4"])
        self.clock.advance(1.9)
        self.assertFalse(self.tcp_a.closed)
        self.clock.advance(0.1)
        self.assertTrue(self.tcp_a.closed)
        self.assertFalse(self.a.closed)
        self.a.close()

    def test_follows_current_carrier_only(self):
        """The old carrier ending does not end the connection; the current one does."""
        reasons = []
        self.a.on_disconnected(reasons.append)
        self.a.switch_to(self.udp_a)
        self.tcp_a.close("peer closed")
        self.assertEqual(reasons, [])
        self.udp_a.close("consent lost")
        self.assertEqual(reasons, ["consent lost"])
        self.assertTrue(self.a.closed)
        self.assertRaises(ConnectionClosed, self.a.send, b"x")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_closes_every_carrier(self):
        """Closing during the grace period closes both carriers and cancels the timer."""
        self.a.switch_to(self.udp_a)
        self.a.close("done")
        self.assertTrue(self.tcp_a.closed)
        self.assertTrue(self.udp_a.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_switch_after_close_closes_new_carrier(self):
        self.a.close("done")
        self.a.switch_to(self.udp_a)
        self.assertTrue(self.udp_a.closed)
        self.assertEqual(self.a.method, "tcp-hole-punch")

    def test_follows_path_changes_of_current(self):
        """A path change under the current carrier (an ICE restart) reaches observers."""
        self.a.switch_to(self.udp_a)
        changes = []
        self.a.on_path_changed(lambda c: changes.append((c.remote, c.path_change_reason)))
        self.udp_a.remote = ("198.51.100.9", 7000)
        self.udp_a.path_changed("restart")
        self.assertEqual(changes, [(("198.51.100.9", 7000), "restart")])
        self.tcp_a.path_changed("restart")  # the old one: not ours any more
        self.assertEqual(len(changes), 1)
        self.a.close()

    def test_quic_stream_across_the_switch(self):
        """A QUIC stream keeps going when both sides move from TCP to UDP."""
        client_id, server_id, _ = identities()
        client = session_over_channel(self.clock, self.a, True, client_id, server_id.fingerprint)
        server = session_over_channel(self.clock, self.b, False, server_id, client_id.fingerprint)
        made = listen(None, server, Collect)
        stream = Collect(b"over tcp")
        client.open_stream(stream)
        self.run_until(lambda: made and made[0].received == b"over tcp")
        self.a.switch_to(self.udp_a)
        stream.transport.write(b" then udp")
        self.clock.advance(0.01)
        self.b.switch_to(self.udp_b)
        self.run_until(lambda: made[0].received == b"over tcp then udp")
        self.clock.advance(3)
        self.assertTrue(self.tcp_a.closed and self.tcp_b.closed)
        stream.transport.write(b" only")
        self.run_until(lambda: made[0].received == b"over tcp then udp only")
        client.close("done")
        server.close("done")
        self.clock.advance(60)

    def run_until(self, condition, limit=3000):
        for _ in range(limit):
            if condition():
                return
            self.clock.advance(0.001)
        self.fail("condition not met")


class _Subscription:
    def cancel(self):
        pass


class _Signaling:
    def on(self, _name, _handler):
        return _Subscription()


class _Agent:
    def __init__(self):
        self.stopped = 0
        self.closes = 0
        self.closed = False
        self.connection = None

    def close(self):
        self.closes += 1
        self.closed = True
        return defer.succeed(None)

    def stop_trying(self):
        self.stopped += 1


class _Track:
    started = True

    def __init__(self):
        self.result = defer.Deferred()

    def cancel(self):
        pass


class RaceTests(unittest.TestCase):
    """Negotiator._race when TCP wins: the UDP track keeps going and takes over."""

    def setUp(self):
        self.clock = task.Clock()
        self.negotiator = Negotiator(self.clock, _Signaling())
        self.agent = _Agent()
        self.session = SimpleNamespace(
            tcp=_Track(), agent=self.agent, remote_fingerprint="fp", peer_id="bob"
        )
        self.connecting = defer.Deferred()
        self.result = defer.ensureDeferred(self.negotiator._race(self.session, self.connecting))
        self.tcp, _ = pair(self.clock, "tcp-hole-punch")
        self.udp, _ = pair(self.clock, "udp-hole-punch")
        self.session.tcp.result.callback(self.tcp)
        self.channel = self.successResultOf(self.result)

    def test_tcp_wins_then_moves_to_udp(self):
        self.assertIsInstance(self.channel, SwitchingChannel)
        self.assertEqual(self.channel.method, "tcp-hole-punch")
        self.assertEqual(self.channel.peer_fingerprint, "fp")
        self.assertEqual(self.agent.closes, 0)
        self.assertFalse(self.negotiator.restart(self.channel))  # still on TCP
        changes = []
        self.channel.on_path_changed(lambda c: changes.append(c.method))
        self.connecting.callback(self.udp)
        self.assertEqual(changes, ["udp-hole-punch"])
        self.assertEqual(self.channel.path_change_reason, "upgrade")
        self.assertEqual(self.udp.peer_fingerprint, "fp")
        self.clock.advance(SwitchingChannel.GRACE)
        self.assertTrue(self.tcp.closed)
        self.channel.close("done")
        self.assertTrue(self.udp.closed)
        self.assertEqual(self.agent.closes, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_udp_fails_stays_on_tcp(self):
        self.connecting.errback(IceError("connectivity-checks", "timeout"))
        self.assertEqual(self.agent.closes, 1)
        self.assertFalse(self.channel.closed)
        self.assertEqual(self.channel.method, "tcp-hole-punch")
        self.assertEqual(self.channel.path_changes, 0)
        self.channel.close("done")
        self.assertTrue(self.tcp.closed)

    def test_udp_after_close_is_closed(self):
        self.channel.close("done")
        self.assertEqual(self.agent.closes, 1)
        self.connecting.callback(self.udp)
        self.assertTrue(self.udp.closed)
        self.assertEqual(self.channel.method, "tcp-hole-punch")


class TcpFailsTests(unittest.TestCase):
    """Negotiator._race when the TCP punch fails first: UDP, which was told to keep
    trying while TCP punched, is told to stop, so it can fail as usual."""

    def test_tcp_failure_ends_udp_patience(self):
        clock = task.Clock()
        negotiator = Negotiator(clock, _Signaling())
        agent = _Agent()
        session = SimpleNamespace(tcp=_Track(), agent=agent, remote_fingerprint="fp", peer_id="bob")
        connecting = defer.Deferred()
        result = defer.ensureDeferred(negotiator._race(session, connecting))
        session.tcp.result.errback(ConnectionRefusedError("punch failed"))
        self.assertEqual(agent.stopped, 1)
        self.assertNoResult(result)
        connecting.errback(IceError("connectivity-checks", "all pairs failed"))
        failure = self.failureResultOf(result, IceError)
        self.assertIn("punch failed", failure.getErrorMessage())

"""session_over_channel: a QuicSession on an ICE Channel (what the ICE agent hands out)."""

from twisted.internet import task
from twisted.trial import unittest

from holepunch.ice.connection import Channel
from holepunch.quic.session import session_over_channel

from .quic_pipe import identities
from .test_quic_session import Collect, listen


class MemoryChannel(Channel):
    """A Channel whose datagrams reach its peer channel on the next clock turn."""

    def __init__(self, clock, local, remote):
        super().__init__("memory", local, remote, None)
        self.clock = clock
        self.peer = None

    def transmit(self, data):
        self.clock.callLater(0, self.peer.deliver, data)


class ChannelTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.a = MemoryChannel(self.clock, ("10.0.0.1", 1), ("10.0.0.2", 2))
        self.b = MemoryChannel(self.clock, ("10.0.0.2", 2), ("10.0.0.1", 1))
        self.a.peer, self.b.peer = self.b, self.a
        client_id, server_id, _ = identities()
        self.client = session_over_channel(
            self.clock, self.a, True, client_id, server_id.fingerprint
        )
        self.server = session_over_channel(
            self.clock, self.b, False, server_id, client_id.fingerprint
        )

    def run_until(self, condition, limit=2000):
        for _ in range(limit):
            if condition():
                return
            self.clock.advance(0.001)
        self.fail("condition not met")

    def test_stream_over_channel(self):
        """A stream crosses a pair of Channels, and the path can move under them."""
        made = listen(None, self.server, Collect)
        client = Collect(b"over ice")
        self.client.open_stream(client)
        self.run_until(lambda: made and made[0].received == b"over ice")
        # The ICE agent moves the connection to another pair: new addresses, same session.
        self.a.local, self.a.remote = ("192.0.2.10", 5000), ("198.51.100.7", 6000)
        client.transport.write(b" and after the move")
        self.run_until(lambda: made[0].received == b"over ice and after the move")

    def test_channel_closed_closes_session(self):
        """When the channel disconnects, the session closes with the reason."""
        self.run_until(lambda: self.client.authenticated)
        reasons = []
        self.client.on_closed(reasons.append)
        self.a.close("consent lost")
        self.assertEqual(len(reasons), 1)
        self.assertIn("consent lost", reasons[0].reason)

    def test_session_close_leaves_channel(self):
        """Closing the session leaves the channel to its owner."""
        self.run_until(lambda: self.client.authenticated)
        self.client.close("done")
        self.assertFalse(self.a.closed)

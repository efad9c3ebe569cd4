# -*- test-case-name: tests.unit.test_switching -*-
"""A connection whose carrier can change: TCP first, UDP once a UDP path works.

When the TCP hole punch wins the race (:meth:`Negotiator._race
<holepunch.ice.negotiation.Negotiator>`), the connection handed out is a
:class:`SwitchingChannel` over the TCP :class:`StreamConnection
<holepunch.punch.tcpsession.StreamConnection>` while ICE keeps checking UDP pairs; when
they select one, :meth:`SwitchingChannel.switch_to` moves the connection onto the UDP
:class:`PeerConnection <holepunch.ice.connection.PeerConnection>`. What runs on top (the
QUIC session) keeps its one channel and only hears ``on_path_changed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from holepunch.ice.connection import Channel

_log = Logger()


class SwitchingChannel(Channel):
    """A :class:`Channel` carried by another channel (``current``), which
    :meth:`switch_to` replaces.

    ``send`` goes to the current channel; datagrams of the current channel are delivered,
    and so are those still arriving on a previous one, which is closed once it has been
    quiet for ``grace`` seconds (the peer may switch later than we do, or not at all if
    its side of the new path failed: its carrier stays ours until it goes quiet);
    ``method``, ``local``, ``remote`` and ``rtt`` are the current
    channel's, and follow its own path changes. The connection ends when the current
    channel ends (not when a previous one does); closing it closes every channel it
    holds.

    :param reactor: for the grace period's timer.
    :param channel: the first carrier.
    :param grace: seconds a previous carrier stays open after a switch.
    """

    GRACE = 5.0

    def __init__(self, reactor: Any, channel: Channel, grace: float = GRACE) -> None:
        super().__init__(channel.method, channel.local, channel.remote, channel.rtt)
        self.reactor = reactor
        self.grace = grace
        self.current = channel
        self.peer_fingerprint = channel.peer_fingerprint
        self._detach: list[Callable[[], None]] = []
        self._draining: dict[Channel, Any] = {}
        self._heard: dict[Channel, float] = {}
        self._attach(channel)

    def _attach(self, channel: Channel) -> None:
        def lost(reason: str) -> None:
            if channel is self.current and not self.closed:
                self.close(reason)

        def moved(_c: object) -> None:
            if channel is self.current:
                self._follow(channel)
                self.path_changed(channel.path_change_reason)

        def received(data: bytes) -> None:
            self._heard[channel] = self.reactor.seconds()
            self.deliver(data)

        self._detach = [channel.on_disconnected(lost), channel.on_path_changed(moved)]
        channel.on_datagram(received)

    def _follow(self, channel: Channel) -> None:
        self.method = channel.method
        self.local = channel.local
        self.remote = channel.remote
        self.rtt = channel.rtt

    def switch_to(self, channel: Channel, reason: str = "upgrade") -> None:
        """Carry the connection on ``channel`` from now on; the previous carrier closes
        after ``grace`` seconds (packets in flight on it are still delivered), and path
        observers hear of the change (``path_change_reason`` ``reason``)."""
        if self.closed:
            channel.close(self.close_reason or "closed")
            return
        previous = self.current
        for detach in self._detach:
            detach()
        self.current = channel
        self._attach(channel)
        self._follow(channel)
        self._draining[previous] = self.reactor.callLater(
            self.grace, self._retire, previous, f"moved to {channel.method}"
        )
        self.path_changed(reason)

    def _retire(self, channel: Channel, reason: str) -> None:
        quiet = self.reactor.seconds() - self._heard.get(channel, float("-inf"))
        if quiet < self.grace and not channel.closed:
            self._draining[channel] = self.reactor.callLater(
                self.grace - quiet, self._retire, channel, reason
            )
            return
        self._draining.pop(channel, None)
        self._heard.pop(channel, None)
        channel.close(reason)

    def transmit(self, data: bytes) -> None:
        self.current.send(data)

    def release(self) -> defer.Deferred[None]:
        closing = []
        for channel, timer in list(self._draining.items()):
            if timer.active():
                timer.cancel()
            closing.append(channel.close(self.close_reason or "closed"))
        self._draining.clear()
        self._heard.clear()
        closing.append(self.current.close(self.close_reason or "closed"))
        d = defer.gatherResults(closing, consumeErrors=True)
        return d.addCallback(lambda _: None)

# -*- test-case-name: tests.unit.test_ice_agent -*-
"""The result of ICE: a working, authenticated datagram path to a peer.

A :class:`PeerConnection` sends and receives application datagrams on the agent's one
UDP socket, through the selected candidate pair. The agent keeps consent (RFC 7675) and
the NAT mapping alive underneath it; when consent is lost, or either side closes, the
connection fires its ``disconnected`` observers once and stops.

Application datagrams share the socket with STUN, so the agent tells them apart by the
STUN magic cookie (RFC 7983 demultiplexing). A reliable stream (QUIC, later) can run on
top: it needs exactly ``send(bytes)`` and a receive callback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

_log = Logger()

DatagramHandler = Callable[[bytes], None]
DisconnectHandler = Callable[[str], None]


class ConnectionClosed(Exception):
    """The connection is closed; nothing can be sent on it."""


class Channel:
    """What every connection to a peer offers, whatever carries it.

    ``method``, ``local`` and ``remote`` (``(host, port)``), ``rtt`` (seconds, or None),
    ``closed``; ``send(bytes)``; ``on_datagram(handler)`` (datagrams that arrived before
    the first handler are delivered to it at once, in order); ``on_disconnected(handler)``
    (called once, with the reason); ``when_closed()``; ``close()``;
    ``on_path_changed(handler)`` (the path under the connection changed: ``method``,
    ``local`` and ``remote`` are then the new path's, ``path_change_reason`` says why).
    Subclasses provide ``transmit(data)`` and ``release()`` (free the transport); what
    carries the connection calls ``deliver(data)`` for each datagram,
    ``mark_closed(reason)`` and ``path_changed(reason)``.
    """

    BACKLOG = 256

    def __init__(
        self, method: str, local: tuple[str, int], remote: tuple[str, int], rtt: float | None
    ) -> None:
        self.method = method
        self.local = local
        self.remote = remote
        self.rtt = rtt
        self.closed = False
        self.close_reason: str | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self.peer_fingerprint: str | None = None
        """The certificate fingerprint the peer signaled for this connection, if any."""
        self._receivers: list[DatagramHandler] = []
        self._disconnect_observers: list[DisconnectHandler] = []
        self._backlog: list[bytes] = []
        self._waiters: list[defer.Deferred[str]] = []
        self._path_observers: list[Callable[[Any], None]] = []
        self.path_changes = 0
        self.path_change_reason = ""

    def __repr__(self) -> str:
        state = f"closed: {self.close_reason}" if self.closed else "open"
        return f"<{type(self).__name__} {self.method} {self.local} -> {self.remote} {state}>"

    @property
    def local_port(self) -> int:
        """The local port (the seed's ``localPort``)."""
        return self.local[1]

    @property
    def remote_address(self) -> str:
        """The peer's address (the seed's ``remoteAddress``)."""
        return self.remote[0]

    @property
    def remote_port(self) -> int:
        """The peer's port (the seed's ``remotePort``)."""
        return self.remote[1]

    def send(self, data: bytes) -> None:
        """Send one datagram (message) to the peer."""
        if self.closed:
            raise ConnectionClosed(self.close_reason or "closed")
        self.transmit(data)
        self.bytes_sent += len(data)

    def transmit(self, data: bytes) -> None:
        """Put one datagram on the wire (subclasses)."""
        raise NotImplementedError

    def on_datagram(self, handler: DatagramHandler) -> Callable[[], None]:
        """Call ``handler(data)`` for every datagram from the peer; returns an unsubscriber."""
        self._receivers.append(handler)
        backlog, self._backlog = self._backlog, []
        for data in backlog:
            handler(data)
        return lambda: self._receivers.remove(handler) if handler in self._receivers else None

    def on_disconnected(self, handler: DisconnectHandler) -> Callable[[], None]:
        """Call ``handler(reason)`` once when the connection ends; returns an unsubscriber."""
        if self.closed:
            handler(self.close_reason or "closed")
            return lambda: None
        self._disconnect_observers.append(handler)
        return lambda: (
            self._disconnect_observers.remove(handler)
            if handler in self._disconnect_observers
            else None
        )

    def when_closed(self) -> defer.Deferred[str]:
        """A Deferred that fires with the reason when the connection ends."""
        d: defer.Deferred[str] = defer.Deferred()
        if self.closed:
            d.callback(self.close_reason or "closed")
        else:
            self._waiters.append(d)
        return d

    def close(self, reason: str = "closed locally") -> defer.Deferred[None]:
        """Close the connection and free what carries it."""
        self.mark_closed(reason)
        return self.release()

    def release(self) -> defer.Deferred[None]:
        """Free what carries the connection (subclasses)."""
        return defer.succeed(None)

    def deliver(self, data: bytes) -> None:
        """A datagram from the peer: to the handlers, or kept until the first one."""
        if self.closed:
            return
        self.bytes_received += len(data)
        if not self._receivers:
            if len(self._backlog) < self.BACKLOG:
                self._backlog.append(data)
            return
        for handler in list(self._receivers):
            try:
                handler(data)
            except Exception:
                _log.failure("datagram handler raised")

    def mark_closed(self, reason: str) -> None:
        """The connection ended (once): observers and waiters hear ``reason``."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        _log.info("connection to {remote} closed: {reason}", remote=self.remote, reason=reason)
        observers, self._disconnect_observers = self._disconnect_observers, []
        for handler in observers:
            try:
                handler(reason)
            except Exception:
                _log.failure("disconnect observer raised")
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(reason)

    def path_changed(self, reason: str) -> None:
        """The path under the connection changed (``reason``: ``upgrade``, ``restart``,
        ``better-path``); path observers hear of it."""
        self.path_change_reason = reason
        self.path_changes += 1
        for handler in list(self._path_observers):
            try:
                handler(self)
            except Exception:
                _log.failure("path observer raised")

    def on_path_changed(self, handler: Callable[[Any], None]) -> Callable[[], None]:
        """Call ``handler(connection)`` when the path changes under the connection (a
        relayed connection upgraded to a direct pair, an ICE restart selected a new
        pair, a degraded path was replaced, a TCP connection moved to UDP); ``method``,
        ``local`` and ``remote`` are then the new path's, ``path_change_reason`` says
        why."""
        self._path_observers.append(handler)
        return lambda: (
            self._path_observers.remove(handler) if handler in self._path_observers else None
        )


@dataclass(frozen=True)
class RestartInfo:
    """News of an ICE restart under a connection: ``state`` is ``started``, then
    ``completed`` (the path moved; ``elapsed`` seconds after it started) or ``abandoned``;
    ``reason`` is ``application``, ``consent``, ``address-change`` or ``peer``."""

    generation: int
    reason: str
    state: str
    elapsed: float = 0.0


class DatagramSender(Protocol):
    """What a :class:`PeerConnection` needs from the agent under it."""

    def send_data(self, data: bytes, destination: tuple[str, int]) -> None:
        """Send one application datagram on the selected path."""

    def close(self) -> defer.Deferred[None]:
        """Stop the agent (sockets, timers)."""


class PeerConnection(Channel):
    """A datagram connection to a peer, made by an :class:`IceAgent <holepunch.ice.agent.IceAgent>`.

    Besides :class:`Channel`'s API: ``local_candidate`` and ``remote_candidate`` (the
    selected pair), ``on_path_changed`` (a relayed connection upgraded to a direct pair).
    ``rtt`` comes from the check that made the pair valid.
    """

    def __init__(
        self,
        agent: DatagramSender,
        method: str,
        local: tuple[str, int],
        remote: tuple[str, int],
        rtt: float | None,
        local_candidate: Any,
        remote_candidate: Any,
    ) -> None:
        super().__init__(method, local, remote, rtt)
        self._agent = agent
        self.local_candidate = local_candidate
        self.remote_candidate = remote_candidate
        self._restart_observers: list[Callable[[RestartInfo], None]] = []
        self.restarts: list[RestartInfo] = []
        """Every restart news so far, in order."""

    @property
    def agent(self) -> DatagramSender:
        """The agent that carries this connection."""
        return self._agent

    def transmit(self, data: bytes) -> None:
        self._agent.send_data(data, self.remote)

    def release(self) -> defer.Deferred[None]:
        return self._agent.close()

    def move_to(
        self,
        method: str,
        local: tuple[str, int],
        remote: tuple[str, int],
        rtt: float | None,
        local_candidate: Any,
        remote_candidate: Any,
        reason: str = "upgrade",
    ) -> None:
        """The path changed under the connection (``reason``: ``upgrade``, ``restart``,
        ``better-path``); path observers hear of it."""
        self.method = method
        self.local = local
        self.remote = remote
        self.rtt = rtt
        self.local_candidate = local_candidate
        self.remote_candidate = remote_candidate
        self.path_changed(reason)

    def restart_news(self, info: RestartInfo) -> None:
        """An ICE restart began or ended under the connection; restart observers hear."""
        self.restarts.append(info)
        for handler in list(self._restart_observers):
            try:
                handler(info)
            except Exception:
                _log.failure("restart observer raised")

    def on_restart(self, handler: Callable[[RestartInfo], None]) -> Callable[[], None]:
        """Call ``handler(info)`` (:class:`RestartInfo`) when an ICE restart begins and
        when it ends; the path change itself goes to ``on_path_changed``."""
        self._restart_observers.append(handler)
        return lambda: (
            self._restart_observers.remove(handler) if handler in self._restart_observers else None
        )

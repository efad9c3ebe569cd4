# -*- test-case-name: tests.integration.test_ice_negotiation -*-
"""TCP hole punching inside a negotiation: the mapping, the sync, the framed stream.

Each side learns its TCP mapping (STUN over TCP from the port it will dial from, see
:mod:`holepunch.punch.tcp`) and puts it in its offer or answer as an RFC 6544
simultaneous-open candidate (``... tcp ... typ srflx ... tcptype so``). When UDP is
blocked on either side (or ``TcpConfig.race`` asks for it) the offerer runs the
DCUtR-style sync over signaling, as ``ice-candidate`` payloads of the session::

    offerer -> {"session": S, "tcpSync": "ping"}
    answerer -> {"session": S, "tcpSync": "pong"}      (offerer measures the round trip)
    offerer -> {"session": S, "tcpSync": "go"}         (offerer dials at now + rtt/2 + lead,
                                                        answerer dials on receipt + lead)

The connection is a normal Twisted TCP transport (``stream.transport``); the
:class:`StreamConnection` around it carries datagrams RFC 4571-framed (each one after
its length in two bytes, network order, as RFC 6544 ICE-TCP does), so a caller gets the
same API as over UDP, with ``method`` ``tcp-hole-punch``, and QUIC packets travel on it
exactly as they do over UDP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure

from holepunch.addresses import ip_version
from holepunch.ice.candidate import Candidate, make_candidate
from holepunch.ice.connection import Channel
from holepunch.punch.tcp import (
    PunchedStream,
    TcpMapping,
    direct_mapping,
    simultaneous_open,
    sync_moment,
    tcp_mapping,
)

_log = Logger()

MAX_FRAME = 65535
"""The largest datagram an RFC 4571 frame holds (its length field has 16 bits)."""


class Rfc4571Framing(Int16StringReceiver):
    """Datagrams on a TCP stream, RFC 4571-framed: a 16-bit length, then the bytes.

    Frames that arrive before a :class:`StreamConnection` owns the protocol are kept
    for it; a frame over :data:`MAX_FRAME` cannot be sent (``sendString`` refuses it).
    """

    MAX_LENGTH = MAX_FRAME

    def __init__(self) -> None:
        self.owner: StreamConnection | None = None
        self.pending: list[bytes] = []

    def stringReceived(self, data: bytes) -> None:
        if self.owner is None:
            self.pending.append(data)
        else:
            self.owner.deliver(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.owner is not None:
            self.owner._lost("the TCP connection closed")


class StreamConnection(Channel):
    """A punched TCP connection with the :class:`Channel <holepunch.ice.connection.Channel>` API.

    ``stream`` is the :class:`PunchedStream <holepunch.punch.tcp.PunchedStream>` (its
    ``transport`` is an ordinary Twisted TCP transport); ``send`` frames each message as
    RFC 4571 does (:class:`Rfc4571Framing`).
    """

    def __init__(self, stream: PunchedStream, rtt: float | None) -> None:
        super().__init__("tcp-hole-punch", stream.local, stream.remote, rtt)
        self.stream = stream
        self.transport = stream.transport
        protocol = stream.protocol
        assert isinstance(protocol, Rfc4571Framing)
        self._protocol = protocol
        protocol.owner = self
        pending, protocol.pending = protocol.pending, []
        for data in pending:
            self.deliver(data)

    def transmit(self, data: bytes) -> None:
        self._protocol.sendString(data)

    def release(self) -> defer.Deferred[None]:
        self.transport.loseConnection()
        return defer.succeed(None)

    def _lost(self, reason: str) -> None:
        self.mark_closed(reason)


class TcpTrack:
    """The TCP side of one negotiation session.

    It offers one simultaneous-open candidate per family it has: IPv4 from the mapping
    that STUN over TCP measures (``stun_server``), IPv6 from ``ipv6_server`` the same
    way or, with none, from the address ``ipv6_host`` itself (IPv6 has firewalls but no
    NAT). Both sides then punch in the same family: IPv6 when both offered it, else
    IPv4 (:meth:`set_remotes`), so their SYNs cross.
    """

    def __init__(
        self,
        reactor: Any,
        stun_server: tuple[str, int] | None,
        *,
        interface: str = "",
        ipv6_host: str | None = None,
        ipv6_server: tuple[str, int] | None = None,
        lead: float = 0.1,
        attempts: int = 5,
        mapping_timeout: float = 3.0,
    ) -> None:
        self.reactor = reactor
        self.stun_server = stun_server
        self.interface = interface
        self.ipv6_host = ipv6_host
        self.ipv6_server = ipv6_server
        self.lead = lead
        self.attempts = attempts
        self.mapping_timeout = mapping_timeout
        self.mappings: dict[int, TcpMapping] = {}
        """Our mapping per family (4, 6), once learnt."""
        self.mapping: TcpMapping | None = None
        """The mapping of the family both sides punch in (see :meth:`set_remotes`)."""
        self.remote: tuple[str, int] | None = None
        self.remotes: list[tuple[str, int]] = []
        self.result: defer.Deferred[StreamConnection] = defer.Deferred(lambda _: self.cancel())
        self._punch: defer.Deferred[PunchedStream] | None = None
        self._ping_sent: float | None = None
        self.rtt: float | None = None
        self.started = False
        self.cancelled = False
        """:meth:`cancel` was called: no punch starts after it (a ``tcpSync`` that comes
        once another path won is ignored)."""
        self.on_dial: Callable[[], None] | None = None
        """Called once, when the punch starts (both sides dial)."""
        self.on_mapping: Callable[[int], None] | None = None
        """Called with the family (4, 6) of each mapping as it is learnt: a STUN server
        answered over TCP."""

    async def learn_mapping(self) -> TcpMapping | None:
        """Our TCP mappings (each family logged and skipped if it cannot be learnt);
        returns the one punched from, as far as known yet."""
        learning = []
        if self.stun_server is not None:
            learning.append(self._learn(4, self.stun_server, self.interface))
        if self.ipv6_server is not None:
            learning.append(self._learn(6, self.ipv6_server, self.ipv6_host or ""))
        elif self.ipv6_host is not None:
            try:
                self.mappings[6] = direct_mapping(self.ipv6_host)
            except Exception as e:
                _log.info("no IPv6 TCP port on {host}: {err}", host=self.ipv6_host, err=e)
        await defer.gatherResults([defer.ensureDeferred(d) for d in learning])
        self._choose()
        return self.mapping

    async def _learn(self, family: int, server: tuple[str, int], interface: str) -> None:
        try:
            self.mappings[family] = await tcp_mapping(
                self.reactor, server, interface=interface, timeout=self.mapping_timeout
            )
        except Exception as e:
            _log.info("no TCP mapping from {server}: {err}", server=server, err=e)
            return
        if self.on_mapping is not None:
            self.on_mapping(family)

    def candidates(self) -> list[Candidate]:
        """Our RFC 6544 simultaneous-open candidates, IPv6 first."""
        result = []
        for family in (6, 4):
            mapping = self.mappings.get(family)
            if mapping is None:
                continue
            server = self.stun_server if family == 4 else self.ipv6_server
            result.append(
                make_candidate(
                    "srflx" if server is not None else "host",
                    mapping.mapped[0],
                    mapping.mapped[1],
                    base=mapping.local if server is not None else None,
                    transport="tcp",
                    tcptype="so",
                    server=f"tcp:{server[0]}:{server[1]}" if server is not None else "",
                )
            )
        return result

    def set_remotes(self, addresses: list[tuple[str, int]]) -> None:
        """The peer's simultaneous-open candidates: punch to its IPv6 one if we both
        have IPv6, else to its IPv4 one (each side decides alike from what both
        offered)."""
        self.remotes = list(addresses)
        self._choose()

    def _choose(self) -> None:
        if self.started:
            return
        for family in (6, 4):
            mine = self.mappings.get(family)
            theirs = next((a for a in self.remotes if ip_version(a[0]) == family), None)
            if mine is not None and theirs is not None:
                self.mapping, self.remote = mine, theirs
                return
        self.mapping, self.remote = self.mappings.get(4) or self.mappings.get(6), None

    def sync(self, send: Callable[[dict[str, Any]], Any], message: str) -> None:
        """Handle a ``tcpSync`` message from the peer (``send`` relays ours)."""
        now = self.reactor.seconds()
        if message == "ping":
            send({"tcpSync": "pong"})
        elif message == "pong" and self._ping_sent is not None and not self.started:
            self.rtt = now - self._ping_sent
            send({"tcpSync": "go"})
            self.dial(sync_moment(now, self.rtt, self.lead))
        elif message == "go" and not self.started:
            self.dial(now + self.lead)

    def begin(self, send: Callable[[dict[str, Any]], Any]) -> None:
        """Offerer: start the sync (ping)."""
        if self.cancelled:
            return
        self._ping_sent = self.reactor.seconds()
        send({"tcpSync": "ping"})

    def dial(self, start_at: float) -> None:
        """Punch toward the peer's mapping at ``start_at``."""
        if self.cancelled or self.started or self.mapping is None or self.remote is None:
            return
        self.started = True
        if self.on_dial is not None:
            self.on_dial()
        _log.info(
            "TCP punch from port {port} to {remote} in {wait:.0f} ms",
            port=self.mapping.local[1],
            remote=self.remote,
            wait=(start_at - self.reactor.seconds()) * 1000,
        )
        v6 = ip_version(self.remote[0]) == 6
        self._punch = simultaneous_open(
            self.reactor,
            self.mapping.local[1],
            self.remote,
            start_at=start_at,
            protocol_factory=Factory.forProtocol(Rfc4571Framing),
            attempts=self.attempts,
            interface=self.mapping.local[0] if v6 else self.interface,
        )

        def won(stream: PunchedStream) -> None:
            if not self.result.called:
                self.result.callback(StreamConnection(stream, self.rtt))
            else:
                stream.transport.loseConnection()

        def lost(failure: Failure) -> None:
            if not self.result.called:
                self.result.errback(failure)

        self._punch.addCallbacks(won, lost)

    def cancel(self) -> None:
        """Stop the punch under way, if any; none starts after this."""
        self.cancelled = True
        if self._punch is not None and not self._punch.called:
            self._punch.cancel()

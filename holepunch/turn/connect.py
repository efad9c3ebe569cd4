# -*- test-case-name: tests.test_turn_coturn -*-
"""Sockets and connections for TURN allocations, and failover across several servers.

The wiring around :class:`TurnAllocation <holepunch.turn.client.TurnAllocation>`, which itself never
touches a socket:

- :func:`open_allocation` gives an allocation its own transport, as the server's URI says:
  a UDP socket (``turn:...?transport=udp``), a TCP connection (``transport=tcp``) or TLS
  over TCP (``turns:``; the server's certificate is checked against its name with
  ``service_identity``, through ``twisted.internet.ssl.optionsForClientTLS``). Over a
  stream, STUN messages and ChannelData are framed by
  :class:`StreamFramer <holepunch.stun.framing.StreamFramer>` (RFC 8489 6.2.2, RFC 8656 12.5), and a
  300 answer opens a connection to the alternate server (once). Closing the allocation
  closes its socket or connection.
- :func:`allocate_first` tries several servers in order, each for at most ``timeout``
  seconds, and returns the first allocation granted: a dead server delays the next one by
  exactly its timeout, no more (sequential, not staggered: the second server is only
  contacted when the first has failed or timed out, so a working first server costs
  nothing extra and nothing is left to cancel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from holepunch.stun.client import DEFAULT_POLICY, RetransmissionPolicy, resolve_server
from holepunch.stun.framing import StreamFramer
from holepunch.stun.wire import Address, StunDecodeError
from holepunch.turn.client import TurnAllocation
from holepunch.turn.config import TurnServer
from holepunch.turn.families import AddressFamily, FamilyRequest, family_of
from holepunch.turn.model import (
    DEFAULT_TIMERS,
    SOFTWARE,
    NoTurnServerAvailable,
    TurnError,
    TurnRedirect,
    TurnTimeoutError,
    TurnTimers,
)

_log = Logger()

_STREAM_CLOSE_GRACE = 2.0


def _resolve_reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        return default_reactor
    return reactor


class TurnDatagramProtocol(DatagramProtocol):
    """A UDP socket that carries one allocation's traffic."""

    def __init__(self) -> None:
        self.allocation: TurnAllocation | None = None

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        if self.transport is None:
            raise OSError("TURN socket closed")
        self.transport.write(data, address)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self.allocation is not None:
            self.allocation.datagram_received(datagram, (addr[0], addr[1]))


class TurnStreamProtocol(Protocol):
    """A TCP or TLS connection to a TURN server that carries one allocation."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.framer = StreamFramer()
        self.allocation: TurnAllocation | None = None
        self.lost_reason: str | None = None
        self._closed_waiters: list[Deferred[None]] = []
        self._abort_timer: IDelayedCall | None = None

    def attach(self, allocation: TurnAllocation) -> None:
        """Feed ``allocation`` what arrives (and tell it if the connection is gone)."""
        self.allocation = allocation
        if self.lost_reason is not None:
            allocation.connection_lost(self.lost_reason)

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        if self.transport is None or self.lost_reason is not None:
            raise OSError("TURN connection closed")
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except StunDecodeError as e:
            _log.warn("TURN stream out of step ({err}): closing it", err=e)
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        for frame in frames:
            if self.allocation is not None:
                self.allocation.datagram_received(frame, self.allocation.server)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost_reason = reason.getErrorMessage() if reason is not None else "closed"
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._abort_timer = None
        if self.allocation is not None:
            self.allocation.connection_lost(self.lost_reason)
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def close(self) -> Deferred[None]:
        """Close the connection; fires once it is closed (aborted after 2 s at most)."""
        if self.lost_reason is not None or self.transport is None:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closed_waiters.append(waiter)
        if self._abort_timer is None:
            transport: Any = self.transport
            transport.loseConnection()
            if self.lost_reason is None:
                self._abort_timer = self.clock.callLater(
                    _STREAM_CLOSE_GRACE, transport.abortConnection
                )
        return waiter


async def _open(
    reactor: Any,
    server: TurnServer,
    trust_root: Any,
    interface: str,
    options: dict[str, Any],
) -> TurnAllocation:
    if server.transport == "udp":
        address = await resolve_server(reactor, server.host, server.port)
        datagram = TurnDatagramProtocol()
        if not interface and family_of(address.host) is AddressFamily.IPV6:
            interface = "::"  # a server at an IPv6 address is reached from an IPv6 socket
        port = reactor.listenUDP(0, datagram, interface=interface)
        allocation = TurnAllocation(
            address,
            datagram.write,
            reactor,
            username=server.username,
            password=server.password,
            on_close=port.stopListening,
            **options,
        )
        datagram.allocation = allocation
        try:
            await allocation.allocate()
        except BaseException:
            await allocation.when_closed()
            raise
        return allocation

    host, port_number = server.host, server.port
    for attempt in range(2):
        endpoint: Any = HostnameEndpoint(reactor, host, port_number)
        if server.transport == "tls":
            tls = optionsForClientTLS(server.name_to_check, trustRoot=trust_root)
            endpoint = wrapClientTLS(tls, endpoint)
        try:
            stream: TurnStreamProtocol = await endpoint.connect(
                Factory.forProtocol(lambda: TurnStreamProtocol(reactor))
            )
        except (ConnectError, DNSLookupError) as e:
            raise TurnError(0, f"cannot connect to TURN server {host}:{port_number}: {e}") from e
        assert stream.transport is not None
        peer: Any = stream.transport.getPeer()
        allocation = TurnAllocation(
            Address(peer.host, peer.port),
            stream.write,
            reactor,
            username=server.username,
            password=server.password,
            stream=True,
            follow_redirect=attempt == 0,
            on_close=stream.close,
            **options,
        )
        stream.attach(allocation)
        try:
            await allocation.allocate()
        except TurnRedirect as redirect:
            await allocation.when_closed()
            host, port_number = redirect.alternate.host, redirect.alternate.port
            _log.info("TURN server {s} redirects to {h}:{p}", s=server, h=host, p=port_number)
            continue
        except BaseException:
            await allocation.when_closed()
            raise
        allocation.stats.redirects = attempt
        return allocation
    raise AssertionError("unreachable: a redirected allocation does not follow another")


def open_allocation(
    server: TurnServer,
    *,
    reactor: Any = None,
    timeout: float | None = 10.0,
    trust_root: Any = None,
    interface: str = "",
    lifetime: int | None = None,
    timers: TurnTimers = DEFAULT_TIMERS,
    policy: RetransmissionPolicy = DEFAULT_POLICY,
    software: str | None = SOFTWARE,
    families: FamilyRequest = None,
) -> Deferred[TurnAllocation]:
    """Open a socket or connection to ``server`` and allocate there.

    Fires with the :class:`TurnAllocation` (allocated; its ``close()`` deallocates and
    closes the socket). Fails with the allocation's errors, or :class:`TurnTimeoutError`
    after ``timeout`` seconds (None: only the transactions' own limits, 39.5 s over UDP).
    Cancelling it, or the timeout, closes whatever was opened before it fails.

    :param trust_root: for ``turns:``, what signs the server's certificate (a
        ``twisted.internet.ssl.Certificate``, or None for the platform's trust store).
    :param interface: the local address for the UDP socket (``""``: all, of the
        server's family: ``0.0.0.0`` or ``::``).
    :param families: the families of relayed address to ask for
        (:class:`TurnAllocation`'s ``families``: ``["ipv6"]``, ``"auto"``, ...).
    """
    reactor = _resolve_reactor(reactor)
    options: dict[str, Any] = {
        "lifetime": lifetime,
        "timers": timers,
        "policy": policy,
        "software": software,
        "families": families,
    }
    d = defer.ensureDeferred(_open(reactor, server, trust_root, interface, options))
    if timeout is not None:

        def timed_out(result: object, seconds: float) -> Failure:
            return Failure(TurnTimeoutError(f"{server}: no allocation within {seconds:g} s"))

        d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
    return d


def allocate_first(
    servers: Sequence[TurnServer],
    *,
    reactor: Any = None,
    timeout: float = 5.0,
    open_one: Callable[[TurnServer], Deferred[TurnAllocation]] | None = None,
    trust_root: Any = None,
    interface: str = "",
    lifetime: int | None = None,
    timers: TurnTimers = DEFAULT_TIMERS,
    policy: RetransmissionPolicy = DEFAULT_POLICY,
    families: FamilyRequest = None,
) -> Deferred[TurnAllocation]:
    """Allocate on the first of ``servers`` that grants one, trying them in order.

    Each server gets at most ``timeout`` seconds (connecting, authenticating, allocating);
    then its attempt is cancelled, which closes its socket, and the next server is tried.
    A server that fails sooner (refused credentials, connection refused) hands over at
    once. Fails with :class:`NoTurnServerAvailable` naming each server's failure.

    :param open_one: how to allocate on one server; by default :func:`open_allocation`
        with the other arguments. The ICE agent passes a function that runs the
        allocation on its own socket. Its Deferred must free what it holds when cancelled.
    """
    reactor = _resolve_reactor(reactor)

    def default_open(server: TurnServer) -> Deferred[TurnAllocation]:
        return open_allocation(
            server,
            reactor=reactor,
            timeout=None,
            trust_root=trust_root,
            interface=interface,
            lifetime=lifetime,
            timers=timers,
            policy=policy,
            families=families,
        )

    opener = open_one or default_open

    async def run() -> TurnAllocation:
        failures: dict[str, str] = {}
        for server in servers:
            attempt = opener(server)
            attempt.addTimeout(timeout, reactor)
            try:
                return await attempt
            except defer.TimeoutError:
                failures[str(server)] = f"no allocation within {timeout:g} s"
            except CancelledError:
                raise
            except Exception as e:
                failures[str(server)] = str(e) or type(e).__name__
            _log.info("TURN server {s} failed: {why}", s=server, why=failures[str(server)])
        raise NoTurnServerAvailable(failures)

    return defer.ensureDeferred(run())

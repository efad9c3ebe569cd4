# -*- test-case-name: tests.integration.test_tcp_punch -*-
"""TCP hole punching by simultaneous open: RFC 6544 "so" candidates, DCUtR timing.

RFC 6544 (TCP candidates with ICE) has three kinds of TCP candidate: active, passive and
simultaneous-open (``tcptype so``). This module implements the mechanism behind the last
one: both peers dial each other at the same moment *from the same local port whose NAT
mapping they advertised*. Each outgoing SYN opens the sender's NAT for the peer's address
and port; the two SYNs cross, and TCP's simultaneous open (RFC 9293 section 3.5) turns
them into one connection although neither side listens.

- :func:`tcp_mapping` learns the server-reflexive TCP address of a local port: a STUN
  Binding over TCP (RFC 8489 6.2.2) sent from a socket bound with ``SO_REUSEADDR`` and
  ``SO_REUSEPORT``, so that the same port can dial the peer afterwards: the mapping is
  only worth advertising if the dial reuses the port.
- :func:`sync_moment` is the timing rule of libp2p's DCUtR ("Direct Connection
  Upgrade through Relay"): the initiator, having measured the signaling round trip,
  tells the peer "dial now" and dials itself one half round trip later, when the
  message arrives; both add the same ``lead`` so neither dials before the other is
  ready.
- :func:`simultaneous_open` dials at that moment and retries: a SYN that reaches the
  peer's host before the peer's own SYN left (possible through full-cone NATs and for
  hosts without a NAT) draws a RST and kills the attempt. It can also accept the peer's
  SYN on a listening socket sharing the port. The first connection to complete wins;
  the result is a :class:`PunchedStream` around an ordinary Twisted TCP transport
  (``reactor.adoptStreamConnection``), ``method == "tcp-hole-punch"``.

Sockets are plain non-blocking ``socket`` objects watched by the reactor (the connect
completes when the socket becomes writable, as in ``twisted.internet.tcp``); only the
winner is adopted and given to the caller's protocol factory. See docs/tcp-hole-punching.md
for the timing, the retry rule, the measurements behind ``listen=True`` and the limits.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocolFactory,
    IReadDescriptor,
    ITCPTransport,
    IWriteDescriptor,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from holepunch.stun.framing import StreamFramer
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.wire import Attr, MessageClass, StunError

_log = Logger()

METHOD = "tcp-hole-punch"

HostPort = tuple[str, int]


class TcpPunchError(Exception):
    """TCP hole punching failed at ``stage`` (``bind``, ``mapping``, ``connect``, ``adopt``)."""

    def __init__(self, stage: str, message: str, attempts: tuple[AttemptOutcome, ...] = ()) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message
        self.attempts = attempts


@dataclass(frozen=True)
class TcpMapping:
    """A local TCP port and the address the STUN server saw it as (its NAT mapping)."""

    local: HostPort
    mapped: HostPort


@dataclass(frozen=True)
class AttemptOutcome:
    """How one dial ended: ``connected``, ``refused``, ``timeout``, ``cancelled``, ...

    ``started`` and ``ended`` are reactor times.
    """

    number: int
    started: float
    ended: float
    result: str

    def __str__(self) -> str:
        return f"#{self.number} {self.result} after {self.ended - self.started:.3f}s"


@dataclass(frozen=True)
class PunchedStream:
    """A TCP connection made by hole punching.

    ``protocol`` is the one the caller's factory built; ``transport`` its ordinary Twisted
    TCP transport (``ITCPTransport``). ``local`` and ``remote`` are the connection's
    addresses as this host sees them (behind a NAT ``local`` is the private address).
    ``via`` is ``connect`` (our dial completed, usually by simultaneous open) or
    ``accept`` (the peer's SYN reached our listening socket). ``attempts`` lists our dials;
    ``started`` is the agreed moment and ``connected`` when the connection was ready.
    """

    protocol: Protocol
    transport: ITCPTransport
    local: HostPort
    remote: HostPort
    via: str
    attempts: tuple[AttemptOutcome, ...]
    started: float
    connected: float
    method: str = METHOD


def sync_moment(now: float, rtt: float, lead: float = 0.1) -> float:
    """When the initiator dials: ``now + rtt / 2 + lead`` (DCUtR's rule, plus a lead).

    The initiator sends "dial" at ``now`` over signaling whose measured round trip is
    ``rtt``; the message arrives about ``rtt / 2`` later, and the responder dials
    ``lead`` seconds after receiving it. The initiator dials at the returned time, so
    both SYNs leave together to within the asymmetry of the signaling path. ``lead``
    absorbs scheduling jitter (and the responder's time to set up its sockets).
    """
    if rtt < 0 or lead < 0:
        raise ValueError("rtt and lead must not be negative")
    return now + rtt / 2 + lead


def reusable_socket(interface: str, port: int, family: int = socket.AF_INET) -> socket.socket:
    """A non-blocking TCP socket with SO_REUSEADDR and SO_REUSEPORT, bound to (interface, port).

    SO_REUSEPORT lets several sockets share the port (the STUN connection, each dial and
    the listener); SO_REUSEADDR lets it be bound while an earlier connection from it is
    in TIME_WAIT.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((interface or _any_address(family), port))
    except BaseException:
        sock.close()
        raise
    return sock


def _family(host: str) -> int:
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        raise ValueError(f"not an IP address: {host!r}") from None
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _any_address(family: int) -> str:
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _describe_error(code: int) -> str:
    names = {
        errno.ECONNREFUSED: "refused",
        errno.ETIMEDOUT: "timeout",
        errno.ECONNRESET: "reset",
        errno.EHOSTUNREACH: "host unreachable",
        errno.ENETUNREACH: "network unreachable",
        errno.EADDRNOTAVAIL: "address in use",  # this 4-tuple is taken (e.g. by an accept)
        errno.EADDRINUSE: "address in use",
    }
    return names.get(code, os.strerror(code))


@implementer(IWriteDescriptor)
class _PendingConnect:
    """A non-blocking connect from a bound socket; reports once, through ``done``.

    ``done(sock, None)`` hands over the connected socket; ``done(None, reason)`` says how
    it failed (the socket is closed then).
    """

    def __init__(
        self,
        reactor: Any,
        sock: socket.socket,
        remote: HostPort,
        done: Callable[[socket.socket | None, str | None], None],
    ) -> None:
        self._reactor = reactor
        self._sock: socket.socket | None = sock
        self._remote = remote
        self._done = done
        self._watching = False

    def start(self) -> None:
        assert self._sock is not None
        code = self._sock.connect_ex(self._remote)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            self._finish(None, _describe_error(code))
            return
        self._watching = True
        self._reactor.addWriter(self)

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def logPrefix(self) -> str:
        return "tcp-punch-connect"

    def doWrite(self) -> None:
        self._unwatch()
        if self._sock is None:
            return
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._finish(None, _describe_error(code))
        else:
            sock, self._sock = self._sock, None
            self._done(sock, None)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw an error or hangup on the socket (a refused connect, usually)
        # and has already stopped watching it.
        self._watching = False
        if self._sock is None:
            return
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._finish(None, _describe_error(code) if code else reason.getErrorMessage())

    def abort(self) -> None:
        """Stop without reporting; closes the socket."""
        self._unwatch()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._reactor.removeWriter(self)

    def _finish(self, sock: socket.socket | None, reason: str | None) -> None:
        self._unwatch()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._done(sock, reason)


@implementer(IReadDescriptor)
class _Acceptor:
    """A listening socket that hands over connections from one host (any port)."""

    def __init__(
        self,
        reactor: Any,
        sock: socket.socket,
        peer_host: str,
        accepted: Callable[[socket.socket], None],
    ) -> None:
        self._reactor = reactor
        self._sock: socket.socket | None = sock
        self._peer_host = peer_host
        self._accepted = accepted

    def start(self) -> None:
        assert self._sock is not None
        self._sock.listen(8)
        self._reactor.addReader(self)

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def logPrefix(self) -> str:
        return "tcp-punch-listen"

    def doRead(self) -> None:
        while self._sock is not None:
            try:
                conn, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                _log.debug("accept failed: {error}", error=e)
                return
            if not _same_host(address[0], self._peer_host):
                _log.debug("refusing a connection from {address}", address=address)
                conn.close()
                continue
            conn.setblocking(False)
            self._accepted(conn)

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._reactor.removeReader(self)
            self._sock.close()
            self._sock = None


@implementer(IProtocolFactory)
class _CapturingFactory:
    """Builds through ``factory`` and remembers the protocol it built."""

    def __init__(self, factory: IProtocolFactory) -> None:
        self.factory = factory
        self.built: Protocol | None = None

    def buildProtocol(self, addr: Any) -> Protocol | None:
        self.built = self.factory.buildProtocol(addr)  # type: ignore[assignment]
        return self.built

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


def _adopt(reactor: Any, sock: socket.socket, factory: IProtocolFactory) -> Protocol:
    """Give a connected socket to the reactor as a TCP transport; returns the protocol."""
    capture = _CapturingFactory(factory)
    try:
        reactor.adoptStreamConnection(sock.fileno(), sock.family, capture)
    finally:
        sock.close()  # the reactor has its own duplicate of the descriptor
    if capture.built is None:
        raise TcpPunchError("adopt", "the protocol factory built no protocol")
    return capture.built


def _host_port(address: Any) -> HostPort:
    return (str(address.host), int(address.port))


class _Punch:
    """The state of one :func:`simultaneous_open`."""

    def __init__(
        self,
        reactor: Any,
        local_port: int,
        remote: HostPort,
        start_at: float,
        attempts: int,
        interval: float,
        connect_timeout: float,
        interface: str,
        protocol_factory: IProtocolFactory,
        listen: bool,
    ) -> None:
        self.reactor = reactor
        self.local_port = local_port
        self.remote = remote
        self.start_at = start_at
        self.max_attempts = attempts
        self.interval = interval
        self.connect_timeout = connect_timeout
        self.interface = interface
        self.factory = protocol_factory
        self.listen = listen
        self.family = _family(remote[0])
        self.deferred: Deferred[PunchedStream] = Deferred(self._cancelled)
        self.outcomes: list[AttemptOutcome] = []
        self._timer: IDelayedCall | None = None
        self._pending: _PendingConnect | None = None
        self._attempt_started = 0.0
        self._acceptor: _Acceptor | None = None
        self._finished = False

    # -- lifecycle --

    def start(self) -> None:
        if self.listen:
            try:
                sock = reusable_socket(self.interface, self.local_port, self.family)
            except OSError as e:
                self._fail("bind", f"cannot listen on port {self.local_port}: {e}")
                return
            self.local_port = sock.getsockname()[1]  # the kernel's choice if it was 0
            self._acceptor = _Acceptor(self.reactor, sock, self.remote[0], self._accepted)
            self._acceptor.start()
        self._schedule(0)

    def _schedule(self, number: int) -> None:
        """Dial attempt ``number`` (0-based) at ``start_at + number * interval``, or now."""
        at = self.start_at + number * self.interval
        delay = max(0.0, at - self.reactor.seconds())
        self._timer = self.reactor.callLater(delay, self._dial)

    def _dial(self) -> None:
        self._timer = None
        number = len(self.outcomes) + 1
        self._attempt_started = self.reactor.seconds()
        try:
            sock = reusable_socket(self.interface, self.local_port, self.family)
        except OSError as e:
            self._attempt_ended(f"bind failed: {e.strerror or e}")
            return
        self.local_port = sock.getsockname()[1]  # later dials reuse the first one's port
        _log.debug(
            "dial #{n} from port {port} to {remote}",
            n=number,
            port=self.local_port,
            remote=self.remote,
        )
        self._pending = _PendingConnect(self.reactor, sock, self.remote, self._dial_done)
        self._timer = self.reactor.callLater(self.connect_timeout, self._dial_timed_out)
        self._pending.start()

    def _dial_timed_out(self) -> None:
        self._timer = None
        if self._pending is not None:
            self._pending.abort()
            self._pending = None
        self._attempt_ended("timeout")

    def _dial_done(self, sock: socket.socket | None, reason: str | None) -> None:
        self._pending = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if sock is None:
            self._attempt_ended(reason or "failed")
            return
        self._record("connected")
        self._won(sock, "connect")

    def _accepted(self, sock: socket.socket) -> None:
        if self._finished:
            sock.close()
            return
        if self._pending is not None:
            self._record("superseded by an accepted connection")
        self._won(sock, "accept")

    def _record(self, result: str) -> None:
        number = len(self.outcomes) + 1
        outcome = AttemptOutcome(number, self._attempt_started, self.reactor.seconds(), result)
        self.outcomes.append(outcome)
        _log.debug("TCP punch to {remote}: {outcome}", remote=self.remote, outcome=outcome)

    def _attempt_ended(self, result: str) -> None:
        self._record(result)
        if len(self.outcomes) < self.max_attempts:
            self._schedule(len(self.outcomes))
            return
        summary = ", ".join(str(o) for o in self.outcomes)
        self._fail(
            "connect",
            f"{len(self.outcomes)} attempts from port {self.local_port} to "
            f"{self.remote[0]}:{self.remote[1]} failed: {summary}",
        )

    # -- endings --

    def _release(self) -> None:
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending is not None:
            self._pending.abort()
            self._pending = None
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None

    def _won(self, sock: socket.socket, via: str) -> None:
        self._release()
        connected = self.reactor.seconds()
        try:
            protocol = _adopt(self.reactor, sock, self.factory)
        except Exception as e:
            self.deferred.errback(
                e if isinstance(e, TcpPunchError) else TcpPunchError("adopt", repr(e))
            )
            return
        transport = cast(ITCPTransport, protocol.transport)
        self.deferred.callback(
            PunchedStream(
                protocol=protocol,
                transport=transport,
                local=_host_port(transport.getHost()),
                remote=_host_port(transport.getPeer()),
                via=via,
                attempts=tuple(self.outcomes),
                started=self.start_at,
                connected=connected,
            )
        )

    def _fail(self, stage: str, message: str) -> None:
        self._release()
        self.deferred.errback(TcpPunchError(stage, message, tuple(self.outcomes)))

    def _cancelled(self, _: Deferred[PunchedStream]) -> None:
        if self._pending is not None:
            self._record("cancelled")
        self._release()


def simultaneous_open(
    reactor: Any,
    local_port: int,
    remote: HostPort,
    *,
    start_at: float,
    protocol_factory: IProtocolFactory,
    attempts: int = 5,
    interval: float = 0.2,
    connect_timeout: float = 1.0,
    interface: str = "",
    listen: bool = True,
) -> Deferred[PunchedStream]:
    """Dial ``remote`` from ``local_port`` at ``start_at`` and retry; fire with a PunchedStream.

    ``start_at`` is a ``reactor.seconds()`` time agreed with the peer (see
    :func:`sync_moment`); ``local_port`` is the port :func:`tcp_mapping` mapped (0: the
    kernel picks one, and every dial reuses it). Dial ``n`` (0-based) starts at
    ``start_at + n * interval``, or as soon as dial ``n - 1`` has failed if that is later;
    a dial fails when it is refused (the peer's host answered our SYN with a RST), on
    another socket error, or after ``connect_timeout`` seconds. There are at most
    ``attempts`` dials.

    With ``listen`` a socket listening on ``local_port`` (SO_REUSEPORT) also accepts
    connections from ``remote``'s host, from any port: when the peer's SYN reaches us
    before ours has left (full-cone NAT, no NAT) it completes there instead of drawing a
    RST, and a peer behind a symmetric NAT can still reach a cone or open host. A SYN
    that matches a dialling socket's 4-tuple still goes to that socket (simultaneous
    open), so listening never takes a connection away from a dial.

    The first connection to complete is adopted by the reactor with
    ``protocol_factory``; every other socket and timer is closed, as they are when the
    Deferred is cancelled. Failure: :class:`TcpPunchError` (stage ``connect``) listing
    every dial and how it ended, or stage ``bind`` if the port cannot be listened on.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    punch = _Punch(
        reactor,
        local_port,
        remote,
        start_at,
        attempts,
        interval,
        connect_timeout,
        interface,
        protocol_factory,
        listen,
    )
    punch.start()
    return punch.deferred


# -- the TCP mapping --------------------------------------------------------


class _BindingOverStream(Protocol):
    """Sends one Binding request, reads the response, closes; ``done`` fires on close."""

    def __init__(self, request: StunMessage) -> None:
        self.request = request
        self.framer = StreamFramer(max_size=4096)
        self.done: Deferred[StunMessage] = Deferred()
        self.response: StunMessage | None = None
        self.error: Exception | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(encode(self.request, fingerprint=True))

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self.response is not None or self.error is not None:
            return
        try:
            frames = self.framer.feed(data)
            for frame in frames:
                message = decode(frame)
                if message.transaction_id == self.request.transaction_id:
                    self.response = message
                    break
        except StunError as e:
            self.error = e
        if self.response is not None or self.error is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.done.called:
            return
        if self.response is not None:
            self.done.callback(self.response)
        elif self.error is not None:
            self.done.errback(self.error)
        else:
            self.done.errback(StunError("the server closed the connection without answering"))


@implementer(IProtocolFactory)
class _OneProtocol:
    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


def _mapping(
    reactor: Any, stun_server: HostPort, local_port: int, interface: str
) -> Deferred[TcpMapping]:
    """One Binding over TCP from a reusable socket; cancellable at every step."""
    family = _family(stun_server[0])
    sock = reusable_socket(interface, local_port, family)
    protocol = _BindingOverStream(StunMessage.request())
    pending: list[_PendingConnect] = []

    def cancel(_: Deferred[TcpMapping]) -> None:
        for p in pending:
            p.abort()
        if protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]

    result: Deferred[TcpMapping] = Deferred(cancel)

    def connected(conn: socket.socket | None, reason: str | None) -> None:
        pending.clear()
        if conn is None:
            result.errback(
                TcpPunchError(
                    "mapping", f"connecting to {stun_server[0]}:{stun_server[1]}: {reason}"
                )
            )
            return
        local = conn.getsockname()
        try:
            _adopt(reactor, conn, _OneProtocol(protocol))
        except Exception as e:
            result.errback(TcpPunchError("mapping", f"adopting the STUN connection: {e!r}"))
            return
        protocol.done.addCallbacks(answered, failed, callbackArgs=((local[0], local[1]),))

    def answered(message: StunMessage, local: HostPort) -> None:
        if result.called:
            return
        if message.message_class != MessageClass.SUCCESS:
            code = message.get_error_code()
            result.errback(TcpPunchError("mapping", f"the STUN server answered with error {code}"))
            return
        mapped = message.get_address(Attr.XOR_MAPPED_ADDRESS) or message.get_address(
            Attr.MAPPED_ADDRESS
        )
        if mapped is None:
            result.errback(TcpPunchError("mapping", "the response has no mapped address"))
            return
        result.callback(TcpMapping(local=local, mapped=(mapped.host, mapped.port)))

    def failed(f: Failure) -> None:
        if not result.called:
            result.errback(TcpPunchError("mapping", f.getErrorMessage()))

    connect = _PendingConnect(reactor, sock, stun_server, connected)
    pending.append(connect)
    connect.start()
    return result


def direct_mapping(host: str) -> TcpMapping:
    """A TCP port on ``host`` that no NAT translates (IPv6: firewalls, no NAT): the
    port is picked by binding a reusable socket, which is closed again, and the mapping
    is the local address itself. Raises :class:`TcpPunchError` (stage ``bind``)."""
    try:
        sock = reusable_socket(host, 0, _family(host))
    except (OSError, ValueError) as e:
        raise TcpPunchError("bind", f"cannot bind a TCP port on {host}: {e}") from e
    with sock:
        port = sock.getsockname()[1]
    return TcpMapping((host, port), (host, port))


async def tcp_mapping(
    reactor: Any,
    stun_server: HostPort,
    *,
    local_port: int = 0,
    interface: str = "",
    timeout: float = 5.0,
) -> TcpMapping:
    """The NAT mapping of a TCP port: one STUN Binding over TCP from that port.

    ``stun_server`` is an IP address (resolve names first) and the server's TCP port. The
    socket is bound to ``(interface, local_port)`` with SO_REUSEADDR and
    SO_REUSEPORT (port 0: the kernel picks; ``local`` in the result records it), so that
    :func:`simultaneous_open` can dial from the same port afterwards. The STUN
    connection is closed before this returns. Raises :class:`TcpPunchError` (stage
    ``mapping``, or ``bind`` if the port cannot be bound) on error or after ``timeout``.
    """
    try:
        d = _mapping(reactor, stun_server, local_port, interface)
    except OSError as e:
        raise TcpPunchError("bind", f"cannot bind TCP port {local_port}: {e}") from e
    d.addTimeout(timeout, reactor)
    try:
        return await d
    except defer.TimeoutError:
        raise TcpPunchError(
            "mapping",
            f"no STUN answer over TCP from {stun_server[0]}:{stun_server[1]} within {timeout}s",
        ) from None

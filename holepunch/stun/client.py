# -*- test-case-name: tests.unit.test_stun_client -*-
"""STUN client transactions (RFC 8489 section 6.2), over UDP and TCP.

- :class:`TransactionTable` is the transaction layer, with no socket of its own: give it a
  ``send(data, address)`` function and a clock, feed it incoming datagrams. It
  retransmits over UDP as RFC 8489 6.2.1 says: the first retransmission after RTO, each
  later one after twice the previous interval, ``Rc`` sends in all, then a last wait of
  ``Rm`` times RTO (defaults 500 ms, 7, 16: a transaction gives up after 39.5 s). The ICE
  agent puts one on its own socket, so its checks share the socket with STUN.
- :class:`StunClientProtocol` is a UDP socket that carries a table; :func:`listen_stun`
  opens one. :meth:`StunClientProtocol.binding` runs a Binding transaction and decodes
  what RFC 5780 needs from the answer.
- :func:`binding_over_tcp` runs a Binding over TCP (RFC 8489 6.2.2: no retransmission,
  one timeout ``Ti``, 39.5 s by default).
- :func:`first_answer` asks several servers at once and returns the first answer, or
  fails with :class:`NoStunServerAnswered` naming each server's failure.

Cancelling any returned Deferred stops its retransmissions and forgets the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import DNSLookupError
from twisted.internet.error import TimeoutError as TwistedTimeoutError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHostResolution,
    IReactorTime,
    IResolutionReceiver,
)
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from holepunch.addresses import ip_version, split_host_port
from holepunch.stun.framing import StreamFramer, is_stun
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.transactions import (
    DEFAULT_POLICY,
    ClientTransactions,
    RetransmissionPolicy,
    StunErrorResponse,
    StunResponse,
    StunTimeout,
    TransactionOutcome,
)
from holepunch.stun.wire import Address, Attr, MessageClass, StunDecodeError, StunError

_log = Logger()


class NoStunServerAnswered(StunError):
    """None of the STUN servers answered; ``failures`` maps each server to its reason."""

    def __init__(self, failures: dict[str, str]) -> None:
        detail = "; ".join(f"{server}: {why}" for server, why in failures.items())
        super().__init__(f"no STUN server answered ({detail or 'no servers given'})")
        self.failures = failures


class TransactionTable:
    """Client transactions on someone else's socket, as Deferreds.

    A thin adapter over the sans-I/O :class:`ClientTransactions
    <holepunch.stun.transactions.ClientTransactions>`: give it a ``send(data, address)``
    function and a clock, feed it incoming messages with :meth:`handle`.
    """

    def __init__(self, send: Callable[[bytes, Address], None], clock: IReactorTime) -> None:
        self._send = send
        self._clock = clock
        self._core = ClientTransactions()
        self._deferreds: dict[bytes, Deferred[StunResponse]] = {}
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._core)

    def request(
        self,
        message: StunMessage,
        destination: Address,
        *,
        policy: RetransmissionPolicy = DEFAULT_POLICY,
        integrity_key: bytes | None = None,
        fingerprint: bool = True,
    ) -> Deferred[StunResponse]:
        """Send ``message`` until answered; fires with the response or fails.

        Fails with :class:`StunTimeout` after the policy's schedule, with
        :class:`StunErrorResponse` on an error response. With ``integrity_key`` the
        request carries MESSAGE-INTEGRITY, and a response that does not verify with the
        same key is ignored (RFC 8489 9.1.4).
        """
        tid = self._core.start(
            message,
            destination,
            self._clock.seconds(),
            policy=policy,
            integrity_key=integrity_key,
            fingerprint=fingerprint,
        )

        def cancel(d: Deferred[StunResponse]) -> None:
            self._deferreds.pop(tid, None)
            self._core.cancel(tid)
            self._reschedule()

        d: Deferred[StunResponse] = Deferred(cancel)
        self._deferreds[tid] = d
        self._flush()
        return d

    def _flush(self) -> None:
        for data, destination, _ in self._core.datagrams_to_send():
            try:
                self._send(data, destination)
            except OSError as e:
                # An unreachable destination is reported, not retried (ICMP errors on Linux).
                _log.debug("STUN send to {dest} failed: {err}", dest=destination, err=e)
        self._reschedule()

    def _reschedule(self) -> None:
        at = self._core.get_timer()
        if self._timer is not None and self._timer.active():
            if at is not None and self._timer.getTime() == at:
                return
            self._timer.cancel()
        self._timer = None
        if at is not None:
            self._timer = self._clock.callLater(max(0.0, at - self._clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        outcomes = self._core.handle_timer(self._clock.seconds())
        self._flush()
        for outcome in outcomes:
            self._settle(outcome)

    def _settle(self, outcome: TransactionOutcome) -> None:
        d = self._deferreds.pop(outcome.transaction_id, None)
        if d is None:
            return
        if outcome.response is not None:
            d.callback(outcome.response)
        else:
            d.errback(outcome.error)

    def handle(self, message: StunMessage, source: Address) -> bool:
        """Offer a decoded response; True when it answered a transaction of ours."""
        outcome = self._core.receive(message, source)
        if outcome is True:
            _log.debug("ignored STUN response failing MESSAGE-INTEGRITY from {s}", s=source)
            return True
        if outcome is False:
            return False
        assert isinstance(outcome, TransactionOutcome)
        self._reschedule()
        self._settle(outcome)
        return True

    def cancel_all(self) -> None:
        """Fail every running transaction with CancelledError and stop its timers."""
        for d in list(self._deferreds.values()):
            d.cancel()


@dataclass(frozen=True)
class BindingResult:
    """What a Binding response says, in RFC 5780's terms."""

    mapped: Address
    source: Address
    other_address: Address | None = None
    response_origin: Address | None = None
    software: str | None = None


def parse_binding_response(response: StunResponse) -> BindingResult:
    """Read the mapped address and RFC 5780 attributes out of a Binding success response."""
    msg = response.message
    mapped = msg.get_address(Attr.XOR_MAPPED_ADDRESS) or msg.get_address(Attr.MAPPED_ADDRESS)
    if mapped is None:
        raise StunDecodeError("Binding response without (XOR-)MAPPED-ADDRESS")
    other = msg.get_address(Attr.OTHER_ADDRESS) or msg.get_address(0x0005)  # CHANGED-ADDRESS
    return BindingResult(
        mapped=mapped,
        source=response.source,
        other_address=other,
        response_origin=msg.get_address(Attr.RESPONSE_ORIGIN),
        software=msg.get_string(Attr.SOFTWARE),
    )


def binding_request(change_ip: bool = False, change_port: bool = False) -> StunMessage:
    """A Binding request; with a CHANGE-REQUEST when either flag is set."""
    request = StunMessage.request()
    if change_ip or change_port:
        request.add_change_request(change_ip, change_port)
    return request


class StunClientProtocol(DatagramProtocol):
    """A UDP socket that runs STUN transactions.

    Datagrams that are not answers to our transactions go to ``on_datagram`` (set it to
    take them); by default they are dropped.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.transactions = TransactionTable(self._write, clock)
        self.on_datagram: Callable[[bytes, Address], None] | None = None

    def _write(self, data: bytes, destination: Address) -> None:
        if self.transport is None:
            raise OSError("socket closed")
        self.transport.write(data, (destination.host, destination.port))

    @property
    def local(self) -> Address:
        """The local address and port the socket is bound to."""
        assert self.transport is not None
        host: Any = self.transport.getHost()
        return Address(host.host, host.port)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        source = Address(addr[0], addr[1])
        if is_stun(datagram):
            try:
                message = decode(datagram)
            except StunDecodeError:
                message = None
            if message is not None and self.transactions.handle(message, source):
                return
        if self.on_datagram is not None:
            self.on_datagram(datagram, source)

    def binding(
        self,
        server: Address,
        *,
        change_ip: bool = False,
        change_port: bool = False,
        policy: RetransmissionPolicy = DEFAULT_POLICY,
    ) -> Deferred[BindingResult]:
        """Run one Binding transaction toward ``server``; fails at once with
        :class:`StunError` when ``server`` is of the other address family."""
        if self.transport is not None and ip_version(server.host) != ip_version(self.local.host):
            return defer.fail(
                StunError(
                    f"cannot reach {server.host} from the IPv{ip_version(self.local.host)} "
                    f"socket {self.local.host}"
                )
            )
        d = self.transactions.request(
            binding_request(change_ip, change_port), server, policy=policy
        )
        return d.addCallback(parse_binding_response)

    def close(self) -> Deferred[None]:
        """Cancel running transactions and close the socket."""
        self.transactions.cancel_all()
        if self.transport is None:
            return defer.succeed(None)
        port: Any = self.transport
        d: Deferred[None] = defer.maybeDeferred(port.stopListening)
        return d


def listen_stun(
    reactor: Any, interface: str = "", port: int = 0, *, family: int = 4
) -> StunClientProtocol:
    """Open a UDP socket with a :class:`StunClientProtocol` on it.

    The socket is of ``interface``'s family; with no interface, of ``family`` (4 or 6:
    a socket reaches servers of its own family only, see :func:`ip_version`).
    """
    if not interface and family == 6:
        interface = "::"
    proto = StunClientProtocol(reactor)
    reactor.listenUDP(port, proto, interface=interface)
    return proto


class _StreamClient(Protocol):
    def __init__(self, request: bytes, done: Deferred[StunMessage]) -> None:
        self.request = request
        self.done = done
        self.framer = StreamFramer()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        try:
            for frame in self.framer.feed(data):
                message = decode(frame)
                if not self.done.called:
                    self.done.callback(message)
        except StunDecodeError as e:
            if not self.done.called:
                self.done.errback(e)
        if self.done.called:
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.errback(StunError("connection closed before a STUN response arrived"))


async def _binding_over_tcp(
    reactor: Any, server: Address, timeout: float, bind_address: Address | None
) -> BindingResult:
    request = binding_request()
    data = encode(request, fingerprint=True)
    endpoint_class = TCP6ClientEndpoint if ip_version(server.host) == 6 else TCP4ClientEndpoint
    bind = (bind_address.host, bind_address.port) if bind_address else None
    endpoint = endpoint_class(reactor, server.host, server.port, timeout=timeout, bindAddress=bind)
    done: Deferred[StunMessage] = Deferred()
    factory = Factory.forProtocol(lambda: _StreamClient(data, done))
    protocol: Any = await endpoint.connect(factory)
    try:
        message = await done
    finally:
        if protocol.transport is not None:
            protocol.transport.loseConnection()
    if message.transaction_id != request.transaction_id:
        raise StunDecodeError("TCP response for another transaction")
    if message.message_class == MessageClass.ERROR:
        code, reason = message.get_error_code() or (0, "no ERROR-CODE")
        raise StunErrorResponse(code, reason, message)
    return parse_binding_response(StunResponse(message, server))


def binding_over_tcp(
    reactor: Any,
    server: Address,
    *,
    timeout: float = 39.5,
    bind_address: Address | None = None,
) -> Deferred[BindingResult]:
    """One Binding over TCP, failing with :class:`StunTimeout` after ``timeout`` seconds."""
    d = defer.ensureDeferred(_binding_over_tcp(reactor, server, timeout, bind_address))
    d.addTimeout(timeout, reactor)

    def timed_out(f: Failure) -> Failure:
        if f.check(defer.TimeoutError, TwistedTimeoutError):
            return Failure(StunTimeout(f"no TCP response from {server.host}:{server.port}"))
        return f

    return d.addErrback(timed_out)


def first_answer(
    attempts: Sequence[tuple[str, Callable[[], Deferred[BindingResult]]]],
) -> Deferred[BindingResult]:
    """Start every attempt at once; the first success wins and the rest are cancelled.

    ``attempts`` pairs a server's name with a function that starts its transaction.
    Fails with :class:`NoStunServerAnswered` when every attempt fails.
    """
    failures: dict[str, str] = {}
    running: list[Deferred[BindingResult]] = []
    settled = False

    def cancel_all(_: object = None) -> None:
        nonlocal settled
        settled = True
        for d in running:
            d.cancel()

    result: Deferred[BindingResult] = Deferred(cancel_all)
    if not attempts:
        result.errback(NoStunServerAnswered({}))
        return result

    def won(answer: BindingResult) -> None:
        if not settled:
            cancel_all()  # before firing: the caller may look at them at once
            result.callback(answer)

    def lost(f: Failure, name: str) -> None:
        if settled:
            return
        failures[name] = f.getErrorMessage() or f.type.__name__  # type: ignore[union-attr]
        if len(failures) == len(attempts):
            cancel_all()
            result.errback(NoStunServerAnswered(dict(failures)))

    for name, start in attempts:
        d = start()
        running.append(d)
        d.addCallbacks(won, lost, errbackArgs=(name,))
    return result


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects what a hostname resolves to."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        host: str = address.host  # type: ignore[attr-defined]
        if host not in self.found:
            self.found.append(host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


async def resolve_addresses(
    reactor: Any, host: str, port: int, families: Sequence[int] = (4, 6)
) -> list[Address]:
    """Every address ``host`` (an address or a name) has in ``families``, A before AAAA
    when both are asked; a literal address is returned as it is, if of a family asked.

    Names are resolved with the system's ``getaddrinfo`` (``/etc/hosts``, DNS A and AAAA)
    through the reactor's name resolver. An empty list: no address of those families.
    """
    try:
        literal = ip_version(host)
    except ValueError:
        pass
    else:
        return [Address(host, port)] if literal in families else []
    kinds: list[type[IAddress]] = []
    if 4 in families:
        kinds.append(IPv4Address)
    if 6 in families:
        kinds.append(IPv6Address)
    receiver = _Addresses()
    reactor.nameResolver.resolveHostName(receiver, host, port, kinds, "UDP")
    found = await receiver.done
    ordered = sorted(found, key=ip_version) if len(families) > 1 else found
    return [Address(address, port) for address in ordered]


async def resolve_server(reactor: Any, host: str, port: int, family: int | None = None) -> Address:
    """Turn ``host`` (an address or a name) into an :class:`Address`.

    ``family`` 4 or 6 takes only addresses of that family; None (the default) prefers
    IPv4 (``reactor.resolve``) and falls back to IPv6 (AAAA) for a name without one.

    :raises DNSLookupError: no address (of that family).
    """
    try:
        literal = ip_version(host)
    except ValueError:
        pass
    else:
        if family not in (None, literal):
            raise DNSLookupError(f"{host} is not an IPv{family} address")
        return Address(host, port)
    if family != 6:
        try:
            resolved = await reactor.resolve(host)
            return Address(resolved, port)
        except DNSLookupError:
            if family == 4:
                raise
    found = await resolve_addresses(reactor, host, port, (6,))
    if not found:
        raise DNSLookupError(f"no {'IPv6 ' if family == 6 else ''}address for {host}")
    return found[0]


def parse_server(spec: str, default_port: int = 3478) -> tuple[str, int]:
    """Parse ``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or ``stun:HOST:PORT`` into host and port."""
    text = spec.strip()
    for scheme in ("stun:", "stuns:"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    if not text:
        raise ValueError(f"empty STUN server address: {spec!r}")
    try:
        host, port_text = split_host_port(text)
    except ValueError as e:
        raise ValueError(f"{e} (STUN server address {spec!r})") from None
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"bad port in STUN server address {spec!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in STUN server address {spec!r}")
    return host, port

# -*- test-case-name: tests.unit.test_portmap -*-
"""The Twisted adapter that carries a NAT-PMP or PCP request to the gateway over UDP.

One :class:`GatewayRequestProtocol` per request: a UDP socket bound to this host's address
toward the gateway and connected to the gateway's port 5351 (so only the gateway's answers
reach it, and an ICMP port unreachable ends the request at once instead of at the
deadline), driving one sans-I/O ``RetransmittingRequest``.
Cancelling the Deferred stops the retransmissions and closes the socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from holepunch.nat.portmap._core import RetransmittingRequest

T = TypeVar("T")
_log = Logger()


class GatewayRefused(ConnectionRefusedError):
    """The gateway answered with ICMP port unreachable: nothing listens on that port."""


class GatewayRequestProtocol(DatagramProtocol, Generic[T]):
    """Sends one request's transmissions on a UDP transport and feeds back answers.

    By default the transport is connected to the gateway (``write(data)``). With
    ``destination`` (SSDP's multicast group) it writes there, and then only datagrams
    from ``accept_from`` (the gateway's address), if given, are fed to the core. Works with
    any transport that has ``write`` and ``stopListening()``, so tests can drive it with a
    recording transport and ``task.Clock``.
    """

    noisy = False

    def __init__(
        self,
        core: RetransmittingRequest[T],
        clock: IReactorTime,
        label: str,
        *,
        destination: tuple[str, int] | None = None,
        accept_from: str | None = None,
    ) -> None:
        self.core = core
        self._destination = destination
        self._accept_from = accept_from
        self._clock = clock
        self._label = label
        self._timer: IDelayedCall | None = None
        self._finished = False
        self._stopping = False
        self.deferred: Deferred[T] = Deferred(self._cancel)

    def start(self) -> None:
        """Send the first transmission; call once the transport is connected."""
        self._pump()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self._accept_from is not None and addr[0] != self._accept_from:
            _log.debug("{label}: ignored an answer from {addr}", label=self._label, addr=addr)
            return
        if self.core.receive_datagram(datagram):
            self._pump()
        elif self.core.ignored:
            _log.debug("{label}: ignored {why}", label=self._label, why=self.core.ignored[-1])

    def connectionRefused(self) -> None:
        self.core.fail(GatewayRefused(f"{self._label}: gateway port unreachable (ICMP)"))
        self._pump()

    def stopProtocol(self) -> None:
        # With the epoll reactor an ICMP error on a connected UDP socket arrives as
        # EPOLLERR, and the reactor closes the port instead of calling connectionRefused.
        if not self._finished:
            self.core.fail(
                GatewayRefused(f"{self._label}: socket closed, gateway port unreachable (ICMP)")
            )
            self._stopping = True
            self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(self._clock.seconds())
        self._pump()

    def _pump(self) -> None:
        if self._finished:
            return
        for datagram in self.core.datagrams_to_send():
            try:
                if self._destination is None:
                    self.transport.write(datagram)  # type: ignore[union-attr,call-arg]
                else:
                    self.transport.write(datagram, self._destination)  # type: ignore[union-attr]
            except OSError as e:  # e.g. ENETUNREACH: no route to the gateway
                self.core.fail(e)
                break
        if self.core.done:
            self._finish()
            return
        when = self.core.get_timer()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if when is not None:
            delay = max(0.0, when - self._clock.seconds())
            self._timer = self._clock.callLater(delay, self._on_timer)

    def _close(self) -> None:
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.transport is not None and not self._stopping:
            self.transport.stopListening()

    def _finish(self) -> None:
        self._close()
        try:
            result = self.core.result()
        except Exception as e:
            self.deferred.errback(e)
        else:
            self.deferred.callback(result)

    def _cancel(self, _: Deferred[T]) -> None:
        _log.debug("{label}: cancelled after {n} transmission(s)", label=self._label,
                   n=self.core.transmissions)  # fmt: skip
        self.core.fail(RuntimeError("cancelled"))
        self._close()


def send_request(
    reactor: Any,
    gateway: str,
    port: int,
    local_address: str,
    make_core: Callable[[float], RetransmittingRequest[T]],
    label: str,
) -> Deferred[T]:
    """Run the request ``make_core(now)`` builds against ``gateway:port``; fires its result.

    ``reactor`` provides ``IReactorUDP`` and ``IReactorTime``.
    """
    udp: IReactorUDP = reactor
    clock: IReactorTime = reactor
    protocol = GatewayRequestProtocol(make_core(clock.seconds()), clock, label)
    listening = udp.listenUDP(0, protocol, interface=local_address, maxPacketSize=8192)
    try:
        listening.connect(gateway, port)  # type: ignore[attr-defined]
    except Exception:
        listening.stopListening()
        raise
    protocol.start()
    return protocol.deferred


def send_multicast_request(
    reactor: Any,
    group: tuple[str, int],
    local_address: str,
    accept_from: str | None,
    make_core: Callable[[float], RetransmittingRequest[T]],
    label: str,
) -> Deferred[T]:
    """Multicast the request ``make_core(now)`` builds to ``group`` from ``local_address``
    (TTL 2, as UPnP asks); answers come back unicast, and only ``accept_from``'s count."""
    clock: IReactorTime = reactor
    protocol = GatewayRequestProtocol(
        make_core(clock.seconds()), clock, label, destination=group, accept_from=accept_from
    )
    listening = reactor.listenMulticast(0, protocol, interface=local_address, maxPacketSize=8192)
    try:
        listening.setOutgoingInterface(local_address)
        listening.setTTL(2)
    except Exception:
        listening.stopListening()
        raise
    protocol.start()
    return protocol.deferred

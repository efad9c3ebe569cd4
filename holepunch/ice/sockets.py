# -*- test-case-name: tests.unit.test_ice_agent -*-
"""The UDP sockets of an :class:`IceAgent <holepunch.ice.agent.IceAgent>` and the local
addresses it gathers on.

Each :class:`IceSocket` is one bound UDP port with the ``via`` number the core knows it
by (:data:`MAIN <holepunch.ice.events.MAIN>` for the agent's own socket, others for
birthday probing and re-measures); what arrives is handed on with that number.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol

from holepunch.routes import source_address_toward


def local_ipv4_addresses(include_loopback: bool = False) -> list[str]:
    """Usable local IPv4 addresses (ifaddr), loopback and link-local left out."""
    import ifaddr

    result: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue
            address = ipaddress.ip_address(ip.ip)
            if address.is_link_local or (address.is_loopback and not include_loopback):
                continue
            if str(address) not in result:
                result.append(str(address))
    return result


def route_source(remote: tuple[str, int]) -> str | None:
    """The local address the kernel would send from toward ``remote`` (no packet sent),
    or None when there is no route."""
    try:
        return source_address_toward(*remote)
    except (OSError, ValueError):
        return None


class IceSocket(DatagramProtocol):
    """One UDP socket of an agent; what arrives goes to ``received`` with its ``via``."""

    def __init__(self, via: int, received: Callable[[bytes, tuple[str, int], int], None]) -> None:
        self.via = via
        self.received = received
        self.port: Any = None
        self.local: tuple[str, int] = ("", 0)

    @classmethod
    def bind(
        cls,
        reactor: Any,
        via: int,
        interface: str,
        port: int,
        received: Callable[[bytes, tuple[str, int], int], None],
    ) -> IceSocket:
        """Bind a new socket on ``interface:port`` (port 0: any)."""
        sock = cls(via, received)
        sock.port = reactor.listenUDP(port, sock, interface=interface)
        host = sock.port.getHost()
        sock.local = (host.host, host.port)
        return sock

    @property
    def open(self) -> bool:
        """The socket is bound."""
        return self.port is not None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received(datagram, (addr[0], addr[1]), self.via)

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        """Send one datagram; OSError once closed."""
        if self.port is None:
            raise OSError("socket closed")
        self.port.write(data, address)

    def close(self) -> defer.Deferred[None]:
        """Stop listening."""
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.maybeDeferred(port.stopListening)
        return d

# -*- test-case-name: tests.unit.test_ice_agent -*-
"""The UDP sockets of an :class:`IceAgent <holepunch.ice.agent.IceAgent>` and the local
addresses it gathers on.

Each :class:`IceSocket` is one bound UDP port with the ``via`` number the core knows it
by (:data:`MAIN <holepunch.ice.events.MAIN>` for the agent's own socket, others for
birthday probing and re-measures); what arrives is handed on with that number.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol

from holepunch.addresses import unmapped
from holepunch.reuseport import listen_udp
from holepunch.routes import source_address_toward


def usable_address(text: str, include_loopback: bool = False) -> bool:
    """``text`` is an address host candidates may use: not link-local (it only works on
    one link and needs a scope), multicast, unspecified or IPv4-mapped, and loopback only
    when asked for."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if address.is_link_local or address.is_multicast or address.is_unspecified:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return False
    return include_loopback or not address.is_loopback


def local_addresses(include_loopback: bool = False) -> list[str]:
    """Usable local addresses of both families (ifaddr): IPv4, then IPv6 (global and
    unique-local); loopback and link-local left out (see :func:`usable_address`)."""
    import ifaddr

    result: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            host = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            if usable_address(host, include_loopback):
                text = str(ipaddress.ip_address(host))
                if text not in result:
                    result.append(text)
    return sorted(result, key=lambda a: ":" in a)


def bind_interface(addresses: Sequence[str]) -> str:
    """Where the agent's socket binds to serve ``addresses``: the address itself when
    there is one, ``""`` (IPv4 any) when all are IPv4, ``"::"`` (both families, one
    port) when any is IPv6."""
    if len(addresses) == 1:
        return addresses[0]
    return "::" if any(":" in a for a in addresses) else ""


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
        self.dual_stack = False
        """Bound on ``::``: IPv4 peers are written to and heard from as IPv4-mapped
        addresses, which this socket translates both ways."""

    @classmethod
    def bind(
        cls,
        reactor: Any,
        via: int,
        interface: str,
        port: int,
        received: Callable[[bytes, tuple[str, int], int], None],
    ) -> IceSocket:
        """Bind a new socket on ``interface:port`` (port 0: any; ``::``: both families)."""
        sock = cls(via, received)
        sock.port = listen_udp(reactor, port, sock, interface, dual_stack=interface == "::")
        sock.dual_stack = interface == "::"
        host = sock.port.getHost()
        sock.local = (host.host, host.port)
        return sock

    @property
    def open(self) -> bool:
        """The socket is bound."""
        return self.port is not None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        host = unmapped(addr[0]) if self.dual_stack else addr[0]
        self.received(datagram, (host, addr[1]), self.via)

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        """Send one datagram; OSError once closed."""
        if self.port is None:
            raise OSError("socket closed")
        if self.dual_stack and ":" not in address[0]:
            address = ("::ffff:" + address[0], address[1])
        self.port.write(data, address)

    def close(self) -> defer.Deferred[None]:
        """Stop listening."""
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.maybeDeferred(port.stopListening)
        return d

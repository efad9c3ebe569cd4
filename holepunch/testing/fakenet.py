# -*- test-case-name: tests.unit.test_ice_agent -*-
"""A deterministic in-memory UDP network on a ``twisted.internet.task.Clock``.

For unit tests of code that takes a reactor and uses ``listenUDP``, ``callLater`` and
``seconds``: datagrams are delivered after ``latency`` seconds of fake time, and a test
can drop traffic between addresses (``network.block(a, b)``) to see what timers do
when a peer vanishes. Real-socket tests live beside these, in the integration modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock


@dataclass
class _Host:
    host: str
    port: int


class FakeUDPPort:
    """What ``listenUDP`` returns: write, getHost, stopListening."""

    def __init__(self, network: FakeNetwork, protocol: Any, host: str, port: int) -> None:
        self.network = network
        self.protocol = protocol
        self.host = host
        self.port = port
        self.connected = True
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.connected:
            raise OSError("port closed")
        self.sent.append((data, addr))
        self.network.send(data, (self.host, self.port), addr)

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.host, self.port)

    def stopListening(self) -> None:
        if self.connected:
            self.connected = False
            self.network.ports.pop((self.host, self.port), None)
            self.protocol.doStop()


class FakeNetwork(Clock):
    """A Clock that is also a reactor with in-memory UDP (``listenUDP``)."""

    def __init__(self, latency: float = 0.001, default_host: str = "192.0.2.1") -> None:
        super().__init__()
        self.latency = latency
        self.default_host = default_host
        self.ports: dict[tuple[str, int], FakeUDPPort] = {}
        self.blocked: set[frozenset[tuple[str, int]] | tuple[str, int]] = set()
        self.filter: Callable[[bytes, tuple[str, int], tuple[str, int]], bool] | None = None
        self.delivered = 0
        self.dropped = 0
        self._next_port = 40000

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUDPPort:
        host = interface or self.default_host
        if port == 0:
            self._next_port += 1
            port = self._next_port
        if (host, port) in self.ports:
            raise OSError(f"address in use: {host}:{port}")
        udp = FakeUDPPort(self, protocol, host, port)
        self.ports[(host, port)] = udp
        protocol.makeConnection(udp)
        return udp

    def block(self, a: tuple[str, int], b: tuple[str, int] | None = None) -> None:
        """Drop traffic between ``a`` and ``b`` (both ways), or everything to/from ``a``."""
        self.blocked.add(frozenset((a, b)) if b is not None else a)

    def unblock_all(self) -> None:
        """Deliver everything again."""
        self.blocked.clear()

    def send(self, data: bytes, source: tuple[str, int], destination: tuple[str, int]) -> None:
        if (
            source in self.blocked
            or destination in self.blocked
            or frozenset((source, destination)) in self.blocked
            or (self.filter is not None and not self.filter(data, source, destination))
        ):
            self.dropped += 1
            return
        self.callLater(self.latency, self._deliver, data, source, destination)

    def _deliver(self, data: bytes, source: tuple[str, int], destination: tuple[str, int]) -> None:
        port = self.ports.get(destination)
        if port is None:
            self.dropped += 1
            return
        self.delivered += 1
        port.protocol.datagramReceived(data, source)

    def resolve(self, name: str) -> Any:
        from twisted.internet import defer

        return defer.succeed(name)

"""A name resolver answering from a table, for tests that resolve names without DNS."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IHostnameResolver
from zope.interface import implementer


@implementer(IHostnameResolver)
class FixedNames:
    """A name resolver answering from a table: this machine's /etc/hosts has no name with
    an IPv6 address, so the AAAA path is driven with one (everything else is real)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[tuple[str, tuple[type, ...]]] = []

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        types = tuple(addressTypes or (IPv4Address, IPv6Address))
        self.asked.append((hostName, types))
        resolutionReceiver.resolutionBegan(None)
        for host in self.table.get(hostName, []):
            kind = IPv6Address if ":" in host else IPv4Address
            if kind in types:
                resolutionReceiver.addressResolved(kind("UDP", host, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolutionReceiver


class NameReactor:
    """Just enough reactor for name resolution: A via ``resolve``, AAAA via ``nameResolver``;
    given a real ``reactor``, that reactor for everything else (sockets, timers)."""

    def __init__(self, table: dict[str, list[str]], reactor: Any = None) -> None:
        self.nameResolver = FixedNames(table)
        self.table = table
        self.reactor = reactor

    def __getattr__(self, name: str) -> Any:
        if self.reactor is None:
            raise AttributeError(name)
        return getattr(self.reactor, name)

    def resolve(self, name: str) -> defer.Deferred[str]:
        v4 = [h for h in self.table.get(name, []) if ":" not in h]
        if not v4:
            return defer.fail(DNSLookupError(name))
        return defer.succeed(v4[0])

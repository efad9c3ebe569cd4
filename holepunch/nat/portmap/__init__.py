# -*- test-case-name: tests.unit.test_portmap -*-
"""Port mapping on the home router: PCP (RFC 6887), NAT-PMP (RFC 6886) and UPnP IGD.

:class:`PortMapper` is the API; :mod:`holepunch.nat.portmap.pcp` and
:mod:`holepunch.nat.portmap.natpmp` are sans-I/O protocol cores,
:mod:`holepunch.nat.portmap.gateway_udp` carries them over UDP,
:mod:`holepunch.nat.portmap.upnp` wraps ``miniupnpc`` in threads. See
``docs/port-mapping.md``.
"""

from holepunch.nat.portmap._core import (
    MalformedResponse,
    Method,
    NoResponse,
    PortMapping,
    PortMappingError,
    ResultCodeError,
)
from holepunch.nat.portmap.gateway import default_gateway
from holepunch.nat.portmap.mapper import PortMapper, Renewal

__all__ = [
    "MalformedResponse",
    "Method",
    "NoResponse",
    "PortMapper",
    "PortMapping",
    "PortMappingError",
    "Renewal",
    "ResultCodeError",
    "default_gateway",
]

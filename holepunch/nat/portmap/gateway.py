# -*- test-case-name: tests.unit.test_portmap -*-
"""Find the default IPv4 gateway (the router NAT-PMP, PCP and UPnP talk to).

RFC 6886 section 3 and RFC 6887 section 8.1 both send to the default router. Linux keeps
the routing table in ``/proc/net/route`` (little-endian hex); we read that rather than
running ``ip route``. Elsewhere, pass the gateway to :class:`PortMapper` explicitly.
"""

from __future__ import annotations

import socket
import struct

ROUTE_FILE = "/proc/net/route"
_RTF_GATEWAY = 0x2


def parse_proc_net_route(text: str) -> str | None:
    """The gateway of the lowest-metric default route in ``/proc/net/route`` text, if any."""
    best: tuple[int, str] | None = None
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        destination, gateway, flags, metric, mask = (
            fields[1], fields[2], fields[3], fields[6], fields[7],
        )  # fmt: skip
        try:
            if int(destination, 16) != 0 or int(mask, 16) != 0:
                continue
            if not int(flags, 16) & _RTF_GATEWAY:
                continue
            address = socket.inet_ntoa(struct.pack("<I", int(gateway, 16)))
            rank = int(metric)
        except ValueError:
            continue
        if best is None or rank < best[0]:
            best = (rank, address)
    return best[1] if best else None


def default_gateway(route_file: str = ROUTE_FILE) -> str | None:
    """The default IPv4 gateway of this network namespace, or None if there is none."""
    try:
        with open(route_file) as f:
            return parse_proc_net_route(f.read())
    except OSError:
        return None

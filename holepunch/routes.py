"""Which local address the kernel would send from: the one helper the STUN discovery, the
ICE agent and the port mapper share."""

from __future__ import annotations

import ipaddress
import socket


def source_address_toward(host: str, port: int = 9) -> str:
    """The local address the kernel would use to reach ``host:port``; no packet is sent
    (a UDP socket is connected, which only consults the routing table).

    :raises OSError: no route to ``host``.
    """
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return str(s.getsockname()[0])

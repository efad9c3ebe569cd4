# -*- test-case-name: tests.unit.test_signaling_iceservers -*-
"""The ``iceServers`` of ``welcome``: the daemon tells its clients where its STUN (and TURN)
servers are, in the form browsers use (``RTCIceServer``: ``{urls, username, credential}``).

A client configured with only the signaling URL thus gets the daemon's STUN server on its
two ports (3478 and 3479 by default: two destinations from one address are enough to
measure a NAT's mapping, which the hard-NAT techniques need) and, where the operator
configured one, a TURN server with short-lived REST-API credentials (coturn's
``use-auth-secret``) minted per connection.

:class:`IceServerHints` is the server side (what to advertise; the host defaults to the
one the client used to reach the signaling server, from its ``Host`` header), and
:func:`parse_ice_servers` the client side (validated, bounded; anything malformed is
skipped with a log line, never trusted).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from holepunch.addresses import split_host_port
from holepunch.stun.client import parse_server
from holepunch.turn.config import TurnServer

_log = Logger()

MAX_ENTRIES = 8
"""At most this many ``iceServers`` entries (and URLs per entry) are read from a server."""


def host_of(host_header: str | None) -> str | None:
    """The host part of an HTTP ``Host`` header (``example.org:8080``, ``[::1]:80``)."""
    if not host_header:
        return None
    try:
        host = split_host_port(host_header.strip())[0]
    except ValueError:
        return None
    return host or None


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def valid_host(host: str) -> bool:
    """An IP address or a DNS name (what a server may name in a URI it sends us)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return _HOSTNAME.fullmatch(host) is not None


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class IceServerHints:
    """What the daemon advertises in ``welcome``."""

    stun_ports: Sequence[int] = ()
    """Ports of the daemon's own STUN server (empty: none advertised)."""
    host: str | None = None
    """The host in the advertised STUN URIs (None: the host the client connected to)."""
    turn_servers: Sequence[TurnServer] = field(default_factory=tuple)
    """TURN servers to advertise; with :attr:`turn_secret` their credentials are minted."""
    turn_secret: str | None = field(default=None, repr=False)
    """coturn's ``static-auth-secret``: REST-API credentials per connection."""
    turn_ttl: float = 86400.0
    """Lifetime of minted TURN credentials, seconds."""

    def __post_init__(self) -> None:
        if self.turn_ttl <= 0:
            raise ValueError("turn_ttl must be positive")
        for port in self.stun_ports:
            if not 0 < port < 65536:
                raise ValueError(f"STUN port out of range: {port}")

    def for_client(self, host_header: str | None, user: str, now: float) -> list[dict[str, Any]]:
        """The ``iceServers`` list for one client (``user`` names it in TURN usernames)."""
        entries: list[dict[str, Any]] = []
        host = self.host or host_of(host_header)
        if host and self.stun_ports:
            entries.append({"urls": [f"stun:{_uri_host(host)}:{p}" for p in self.stun_ports]})
        for server in self.turn_servers:
            if self.turn_secret:
                server = server.with_rest_api_credentials(
                    self.turn_secret, user, self.turn_ttl, now
                )
            entries.append(server.as_ice_server())
        return entries


@dataclass
class ParsedIceServers:
    """What a client took from ``iceServers``."""

    stun_servers: list[tuple[str, int]] = field(default_factory=list)
    turn_servers: list[TurnServer] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.stun_servers or self.turn_servers)


def parse_ice_servers(value: object) -> ParsedIceServers:
    """Read a server's ``iceServers``; malformed entries are skipped (and logged)."""
    parsed = ParsedIceServers()
    if not isinstance(value, list):
        if value is not None:
            _log.info("iceServers ignored: not a list")
        return parsed
    for entry in value[:MAX_ENTRIES]:
        if not isinstance(entry, dict):
            _log.info("iceServers entry ignored: not an object")
            continue
        urls = entry.get("urls")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list):
            _log.info("iceServers entry ignored: no urls")
            continue
        for url in urls[:MAX_ENTRIES]:
            if not isinstance(url, str):
                continue
            scheme = url.split(":", 1)[0].lower()
            try:
                if scheme == "stun":
                    server = parse_server(url)
                    if not valid_host(server[0]):
                        raise ValueError(f"bad host in {url!r}")
                    if server not in parsed.stun_servers:
                        parsed.stun_servers.append(server)
                elif scheme in ("turn", "turns"):
                    single = {k: entry[k] for k in ("username", "credential") if k in entry}
                    for turn in TurnServer.from_ice_server({"urls": url, **single}):
                        if not valid_host(turn.host):
                            raise ValueError(f"bad host in {url!r}")
                        parsed.turn_servers.append(turn)
                else:
                    _log.info("iceServers URL ignored: unknown scheme in {url!r}", url=url)
            except (ValueError, TypeError) as e:
                _log.info("iceServers URL ignored: {err}", err=e)
    return parsed

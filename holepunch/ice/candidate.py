# -*- test-case-name: tests.unit.test_ice_candidate -*-
"""ICE candidates: RFC 8445 section 5.1 (priorities, foundations) and the RFC 8839
section 5.1 ``candidate`` attribute grammar, with the RFC 6544 ``tcptype`` extension.

``candidate:1 1 udp 2130706431 192.0.2.1 54400 typ srflx raddr 10.0.0.2 rport 54400``
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

# RFC 8445 5.1.2.2 recommended type preferences. "predicted" candidates (port
# prediction, issue 5) rank just under server-reflexive ones.
TYPE_PREFERENCE: dict[str, int] = {
    "host": 126,
    "prflx": 110,
    "srflx": 100,
    "relay": 0,
}
CANDIDATE_TYPES = frozenset(TYPE_PREFERENCE)
TRANSPORTS = frozenset({"udp", "tcp"})
TCP_TYPES = frozenset({"active", "passive", "so"})

_FOUNDATION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")


class CandidateError(ValueError):
    """A candidate line that does not follow the RFC 8839 grammar."""


def candidate_priority(
    candidate_type: str, local_preference: int = 65535, component: int = 1
) -> int:
    """RFC 8445 5.1.2.1: ``2^24 * type pref + 2^8 * local pref + (256 - component)``."""
    if not 0 <= local_preference <= 65535:
        raise ValueError(f"local preference out of range: {local_preference}")
    if not 1 <= component <= 256:
        raise ValueError(f"component out of range: {component}")
    return (TYPE_PREFERENCE[candidate_type] << 24) + (local_preference << 8) + (256 - component)


_ULA = ipaddress.ip_network("fc00::/7")
"""Unique-local IPv6 (RFC 4193): reachable inside one site only."""


def host_preferences(hosts: Sequence[str]) -> dict[str, int]:
    """Local preferences for host candidates on ``hosts`` (RFC 8421 section 4): IPv6
    first, the two families interleaved so that the first checks try both (a broken IPv6
    path costs one pacing step, not all of them); global IPv6 before unique-local; each
    family otherwise in the order given."""
    v6 = sorted((h for h in hosts if ":" in h), key=lambda h: ipaddress.ip_address(h) in _ULA)
    v4 = [h for h in hosts if ":" not in h]
    order: list[str] = []
    for index in range(max(len(v6), len(v4))):
        order += [family[index] for family in (v6, v4) if index < len(family)]
    return {host: 65535 - rank for rank, host in enumerate(dict.fromkeys(order))}


def candidate_foundation(
    candidate_type: str, base_address: str, transport: str, server: str = ""
) -> str:
    """RFC 8445 5.1.1.3: equal for candidates of the same type, base IP, server and transport."""
    digest = hashlib.sha256(
        f"{candidate_type}|{base_address}|{transport}|{server}".encode()
    ).digest()
    return str(int.from_bytes(digest[:4], "big"))


@dataclass(frozen=True)
class Candidate:
    """One transport address a peer may be reached at."""

    foundation: str
    component: int
    transport: str
    priority: int
    host: str
    port: int
    type: str
    related_address: str | None = None
    related_port: int | None = None
    tcptype: str | None = None
    extensions: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``."""
        return (self.host, self.port)

    def with_priority(self, priority: int) -> Candidate:
        """A copy with another priority."""
        return replace(self, priority=priority)

    def to_sdp(self) -> str:
        """The RFC 8839 ``candidate:`` attribute value (without ``a=``)."""
        parts = [
            f"candidate:{self.foundation}",
            str(self.component),
            self.transport,
            str(self.priority),
            self.host,
            str(self.port),
            "typ",
            self.type,
        ]
        # RFC 8839 5.1: rel-addr and rel-port are each optional; write what was given.
        if self.related_address is not None:
            parts += ["raddr", self.related_address]
        if self.related_port is not None:
            parts += ["rport", str(self.related_port)]
        if self.tcptype is not None:
            parts += ["tcptype", self.tcptype]
        for name, value in self.extensions:
            parts += [name, value]
        return " ".join(parts)

    @classmethod
    def from_sdp(cls, line: str) -> Candidate:
        """Parse ``[a=]candidate:...``; raise :class:`CandidateError` with a reason.

        Unknown extension attributes are kept; mDNS ``.local`` host names and other
        non-IP addresses are refused (we cannot reach them without a resolver).
        """
        if not isinstance(line, str):
            raise CandidateError("candidate must be a string")
        text = line.strip()
        if text.startswith("a="):
            text = text[2:]
        if not text.startswith("candidate:"):
            raise CandidateError("candidate must start with 'candidate:'")
        fields = text[len("candidate:") :].split()
        if len(fields) < 8:
            raise CandidateError(f"candidate has {len(fields)} fields, needs at least 8")
        foundation, component, transport, priority, host, port, typ, cand_type = fields[:8]
        if typ != "typ":
            raise CandidateError("expected 'typ' as the seventh field")
        if not foundation or len(foundation) > 32 or not set(foundation) <= _FOUNDATION_CHARS:
            raise CandidateError(f"bad foundation {foundation!r}")
        transport = transport.lower()
        if transport not in TRANSPORTS:
            raise CandidateError(f"unsupported transport {transport!r}")
        if cand_type not in CANDIDATE_TYPES:
            raise CandidateError(f"unknown candidate type {cand_type!r}")
        try:
            component_n = int(component)
            priority_n = int(priority)
            port_n = int(port)
        except ValueError:
            raise CandidateError("component, priority and port must be integers") from None
        if not 1 <= component_n <= 256:
            raise CandidateError(f"component out of range: {component_n}")
        if not 1 <= priority_n <= 2**31 - 1:
            raise CandidateError(f"priority out of range: {priority_n}")
        if not 0 <= port_n <= 65535:
            raise CandidateError(f"port out of range: {port_n}")
        host = _ip(host)
        related_address: str | None = None
        related_port: int | None = None
        tcptype: str | None = None
        extensions: list[tuple[str, str]] = []
        rest = fields[8:]
        if len(rest) % 2:
            raise CandidateError("extension attributes must come in name/value pairs")
        for name, value in zip(rest[::2], rest[1::2], strict=True):
            if name == "raddr":
                related_address = _ip(value)
            elif name == "rport":
                try:
                    related_port = int(value)
                except ValueError:
                    raise CandidateError(f"bad rport {value!r}") from None
                if not 0 <= related_port <= 65535:
                    raise CandidateError(f"rport out of range: {related_port}")
            elif name == "tcptype":
                if value not in TCP_TYPES:
                    raise CandidateError(f"bad tcptype {value!r}")
                tcptype = value
            else:
                extensions.append((name, value))
        if transport == "tcp" and tcptype is None:
            raise CandidateError("a TCP candidate needs a tcptype (RFC 6544)")
        return cls(
            foundation=foundation,
            component=component_n,
            transport=transport,
            priority=priority_n,
            host=host,
            port=port_n,
            type=cand_type,
            related_address=related_address,
            related_port=related_port,
            tcptype=tcptype,
            extensions=tuple(extensions),
        )


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise CandidateError(f"not an IP address: {text!r}") from None


def make_candidate(
    candidate_type: str,
    host: str,
    port: int,
    *,
    base: tuple[str, int] | None = None,
    server: str = "",
    transport: str = "udp",
    local_preference: int = 65535,
    component: int = 1,
    tcptype: str | None = None,
) -> Candidate:
    """A local candidate with RFC 8445 priority and foundation.

    ``base`` is the host address the candidate was derived from (srflx, prflx, relay): it
    goes into ``raddr``/``rport`` and the foundation.
    """
    base_host = base[0] if base else host
    return Candidate(
        foundation=candidate_foundation(candidate_type, base_host, transport, server),
        component=component,
        transport=transport,
        priority=candidate_priority(candidate_type, local_preference, component),
        host=host,
        port=port,
        type=candidate_type,
        related_address=base[0] if base else None,
        related_port=base[1] if base else None,
        tcptype=tcptype,
    )

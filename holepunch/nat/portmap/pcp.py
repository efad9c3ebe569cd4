# -*- test-case-name: tests.unit.test_portmap -*-
"""PCP (RFC 6887) MAP and ANNOUNCE messages and retransmission schedule, sans I/O.

Implements the common request and response headers (section 7.1, 7.2), the MAP opcode
(section 11.1) with its mapping nonce, ANNOUNCE as a bare header (section 14.1, used only
by :meth:`holepunch.nat.portmap.PortMapper.probe`), the result codes (section 7.4) and the
client retransmission timer (section 8.1.1). No options are sent; options in answers are
skipped over.

Why hand-written: no maintained Python library implements PCP at all (libpcp is C and
unpackaged), and the part a client needs is two fixed-layout 60-byte messages. A sans-I/O
core also lets the tests drive retransmission with a fake clock.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import struct
from collections.abc import Callable, Iterator

from holepunch.nat.portmap._core import MalformedResponse, ResultCodeError

VERSION = 2
SERVER_PORT = 5351
OP_ANNOUNCE = 0
OP_MAP = 1
RESPONSE_BIT = 0x80
PROTOCOL_UDP = 17
PROTOCOL_TCP = 6
HEADER_SIZE = 24
MAP_SIZE = 36
MAX_SIZE = 1100
NONCE_SIZE = 12

IRT = 3.0
"""Section 8.1.1: initial retransmission time, seconds."""
MRT = 1024.0
"""Section 8.1.1: maximum retransmission time, seconds."""

RESULT_CODES = {
    0: "SUCCESS",
    1: "UNSUPP_VERSION",
    2: "NOT_AUTHORIZED",
    3: "MALFORMED_REQUEST",
    4: "UNSUPP_OPCODE",
    5: "UNSUPP_OPTION",
    6: "MALFORMED_OPTION",
    7: "NETWORK_FAILURE",
    8: "NO_RESOURCES",
    9: "UNSUPP_PROTOCOL",
    10: "USER_EX_QUOTA",
    11: "CANNOT_PROVIDE_EXTERNAL",
    12: "ADDRESS_MISMATCH",
    13: "EXCESSIVE_REMOTE_PEERS",
}
UNSUPP_VERSION = 1

_ANY_V4 = ipaddress.IPv6Address("::ffff:0.0.0.0")


@dataclasses.dataclass(frozen=True)
class MapResponse:
    """A successful MAP answer (section 11.1)."""

    lifetime: int
    epoch: int
    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_address: str


@dataclasses.dataclass(frozen=True)
class AnnounceResponse:
    """A successful ANNOUNCE answer: the server is there, and its epoch."""

    epoch: int


def new_nonce(randbytes: Callable[[int], bytes] | None = None) -> bytes:
    """A fresh 96-bit mapping nonce (section 11.1): kept to renew or delete the mapping."""
    if randbytes is None:
        import secrets

        return secrets.token_bytes(NONCE_SIZE)
    return randbytes(NONCE_SIZE)


def retransmission_schedule(rand: Callable[[], float] = random.random) -> Iterator[float]:
    """Section 8.1.1: RT = (1+RAND)*IRT, then RT = 2*RTprev + RAND*RTprev, capped by MRT.

    RAND is uniform in [-0.1, +0.1]; ``rand`` returns [0, 1) and is injectable for tests.
    MRC and MRD are 0 (no limit): the caller's deadline ends the request.
    """
    rt = (1 + (rand() * 0.2 - 0.1)) * IRT
    while True:
        yield rt
        rt = 2 * rt + (rand() * 0.2 - 0.1) * rt
        if rt > MRT:
            rt = (1 + (rand() * 0.2 - 0.1)) * MRT


def _v6(address: str) -> bytes:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        ip = ipaddress.IPv6Address(f"::ffff:{ip}")
    return ip.packed


def _unmap(packed: bytes) -> str:
    ip = ipaddress.IPv6Address(packed)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def encode_request_header(opcode: int, lifetime: int, client_address: str) -> bytes:
    """Section 7.1: version 2, R=0, opcode, lifetime, the client's own IP address."""
    if not 0 <= lifetime < 2**32:
        raise ValueError(f"lifetime out of range: {lifetime}")
    return struct.pack("!BBHI", VERSION, opcode, 0, lifetime) + _v6(client_address)


def encode_announce_request(client_address: str) -> bytes:
    """Section 14.1: an ANNOUNCE request is the bare header with lifetime 0."""
    return encode_request_header(OP_ANNOUNCE, 0, client_address)


def encode_map_request(
    nonce: bytes,
    internal_port: int,
    client_address: str,
    lifetime: int,
    *,
    protocol: int = PROTOCOL_UDP,
    suggested_external_port: int = 0,
    suggested_external_address: str | None = None,
) -> bytes:
    """Section 11.1: a MAP request; lifetime 0 with the same nonce deletes the mapping."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"the mapping nonce is {NONCE_SIZE} bytes, not {len(nonce)}")
    if not 0 < internal_port < 65536:
        raise ValueError(f"internal port must be 1-65535, not {internal_port}")
    if not 0 <= suggested_external_port < 65536:
        raise ValueError(f"external port must be 0-65535, not {suggested_external_port}")
    external = _v6(suggested_external_address) if suggested_external_address else _ANY_V4.packed
    body = nonce + struct.pack("!B3xHH", protocol, internal_port, suggested_external_port)
    return encode_request_header(OP_MAP, lifetime, client_address) + body + external


def _check_header(data: bytes, opcode: int) -> tuple[int, int]:
    """Validate a response header; returns (lifetime, epoch) or raises."""
    if len(data) < 4:
        raise MalformedResponse(f"PCP response too short ({len(data)} bytes)")
    version, op = data[0], data[1]
    if version == 0 and len(data) >= 4:
        # A NAT-PMP-only server answers a PCP request in NAT-PMP's format (RFC 6887
        # section 9): version 0 and, normally, result 1 (Unsupported Version).
        result = struct.unpack_from("!H", data, 2)[0]
        raise ResultCodeError(
            "PCP", UNSUPP_VERSION, f"server speaks NAT-PMP only (result {result})"
        )
    if len(data) < HEADER_SIZE:
        raise MalformedResponse(f"PCP response too short ({len(data)} bytes, header is 24)")
    if len(data) > MAX_SIZE or len(data) % 4:
        raise MalformedResponse(f"PCP response length {len(data)} is not a multiple of 4 <= 1100")
    if not op & RESPONSE_BIT:
        raise MalformedResponse("PCP datagram is a request, not a response (R bit clear)")
    if op & ~RESPONSE_BIT != opcode:
        raise MalformedResponse(f"PCP response opcode {op & ~RESPONSE_BIT}, expected {opcode}")
    result = data[3]
    lifetime, epoch = struct.unpack_from("!II", data, 4)
    if result != 0:
        # Section 7.4: on UNSUPP_VERSION the server puts the version it speaks in the header.
        name = RESULT_CODES.get(result, "unknown")
        if result == UNSUPP_VERSION:
            name += f" (server speaks version {version})"
        raise ResultCodeError("PCP", result, name, lifetime)
    if version != VERSION:
        raise MalformedResponse(f"PCP success response has version {version}, not {VERSION}")
    return lifetime, epoch


def decode_announce_response(data: bytes) -> AnnounceResponse:
    """Parse an ANNOUNCE answer."""
    _, epoch = _check_header(data, OP_ANNOUNCE)
    return AnnounceResponse(epoch=epoch)


def decode_map_response(
    data: bytes, nonce: bytes, internal_port: int, protocol: int = PROTOCOL_UDP
) -> MapResponse:
    """Parse a MAP answer to our request (section 11.3: nonce, protocol and port must match)."""
    try:
        lifetime, epoch = _check_header(data, OP_MAP)
    except ResultCodeError:
        # An error answer copies the request's MAP fields: one for another nonce is not ours.
        if len(data) >= HEADER_SIZE + MAP_SIZE and data[24:36] != nonce:
            raise MalformedResponse("PCP MAP error response carries another nonce") from None
        raise
    if len(data) < HEADER_SIZE + MAP_SIZE:
        raise MalformedResponse(f"PCP MAP response is {len(data)} bytes, need 60")
    got_nonce = data[24:36]
    got_protocol, got_internal, external_port = struct.unpack_from("!B3xHH", data, 36)
    if got_nonce != nonce:
        raise MalformedResponse("PCP MAP response carries another mapping nonce")
    if got_protocol != protocol or got_internal != internal_port:
        raise MalformedResponse(
            f"PCP MAP response is for protocol {got_protocol} port {got_internal}, "
            f"not {protocol} port {internal_port}"
        )
    return MapResponse(
        lifetime=lifetime,
        epoch=epoch,
        nonce=got_nonce,
        protocol=got_protocol,
        internal_port=got_internal,
        external_port=external_port,
        external_address=_unmap(data[44:60]),
    )

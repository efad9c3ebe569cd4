# -*- test-case-name: tests.unit.test_portmap -*-
"""NAT-PMP (RFC 6886) messages and retransmission schedule, sans I/O.

Why hand-written: NAT-PMP is four fixed-layout messages (sections 3.2 and 3.3) and a
doubling timer (section 3.1). The Python packages that speak it (``natpmp``/``py-natpmp``)
are unmaintained, block on their own sockets, and cannot be driven by a Twisted reactor or
a test clock; the whole protocol fits in this module with ``struct``.

Everything here is bytes in, bytes out; :mod:`holepunch.nat.portmap.gateway_udp` sends the
bytes to the gateway's UDP port 5351.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Iterator

from holepunch.nat.portmap._core import MalformedResponse, ResultCodeError

VERSION = 0
SERVER_PORT = 5351
"""The gateway port NAT-PMP (and PCP) requests go to (RFC 6886 section 3)."""

OP_EXTERNAL_ADDRESS = 0
OP_MAP_UDP = 1
OP_MAP_TCP = 2
RESPONSE_BIT = 128

INITIAL_INTERVAL = 0.25
"""Section 3.1: the first retransmission after 250 ms, then doubling."""
MAX_TRANSMISSIONS = 9
"""Section 3.1: nine transmissions in all (about 64 s) before giving up."""

RECOMMENDED_LIFETIME = 7200
"""Section 3.3: the lifetime a client should ask for (two hours)."""

RESULT_CODES = {
    0: "Success",
    1: "Unsupported Version",
    2: "Not Authorized/Refused",
    3: "Network Failure",
    4: "Out of resources",
    5: "Unsupported opcode",
}


@dataclasses.dataclass(frozen=True)
class ExternalAddressResponse:
    """Section 3.2's answer: the gateway's public IPv4 address."""

    epoch: int
    external_address: str


@dataclasses.dataclass(frozen=True)
class MapResponse:
    """Section 3.3's answer: the mapping granted."""

    opcode: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


def retransmission_schedule() -> Iterator[float]:
    """The waits after each transmission: 0.25, 0.5, 1, ... 32 s (nine sends)."""
    for attempt in range(MAX_TRANSMISSIONS - 1):
        yield INITIAL_INTERVAL * (2**attempt)
    yield INITIAL_INTERVAL * (2 ** (MAX_TRANSMISSIONS - 1))  # wait for the last answer


def encode_external_address_request() -> bytes:
    """Section 3.2: version 0, opcode 0."""
    return struct.pack("!BB", VERSION, OP_EXTERNAL_ADDRESS)


def encode_map_request(
    internal_port: int,
    external_port: int = 0,
    lifetime: int = RECOMMENDED_LIFETIME,
    *,
    udp: bool = True,
) -> bytes:
    """Section 3.3: map ``internal_port``; lifetime 0 (with external port 0) deletes it."""
    if not 0 < internal_port < 65536:
        raise ValueError(f"internal port must be 1-65535, not {internal_port}")
    if not 0 <= external_port < 65536:
        raise ValueError(f"external port must be 0-65535, not {external_port}")
    if not 0 <= lifetime < 2**32:
        raise ValueError(f"lifetime out of range: {lifetime}")
    opcode = OP_MAP_UDP if udp else OP_MAP_TCP
    return struct.pack("!BBHHHI", VERSION, opcode, 0, internal_port, external_port, lifetime)


def _check_header(data: bytes, opcode: int) -> tuple[int, int]:
    """Version, opcode and result code; returns (result code, epoch) or raises."""
    if len(data) < 4:
        raise MalformedResponse(f"NAT-PMP response too short ({len(data)} bytes)")
    version, op, result = struct.unpack_from("!BBH", data)
    if version != VERSION:
        raise MalformedResponse(f"NAT-PMP response has version {version}, not 0")
    if op != RESPONSE_BIT + opcode:
        raise MalformedResponse(f"NAT-PMP response opcode {op}, expected {RESPONSE_BIT + opcode}")
    epoch = struct.unpack_from("!I", data, 4)[0] if len(data) >= 8 else 0
    if result != 0:
        raise ResultCodeError("NAT-PMP", result, RESULT_CODES.get(result, "unknown"))
    return result, epoch


def decode_external_address_response(data: bytes) -> ExternalAddressResponse:
    """Parse section 3.2's 12-byte answer."""
    _, epoch = _check_header(data, OP_EXTERNAL_ADDRESS)
    if len(data) < 12:
        raise MalformedResponse(f"NAT-PMP external address response is {len(data)} bytes, not 12")
    address = str(ipaddress.IPv4Address(data[8:12]))
    return ExternalAddressResponse(epoch=epoch, external_address=address)


def decode_map_response(data: bytes, internal_port: int, *, udp: bool = True) -> MapResponse:
    """Parse section 3.3's 16-byte answer to a request for ``internal_port``."""
    opcode = OP_MAP_UDP if udp else OP_MAP_TCP
    _, epoch = _check_header(data, opcode)
    if len(data) < 16:
        raise MalformedResponse(f"NAT-PMP mapping response is {len(data)} bytes, not 16")
    port, external_port, lifetime = struct.unpack_from("!HHI", data, 8)
    if port != internal_port:
        raise MalformedResponse(f"NAT-PMP response for internal port {port}, not {internal_port}")
    return MapResponse(opcode, epoch, port, external_port, lifetime)

# -*- test-case-name: tests.unit.test_stun_message -*-
"""
The STUN wire format below the message: the registries (message classes, methods,
attribute types), the codec's errors, the TLV layout with its padding, and the
MESSAGE-INTEGRITY and FINGERPRINT computations (RFC 8489 sections 5, 14, 14.5-14.7).

A pure model module: no sockets, no reactor, no clock.  `holepunch.stun.message` builds
`StunMessage <holepunch.stun.message.StunMessage>` on it; `holepunch.stun.framing`
frames messages over streams.
"""

from __future__ import annotations

import enum
import functools
import hmac
import ipaddress
import struct
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

MAGIC_COOKIE: int = 0x2112A442
FINGERPRINT_XOR: int = 0x5354554E
HEADER_LENGTH: int = 20
TRANSACTION_ID_LENGTH: int = 12
CHANNEL_NUMBER_MIN: int = 0x4000
CHANNEL_NUMBER_MAX: int = 0x4FFF

#: What the decoding functions accept.
BytesLike = bytes | bytearray | memoryview

MAX_VALUE_LENGTH = 0xFFFF
MAX_BODY_LENGTH = 0xFFFC  # the largest multiple of 4 that fits the 16-bit length field
MI_LENGTH = 20
MI_SHA256_MIN = 16
MI_SHA256_MAX = 32

#: The most attributes one message may carry (every TLV counts, also those after
#: MESSAGE-INTEGRITY). RFC 8489 sets no limit; real messages carry a handful (the
#: RFC 5769 sample request six, an authenticated TURN Allocate about ten), so 64 leaves
#: room for any honest use and bounds the work a datagram can cause.
MAX_ATTRIBUTES = 64


class MessageClass(enum.IntEnum):
    """
    The two class bits of the STUN message type (RFC 8489 section 5).
    """

    REQUEST = 0
    INDICATION = 1
    SUCCESS = 2
    ERROR = 3


class Method(enum.IntEnum):
    """
    STUN methods known to this codec (RFC 8489 18.2, RFC 8656 17).
    """

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class Attr(enum.IntEnum):
    """
    STUN attribute types (RFC 8489 18.3, RFC 5780 9.1, RFC 8656 18,
    RFC 8445 20.1, RFC 6062 6.2).
    """

    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    CONNECTION_ID = 0x002A
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C


KNOWN_ATTRIBUTES: frozenset[int] = frozenset(int(a) for a in Attr)
XOR_ADDRESS_ATTRIBUTES: frozenset[int] = frozenset(
    {Attr.XOR_MAPPED_ADDRESS, Attr.XOR_PEER_ADDRESS, Attr.XOR_RELAYED_ADDRESS}
)
SEAL_ATTRIBUTES = frozenset(
    {Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT}
)

#: Default reason phrases for error responses (RFC 8489 14.8, RFC 8656 18,
#: RFC 6062 6.3, RFC 8445 20.3).
ERROR_REASONS: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    487: "Role Conflict",
    500: "Server Error",
    508: "Insufficient Capacity",
}


class StunError(Exception):
    """
    Base class of the codec's errors.
    """


class StunEncodeError(StunError, ValueError):
    """
    A value cannot be represented in a STUN message.
    """


class StunDecodeError(StunError):
    """
    Bytes are not a well-formed STUN message (or attribute value).

    :ivar reason: a human-readable reason, also ``str(error)``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TooManyAttributes(StunDecodeError):
    """
    A message with more than `MAX_ATTRIBUTES` attributes: rejected before any of its
    attributes is looked at.
    """


class Address(NamedTuple):
    """
    A transport address: ``host`` is a textual IPv4 or IPv6 address.
    """

    host: str
    port: int


@dataclass
class RawAttribute:
    """
    One attribute as it appears on the wire.

    :ivar padding: the pad bytes seen when decoding (so that re-encoding is
        byte exact).  When encoding, padding of the wrong length (such as the
        default ``b""``) means zeros.  It is not part of equality.
    """

    type: int
    value: bytes
    padding: bytes = field(default=b"", compare=False)


def pad_length(n: int) -> int:
    return -n % 4


def is_bytes(value: object) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


def check_range(value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise StunEncodeError(f"{what} must be an integer in {low}..{high}, not {value!r}")
    return value


def join_message_type(method: int, message_class: int) -> int:
    return (
        ((method & 0x0F80) << 2)
        | ((method & 0x0070) << 1)
        | (method & 0x000F)
        | ((message_class & 0b10) << 7)
        | ((message_class & 0b01) << 4)
    )


def split_message_type(message_type: int) -> tuple[int, MessageClass]:
    method = (
        (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    )
    message_class = ((message_type & 0x0100) >> 7) | ((message_type & 0x0010) >> 4)
    return method, _MESSAGE_CLASSES[message_class]


# Lookups instead of calling the enums: MessageClass(n) and Method(n) cost ~0.3 us each.
_MESSAGE_CLASSES = tuple(MessageClass)  # indexed by the two class bits, 0..3
_METHODS: dict[int, Method] = {int(m): m for m in Method}


def check_method(method: int) -> int:
    return _METHODS.get(method, method)


def xor_key(cookie: int, transaction_id: bytes) -> bytes:
    if len(transaction_id) != TRANSACTION_ID_LENGTH:
        raise StunError("the transaction ID must be 12 bytes to XOR an address")
    return struct.pack("!I", cookie & 0xFFFFFFFF) + bytes(transaction_id)


def xor_bytes(data: bytes, key: bytes) -> bytes:
    n = min(len(data), len(key))
    return (int.from_bytes(data[:n]) ^ int.from_bytes(key[:n])).to_bytes(n)


@functools.lru_cache(maxsize=4096)
def packed_host(host: str) -> tuple[int, bytes]:
    """The STUN address family and packed form of a textual IP address (cached: a
    server answers the same few hosts again and again, and parsing costs ~1.5 us)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as e:
        raise StunEncodeError(f"not an IP address: {host!r}") from e
    return (0x01 if ip.version == 4 else 0x02), ip.packed


def check_exact_length(value: bytes, length: int, attr_type: int) -> None:
    if len(value) != length:
        raise StunDecodeError(
            f"attribute 0x{attr_type:04x} must be {length} bytes long, not {len(value)}"
        )


def pack_header(message_type: int, length: int, cookie: int, transaction_id: bytes) -> bytes:
    return struct.pack("!HHI", message_type, length, cookie) + transaction_id


def compute_mac(key: bytes, prefix: bytes, mac_length: int, digest: str) -> bytes:
    """
    The HMAC over ``prefix`` (a message up to, not including, the integrity
    attribute) with the header length adjusted to end after the attribute.
    """
    length = len(prefix) - HEADER_LENGTH + 4 + mac_length
    adjusted = prefix[:2] + struct.pack("!H", length) + prefix[4:]
    return hmac.new(key, adjusted, digest).digest()


def compute_fingerprint(prefix: bytes) -> bytes:
    return struct.pack("!I", (zlib.crc32(prefix) ^ FINGERPRINT_XOR) & 0xFFFFFFFF)


def fingerprint_matches(raw: bytes, offset: int, value: bytes) -> bool:
    length = offset - HEADER_LENGTH + 8
    adjusted = raw[:2] + struct.pack("!H", length) + raw[4:offset]
    return hmac.compare_digest(compute_fingerprint(adjusted), value)


_ATTRIBUTE_HEADER = struct.Struct("!HH")


def encode_attribute(attribute: RawAttribute) -> bytes:
    # The same checks as before, cheaper on the common case (a plain int and bytes).
    attr_type = attribute.type
    if type(attr_type) is not int or not 0 <= attr_type <= 0xFFFF:
        attr_type = check_range(attr_type, 0, 0xFFFF, "attribute type")
    value = attribute.value
    length = len(value) if type(value) is bytes else -1
    if length < 0:
        if not is_bytes(value):
            raise StunEncodeError(f"attribute value must be bytes, not {type(value).__name__}")
        length = len(value)
        value = bytes(value)
    if length > MAX_VALUE_LENGTH:
        raise StunEncodeError(f"attribute 0x{attr_type:04x} value too long ({length} bytes)")
    pad = -length % 4
    if not pad:
        return _ATTRIBUTE_HEADER.pack(attr_type, length) + value
    padding = attribute.padding
    if not is_bytes(padding) or len(padding) != pad:
        padding = bytes(pad)
    return _ATTRIBUTE_HEADER.pack(attr_type, length) + value + bytes(padding)


def parse_raw(data: bytes) -> tuple[int, int, bytes, list[tuple[int, RawAttribute]]]:
    """
    Check the structure of ``data`` and return the message type, cookie,
    transaction ID and the attributes that count, each with its offset.

    The work is linear in the length of ``data``, and a message with more than
    `MAX_ATTRIBUTES` attributes raises `TooManyAttributes`.

    Per RFC 8489 14.5 and 14.6, attributes after MESSAGE-INTEGRITY other than
    MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and attributes after
    MESSAGE-INTEGRITY-SHA256 other than FINGERPRINT, are left out.  The
    FINGERPRINT value is not checked here.
    """
    if len(data) < HEADER_LENGTH:
        raise StunDecodeError(f"too short for a STUN header ({len(data)} bytes)")
    message_type, length, cookie = struct.unpack_from("!HHI", data)
    if message_type & 0xC000:
        raise StunDecodeError("the two most significant bits are not zero")
    if length % 4:
        raise StunDecodeError(f"message length {length} is not a multiple of 4")
    if HEADER_LENGTH + length != len(data):
        raise StunDecodeError(
            f"message length {length} does not match the {len(data) - HEADER_LENGTH} bytes "
            "after the header"
        )
    transaction_id = bytes(data[8:HEADER_LENGTH])
    entries: list[tuple[int, RawAttribute]] = []
    seen_integrity = seen_integrity_sha256 = seen_fingerprint = False
    offset = HEADER_LENGTH
    count = 0
    while offset < len(data):
        count += 1
        if count > MAX_ATTRIBUTES:
            raise TooManyAttributes(f"more than {MAX_ATTRIBUTES} attributes")
        if len(data) - offset < 4:
            raise StunDecodeError(f"truncated attribute header at offset {offset}")
        attr_type, value_length = struct.unpack_from("!HH", data, offset)
        start = offset + 4
        end = start + value_length
        padded_end = end + pad_length(value_length)
        if padded_end > len(data):
            raise StunDecodeError(f"attribute 0x{attr_type:04x} runs past the end of the message")
        attribute = RawAttribute(attr_type, bytes(data[start:end]), bytes(data[end:padded_end]))
        if seen_fingerprint:
            raise StunDecodeError("FINGERPRINT is not the last attribute")
        if attr_type == Attr.FINGERPRINT:
            if value_length != 4:
                raise StunDecodeError(f"FINGERPRINT must be 4 bytes long, not {value_length}")
            seen_fingerprint = True
            entries.append((offset, attribute))
        elif attr_type == Attr.MESSAGE_INTEGRITY_SHA256:
            if seen_integrity_sha256:
                raise StunDecodeError("a second MESSAGE-INTEGRITY-SHA256")
            if value_length % 4 or not MI_SHA256_MIN <= value_length <= MI_SHA256_MAX:
                raise StunDecodeError(
                    f"MESSAGE-INTEGRITY-SHA256 must be 16..32 bytes in steps of 4, "
                    f"not {value_length}"
                )
            seen_integrity_sha256 = True
            entries.append((offset, attribute))
        elif attr_type == Attr.MESSAGE_INTEGRITY:
            if seen_integrity:
                raise StunDecodeError("a second MESSAGE-INTEGRITY")
            if not seen_integrity_sha256:  # else ignored, RFC 8489 14.6
                if value_length != MI_LENGTH:
                    raise StunDecodeError(
                        f"MESSAGE-INTEGRITY must be 20 bytes long, not {value_length}"
                    )
                seen_integrity = True
                entries.append((offset, attribute))
        elif not (seen_integrity or seen_integrity_sha256):
            entries.append((offset, attribute))
        offset = padded_end
    return message_type, cookie, transaction_id, entries


__all__ = [
    "CHANNEL_NUMBER_MAX",
    "CHANNEL_NUMBER_MIN",
    "ERROR_REASONS",
    "FINGERPRINT_XOR",
    "HEADER_LENGTH",
    "KNOWN_ATTRIBUTES",
    "MAGIC_COOKIE",
    "MAX_ATTRIBUTES",
    "MAX_BODY_LENGTH",
    "MAX_VALUE_LENGTH",
    "MI_LENGTH",
    "MI_SHA256_MAX",
    "MI_SHA256_MIN",
    "SEAL_ATTRIBUTES",
    "TRANSACTION_ID_LENGTH",
    "XOR_ADDRESS_ATTRIBUTES",
    "Address",
    "Attr",
    "BytesLike",
    "MessageClass",
    "Method",
    "RawAttribute",
    "StunDecodeError",
    "StunEncodeError",
    "StunError",
    "TooManyAttributes",
    "check_exact_length",
    "check_method",
    "check_range",
    "compute_fingerprint",
    "compute_mac",
    "encode_attribute",
    "fingerprint_matches",
    "is_bytes",
    "join_message_type",
    "pack_header",
    "packed_host",
    "pad_length",
    "parse_raw",
    "split_message_type",
    "xor_bytes",
    "xor_key",
]

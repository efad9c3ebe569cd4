# -*- test-case-name: tests.test_stun_message -*-
"""
The STUN message codec: bytes in, L{StunMessage} out, and back.

A pure model module: no sockets, no reactor, no clock.  It implements

 - RFC 8489 section 5 (message structure: header, message type with the
   interleaved method and class bits, magic cookie, transaction ID),
   section 6.2.2 (framing STUN over a stream transport), section 14
   (attribute TLV layout and padding) and the attribute formats of
   14.1 MAPPED-ADDRESS, 14.2 XOR-MAPPED-ADDRESS, 14.3 USERNAME,
   14.4 USERHASH, 14.5 MESSAGE-INTEGRITY, 14.6 MESSAGE-INTEGRITY-SHA256
   (including truncation), 14.7 FINGERPRINT, 14.8 ERROR-CODE, 14.9 REALM,
   14.10 NONCE, 14.11 PASSWORD-ALGORITHMS, 14.12 PASSWORD-ALGORITHM,
   14.13 UNKNOWN-ATTRIBUTES, 14.14 SOFTWARE, 14.15 ALTERNATE-SERVER and
   14.16 ALTERNATE-DOMAIN;
 - RFC 5389 / RFC 3489 compatibility: a message whose cookie field is not
   the magic cookie is accepted and re-encoded as it came (RFC 8489 section
   5, "backwards compatibility");
 - RFC 5780 section 7 (CHANGE-REQUEST, RESPONSE-PORT, PADDING,
   RESPONSE-ORIGIN, OTHER-ADDRESS);
 - RFC 8656 sections 12 and 14 (TURN attributes and the ChannelData message,
   with its padding over stream transports, section 12.5);
 - RFC 8445 section 16.1 (PRIORITY, USE-CANDIDATE, ICE-CONTROLLED,
   ICE-CONTROLLING).

Credentials (SASLprep and key derivation) live in
L{holepunch.stun.credentials}.
"""

from __future__ import annotations

__docformat__ = "epytext"

import enum
import functools
import hmac
import ipaddress
import os
import struct
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

MAGIC_COOKIE: int = 0x2112A442
FINGERPRINT_XOR: int = 0x5354554E
HEADER_LENGTH: int = 20
TRANSACTION_ID_LENGTH: int = 12
CHANNEL_NUMBER_MIN: int = 0x4000
CHANNEL_NUMBER_MAX: int = 0x4FFF

#: What the decoding functions accept.
BytesLike = bytes | bytearray | memoryview

_MAX_VALUE_LENGTH = 0xFFFF
_MAX_BODY_LENGTH = 0xFFFC  # the largest multiple of 4 that fits the 16-bit length field
_MI_LENGTH = 20
_MI_SHA256_MIN = 16
_MI_SHA256_MAX = 32


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
_SEAL_ATTRIBUTES = frozenset(
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

    @ivar reason: a human-readable reason, also C{str(error)}.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Address(NamedTuple):
    """
    A transport address: C{host} is a textual IPv4 or IPv6 address.
    """

    host: str
    port: int


@dataclass
class RawAttribute:
    """
    One attribute as it appears on the wire.

    @ivar padding: the pad bytes seen when decoding (so that re-encoding is
        byte exact).  When encoding, padding of the wrong length (such as the
        default C{b""}) means zeros.  It is not part of equality.
    """

    type: int
    value: bytes
    padding: bytes = field(default=b"", compare=False)


def _pad_length(n: int) -> int:
    return -n % 4


def _is_bytes(value: object) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


def _check_range(value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise StunEncodeError(f"{what} must be an integer in {low}..{high}, not {value!r}")
    return value


def _message_type(method: int, message_class: int) -> int:
    return (
        ((method & 0x0F80) << 2)
        | ((method & 0x0070) << 1)
        | (method & 0x000F)
        | ((message_class & 0b10) << 7)
        | ((message_class & 0b01) << 4)
    )


def _split_message_type(message_type: int) -> tuple[int, MessageClass]:
    method = (
        (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    )
    message_class = ((message_type & 0x0100) >> 7) | ((message_type & 0x0010) >> 4)
    return method, _MESSAGE_CLASSES[message_class]


# Lookups instead of calling the enums: MessageClass(n) and Method(n) cost ~0.3 us each.
_MESSAGE_CLASSES = tuple(MessageClass)  # indexed by the two class bits, 0..3
_METHODS: dict[int, Method] = {int(m): m for m in Method}


def _method(method: int) -> int:
    return _METHODS.get(method, method)


def _xor_key(cookie: int, transaction_id: bytes) -> bytes:
    if len(transaction_id) != TRANSACTION_ID_LENGTH:
        raise StunError("the transaction ID must be 12 bytes to XOR an address")
    return struct.pack("!I", cookie & 0xFFFFFFFF) + bytes(transaction_id)


def _xor(data: bytes, key: bytes) -> bytes:
    n = min(len(data), len(key))
    return (int.from_bytes(data[:n]) ^ int.from_bytes(key[:n])).to_bytes(n)


@functools.lru_cache(maxsize=4096)
def _packed_host(host: str) -> tuple[int, bytes]:
    """The STUN address family and packed form of a textual IP address (cached: a
    server answers the same few hosts again and again, and parsing costs ~1.5 us)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as e:
        raise StunEncodeError(f"not an IP address: {host!r}") from e
    return (0x01 if ip.version == 4 else 0x02), ip.packed


def _exact_length(value: bytes, length: int, attr_type: int) -> None:
    if len(value) != length:
        raise StunDecodeError(
            f"attribute 0x{attr_type:04x} must be {length} bytes long, not {len(value)}"
        )


@dataclass
class StunMessage:
    """
    A STUN message: header fields and the ordered list of attributes.

    @ivar cookie: the magic cookie, or for an RFC 3489 message the first four
        bytes of its 16-byte transaction ID.
    @ivar raw: the datagram this message was decoded from (set by L{decode});
        L{check_integrity} and friends work on it.  Not part of equality.
    """

    method: int
    message_class: MessageClass
    transaction_id: bytes
    attributes: list[RawAttribute] = field(default_factory=list)
    cookie: int = MAGIC_COOKIE
    raw: bytes | None = field(default=None, compare=False, repr=False)

    # -- construction ------------------------------------------------------

    @classmethod
    def request(
        cls, method: int = Method.BINDING, transaction_id: bytes | None = None
    ) -> StunMessage:
        """
        A new request; the transaction ID is random unless given.
        """
        if transaction_id is None:
            transaction_id = os.urandom(TRANSACTION_ID_LENGTH)
        return cls(method, MessageClass.REQUEST, transaction_id, [])

    @classmethod
    def indication(cls, method: int, transaction_id: bytes | None = None) -> StunMessage:
        """
        A new indication; the transaction ID is random unless given.
        """
        if transaction_id is None:
            transaction_id = os.urandom(TRANSACTION_ID_LENGTH)
        return cls(method, MessageClass.INDICATION, transaction_id, [])

    def success_response(self) -> StunMessage:
        """
        An empty success response to this message (same method, transaction
        ID and cookie).
        """
        return StunMessage(
            self.method, MessageClass.SUCCESS, self.transaction_id, [], cookie=self.cookie
        )

    def error_response(self, code: int, reason: str | None = None) -> StunMessage:
        """
        An error response to this message carrying ERROR-CODE C{code}; the
        reason phrase defaults to the one registered for C{code}.
        """
        if reason is None:
            reason = ERROR_REASONS.get(code, "")
        response = StunMessage(
            self.method, MessageClass.ERROR, self.transaction_id, [], cookie=self.cookie
        )
        return response.add_error_code(code, reason)

    @property
    def is_rfc3489(self) -> bool:
        """
        Whether this is a classic (RFC 3489) message without the magic cookie.
        """
        return self.cookie != MAGIC_COOKIE

    # -- generic attribute access -------------------------------------------

    def add(self, attr_type: int, value: bytes) -> StunMessage:
        """
        Append an attribute with a raw value; returns C{self}.
        """
        _check_range(attr_type, 0, 0xFFFF, "attribute type")
        if not _is_bytes(value):
            raise StunEncodeError(f"attribute value must be bytes, not {type(value).__name__}")
        if len(value) > _MAX_VALUE_LENGTH:
            raise StunEncodeError(f"attribute value too long ({len(value)} bytes)")
        self.attributes.append(RawAttribute(int(attr_type), bytes(value)))
        return self

    def get(self, attr_type: int) -> bytes | None:
        """
        The value of the first attribute of C{attr_type}, or C{None}.
        """
        for attribute in self.attributes:
            if attribute.type == attr_type:
                return attribute.value
        return None

    def get_all(self, attr_type: int) -> list[bytes]:
        """
        The values of every attribute of C{attr_type}, in order.
        """
        return [a.value for a in self.attributes if a.type == attr_type]

    def has(self, attr_type: int) -> bool:
        """
        Whether an attribute of C{attr_type} is present.
        """
        return any(a.type == attr_type for a in self.attributes)

    def remove(self, attr_type: int) -> None:
        """
        Remove every attribute of C{attr_type}.
        """
        self.attributes = [a for a in self.attributes if a.type != attr_type]

    # -- addresses (RFC 8489 14.1, 14.2) -------------------------------------

    def add_address(self, attr_type: int, address: Address | tuple[str, int]) -> StunMessage:
        """
        Append an address attribute.  The family comes from the host string;
        the types in L{XOR_ADDRESS_ATTRIBUTES} are XOR-encoded with the cookie
        (and for IPv6 the transaction ID).
        """
        host, port = address
        _check_range(port, 0, 0xFFFF, "port")
        if type(host) is str:
            family, packed = _packed_host(host)
        else:
            family, packed = _packed_host.__wrapped__(host)
        if attr_type in XOR_ADDRESS_ATTRIBUTES:
            key = _xor_key(self.cookie, self.transaction_id)
            port ^= self.cookie >> 16 & 0xFFFF
            packed = _xor(packed, key)
        return self.add(attr_type, struct.pack("!BBH", 0, family, port) + packed)

    def get_address(self, attr_type: int) -> Address | None:
        """
        The first address attribute of C{attr_type}, decoded (and un-XORed
        for the types in L{XOR_ADDRESS_ATTRIBUTES}).
        """
        value = self.get(attr_type)
        if value is None:
            return None
        if len(value) < 4:
            raise StunDecodeError(f"address attribute 0x{attr_type:04x} too short")
        family = value[1]
        port = int.from_bytes(value[2:4], "big")
        packed = value[4:]
        if family == 0x01:
            _exact_length(value, 8, attr_type)
        elif family == 0x02:
            _exact_length(value, 20, attr_type)
        else:
            raise StunDecodeError(f"unknown address family 0x{family:02x}")
        if attr_type in XOR_ADDRESS_ATTRIBUTES:
            if len(self.transaction_id) != TRANSACTION_ID_LENGTH:
                raise StunDecodeError("cannot un-XOR an address without a 12-byte transaction ID")
            port ^= self.cookie >> 16 & 0xFFFF
            packed = _xor(packed, _xor_key(self.cookie, self.transaction_id))
        ip = ipaddress.IPv4Address(packed) if family == 0x01 else ipaddress.IPv6Address(packed)
        return Address(str(ip), port)

    # -- text (USERNAME, REALM, NONCE, SOFTWARE, ALTERNATE-DOMAIN) ----------

    def add_string(self, attr_type: int, value: str) -> StunMessage:
        """
        Append a UTF-8 text attribute.
        """
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise StunEncodeError(f"cannot encode {value!r} as UTF-8") from e
        return self.add(attr_type, encoded)

    def get_string(self, attr_type: int) -> str | None:
        """
        The first attribute of C{attr_type} decoded as UTF-8.
        """
        value = self.get(attr_type)
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise StunDecodeError(f"attribute 0x{attr_type:04x} is not UTF-8: {e}") from None

    # -- integers ------------------------------------------------------------

    def add_uint32(self, attr_type: int, value: int) -> StunMessage:
        """
        Append a 32-bit unsigned integer attribute (PRIORITY, LIFETIME, ...).
        """
        _check_range(value, 0, 0xFFFFFFFF, "value")
        return self.add(attr_type, struct.pack("!I", value))

    def get_uint32(self, attr_type: int) -> int | None:
        """
        The first attribute of C{attr_type} as a 32-bit unsigned integer.
        """
        value = self.get(attr_type)
        if value is None:
            return None
        _exact_length(value, 4, attr_type)
        return int.from_bytes(value, "big")

    def add_uint64(self, attr_type: int, value: int) -> StunMessage:
        """
        Append a 64-bit unsigned integer attribute (ICE tie-breakers).
        """
        _check_range(value, 0, 0xFFFFFFFFFFFFFFFF, "value")
        return self.add(attr_type, struct.pack("!Q", value))

    def get_uint64(self, attr_type: int) -> int | None:
        """
        The first attribute of C{attr_type} as a 64-bit unsigned integer.
        """
        value = self.get(attr_type)
        if value is None:
            return None
        _exact_length(value, 8, attr_type)
        return int.from_bytes(value, "big")

    def add_flag(self, attr_type: int) -> StunMessage:
        """
        Append an attribute with an empty value (USE-CANDIDATE,
        DONT-FRAGMENT).
        """
        return self.add(attr_type, b"")

    # -- ERROR-CODE (RFC 8489 14.8) -----------------------------------------

    def add_error_code(self, code: int, reason: str) -> StunMessage:
        """
        Append ERROR-CODE; C{code} is 300..699.
        """
        _check_range(code, 300, 699, "error code")
        try:
            encoded = reason.encode("utf-8")
        except UnicodeEncodeError as e:
            raise StunEncodeError(f"cannot encode {reason!r} as UTF-8") from e
        header = struct.pack("!HBB", 0, code // 100, code % 100)
        return self.add(Attr.ERROR_CODE, header + encoded)

    def get_error_code(self) -> tuple[int, str] | None:
        """
        ERROR-CODE as C{(code, reason)}.  An undecodable reason phrase is
        decoded with replacement characters rather than rejected.
        """
        value = self.get(Attr.ERROR_CODE)
        if value is None:
            return None
        if len(value) < 4:
            raise StunDecodeError("ERROR-CODE too short")
        error_class = value[2] & 0x07
        number = value[3]
        if not 3 <= error_class <= 6 or number > 99:
            raise StunDecodeError(f"ERROR-CODE class {error_class} number {number} out of range")
        return error_class * 100 + number, value[4:].decode("utf-8", "replace")

    # -- UNKNOWN-ATTRIBUTES (RFC 8489 14.13) --------------------------------

    def add_unknown_attributes(self, types: Sequence[int]) -> StunMessage:
        """
        Append UNKNOWN-ATTRIBUTES listing C{types}.
        """
        for t in types:
            _check_range(t, 0, 0xFFFF, "attribute type")
        return self.add(Attr.UNKNOWN_ATTRIBUTES, b"".join(struct.pack("!H", t) for t in types))

    def get_unknown_attributes(self) -> list[int] | None:
        """
        The attribute types listed in UNKNOWN-ATTRIBUTES.
        """
        value = self.get(Attr.UNKNOWN_ATTRIBUTES)
        if value is None:
            return None
        if len(value) % 2:
            raise StunDecodeError("UNKNOWN-ATTRIBUTES has an odd length")
        return [int.from_bytes(value[i : i + 2], "big") for i in range(0, len(value), 2)]

    # -- RFC 5780 --------------------------------------------------------------

    def add_change_request(self, change_ip: bool, change_port: bool) -> StunMessage:
        """
        Append CHANGE-REQUEST (RFC 5780 7.2).
        """
        flags = (0x04 if change_ip else 0) | (0x02 if change_port else 0)
        return self.add(Attr.CHANGE_REQUEST, struct.pack("!I", flags))

    def get_change_request(self) -> tuple[bool, bool] | None:
        """
        CHANGE-REQUEST as C{(change_ip, change_port)}.
        """
        value = self.get(Attr.CHANGE_REQUEST)
        if value is None:
            return None
        _exact_length(value, 4, Attr.CHANGE_REQUEST)
        return bool(value[3] & 0x04), bool(value[3] & 0x02)

    def add_response_port(self, port: int) -> StunMessage:
        """
        Append RESPONSE-PORT (RFC 5780 7.5): the port and two zero bytes.
        """
        _check_range(port, 0, 0xFFFF, "port")
        return self.add(Attr.RESPONSE_PORT, struct.pack("!HH", port, 0))

    def get_response_port(self) -> int | None:
        """
        The port in RESPONSE-PORT.
        """
        value = self.get(Attr.RESPONSE_PORT)
        if value is None:
            return None
        _exact_length(value, 4, Attr.RESPONSE_PORT)
        return int.from_bytes(value[:2], "big")

    def add_padding(self, length: int) -> StunMessage:
        """
        Append PADDING (RFC 5780 7.6) with C{length} zero bytes.
        """
        _check_range(length, 0, _MAX_VALUE_LENGTH, "padding length")
        return self.add(Attr.PADDING, bytes(length))

    # -- TURN (RFC 8656 14) -----------------------------------------------------

    def add_requested_transport(self, protocol: int) -> StunMessage:
        """
        Append REQUESTED-TRANSPORT: an IP protocol number (17 UDP, 6 TCP).
        """
        _check_range(protocol, 0, 0xFF, "protocol")
        return self.add(Attr.REQUESTED_TRANSPORT, bytes([protocol, 0, 0, 0]))

    def get_requested_transport(self) -> int | None:
        """
        The protocol number in REQUESTED-TRANSPORT.
        """
        value = self.get(Attr.REQUESTED_TRANSPORT)
        if value is None:
            return None
        _exact_length(value, 4, Attr.REQUESTED_TRANSPORT)
        return value[0]

    def add_channel_number(self, n: int) -> StunMessage:
        """
        Append CHANNEL-NUMBER.  Any 16-bit value is accepted so that servers
        can be tested with invalid ones; valid channels are 0x4000..0x4FFF.
        """
        _check_range(n, 0, 0xFFFF, "channel number")
        return self.add(Attr.CHANNEL_NUMBER, struct.pack("!HH", n, 0))

    def get_channel_number(self) -> int | None:
        """
        The number in CHANNEL-NUMBER (not range-checked: that is the
        server's job, with a 400 response).
        """
        value = self.get(Attr.CHANNEL_NUMBER)
        if value is None:
            return None
        _exact_length(value, 4, Attr.CHANNEL_NUMBER)
        return int.from_bytes(value[:2], "big")

    # -- PASSWORD-ALGORITHM(S) (RFC 8489 14.11, 14.12) ----------------------

    def add_password_algorithm(self, algorithm: int, params: bytes = b"") -> StunMessage:
        """
        Append PASSWORD-ALGORITHM.
        """
        return self.add(Attr.PASSWORD_ALGORITHM, _pack_algorithm(algorithm, params, pad=False))

    def get_password_algorithm(self) -> tuple[int, bytes] | None:
        """
        PASSWORD-ALGORITHM as C{(algorithm, parameters)}.
        """
        value = self.get(Attr.PASSWORD_ALGORITHM)
        if value is None:
            return None
        algorithms = _unpack_algorithms(value, Attr.PASSWORD_ALGORITHM)
        if len(algorithms) != 1:
            raise StunDecodeError("PASSWORD-ALGORITHM must hold exactly one algorithm")
        return algorithms[0]

    def add_password_algorithms(self, algorithms: Sequence[tuple[int, bytes]]) -> StunMessage:
        """
        Append PASSWORD-ALGORITHMS; each entry's parameters are padded to a
        32-bit boundary.
        """
        value = b"".join(_pack_algorithm(a, p, pad=True) for a, p in algorithms)
        return self.add(Attr.PASSWORD_ALGORITHMS, value)

    def get_password_algorithms(self) -> list[tuple[int, bytes]] | None:
        """
        PASSWORD-ALGORITHMS as a list of C{(algorithm, parameters)}.
        """
        value = self.get(Attr.PASSWORD_ALGORITHMS)
        if value is None:
            return None
        return _unpack_algorithms(value, Attr.PASSWORD_ALGORITHMS)

    # -- checks --------------------------------------------------------------

    def unknown_comprehension_required(
        self, known: Collection[int] = KNOWN_ATTRIBUTES
    ) -> list[int]:
        """
        Comprehension-required attribute types (below 0x8000) not in
        C{known}, each once, in order of appearance (RFC 8489 7.3).
        """
        unknown: list[int] = []
        for attribute in self.attributes:
            t = attribute.type
            if t < 0x8000 and t not in known and t not in unknown:
                unknown.append(t)
        return unknown

    def check_integrity(self, key: bytes) -> bool:
        """
        Whether MESSAGE-INTEGRITY in L{raw} is the HMAC-SHA1 of the message
        under C{key} (RFC 8489 14.5).  False when absent or not decoded.
        """
        return self._check_mac(Attr.MESSAGE_INTEGRITY, key)

    def check_integrity_sha256(self, key: bytes) -> bool:
        """
        Whether MESSAGE-INTEGRITY-SHA256 in L{raw} is the (possibly truncated)
        HMAC-SHA256 of the message under C{key} (RFC 8489 14.6).
        """
        return self._check_mac(Attr.MESSAGE_INTEGRITY_SHA256, key)

    def check_fingerprint(self) -> bool:
        """
        Whether FINGERPRINT in L{raw} is the right CRC-32 (RFC 8489 14.7).
        """
        if self.raw is None:
            return False
        try:
            _, _, _, entries = _parse(self.raw)
        except StunDecodeError:
            return False
        for offset, attribute in entries:
            if attribute.type == Attr.FINGERPRINT:
                return _fingerprint_matches(self.raw, offset, attribute.value)
        return False

    def _check_mac(self, attr_type: int, key: bytes) -> bool:
        if self.raw is None:
            return False
        try:
            _, _, _, entries = _parse(self.raw)
        except StunDecodeError:
            return False
        for offset, attribute in entries:
            if attribute.type == attr_type:
                digest = "sha1" if attr_type == Attr.MESSAGE_INTEGRITY else "sha256"
                expected = _mac(key, self.raw[:offset], len(attribute.value), digest)
                return hmac.compare_digest(expected[: len(attribute.value)], attribute.value)
        return False

    def stripped(self) -> StunMessage:
        """
        A copy without MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and
        FINGERPRINT, and without L{raw}: ready to be re-encoded and sealed.
        """
        attributes = [replace(a) for a in self.attributes if a.type not in _SEAL_ATTRIBUTES]
        return replace(self, attributes=attributes, raw=None)


def _pack_algorithm(algorithm: int, params: bytes, *, pad: bool) -> bytes:
    _check_range(algorithm, 0, 0xFFFF, "password algorithm")
    if not _is_bytes(params) or len(params) > _MAX_VALUE_LENGTH:
        raise StunEncodeError("password algorithm parameters must be bytes up to 65535 long")
    padding = bytes(_pad_length(len(params))) if pad else b""
    return struct.pack("!HH", algorithm, len(params)) + bytes(params) + padding


def _unpack_algorithms(value: bytes, attr_type: int) -> list[tuple[int, bytes]]:
    algorithms = []
    offset = 0
    while offset < len(value):
        if len(value) - offset < 4:
            raise StunDecodeError(f"attribute 0x{attr_type:04x}: truncated algorithm entry")
        algorithm, length = struct.unpack_from("!HH", value, offset)
        offset += 4
        if offset + length > len(value):
            raise StunDecodeError(f"attribute 0x{attr_type:04x}: parameters run past the end")
        algorithms.append((algorithm, value[offset : offset + length]))
        # Parameters are padded to a 32-bit boundary; tolerate a missing pad
        # at the very end (PASSWORD-ALGORITHM's own attribute padding).
        offset = min(offset + length + _pad_length(length), len(value))
    return algorithms


def _header(message_type: int, length: int, cookie: int, transaction_id: bytes) -> bytes:
    return struct.pack("!HHI", message_type, length, cookie) + transaction_id


def _mac(key: bytes, prefix: bytes, mac_length: int, digest: str) -> bytes:
    """
    The HMAC over C{prefix} (a message up to, not including, the integrity
    attribute) with the header length adjusted to end after the attribute.
    """
    length = len(prefix) - HEADER_LENGTH + 4 + mac_length
    adjusted = prefix[:2] + struct.pack("!H", length) + prefix[4:]
    return hmac.new(key, adjusted, digest).digest()


def _fingerprint(prefix: bytes) -> bytes:
    return struct.pack("!I", (zlib.crc32(prefix) ^ FINGERPRINT_XOR) & 0xFFFFFFFF)


def _fingerprint_matches(raw: bytes, offset: int, value: bytes) -> bool:
    length = offset - HEADER_LENGTH + 8
    adjusted = raw[:2] + struct.pack("!H", length) + raw[4:offset]
    return hmac.compare_digest(_fingerprint(adjusted), value)


_ATTRIBUTE_HEADER = struct.Struct("!HH")


def _encode_attribute(attribute: RawAttribute) -> bytes:
    # The same checks as before, cheaper on the common case (a plain int and bytes).
    attr_type = attribute.type
    if type(attr_type) is not int or not 0 <= attr_type <= 0xFFFF:
        attr_type = _check_range(attr_type, 0, 0xFFFF, "attribute type")
    value = attribute.value
    length = len(value) if type(value) is bytes else -1
    if length < 0:
        if not _is_bytes(value):
            raise StunEncodeError(f"attribute value must be bytes, not {type(value).__name__}")
        length = len(value)
        value = bytes(value)
    if length > _MAX_VALUE_LENGTH:
        raise StunEncodeError(f"attribute 0x{attr_type:04x} value too long ({length} bytes)")
    pad = -length % 4
    if not pad:
        return _ATTRIBUTE_HEADER.pack(attr_type, length) + value
    padding = attribute.padding
    if not _is_bytes(padding) or len(padding) != pad:
        padding = bytes(pad)
    return _ATTRIBUTE_HEADER.pack(attr_type, length) + value + bytes(padding)


def encode(
    msg: StunMessage,
    *,
    integrity_key: bytes | None = None,
    integrity_sha256_key: bytes | None = None,
    fingerprint: bool = False,
    integrity_sha256_length: int = 32,
) -> bytes:
    """
    Serialize C{msg}.

    If any of C{integrity_key}, C{integrity_sha256_key} or C{fingerprint} is
    given, existing MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and
    FINGERPRINT attributes are dropped and fresh ones appended in that order
    (RFC 8489 14.5, 14.6, 14.7); otherwise the attribute list is written as
    it is.

    @param integrity_sha256_length: how many bytes of the HMAC-SHA256 to keep
        (16..32, a multiple of 4; RFC 8489 14.6 truncation).
    @raise StunError: for values a STUN message cannot carry.
    """
    method = _check_range(msg.method, 0, 0xFFF, "method")
    message_class = _check_range(msg.message_class, 0, 3, "message class")
    cookie = _check_range(msg.cookie, 0, 0xFFFFFFFF, "cookie")
    transaction_id = msg.transaction_id
    if not _is_bytes(transaction_id) or len(transaction_id) != TRANSACTION_ID_LENGTH:
        raise StunEncodeError(f"transaction ID must be 12 bytes, not {transaction_id!r}")
    transaction_id = bytes(transaction_id)
    for key in (integrity_key, integrity_sha256_key):
        if key is not None and not _is_bytes(key):
            raise StunEncodeError(f"integrity keys must be bytes, not {type(key).__name__}")
    if (
        integrity_sha256_length % 4
        or not _MI_SHA256_MIN <= integrity_sha256_length <= _MI_SHA256_MAX
    ):
        raise StunEncodeError("integrity_sha256_length must be 16..32 and a multiple of 4")
    message_type = _message_type(method, message_class)

    attributes = msg.attributes
    if integrity_key is not None or integrity_sha256_key is not None or fingerprint:
        attributes = [a for a in attributes if a.type not in _SEAL_ATTRIBUTES]
    body = b"".join([_encode_attribute(a) for a in attributes])

    def header(length: int) -> bytes:
        if length > _MAX_BODY_LENGTH:
            raise StunEncodeError(f"message too long ({length} bytes of attributes)")
        return _header(message_type, length, cookie, transaction_id)

    if integrity_key is not None:
        prefix = header(len(body) + 4 + _MI_LENGTH) + body
        mac = _mac(bytes(integrity_key), prefix, _MI_LENGTH, "sha1")
        body += _encode_attribute(RawAttribute(Attr.MESSAGE_INTEGRITY, mac))
    if integrity_sha256_key is not None:
        prefix = header(len(body) + 4 + integrity_sha256_length) + body
        mac = _mac(bytes(integrity_sha256_key), prefix, integrity_sha256_length, "sha256")
        mac = mac[:integrity_sha256_length]
        body += _encode_attribute(RawAttribute(Attr.MESSAGE_INTEGRITY_SHA256, mac))
    if fingerprint:
        crc = _fingerprint(header(len(body) + 8) + body)
        body += _encode_attribute(RawAttribute(Attr.FINGERPRINT, crc))
    return header(len(body)) + body


def _parse(data: bytes) -> tuple[int, int, bytes, list[tuple[int, RawAttribute]]]:
    """
    Check the structure of C{data} and return the message type, cookie,
    transaction ID and the attributes that count, each with its offset.

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
    while offset < len(data):
        if len(data) - offset < 4:
            raise StunDecodeError(f"truncated attribute header at offset {offset}")
        attr_type, value_length = struct.unpack_from("!HH", data, offset)
        start = offset + 4
        end = start + value_length
        padded_end = end + _pad_length(value_length)
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
            if value_length % 4 or not _MI_SHA256_MIN <= value_length <= _MI_SHA256_MAX:
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
                if value_length != _MI_LENGTH:
                    raise StunDecodeError(
                        f"MESSAGE-INTEGRITY must be 20 bytes long, not {value_length}"
                    )
                seen_integrity = True
                entries.append((offset, attribute))
        elif not (seen_integrity or seen_integrity_sha256):
            entries.append((offset, attribute))
        offset = padded_end
    return message_type, cookie, transaction_id, entries


def decode(data: BytesLike) -> StunMessage:
    """
    Parse one STUN message; C{data} must be exactly one message.

    @raise StunDecodeError: for any input that is not a well-formed STUN
        message, including a wrong FINGERPRINT.
    """
    if not _is_bytes(data):
        raise StunDecodeError(f"expected bytes, not {type(data).__name__}")
    data = bytes(data)
    message_type, cookie, transaction_id, entries = _parse(data)
    for offset, attribute in entries:
        if attribute.type == Attr.FINGERPRINT and not _fingerprint_matches(
            data, offset, attribute.value
        ):
            raise StunDecodeError("FINGERPRINT does not match")
    method, message_class = _split_message_type(message_type)
    return StunMessage(
        _method(method),
        message_class,
        transaction_id,
        [attribute for _, attribute in entries],
        cookie=cookie,
        raw=data,
    )


def is_stun(data: BytesLike) -> bool:
    """
    A cheap test for demultiplexing: does C{data} look like one STUN message
    with the magic cookie?  (No attribute parsing.)
    """
    return (
        len(data) >= HEADER_LENGTH
        and data[0] & 0xC0 == 0
        and data[4:8] == b"\x21\x12\xa4\x42"
        and (data[2] << 8 | data[3]) % 4 == 0
        and HEADER_LENGTH + (data[2] << 8 | data[3]) == len(data)
    )


def message_length(prefix: BytesLike) -> int | None:
    """
    The total length of the STUN message or TURN ChannelData frame (padded
    to 4 bytes, as over TCP) that starts with C{prefix}.

    @return: C{None} if fewer than 4 bytes are given.
    @raise StunDecodeError: if C{prefix} starts neither (first two bits 1x),
        or claims a STUN length that is not a multiple of 4.
    """
    if len(prefix) < 4:
        return None
    length = prefix[2] << 8 | prefix[3]
    kind = prefix[0] & 0xC0
    if kind == 0x00:
        if length % 4:
            raise StunDecodeError(f"STUN message length {length} is not a multiple of 4")
        return HEADER_LENGTH + length
    if kind == 0x40:
        return 4 + length + _pad_length(length)
    raise StunDecodeError("neither a STUN message nor a ChannelData message")


class StreamFramer:
    """
    Split a byte stream (STUN over TCP or TLS, RFC 8489 6.2.2) into STUN
    messages and ChannelData frames (padded to 4 bytes, RFC 8656 12.5).

    Once it has raised, a framer keeps raising: the stream cannot be
    resynchronised.
    """

    def __init__(self, max_size: int = 65535 + 20) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._error: StunDecodeError | None = None

    @property
    def buffered(self) -> int:
        """
        How many bytes of an incomplete frame are held.
        """
        return len(self._buffer)

    def feed(self, data: BytesLike) -> list[bytes]:
        """
        Add C{data} and return the frames it completes, in order.

        @raise StunDecodeError: the stream holds something else, or a frame
            longer than C{max_size}.
        """
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames: list[bytes] = []
        position = 0
        try:
            while True:
                size = message_length(self._buffer[position : position + 4])
                if size is None:
                    break
                if size > self.max_size:
                    raise StunDecodeError(f"a {size}-byte frame exceeds {self.max_size} bytes")
                if len(self._buffer) - position < size:
                    break
                frames.append(bytes(self._buffer[position : position + size]))
                position += size
        except StunDecodeError as e:
            self._error = e
            self._buffer.clear()
            raise
        del self._buffer[:position]
        return frames


def encode_channel_data(channel: int, data: bytes, pad: bool = False) -> bytes:
    """
    A ChannelData message (RFC 8656 12.4); C{pad=True} pads it to a multiple
    of 4 bytes, as required over stream transports (12.5).
    """
    _check_range(channel, CHANNEL_NUMBER_MIN, CHANNEL_NUMBER_MAX, "channel number")
    if not _is_bytes(data) or len(data) > _MAX_VALUE_LENGTH:
        raise StunEncodeError("ChannelData application data must be bytes up to 65535 long")
    padding = bytes(_pad_length(len(data))) if pad else b""
    return struct.pack("!HH", channel, len(data)) + bytes(data) + padding


def decode_channel_data(frame: BytesLike) -> tuple[int, bytes]:
    """
    Parse a ChannelData message into C{(channel, data)}.  Up to the padding
    to a multiple of 4 bytes may follow the data (it is optional over UDP).

    @raise StunDecodeError: if C{frame} is not one ChannelData message.
    """
    if not _is_bytes(frame):
        raise StunDecodeError(f"expected bytes, not {type(frame).__name__}")
    if len(frame) < 4:
        raise StunDecodeError("too short for a ChannelData header")
    channel, length = struct.unpack_from("!HH", frame)
    if not CHANNEL_NUMBER_MIN <= channel <= CHANNEL_NUMBER_MAX:
        raise StunDecodeError(f"channel number 0x{channel:04x} is outside 0x4000..0x4FFF")
    if not 4 + length <= len(frame) <= 4 + length + _pad_length(length):
        raise StunDecodeError(
            f"ChannelData length {length} does not match the {len(frame) - 4} bytes after "
            "the header"
        )
    return channel, bytes(frame[4 : 4 + length])

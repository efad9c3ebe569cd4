# -*- test-case-name: tests.unit.test_stun_message -*-
"""
The STUN message codec: bytes in, `StunMessage` out, and back.

A pure model module: no sockets, no reactor, no clock.  It implements

 - RFC 8489 section 5 (message structure: header, message type with the
   interleaved method and class bits, magic cookie, transaction ID), section 14
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
 - RFC 8656 section 14 (TURN attributes);
 - RFC 8445 section 16.1 (PRIORITY, USE-CANDIDATE, ICE-CONTROLLED,
   ICE-CONTROLLING).

The registries, errors and TLV primitives are in `holepunch.stun.wire`; framing over
streams and ChannelData (RFC 8489 6.2.2, RFC 8656 12) in `holepunch.stun.framing`;
credentials (SASLprep and key derivation) in `holepunch.stun.credentials`.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

from holepunch.stun.wire import (
    ERROR_REASONS,
    KNOWN_ATTRIBUTES,
    MAGIC_COOKIE,
    MAX_BODY_LENGTH,
    MAX_VALUE_LENGTH,
    MI_LENGTH,
    MI_SHA256_MAX,
    MI_SHA256_MIN,
    SEAL_ATTRIBUTES,
    TRANSACTION_ID_LENGTH,
    XOR_ADDRESS_ATTRIBUTES,
    Address,
    Attr,
    BytesLike,
    MessageClass,
    Method,
    RawAttribute,
    StunDecodeError,
    StunEncodeError,
    check_exact_length,
    check_method,
    check_range,
    compute_fingerprint,
    compute_mac,
    encode_attribute,
    fingerprint_matches,
    is_bytes,
    join_message_type,
    pack_header,
    packed_host,
    pad_length,
    parse_raw,
    split_message_type,
    xor_bytes,
    xor_key,
)


def encode_error_value(code: int, reason: str, first: int = 0) -> bytes:
    """The value of ERROR-CODE (RFC 8489 14.8), or of an attribute laid out like it
    (RFC 8656's ADDRESS-ERROR-CODE puts the family in ``first``, the first byte): class
    and number of ``code`` (300..699), then the UTF-8 reason phrase."""
    check_range(code, 300, 699, "error code")
    try:
        encoded = reason.encode("utf-8")
    except UnicodeEncodeError as e:
        raise StunEncodeError(f"cannot encode {reason!r} as UTF-8") from e
    return struct.pack("!BBBB", first, 0, code // 100, code % 100) + encoded


def decode_error_value(value: bytes, name: str = "ERROR-CODE") -> tuple[int, str]:
    """``(code, reason)`` from an ERROR-CODE-shaped value; an undecodable reason phrase
    is decoded with replacement characters rather than rejected.

    :raises StunDecodeError: too short, or a class or number out of range.
    """
    if len(value) < 4:
        raise StunDecodeError(f"{name} too short")
    error_class = value[2] & 0x07
    number = value[3]
    if not 3 <= error_class <= 6 or number > 99:
        raise StunDecodeError(f"{name} class {error_class} number {number} out of range")
    return error_class * 100 + number, value[4:].decode("utf-8", "replace")


@dataclass
class StunMessage:
    """
    A STUN message: header fields and the ordered list of attributes.

    :ivar cookie: the magic cookie, or for an RFC 3489 message the first four
        bytes of its 16-byte transaction ID.
    :ivar raw: the datagram this message was decoded from (set by `decode`);
        `check_integrity` and friends work on it.  Not part of equality.
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
        An error response to this message carrying ERROR-CODE ``code``; the
        reason phrase defaults to the one registered for ``code``.
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
        Append an attribute with a raw value; returns ``self``.
        """
        check_range(attr_type, 0, 0xFFFF, "attribute type")
        if not is_bytes(value):
            raise StunEncodeError(f"attribute value must be bytes, not {type(value).__name__}")
        if len(value) > MAX_VALUE_LENGTH:
            raise StunEncodeError(f"attribute value too long ({len(value)} bytes)")
        self.attributes.append(RawAttribute(int(attr_type), bytes(value)))
        return self

    def get(self, attr_type: int) -> bytes | None:
        """
        The value of the first attribute of ``attr_type``, or ``None``.
        """
        for attribute in self.attributes:
            if attribute.type == attr_type:
                return attribute.value
        return None

    def get_all(self, attr_type: int) -> list[bytes]:
        """
        The values of every attribute of ``attr_type``, in order.
        """
        return [a.value for a in self.attributes if a.type == attr_type]

    def has(self, attr_type: int) -> bool:
        """
        Whether an attribute of ``attr_type`` is present.
        """
        return any(a.type == attr_type for a in self.attributes)

    def remove(self, attr_type: int) -> None:
        """
        Remove every attribute of ``attr_type``.
        """
        self.attributes = [a for a in self.attributes if a.type != attr_type]

    # -- addresses (RFC 8489 14.1, 14.2) -------------------------------------

    def add_address(self, attr_type: int, address: Address | tuple[str, int]) -> StunMessage:
        """
        Append an address attribute.  The family comes from the host string;
        the types in `XOR_ADDRESS_ATTRIBUTES` are XOR-encoded with the cookie
        (and for IPv6 the transaction ID).
        """
        host, port = address
        check_range(port, 0, 0xFFFF, "port")
        if type(host) is str:
            family, packed = packed_host(host)
        else:
            family, packed = packed_host.__wrapped__(host)
        if attr_type in XOR_ADDRESS_ATTRIBUTES:
            key = xor_key(self.cookie, self.transaction_id)
            port ^= self.cookie >> 16 & 0xFFFF
            packed = xor_bytes(packed, key)
        return self.add(attr_type, struct.pack("!BBH", 0, family, port) + packed)

    def get_address(self, attr_type: int) -> Address | None:
        """
        The first address attribute of ``attr_type``, decoded (and un-XORed
        for the types in `XOR_ADDRESS_ATTRIBUTES`).
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
            check_exact_length(value, 8, attr_type)
        elif family == 0x02:
            check_exact_length(value, 20, attr_type)
        else:
            raise StunDecodeError(f"unknown address family 0x{family:02x}")
        if attr_type in XOR_ADDRESS_ATTRIBUTES:
            if len(self.transaction_id) != TRANSACTION_ID_LENGTH:
                raise StunDecodeError("cannot un-XOR an address without a 12-byte transaction ID")
            port ^= self.cookie >> 16 & 0xFFFF
            packed = xor_bytes(packed, xor_key(self.cookie, self.transaction_id))
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
        The first attribute of ``attr_type`` decoded as UTF-8.
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
        check_range(value, 0, 0xFFFFFFFF, "value")
        return self.add(attr_type, struct.pack("!I", value))

    def get_uint32(self, attr_type: int) -> int | None:
        """
        The first attribute of ``attr_type`` as a 32-bit unsigned integer.
        """
        value = self.get(attr_type)
        if value is None:
            return None
        check_exact_length(value, 4, attr_type)
        return int.from_bytes(value, "big")

    def add_uint64(self, attr_type: int, value: int) -> StunMessage:
        """
        Append a 64-bit unsigned integer attribute (ICE tie-breakers).
        """
        check_range(value, 0, 0xFFFFFFFFFFFFFFFF, "value")
        return self.add(attr_type, struct.pack("!Q", value))

    def get_uint64(self, attr_type: int) -> int | None:
        """
        The first attribute of ``attr_type`` as a 64-bit unsigned integer.
        """
        value = self.get(attr_type)
        if value is None:
            return None
        check_exact_length(value, 8, attr_type)
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
        Append ERROR-CODE; ``code`` is 300..699.
        """
        return self.add(Attr.ERROR_CODE, encode_error_value(code, reason))

    def get_error_code(self) -> tuple[int, str] | None:
        """
        ERROR-CODE as ``(code, reason)``.  An undecodable reason phrase is
        decoded with replacement characters rather than rejected.
        """
        value = self.get(Attr.ERROR_CODE)
        if value is None:
            return None
        return decode_error_value(value)

    # -- UNKNOWN-ATTRIBUTES (RFC 8489 14.13) --------------------------------

    def add_unknown_attributes(self, types: Sequence[int]) -> StunMessage:
        """
        Append UNKNOWN-ATTRIBUTES listing ``types``.
        """
        for t in types:
            check_range(t, 0, 0xFFFF, "attribute type")
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
        CHANGE-REQUEST as ``(change_ip, change_port)``.
        """
        value = self.get(Attr.CHANGE_REQUEST)
        if value is None:
            return None
        check_exact_length(value, 4, Attr.CHANGE_REQUEST)
        return bool(value[3] & 0x04), bool(value[3] & 0x02)

    def add_response_port(self, port: int) -> StunMessage:
        """
        Append RESPONSE-PORT (RFC 5780 7.5): the port and two zero bytes.
        """
        check_range(port, 0, 0xFFFF, "port")
        return self.add(Attr.RESPONSE_PORT, struct.pack("!HH", port, 0))

    def get_response_port(self) -> int | None:
        """
        The port in RESPONSE-PORT.
        """
        value = self.get(Attr.RESPONSE_PORT)
        if value is None:
            return None
        check_exact_length(value, 4, Attr.RESPONSE_PORT)
        return int.from_bytes(value[:2], "big")

    def add_padding(self, length: int) -> StunMessage:
        """
        Append PADDING (RFC 5780 7.6) with ``length`` zero bytes.
        """
        check_range(length, 0, MAX_VALUE_LENGTH, "padding length")
        return self.add(Attr.PADDING, bytes(length))

    # -- TURN (RFC 8656 14) -----------------------------------------------------

    def add_requested_transport(self, protocol: int) -> StunMessage:
        """
        Append REQUESTED-TRANSPORT: an IP protocol number (17 UDP, 6 TCP).
        """
        check_range(protocol, 0, 0xFF, "protocol")
        return self.add(Attr.REQUESTED_TRANSPORT, bytes([protocol, 0, 0, 0]))

    def get_requested_transport(self) -> int | None:
        """
        The protocol number in REQUESTED-TRANSPORT.
        """
        value = self.get(Attr.REQUESTED_TRANSPORT)
        if value is None:
            return None
        check_exact_length(value, 4, Attr.REQUESTED_TRANSPORT)
        return value[0]

    def add_channel_number(self, n: int) -> StunMessage:
        """
        Append CHANNEL-NUMBER.  Any 16-bit value is accepted so that servers
        can be tested with invalid ones; valid channels are 0x4000..0x4FFF.
        """
        check_range(n, 0, 0xFFFF, "channel number")
        return self.add(Attr.CHANNEL_NUMBER, struct.pack("!HH", n, 0))

    def get_channel_number(self) -> int | None:
        """
        The number in CHANNEL-NUMBER (not range-checked: that is the
        server's job, with a 400 response).
        """
        value = self.get(Attr.CHANNEL_NUMBER)
        if value is None:
            return None
        check_exact_length(value, 4, Attr.CHANNEL_NUMBER)
        return int.from_bytes(value[:2], "big")

    # -- PASSWORD-ALGORITHM(S) (RFC 8489 14.11, 14.12) ----------------------

    def add_password_algorithm(self, algorithm: int, params: bytes = b"") -> StunMessage:
        """
        Append PASSWORD-ALGORITHM.
        """
        return self.add(Attr.PASSWORD_ALGORITHM, _pack_algorithm(algorithm, params, pad=False))

    def get_password_algorithm(self) -> tuple[int, bytes] | None:
        """
        PASSWORD-ALGORITHM as ``(algorithm, parameters)``.
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
        PASSWORD-ALGORITHMS as a list of ``(algorithm, parameters)``.
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
        ``known``, each once, in order of appearance (RFC 8489 7.3).

        Linear in the number of attributes (``known`` should be a set): each type is
        looked up once in ``known`` and once in the set of those already listed.
        """
        unknown: list[int] = []
        listed: set[int] = set()
        for attribute in self.attributes:
            t = attribute.type
            if t < 0x8000 and t not in known and t not in listed:
                listed.add(t)
                unknown.append(t)
        return unknown

    def check_integrity(self, key: bytes) -> bool:
        """
        Whether MESSAGE-INTEGRITY in `raw` is the HMAC-SHA1 of the message
        under ``key`` (RFC 8489 14.5).  False when absent or not decoded.
        """
        return self._check_mac(Attr.MESSAGE_INTEGRITY, key)

    def check_integrity_sha256(self, key: bytes) -> bool:
        """
        Whether MESSAGE-INTEGRITY-SHA256 in `raw` is the (possibly truncated)
        HMAC-SHA256 of the message under ``key`` (RFC 8489 14.6).
        """
        return self._check_mac(Attr.MESSAGE_INTEGRITY_SHA256, key)

    def check_fingerprint(self) -> bool:
        """
        Whether FINGERPRINT in `raw` is the right CRC-32 (RFC 8489 14.7).
        """
        if self.raw is None:
            return False
        try:
            _, _, _, entries = parse_raw(self.raw)
        except StunDecodeError:
            return False
        for offset, attribute in entries:
            if attribute.type == Attr.FINGERPRINT:
                return fingerprint_matches(self.raw, offset, attribute.value)
        return False

    def _check_mac(self, attr_type: int, key: bytes) -> bool:
        if self.raw is None:
            return False
        try:
            _, _, _, entries = parse_raw(self.raw)
        except StunDecodeError:
            return False
        for offset, attribute in entries:
            if attribute.type == attr_type:
                digest = "sha1" if attr_type == Attr.MESSAGE_INTEGRITY else "sha256"
                expected = compute_mac(key, self.raw[:offset], len(attribute.value), digest)
                return hmac.compare_digest(expected[: len(attribute.value)], attribute.value)
        return False

    def stripped(self) -> StunMessage:
        """
        A copy without MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and
        FINGERPRINT, and without `raw`: ready to be re-encoded and sealed.
        """
        attributes = [replace(a) for a in self.attributes if a.type not in SEAL_ATTRIBUTES]
        return replace(self, attributes=attributes, raw=None)


def _pack_algorithm(algorithm: int, params: bytes, *, pad: bool) -> bytes:
    check_range(algorithm, 0, 0xFFFF, "password algorithm")
    if not is_bytes(params) or len(params) > MAX_VALUE_LENGTH:
        raise StunEncodeError("password algorithm parameters must be bytes up to 65535 long")
    padding = bytes(pad_length(len(params))) if pad else b""
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
        offset = min(offset + length + pad_length(length), len(value))
    return algorithms


def encode(
    msg: StunMessage,
    *,
    integrity_key: bytes | None = None,
    integrity_sha256_key: bytes | None = None,
    fingerprint: bool = False,
    integrity_sha256_length: int = 32,
) -> bytes:
    """
    Serialize ``msg``.

    If any of ``integrity_key``, ``integrity_sha256_key`` or ``fingerprint`` is
    given, existing MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and
    FINGERPRINT attributes are dropped and fresh ones appended in that order
    (RFC 8489 14.5, 14.6, 14.7); otherwise the attribute list is written as
    it is.

    :param integrity_sha256_length: how many bytes of the HMAC-SHA256 to keep
        (16..32, a multiple of 4; RFC 8489 14.6 truncation).
    :raise StunError: for values a STUN message cannot carry.
    """
    method = check_range(msg.method, 0, 0xFFF, "method")
    message_class = check_range(msg.message_class, 0, 3, "message class")
    cookie = check_range(msg.cookie, 0, 0xFFFFFFFF, "cookie")
    transaction_id = msg.transaction_id
    if not is_bytes(transaction_id) or len(transaction_id) != TRANSACTION_ID_LENGTH:
        raise StunEncodeError(f"transaction ID must be 12 bytes, not {transaction_id!r}")
    transaction_id = bytes(transaction_id)
    for key in (integrity_key, integrity_sha256_key):
        if key is not None and not is_bytes(key):
            raise StunEncodeError(f"integrity keys must be bytes, not {type(key).__name__}")
    if integrity_sha256_length % 4 or not MI_SHA256_MIN <= integrity_sha256_length <= MI_SHA256_MAX:
        raise StunEncodeError("integrity_sha256_length must be 16..32 and a multiple of 4")
    message_type = join_message_type(method, message_class)

    attributes = msg.attributes
    if integrity_key is not None or integrity_sha256_key is not None or fingerprint:
        attributes = [a for a in attributes if a.type not in SEAL_ATTRIBUTES]
    body = b"".join([encode_attribute(a) for a in attributes])

    def header(length: int) -> bytes:
        if length > MAX_BODY_LENGTH:
            raise StunEncodeError(f"message too long ({length} bytes of attributes)")
        return pack_header(message_type, length, cookie, transaction_id)

    if integrity_key is not None:
        prefix = header(len(body) + 4 + MI_LENGTH) + body
        mac = compute_mac(bytes(integrity_key), prefix, MI_LENGTH, "sha1")
        body += encode_attribute(RawAttribute(Attr.MESSAGE_INTEGRITY, mac))
    if integrity_sha256_key is not None:
        prefix = header(len(body) + 4 + integrity_sha256_length) + body
        mac = compute_mac(bytes(integrity_sha256_key), prefix, integrity_sha256_length, "sha256")
        mac = mac[:integrity_sha256_length]
        body += encode_attribute(RawAttribute(Attr.MESSAGE_INTEGRITY_SHA256, mac))
    if fingerprint:
        crc = compute_fingerprint(header(len(body) + 8) + body)
        body += encode_attribute(RawAttribute(Attr.FINGERPRINT, crc))
    return header(len(body)) + body


def decode(data: BytesLike) -> StunMessage:
    """
    Parse one STUN message; ``data`` must be exactly one message.

    :raise StunDecodeError: for any input that is not a well-formed STUN
        message, including a wrong FINGERPRINT; `TooManyAttributes` (a subclass)
        for one with more than `MAX_ATTRIBUTES <holepunch.stun.wire.MAX_ATTRIBUTES>`.
    """
    if not is_bytes(data):
        raise StunDecodeError(f"expected bytes, not {type(data).__name__}")
    data = bytes(data)
    message_type, cookie, transaction_id, entries = parse_raw(data)
    for offset, attribute in entries:
        if attribute.type == Attr.FINGERPRINT and not fingerprint_matches(
            data, offset, attribute.value
        ):
            raise StunDecodeError("FINGERPRINT does not match")
    method, message_class = split_message_type(message_type)
    return StunMessage(
        check_method(method),
        message_class,
        transaction_id,
        [attribute for _, attribute in entries],
        cookie=cookie,
        raw=data,
    )


__all__ = [
    "StunMessage",
    "decode",
    "encode",
]

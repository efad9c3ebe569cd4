# -*- test-case-name: tests.unit.test_stun_message -*-
"""
Tests for L{holepunch.stun.message}: the RFC 5769 and RFC 8489 test vectors,
each attribute helper, the decoder's rejections, stream framing, ChannelData,
and hypothesis properties (round trips, and garbage in giving only
L{StunDecodeError} out).
"""

from __future__ import annotations

import ipaddress
import itertools
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from holepunch.stun.credentials import PasswordAlgorithm, long_term_key, userhash
from holepunch.stun.framing import (
    StreamFramer,
    decode_channel_data,
    encode_channel_data,
    is_stun,
    message_length,
)
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.wire import (
    KNOWN_ATTRIBUTES,
    MAGIC_COOKIE,
    MAX_ATTRIBUTES,
    XOR_ADDRESS_ATTRIBUTES,
    Address,
    Attr,
    MessageClass,
    Method,
    RawAttribute,
    StunDecodeError,
    StunError,
    TooManyAttributes,
)
from holepunch.testing.fuzz import ADDRESS_TYPES, STRING_TYPES, UINT32_TYPES, stun_getters

# The vectors of /work/shared/testdata/stun-vectors.md (RFC 5769 and the
# corrected RFC 8489 appendix B.1 vector).
SHORT_TERM_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"

RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
    "002400046e0001ff80290008932ff9b151263b36000600096576746a3a6836765920202000080014"
    "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf"
)
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f722000200008"
    "0001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96"
)
RFC5769_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f722000200014"
    "0002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275"
    "bfe3ed4180280004c8fb0b4c"
)
RFC5769_LONG_TERM_REQUEST = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe3"
    "82b900000015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b"
    "6578616d706c652e6f72670000080014f67024656dd64a3e02b8e0712e85c9a28ca89666"
)
RFC8489_SHA256_REQUEST = bytes.fromhex(
    "000100902112a44278ad3433c6ad72c029da412e001e00204a3cf38fef6992bda952c6780417da0f"
    "24819415569e60b205c46e41407f1704001500296f624d61744a6f733241414143662f2f3439396b"
    "39353464364f4c33346f4c394653547679363473410000000014000b6578616d706c652e6f726700"
    "001d000400020000001c0020b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278c"
    "c6518e65"
)
VECTOR_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
VECTOR_REALM = "example.org"
VECTOR_PASSWORD = "The\u00adM\u00aatr\u2168"
TID = bytes(range(1, 13))


def _decode_or_none(data: bytes) -> StunMessage | None:
    """
    Decode C{data}, turning L{StunDecodeError} (and only that) into L{None}.
    """
    try:
        return decode(data)
    except StunDecodeError:
        return None


def _call_every_getter(msg: StunMessage) -> None:
    """
    Call every typed getter on every attribute type it decodes and every check
    (L{holepunch.testing.fuzz.stun_getters}); only L{StunDecodeError} may escape.
    """
    for getter in stun_getters(msg):
        try:
            getter()
        except StunDecodeError:
            pass


def _call_every_check(msg: StunMessage, key: bytes) -> None:
    """
    The integrity and fingerprint checks return booleans and never raise.
    """
    for result in (
        msg.check_integrity(key),
        msg.check_integrity_sha256(key),
        msg.check_fingerprint(),
    ):
        assert isinstance(result, bool)


def _body(attributes: list[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in attributes)


def _raw_message(
    attributes: list[tuple[int, bytes]],
    message_type: int = 0x0001,
    cookie: int = MAGIC_COOKIE,
    transaction_id: bytes = TID,
) -> bytes:
    """
    Hand-build a message, bypassing L{encode}'s checks.
    """
    body = _body(attributes)
    return struct.pack("!HHI", message_type, len(body), cookie) + transaction_id + body


class RFC5769VectorTests(SynchronousTestCase):
    """
    The RFC 5769 test vectors decode, verify and re-encode byte for byte.
    """

    def test_requestFields(self) -> None:
        """The sample request's header and typed attributes have the documented values."""
        msg = decode(RFC5769_REQUEST)
        self.assertEqual(msg.method, Method.BINDING)
        self.assertEqual(msg.message_class, MessageClass.REQUEST)
        self.assertEqual(msg.transaction_id, bytes.fromhex("b7e7a701bc34d686fa87dfae"))
        self.assertFalse(msg.is_rfc3489)
        self.assertEqual(msg.get_string(Attr.SOFTWARE), "STUN test client")
        self.assertEqual(msg.get_uint32(Attr.PRIORITY), 0x6E0001FF)
        self.assertEqual(msg.get_uint64(Attr.ICE_CONTROLLED), 0x932FF9B151263B36)
        self.assertEqual(msg.get_string(Attr.USERNAME), "evtj:h6vY")
        self.assertEqual(msg.raw, RFC5769_REQUEST)

    def test_requestIntegrity(self) -> None:
        """The sample request's MESSAGE-INTEGRITY verifies with the short-term password only."""
        msg = decode(RFC5769_REQUEST)
        self.assertTrue(msg.check_integrity(SHORT_TERM_PASSWORD))
        self.assertFalse(msg.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBu"))
        self.assertFalse(msg.check_integrity_sha256(SHORT_TERM_PASSWORD))
        self.assertTrue(msg.check_fingerprint())

    def test_requestUsernamePadding(self) -> None:
        """The USERNAME padding (three spaces) is kept as decoded."""
        msg = decode(RFC5769_REQUEST)
        [username] = [a for a in msg.attributes if a.type == Attr.USERNAME]
        self.assertEqual(username.padding, b"   ")

    def test_requestReencode(self) -> None:
        """Re-sealing the stripped sample request reproduces it byte for byte."""
        msg = decode(RFC5769_REQUEST)
        out = encode(msg.stripped(), integrity_key=SHORT_TERM_PASSWORD, fingerprint=True)
        self.assertEqual(out, RFC5769_REQUEST)
        self.assertEqual(encode(msg), RFC5769_REQUEST)

    def test_ipv4Response(self) -> None:
        """The IPv4 response gives 192.0.2.1:32853, verifies, and re-encodes exactly."""
        msg = decode(RFC5769_IPV4_RESPONSE)
        self.assertEqual(msg.message_class, MessageClass.SUCCESS)
        self.assertEqual(msg.get_string(Attr.SOFTWARE), "test vector")
        self.assertEqual(msg.get_address(Attr.XOR_MAPPED_ADDRESS), Address("192.0.2.1", 32853))
        self.assertTrue(msg.check_integrity(SHORT_TERM_PASSWORD))
        self.assertFalse(msg.check_integrity(b"wrong"))
        self.assertTrue(msg.check_fingerprint())
        out = encode(msg.stripped(), integrity_key=SHORT_TERM_PASSWORD, fingerprint=True)
        self.assertEqual(out, RFC5769_IPV4_RESPONSE)

    def test_ipv6Response(self) -> None:
        """The IPv6 response gives [2001:db8:1234:5678:11:2233:4455:6677]:32853 and verifies."""
        msg = decode(RFC5769_IPV6_RESPONSE)
        self.assertEqual(
            msg.get_address(Attr.XOR_MAPPED_ADDRESS),
            Address("2001:db8:1234:5678:11:2233:4455:6677", 32853),
        )
        self.assertTrue(msg.check_integrity(SHORT_TERM_PASSWORD))
        self.assertFalse(msg.check_integrity(b"wrong"))
        self.assertTrue(msg.check_fingerprint())
        out = encode(msg.stripped(), integrity_key=SHORT_TERM_PASSWORD, fingerprint=True)
        self.assertEqual(out, RFC5769_IPV6_RESPONSE)

    def test_addressReencode(self) -> None:
        """Building the vector responses with add_address gives the vector bytes."""
        for vector, host in [
            (RFC5769_IPV4_RESPONSE, "192.0.2.1"),
            (RFC5769_IPV6_RESPONSE, "2001:db8:1234:5678:11:2233:4455:6677"),
        ]:
            request = StunMessage.request(transaction_id=decode(vector).transaction_id)
            response = request.success_response()
            response.attributes.append(RawAttribute(Attr.SOFTWARE, b"test vector", b" "))
            response.add_address(Attr.XOR_MAPPED_ADDRESS, (host, 32853))
            out = encode(response, integrity_key=SHORT_TERM_PASSWORD, fingerprint=True)
            self.assertEqual(out, vector)

    def test_longTermRequest(self) -> None:
        """The long-term request verifies with MD5(user:realm:SASLprep(password))."""
        msg = decode(RFC5769_LONG_TERM_REQUEST)
        self.assertEqual(msg.get_string(Attr.USERNAME), VECTOR_USERNAME)
        self.assertEqual(msg.get_string(Attr.NONCE), "f//499k954d6OL34oL9FSTvy64sA")
        self.assertEqual(msg.get_string(Attr.REALM), VECTOR_REALM)
        key = long_term_key(VECTOR_USERNAME, VECTOR_REALM, VECTOR_PASSWORD)
        self.assertTrue(msg.check_integrity(key))
        self.assertFalse(msg.check_integrity(long_term_key(VECTOR_USERNAME, VECTOR_REALM, "x")))
        self.assertFalse(msg.check_fingerprint())
        self.assertEqual(encode(msg.stripped(), integrity_key=key), RFC5769_LONG_TERM_REQUEST)


class RFC8489VectorTests(SynchronousTestCase):
    """
    The RFC 8489 MESSAGE-INTEGRITY-SHA256 / USERHASH vector.
    """

    def test_fields(self) -> None:
        """USERHASH, NONCE, REALM and PASSWORD-ALGORITHM have the documented values."""
        msg = decode(RFC8489_SHA256_REQUEST)
        self.assertEqual(msg.get(Attr.USERHASH), userhash(VECTOR_USERNAME, VECTOR_REALM))
        self.assertEqual(msg.get_string(Attr.NONCE), "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
        self.assertEqual(msg.get_string(Attr.REALM), VECTOR_REALM)
        self.assertEqual(msg.get_password_algorithm(), (PasswordAlgorithm.SHA256, b""))

    def test_integritySHA256(self) -> None:
        """MESSAGE-INTEGRITY-SHA256 verifies with the SHA-256 long-term key, not the MD5 one."""
        msg = decode(RFC8489_SHA256_REQUEST)
        sha = long_term_key(
            VECTOR_USERNAME, VECTOR_REALM, VECTOR_PASSWORD, PasswordAlgorithm.SHA256
        )
        md5 = long_term_key(VECTOR_USERNAME, VECTOR_REALM, VECTOR_PASSWORD, PasswordAlgorithm.MD5)
        self.assertTrue(msg.check_integrity_sha256(sha))
        self.assertFalse(msg.check_integrity_sha256(md5))
        self.assertFalse(msg.check_integrity(sha))

    def test_reencode(self) -> None:
        """Re-sealing the stripped message reproduces the vector byte for byte."""
        msg = decode(RFC8489_SHA256_REQUEST)
        sha = long_term_key(
            VECTOR_USERNAME, VECTOR_REALM, VECTOR_PASSWORD, PasswordAlgorithm.SHA256
        )
        out = encode(msg.stripped(), integrity_sha256_key=sha)
        self.assertEqual(out, RFC8489_SHA256_REQUEST)


class HeaderTests(SynchronousTestCase):
    """
    Message type, transaction ID and cookie handling.
    """

    def test_messageTypeBits(self) -> None:
        """Method and class bits interleave as in RFC 8489 section 5."""
        cases = [
            (Method.BINDING, MessageClass.REQUEST, 0x0001),
            (Method.BINDING, MessageClass.INDICATION, 0x0011),
            (Method.BINDING, MessageClass.SUCCESS, 0x0101),
            (Method.BINDING, MessageClass.ERROR, 0x0111),
            (Method.ALLOCATE, MessageClass.ERROR, 0x0113),
            (Method.SEND, MessageClass.INDICATION, 0x0016),
            (Method.CHANNEL_BIND, MessageClass.REQUEST, 0x0009),
            (0xFFF, MessageClass.ERROR, 0x3FFF),
        ]
        for method, message_class, message_type in cases:
            data = encode(StunMessage(method, message_class, TID, []))
            self.assertEqual(data[:2], struct.pack("!H", message_type))
            msg = decode(data)
            self.assertEqual((msg.method, msg.message_class), (method, message_class))

    def test_unknownMethodStaysInt(self) -> None:
        """A method this module has no name for decodes as a plain integer."""
        msg = decode(encode(StunMessage(0x123, MessageClass.REQUEST, TID, [])))
        self.assertEqual(msg.method, 0x123)
        self.assertNotIsInstance(msg.method, Method)

    def test_request(self) -> None:
        """request() makes a Binding request with a fresh random 12-byte transaction ID."""
        a, b = StunMessage.request(), StunMessage.request()
        self.assertEqual((a.method, a.message_class), (Method.BINDING, MessageClass.REQUEST))
        self.assertEqual(len(a.transaction_id), 12)
        self.assertNotEqual(a.transaction_id, b.transaction_id)
        self.assertEqual(a.attributes, [])
        self.assertEqual(a.cookie, MAGIC_COOKIE)
        self.assertEqual(StunMessage.request(Method.ALLOCATE, TID).transaction_id, TID)

    def test_indication(self) -> None:
        """indication() makes an indication of the given method."""
        msg = StunMessage.indication(Method.SEND)
        self.assertEqual((msg.method, msg.message_class), (Method.SEND, MessageClass.INDICATION))
        self.assertEqual(len(msg.transaction_id), 12)

    def test_successResponse(self) -> None:
        """success_response() copies method, transaction ID and cookie, and no attributes."""
        request = StunMessage(Method.ALLOCATE, MessageClass.REQUEST, TID, [], cookie=1234)
        request.add_string(Attr.USERNAME, "u")
        response = request.success_response()
        self.assertEqual(response.method, Method.ALLOCATE)
        self.assertEqual(response.message_class, MessageClass.SUCCESS)
        self.assertEqual(response.transaction_id, TID)
        self.assertEqual(response.cookie, 1234)
        self.assertEqual(response.attributes, [])

    def test_errorResponse(self) -> None:
        """error_response() carries ERROR-CODE with the registered reason phrase by default."""
        request = StunMessage.request(Method.BINDING, TID)
        response = request.error_response(401)
        self.assertEqual(response.message_class, MessageClass.ERROR)
        self.assertEqual(response.transaction_id, TID)
        self.assertEqual(response.get_error_code(), (401, "Unauthenticated"))
        self.assertEqual(request.error_response(487).get_error_code(), (487, "Role Conflict"))
        self.assertEqual(request.error_response(438, "Go away").get_error_code(), (438, "Go away"))
        self.assertEqual(request.error_response(699).get_error_code(), (699, ""))

    def test_rfc3489Message(self) -> None:
        """A cookie-less (RFC 3489) message decodes, keeps its cookie field and re-encodes."""
        data = _raw_message([(Attr.MAPPED_ADDRESS, bytes.fromhex("000104d2c0000201"))], cookie=7)
        msg = decode(data)
        self.assertTrue(msg.is_rfc3489)
        self.assertEqual(msg.cookie, 7)
        self.assertEqual(msg.get_address(Attr.MAPPED_ADDRESS), Address("192.0.2.1", 1234))
        self.assertEqual(encode(msg), data)
        self.assertTrue(msg.success_response().is_rfc3489)
        self.assertFalse(is_stun(data))

    def test_equalityIgnoresRawAndPadding(self) -> None:
        """Messages compare by fields and attribute values, not by raw bytes or pad bytes."""
        built = StunMessage.request(transaction_id=TID).add_string(Attr.USERNAME, "abc")
        msg = decode(encode(built))
        self.assertEqual(msg, built)
        self.assertEqual(msg.attributes[0].padding, b"\0")
        self.assertEqual(built.attributes[0].padding, b"")


class AttributeTests(SynchronousTestCase):
    """
    The generic and typed attribute accessors.
    """

    def test_generic(self) -> None:
        """add/get/get_all/has/remove work on raw values in order."""
        msg = StunMessage.request(transaction_id=TID)
        self.assertIs(msg.add(0x7777, b"a"), msg)
        msg.add(0x7777, b"b").add(0x8888, b"")
        self.assertEqual(msg.get(0x7777), b"a")
        self.assertEqual(msg.get_all(0x7777), [b"a", b"b"])
        self.assertTrue(msg.has(0x8888))
        self.assertIsNone(msg.get(0x9999))
        self.assertEqual(msg.get_all(0x9999), [])
        msg.remove(0x7777)
        self.assertFalse(msg.has(0x7777))
        self.assertEqual([a.type for a in msg.attributes], [0x8888])

    def test_gettersAbsent(self) -> None:
        """Every typed getter returns None when its attribute is absent."""
        msg = StunMessage.request(transaction_id=TID)
        self.assertIsNone(msg.get_address(Attr.XOR_MAPPED_ADDRESS))
        self.assertIsNone(msg.get_string(Attr.SOFTWARE))
        self.assertIsNone(msg.get_uint32(Attr.PRIORITY))
        self.assertIsNone(msg.get_uint64(Attr.ICE_CONTROLLING))
        self.assertIsNone(msg.get_error_code())
        self.assertIsNone(msg.get_unknown_attributes())
        self.assertIsNone(msg.get_change_request())
        self.assertIsNone(msg.get_response_port())
        self.assertIsNone(msg.get_requested_transport())
        self.assertIsNone(msg.get_channel_number())
        self.assertIsNone(msg.get_password_algorithm())
        self.assertIsNone(msg.get_password_algorithms())

    def test_plainAddressLayout(self) -> None:
        """MAPPED-ADDRESS is family, port and address without XOR."""
        msg = StunMessage.request(transaction_id=TID)
        msg.add_address(Attr.MAPPED_ADDRESS, Address("192.0.2.1", 32853))
        self.assertEqual(msg.get(Attr.MAPPED_ADDRESS), bytes.fromhex("00018055c0000201"))
        msg.add_address(Attr.ALTERNATE_SERVER, ("::1", 3478))
        self.assertEqual(
            msg.get(Attr.ALTERNATE_SERVER), bytes.fromhex("00020d96") + bytes(15) + b"\1"
        )
        self.assertEqual(msg.get_address(Attr.ALTERNATE_SERVER), Address("::1", 3478))

    def test_xorAddressLayout(self) -> None:
        """XOR-MAPPED-ADDRESS XORs the port and IPv4 address with the magic cookie."""
        msg = StunMessage.request(transaction_id=TID)
        msg.add_address(Attr.XOR_MAPPED_ADDRESS, ("192.0.2.1", 32853))
        self.assertEqual(msg.get(Attr.XOR_MAPPED_ADDRESS), bytes.fromhex("0001a147e112a643"))

    def test_xorIPv6UsesTransactionID(self) -> None:
        """An IPv6 XOR address depends on the transaction ID, and each decodes back."""
        values = []
        for tid in (TID, bytes(12)):
            for attr_type in sorted(XOR_ADDRESS_ATTRIBUTES):
                msg = StunMessage.request(transaction_id=tid)
                msg.add_address(attr_type, ("2001:db8::1", 9))
                values.append(msg.get(attr_type))
                self.assertEqual(msg.get_address(attr_type), Address("2001:db8::1", 9))
        self.assertNotEqual(values[0], values[-1])

    def test_addressErrors(self) -> None:
        """Bad hosts and ports are refused when adding; bad values raise when getting."""
        msg = StunMessage.request(transaction_id=TID)
        self.assertRaises(StunError, msg.add_address, Attr.MAPPED_ADDRESS, ("example.com", 1))
        self.assertRaises(StunError, msg.add_address, Attr.MAPPED_ADDRESS, ("1.2.3.4", 65536))
        self.assertRaises(StunError, msg.add_address, Attr.MAPPED_ADDRESS, ("1.2.3.4", -1))
        for value in [b"\0\1\0", b"\0\3\0\1\1\2\3\4", b"\0\1\0\1\1\2\3", b"\0\2\0\1" + bytes(4)]:
            msg.remove(Attr.MAPPED_ADDRESS)
            msg.add(Attr.MAPPED_ADDRESS, value)
            self.assertRaises(StunDecodeError, msg.get_address, Attr.MAPPED_ADDRESS)

    def test_string(self) -> None:
        """Text attributes are UTF-8; invalid UTF-8 raises StunDecodeError."""
        msg = StunMessage.request(transaction_id=TID).add_string(Attr.REALM, "r\u00e9alm")
        self.assertEqual(msg.get(Attr.REALM), "r\u00e9alm".encode())
        self.assertEqual(msg.get_string(Attr.REALM), "r\u00e9alm")
        msg.add(Attr.NONCE, b"\xff")
        self.assertRaises(StunDecodeError, msg.get_string, Attr.NONCE)
        self.assertRaises(StunError, msg.add_string, Attr.NONCE, "\ud800")

    def test_integers(self) -> None:
        """32- and 64-bit integers are big-endian and length-checked."""
        msg = StunMessage.request(transaction_id=TID)
        msg.add_uint32(Attr.LIFETIME, 600).add_uint64(Attr.ICE_CONTROLLING, 2**64 - 1)
        self.assertEqual(msg.get(Attr.LIFETIME), b"\0\0\x02\x58")
        self.assertEqual(msg.get_uint32(Attr.LIFETIME), 600)
        self.assertEqual(msg.get_uint64(Attr.ICE_CONTROLLING), 2**64 - 1)
        self.assertRaises(StunDecodeError, msg.get_uint64, Attr.LIFETIME)
        self.assertRaises(StunDecodeError, msg.get_uint32, Attr.ICE_CONTROLLING)
        self.assertRaises(StunError, msg.add_uint32, Attr.PRIORITY, 2**32)
        self.assertRaises(StunError, msg.add_uint64, Attr.ICE_CONTROLLED, -1)

    def test_flag(self) -> None:
        """A flag attribute has an empty value."""
        msg = StunMessage.request(transaction_id=TID).add_flag(Attr.USE_CANDIDATE)
        self.assertEqual(msg.get(Attr.USE_CANDIDATE), b"")
        self.assertEqual(encode(msg)[20:], b"\x00\x25\x00\x00")

    def test_errorCode(self) -> None:
        """ERROR-CODE is class and number after two reserved bytes, then the reason."""
        msg = StunMessage.request(transaction_id=TID).add_error_code(420, "Unknown Attribute")
        self.assertEqual(msg.get(Attr.ERROR_CODE), b"\0\0\x04\x14Unknown Attribute")
        self.assertEqual(msg.get_error_code(), (420, "Unknown Attribute"))
        self.assertRaises(StunError, msg.add_error_code, 299, "")
        self.assertRaises(StunError, msg.add_error_code, 700, "")
        for bad in [b"\0\0\x04", b"\0\0\x02\x00", b"\0\0\x04\x64"]:
            msg.remove(Attr.ERROR_CODE)
            msg.add(Attr.ERROR_CODE, bad)
            self.assertRaises(StunDecodeError, msg.get_error_code)

    def test_unknownAttributes(self) -> None:
        """UNKNOWN-ATTRIBUTES is a list of 16-bit types; an odd length is malformed."""
        msg = StunMessage.request(transaction_id=TID).add_unknown_attributes([0x0002, 0x7FFF, 0x1])
        self.assertEqual(msg.get(Attr.UNKNOWN_ATTRIBUTES), bytes.fromhex("00027fff0001"))
        self.assertEqual(msg.get_unknown_attributes(), [0x0002, 0x7FFF, 0x1])
        msg.remove(Attr.UNKNOWN_ATTRIBUTES)
        msg.add(Attr.UNKNOWN_ATTRIBUTES, b"\0\1\0")
        self.assertRaises(StunDecodeError, msg.get_unknown_attributes)

    def test_changeRequest(self) -> None:
        """CHANGE-REQUEST sets flag 0x4 for the IP and 0x2 for the port (RFC 5780 7.2)."""
        for ip, port, value in [
            (True, True, 6),
            (True, False, 4),
            (False, True, 2),
            (False, False, 0),
        ]:
            msg = StunMessage.request(transaction_id=TID).add_change_request(ip, port)
            self.assertEqual(msg.get(Attr.CHANGE_REQUEST), struct.pack("!I", value))
            self.assertEqual(msg.get_change_request(), (ip, port))

    def test_responsePort(self) -> None:
        """RESPONSE-PORT is the port and two reserved bytes."""
        msg = StunMessage.request(transaction_id=TID).add_response_port(4242)
        self.assertEqual(msg.get(Attr.RESPONSE_PORT), b"\x10\x92\0\0")
        self.assertEqual(msg.get_response_port(), 4242)
        self.assertRaises(StunError, msg.add_response_port, 70000)

    def test_requestedTransport(self) -> None:
        """REQUESTED-TRANSPORT is the protocol number and three reserved bytes."""
        msg = StunMessage.request(Method.ALLOCATE, TID).add_requested_transport(17)
        self.assertEqual(msg.get(Attr.REQUESTED_TRANSPORT), b"\x11\0\0\0")
        self.assertEqual(msg.get_requested_transport(), 17)
        msg.remove(Attr.REQUESTED_TRANSPORT)
        msg.add(Attr.REQUESTED_TRANSPORT, b"\x11")
        self.assertRaises(StunDecodeError, msg.get_requested_transport)

    def test_channelNumber(self) -> None:
        """CHANNEL-NUMBER is the number and two reserved bytes; any 16-bit number is carried."""
        msg = StunMessage.request(Method.CHANNEL_BIND, TID).add_channel_number(0x4001)
        self.assertEqual(msg.get(Attr.CHANNEL_NUMBER), b"\x40\x01\0\0")
        self.assertEqual(msg.get_channel_number(), 0x4001)
        msg = StunMessage.request(Method.CHANNEL_BIND, TID).add_channel_number(0x3FFF)
        self.assertEqual(msg.get_channel_number(), 0x3FFF)

    def test_passwordAlgorithm(self) -> None:
        """PASSWORD-ALGORITHM is the number, the parameter length and the parameters."""
        msg = StunMessage.request(transaction_id=TID).add_password_algorithm(2)
        self.assertEqual(msg.get(Attr.PASSWORD_ALGORITHM), b"\0\2\0\0")
        msg = StunMessage.request(transaction_id=TID).add_password_algorithm(9, b"abc")
        self.assertEqual(msg.get_password_algorithm(), (9, b"abc"))
        msg.remove(Attr.PASSWORD_ALGORITHM)
        msg.add(Attr.PASSWORD_ALGORITHM, b"\0\1\0\5ab")
        self.assertRaises(StunDecodeError, msg.get_password_algorithm)

    def test_passwordAlgorithms(self) -> None:
        """PASSWORD-ALGORITHMS pads each entry's parameters to 32 bits (RFC 8489 14.11)."""
        msg = StunMessage.request(transaction_id=TID)
        msg.add_password_algorithms([(1, b""), (7, b"x"), (2, b"")])
        self.assertEqual(
            msg.get(Attr.PASSWORD_ALGORITHMS), bytes.fromhex("00010000000700017800000000020000")
        )
        self.assertEqual(msg.get_password_algorithms(), [(1, b""), (7, b"x"), (2, b"")])
        msg.remove(Attr.PASSWORD_ALGORITHMS)
        msg.add(Attr.PASSWORD_ALGORITHMS, b"\0\1\0")
        self.assertRaises(StunDecodeError, msg.get_password_algorithms)

    def test_padding(self) -> None:
        """add_padding adds a PADDING attribute of zero bytes."""
        msg = StunMessage.request(transaction_id=TID).add_padding(12)
        self.assertEqual(msg.get(Attr.PADDING), bytes(12))

    def test_unknownComprehensionRequired(self) -> None:
        """Only unknown types below 0x8000 are reported, once each, in order."""
        msg = StunMessage.request(transaction_id=TID)
        for t in (0x7001, Attr.USERNAME, 0xC001, 0x0002, 0x7001):
            msg.add(t, b"")
        self.assertEqual(msg.unknown_comprehension_required(), [0x7001, 0x0002])
        self.assertEqual(msg.unknown_comprehension_required({0x7001, 0x0002}), [Attr.USERNAME])

    def test_knownAttributes(self) -> None:
        """KNOWN_ATTRIBUTES is every Attr, and the XOR set is the three XOR addresses."""
        self.assertEqual(KNOWN_ATTRIBUTES, {int(a) for a in Attr})
        self.assertEqual(len(Attr), 36)
        self.assertEqual(
            XOR_ADDRESS_ATTRIBUTES,
            {Attr.XOR_MAPPED_ADDRESS, Attr.XOR_PEER_ADDRESS, Attr.XOR_RELAYED_ADDRESS},
        )

    def test_stripped(self) -> None:
        """stripped() copies the message without the integrity and fingerprint attributes."""
        msg = decode(RFC5769_REQUEST)
        copy = msg.stripped()
        self.assertIsNone(copy.raw)
        self.assertEqual(
            [a.type for a in copy.attributes],
            [Attr.SOFTWARE, Attr.PRIORITY, Attr.ICE_CONTROLLED, Attr.USERNAME],
        )
        copy.attributes[0].value = b"changed"
        self.assertEqual(msg.get(Attr.SOFTWARE), b"STUN test client")
        self.assertEqual(len(msg.attributes), 6)


class EncodeTests(SynchronousTestCase):
    """
    Encoding rules: sealing, padding, impossible values.
    """

    def test_padding(self) -> None:
        """Padding of the right length is written as given; anything else becomes zeros."""
        msg = StunMessage.request(transaction_id=TID)
        msg.attributes.append(RawAttribute(0x7000, b"a", b"xyz"))
        msg.attributes.append(RawAttribute(0x7001, b"b", b"xy"))
        msg.attributes.append(RawAttribute(0x7002, b"abcd", b"zzzz"))
        body = encode(msg)[20:]
        self.assertEqual(body, b"\x70\0\0\1axyz\x70\x01\0\1b\0\0\0\x70\x02\0\4abcd")

    def test_sealingReplacesExisting(self) -> None:
        """With a sealing option, old MI/MI-SHA256/FINGERPRINT are dropped and new ones appended."""
        msg = decode(RFC5769_REQUEST)
        data = encode(msg, integrity_key=b"k", integrity_sha256_key=b"k2", fingerprint=True)
        out = decode(data)
        self.assertEqual(
            [a.type for a in out.attributes][-3:],
            [Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT],
        )
        self.assertEqual(len(out.attributes), 7)
        self.assertTrue(out.check_integrity(b"k"))
        self.assertTrue(out.check_integrity_sha256(b"k2"))
        self.assertTrue(out.check_fingerprint())
        self.assertFalse(out.check_integrity(SHORT_TERM_PASSWORD))

    def test_fingerprintOnly(self) -> None:
        """fingerprint=True alone drops an old MESSAGE-INTEGRITY too."""
        out = decode(encode(decode(RFC5769_REQUEST), fingerprint=True))
        self.assertFalse(out.has(Attr.MESSAGE_INTEGRITY))
        self.assertTrue(out.check_fingerprint())

    def test_truncatedSHA256(self) -> None:
        """MESSAGE-INTEGRITY-SHA256 may be truncated to 16..32 bytes and still verifies."""
        msg = StunMessage.request(transaction_id=TID).add_string(Attr.USERNAME, "u")
        for length in (16, 20, 24, 28, 32):
            out = decode(encode(msg, integrity_sha256_key=b"key", integrity_sha256_length=length))
            self.assertEqual(len(out.get(Attr.MESSAGE_INTEGRITY_SHA256) or b""), length)
            self.assertTrue(out.check_integrity_sha256(b"key"))
            self.assertFalse(out.check_integrity_sha256(b"kez"))
        for bad in (12, 18, 36):
            self.assertRaises(
                StunError, encode, msg, integrity_sha256_key=b"k", integrity_sha256_length=bad
            )

    def test_impossibleValues(self) -> None:
        """Values a STUN message cannot carry raise StunError."""
        ok = StunMessage.request(transaction_id=TID)
        bad: list[StunMessage] = [
            StunMessage(1, MessageClass.REQUEST, bytes(11), []),
            StunMessage(1, MessageClass.REQUEST, "x" * 12, []),  # type: ignore[arg-type]
            StunMessage(0x1000, MessageClass.REQUEST, TID, []),
            StunMessage(1, 4, TID, []),  # type: ignore[arg-type]
            StunMessage(1, MessageClass.REQUEST, TID, [], cookie=2**32),
            StunMessage(1, MessageClass.REQUEST, TID, [RawAttribute(0x10000, b"")]),
            StunMessage(1, MessageClass.REQUEST, TID, [RawAttribute(1, bytes(65536))]),
            StunMessage(1, MessageClass.REQUEST, TID, [RawAttribute(1, "text")]),  # type: ignore[arg-type]
            StunMessage(1, MessageClass.REQUEST, TID, [RawAttribute(1, bytes(40000))] * 2),
        ]
        for msg in bad:
            self.assertRaises(StunError, encode, msg)
        self.assertRaises(StunError, encode, ok, integrity_key="text")
        big = StunMessage(1, MessageClass.REQUEST, TID, [RawAttribute(1, bytes(65532 - 4))])
        self.assertEqual(len(encode(big)), 20 + 65532)
        self.assertRaises(StunError, encode, big, fingerprint=True)
        self.assertRaises(StunError, ok.add, 1, bytes(65536))

    def test_emptyMessage(self) -> None:
        """A message without attributes is a bare 20-byte header."""
        data = encode(StunMessage.request(transaction_id=TID))
        self.assertEqual(data, b"\0\1\0\0\x21\x12\xa4\x42" + TID)


class DecodeTests(SynchronousTestCase):
    """
    What the decoder rejects, and what it ignores.
    """

    def assertRejected(self, data: bytes, fragment: str) -> None:
        """
        C{decode(data)} raises StunDecodeError whose reason contains C{fragment}.
        """
        error = self.assertRaises(StunDecodeError, decode, data)
        self.assertIn(fragment, error.reason)
        self.assertEqual(str(error), error.reason)

    def test_tooShort(self) -> None:
        """Fewer than 20 bytes is not a message."""
        self.assertRejected(RFC5769_REQUEST[:19], "too short")
        self.assertRejected(b"", "too short")

    def test_topBits(self) -> None:
        """The two most significant bits must be zero."""
        self.assertRejected(b"\x40" + RFC5769_REQUEST[1:], "most significant")
        self.assertRejected(b"\x80" + RFC5769_REQUEST[1:], "most significant")

    def test_lengthNotMultipleOf4(self) -> None:
        """The length field must be a multiple of 4."""
        self.assertRejected(b"\0\1\0\1" + RFC5769_REQUEST[4:20] + b"\0", "multiple of 4")

    def test_lengthMismatch(self) -> None:
        """The datagram must be exactly one message: no trailing or missing bytes."""
        self.assertRejected(RFC5769_REQUEST + b"\0\0\0\0", "does not match")
        self.assertRejected(RFC5769_REQUEST[:-4], "does not match")

    def test_attributePastEnd(self) -> None:
        """An attribute whose length runs past the message is rejected."""
        data = _raw_message([]) + b"\x80\x22\x00\x08abcd"
        data = data[:2] + struct.pack("!H", 8) + data[4:]
        self.assertRejected(data, "past the end")

    def test_fingerprintNotLast(self) -> None:
        """Nothing may follow FINGERPRINT."""
        sealed = encode(StunMessage.request(transaction_id=TID), fingerprint=True)
        data = _raw_message([(Attr.FINGERPRINT, sealed[-4:]), (Attr.SOFTWARE, b"x")])
        self.assertRejected(data, "not the last")

    def test_fingerprintWrong(self) -> None:
        """A FINGERPRINT with the wrong CRC is rejected."""
        data = RFC5769_REQUEST[:-1] + bytes([RFC5769_REQUEST[-1] ^ 1])
        self.assertRejected(data, "FINGERPRINT does not match")
        self.assertRejected(_raw_message([(Attr.FINGERPRINT, b"\0\0\0\0\0")]), "FINGERPRINT")

    def test_secondIntegrity(self) -> None:
        """A second MESSAGE-INTEGRITY (or MESSAGE-INTEGRITY-SHA256) is rejected."""
        mi = (Attr.MESSAGE_INTEGRITY, bytes(20))
        self.assertRejected(_raw_message([mi, mi]), "second MESSAGE-INTEGRITY")
        sha = (Attr.MESSAGE_INTEGRITY_SHA256, bytes(32))
        self.assertRejected(_raw_message([sha, sha]), "second MESSAGE-INTEGRITY-SHA256")

    def test_integrityLength(self) -> None:
        """MESSAGE-INTEGRITY must be 20 bytes; MESSAGE-INTEGRITY-SHA256 16..32 by 4."""
        self.assertRejected(_raw_message([(Attr.MESSAGE_INTEGRITY, bytes(19))]), "20 bytes")
        for length in (12, 18, 36):
            self.assertRejected(
                _raw_message([(Attr.MESSAGE_INTEGRITY_SHA256, bytes(length))]), "16..32"
            )

    def test_notBytes(self) -> None:
        """Something other than bytes is refused with StunDecodeError too."""
        self.assertRejected("x" * 20, "expected bytes")  # type: ignore[arg-type]
        self.assertEqual(decode(bytearray(RFC5769_REQUEST)).raw, RFC5769_REQUEST)

    def test_attributesAfterIntegrityIgnored(self) -> None:
        """Attributes after MESSAGE-INTEGRITY other than MI-SHA256 and FINGERPRINT are dropped."""
        msg = StunMessage.request(transaction_id=TID).add_string(Attr.USERNAME, "u")
        sealed = encode(msg, integrity_key=b"k")
        extra = _body([(Attr.SOFTWARE, b"sneaky"), (0x0002, b"")])
        data = sealed[:2] + struct.pack("!H", len(sealed) - 20 + len(extra)) + sealed[4:] + extra
        out = decode(data)
        self.assertEqual([a.type for a in out.attributes], [Attr.USERNAME, Attr.MESSAGE_INTEGRITY])
        self.assertTrue(out.check_integrity(b"k"))
        self.assertEqual(out.unknown_comprehension_required(), [])

    def test_attributesAfterSHA256Ignored(self) -> None:
        """After MESSAGE-INTEGRITY-SHA256 only FINGERPRINT counts (a later MI is ignored)."""
        msg = StunMessage.request(transaction_id=TID)
        sealed = encode(msg, integrity_sha256_key=b"k")
        extra = _body([(Attr.MESSAGE_INTEGRITY, bytes(3)), (Attr.SOFTWARE, b"x")])
        data = sealed[:2] + struct.pack("!H", len(sealed) - 20 + len(extra)) + sealed[4:] + extra
        out = decode(data)
        self.assertEqual([a.type for a in out.attributes], [Attr.MESSAGE_INTEGRITY_SHA256])
        self.assertTrue(out.check_integrity_sha256(b"k"))
        self.assertFalse(out.check_integrity(b"k"))

    def test_checksWithoutRaw(self) -> None:
        """Built (not decoded) messages, or garbage raw bytes, fail every check quietly."""
        msg = StunMessage.request(transaction_id=TID)
        self.assertFalse(msg.check_integrity(b"k"))
        self.assertFalse(msg.check_integrity_sha256(b"k"))
        self.assertFalse(msg.check_fingerprint())
        msg.raw = b"garbage"
        self.assertFalse(msg.check_integrity(b"k"))
        self.assertFalse(msg.check_fingerprint())


class _CountingType(int):
    """An attribute type that counts how often it is compared for equality."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        _CountingType.comparisons += 1
        return int(self) == other

    __hash__ = int.__hash__


class DecodeCostTests(SynchronousTestCase):
    """
    The decoder's work is linear in the input, whatever the attribute mix (issue 17,
    finding 2), and a message cannot carry more than MAX_ATTRIBUTES attributes.
    """

    def comparisons(self, n: int) -> int:
        """
        How many equality comparisons listing ``n`` distinct unknown comprehension-required
        types costs.
        """
        msg = StunMessage.request(transaction_id=TID)
        msg.attributes = [RawAttribute(_CountingType(0x4000 + i), b"") for i in range(n)]
        _CountingType.comparisons = 0
        unknown = msg.unknown_comprehension_required()
        self.assertEqual(len(unknown), n)
        return _CountingType.comparisons

    def test_unknownCheckIsLinear(self) -> None:
        """Listing n distinct unknown types costs O(n) comparisons, not the n^2/2 of a list search."""
        for n in (100, 400, 1600):
            self.assertLessEqual(self.comparisons(n), 2 * n)

    def test_attributeCap(self) -> None:
        """MAX_ATTRIBUTES attributes decode; one more is TooManyAttributes, a StunDecodeError."""
        at_cap = _raw_message([(0x4000 + i, b"") for i in range(MAX_ATTRIBUTES)])
        self.assertEqual(len(decode(at_cap).attributes), MAX_ATTRIBUTES)
        over = _raw_message([(0x4000 + i, b"") for i in range(MAX_ATTRIBUTES + 1)])
        error = self.assertRaises(TooManyAttributes, decode, over)
        self.assertIsInstance(error, StunDecodeError)
        self.assertIn(f"more than {MAX_ATTRIBUTES} attributes", error.reason)

    def test_fullDatagramOfUnknownAttributesRejected(self) -> None:
        """An 8 KB datagram of 2,043 distinct unknown comprehension-required attributes is rejected."""
        data = _raw_message([(0x4000 + i, b"") for i in range(2043)])
        self.assertEqual(len(data), 8192)
        self.assertRaises(TooManyAttributes, decode, data)

    def test_capCountsIgnoredAttributes(self) -> None:
        """Attributes after MESSAGE-INTEGRITY (ignored) still count toward the cap."""
        attrs = [(Attr.MESSAGE_INTEGRITY, bytes(20))]
        attrs += [(Attr.SOFTWARE, b"") for _ in range(MAX_ATTRIBUTES)]
        self.assertRaises(TooManyAttributes, decode, _raw_message(attrs))


class DemuxAndFramingTests(SynchronousTestCase):
    """
    is_stun, message_length, StreamFramer and ChannelData.
    """

    def test_isStun(self) -> None:
        """is_stun accepts exactly one cookie-bearing message and rejects the rest."""
        self.assertTrue(is_stun(RFC5769_REQUEST))
        self.assertTrue(is_stun(encode(StunMessage.request())))
        self.assertFalse(is_stun(RFC5769_REQUEST[:-4]))
        self.assertFalse(is_stun(RFC5769_REQUEST + b"\0\0\0\0"))
        self.assertFalse(is_stun(b"\x80" + RFC5769_REQUEST[1:]))
        self.assertFalse(is_stun(RFC5769_REQUEST[:4] + b"\0\0\0\0" + RFC5769_REQUEST[8:]))
        self.assertFalse(is_stun(b""))
        self.assertFalse(is_stun(encode_channel_data(0x4000, bytes(16))))

    def test_messageLength(self) -> None:
        """message_length reads STUN and padded ChannelData lengths from 4 bytes."""
        self.assertIsNone(message_length(b"\0\1\0"))
        self.assertEqual(message_length(RFC5769_REQUEST[:4]), len(RFC5769_REQUEST))
        self.assertEqual(message_length(b"\x40\x00\x00\x05"), 12)
        self.assertEqual(message_length(b"\x40\x00\x00\x08"), 12)
        self.assertEqual(message_length(b"\x4f\xff\x00\x00"), 4)
        self.assertRaises(StunDecodeError, message_length, b"\x80\0\0\0")
        self.assertRaises(StunDecodeError, message_length, b"\0\1\0\3")

    def test_framerByteByByte(self) -> None:
        """Fed one byte at a time, the framer yields each frame once it is complete."""
        stream = [RFC5769_REQUEST, encode_channel_data(0x4001, b"hello", pad=True)]
        framer = StreamFramer()
        frames = []
        joined = b"".join(stream)
        for i in range(len(joined)):
            frames.extend(framer.feed(joined[i : i + 1]))
        self.assertEqual(frames, stream)
        self.assertEqual(framer.buffered, 0)

    def test_framerOversize(self) -> None:
        """A frame longer than max_size raises, and the framer stays broken."""
        framer = StreamFramer(max_size=100)
        self.assertRaises(StunDecodeError, framer.feed, RFC5769_REQUEST[:4])
        self.assertRaises(StunDecodeError, framer.feed, b"")

    def test_framerGarbage(self) -> None:
        """A stream that is neither STUN nor ChannelData raises."""
        framer = StreamFramer()
        self.assertEqual(framer.feed(RFC5769_REQUEST + b"\x80"), [RFC5769_REQUEST])
        self.assertRaises(StunDecodeError, framer.feed, b"\0\0\0")

    def test_channelData(self) -> None:
        """ChannelData is channel, length, data, padded to 4 only when asked."""
        self.assertEqual(encode_channel_data(0x4000, b"abc"), b"\x40\0\0\3abc")
        self.assertEqual(encode_channel_data(0x4FFF, b"abc", pad=True), b"\x4f\xff\0\3abc\0")
        self.assertEqual(decode_channel_data(b"\x40\0\0\3abc"), (0x4000, b"abc"))
        self.assertEqual(decode_channel_data(b"\x40\0\0\3abc\0"), (0x4000, b"abc"))
        self.assertEqual(decode_channel_data(b"\x40\0\0\0"), (0x4000, b""))

    def test_channelDataErrors(self) -> None:
        """Bad channel numbers and lengths raise StunError / StunDecodeError."""
        self.assertRaises(StunError, encode_channel_data, 0x3FFF, b"")
        self.assertRaises(StunError, encode_channel_data, 0x5000, b"")
        self.assertRaises(StunError, encode_channel_data, 0x4000, bytes(65536))
        for frame in [
            b"\x40\0\0",
            b"\x50\0\0\0",
            b"\x3f\xff\0\0",
            b"\x40\0\0\4abc",
            b"\x40\0\0\3abc\0\0",
            b"\x40\0\0\4abcd\0",
        ]:
            self.assertRaises(StunDecodeError, decode_channel_data, frame)


# -- hypothesis -------------------------------------------------------------

SEAL_TYPES = {Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT}


class Op(NamedTuple):
    """
    One typed attribute to add: how to add it, how to read it back, and what
    reading it back must give.
    """

    attr_type: int
    add: Callable[[StunMessage], object]
    get: Callable[[StunMessage], object]
    expected: object


def _ops(
    types: Sequence[int] | st.SearchStrategy[int],
    values: st.SearchStrategy[Any],
    add: Callable[[StunMessage, int, Any], object],
    get: Callable[[StunMessage, int], object],
    expect: Callable[[Any], object] = lambda v: v,
) -> st.SearchStrategy[Op]:
    type_strategy = types if isinstance(types, st.SearchStrategy) else st.sampled_from(types)
    return st.tuples(type_strategy, values).map(
        lambda tv: Op(
            tv[0],
            lambda m: add(m, tv[0], tv[1]),
            lambda m: get(m, tv[0]),
            expect(tv[1]),
        )
    )


_algorithms = st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=9))
hosts = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
typed_ops = st.one_of(
    _ops(
        ADDRESS_TYPES,
        st.tuples(hosts, st.integers(0, 0xFFFF)),
        lambda m, t, v: m.add_address(t, v),
        lambda m, t: m.get_address(t),
        lambda v: Address(str(ipaddress.ip_address(v[0])), v[1]),
    ),
    _ops(
        STRING_TYPES,
        st.text(max_size=30),
        lambda m, t, v: m.add_string(t, v),
        lambda m, t: m.get_string(t),
    ),
    _ops(
        UINT32_TYPES,
        st.integers(0, 2**32 - 1),
        lambda m, t, v: m.add_uint32(t, v),
        lambda m, t: m.get_uint32(t),
    ),
    _ops(
        [Attr.ICE_CONTROLLED, Attr.ICE_CONTROLLING],
        st.integers(0, 2**64 - 1),
        lambda m, t, v: m.add_uint64(t, v),
        lambda m, t: m.get_uint64(t),
    ),
    _ops(
        [Attr.USE_CANDIDATE, Attr.DONT_FRAGMENT],
        st.none(),
        lambda m, t, v: m.add_flag(t),
        lambda m, t: m.get(t),
        lambda v: b"",
    ),
    _ops(
        [Attr.ERROR_CODE],
        st.tuples(st.integers(300, 699), st.text(max_size=20)),
        lambda m, t, v: m.add_error_code(*v),
        lambda m, t: m.get_error_code(),
    ),
    _ops(
        [Attr.UNKNOWN_ATTRIBUTES],
        st.lists(st.integers(0, 0xFFFF), max_size=5),
        lambda m, t, v: m.add_unknown_attributes(v),
        lambda m, t: m.get_unknown_attributes(),
    ),
    _ops(
        [Attr.CHANGE_REQUEST],
        st.tuples(st.booleans(), st.booleans()),
        lambda m, t, v: m.add_change_request(*v),
        lambda m, t: m.get_change_request(),
    ),
    _ops(
        [Attr.RESPONSE_PORT],
        st.integers(0, 0xFFFF),
        lambda m, t, v: m.add_response_port(v),
        lambda m, t: m.get_response_port(),
    ),
    _ops(
        [Attr.REQUESTED_TRANSPORT],
        st.integers(0, 0xFF),
        lambda m, t, v: m.add_requested_transport(v),
        lambda m, t: m.get_requested_transport(),
    ),
    _ops(
        [Attr.CHANNEL_NUMBER],
        st.integers(0, 0xFFFF),
        lambda m, t, v: m.add_channel_number(v),
        lambda m, t: m.get_channel_number(),
    ),
    _ops(
        [Attr.PASSWORD_ALGORITHM],
        _algorithms,
        lambda m, t, v: m.add_password_algorithm(*v),
        lambda m, t: m.get_password_algorithm(),
    ),
    _ops(
        [Attr.PASSWORD_ALGORITHMS],
        st.lists(_algorithms, max_size=4),
        lambda m, t, v: m.add_password_algorithms(v),
        lambda m, t: m.get_password_algorithms(),
    ),
    _ops(
        [Attr.PADDING],
        st.integers(0, 40),
        lambda m, t, v: m.add_padding(v),
        lambda m, t: m.get(t),
        bytes,
    ),
    _ops(
        st.integers(0, 0xFFFF).filter(lambda t: t not in SEAL_TYPES),
        st.binary(max_size=30),
        lambda m, t, v: m.add(t, v),
        lambda m, t: m.get(t),
    ),
)
cookies = st.one_of(st.just(MAGIC_COOKIE), st.integers(0, 2**32 - 1))
keys = st.one_of(st.none(), st.binary(max_size=32))


@st.composite
def built_messages(draw: st.DrawFn) -> tuple[StunMessage, list[Op]]:
    """
    A message built through the typed helpers, with the ops that built it.
    """
    msg = StunMessage(
        draw(st.integers(0, 0xFFF)),
        draw(st.sampled_from(MessageClass)),
        draw(st.binary(min_size=12, max_size=12)),
        [],
        cookie=draw(cookies),
    )
    ops = draw(st.lists(typed_ops, max_size=8, unique_by=lambda op: op.attr_type))
    for op in ops:
        op.add(msg)
    return msg, ops


@st.composite
def plausible_datagrams(draw: st.DrawFn) -> bytes:
    """
    Bytes with a consistent header and well-framed attributes of random types
    (mostly known ones) and random values: most decode, few make sense.
    """
    attr_types = st.one_of(st.sampled_from(sorted(KNOWN_ATTRIBUTES)), st.integers(0, 0xFFFF))
    attributes = draw(st.lists(st.tuples(attr_types, st.binary(max_size=24)), max_size=6))
    return _raw_message(
        attributes,
        message_type=draw(st.integers(0, 0x3FFF)),
        cookie=draw(cookies),
        transaction_id=draw(st.binary(min_size=12, max_size=12)),
    )


@st.composite
def sealed_datagrams(draw: st.DrawFn) -> bytes:
    """
    A valid encoded message, with integrity and fingerprint.
    """
    msg, _ = draw(built_messages())
    return encode(
        msg,
        integrity_key=draw(st.binary(max_size=8)),
        integrity_sha256_key=draw(keys),
        fingerprint=draw(st.booleans()),
    )


@st.composite
def mutated(draw: st.DrawFn, datagrams: st.SearchStrategy[bytes]) -> bytes:
    """
    C{datagrams} damaged by byte flips, insertions, deletions and truncation.
    """
    data = bytearray(draw(datagrams))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 4))]
        else:
            del data[position:]
    return bytes(data)


class PropertyTests(SynchronousTestCase):
    """
    Hypothesis properties of the codec.
    """

    @settings(max_examples=300, deadline=None)
    @given(
        built=built_messages(),
        integrity_key=keys,
        sha256_key=keys,
        sha256_length=st.sampled_from([16, 20, 24, 28, 32]),
        fingerprint=st.booleans(),
    )
    def test_roundTrip(
        self,
        built: tuple[StunMessage, list[Op]],
        integrity_key: bytes | None,
        sha256_key: bytes | None,
        sha256_length: int,
        fingerprint: bool,
    ) -> None:
        """Encoding then decoding a built message keeps every field, and the seals verify."""
        msg, ops = built
        data = encode(
            msg,
            integrity_key=integrity_key,
            integrity_sha256_key=sha256_key,
            integrity_sha256_length=sha256_length,
            fingerprint=fingerprint,
        )
        self.assertEqual(is_stun(data), msg.cookie == MAGIC_COOKIE)
        self.assertEqual(message_length(data[:4]), len(data))
        out = decode(data)
        self.assertEqual(out.method, msg.method)
        self.assertEqual(out.message_class, msg.message_class)
        self.assertEqual(out.transaction_id, msg.transaction_id)
        self.assertEqual(out.cookie, msg.cookie)
        seals = [
            t
            for t, present in [
                (Attr.MESSAGE_INTEGRITY, integrity_key is not None),
                (Attr.MESSAGE_INTEGRITY_SHA256, sha256_key is not None),
                (Attr.FINGERPRINT, fingerprint),
            ]
            if present
        ]
        self.assertEqual([a.type for a in out.attributes], [op.attr_type for op in ops] + seals)
        self.assertEqual(out.stripped(), msg)
        for op in ops:
            self.assertEqual(op.get(out), op.expected)
        self.assertEqual(out.check_integrity(integrity_key or b""), integrity_key is not None)
        self.assertEqual(out.check_integrity_sha256(sha256_key or b""), sha256_key is not None)
        self.assertEqual(out.check_fingerprint(), fingerprint)
        if integrity_key is not None:
            self.assertFalse(out.check_integrity(integrity_key + b"x"))
        if sha256_key is not None:
            self.assertFalse(out.check_integrity_sha256(sha256_key + b"x"))
        self.assertEqual(encode(out), data)

    @settings(max_examples=500, deadline=None)
    @given(data=st.one_of(st.binary(max_size=120), plausible_datagrams()))
    def test_arbitraryBytes(self, data: bytes) -> None:
        """decode() of any bytes returns a message or raises StunDecodeError, nothing else."""
        msg = _decode_or_none(data)
        if msg is not None:
            self.assertEqual(msg.raw, data)

    @settings(max_examples=400, deadline=None)
    @given(
        data=st.one_of(
            mutated(sealed_datagrams()),
            mutated(st.sampled_from([RFC5769_REQUEST, RFC5769_IPV6_RESPONSE])),
        ),
        key=st.binary(max_size=8),
    )
    def test_mutatedMessages(self, data: bytes, key: bytes) -> None:
        """Damaged messages decode or raise StunDecodeError; checks and getters stay safe."""
        msg = _decode_or_none(data)
        if msg is not None:
            _call_every_check(msg, key)
            _call_every_getter(msg)

    @settings(max_examples=400, deadline=None)
    @given(data=plausible_datagrams(), key=st.binary(max_size=8))
    def test_gettersOnArbitraryMessages(self, data: bytes, key: bytes) -> None:
        """Typed getters on decoded arbitrary messages raise nothing but StunDecodeError."""
        msg = _decode_or_none(data)
        if msg is not None:
            _call_every_getter(msg)
            _call_every_check(msg, key)

    @settings(max_examples=200, deadline=None)
    @given(raw=st.binary(max_size=80), key=st.binary(max_size=8))
    def test_checksOnArbitraryRaw(self, raw: bytes, key: bytes) -> None:
        """The checks return False rather than raise whatever raw holds."""
        msg = StunMessage.request()
        msg.raw = raw
        _call_every_check(msg, key)

    @settings(max_examples=200, deadline=None)
    @given(
        frames=st.lists(
            st.one_of(
                plausible_datagrams(),
                st.builds(
                    encode_channel_data,
                    st.integers(0x4000, 0x4FFF),
                    st.binary(max_size=30),
                    st.just(True),
                ),
            ),
            max_size=6,
        ),
        cuts=st.lists(st.integers(0, 2000), max_size=8),
    )
    def test_streamFramer(self, frames: list[bytes], cuts: list[int]) -> None:
        """A stream of frames split at random points comes out as exactly those frames."""
        stream = b"".join(frames)
        points = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
        framer = StreamFramer()
        out: list[bytes] = []
        for start, end in itertools.pairwise(points):
            out.extend(framer.feed(stream[start:end]))
        self.assertEqual(out, frames)
        self.assertEqual(framer.buffered, 0)
        for frame in out:
            if frame[0] & 0xC0 == 0x40:
                channel, payload = decode_channel_data(frame)
                self.assertEqual(encode_channel_data(channel, payload, pad=True), frame)

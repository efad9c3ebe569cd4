# -*- test-case-name: tests.unit.test_fuzz -*-
"""A mutation fuzzer for holepunch's parsers of untrusted input.

Three targets, each fed seeds of real encoded messages and mutations of them:

- ``stun``: `holepunch.stun.message.decode` and every typed getter on what it decodes
  (RFC 8489, RFC 5780 and TURN's RFC 8656 attributes), MESSAGE-INTEGRITY and
  FINGERPRINT checks, re-encoding of what decoded, stream framing and ChannelData
  (`holepunch.stun.framing`), and the STUN server's `StunResponder.handle`, which must
  never raise at all;
- ``candidate``: `Candidate.from_sdp <holepunch.ice.candidate.Candidate.from_sdp>` on
  ``candidate:`` lines (RFC 8839), and ``from_sdp(c.to_sdp()) == c`` for what parses;
- ``signaling``: `holepunch.signaling.messages.parse_request` on JSON messages.

The documented errors (`StunDecodeError`, `CandidateError`, `MessageError`) are
expected; any other exception is a bug in the parser and is reported with the input
that raised it, in hex. Mutations: bit flips, byte insertion, deletion and overwrite,
header and attribute length edits, attribute duplication, truncation, retyping and
flooding, splicing two inputs, re-sealing FINGERPRINT; for text, token replacement,
duplication, deletion and swapping with awkward values; for JSON, value and key
replacement with awkward JSON (huge numbers, deep nesting, long strings, wrong types).
Everything follows from ``--seed``: the same command gives the same inputs.

Run (the figures in docs/benchmarks.md, "Fuzzing")::

    nice -n 10 python -m holepunch.testing.fuzz --target stun --inputs 400000 --seed 1

It prints inputs per second, the longest and the 99.9th percentile time per input,
and every unexpected exception; the exit status is 1 if there was one.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from holepunch.ice.candidate import Candidate, CandidateError, make_candidate
from holepunch.signaling.messages import MessageError, parse_request
from holepunch.stun.credentials import long_term_key
from holepunch.stun.framing import (
    StreamFramer,
    decode_channel_data,
    encode_channel_data,
    message_length,
)
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.server import StunResponder
from holepunch.stun.wire import (
    HEADER_LENGTH,
    Address,
    Attr,
    Method,
    StunDecodeError,
    compute_fingerprint,
)
from holepunch.turn.families import (
    get_additional_family,
    get_address_errors,
    get_relayed_addresses,
    get_requested_family,
)

# -- seeds ---------------------------------------------------------------------------

#: RFC 5769 sections 2.1-2.4 and the RFC 8489 appendix B.1 vector (corrected).
STUN_VECTORS: tuple[bytes, ...] = tuple(
    bytes.fromhex(h)
    for h in (
        "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
        "002400046e0001ff80290008932ff9b151263b36000600096576746a3a6836765920202000080014"
        "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf",
        "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f722000200008"
        "0001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96",
        "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f722000200014"
        "0002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275"
        "bfe3ed4180280004c8fb0b4c",
        "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe3"
        "82b900000015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b"
        "6578616d706c652e6f72670000080014f67024656dd64a3e02b8e0712e85c9a28ca89666",
        "000100902112a44278ad3433c6ad72c029da412e001e00204a3cf38fef6992bda952c6780417da0f"
        "24819415569e60b205c46e41407f1704001500296f624d61744a6f733241414143662f2f3439396b"
        "39353464364f4c33346f4c394653547679363473410000000014000b6578616d706c652e6f726700"
        "001d000400020000001c0020b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278c"
        "c6518e65",
    )
)

_TID = bytes(range(1, 13))
_PEER = Address("198.51.100.7", 40000)
_PEER6 = Address("2001:db8::7", 40000)


def stun_seeds() -> list[bytes]:
    """The RFC vectors and messages our own code builds: Binding, ICE checks, TURN."""
    key = long_term_key("user", "example.org", "secret")
    seeds = list(STUN_VECTORS)

    def msg(method: int = Method.BINDING) -> StunMessage:
        return StunMessage.request(method, transaction_id=_TID)

    seeds.append(encode(msg()))
    seeds.append(encode(msg(), fingerprint=True))
    seeds.append(encode(msg().add_change_request(True, True).add_response_port(5000)))
    seeds.append(encode(msg().add_padding(64), fingerprint=True))
    ok = msg().success_response()
    ok.add_address(Attr.XOR_MAPPED_ADDRESS, _PEER).add_address(Attr.MAPPED_ADDRESS, _PEER)
    ok.add_address(Attr.OTHER_ADDRESS, _PEER).add_address(Attr.RESPONSE_ORIGIN, _PEER6)
    seeds.append(encode(ok, fingerprint=True))
    ice = msg().add_string(Attr.USERNAME, "abcd:efgh").add_uint32(Attr.PRIORITY, 1853817087)
    ice.add_uint64(Attr.ICE_CONTROLLING, 0x1234567890ABCDEF).add_flag(Attr.USE_CANDIDATE)
    seeds.append(encode(ice, integrity_key=b"password", fingerprint=True))
    err = msg().error_response(420).add_unknown_attributes([0x7F01, 0x0002])
    seeds.append(encode(err, fingerprint=True))
    allocate = msg(Method.ALLOCATE).add_requested_transport(17)
    allocate.add_string(Attr.USERNAME, "user").add_string(Attr.REALM, "example.org")
    allocate.add_string(Attr.NONCE, "nonce-123").add_uint32(Attr.LIFETIME, 600)
    allocate.add_flag(Attr.DONT_FRAGMENT).add(Attr.EVEN_PORT, b"\x80")
    allocate.add_password_algorithms([(1, b""), (2, b"")]).add_password_algorithm(2)
    seeds.append(encode(allocate, integrity_key=key, integrity_sha256_key=key, fingerprint=True))
    allocated = msg(Method.ALLOCATE).success_response()
    allocated.add_address(Attr.XOR_RELAYED_ADDRESS, _PEER6).add_uint32(Attr.LIFETIME, 600)
    allocated.add_uint64(Attr.RESERVATION_TOKEN, 7).add_address(Attr.XOR_MAPPED_ADDRESS, _PEER)
    seeds.append(encode(allocated, integrity_key=key))
    permission = msg(Method.CREATE_PERMISSION).add_address(Attr.XOR_PEER_ADDRESS, _PEER)
    seeds.append(encode(permission, integrity_key=key))
    bind = msg(Method.CHANNEL_BIND).add_channel_number(0x4001)
    seeds.append(encode(bind.add_address(Attr.XOR_PEER_ADDRESS, _PEER6), integrity_key=key))
    data = StunMessage.indication(Method.DATA, transaction_id=_TID)
    seeds.append(encode(data.add_address(Attr.XOR_PEER_ADDRESS, _PEER).add(Attr.DATA, b"hi!")))
    redirect = msg(Method.ALLOCATE).error_response(300)
    redirect.add_address(Attr.ALTERNATE_SERVER, _PEER).add_string(Attr.ALTERNATE_DOMAIN, "x.org")
    seeds.append(encode(redirect))
    classic = msg()
    classic.cookie = 0x01020304
    seeds.append(encode(classic))
    seeds.append(encode_channel_data(0x4001, b"hello"))
    seeds.append(encode_channel_data(0x4FFF, b"hello world", pad=True))
    responder = StunResponder(Address("192.0.2.1", 3478), Address("192.0.2.2", 3479), rate=0)
    for seed in list(seeds[5:9]):
        reply = responder.handle(seed, _PEER, responder.primary, 0.0)
        if reply is not None:
            seeds.append(reply.data)
    return seeds


CANDIDATE_SEEDS: tuple[str, ...] = (
    "candidate:1 1 udp 2130706431 192.0.2.1 54400 typ host",
    "a=candidate:1 1 UDP 2130706431 192.0.2.1 54400 typ srflx raddr 10.0.0.2 rport 54400",
    "candidate:842163049 1 udp 1677729535 198.51.100.7 61665 typ srflx raddr 0.0.0.0 "
    "rport 0 generation 0 ufrag EsAw network-cost 999",
    "candidate:3 1 tcp 1518280447 2001:db8::1 9 typ host tcptype active",
    "candidate:4 2 tcp 1518214911 192.0.2.1 50000 typ relay raddr 192.0.2.9 rport 3478 "
    "tcptype passive",
    "candidate:5 1 udp 16777215 fe80::1 3478 typ prflx",
)


def candidate_seeds() -> list[str]:
    """The fixed lines and candidates our own code makes."""
    made = [
        make_candidate("host", "10.0.0.2", 5000),
        make_candidate("srflx", "203.0.113.5", 6000, base=("10.0.0.2", 5000), server="s"),
        make_candidate(
            "relay",
            "2001:db8::9",
            7000,
            base=("2001:db8::2", 1),
            transport="tcp",
            tcptype="passive",
        ),
    ]
    return list(CANDIDATE_SEEDS) + [c.to_sdp() for c in made]


SIGNALING_SEEDS: tuple[str, ...] = (
    '{"type":"register","peerId":"alice","metadata":{"name":"Alice"},"id":1}',
    '{"type":"register","peerId":"bob","reconnectToken":"tok-123","id":"r1"}',
    '{"type":"join-room","roomId":"lobby","peerId":"alice","id":2}',
    '{"type":"leave-room","roomId":"lobby","id":3}',
    '{"type":"get-room-peers","roomId":"lobby"}',
    '{"type":"offer","to":"bob","from":"alice","offer":{"type":"offer","sdp":"v=0"}}',
    '{"type":"answer","to":"alice","answer":{"type":"answer","sdp":"v=0"},"id":9}',
    '{"type":"ice-candidate","to":"bob","candidate":{"candidate":"candidate:1 1 udp 1 '
    '192.0.2.1 1 typ host","sdpMid":"0"}}',
    '{"type":"ice-candidate","to":"bob","candidate":null}',
    '{"type":"ping","id":7}',
    '{"type":"connection-state","peerId":"bob","state":"connected","method":"direct"}',
)

# -- mutation ---------------------------------------------------------------------------

_INTERESTING_TYPES = [int(a) for a in Attr] + [0x0000, 0x0004, 0x0005, 0x7FFF, 0x8000, 0xFFFF]
_INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x40, 0x21]


def _tlvs(data: bytes | bytearray) -> list[tuple[int, int]]:
    """(offset, padded length) of each attribute, read leniently from a STUN body."""
    out: list[tuple[int, int]] = []
    offset = HEADER_LENGTH
    while offset + 4 <= len(data) and len(out) < 256:
        length = data[offset + 2] << 8 | data[offset + 3]
        size = 4 + length + (-length % 4)
        out.append((offset, min(size, len(data) - offset)))
        offset += size
    return out


def _fix_length(data: bytearray) -> None:
    if len(data) >= 4:
        struct.pack_into("!H", data, 2, max(0, min(0xFFFF, len(data) - HEADER_LENGTH)))


class BinaryMutator:
    """Stacked mutations of STUN (and ChannelData) bytes."""

    def __init__(self, rng: random.Random, seeds: Sequence[bytes]) -> None:
        self.rng = rng
        self.seeds = list(seeds)
        self.ops: list[Callable[[bytearray], bytearray]] = [
            self.bit_flip,
            self.byte_set,
            self.insert,
            self.delete,
            self.header_length,
            self.attribute_length,
            self.duplicate,
            self.truncate,
            self.retype,
            self.flood,
            self.splice,
        ]

    def __call__(self) -> bytes:
        rng = self.rng
        data = bytearray(rng.choice(self.seeds))
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 6))):
            data = rng.choice(self.ops)(data)
        if len(data) >= HEADER_LENGTH and rng.random() < 0.5:
            _fix_length(data)
        if rng.random() < 0.3:
            self.reseal(data)
        return bytes(data)

    def bit_flip(self, data: bytearray) -> bytearray:
        if data:
            for _ in range(self.rng.randint(1, 4)):
                i = self.rng.randrange(len(data) * 8)
                data[i // 8] ^= 1 << (i % 8)
        return data

    def byte_set(self, data: bytearray) -> bytearray:
        if data:
            data[self.rng.randrange(len(data))] = self.rng.choice(
                [*_INTERESTING_BYTES, self.rng.randrange(256)]
            )
        return data

    def insert(self, data: bytearray) -> bytearray:
        i = self.rng.randint(0, len(data))
        data[i:i] = self.rng.randbytes(self.rng.choice((1, 2, 4, 8, 4, 12)))
        return data

    def delete(self, data: bytearray) -> bytearray:
        if data:
            i = self.rng.randrange(len(data))
            del data[i : i + self.rng.choice((1, 2, 4, 8, 4, 20))]
        return data

    def header_length(self, data: bytearray) -> bytearray:
        if len(data) >= 4:
            real = len(data) - HEADER_LENGTH
            value = self.rng.choice((0, 4, real - 4, real + 4, real + 1, 0xFFFF, 0xFFFC))
            struct.pack_into("!H", data, 2, value % 0x10000)
        return data

    def attribute_length(self, data: bytearray) -> bytearray:
        tlvs = _tlvs(data)
        if tlvs:
            offset, size = self.rng.choice(tlvs)
            if offset + 4 <= len(data):
                length = size - 4
                value = self.rng.choice(
                    (0, 1, 3, 4, length - 1, length + 1, length + 4, 0xFFFF, self.rng.randrange(64))
                )
                struct.pack_into("!H", data, offset + 2, value % 0x10000)
        return data

    def duplicate(self, data: bytearray) -> bytearray:
        tlvs = _tlvs(data)
        if tlvs:
            offset, size = self.rng.choice(tlvs)
            chunk = data[offset : offset + size] * self.rng.choice((1, 1, 2, 5))
            at = self.rng.choice([o for o, _ in tlvs] + [len(data)])
            data[at:at] = chunk
        return data

    def truncate(self, data: bytearray) -> bytearray:
        tlvs = _tlvs(data)
        if tlvs:
            offset, size = self.rng.choice(tlvs)
            cut = self.rng.randint(1, size)
            del data[offset + size - cut : offset + size]
            if self.rng.random() < 0.5 and offset + 4 <= len(data):
                value_length = max(0, size - cut - 4)
                struct.pack_into("!H", data, offset + 2, value_length)
        else:
            del data[self.rng.randint(0, len(data)) :]
        return data

    def retype(self, data: bytearray) -> bytearray:
        tlvs = _tlvs(data)
        if tlvs:
            offset, _ = self.rng.choice(tlvs)
            if offset + 2 <= len(data):
                struct.pack_into("!H", data, offset, self.rng.choice(_INTERESTING_TYPES))
        elif len(data) >= 2:
            struct.pack_into("!H", data, 0, self.rng.randrange(0x10000))  # message type
        return data

    def flood(self, data: bytearray) -> bytearray:
        n = self.rng.choice((10, 63, 64, 65, 200, 2000))
        kind = self.rng.random()
        for i in range(n):
            t = 0x4000 + i if kind < 0.5 else self.rng.choice(_INTERESTING_TYPES)
            data += struct.pack("!HH", t, 0)
        return data

    def splice(self, data: bytearray) -> bytearray:
        other = self.rng.choice(self.seeds)
        if self.rng.random() < 0.5:
            # Another message's attributes after this header.
            return data[:HEADER_LENGTH] + bytearray(other[HEADER_LENGTH:])
        i = self.rng.randint(0, len(data))
        j = self.rng.randint(0, len(other))
        return data[:i] + bytearray(other[j:])

    def reseal(self, data: bytearray) -> None:
        """Recompute a trailing FINGERPRINT so the mutated message gets past it."""
        if len(data) >= HEADER_LENGTH + 8 and data[-8:-4] == b"\x80\x28\x00\x04":
            _fix_length(data)
            data[-4:] = compute_fingerprint(bytes(data[:-8]))


_TOKENS = [
    "",
    "0",
    "-1",
    "1",
    "65535",
    "65536",
    "256",
    "4294967296",
    "2147483648",
    "9" * 5000,
    "1e5",
    "0x10",
    "+5",
    " 7",
    "١٢٣",
    "nan",
    "::1",
    "fe80::1%eth0",
    "256.1.1.1",
    "1.2.3",
    "::ffff:1.2.3.4",
    "a" * 40,
    "\x00",
    "\ud800",
    "é",
    "udp",
    "tcp",
    "TCP",
    "typ",
    "host",
    "srflx",
    "relay",
    "prflx",
    "raddr",
    "rport",
    "tcptype",
    "active",
    "so",
    "candidate:",
    "a=candidate:x",
    "generation",
    "\t",
    "\u2028",
    "\u00a0",
]


class TextMutator:
    """Stacked token- and byte-level mutations of text lines."""

    def __init__(self, rng: random.Random, seeds: Sequence[str]) -> None:
        self.rng = rng
        self.seeds = list(seeds)
        self.bytes = BinaryMutator(rng, [s.encode() for s in seeds])

    def __call__(self) -> str:
        rng = self.rng
        text = rng.choice(self.seeds)
        for _ in range(rng.choice((1, 1, 2, 3))):
            if rng.random() < 0.25:
                raw = bytearray(text.encode("utf-8", "surrogatepass"))
                op = rng.choice(
                    (
                        self.bytes.bit_flip,
                        self.bytes.byte_set,
                        self.bytes.insert,
                        self.bytes.delete,
                        self.bytes.splice,
                    )
                )
                text = bytes(op(raw)).decode("utf-8", "surrogateescape")
                continue
            tokens = text.split(" ")
            i = rng.randrange(len(tokens))
            choice = rng.random()
            if choice < 0.5:
                tokens[i] = rng.choice(_TOKENS)
            elif choice < 0.65:
                tokens.insert(i, tokens[i])
            elif choice < 0.8 and len(tokens) > 1:
                del tokens[i]
            elif choice < 0.9:
                j = rng.randrange(len(tokens))
                tokens[i], tokens[j] = tokens[j], tokens[i]
            else:
                tokens += rng.choice(_TOKENS).split(" ") * rng.choice((1, 2, 50))
            text = " ".join(tokens)
        return text


_JSON_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -0.0,
    1,
    -1,
    2**53 + 1,
    2**64,
    2**70,
    1e308,
    -1e308,
    1.5,
    "",
    "x",
    "a" * 300,
    "\u0000",
    "\u202e",
    "é" * 200,
    [],
    [1, 2],
    {},
    {"a": {"b": [None]}},
    {"k" + str(i): i for i in range(200)},
    "lobby",
    "alice",
    "offer",
    "ice-candidate",
    "connected",
    "register",
    "ping",
]


def _deep(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


class JsonMutator:
    """Structural mutations of JSON objects, then sometimes byte-level ones."""

    def __init__(self, rng: random.Random, seeds: Sequence[str]) -> None:
        self.rng = rng
        self.seeds = [json.loads(s) for s in seeds]
        self.bytes = BinaryMutator(rng, [s.encode() for s in seeds])

    def value(self) -> object:
        if self.rng.random() < 0.05:
            return _deep(self.rng.choice((10, 100, 1000, 5000)))
        return self.rng.choice(_JSON_VALUES)

    def __call__(self) -> bytes | str:
        rng = self.rng
        obj = json.loads(json.dumps(rng.choice(self.seeds)))
        for _ in range(rng.choice((1, 1, 2, 3))):
            keys = list(obj)
            choice = rng.random()
            if choice < 0.5 and keys:
                obj[rng.choice(keys)] = self.value()
            elif choice < 0.65 and keys:
                del obj[rng.choice(keys)]
            elif choice < 0.8:
                obj[rng.choice(["type", "id", "to", "from", "peerId", "roomId", "x", ""])] = (
                    self.value()
                )
            elif choice < 0.9:
                other = rng.choice(self.seeds)
                obj.update({k: v for k, v in other.items() if rng.random() < 0.5})
            else:
                obj = self.value()  # not an object at all
                break
        try:
            text = json.dumps(obj, ensure_ascii=rng.random() < 0.5)
        except (RecursionError, ValueError):
            text = "[" * 10000
        if rng.random() < 0.2:
            raw = bytearray(text.encode("utf-8", "surrogatepass"))
            op = rng.choice(
                (
                    self.bytes.bit_flip,
                    self.bytes.insert,
                    self.bytes.delete,
                    self.bytes.byte_set,
                    self.bytes.splice,
                )
            )
            return bytes(op(raw))
        return text if rng.random() < 0.3 else text.encode("utf-8", "surrogatepass")


# -- targets ------------------------------------------------------------------------------

ADDRESS_TYPES = (
    Attr.MAPPED_ADDRESS,
    Attr.XOR_MAPPED_ADDRESS,
    Attr.XOR_PEER_ADDRESS,
    Attr.XOR_RELAYED_ADDRESS,
    Attr.ALTERNATE_SERVER,
    Attr.RESPONSE_ORIGIN,
    Attr.OTHER_ADDRESS,
    0x0004,
    0x0005,
)
STRING_TYPES = (Attr.USERNAME, Attr.REALM, Attr.NONCE, Attr.SOFTWARE, Attr.ALTERNATE_DOMAIN)
UINT32_TYPES = (Attr.PRIORITY, Attr.LIFETIME, Attr.CONNECTION_ID)
UINT64_TYPES = (Attr.ICE_CONTROLLED, Attr.ICE_CONTROLLING, Attr.RESERVATION_TOKEN)


class RoundTripError(AssertionError):
    """A parsed value did not survive re-encoding: a bug, reported like a crash."""


def stun_getters(msg: StunMessage) -> list[Callable[[], object]]:
    """A call of every typed getter of ``msg`` (each attribute type it decodes, and the
    checks), for callers that want only :class:`StunDecodeError` out of any of them."""
    return [
        *[lambda t=t: msg.get_address(t) for t in ADDRESS_TYPES],
        *[lambda t=t: msg.get_string(t) for t in STRING_TYPES],
        *[lambda t=t: msg.get_uint32(t) for t in UINT32_TYPES],
        *[lambda t=t: msg.get_uint64(t) for t in UINT64_TYPES],
        msg.get_error_code,
        msg.get_unknown_attributes,
        msg.get_change_request,
        msg.get_response_port,
        msg.get_requested_transport,
        msg.get_channel_number,
        msg.get_password_algorithm,
        msg.get_password_algorithms,
        msg.unknown_comprehension_required,
        msg.check_fingerprint,
        lambda: msg.check_integrity(b"password"),
        lambda: msg.check_integrity_sha256(b"password"),
        lambda: get_requested_family(msg),
        lambda: get_additional_family(msg),
        lambda: get_address_errors(msg),
        lambda: get_relayed_addresses(msg),
    ]


class StunTarget:
    """Everything that reads STUN bytes from the network; only StunDecodeError may escape."""

    name = "stun"
    expected: tuple[type[BaseException], ...] = (StunDecodeError,)

    def __init__(self) -> None:
        self.responder = StunResponder(
            Address("192.0.2.1", 3478), Address("192.0.2.2", 3479), rate=0
        )

    def __call__(self, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        # The server first: it must swallow everything, on its fast path (what both of
        # its protocols try first) as on the full one.
        primary = self.responder.primary
        for peer in (_PEER, _PEER6):
            self.responder.answer_plain_binding(data, peer.host, peer.port, primary, 0.0)
        self.responder.handle(data, _PEER, self.responder.primary, 0.0)
        self.responder.handle(data, _PEER6, Address("192.0.2.1", 3478), 0.0, "tcp")
        self._framing(data)
        try:
            msg = decode(data)
        except StunDecodeError:
            return
        for getter in stun_getters(msg):
            try:
                getter()
            except StunDecodeError:
                pass
        again = decode(encode(msg.stripped()))
        if again.attributes != msg.stripped().attributes or again.method != msg.method:
            raise RoundTripError("decode(encode(m)) differs from m")

    @staticmethod
    def _framing(data: bytes) -> None:
        try:
            message_length(data[:4])
        except StunDecodeError:
            pass
        try:
            decode_channel_data(data)
        except StunDecodeError:
            pass
        framer = StreamFramer(max_size=4096)
        try:
            for i in range(0, len(data), 97):
                framer.feed(data[i : i + 97])
        except StunDecodeError:
            pass


class CandidateTarget:
    """``candidate:`` lines; only CandidateError may escape, and what parses round-trips."""

    name = "candidate"
    expected: tuple[type[BaseException], ...] = (CandidateError,)

    def __call__(self, line: bytes | str) -> None:
        assert isinstance(line, str)
        candidate = Candidate.from_sdp(line)
        again = Candidate.from_sdp(candidate.to_sdp())
        if again != candidate or again.extensions != candidate.extensions:
            raise RoundTripError(f"from_sdp(to_sdp()) differs: {candidate} -> {again}")


class SignalingTarget:
    """Signaling messages; only MessageError may escape."""

    name = "signaling"
    expected: tuple[type[BaseException], ...] = (MessageError,)
    max_size = 65536

    def __call__(self, payload: bytes | str) -> None:
        parse_request(payload, self.max_size)


def _encode_input(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return "str:" + value.encode("utf-8", "surrogatepass").hex()


@dataclass
class Crash:
    """An unexpected exception and the input that raised it."""

    target: str
    error: str
    where: str
    input_hex: str


@dataclass
class Report:
    """What one run found."""

    target: str
    inputs: int = 0
    seconds: float = 0.0
    max_time: float = 0.0
    p999_time: float = 0.0
    slowest_hex: str = ""
    slowest_retimed: float = 0.0
    crashes: list[Crash] = field(default_factory=list)
    unexpected: int = 0

    @property
    def rate(self) -> float:
        """Inputs per second (target time only)."""
        return self.inputs / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        """The report as text."""
        out = [
            f"{self.target}: {self.inputs} inputs in {self.seconds:.1f} s "
            f"({self.rate:,.0f}/s); per input max {self.max_time * 1e3:.2f} ms, "
            f"p99.9 {self.p999_time * 1e3:.3f} ms; unexpected exceptions: {self.unexpected}"
        ]
        if self.slowest_hex:
            out.append(
                f"  slowest input, re-timed (best of 5): {self.slowest_retimed * 1e3:.3f} ms; "
                f"input: {self.slowest_hex}"
            )
        for crash in self.crashes:
            out.append(f"  UNEXPECTED {crash.error} at {crash.where}")
            out.append(f"    input: {crash.input_hex}")
        return out


Target = Callable[[bytes | str], None]
Mutator = Callable[[], bytes | str]


def make_target(
    name: str, rng: random.Random
) -> tuple[Target, tuple[type[BaseException], ...], Mutator]:
    """The function to fuzz, its expected errors, and a mutator drawing on ``rng``."""
    if name == "stun":
        stun = StunTarget()
        return stun, stun.expected, BinaryMutator(rng, stun_seeds())
    if name == "candidate":
        cand = CandidateTarget()
        return cand, cand.expected, TextMutator(rng, candidate_seeds())
    if name == "signaling":
        sig = SignalingTarget()
        return sig, sig.expected, JsonMutator(rng, SIGNALING_SEEDS)
    raise ValueError(f"unknown target {name!r}; one of stun, candidate, signaling")


def run(target: str, inputs: int, seed: int = 1, max_crashes: int = 10) -> Report:
    """Fuzz ``target`` with ``inputs`` mutated inputs from ``seed``."""
    rng = random.Random(f"{target}:{seed}")
    call, expected, mutate = make_target(target, rng)
    report = Report(target)
    times: list[float] = []
    seen: set[tuple[str, str]] = set()
    slowest: bytes | str = b""
    clock = time.perf_counter
    for _ in range(inputs):
        value = mutate()
        start = clock()
        try:
            call(value)
        except expected:
            elapsed = clock() - start
        except Exception as e:  # anything else is what we look for
            elapsed = clock() - start
            report.unexpected += 1
            frame = traceback.extract_tb(e.__traceback__)[-1]
            where = f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno} ({frame.name})"
            key = (type(e).__name__, where)
            if key not in seen and len(report.crashes) < max_crashes:
                seen.add(key)
                report.crashes.append(
                    Crash(target, f"{type(e).__name__}: {e}"[:300], where, _encode_input(value))
                )
        else:
            elapsed = clock() - start
        times.append(elapsed)
        if elapsed > report.max_time:
            report.max_time = elapsed
            report.slowest_hex = _encode_input(value)
            slowest = value
    report.inputs = inputs
    report.seconds = sum(times)
    if report.slowest_hex:
        # Was the slowest input slow, or did the machine pause (GC, another process)?
        report.slowest_retimed = min(_time_one(call, slowest) for _ in range(5))
    if times:
        times.sort()
        report.p999_time = times[min(len(times) - 1, int(len(times) * 0.999))]
    return report


def _time_one(call: Target, value: bytes | str) -> float:
    start = time.perf_counter()
    try:
        call(value)
    except Exception:  # the run above has reported it already
        pass
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: fuzz one or every target, print the reports."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target", choices=["stun", "candidate", "signaling", "all"], default="all"
    )
    parser.add_argument("--inputs", type=int, default=10000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    targets = ["stun", "candidate", "signaling"] if args.target == "all" else [args.target]
    failed = False
    for name in targets:
        report = run(name, args.inputs, args.seed)
        print("\n".join(report.lines()), flush=True)
        failed |= report.unexpected > 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

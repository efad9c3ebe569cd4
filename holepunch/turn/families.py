# -*- test-case-name: tests.unit.test_turn_families -*-
"""Address families of TURN relayed addresses (RFC 8656 sections 7, 14.6, 14.8, 14.9).

A pure model module: no sockets, no reactor, no clock. It encodes and decodes

 - REQUESTED-ADDRESS-FAMILY (0x0017, 14.6): the one family of relayed address a client
   asks for (IPv4 when absent);
 - ADDITIONAL-ADDRESS-FAMILY (0x8000, 14.8): a dual allocation, an IPv4 and an IPv6
   relayed address at once (its value is always IPv6);
 - ADDRESS-ERROR-CODE (0x8001, 14.9): in a dual allocation's success response, why the
   server did not allocate one of the two families (the other one was allocated);
 - every XOR-RELAYED-ADDRESS of a response (a dual allocation carries two).

coturn 4.6 speaks dual allocation with the codepoints of the draft that became RFC 8656
(ADDITIONAL-ADDRESS-FAMILY 0x8032, ADDRESS-ERROR-CODE 0x8033) and answers a refused
family with a placeholder XOR-RELAYED-ADDRESS ``0.0.0.0:0``. A request here carries
ADDITIONAL-ADDRESS-FAMILY under both codepoints (each is comprehension-optional, so a
server ignores the one it does not know), and a response is read under both; a
placeholder address is not a relayed address.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Literal

from holepunch.addresses import ip_version, unmapped
from holepunch.stun.message import StunMessage, decode_error_value, encode_error_value
from holepunch.stun.wire import Address, Attr, StunDecodeError, StunEncodeError

REQUESTED_ADDRESS_FAMILY = int(Attr.REQUESTED_ADDRESS_FAMILY)
ADDITIONAL_ADDRESS_FAMILY = 0x8000
ADDRESS_ERROR_CODE = 0x8001
DRAFT_ADDITIONAL_ADDRESS_FAMILY = 0x8032
"""ADDITIONAL-ADDRESS-FAMILY as coturn 4.6 knows it (draft-ietf-tram-turnbis)."""
DRAFT_ADDRESS_ERROR_CODE = 0x8033
"""ADDRESS-ERROR-CODE as coturn 4.6 sends it (draft-ietf-tram-turnbis)."""

AUTO = "auto"
"""Ask for both families, the one we reach the server over first."""


class AddressFamily(enum.IntEnum):
    """The STUN address family numbers (RFC 8489 14.1), also those of RFC 8656 14.6."""

    IPV4 = 0x01
    IPV6 = 0x02

    @property
    def label(self) -> str:
        """``IPv4`` or ``IPv6``, for messages."""
        return "IPv4" if self is AddressFamily.IPV4 else "IPv6"

    @property
    def other(self) -> AddressFamily:
        """The other family."""
        return AddressFamily.IPV6 if self is AddressFamily.IPV4 else AddressFamily.IPV4

    @classmethod
    def parse(cls, value: str | int | AddressFamily) -> AddressFamily:
        """A family from ``ipv4``/``ipv6`` (any case, also ``4``/``6``) or its number.

        :raises ValueError: anything else.
        """
        if isinstance(value, AddressFamily):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                raise ValueError(f"unknown address family {value!r}") from None
        text = str(value).strip().lower()
        if text in ("ipv4", "4", "inet", "v4"):
            return cls.IPV4
        if text in ("ipv6", "6", "inet6", "v6"):
            return cls.IPV6
        raise ValueError(f"unknown address family {value!r} (ipv4 or ipv6)")


REMEMBERED_HOSTS = 1024
"""How many textual addresses :func:`family_of` and :func:`peer_address
<holepunch.turn.model.peer_address>` remember, so that relaying a datagram does not parse
its peer's address again."""


def family_of(host: str) -> AddressFamily:
    """The family of a textual IP address.

    :raises ValueError: not an IP address.
    """
    return _family_of(host)


@functools.lru_cache(maxsize=REMEMBERED_HOSTS)
def _family_of(host: str) -> AddressFamily:
    return AddressFamily.IPV4 if ip_version(host) == 4 else AddressFamily.IPV6


def own_family(host: str) -> AddressFamily:
    """The family we reach ``host`` over: that of the address, an IPv4-mapped IPv6
    address (``::ffff:192.0.2.1``, from a dual-stack socket) counting as IPv4.

    :raises ValueError: not an IP address.
    """
    return family_of(unmapped(host))


FamilyRequest = Sequence[AddressFamily | str | int] | Literal["auto"] | None
"""What families of relayed address to ask for: some, in order of preference; ``"auto"``
(both, :func:`own_family` first); or None (ask for nothing: the server's default)."""


def resolve_families(request: FamilyRequest, server_host: str) -> tuple[AddressFamily, ...] | None:
    """The families ``request`` asks for when the server is at ``server_host``.

    :raises ValueError: an unknown or repeated family, or an empty list.
    """
    if request is None:
        return None
    if isinstance(request, str):
        if request.strip().lower() != AUTO:
            return parse_families([request])
        try:
            first = own_family(server_host)
        except ValueError:
            first = AddressFamily.IPV4
        return (first, first.other)
    return parse_families(request)


def parse_families(values: Iterable[str | int | AddressFamily]) -> tuple[AddressFamily, ...]:
    """The families asked for, in order of preference, each once (at most two).

    :raises ValueError: an unknown family, a repeated one, or none.
    """
    families: list[AddressFamily] = []
    for value in values:
        family = AddressFamily.parse(value)
        if family in families:
            raise ValueError(f"address family {family.label} given twice")
        families.append(family)
    if not families:
        raise ValueError("no address family given")
    return tuple(families)


@dataclasses.dataclass(frozen=True)
class FamilyRefused:
    """The server did not allocate a relayed address of ``family``: its error ``code``
    (440 Address Family not Supported, 508 Insufficient Capacity, ..., or 0 when it
    just ignored the request) and ``reason``."""

    family: AddressFamily
    code: int
    reason: str

    def __str__(self) -> str:
        why = f"{self.code} {self.reason}" if self.code else self.reason
        return f"no {self.family.label} relayed address: {why}"


# -- encoding ----------------------------------------------------------------------


def encode_family(family: AddressFamily | int) -> bytes:
    """The 4-byte value of REQUESTED- and ADDITIONAL-ADDRESS-FAMILY (family, 3 zero
    bytes)."""
    try:
        return bytes((AddressFamily(family), 0, 0, 0))
    except ValueError:
        raise StunEncodeError(f"unknown address family {family!r}") from None


def decode_family(value: bytes, attr_type: int = REQUESTED_ADDRESS_FAMILY) -> AddressFamily:
    """A REQUESTED- or ADDITIONAL-ADDRESS-FAMILY value.

    :raises StunDecodeError: not 4 bytes, or an unknown family.
    """
    if len(value) != 4:
        raise StunDecodeError(f"attribute 0x{attr_type:04x} must be 4 bytes long, not {len(value)}")
    try:
        return AddressFamily(value[0])
    except ValueError:
        raise StunDecodeError(f"unknown address family 0x{value[0]:02x}") from None


def encode_address_error(family: AddressFamily | int, code: int, reason: str) -> bytes:
    """An ADDRESS-ERROR-CODE value: the family, then ERROR-CODE's layout (class and
    number of ``code``, then the UTF-8 reason phrase)."""
    phrase_length = len(reason.encode("utf-8", "replace"))
    if phrase_length > 763:
        raise StunEncodeError("reason phrase longer than 763 bytes")
    return encode_error_value(code, reason, first=encode_family(family)[0])


def decode_address_error(value: bytes) -> FamilyRefused:
    """An ADDRESS-ERROR-CODE value.

    :raises StunDecodeError: too short, an unknown family, or a code out of 300..699.
    """
    code, reason = decode_error_value(value, "ADDRESS-ERROR-CODE")
    try:
        family = AddressFamily(value[0])
    except ValueError:
        raise StunDecodeError(f"unknown address family 0x{value[0]:02x}") from None
    return FamilyRefused(family, code, reason.rstrip("\x00"))


def add_requested_family(message: StunMessage, family: AddressFamily) -> StunMessage:
    """Append REQUESTED-ADDRESS-FAMILY; returns ``message``."""
    return message.add(REQUESTED_ADDRESS_FAMILY, encode_family(family))


def add_additional_family(message: StunMessage) -> StunMessage:
    """Ask for a dual allocation: ADDITIONAL-ADDRESS-FAMILY IPv6 under RFC 8656's
    codepoint and under coturn's; returns ``message``."""
    value = encode_family(AddressFamily.IPV6)
    return message.add(ADDITIONAL_ADDRESS_FAMILY, value).add(DRAFT_ADDITIONAL_ADDRESS_FAMILY, value)


def get_requested_family(message: StunMessage) -> AddressFamily | None:
    """REQUESTED-ADDRESS-FAMILY, or None.

    :raises StunDecodeError: malformed.
    """
    value = message.get(REQUESTED_ADDRESS_FAMILY)
    return None if value is None else decode_family(value)


def get_additional_family(message: StunMessage) -> AddressFamily | None:
    """ADDITIONAL-ADDRESS-FAMILY (either codepoint), or None.

    :raises StunDecodeError: malformed.
    """
    for attr_type in (ADDITIONAL_ADDRESS_FAMILY, DRAFT_ADDITIONAL_ADDRESS_FAMILY):
        value = message.get(attr_type)
        if value is not None:
            return decode_family(value, attr_type)
    return None


def get_address_errors(message: StunMessage) -> list[FamilyRefused]:
    """Every ADDRESS-ERROR-CODE (either codepoint), one per family.

    :raises StunDecodeError: one is malformed.
    """
    refused: dict[AddressFamily, FamilyRefused] = {}
    for attr_type in (ADDRESS_ERROR_CODE, DRAFT_ADDRESS_ERROR_CODE):
        for value in message.get_all(attr_type):
            error = decode_address_error(value)
            refused.setdefault(error.family, error)
    return list(refused.values())


def get_relayed_addresses(message: StunMessage) -> list[Address]:
    """Every XOR-RELAYED-ADDRESS, in order, without placeholders (an unspecified
    address or port 0, coturn's answer for a refused family) and without repeats.

    :raises StunDecodeError: one is malformed.
    """
    addresses: list[Address] = []
    for attribute in message.attributes:
        if attribute.type != Attr.XOR_RELAYED_ADDRESS:
            continue
        one = dataclasses.replace(message, attributes=[attribute], raw=None)
        address = one.get_address(Attr.XOR_RELAYED_ADDRESS)
        if address is None or address.port == 0:
            continue
        if ipaddress.ip_address(address.host).is_unspecified:
            continue
        if address not in addresses:
            addresses.append(address)
    return addresses


def order_by_preference(
    addresses: Sequence[Address], families: Sequence[AddressFamily]
) -> list[Address]:
    """``addresses`` with those of the preferred families first (``families`` in order),
    the rest after them, each group in its original order."""

    def rank(address: Address) -> int:
        family = family_of(address.host)
        return families.index(family) if family in families else len(families)

    return sorted(addresses, key=rank)


__all__ = [
    "ADDITIONAL_ADDRESS_FAMILY",
    "ADDRESS_ERROR_CODE",
    "AUTO",
    "DRAFT_ADDITIONAL_ADDRESS_FAMILY",
    "DRAFT_ADDRESS_ERROR_CODE",
    "REMEMBERED_HOSTS",
    "REQUESTED_ADDRESS_FAMILY",
    "AddressFamily",
    "FamilyRefused",
    "FamilyRequest",
    "add_additional_family",
    "add_requested_family",
    "decode_address_error",
    "decode_family",
    "encode_address_error",
    "encode_family",
    "family_of",
    "get_additional_family",
    "get_address_errors",
    "get_relayed_addresses",
    "order_by_preference",
    "own_family",
    "parse_families",
    "resolve_families",
]

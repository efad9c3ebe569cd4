# -*- test-case-name: tests.unit.test_stun_credentials -*-
"""
STUN credentials: SASLprep and the keys for MESSAGE-INTEGRITY(-SHA256).

Implements

 - RFC 4013 (SASLprep, the stringprep profile of RFC 3454): mapping (2.1),
   NFKC normalization (2.2), prohibited output (2.3), bidirectional
   characters (2.4, RFC 3454 section 6) and unassigned code points (2.5),
   with the Unicode 3.2 tables of the standard library's ``stringprep`` and
   ``unicodedata.ucd_3_2_0``;
 - RFC 8489 9.1.1 (short-term key), 9.2.2 (long-term key with the MD5 and
   SHA-256 password algorithms of 18.5) and 14.4 (USERHASH).

RFC 8489 asks for the OpaqueString profile of RFC 8265 (PRECIS); SASLprep,
which RFC 5389 used, gives the same result for the passwords seen in
practice and is what the RFC 5769 test vectors were built with.
"""

from __future__ import annotations

import enum
import hashlib
import stringprep
import unicodedata


class PasswordAlgorithm(enum.IntEnum):
    """
    Password algorithms for long-term credentials (RFC 8489 18.5).
    """

    MD5 = 0x0001
    SHA256 = 0x0002


_PROHIBITED = (
    (stringprep.in_table_c12, "non-ASCII space"),
    (stringprep.in_table_c21_c22, "control character"),
    (stringprep.in_table_c3, "private use character"),
    (stringprep.in_table_c4, "non-character code point"),
    (stringprep.in_table_c5, "surrogate code point"),
    (stringprep.in_table_c6, "character inappropriate for plain text"),
    (stringprep.in_table_c7, "character inappropriate for canonical representation"),
    (stringprep.in_table_c8, "change display property or deprecated character"),
    (stringprep.in_table_c9, "tagging character"),
)


def saslprep(value: str, allow_unassigned: bool = True) -> str:
    """
    Prepare ``value`` with the SASLprep profile (RFC 4013).

    :param allow_unassigned: whether code points unassigned in Unicode 3.2
        are let through (RFC 4013 2.5: yes for queries, no for stored
        strings).
    :raise ValueError: the output holds a prohibited character, an
        unassigned code point (when not allowed), or violates the
        bidirectional rules.
    """
    # 2.1 Mapping: "commonly mapped to nothing" characters to nothing, other
    # non-ASCII spaces to SPACE.  U+200B ZERO WIDTH SPACE is in both tables;
    # like other SASLprep implementations, we drop it.
    mapped = []
    for char in value:
        if stringprep.in_table_b1(char):
            continue
        mapped.append(" " if stringprep.in_table_c12(char) else char)
    # 2.2 Normalization: Unicode 3.2 NFKC.
    result = unicodedata.ucd_3_2_0.normalize("NFKC", "".join(mapped))
    # 2.3 Prohibited output, 2.5 unassigned code points.
    for char in result:
        for in_table, what in _PROHIBITED:
            if in_table(char):
                raise ValueError(f"prohibited {what} U+{ord(char):04X}")
        if not allow_unassigned and stringprep.in_table_a1(char):
            raise ValueError(f"unassigned code point U+{ord(char):04X}")
    # 2.4 Bidirectional characters (RFC 3454 section 6).
    if any(stringprep.in_table_d1(char) for char in result):
        if any(stringprep.in_table_d2(char) for char in result):
            raise ValueError("mixes right-to-left and left-to-right characters")
        if not (stringprep.in_table_d1(result[0]) and stringprep.in_table_d1(result[-1])):
            raise ValueError("right-to-left text must start and end with a right-to-left character")
    return result


def short_term_key(password: str) -> bytes:
    """
    The short-term credential key (RFC 8489 9.1.1): the prepared password,
    UTF-8 encoded.
    """
    return saslprep(password).encode("utf-8")


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: PasswordAlgorithm = PasswordAlgorithm.MD5,
) -> bytes:
    """
    The long-term credential key (RFC 8489 9.2.2): the MD5 or SHA-256 of
    ``username ":" realm ":" SASLprep(password)`` in UTF-8.

    :raise ValueError: for an unknown algorithm or a password SASLprep
        rejects.
    """
    text = f"{username}:{realm}:{saslprep(password)}".encode()
    if algorithm == PasswordAlgorithm.MD5:
        return hashlib.md5(text, usedforsecurity=False).digest()
    if algorithm == PasswordAlgorithm.SHA256:
        return hashlib.sha256(text).digest()
    raise ValueError(f"unknown password algorithm {algorithm!r}")


def userhash(username: str, realm: str) -> bytes:
    """
    The USERHASH attribute value (RFC 8489 14.4): SHA-256 of
    ``username ":" realm`` in UTF-8.
    """
    return hashlib.sha256(f"{username}:{realm}".encode()).digest()

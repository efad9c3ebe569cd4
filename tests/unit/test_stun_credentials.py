# -*- test-case-name: tests.unit.test_stun_credentials -*-
"""
Tests for L{holepunch.stun.credentials}: SASLprep (RFC 4013) and the STUN
key derivations (RFC 8489 9.1.1, 9.2.2, 14.4).
"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from holepunch.stun.credentials import (
    PasswordAlgorithm,
    long_term_key,
    saslprep,
    short_term_key,
    userhash,
)

USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
REALM = "example.org"
PASSWORD = "The\u00adM\u00aatr\u2168"


class SASLprepTests(SynchronousTestCase):
    """
    RFC 4013 SASLprep.
    """

    def test_rfc4013Examples(self) -> None:
        """The RFC 4013 section 3 examples that succeed give the documented output."""
        for given_, expected in [
            ("I\u00adX", "IX"),
            ("user", "user"),
            ("USER", "USER"),
            ("\u00aa", "a"),
            ("\u2168", "IX"),
        ]:
            self.assertEqual(saslprep(given_), expected)

    def test_rfc4013ProhibitedExample(self) -> None:
        """RFC 4013 section 3: U+0007 is a prohibited character."""
        error = self.assertRaises(ValueError, saslprep, "\u0007")
        self.assertIn("prohibited", str(error))

    def test_rfc4013BidiExample(self) -> None:
        """RFC 4013 section 3: U+0627 U+0031 fails the bidirectional check."""
        error = self.assertRaises(ValueError, saslprep, "\u0627\u0031")
        self.assertIn("right-to-left", str(error))

    def test_mapping(self) -> None:
        """Non-ASCII spaces become SPACE; 'commonly mapped to nothing' ones (U+200B too) vanish."""
        self.assertEqual(saslprep("a\u00a0b\u3000c"), "a b c")
        self.assertEqual(saslprep("a\u200bb\ufeffc\u180bd"), "abcd")

    def test_normalization(self) -> None:
        """Output is NFKC: compatibility forms and decomposed sequences are folded."""
        self.assertEqual(saslprep("\uff21\ufb01"), "Afi")
        self.assertEqual(saslprep("e\u0301"), "\u00e9")

    def test_prohibited(self) -> None:
        """Each prohibited table (RFC 4013 2.3) is enforced."""
        for char in [
            "\u0000",  # C.2.1 ASCII control
            "\u0085",  # C.2.2 non-ASCII control
            "\ue000",  # C.3 private use
            "\ufdd0",  # C.4 non-character
            "\ud800",  # C.5 surrogate
            "\ufffd",  # C.6 inappropriate for plain text
            "\u2ff0",  # C.7 inappropriate for canonical representation
            "\u200e",  # C.8 change display properties
            "\U000e0001",  # C.9 tagging
        ]:
            self.assertRaises(ValueError, saslprep, "ok" + char)

    def test_unassigned(self) -> None:
        """Unassigned code points pass for queries and fail for stored strings."""
        self.assertEqual(saslprep("\u0221"), "\u0221")
        error = self.assertRaises(ValueError, saslprep, "\u0221", allow_unassigned=False)
        self.assertIn("unassigned", str(error))

    def test_bidi(self) -> None:
        """Right-to-left text must start and end with RandALCat and hold no LCat."""
        self.assertEqual(saslprep("\u0627\u0031\u0628"), "\u0627\u0031\u0628")
        self.assertRaises(ValueError, saslprep, "\u0031\u0627")
        self.assertRaises(ValueError, saslprep, "\u0627a\u0628")

    def test_empty(self) -> None:
        """The empty string prepares to itself."""
        self.assertEqual(saslprep(""), "")

    @settings(max_examples=500, deadline=None)
    @given(st.text(max_size=20))
    def test_anyText(self, value: str) -> None:
        """Any text either prepares to a stable string or raises ValueError."""
        try:
            prepared = saslprep(value)
        except ValueError:
            return
        self.assertEqual(saslprep(prepared), prepared)


class KeyTests(SynchronousTestCase):
    """
    STUN key derivation.
    """

    def test_shortTermKey(self) -> None:
        """The short-term key is the prepared password in UTF-8."""
        self.assertEqual(short_term_key("VOkJxbRl1RmTxUk/WvJxBt"), b"VOkJxbRl1RmTxUk/WvJxBt")
        self.assertEqual(short_term_key("p\u00adw\u2168"), b"pwIX")

    def test_longTermKeyMD5(self) -> None:
        """The RFC 5769 2.4 long-term key is MD5 of user:realm:SASLprep(password)."""
        key = long_term_key(USERNAME, REALM, PASSWORD)
        self.assertEqual(key.hex(), "e8ca7ad59d5eb0518e312911d2dab2a9")
        self.assertEqual(key, long_term_key(USERNAME, REALM, PASSWORD, PasswordAlgorithm.MD5))

    def test_longTermKeySHA256(self) -> None:
        """The SHA-256 long-term key is SHA-256 of the same string."""
        expected = hashlib.sha256(f"{USERNAME}:{REALM}:TheMatrIX".encode()).digest()
        key = long_term_key(USERNAME, REALM, PASSWORD, PasswordAlgorithm.SHA256)
        self.assertEqual(key, expected)
        self.assertEqual(len(key), 32)

    def test_longTermKeyUnknownAlgorithm(self) -> None:
        """An unknown password algorithm raises ValueError."""
        self.assertRaises(ValueError, long_term_key, "u", "r", "p", 3)

    def test_longTermKeyBadPassword(self) -> None:
        """A password SASLprep rejects raises ValueError."""
        self.assertRaises(ValueError, long_term_key, "u", "r", "\u0007")

    def test_userhash(self) -> None:
        """USERHASH is SHA-256 of user:realm (the RFC 8489 vector's value)."""
        self.assertEqual(
            userhash(USERNAME, REALM).hex(),
            "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704",
        )

    def test_passwordAlgorithmNumbers(self) -> None:
        """The password algorithm numbers are the IANA ones (RFC 8489 18.5)."""
        self.assertEqual((PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256), (1, 2))

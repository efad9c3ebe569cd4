"""Peer identities: key pairs, self-signed certificates, RFC 8122 fingerprints."""

import os
import re
import stat

from cryptography.hazmat.primitives import serialization
from twisted.trial import unittest

from holepunch.quic.identity import (
    CERTIFICATE_FILE,
    KEY_FILE,
    Fingerprint,
    IdentityError,
    PeerIdentity,
    parse_fingerprint,
)

FINGERPRINT = re.compile(r"^sha-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}$")


class GenerateTests(unittest.TestCase):
    def test_fingerprint_format(self):
        """The fingerprint is 'sha-256' and 32 upper-case hex pairs joined by colons."""
        identity = PeerIdentity.generate()
        self.assertRegex(identity.fingerprint, FINGERPRINT)

    def test_fingerprint_is_sha256_of_der(self):
        """The fingerprint hashes the DER certificate."""
        import hashlib

        identity = PeerIdentity.generate()
        der = identity.certificate.public_bytes(serialization.Encoding.DER)
        expected = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
        self.assertEqual(identity.fingerprint, "sha-256 " + expected)

    def test_ed25519(self):
        """An Ed25519 identity can be made too."""
        identity = PeerIdentity.generate("ed25519")
        self.assertRegex(identity.fingerprint, FINGERPRINT)

    def test_distinct(self):
        """Two generated identities differ."""
        self.assertNotEqual(
            PeerIdentity.generate().fingerprint, PeerIdentity.generate().fingerprint
        )

    def test_mismatched_key(self):
        """A certificate that does not carry the key's public key is refused."""
        a, b = PeerIdentity.generate(), PeerIdentity.generate()
        self.assertRaises(ValueError, PeerIdentity, a.private_key, b.certificate)


class ParseTests(unittest.TestCase):
    def test_round_trip(self):
        """A fingerprint parses back to the same value, case-insensitively."""
        identity = PeerIdentity.generate()
        parsed = parse_fingerprint(identity.fingerprint.lower().replace("sha-256", "SHA-256"))
        self.assertEqual(str(parsed), identity.fingerprint)
        self.assertTrue(parsed.matches(identity.certificate_der))

    def test_sdp_attribute(self):
        """The whole 'a=fingerprint:' attribute is accepted."""
        identity = PeerIdentity.generate()
        self.assertEqual(
            str(parse_fingerprint("a=fingerprint:" + identity.fingerprint)), identity.fingerprint
        )

    def test_sha512(self):
        """Other RFC 8122 hashes of the SHA-2 family are accepted."""
        identity = PeerIdentity.generate()
        fp = Fingerprint.of(identity.certificate_der, "sha-512")
        self.assertTrue(parse_fingerprint(str(fp)).matches(identity.certificate_der))

    def test_bad_inputs(self):
        """Malformed fingerprints raise ValueError naming the problem."""
        good = PeerIdentity.generate().fingerprint
        cases = {
            "": "a fingerprint is",
            "sha-256": "a fingerprint is",
            "md5 AB:CD": "unsupported fingerprint hash",
            "sha-1 " + ":".join(["AB"] * 20): "unsupported",
            good[:-3]: "has 32 bytes",
            good[:-2] + "ZZ": "malformed byte",
            good.replace(":", "", 1): "malformed byte",
            good + ":": "malformed byte",
        }
        for text, message in cases.items():
            e = self.assertRaises(ValueError, parse_fingerprint, text)
            self.assertIn(message, str(e), text)
        self.assertRaises(ValueError, parse_fingerprint, 42)


class StoreTests(unittest.TestCase):
    def setUp(self):
        self.directory = os.path.join(self.mktemp(), "identity")

    def test_create_then_load(self):
        """load_or_create makes an identity once and loads the same one afterwards."""
        first = PeerIdentity.load_or_create(self.directory)
        second = PeerIdentity.load_or_create(self.directory)
        self.assertEqual(first.fingerprint, second.fingerprint)

    def test_modes(self):
        """The directory is 0700 and the files 0600."""
        PeerIdentity.load_or_create(self.directory)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)
        for name in (KEY_FILE, CERTIFICATE_FILE):
            mode = stat.S_IMODE(os.stat(os.path.join(self.directory, name)).st_mode)
            self.assertEqual(mode, 0o600, name)

    def test_corrupt_key(self):
        """A corrupt key file is an IdentityError naming the file, and is not replaced."""
        PeerIdentity.load_or_create(self.directory)
        path = os.path.join(self.directory, KEY_FILE)
        with open(path, "wb") as f:
            f.write(b"garbage")
        e = self.assertRaises(IdentityError, PeerIdentity.load_or_create, self.directory)
        self.assertIn(path, str(e))
        self.assertIn("corrupt", str(e))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"garbage")

    def test_corrupt_certificate(self):
        """A corrupt certificate is an IdentityError naming the file."""
        PeerIdentity.load_or_create(self.directory)
        path = os.path.join(self.directory, CERTIFICATE_FILE)
        with open(path, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
        e = self.assertRaises(IdentityError, PeerIdentity.load_or_create, self.directory)
        self.assertIn(path, str(e))

    def test_mismatched_files(self):
        """A certificate from another identity is an IdentityError."""
        PeerIdentity.load_or_create(self.directory)
        other = os.path.join(self.mktemp(), "other")
        PeerIdentity.load_or_create(other)
        os.replace(
            os.path.join(other, CERTIFICATE_FILE), os.path.join(self.directory, CERTIFICATE_FILE)
        )
        e = self.assertRaises(IdentityError, PeerIdentity.load_or_create, self.directory)
        self.assertIn("does not match", str(e))

    def test_incomplete(self):
        """A directory with only one of the files is an IdentityError."""
        PeerIdentity.load_or_create(self.directory)
        os.remove(os.path.join(self.directory, CERTIFICATE_FILE))
        e = self.assertRaises(IdentityError, PeerIdentity.load_or_create, self.directory)
        self.assertIn("missing", str(e))

    def test_unreadable(self):
        """An unreadable key file is an IdentityError (skipped as root)."""
        if os.geteuid() == 0:
            raise unittest.SkipTest("root reads any file")
        PeerIdentity.load_or_create(self.directory)
        os.chmod(os.path.join(self.directory, KEY_FILE), 0)
        self.assertRaises(IdentityError, PeerIdentity.load_or_create, self.directory)

# -*- test-case-name: tests.unit.test_quic_identity -*-
"""A peer's identity for QUIC: a key pair, a self-signed certificate, its fingerprint.

Peers do not use certificate authorities. Each peer has a key pair and a self-signed
X.509 certificate; what names the peer is the certificate's fingerprint, a hash of its
DER encoding, written as SDP's ``a=fingerprint`` value (RFC 8122 section 5)::

    sha-256 AB:CD:...:EF

The fingerprint travels in the offer/answer, as WebRTC sends its DTLS fingerprint, and
the QUIC handshake (:mod:`holepunch.quic.session`) checks the certificate the peer
presents against it.

Keys are ECDSA P-256 by default (what WebRTC uses, and what aioquic signs TLS 1.3
CertificateVerify with as ``ecdsa_secp256r1_sha256``); Ed25519 works too (aioquic
offers ``ed25519`` when the cryptography backend supports it).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

KeyKind = Literal["ec", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

#: Hash functions accepted in a fingerprint (RFC 8122 lists these and weaker ones; MD5
#: and SHA-1 are refused).
HASHES: dict[str, str] = {"sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512"}

KEY_FILE = "identity.key"
CERTIFICATE_FILE = "identity.crt"

_HEX_PAIR = re.compile(r"^[0-9A-Fa-f]{2}$")


class IdentityError(Exception):
    """An identity could not be loaded or stored (the message names the file)."""


@dataclass(frozen=True)
class Fingerprint:
    """A certificate fingerprint: hash function name (``sha-256``) and digest bytes."""

    algorithm: str
    digest: bytes

    def __str__(self) -> str:
        return f"{self.algorithm} " + ":".join(f"{b:02X}" for b in self.digest)

    @classmethod
    def of(cls, certificate_der: bytes, algorithm: str = "sha-256") -> Fingerprint:
        """The fingerprint of a DER-encoded certificate."""
        if algorithm not in HASHES:
            raise ValueError(f"unsupported fingerprint hash {algorithm!r}")
        return cls(algorithm, hashlib.new(HASHES[algorithm], certificate_der).digest())

    def matches(self, certificate_der: bytes) -> bool:
        """Whether a DER-encoded certificate has this fingerprint."""
        return Fingerprint.of(certificate_der, self.algorithm) == self


def parse_fingerprint(value: str | Fingerprint) -> Fingerprint:
    """Parse an ``a=fingerprint`` value (``"sha-256 AB:CD:..."``, RFC 8122 section 5).

    The hash name is case-insensitive; so are the hex digits. Raises ``ValueError``
    saying what is wrong: an unknown or weak hash, a malformed byte, a wrong length.
    """
    if isinstance(value, Fingerprint):
        return value
    if not isinstance(value, str):
        raise ValueError(f"a fingerprint is a string, not {type(value).__name__}")
    text = value.strip()
    if text.lower().startswith("a=fingerprint:"):
        text = text[len("a=fingerprint:") :]
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"a fingerprint is '<hash> <hex pairs joined by colons>', got {value!r}")
    algorithm, hex_digest = parts[0].lower(), parts[1]
    if algorithm not in HASHES:
        raise ValueError(
            f"unsupported fingerprint hash {parts[0]!r} (use one of {', '.join(HASHES)})"
        )
    pairs = hex_digest.split(":")
    for pair in pairs:
        if not _HEX_PAIR.match(pair):
            raise ValueError(f"malformed byte {pair!r} in fingerprint {value!r}")
    digest = bytes(int(pair, 16) for pair in pairs)
    expected = hashlib.new(HASHES[algorithm]).digest_size
    if len(digest) != expected:
        raise ValueError(
            f"a {algorithm} fingerprint has {expected} bytes, got {len(digest)} in {value!r}"
        )
    return Fingerprint(algorithm, digest)


class PeerIdentity:
    """A key pair and the self-signed certificate that carries its public key."""

    def __init__(self, private_key: PrivateKey, certificate: x509.Certificate) -> None:
        if not _same_public_key(private_key, certificate):
            raise ValueError("the certificate does not carry this key's public key")
        self.private_key = private_key
        self.certificate = certificate
        self.certificate_der = certificate.public_bytes(serialization.Encoding.DER)
        self.fingerprint_value = Fingerprint.of(self.certificate_der)

    def __repr__(self) -> str:
        return f"<PeerIdentity {self.fingerprint}>"

    @property
    def fingerprint(self) -> str:
        """The certificate's SHA-256 fingerprint, as SDP's ``a=fingerprint`` value."""
        return str(self.fingerprint_value)

    @classmethod
    def generate(
        cls,
        kind: KeyKind = "ec",
        common_name: str = "holepunch",
        valid_days: int = 3650,
        now: datetime.datetime | None = None,
    ) -> PeerIdentity:
        """A new key pair (``"ec"``: P-256, or ``"ed25519"``) and self-signed certificate.

        Peers pin the fingerprint, not a chain of trust, so the long validity does no
        harm; aioquic is run without certificate-date checks.
        """
        key: PrivateKey
        if kind == "ec":
            key = ec.generate_private_key(ec.SECP256R1())
        elif kind == "ed25519":
            key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(f"unknown key kind {kind!r} (use 'ec' or 'ed25519')")
        if now is None:
            now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=valid_days))
        )
        algorithm = hashes.SHA256() if isinstance(key, ec.EllipticCurvePrivateKey) else None
        return cls(key, builder.sign(key, algorithm))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PeerIdentity:
        """Load the identity stored in ``directory``; :class:`IdentityError` if it can't."""
        folder = Path(directory)
        key_path, cert_path = folder / KEY_FILE, folder / CERTIFICATE_FILE
        try:
            key_pem = key_path.read_bytes()
        except OSError as e:
            raise IdentityError(f"cannot read identity key {key_path}: {e.strerror}") from e
        try:
            cert_pem = cert_path.read_bytes()
        except OSError as e:
            raise IdentityError(f"cannot read certificate {cert_path}: {e.strerror}") from e
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as e:
            raise IdentityError(f"identity key {key_path} is corrupt: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise IdentityError(f"identity key {key_path} is neither EC nor Ed25519")
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as e:
            raise IdentityError(f"certificate {cert_path} is corrupt: {e}") from e
        try:
            return cls(key, certificate)
        except ValueError as e:
            raise IdentityError(f"{cert_path} does not match {key_path}: {e}") from e

    @classmethod
    def load_or_create(
        cls, directory: str | os.PathLike[str], kind: KeyKind = "ec"
    ) -> PeerIdentity:
        """The identity stored in ``directory``, made and stored there if there is none.

        The directory is created mode 0700, the files 0600. A directory holding only one
        of the two files, or an unreadable or corrupt one, is an :class:`IdentityError`
        (never silently replaced: the peer's fingerprint may be pinned elsewhere).
        """
        folder = Path(directory)
        key_path, cert_path = folder / KEY_FILE, folder / CERTIFICATE_FILE
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if stat.S_IMODE(folder.stat().st_mode) & 0o077:
                folder.chmod(0o700)
        except OSError as e:
            raise IdentityError(f"cannot use identity directory {folder}: {e.strerror}") from e
        have_key, have_cert = key_path.exists(), cert_path.exists()
        if have_key or have_cert:
            if not (have_key and have_cert):
                missing = cert_path if have_key else key_path
                raise IdentityError(f"identity in {folder} is incomplete: {missing} is missing")
            return cls.load(folder)
        identity = cls.generate(kind)
        identity.save(folder)
        return identity

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the key and certificate (PEM, mode 0600) into ``directory``; never
        overwrites existing files."""
        folder = Path(directory)
        key_pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        for path, data in ((folder / KEY_FILE, key_pem), (folder / CERTIFICATE_FILE, cert_pem)):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except OSError as e:
                raise IdentityError(f"cannot write {path}: {e.strerror}") from e


def _same_public_key(private_key: PrivateKey, certificate: x509.Certificate) -> bool:
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(
        private_key.public_key().public_bytes(der, raw)
        == certificate.public_key().public_bytes(der, raw)
    )

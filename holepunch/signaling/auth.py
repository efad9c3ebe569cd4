# -*- test-case-name: tests.unit.test_signaling_model -*-
"""Signed access tokens for the signaling server (HMAC-SHA256, RFC 2104 / RFC 6234).

A token names one peer id and an expiry time and is signed with the server's secret::

    hp1.<base64url(peer id)>.<expiry, integer seconds since the epoch>.<base64url(mac)>

where ``mac = HMAC-SHA256(secret, "hp1.<base64url(peer id)>.<expiry>")``. Tokens are
URL-safe, so a browser can pass one in the query string (``ws://host:8080/?token=...``);
native clients send ``Authorization: Bearer <token>``. The server checks the token at
the WebSocket handshake, lets the connection register only that peer id, and closes the
connection when the token expires unless a ``renew`` message brought a fresh one.

Pure functions: the current time is an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TOKEN_VERSION = "hp1"


class InvalidToken(Exception):
    """The token is missing, malformed, forged or expired; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the auth secret must not be empty")
    return key


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed: str) -> bytes:
    return hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest()


def mint_token(secret: str | bytes, peer_id: str, ttl: float, now: float) -> str:
    """A token for ``peer_id`` valid until ``now + ttl`` seconds."""
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    if not peer_id:
        raise ValueError("peer id must not be empty")
    expiry = math.ceil(now + ttl)
    signed = f"{TOKEN_VERSION}.{_b64encode(peer_id.encode('utf-8'))}.{expiry}"
    return f"{signed}.{_b64encode(_mac(_key(secret), signed))}"


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a valid token grants: one peer id until ``expires`` (seconds since the epoch)."""

    peer_id: str
    expires: float


def verify_token(secret: str | bytes, token: str, now: float) -> str:
    """Check ``token`` and return the peer id it grants, or raise :class:`InvalidToken`.

    The MAC is compared in constant time, and before anything else in the token is
    trusted.
    """
    return check_token(secret, token, now).peer_id


def check_token(secret: str | bytes, token: str, now: float) -> TokenGrant:
    """Like :func:`verify_token`, and also says until when the token is valid."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != TOKEN_VERSION:
        raise InvalidToken("malformed token")
    version, peer_b64, expiry_text, mac_b64 = parts
    try:
        mac = _b64decode(mac_b64)
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token") from None
    if _b64encode(mac) != mac_b64:
        # Unused low bits of the last character would give one MAC several spellings.
        raise InvalidToken("malformed token")
    expected = _mac(_key(secret), f"{version}.{peer_b64}.{expiry_text}")
    if not hmac.compare_digest(mac, expected):
        raise InvalidToken("bad token signature")
    try:
        expiry = int(expiry_text)
        peer_id = _b64decode(peer_b64).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token") from None
    if now >= expiry:
        raise InvalidToken("token expired")
    return TokenGrant(peer_id, float(expiry))


def token_from_request(
    params: Mapping[str, Sequence[str]], headers: Mapping[str, str]
) -> str | None:
    """The token of a WebSocket handshake: ``?token=`` or ``Authorization: Bearer``.

    ``headers`` has lower-case names (as Autobahn's ``ConnectionRequest.headers``).
    """
    values = params.get("token")
    if values:
        return values[0]
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None

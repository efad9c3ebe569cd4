# -*- test-case-name: tests.unit.test_quic_session -*-
"""Encrypted, peer-authenticated, reliable streams over any datagram path (QUIC).

:mod:`holepunch.quic.identity` holds a peer's key pair and self-signed certificate and
its RFC 8122 fingerprint; :mod:`holepunch.quic.session` drives one aioquic
``QuicConnection`` from Twisted over any ``send(bytes)`` path and pins the peer's
certificate to the fingerprint it signaled; :mod:`holepunch.quic.demux` tells QUIC
packets from STUN and TURN ChannelData by their first byte (RFC 7983, RFC 9443).
See ``docs/quic.md``.
"""

from holepunch.quic.demux import classify
from holepunch.quic.identity import Fingerprint, IdentityError, PeerIdentity, parse_fingerprint
from holepunch.quic.session import (
    PeerAuthenticationError,
    QuicOptions,
    QuicSession,
    SessionClosed,
    session_over_channel,
)

__all__ = [
    "Fingerprint",
    "IdentityError",
    "PeerAuthenticationError",
    "PeerIdentity",
    "QuicOptions",
    "QuicSession",
    "SessionClosed",
    "classify",
    "parse_fingerprint",
    "session_over_channel",
]

# -*- test-case-name: tests.unit.test_quic_demux -*-
"""Tell QUIC packets from STUN and TURN ChannelData by their first byte.

One UDP socket carries STUN (checks, consent, TURN control), TURN ChannelData and QUIC.
RFC 7983 section 7 and RFC 9443 section 2 (which updates it for QUIC) divide the first
byte's range::

    0..3      STUN (RFC 8489: the two top bits of a STUN message are zero)
    20..63    DTLS (not used here: "unknown")
    64..79    TURN ChannelData (channel numbers 0x4000..0x4FFF)   } overlap
    64..127   QUIC short header (fixed bit set, long-header bit clear)  }
    128..255  QUIC long header

ChannelData and QUIC short-header packets overlap in 64..79: a first byte alone cannot
tell them apart. RFC 9443 section 2 resolves it by the packet's source: ChannelData
only ever comes from a TURN server the endpoint allocated on, and QUIC from a peer.
So the caller must do this, in this order:

1. A datagram whose source is one of our TURN servers (a relay's 5-tuple) and whose
   first byte is 64..79 is ChannelData; unwrap it (the inner payload is then classified
   again, as coming from the peer).
2. Otherwise call :func:`classify` on the first byte: for a datagram from anywhere
   else, 64..79 is QUIC. :func:`classify` answers ``"channel-data"`` only when told
   the source is a TURN server (``from_turn_server=True``).

Datagrams classified ``"unknown"`` (and empty ones) are dropped and counted.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["stun", "channel-data", "quic", "unknown"]


def classify(first_byte: int | bytes, from_turn_server: bool = False) -> Kind:
    """What a datagram is, from its first byte (RFC 7983 section 7, RFC 9443 section 2).

    ``first_byte`` is the byte's value, or the datagram itself (empty is
    ``"unknown"``). ``from_turn_server`` says the datagram came from a TURN server we
    allocated on; only then is 64..79 ChannelData rather than a QUIC short header.
    """
    if isinstance(first_byte, bytes | bytearray | memoryview):
        if not first_byte:
            return "unknown"
        value = first_byte[0]
    else:
        value = first_byte
    if not 0 <= value <= 255:
        raise ValueError(f"a byte is 0..255, got {value}")
    if value <= 3:
        return "stun"
    if 64 <= value <= 79 and from_turn_server:
        return "channel-data"
    if value >= 64:
        return "quic"
    return "unknown"

# -*- test-case-name: tests -*-
"""holepunch: NAT traversal for Twisted.

STUN (RFC 8489) and NAT behaviour discovery (RFC 5780), ICE (RFC 8445) hole punching,
TURN (RFC 8656) relaying, and a WebSocket signaling server with rooms.
"""

__version__ = "0.1.0.dev0"

# -*- test-case-name: tests -*-
"""holepunch: NAT traversal for Twisted.

STUN (RFC 8489) and NAT behaviour discovery (RFC 5780), ICE (RFC 8445) hole punching,
TURN (RFC 8656) relaying, and a WebSocket signaling server with rooms.
"""

from typing import TYPE_CHECKING

from holepunch.version import __version__

if TYPE_CHECKING:
    from holepunch.coordinator import P2PCoordinator

__all__ = ["P2PCoordinator", "__version__"]


def __getattr__(name: str) -> object:
    # Imported on first use, so `import holepunch` stays light (no Twisted services).
    if name == "P2PCoordinator":
        from holepunch.coordinator import P2PCoordinator

        return P2PCoordinator
    raise AttributeError(f"module 'holepunch' has no attribute {name!r}")

"""twistd plugin: ``twistd holepunch`` runs the signaling, STUN and HTTP daemon."""

from twisted.application.service import ServiceMaker

holepunch = ServiceMaker(
    "holepunch",
    "holepunch.daemon.tap",
    "NAT traversal daemon: WebSocket signaling, STUN (RFC 5780), health and metrics",
    "holepunch",
)

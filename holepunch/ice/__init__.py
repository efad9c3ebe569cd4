"""ICE (RFC 8445): candidates, connectivity checks, nomination, the peer connection."""

# -*- test-case-name: tests.test_signaling_client -*-
"""Small fixes to Autobahn's Twisted protocols shared by our server and client."""

from __future__ import annotations

from typing import Any


def cancel_close_timer(protocol: Any) -> None:
    """Cancel Autobahn's closing-handshake timer once the connection is lost.

    Autobahn leaves that timer running when the TCP connection goes before the peer's
    close frame arrives; it would outlive the connection (and dirty trial's reactor).
    """
    call = getattr(protocol, "closeHandshakeTimeoutCall", None)
    if call is not None:
        protocol.closeHandshakeTimeoutCall = None
        call.cancel()

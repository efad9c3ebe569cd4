# -*- test-case-name: tests.unit.test_quic_session -*-
"""The few places where holepunch reaches into aioquic beyond its documented API.

aioquic's TLS stack implements client certificates (the server's CertificateRequest,
the client's Certificate and CertificateVerify, the server checking the client's
signature over the handshake transcript), but ``QuicConnection`` offers no option to
turn the request on, nor an accessor for the peer's certificate. Stream send buffers
and the closing state are not public either. Everything that depends on those
internals is in this one module, and :func:`check_aioquic` fails loudly (at session
creation) if an aioquic release renames them; the unit tests pin each of them.
"""

from __future__ import annotations

from typing import Any

from aioquic import tls
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import END_STATES, QuicConnection
from cryptography.hazmat.primitives.serialization import Encoding


class AioquicIncompatible(RuntimeError):
    """This aioquic lacks an internal that peer authentication or flow control needs."""


def check_aioquic() -> None:
    """Raise :class:`AioquicIncompatible` unless this aioquic has what we rely on."""
    context = tls.Context(is_client=False)
    missing = [
        name
        for name in ("_request_client_certificate", "_peer_certificate")
        if not hasattr(context, name)
    ]
    if not hasattr(QuicConnection, "_initialize"):
        missing.append("QuicConnection._initialize")
    if missing:
        raise AioquicIncompatible(
            "this aioquic release lacks " + ", ".join(missing) + "; holepunch.quic is "
            "tested with aioquic 1.7"
        )


_INSTANCE_INTERNALS = ("_streams", "_datagrams_pending", "_state", "_close_event", "_is_client")


class PinnedQuicConnection(QuicConnection):
    """A ``QuicConnection`` whose server side asks the client for its certificate."""

    def __init__(self, configuration: QuicConfiguration, **kwargs: Any) -> None:
        super().__init__(configuration=configuration, **kwargs)
        missing = [name for name in _INSTANCE_INTERNALS if not hasattr(self, name)]
        if missing:
            raise AioquicIncompatible(
                "this aioquic's QuicConnection lacks "
                + ", ".join(missing)
                + "; holepunch.quic is tested with aioquic 1.7"
            )

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client:
            # TLS 1.3 CertificateRequest (RFC 8446 section 4.3.2): aioquic's server
            # then requires the client's Certificate and checks its CertificateVerify.
            self.tls._request_client_certificate = True

    def peer_certificate_der(self) -> bytes | None:
        """The certificate the peer presented in the handshake (DER), if any."""
        certificate = getattr(self.tls, "_peer_certificate", None) if self._has_tls() else None
        return None if certificate is None else certificate.public_bytes(Encoding.DER)

    def _has_tls(self) -> bool:
        return hasattr(self, "tls")

    def stream_send_backlog(self, stream_id: int) -> int:
        """Bytes written on a stream and not yet acknowledged by the peer."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def datagrams_pending(self) -> int:
        """DATAGRAM frames queued and not yet sent (congestion-limited)."""
        return len(self._datagrams_pending)

    def termination(self) -> events.ConnectionTerminated | None:
        """Why the connection is closing, once it is (either side), else None."""
        if self._state in END_STATES:
            return self._close_event
        return None

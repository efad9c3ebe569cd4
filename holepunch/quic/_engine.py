# -*- test-case-name: tests.unit.test_quic_session -*-
"""The few places where holepunch reaches into aioquic beyond its documented API.

aioquic's TLS stack implements client certificates (the server's CertificateRequest,
the client's Certificate and CertificateVerify, the server checking the client's
signature over the handshake transcript), but ``QuicConnection`` offers no option to
turn the request on, nor an accessor for the peer's certificate. Its rule for stream
flow-control credit (double the limit once half has arrived) ignores whether the
application read anything, and has no hook. Stream send buffers, queued datagrams and
the closing state are not public either. Everything that depends on those
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
    for method in ("_initialize", "_payload_received"):
        if not hasattr(QuicConnection, method):
            missing.append(f"QuicConnection.{method}")
    if missing:
        raise AioquicIncompatible(
            "this aioquic release lacks " + ", ".join(missing) + "; holepunch.quic is "
            "tested with aioquic 1.7"
        )


_INSTANCE_INTERNALS = ("_streams", "_datagrams_pending", "_state", "_close_event", "_is_client")


class PinnedQuicConnection(QuicConnection):
    """A ``QuicConnection`` whose server side asks the client for its certificate, and
    whose streams can be given application-driven receive windows."""

    def __init__(self, configuration: QuicConfiguration, **kwargs: Any) -> None:
        super().__init__(configuration=configuration, **kwargs)
        missing = [name for name in _INSTANCE_INTERNALS if not hasattr(self, name)]
        if missing:
            raise AioquicIncompatible(
                "this aioquic's QuicConnection lacks "
                + ", ".join(missing)
                + "; holepunch.quic is tested with aioquic 1.7"
            )
        # stream id -> [window, bytes the application consumed]
        self._receive_windows: dict[int, list[int]] = {}
        self.packets_authenticated = 0
        """Packets that decrypted and authenticated (and were not duplicates): a
        datagram that adds none was forged, corrupt, replayed or for old keys."""

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client:
            # TLS 1.3 CertificateRequest (RFC 8446 section 4.3.2): aioquic's server
            # then requires the client's Certificate and checks its CertificateVerify.
            self.tls._request_client_certificate = True

    def _payload_received(self, context: Any, plain: bytes, *args: Any, **kwargs: Any) -> Any:
        # aioquic calls this once per packet that passed AEAD and the duplicate check.
        self.packets_authenticated += 1
        return super()._payload_received(context, plain, *args, **kwargs)

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

    def stream_send_done(self, stream_id: int) -> bool:
        """Every byte written on a stream and its FIN are acknowledged by the peer (or
        aioquic already discarded the finished stream)."""
        stream = self._streams.get(stream_id)
        return stream is None or bool(stream.sender.is_finished)

    def limit_receive_window(self, stream_id: int, window: int) -> None:
        """Grant the peer credit (MAX_STREAM_DATA) only up to ``window`` bytes beyond what
        the application consumed on this stream (see :meth:`consumed`).

        aioquic's own rule doubles a stream's limit whenever half of it has *arrived*,
        whether or not anyone read it; with this, a reader that stops reading stops
        the sender after at most ``window`` (or the initial ``max_stream_data``) bytes.
        """
        self._receive_windows[stream_id] = [window, 0]

    def consumed(self, stream_id: int, nbytes: int) -> None:
        """The application took ``nbytes`` more of the stream."""
        entry = self._receive_windows.get(stream_id)
        if entry is not None:
            entry[1] += nbytes

    def forget_receive_window(self, stream_id: int) -> None:
        """Stop managing the stream's window."""
        self._receive_windows.pop(stream_id, None)

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        entry = self._receive_windows.get(stream.stream_id)
        if entry is None or not stream.max_stream_data_local:
            super()._write_stream_limits(builder, space, stream)
            return
        window, consumed = entry
        target = consumed + window
        # Batch updates: raise the limit once a quarter window was consumed.
        if target - stream.max_stream_data_local >= window // 4:
            stream.max_stream_data_local = target
        # aioquic's method doubles the limit when highest_offset * 2 exceeds it; hide
        # the offset so that it only sends the MAX_STREAM_DATA frame we decided on.
        receiver = stream.receiver
        highest = receiver.highest_offset
        receiver.highest_offset = 0
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = highest

    def datagrams_pending(self) -> int:
        """DATAGRAM frames queued and not yet sent (congestion-limited)."""
        return len(self._datagrams_pending)

    def termination(self) -> events.ConnectionTerminated | None:
        """Why the connection is closing, once it is (either side), else None."""
        if self._state in END_STATES:
            return self._close_event
        return None

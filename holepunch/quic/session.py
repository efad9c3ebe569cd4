# -*- test-case-name: tests.unit.test_quic_session -*-
"""A QUIC connection (RFC 9000, RFC 9001) to one peer, over any datagram path.

:class:`QuicSession` is a thin Twisted driver for one aioquic ``QuicConnection``, the
sans-I/O core: datagrams from the path go in through :meth:`QuicSession.datagram_received`,
what aioquic wants sent goes out through the ``send(bytes)`` function the session was
given, and one ``callLater`` is re-armed to aioquic's ``get_timer()`` after every input.
Output is batched: inputs in one reactor turn (a burst of datagrams read by one
``doRead``, many stream writes) are followed by one ``datagrams_to_send()`` in the next
turn (``callLater(0)``), so acknowledgements and small writes coalesce.

**The path may change.** aioquic is always told the same constant, fictitious peer
address (:data:`PEER_ADDRESS`), whatever carries the datagrams: the ICE agent may move
the connection between candidate pairs, or from a TURN relay to a direct pair, and the
QUIC connection neither sees nor cares (no QUIC path validation or migration runs;
ICE's connectivity checks and consent already validate every path). Streams survive
a path change; packets lost while the path switches are retransmitted by QUIC.

**Mutual authentication by certificate fingerprint.** Each peer has a
:class:`PeerIdentity <holepunch.quic.identity.PeerIdentity>` (a key pair and a self-signed
certificate) and learns the other's fingerprint from signaling (offer/answer), as
WebRTC does with DTLS. TLS certificate-authority checks are off; instead:

- The server presents its certificate and signs the handshake transcript with its key
  (TLS 1.3 CertificateVerify); aioquic checks that signature. When the handshake
  completes, the client compares the certificate's fingerprint with the one signaled.
- The server sends a TLS 1.3 CertificateRequest (RFC 8446 section 4.3.2). aioquic's
  TLS implements client certificates fully (the client's Certificate and
  CertificateVerify over the transcript, which the server checks), though
  ``QuicConnection`` exposes no switch for it; :mod:`holepunch.quic._engine` turns it
  on. So the client too proves possession of the key of the certificate it presents,
  and the server compares that certificate's fingerprint with the signaled one. A
  client that sends no certificate fails the same way.

On a mismatch (or no certificate) the session closes the QUIC connection at once with
:class:`PeerAuthenticationError` naming the expected and the presented fingerprint.
Until the peer is authenticated, no stream or datagram event reaches the application
(aioquic cannot decrypt 1-RTT data before the handshake's Finished, and the session
holds back any event until its check passed), so a wrong peer never delivers a byte.

Garbage never raises. Datagrams that are not QUIC by their first byte (RFC 9443) are
dropped and counted (``stats.dropped_not_quic``), as are a server's unusable first
packets and anything aioquic raises on (``stats.dropped_refused``). Packets that look
like QUIC but fail decryption are dropped by aioquic itself, which does not report
them (its ``quic_logger`` can).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType, pull_quic_header
from twisted.internet import defer, interfaces
from twisted.logger import Logger
from twisted.python.failure import Failure

from holepunch.quic._engine import PinnedQuicConnection, check_aioquic
from holepunch.quic.demux import classify
from holepunch.quic.identity import Fingerprint, PeerIdentity, parse_fingerprint
from holepunch.quic.streams import STREAM_REFUSED, QuicStreamAddress, QuicStreamTransport

if TYPE_CHECKING:
    from holepunch.ice.connection import Channel

_log = Logger()

#: The peer address aioquic always sees (RFC 5737 TEST-NET-1): the real path is below.
PEER_ADDRESS = ("192.0.2.1", 4433)
#: ALPN protocol id of holepunch's QUIC streams.
ALPN = "holepunch/1"
#: Error code of a :class:`PeerAuthenticationError` (a TLS ``bad_certificate`` alert
#: as a QUIC CRYPTO_ERROR, RFC 9001 section 4.8).
BAD_CERTIFICATE_ALERT = 42
AUTHENTICATION_FAILED = QuicErrorCode.CRYPTO_ERROR + BAD_CERTIFICATE_ALERT
#: Bytes a QUIC short-header packet spends around a DATAGRAM frame's payload (header
#: with an 8-byte connection id and 4-byte packet number, frame type and length, AEAD tag).
DATAGRAM_OVERHEAD = 1 + 8 + 4 + 1 + 2 + 16

DatagramHandler = Callable[[bytes], None]
CloseHandler = Callable[[Exception], None]


class SessionClosed(Exception):
    """The QUIC connection ended; ``reason`` says why, ``by_peer`` who ended it."""

    def __init__(self, reason: str, by_peer: bool = False, error_code: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.by_peer = by_peer
        self.error_code = error_code


class PeerAuthenticationError(SessionClosed):
    """The peer's certificate does not have the fingerprint that was signaled."""

    def __init__(self, expected: str, got: str | None) -> None:
        presented = got if got is not None else "no certificate"
        super().__init__(
            f"peer authentication failed: expected fingerprint {expected}, got {presented}",
            error_code=AUTHENTICATION_FAILED,
        )
        self.expected = expected
        self.got = got


@dataclass
class QuicOptions:
    """Tunables of a :class:`QuicSession`.

    ``keepalive`` (seconds, or None for none) sends a QUIC PING that often, so an
    idle but healthy connection does not reach ``idle_timeout``
    (aioquic sends none of its own). ``max_datagram_size`` is the UDP payload QUIC
    fills: 1200 by default, the QUIC minimum, which still fits through a TURN relay
    (ChannelData's 4 bytes, or a Send indication's ~36) on a 1280-byte IPv6 path.
    """

    idle_timeout: float = 30.0
    keepalive: float | None = 10.0
    connect_timeout: float = 15.0
    max_datagram_size: int = 1200
    max_data: int = 1 << 20
    max_stream_data: int = 1 << 20
    max_datagram_frame_size: int = 65536
    send_buffer_high: int = 1 << 20
    send_buffer_low: int = 256 << 10
    stream_receive_window: int = 2 << 20
    receive_buffer_limit: int = 8 << 20
    datagram_backlog: int = 256
    datagram_send_queue: int = 256
    alpn: str = ALPN
    congestion_control: str = "reno"
    peer_id: str | None = None


@dataclass
class SessionStats:
    """Counters of a :class:`QuicSession`."""

    datagrams_received: int = 0
    datagrams_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    dropped_not_quic: int = 0
    dropped_refused: int = 0
    dropped_unauthenticated: int = 0
    """QUIC-looking datagrams none of whose packets authenticated: forged (say, sent
    with the peer's address by a third party), corrupted, replayed or stale. They never
    reach a stream or a datagram handler."""
    send_errors: int = 0
    streams_refused: int = 0
    keepalives_sent: int = 0
    datagrams_dropped_queue_full: int = 0


class QuicSession:
    """One QUIC connection to one peer, over whatever ``send`` writes to.

    ``reactor`` provides ``IReactorTime``; ``send(data)`` writes one datagram on the path
    to the peer; ``is_client`` picks the QUIC role (the ICE controlling agent, say);
    ``identity`` is ours; ``peer_fingerprint`` (``"sha-256 AB:..."``) is the peer's, from
    signaling. A client starts the handshake at once. See the module docstring.
    """

    def __init__(
        self,
        reactor: interfaces.IReactorTime,
        send: Callable[[bytes], None],
        is_client: bool,
        identity: PeerIdentity,
        peer_fingerprint: str | Fingerprint,
        options: QuicOptions | None = None,
    ) -> None:
        check_aioquic()
        self._reactor = reactor
        self._send = send
        self.is_client = is_client
        self.identity = identity
        self.expected_fingerprint = parse_fingerprint(peer_fingerprint)
        self.options = options or QuicOptions()
        self.stats = SessionStats()
        self.peer_fingerprint: str | None = None
        self.authenticated = False
        self.closed: SessionClosed | None = None
        self._configuration = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[self.options.alpn],
            idle_timeout=self.options.idle_timeout,
            max_datagram_size=self.options.max_datagram_size,
            max_data=self.options.max_data,
            max_stream_data=self.options.max_stream_data,
            max_datagram_frame_size=self.options.max_datagram_frame_size,
            congestion_control_algorithm=self.options.congestion_control,
            certificate=identity.certificate,
            private_key=identity.private_key,
            verify_mode=ssl.CERT_NONE,  # no CA checks: the fingerprint is pinned instead
            server_name=None,
        )
        self._quic: PinnedQuicConnection | None = None
        self._timer: interfaces.IDelayedCall | None = None
        self._flush: interfaces.IDelayedCall | None = None
        self._keepalive: interfaces.IDelayedCall | None = None
        self._pending: list[events.QuicEvent] = []
        self._streams: dict[int, QuicStreamTransport] = {}
        self._finished_streams: set[int] = set()
        self._stream_factory: interfaces.IProtocolFactory | None = None
        self._close_when_idle: str | None = None
        self._datagram_handlers: list[DatagramHandler] = []
        self._datagram_backlog: list[bytes] = []
        self._close_observers: list[CloseHandler] = []
        self._connected_waiters: list[defer.Deferred[QuicSession]] = []
        self._closed_waiters: list[defer.Deferred[SessionClosed]] = []
        self._ack_waiters: dict[int, list[defer.Deferred[None]]] = {}
        self._connect_deadline: interfaces.IDelayedCall | None = reactor.callLater(
            self.options.connect_timeout, self._connect_timed_out
        )
        if is_client:
            self._quic = PinnedQuicConnection(self._configuration)
            self._quic.connect(PEER_ADDRESS, now=reactor.seconds())
            self._schedule_flush()

    def __repr__(self) -> str:
        role = "client" if self.is_client else "server"
        state = (
            f"closed: {self.closed.reason}"
            if self.closed
            else "connected"
            if self.authenticated
            else "handshaking"
        )
        return f"<QuicSession {role} to {self.expected_fingerprint} {state}>"

    # --- the path ---------------------------------------------------------------

    def datagram_received(self, data: bytes) -> None:
        """A datagram from the peer, whichever path it came by."""
        if self.closed is not None:
            return
        self.stats.datagrams_received += 1
        self.stats.bytes_received += len(data)
        if classify(data) != "quic":
            self.stats.dropped_not_quic += 1
            return
        now = self._reactor.seconds()
        try:
            if self._quic is None and not self._accept_first(data):
                self.stats.dropped_refused += 1
                return
            assert self._quic is not None
            authenticated = self._quic.packets_authenticated
            self._quic.receive_datagram(data, PEER_ADDRESS, now)
            if self._quic.packets_authenticated == authenticated:
                self.stats.dropped_unauthenticated += 1
        except Exception:
            self.stats.dropped_refused += 1
            _log.failure("QUIC refused a datagram")
            return
        self._process_events()
        if self._ack_waiters:
            self._fire_acknowledged()
        self._schedule_flush()

    def _accept_first(self, data: bytes) -> bool:
        """Server: a client's first Initial packet creates the connection."""
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._configuration.connection_id_length
            )
        except ValueError:
            return False
        if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200:
            return False
        if header.version not in self._configuration.supported_versions:
            return False
        self._quic = PinnedQuicConnection(
            self._configuration, original_destination_connection_id=header.destination_cid
        )
        return True

    def _schedule_flush(self) -> None:
        if self._flush is None and self.closed is None:
            self._flush = self._reactor.callLater(0, self._transmit)

    def _flush_now(self) -> None:
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._transmit()

    def _transmit(self) -> None:
        """Send what aioquic has to send, re-arm its timer, wake stalled producers."""
        self._flush = None
        quic = self._quic
        if quic is None:
            return
        now = self._reactor.seconds()
        for data, _addr in quic.datagrams_to_send(now):
            try:
                self._send(data)
            except Exception:
                self.stats.send_errors += 1
                _log.failure("sending a QUIC datagram failed")
            else:
                self.stats.datagrams_sent += 1
                self.stats.bytes_sent += len(data)
        if self.closed is None:
            self._arm_timer()
            for transport in list(self._streams.values()):
                if transport.wants_drain_notice:
                    transport.send_buffer_drained()

    def _arm_timer(self) -> None:
        assert self._quic is not None
        deadline = self._quic.get_timer()
        if deadline is None:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            return
        delay = max(0.0, deadline - self._reactor.seconds())
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() != deadline:
                self._timer.reset(delay)
        else:
            self._timer = self._reactor.callLater(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        if self._quic is None or self.closed is not None:
            return
        self._quic.handle_timer(self._reactor.seconds())
        self._process_events()
        self._transmit()

    # --- events -----------------------------------------------------------------

    def _process_events(self) -> None:
        quic = self._quic
        assert quic is not None
        while (event := quic.next_event()) is not None:
            if isinstance(event, events.HandshakeCompleted):
                self._handshake_completed()
            elif isinstance(event, events.ConnectionTerminated):
                self._terminated(event)
            elif self.closed is not None:
                continue
            elif not self.authenticated:
                self._pending.append(event)
            else:
                self._dispatch(event)
        if self.closed is None:
            termination = quic.termination()
            if termination is not None:
                self._terminated(termination)

    def _handshake_completed(self) -> None:
        assert self._quic is not None
        der = self._quic.peer_certificate_der()
        if der is not None:
            self.peer_fingerprint = str(Fingerprint.of(der, self.expected_fingerprint.algorithm))
        if der is None or not self.expected_fingerprint.matches(der):
            self._pending = []
            self._fail(
                PeerAuthenticationError(str(self.expected_fingerprint), self.peer_fingerprint)
            )
            return
        self.authenticated = True
        if self.options.keepalive is not None:
            self._keepalive = self._reactor.callLater(self.options.keepalive, self._keepalive_due)
        if self._connect_deadline is not None and self._connect_deadline.active():
            self._connect_deadline.cancel()
        self._connect_deadline = None
        _log.debug("QUIC peer {fingerprint} authenticated", fingerprint=self.peer_fingerprint)
        waiters, self._connected_waiters = self._connected_waiters, []
        for d in waiters:
            d.callback(self)
        pending, self._pending = self._pending, []
        for event in pending:
            if self.closed is None:
                self._dispatch(event)

    def _dispatch(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            transport = self._streams.get(event.stream_id)
            if transport is None:
                if event.stream_id in self._finished_streams:
                    return
                transport = self._accept_stream(event.stream_id)
                if transport is None:
                    return
            transport.data_received(event.data, event.end_stream)
        elif isinstance(event, events.DatagramFrameReceived):
            self._deliver_datagram(event.data)
        elif isinstance(event, events.StreamReset):
            transport = self._streams.get(event.stream_id)
            if transport is not None:
                transport.reset_by_peer(event.error_code)
        elif isinstance(event, events.StopSendingReceived):
            transport = self._streams.get(event.stream_id)
            if transport is not None:
                transport.stop_sending_received(event.error_code)

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        if self.closed is not None:
            return
        reason = event.reason_phrase or f"error code {event.error_code:#x}"
        self._mark_closed(SessionClosed(reason, by_peer=True, error_code=event.error_code))

    # --- streams ----------------------------------------------------------------

    def listen_streams(self, factory: interfaces.IProtocolFactory) -> None:
        """Build a protocol with ``factory`` for each stream the peer opens.

        ``buildProtocol`` gets the peer's :class:`QuicStreamAddress`; returning None
        refuses the stream. Streams the peer opens while nobody listens are refused.
        """
        self._stream_factory = factory

    def open_stream(self, protocol_or_factory: Any) -> defer.Deferred[Any]:
        """Open a bidirectional stream for a protocol (or one a factory builds).

        Fires with the protocol once it is connected (after the handshake, if needed);
        fails with :class:`SessionClosed` (or :class:`PeerAuthenticationError`).
        """
        if self.closed is not None:
            return defer.fail(self.closed)
        if not self.authenticated:
            return self.when_connected().addCallback(
                lambda _: self.open_stream(protocol_or_factory)
            )
        assert self._quic is not None
        stream_id = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(stream_id, b"")
        host, peer = self._addresses(stream_id)
        if interfaces.IProtocolFactory.providedBy(protocol_or_factory):
            protocol = protocol_or_factory.buildProtocol(peer)
            if protocol is None:
                self.reset_stream(stream_id, STREAM_REFUSED)
                return defer.fail(ValueError("the factory built no protocol"))
        else:
            protocol = protocol_or_factory
        transport = QuicStreamTransport(self, stream_id, protocol, host, peer)
        self._streams[stream_id] = transport
        self._quic.limit_receive_window(stream_id, self.options.stream_receive_window)
        protocol.makeConnection(transport)
        self._schedule_flush()
        return defer.succeed(protocol)

    def _accept_stream(self, stream_id: int) -> QuicStreamTransport | None:
        host, peer = self._addresses(stream_id)
        protocol = None
        if self._stream_factory is not None:
            try:
                protocol = self._stream_factory.buildProtocol(peer)
            except Exception:
                _log.failure("buildProtocol raised")
        if protocol is None:
            self.stats.streams_refused += 1
            self._finished_streams.add(stream_id)
            self.stop_stream(stream_id, STREAM_REFUSED)
            if stream_id & 2 == 0:
                self.reset_stream(stream_id, STREAM_REFUSED)
            return None
        unidirectional = bool(stream_id & 2)
        transport = QuicStreamTransport(
            self, stream_id, protocol, host, peer, writable=not unidirectional
        )
        self._streams[stream_id] = transport
        assert self._quic is not None
        self._quic.limit_receive_window(stream_id, self.options.stream_receive_window)
        protocol.makeConnection(transport)
        return transport

    def _addresses(self, stream_id: int) -> tuple[QuicStreamAddress, QuicStreamAddress]:
        host = QuicStreamAddress(self.identity.fingerprint, stream_id)
        peer = QuicStreamAddress(
            self.peer_fingerprint or str(self.expected_fingerprint),
            stream_id,
            self.options.peer_id,
        )
        return host, peer

    # --- what the stream transports ask of the session (streams.StreamOwner) -----

    def write_stream(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Queue ``data`` (and FIN when ``end_stream``) on a stream."""
        if self.closed is not None or self._quic is None:
            return
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        except RuntimeError:
            # aioquic refuses writes after the peer's STOP_SENDING reset the stream;
            # the transport hears of it through the StopSendingReceived event.
            return
        self._schedule_flush()

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Abandon sending on a stream (RESET_STREAM)."""
        if self.closed is not None or self._quic is None:
            return
        try:
            self._quic.reset_stream(stream_id, error_code)
        except Exception:
            _log.failure("reset_stream failed")
        self._schedule_flush()

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """Ask the peer to stop sending on a stream (STOP_SENDING)."""
        if self.closed is not None or self._quic is None:
            return
        try:
            self._quic.stop_stream(stream_id, error_code)
        except Exception:
            _log.failure("stop_stream failed")
        self._schedule_flush()

    def stream_backlog(self, stream_id: int) -> int:
        """Bytes written to a stream and not yet acknowledged."""
        return 0 if self._quic is None else self._quic.stream_send_backlog(stream_id)

    def forget_stream(self, stream_id: int) -> None:
        """A stream is over on both sides: drop its state."""
        if self._streams.pop(stream_id, None) is not None:
            self._finished_streams.add(stream_id)
        if self._quic is not None:
            self._quic.forget_receive_window(stream_id)
        if self._close_when_idle is not None and not self._streams:
            self.call_soon(self._close_if_idle)

    def close_when_idle(self, reason: str = "no stream left") -> None:
        """Close the session once no stream is open (on a later turn, so that the
        last stream's FIN leaves first): for a session that exists for its streams."""
        self._close_when_idle = reason
        if not self._streams:
            self.call_soon(self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self._close_when_idle is not None and not self._streams:
            self.close(self._close_when_idle)

    def stream_consumed(self, stream_id: int, nbytes: int, resumed: bool) -> None:
        """A protocol took ``nbytes``: give the peer that much credit."""
        if self._quic is None:
            return
        self._quic.consumed(stream_id, nbytes)
        if resumed:
            self._schedule_flush()  # the new credit goes out without waiting for data

    def call_soon(self, f: Callable[..., object], *args: object) -> None:
        """Call ``f`` on a later reactor turn."""
        self._reactor.callLater(0, f, *args)

    # --- datagrams --------------------------------------------------------------

    @property
    def max_datagram_payload(self) -> int:
        """The largest payload :meth:`send_datagram` takes."""
        return self.options.max_datagram_size - DATAGRAM_OVERHEAD

    def send_datagram(self, data: bytes) -> None:
        """Send one encrypted, unreliable datagram (RFC 9221 DATAGRAM frame).

        Raises ``ValueError`` above :attr:`max_datagram_payload` and
        :class:`SessionClosed` once closed. While congestion control holds more than
        ``datagram_send_queue`` datagrams back, further ones are dropped and counted.
        """
        if self.closed is not None:
            raise self.closed
        if len(data) > self.max_datagram_payload:
            raise ValueError(f"datagram of {len(data)} bytes exceeds {self.max_datagram_payload}")
        if self._quic is None:
            raise SessionClosed("not connected yet")
        if self._quic.datagrams_pending() >= self.options.datagram_send_queue:
            self._flush_now()
        if self._quic.datagrams_pending() >= self.options.datagram_send_queue:
            # Unreliable anyway: drop rather than queue without bound while congested.
            self.stats.datagrams_dropped_queue_full += 1
            return
        self._quic.send_datagram_frame(bytes(data))
        self._schedule_flush()

    def on_datagram(self, handler: DatagramHandler) -> Callable[[], None]:
        """Call ``handler(data)`` for each datagram from the peer (those that came
        before the first handler are given to it at once); returns an unsubscriber."""
        self._datagram_handlers.append(handler)
        backlog, self._datagram_backlog = self._datagram_backlog, []
        for data in backlog:
            handler(data)
        return lambda: (
            self._datagram_handlers.remove(handler) if handler in self._datagram_handlers else None
        )

    def _deliver_datagram(self, data: bytes) -> None:
        if not self._datagram_handlers:
            if len(self._datagram_backlog) < self.options.datagram_backlog:
                self._datagram_backlog.append(data)
            return
        for handler in list(self._datagram_handlers):
            try:
                handler(data)
            except Exception:
                _log.failure("datagram handler raised")

    # --- lifetime ---------------------------------------------------------------

    def when_connected(self, timeout: float | None = None) -> defer.Deferred[QuicSession]:
        """Fires with the session once the peer is authenticated; fails with
        :class:`SessionClosed` / :class:`PeerAuthenticationError`, or on ``timeout``
        (``defer.TimeoutError``; the session's own ``connect_timeout`` applies anyway)."""
        if self.closed is not None:
            return defer.fail(self.closed)
        if self.authenticated:
            return defer.succeed(self)
        d: defer.Deferred[QuicSession] = defer.Deferred(
            lambda d: self._connected_waiters.remove(d) if d in self._connected_waiters else None
        )
        self._connected_waiters.append(d)
        if timeout is not None:
            d.addTimeout(timeout, self._reactor)
        return d

    def when_acknowledged(self, stream_id: int) -> defer.Deferred[None]:
        """Fires once the peer has acknowledged everything written on ``stream_id`` and
        its FIN (so it never fires for a stream still open for writing), or the session
        has closed (a peer that has all it needs may close it): what a command waits for
        before it closes the session and exits."""
        if self._send_done(stream_id):
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(
            lambda cancelled: self._ack_waiters.get(stream_id, []).remove(cancelled)
        )
        self._ack_waiters.setdefault(stream_id, []).append(d)
        return d

    def _send_done(self, stream_id: int) -> bool:
        return (
            self.closed is not None or self._quic is None or self._quic.stream_send_done(stream_id)
        )

    def _fire_acknowledged(self, everything: bool = False) -> None:
        for stream_id in list(self._ack_waiters):
            if everything or self._send_done(stream_id):
                for d in self._ack_waiters.pop(stream_id):
                    d.callback(None)

    def when_closed(self) -> defer.Deferred[SessionClosed]:
        """Fires with the :class:`SessionClosed` reason once the session ends."""
        if self.closed is not None:
            return defer.succeed(self.closed)
        d: defer.Deferred[SessionClosed] = defer.Deferred()
        self._closed_waiters.append(d)
        return d

    def on_closed(self, handler: CloseHandler) -> Callable[[], None]:
        """Call ``handler(reason)`` once when the session ends; returns an unsubscriber."""
        if self.closed is not None:
            handler(self.closed)
            return lambda: None
        self._close_observers.append(handler)
        return lambda: (
            self._close_observers.remove(handler) if handler in self._close_observers else None
        )

    def close(self, reason: str = "closed") -> None:
        """Close the connection: CONNECTION_CLOSE to the peer, streams lost, timers off.

        There is no closing period (RFC 9000 section 10.2): the path belongs to whoever
        carries the session; a peer that misses the close times out.
        """
        self._fail(SessionClosed(reason), error_code=0)

    def _fail(self, reason: SessionClosed, error_code: int | None = None) -> None:
        if self.closed is not None:
            return
        code = reason.error_code if error_code is None else error_code
        if self._quic is not None:
            if isinstance(reason, PeerAuthenticationError):
                # A transport close (TLS alert bad_certificate, RFC 9001 section 4.8) can
                # go in a Handshake packet with its reason phrase; an application close
                # there would lose it (RFC 9000 section 10.2.3).
                self._quic.close(
                    error_code=QuicErrorCode.CRYPTO_ERROR + BAD_CERTIFICATE_ALERT,
                    frame_type=QuicFrameType.CRYPTO,
                    reason_phrase=reason.reason[:200],
                )
            else:
                self._quic.close(error_code=code, reason_phrase=reason.reason[:200])
        self._mark_closed(reason)
        if self._quic is not None:
            self._transmit()

    def _keepalive_due(self) -> None:
        # A PING every interval, whatever else flows: cheap (one small packet), and
        # unlike "only when quiet" it cannot be fooled by garbage datagrams.
        self._keepalive = None
        interval = self.options.keepalive
        if self.closed is not None or self._quic is None or interval is None:
            return
        self.stats.keepalives_sent += 1
        self._quic.send_ping(self.stats.keepalives_sent)
        self._schedule_flush()
        self._keepalive = self._reactor.callLater(interval, self._keepalive_due)

    def path_changed(self) -> None:
        """The path under the session moved (an ICE restart, a relay left): a PING at
        once, so that the peer's ACK shows at once what was lost while the path was
        broken (retransmitted then) instead of after the backed-off loss timer."""
        if self.closed is not None or self._quic is None:
            return
        self.stats.keepalives_sent += 1
        self._quic.send_ping(self.stats.keepalives_sent)
        self._schedule_flush()

    def _connect_timed_out(self) -> None:
        self._connect_deadline = None
        if not self.authenticated:
            self._fail(SessionClosed(f"handshake timed out after {self.options.connect_timeout}s"))

    def _mark_closed(self, reason: SessionClosed) -> None:
        self.closed = reason
        log = _log.warn if isinstance(reason, PeerAuthenticationError) else _log.info
        log("QUIC session closed: {reason}", reason=reason.reason)
        for call in (self._timer, self._flush, self._connect_deadline, self._keepalive):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._flush = self._connect_deadline = self._keepalive = None
        self._pending = []
        for transport in list(self._streams.values()):
            transport.session_closed(reason)
        self._streams.clear()
        waiters, self._connected_waiters = self._connected_waiters, []
        for d in waiters:
            d.errback(Failure(reason))
        observers, self._close_observers = self._close_observers, []
        for handler in observers:
            try:
                handler(reason)
            except Exception:
                _log.failure("close observer raised")
        closed_waiters, self._closed_waiters = self._closed_waiters, []
        for cd in closed_waiters:
            cd.callback(reason)
        self._fire_acknowledged(everything=True)


def session_over_channel(
    reactor: interfaces.IReactorTime,
    channel: Channel,
    is_client: bool,
    identity: PeerIdentity,
    peer_fingerprint: str | Fingerprint,
    options: QuicOptions | None = None,
) -> QuicSession:
    """A :class:`QuicSession` on an ICE :class:`Channel <holepunch.ice.connection.Channel>`.

    The channel's datagrams feed the session, the session writes with
    ``channel.send``; when the channel disconnects the session closes, and closing the
    session leaves the channel open (its owner decides). A path change under a
    ``PeerConnection`` needs nothing from the session but a PING
    (:meth:`QuicSession.path_changed`), so that losses are repaired at once.
    """

    def send(data: bytes) -> None:
        if not channel.closed:
            channel.send(data)

    session = QuicSession(reactor, send, is_client, identity, peer_fingerprint, options)
    unsubscribe = channel.on_datagram(session.datagram_received)
    channel.on_disconnected(lambda reason: session.close(f"path closed: {reason}"))
    watch_path = getattr(channel, "on_path_changed", None)
    unwatch = watch_path(lambda _c: session.path_changed()) if watch_path else None

    def closed(_reason: object) -> None:
        unsubscribe()
        if unwatch is not None:
            unwatch()

    session.on_closed(closed)
    return session

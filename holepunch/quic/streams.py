# -*- test-case-name: tests.unit.test_quic_session -*-
"""QUIC streams as Twisted transports.

A :class:`QuicStreamTransport` gives a Twisted protocol one QUIC stream (RFC 9000
section 2) as its ``ITransport``:

- ``write`` / ``writeSequence`` hand bytes to aioquic, which sends them reliably and
  in order; ``loseWriteConnection`` sends FIN after them (the protocol's
  ``writeConnectionLost`` follows if it is an ``IHalfCloseableProtocol``);
  ``loseConnection`` sends FIN and asks the peer to stop sending (STOP_SENDING), like
  closing a TCP socket; ``abortConnection`` sends RESET_STREAM and STOP_SENDING.
- The peer's FIN calls ``readConnectionLost`` on an ``IHalfCloseableProtocol``; any
  other protocol then has its stream closed (FIN) and ``connectionLost`` called, as a
  TCP transport does for a protocol that cannot half-close.
- Flow control, sending: the transport is an ``IConsumer``. A registered streaming
  producer is paused when aioquic holds more than ``send_buffer_high`` unacknowledged
  bytes for the stream and resumed below ``send_buffer_low``; a pull producer is asked
  for more below ``send_buffer_low``. A protocol that writes regardless of its producer
  grows aioquic's buffer, as it would grow a TCP transport's.
- Flow control, receiving: the transport is an ``IPushProducer``. ``pauseProducing``
  stops ``dataReceived`` calls, and the peer gets flow-control credit (MAX_STREAM_DATA)
  only for ``stream_receive_window`` bytes beyond what the protocol consumed, so a
  paused reader stops the sender. (aioquic by itself extends credit as data *arrives*;
  :mod:`holepunch.quic._engine` replaces that rule for our streams.) What arrives
  while paused is buffered; as a backstop, a stream whose buffer still exceeds
  ``receive_buffer_limit`` is aborted (STOP_SENDING, RESET_STREAM) and its protocol's
  ``connectionLost`` gets a :class:`ReceiveBufferExceeded`. Memory per stream is bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet import error, interfaces
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()

#: Application error code for a stream aborted by ``abortConnection``.
STREAM_ABORTED = 0x10
#: Application error code for a stream refused (nobody listens) or over its buffer.
STREAM_REFUSED = 0x11


class ReceiveBufferExceeded(error.ConnectionLost):
    """A paused stream received more than its receive buffer limit and was aborted."""


@implementer(interfaces.IAddress)
class QuicStreamAddress:
    """One end of a QUIC stream: the peer's certificate fingerprint, its id, the stream."""

    def __init__(self, fingerprint: str, stream_id: int, peer_id: str | None = None) -> None:
        self.fingerprint = fingerprint
        self.stream_id = stream_id
        self.peer_id = peer_id

    def __repr__(self) -> str:
        who = f"{self.peer_id} " if self.peer_id else ""
        return f"<QuicStreamAddress {who}{self.fingerprint} stream {self.stream_id}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuicStreamAddress):
            return NotImplemented
        return (self.fingerprint, self.stream_id, self.peer_id) == (
            other.fingerprint,
            other.stream_id,
            other.peer_id,
        )

    def __hash__(self) -> int:
        return hash((self.fingerprint, self.stream_id, self.peer_id))


class BufferLimits(Protocol):
    """The buffer sizes a stream transport works to (``QuicOptions`` has them)."""

    @property
    def send_buffer_high(self) -> int: ...

    @property
    def send_buffer_low(self) -> int: ...

    @property
    def receive_buffer_limit(self) -> int: ...


class StreamOwner(Protocol):
    """What a stream transport asks of the session that carries it
    (:class:`holepunch.quic.session.QuicSession`)."""

    @property
    def options(self) -> BufferLimits: ...

    def write_stream(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Queue ``data`` (and FIN when ``end_stream``) on the stream."""

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Abandon sending (RESET_STREAM)."""

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """Ask the peer to stop sending (STOP_SENDING)."""

    def stream_backlog(self, stream_id: int) -> int:
        """Bytes written to the stream and not yet acknowledged."""

    def stream_consumed(self, stream_id: int, nbytes: int, resumed: bool) -> None:
        """The protocol took ``nbytes``: the peer may send that much more."""

    def forget_stream(self, stream_id: int) -> None:
        """The stream is over on both sides."""

    def call_soon(self, f: Callable[..., object], *args: object) -> None:
        """Call ``f`` on a later reactor turn."""


@implementer(
    interfaces.ITransport,
    interfaces.IConsumer,
    interfaces.IPushProducer,
)
class QuicStreamTransport:
    """One QUIC stream, as the transport of one Twisted protocol."""

    disconnecting = False

    def __init__(
        self,
        session: StreamOwner,
        stream_id: int,
        protocol: interfaces.IProtocol,
        host: QuicStreamAddress,
        peer: QuicStreamAddress,
        writable: bool = True,
        readable: bool = True,
    ) -> None:
        self._session = session
        self.stream_id = stream_id
        self.protocol = protocol
        self._host = host
        self._peer = peer
        self._write_closed = not writable
        self._read_closed = not readable
        self._lost = False
        self._session_gone = False
        self._reading_paused = False
        self._read_buffer: list[bytes] = []
        self._read_buffered = 0
        self._read_fin_pending = False
        self._producer: Any = None
        self._streaming = False
        self._producer_paused = False
        self._close_after_producer: str | None = None
        self.bytes_written = 0
        self.bytes_received = 0

    def __repr__(self) -> str:
        return f"<QuicStreamTransport stream {self.stream_id} to {self._peer.fingerprint}>"

    # ITransport

    def write(self, data: bytes) -> None:
        """Send bytes on the stream (ignored once the write side is closed)."""
        if self._write_closed or self._lost or not data:
            return
        self.bytes_written += len(data)
        self._session.write_stream(self.stream_id, bytes(data), end_stream=False)
        self._check_send_buffer()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Send the concatenation of ``data``."""
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """Send FIN after everything written; keep reading. With a producer registered,
        once it unregisters (as Twisted's transports do)."""
        if self._write_closed or self._lost:
            return
        if self._producer is not None:
            self._close_after_producer = self._close_after_producer or "write"
            return
        self._write_closed = True
        self._session.write_stream(self.stream_id, b"", end_stream=True)
        self._stop_producer()
        self._session.call_soon(self._write_side_lost)

    def loseConnection(self) -> None:
        """Send FIN after everything written, stop reading (STOP_SENDING), then lose.
        With a producer registered, once it unregisters (as Twisted's transports do)."""
        if self._lost or self.disconnecting:
            return
        self.disconnecting = True
        if self._producer is not None and not self._write_closed:
            self._close_after_producer = "both"
            return
        if not self._write_closed:
            self._write_closed = True
            self._session.write_stream(self.stream_id, b"", end_stream=True)
        if not self._read_closed:
            self._read_closed = True
            self._session.stop_stream(self.stream_id, 0)
        self._stop_producer()
        self._session.call_soon(self.connection_lost, Failure(error.ConnectionDone()))

    def abortConnection(self) -> None:
        """Reset the stream at once (RESET_STREAM, STOP_SENDING); buffered data is lost."""
        if self._lost:
            return
        self._abort(STREAM_ABORTED)
        self.connection_lost(Failure(error.ConnectionAborted()))

    def getPeer(self) -> QuicStreamAddress:
        """The peer: its certificate fingerprint and the stream id."""
        return self._peer

    def getHost(self) -> QuicStreamAddress:
        """This end: our certificate fingerprint and the stream id."""
        return self._host

    # IConsumer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Pause ``producer`` while aioquic's buffer for this stream is over its bound."""
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        self._producer = producer
        self._streaming = streaming
        self._producer_paused = False
        if self._lost or self._write_closed:
            self._producer = None
            producer.stopProducing()
            return
        if not streaming:
            self._session.call_soon(self.send_buffer_drained)
        else:
            self._check_send_buffer()

    def unregisterProducer(self) -> None:
        """Forget the producer (and close, if ``loseConnection`` was waiting for it)."""
        self._producer = None
        pending, self._close_after_producer = self._close_after_producer, None
        if pending == "both":
            self.disconnecting = False
            self.loseConnection()
        elif pending == "write":
            self.loseWriteConnection()

    # IPushProducer (the reading side)

    def pauseProducing(self) -> None:
        """Stop delivering data to the protocol (buffered, up to the receive limit)."""
        self._reading_paused = True

    def resumeProducing(self) -> None:
        """Deliver what was buffered, and resume."""
        if not self._reading_paused:
            return
        self._reading_paused = False
        buffered, self._read_buffer, self._read_buffered = self._read_buffer, [], 0
        for data in buffered:
            if self._lost or self._reading_paused:
                self._read_buffer.append(data)
                self._read_buffered += len(data)
                continue
            if not self._session_gone:
                self._session.stream_consumed(self.stream_id, len(data), resumed=True)
            self.protocol.dataReceived(data)
        if self._read_fin_pending and not self._reading_paused and not self._lost:
            self._read_fin_pending = False
            self._read_side_finished()

    def stopProducing(self) -> None:
        """Close the stream (as ``loseConnection``)."""
        self.loseConnection()

    # called by the session

    def data_received(self, data: bytes, end_stream: bool) -> None:
        """Data (and maybe FIN) arrived from the peer."""
        if self._lost or self._read_closed:
            return
        self.bytes_received += len(data)
        if self._reading_paused:
            if data:
                self._read_buffer.append(data)
                self._read_buffered += len(data)
                if self._read_buffered > self._session.options.receive_buffer_limit:
                    self._abort(STREAM_REFUSED)
                    self.connection_lost(
                        Failure(ReceiveBufferExceeded("paused stream over its receive buffer"))
                    )
                    return
            if end_stream:
                self._read_fin_pending = True
            return
        if data:
            self._session.stream_consumed(self.stream_id, len(data), resumed=False)
            self.protocol.dataReceived(data)
        if end_stream and not self._lost:
            self._read_side_finished()

    def reset_by_peer(self, error_code: int) -> None:
        """The peer reset its sending side (RESET_STREAM)."""
        if self._lost:
            return
        self._read_closed = True
        if not self._write_closed:
            self._write_closed = True
            self._session.reset_stream(self.stream_id, error_code)
        self.connection_lost(
            Failure(error.ConnectionLost(f"stream reset by peer (code {error_code})"))
        )

    def stop_sending_received(self, error_code: int) -> None:
        """The peer asked us to stop sending (STOP_SENDING); aioquic reset our side.

        Only our write side ends: what the peer still sends (up to its FIN, which a
        peer's ``loseConnection`` sends too, or its RESET_STREAM) is still delivered.
        """
        if self._lost or self._write_closed:
            return
        self._write_closed = True
        self._stop_producer()
        if interfaces.IHalfCloseableProtocol.providedBy(self.protocol):
            self._call_protocol("writeConnectionLost")
        if self._read_closed:
            self.connection_lost(Failure(error.ConnectionDone()))

    def session_closed(self, reason: Exception) -> None:
        """The whole QUIC connection ended.

        If it ended cleanly after our side had finished and the peer's FIN had arrived
        while the protocol was paused, what is buffered is still the protocol's: it gets
        it as it resumes, then the end of the stream, as a TCP reader gets the bytes
        before a FIN it has not read yet. Otherwise the stream is lost at once.
        """
        if self._lost:
            return
        clean = getattr(reason, "error_code", 1) == 0
        if clean and self._read_fin_pending and self._write_closed:
            self._session_gone = True
            return
        self.connection_lost(Failure(error.ConnectionLost(str(reason))))

    def send_buffer_drained(self) -> None:
        """aioquic's buffer for the stream may have shrunk: resume the producer."""
        producer = self._producer
        if producer is None or self._lost or self._write_closed:
            return
        backlog = self._session.stream_backlog(self.stream_id)
        if backlog > self._session.options.send_buffer_low:
            return
        if self._streaming:
            if self._producer_paused:
                self._producer_paused = False
                producer.resumeProducing()
        else:
            producer.resumeProducing()

    @property
    def wants_drain_notice(self) -> bool:
        """Whether a producer waits for the send buffer to shrink."""
        return self._producer is not None and (self._producer_paused or not self._streaming)

    def connection_lost(self, reason: Failure) -> None:
        """End the stream for the protocol (once)."""
        if self._lost:
            return
        self._lost = True
        self._read_closed = self._write_closed = True
        self._read_buffer, self._read_buffered = [], 0
        self._stop_producer()
        self._session.forget_stream(self.stream_id)
        try:
            self.protocol.connectionLost(reason)
        except Exception:
            _log.failure("connectionLost of {protocol} raised", protocol=self.protocol)

    # internals

    def _check_send_buffer(self) -> None:
        producer = self._producer
        if producer is None or not self._streaming or self._producer_paused:
            return
        if self._session.stream_backlog(self.stream_id) > self._session.options.send_buffer_high:
            self._producer_paused = True
            producer.pauseProducing()

    def _stop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                _log.failure("stopProducing raised")

    def _abort(self, code: int) -> None:
        if not self._write_closed:
            self._session.reset_stream(self.stream_id, code)
        if not self._read_closed:
            self._session.stop_stream(self.stream_id, code)
        self._write_closed = self._read_closed = True

    def _read_side_finished(self) -> None:
        self._read_closed = True
        if interfaces.IHalfCloseableProtocol.providedBy(self.protocol):
            self._call_protocol("readConnectionLost")
            if self._write_closed and not self._lost:
                self._session.call_soon(self.connection_lost, Failure(error.ConnectionDone()))
            return
        if not self._write_closed:
            self._write_closed = True
            self._session.write_stream(self.stream_id, b"", end_stream=True)
        self.connection_lost(Failure(error.ConnectionDone()))

    def _write_side_lost(self) -> None:
        if self._lost:
            return
        if interfaces.IHalfCloseableProtocol.providedBy(self.protocol):
            self._call_protocol("writeConnectionLost")
        if self._read_closed:
            self.connection_lost(Failure(error.ConnectionDone()))

    def _call_protocol(self, name: str) -> None:
        try:
            getattr(self.protocol, name)()
        except Exception:
            _log.failure("{name} of {protocol} raised", name=name, protocol=self.protocol)

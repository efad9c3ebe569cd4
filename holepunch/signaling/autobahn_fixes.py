# -*- test-case-name: tests.unit.test_websocket_frames,tests.unit.test_signaling_protocol -*-
"""Small fixes to Autobahn's Twisted protocols shared by our server and client.

- :func:`cancel_timers`: no Autobahn timer outlives its connection.
- :class:`QuietWebSocketServerProtocol`: Autobahn's server protocol without the per-message
  costs we do not use. Autobahn formats the arguments of a ``log.debug`` call on every
  read and every write (``hltype``/``hlval``, which style text with ``click``) even when
  debug logging is off and the call does nothing, and fires a ``message`` event through
  txaio Deferreds for every message whether anyone listens or not, and adds to ten
  traffic counters per message that nothing reads (:class:`UncountedTraffic`). The overrides below
  skip exactly that work when it would be wasted, and call Autobahn's own method whenever
  its preconditions do not hold (debug logging on, octet logging, chopped or synchronous
  writes, a send queue, a state other than open, listeners on ``message``).
  It also reads and writes the frames of the common case itself: whole, unfragmented,
  uncompressed text messages (every signaling message) on an open connection. Autobahn
  parses each frame through a chain of a dozen calls, unmasks it with a masker object it
  builds per frame (through cffi), and re-slices its receive buffer after every frame,
  which is quadratic in the frames of one read; measured with the signaling benchmark,
  that was about 40% of the server's time per relayed message. The fast path parses
  the frames of a read with offsets, unmasks each with one C call (the ``websockets``
  library's ``apply_mask``) and writes a frame as header plus payload. The connection's
  options (compression, fragmenting, timings, frame and octet logging) are read once it
  is open. Anything else (a control frame, a fragment, a binary or oversized message,
  an unmasked frame, a read that ends inside a frame Autobahn had started) goes to
  Autobahn's own code, unchanged; no library offers the fast path.
  What the fast path writes while a read is being handled (the replies and relays that
  read causes) is held until the read is done, then each connection's share goes out in
  one write, straight to the socket when Twisted has nothing queued for it
  (:mod:`holepunch.signaling.heldwrites`): a batch of relays costs one ``send``, not a
  ``send`` and two ``epoll_ctl`` calls per relay and a reactor turn of latency. Autobahn's
  own writes (pings, close frames) and ``dropConnection`` first write what is held.
- :func:`release_http_channel`: after twisted.web hands a connection over to WebSocket,
  drop the HTTP channel that stays registered as the transport's producer.
- :func:`send_at_once`: turn Nagle's algorithm off on a client's connection, which
  Autobahn means to do and does not.
"""

from __future__ import annotations

from typing import Any

import txaio
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IPushProducer

from holepunch.signaling.heldwrites import HoldingWriter, write_through
from holepunch.signaling.heldwrites import held as _held

try:  # RFC 6455 5.3 unmasking, in C (SSE2), from the websockets library
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension: the same, as one integer XOR
    from websockets.utils import apply_mask

txaio.use_twisted()
from txaio import tx as _txaio_tx  # noqa: E402  (needs use_twisted() first)

# txaio binds a logger's disabled levels to this one function; when it cannot be found
# (another txaio), nothing compares equal to the sentinel and Autobahn's methods run.
_NO_OP: object = getattr(_txaio_tx, "_no_op", object())


_TIMERS = (
    "closeHandshakeTimeoutCall",
    "openHandshakeTimeoutCall",
    "autoPingPendingCall",
    "autoPingTimeoutCall",
    "serverConnectionDropTimeoutCall",
)
"""Autobahn's per-connection timers (public attributes of its protocol)."""


def cancel_timers(protocol: Any) -> None:
    """Cancel every Autobahn timer of ``protocol`` once its connection is lost.

    Autobahn leaves some running when the TCP connection goes first (the closing
    handshake's when the peer's close frame never came, an open-handshake or ping timer
    on some paths); they would outlive the connection, and one left in a batched-timer
    bucket keeps the bucket's own timer scheduled (and dirties trial's reactor).
    """
    for name in _TIMERS:
        call = getattr(protocol, name, None)
        if call is not None:
            setattr(protocol, name, None)
            try:
                call.cancel()
            except (AlreadyCalled, AlreadyCancelled):
                pass


def debug_logging_off(log: Any) -> bool:
    """True when ``log.debug(...)`` (a txaio logger's) is a no-op."""
    return getattr(log, "debug", None) is _NO_OP


class UncountedTraffic(TrafficStats):
    """Autobahn's per-connection traffic statistics, not kept: every count reads 0.

    Autobahn adds to ten counters for every message sent and received, on an object
    nothing in holepunch (or in Autobahn) reads; our own counters are in ``/metrics``.
    At moderate rates every offer wakes the server alone, and touching those counters
    is part of what the wake-up costs (docs/benchmarks.md, "Lone offers"). Writes are
    ignored, so Autobahn's own code, which still adds to them, changes nothing.
    """

    def __getattr__(self, name: str) -> int:
        if name.startswith("__"):
            raise AttributeError(name)
        return 0

    def __setattr__(self, name: str, value: object) -> None:
        pass


UNCOUNTED = UncountedTraffic()
"""The one :class:`UncountedTraffic` every :class:`QuietWebSocketServerProtocol` shares."""


_TEXT_FIN = 0x81
"""First byte of a whole, uncompressed text frame (FIN, no RSV bits, opcode 1)."""


_TEXT_HEADERS: dict[int, bytes] = {n: bytes((_TEXT_FIN, n)) for n in range(126)}
"""The frame header of a whole text message, by length: 0 to 125 bytes, and the longer
lengths met so far (at most 4,096 of them)."""


def _text_header(n: int) -> bytes:
    """The frame header of a whole text message of 126 to 65,535 bytes (remembered)."""
    header = bytes((_TEXT_FIN, 126, n >> 8, n & 0xFF))
    if len(_TEXT_HEADERS) < 126 + 4096:
        _TEXT_HEADERS[n] = header
    return header


# mypy compares the bases of a class that names several: Autobahn's own two bases of
# WebSocketServerProtocol disagree on the types of ``peer`` and ``_transport_details``.
class QuietWebSocketServerProtocol(HoldingWriter, WebSocketServerProtocol):  # type: ignore[misc]
    """Autobahn's server protocol minus its wasted per-message work (see the module doc).

    Behaviour is Autobahn's: the same bytes on the wire, the same ``onMessage`` calls;
    only dropped debug-log formatting, the ``message`` event nobody listens to and the
    traffic statistics nobody reads (:class:`UncountedTraffic`) are skipped, and whole
    text messages are framed and unframed here.
    """

    # Set from the factory's protocol options when the connection is made:
    logOctets: bool
    logFrames: bool
    maxMessagePayloadSize: int
    maxFramePayloadSize: int
    autoFragmentSize: int
    utf8validateIncoming: bool
    _partial_frame = b""
    """The start of a whole text frame the last read ended in (the fast path's)."""

    turns: Any = None
    """The running reactor, when reads that come back to back may be held to the end of
    its turn (:class:`holepunch.signaling.heldwrites.HeldWrites`); None: never."""

    def _connectionMade(self) -> None:
        super()._connectionMade()
        self.trafficStats = UNCOUNTED
        # txaio's logger is a descriptor whose __get__ (in Python) returns the logger
        # itself: kept on the instance, each ``self.log`` is a plain attribute read.
        self.log = self.log

    def dataReceived(self, data: bytes) -> None:
        held = _held
        plain = self._plain_reads
        if plain is None:
            plain = self._find_plain_reads()
        if not (
            plain
            and self.state == self.STATE_OPEN
            and not self.data
            and self.current_frame is None
            and not self.inside_message
            and not self._listeners
            and self.log.debug is _NO_OP  # debug_logging_off(self.log), inline
        ):
            held.read_started(self.turns)
            try:
                self._read(data)
            finally:
                held.read_done()
            return
        if self._partial_frame:
            data, self._partial_frame = self._partial_frame + data, b""
        n = len(data)
        if n > 8 and data[0] == _TEXT_FIN and held.alone(self.turns):
            # One whole frame in a read that came alone (the usual read at moderate
            # rates): nothing else to gather its writes with, so they go out at once.
            length = data[1] & 0x7F
            start = 8 if length == 126 else 6
            if length == 126:
                length = (data[2] << 8) | data[3]
            if data[1] & 0x80 and length != 127 and start + length == n:
                limit = self._frame_limit
                if not limit or length <= limit:
                    if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                        self._cancelAutoPingTimeoutCall()
                    self.onMessage(apply_mask(data[start:], data[start - 4 : start]), False)
                    held.alone_done()
                    return
        held.read_started(self.turns)
        try:
            self._fast_frames(data)
        finally:
            held.read_done()

    def flush_held(self) -> None:
        """Give the frames held back during a read to the transport, in one write."""
        data = self.take_held()
        if data and self.transport is not None:
            write_through(self.transport, data)

    def dropConnection(self, abort: bool = False) -> None:
        self.flush_held()  # what was written before goes before the connection closes
        super().dropConnection(abort)

    def _read(self, data: bytes) -> None:
        # dataReceived sends every read the fast path can take there: what comes here
        # is for Autobahn's own parsing.
        if not debug_logging_off(self.log):
            super().dataReceived(data)
        else:
            # Autobahn's dataReceived: log.debug(...) (formatted, then dropped), then this.
            if self._partial_frame:
                data, self._partial_frame = self._partial_frame + data, b""
            self._dataReceived(data)

    _plain_reads: bool | None = None
    """Nothing in the connection's options asks for Autobahn's extras on reading (None:
    not known yet; kept once the connection is open, when the options are settled)."""

    def _find_plain_reads(self) -> bool:
        plain = bool(
            not self.logOctets
            and not self.logFrames
            and not self.trackedTimings
            and not self.utf8validateIncoming
            and self._perMessageCompress is None
            and self._parent is None
        )
        if self.state == self.STATE_OPEN:
            self._plain_reads = plain
            self._frame_limit = self.maxMessagePayloadSize or self.maxFramePayloadSize
        return plain

    _frame_limit = 0
    """The longest frame the fast path takes (0: no limit), known once the connection is
    open: Autobahn's ``maxMessagePayloadSize`` or ``maxFramePayloadSize``."""

    def _fast_frames(self, data: bytes) -> None:
        """Hand the whole text frames at the start of ``data`` to ``onMessage``; keep an
        incomplete one for the next read; give anything else to Autobahn.

        The frames are found first, then unmasked and delivered one by one: if a message
        closes the connection, the bytes after it go to Autobahn, as they would have
        without the fast path.
        """
        limit = self._frame_limit
        n = len(data)
        pos = 0
        frames: list[tuple[int, int, int]] = []
        while pos < n:
            if data[pos] != _TEXT_FIN:
                break
            if n - pos < 2:
                self._partial_frame = data[pos:]
                break
            length = data[pos + 1]
            if length < 0x80:
                break  # unmasked: Autobahn fails the connection
            length &= 0x7F
            start = pos + 6
            if length == 126:
                if n - pos < 4:
                    self._partial_frame = data[pos:]
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 8
            elif length == 127:
                break
            if limit and length > limit:
                break
            end = start + length
            if end > n:
                self._partial_frame = data[pos:]
                break
            frames.append((pos, start, end))
            pos = end
        if self._partial_frame:
            pos = n
        if frames:
            if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                self._cancelAutoPingTimeoutCall()
            for head, start, end in frames:
                if self.state != self.STATE_OPEN:  # closed: the rest is Autobahn's
                    self._partial_frame = b""
                    pos = head
                    break
                self.onMessage(apply_mask(data[start:end], data[start - 4 : start]), False)
        if pos < n:
            self._dataReceived(data[pos:])

    def sendMessage(
        self,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        n = len(payload)
        limit = self._fast_send_limit
        if limit < 0:
            limit = self._find_fast_send_limit()
        if (
            n > limit
            or isBinary
            or fragmentSize is not None
            or sync
            or self.state != self.STATE_OPEN
        ):
            super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)
            return
        frame = (_TEXT_HEADERS.get(n) or _text_header(n)) + payload
        if self.send_queue or self.log.debug is not _NO_OP:  # debug_logging_off(), inline
            self.sendData(frame)
        elif _held.depth:
            self.hold(frame)  # sendData's fast path, held
        else:
            write_through(self.transport, frame)  # sendData's fast path

    _fast_send_limit = -1
    """The longest text message :meth:`sendMessage` frames itself (-1: not yet known)."""

    def _find_fast_send_limit(self) -> int:
        """0 when the connection's options ask for Autobahn's extras (compression,
        fragments, timings, frame or octet logging), else the largest message one frame
        with a 16-bit length holds, within ``maxMessagePayloadSize``. The options are
        settled once the connection is open: only then is the answer kept."""
        if (
            self._perMessageCompress is not None
            or self.autoFragmentSize
            or self.trackedTimings
            or self.logFrames
            or self.logOctets
        ):
            limit = 0
        else:
            limit = min(0xFFFF, self.maxMessagePayloadSize or 0xFFFF)
        if self.state == self.STATE_OPEN:
            self._fast_send_limit = limit
        return limit

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if (
            sync
            or chopsize
            or self.send_queue
            or self.logOctets
            or self.state != self.STATE_OPEN
            or not debug_logging_off(self.log)
        ):
            self.flush_held()  # in order
            super().sendData(data, sync, chopsize)
            return
        # Autobahn's path for an unqueued write on an open connection, without log.debug;
        # held back until the read under way is handled.
        if not _held.depth:
            write_through(self.transport, data)
            return
        self.hold(data)

    def onMessageEnd(self) -> None:
        if self._listeners or self._parent is not None:
            super().onMessageEnd()  # someone listens to the "message" event: fire it
            return
        # Autobahn's onMessageEnd without fire("message") and its Deferreds.
        if not self.failedByMe:
            payload = b"".join(self.message_data)
            if self.trackedTimings:
                self.trackedTimings.track("onMessage")
            self.onMessage(payload, self.message_is_binary)
        self.message_data = None  # type: ignore[assignment]


def release_http_channel(transport: Any) -> None:
    """Unregister twisted.web's ``HTTPChannel`` from a transport WebSocket took over.

    ``HTTPChannel.connectionMade`` registers the channel as the transport's streaming
    producer. After Autobahn's ``WebSocketResource`` takes the transport over, the request
    never finishes, so the channel's ``pauseProducing``/``resumeProducing`` do nothing
    (they pause reading only between requests): it provides no backpressure, yet it keeps
    the channel, its ``Request``, headers and buffers alive for the whole connection
    (twisted.web does the same before handing a connection to HTTP/2).
    """
    consumer: Any = transport  # HTTPChannel registered on IPushProducer(transport), if any
    if IPushProducer.providedBy(transport):
        consumer.unregisterProducer()


def send_at_once(transport: Any) -> None:
    """Turn off Nagle's algorithm (``TCP_NODELAY``) on the TCP connection under
    ``transport`` (a TCP transport, or TLS over one); nothing when there is none (a
    connection in memory, a UNIX socket).

    Signaling messages are small and written as they happen: a relay, then a candidate a
    few milliseconds later, then an event. With Nagle's algorithm on (Twisted's default),
    the kernel holds each small write back while an earlier one is not yet acknowledged,
    and a peer that delays its acknowledgements (40 ms on Linux, up to 200 ms elsewhere)
    delays every message after the first by that much. Browsers and the ``ws`` library
    turn it off on every WebSocket for that reason, and so does Autobahn, on the server
    side only: its ``connectionMade`` sets the option from ``self.tcpNoDelay`` before
    ``_connectionMade`` has copied the factory's options onto the protocol, so on a
    client connection the attribute is missing, the ``AttributeError`` is swallowed and
    the socket keeps Nagle. Our client calls this once the connection is open.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:  # not a TCP socket after all (a UNIX socket), or already closed
            pass

# -*- test-case-name: tests.unit.test_stun_server,tests.unit.test_stun_server_fastpath -*-
"""The STUN server: Binding over UDP and TCP, with RFC 5780 behaviour discovery.

- RFC 8489 section 6.3: a Binding request is answered with XOR-MAPPED-ADDRESS (the
  source transport address as the server saw it), and FINGERPRINT when the request
  carried one (SOFTWARE only when configured: it is 20-odd bytes of amplification); a
  cookie-less RFC 3489 request gets MAPPED-ADDRESS (and SOURCE-ADDRESS /
  CHANGED-ADDRESS, which the classic RFC 3489 tools read). Unknown
  comprehension-required attributes get 420 with UNKNOWN-ATTRIBUTES (section 6.3.1.1);
  other methods get 400.
- RFC 5780 section 6: given a second address and port, every response carries
  OTHER-ADDRESS and RESPONSE-ORIGIN; CHANGE-REQUEST makes the answer leave from the other
  address and/or port; RESPONSE-PORT sends it to another port of the requester's address;
  PADDING asks for a padded response.

Robustness and anti-amplification (see docs/stun-server.md):

- anything that does not decode as a STUN request is dropped and counted; indications and
  responses are never answered;
- a response only ever goes to the IP address the request came from (RESPONSE-PORT may
  change the port, never the address);
- one response per request, only the attributes it must carry, and PADDING is honoured
  only up to the request's own size, so a response is never much larger than what
  provoked it;
- decoding is linear in the datagram and a message of more than 64 attributes is
  dropped (``tooManyAttributes``);
- each source address has a token bucket (``rate`` requests per second, ``burst``) in a
  fixed table that no churn of source addresses can reset; requests beyond it are
  dropped and counted;
- refused traffic is counted, and logged as one summary line a minute at most;
- a STUN/TCP client that sends but does not read is dropped once ``max_tcp_output``
  bytes of answers wait for it (``tcpSlowReaders``), and one that sends ChannelData
  (framed like STUN over TCP, but no business of a STUN-only server) at once.

The layers: :class:`StunResponder` is the pure model (request in, response and the
socket to send it from out); :class:`StunDatagramProtocol` and :class:`StunStreamProtocol`
only move bytes; :class:`StunServerService` binds the sockets.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort, IPushProducer, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from holepunch.addresses import format_address, ip_version
from holepunch.logsummary import RefusalSummary, Summary
from holepunch.ratelimit import TokenBuckets
from holepunch.reuseport import listen_interfaces, listen_on_each, listen_tcp, listen_udp
from holepunch.stun.framing import StreamFramer
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.wire import (
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    MAGIC_COOKIE,
    Address,
    Attr,
    MessageClass,
    Method,
    StunDecodeError,
    StunError,
    TooManyAttributes,
    packed_host,
)
from holepunch.version import __version__

_log = Logger()

#: The SOFTWARE value sent when the operator turns it on (``--stun-software``).
SOFTWARE = f"holepunch {__version__}"

# RFC 3489 attributes, still read by classic tools (pystun, pynat).
RFC3489_SOURCE_ADDRESS = 0x0004
RFC3489_CHANGED_ADDRESS = 0x0005

# Attributes a Binding request may carry that the server understands.
_UNDERSTOOD = frozenset(int(a) for a in Attr) | {RFC3489_SOURCE_ADDRESS, RFC3489_CHANGED_ADDRESS}

# Largest padded response we will send, whatever the request asks.
MAX_PADDED_RESPONSE = 1500

# The fast path (StunResponder.answer_plain_binding): the first 8 bytes of a Binding
# request with the magic cookie and no attributes, or with FINGERPRINT alone; and the
# answer's header with XOR-MAPPED-ADDRESS, for IPv4 and IPv6, packed in one call.
_PLAIN_REQUEST = struct.pack("!HHI", 0x0001, 0, MAGIC_COOKIE)
_PLAIN_REQUEST_WITH_FINGERPRINT = struct.pack("!HHI", 0x0001, 8, MAGIC_COOKIE)
_FINGERPRINT_HEADER = struct.pack("!HH", Attr.FINGERPRINT, 4)
_ANSWER_V4 = struct.Struct("!HHI12sHHBBHI")
_ANSWER_V6 = struct.Struct("!HHI12sHHBBH16s")
_FINGERPRINT = struct.Struct("!HHI")
_BINDING_SUCCESS = 0x0101
_XOR_MAPPED_ADDRESS = int(Attr.XOR_MAPPED_ADDRESS)  # a plain int packs faster than the enum
_FINGERPRINT_TYPE = int(Attr.FINGERPRINT)
_COOKIE_PORT_XOR = MAGIC_COOKIE >> 16
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")

#: What :meth:`StunResponder.answer_plain_binding` returns for a request it refused
#: (rate-limited, counted): nothing to send.
REFUSED = b""


@dataclass(frozen=True)
class Reply:
    """A response to send: its bytes, the local socket to send from, the destination."""

    data: bytes
    local: Address
    destination: Address


@dataclass
class StunServerStats:
    """Counters of what the server saw; exported by the daemon's /metrics."""

    requests: int = 0
    responses: int = 0
    malformed: int = 0
    too_many_attributes: int = 0
    ignored: int = 0
    rate_limited: int = 0
    tcp_slow_readers: int = 0
    errors: Counter[int] = field(default_factory=Counter)
    by_transport: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """The counters as plain JSON-able values."""
        return {
            "requests": self.requests,
            "responses": self.responses,
            "malformed": self.malformed,
            "tooManyAttributes": self.too_many_attributes,
            "ignored": self.ignored,
            "rateLimited": self.rate_limited,
            "tcpSlowReaders": self.tcp_slow_readers,
            "errors": {str(k): v for k, v in sorted(self.errors.items())},
            "byTransport": dict(self.by_transport),
        }


def _log_summary(summary: Summary) -> None:
    _log.info(
        "STUN refused {total} in {seconds:.0f} s: {counts} (last: {last_reason}, {last_detail})",
        **summary.log_fields(),
    )


class StunResponder:
    """The server's rules, with no sockets: a request in, at most one :class:`Reply` out.

    ``addresses`` are the local transport addresses the server listens on. With RFC 5780
    (``alternate`` set) they are the four combinations of the primary and alternate IP
    address and port. Without, ``second_port`` adds the primary address's second port:
    an ordinary second destination (no OTHER-ADDRESS, which RFC 5780 allows only when
    both address and port differ) that lets a client with one server measure whether
    its NAT's mapping depends on the destination.

    ``software`` is the SOFTWARE attribute's value, None (the default) for none.
    Refusals (malformed, rate-limited, ignored ...) are counted in :attr:`stats` and
    summarised in one log line per ``log_interval`` seconds at most.
    """

    def __init__(
        self,
        primary: Address,
        alternate: Address | None = None,
        software: str | None = None,
        rate: float = 50.0,
        burst: float = 100.0,
        second_port: int | None = None,
        log_interval: float = 60.0,
    ) -> None:
        self.primary = primary
        self.alternate = alternate
        self.second_port = second_port if alternate is None else None
        self.software = software
        self.stats = StunServerStats()
        self._buckets = TokenBuckets(rate, burst)
        self.log_interval = log_interval
        self._refusals = RefusalSummary(log_interval, _log_summary)
        # The attributes after XOR-MAPPED-ADDRESS in a plain Binding answer, by local
        # address (see answer_plain_binding).
        self._plain_tails: dict[Address, bytes] = {}

    def refused(self, reason: str, now: float, detail: str = "") -> None:
        """Note one refusal (already counted in :attr:`stats`) for the log summary."""
        self._refusals.record(reason, now, detail)

    def log_refusals(self, now: float) -> None:
        """Write the summary of refusals not yet logged, if any (on a timer, at stop)."""
        self._refusals.flush(now)

    @property
    def rfc5780(self) -> bool:
        """Whether the server can answer RFC 5780 behaviour discovery."""
        return self.alternate is not None

    def local_addresses(self) -> list[Address]:
        """Every local address the server should listen on."""
        if self.alternate is None:
            if self.second_port is not None:
                return [self.primary, Address(self.primary.host, self.second_port)]
            return [self.primary]
        a, b = self.primary, self.alternate
        return [
            Address(a.host, a.port),
            Address(a.host, b.port),
            Address(b.host, a.port),
            Address(b.host, b.port),
        ]

    def _other(self, local: Address, change_ip: bool, change_port: bool) -> Address:
        assert self.alternate is not None
        a, b = self.primary, self.alternate
        host = local.host
        port = local.port
        if change_ip:
            host = b.host if host == a.host else a.host
        if change_port:
            port = b.port if port == a.port else a.port
        return Address(host, port)

    def answer_plain_binding(
        self, data: bytes, host: str, port: int, local: Address, now: float, transport: str = "udp"
    ) -> bytes | None:
        """The fast path for the common case: the answer to a plain Binding request.

        A plain request is a Binding request with the magic cookie and no attribute, or
        FINGERPRINT alone (and right). Its answer is the same for every client but for
        the transaction id and XOR-MAPPED-ADDRESS, so it is packed in one
        ``struct.pack`` call from the request's transaction id and ``host``:``port``,
        followed by the attributes that depend only on ``local`` (RFC 5780's
        OTHER-ADDRESS and RESPONSE-ORIGIN, SOFTWARE), encoded once per local address,
        and FINGERPRINT when the request carried one. The bytes are exactly what
        :meth:`handle` sends (``tests.unit.test_stun_server_fastpath`` proves it on generated
        requests), and the request is counted and rate-limited as there.

        Returns the answer to send to ``host``:``port`` from ``local``;
        :data:`REFUSED` (empty) for a request refused by the rate limit (counted, send
        nothing); None for anything else, which the caller hands to :meth:`handle`.
        The tail is cached: ``primary``, ``alternate`` and ``software`` must not
        change once requests are answered.
        """
        if data.startswith(_PLAIN_REQUEST):
            if len(data) != HEADER_LENGTH:
                return None
            fingerprint = False
        elif data.startswith(_PLAIN_REQUEST_WITH_FINGERPRINT):
            if (
                len(data) != HEADER_LENGTH + 8
                or data[20:24] != _FINGERPRINT_HEADER
                or int.from_bytes(data[24:28], "big")
                != zlib.crc32(data[:HEADER_LENGTH]) ^ FINGERPRINT_XOR
            ):
                return None
            fingerprint = True
        else:
            return None
        tail = self._plain_tails.get(local)
        try:
            if tail is None:
                tail = self._plain_tails[local] = self._plain_tail(local)
            family, packed = packed_host(host)
            xport = port ^ _COOKIE_PORT_XOR
            tid = data[8:HEADER_LENGTH]
            if family == 0x01:
                length = 12 + len(tail) + 8 * fingerprint
                xaddr = int.from_bytes(packed, "big") ^ MAGIC_COOKIE
                out = _ANSWER_V4.pack(
                    _BINDING_SUCCESS, length, MAGIC_COOKIE, tid, _XOR_MAPPED_ADDRESS, 8,
                    0, 1, xport, xaddr,
                )  # fmt: skip
            else:
                length = 24 + len(tail) + 8 * fingerprint
                key = int.from_bytes(_COOKIE_BYTES + tid, "big")
                xaddr6 = (int.from_bytes(packed, "big") ^ key).to_bytes(16, "big")
                out = _ANSWER_V6.pack(
                    _BINDING_SUCCESS, length, MAGIC_COOKIE, tid, _XOR_MAPPED_ADDRESS, 20,
                    0, 2, xport, xaddr6,
                )  # fmt: skip
        except (StunError, struct.error):
            return None  # not an IP address, a port out of range: the full path says what
        if not self._buckets.allow(host, now):
            self._rate_limited(host, now)
            return REFUSED
        if tail:
            out += tail
        if fingerprint:
            out += _FINGERPRINT.pack(_FINGERPRINT_TYPE, 4, zlib.crc32(out) ^ FINGERPRINT_XOR)
        stats = self.stats
        stats.requests += 1
        stats.by_transport[transport] += 1
        stats.responses += 1
        return out

    def _plain_tail(self, local: Address) -> bytes:
        """The encoded attributes after XOR-MAPPED-ADDRESS in a plain Binding answer."""
        response = StunMessage(Method.BINDING, MessageClass.SUCCESS, bytes(12))
        self._add_rfc5780(response, local, local)
        if self.software is not None:
            response.add_string(Attr.SOFTWARE, self.software)
        return encode(response)[HEADER_LENGTH:]

    def _rate_limited(self, host: str, now: float) -> None:
        self.stats.rate_limited += 1
        self.refused("rateLimited", now, host)

    def handle(
        self, data: bytes, source: Address, local: Address, now: float, transport: str = "udp"
    ) -> Reply | None:
        """Answer one datagram (or TCP frame); None when nothing should be sent."""
        try:
            request = decode(data)
        except TooManyAttributes as e:
            self.stats.malformed += 1
            self.stats.too_many_attributes += 1
            self.refused("tooManyAttributes", now, f"{source.host}: {e}")
            return None
        except StunDecodeError as e:
            self.stats.malformed += 1
            self.refused("malformed", now, f"{source.host}: {e}")
            return None
        if request.message_class != MessageClass.REQUEST:
            self.stats.ignored += 1
            self.refused("ignored", now, f"{source.host}: not a request")
            return None
        if not self._buckets.allow(source.host, now):
            self._rate_limited(source.host, now)
            return None
        self.stats.requests += 1
        self.stats.by_transport[transport] += 1
        # FINGERPRINT only when the request carried one (a client that multiplexes STUN
        # with other traffic, as ICE does, then looks for it); nobody else needs it.
        fingerprint = request.has(Attr.FINGERPRINT)
        try:
            response, send_from, destination = self._respond(request, source, local, transport)
            if self.software is not None:
                response.add_string(Attr.SOFTWARE, self.software)
            padding = request.get(Attr.PADDING)
            if padding is not None and response.message_class == MessageClass.SUCCESS:
                # RFC 5780 7.6: pad the response, but never beyond the request's own size.
                unpadded = len(encode(response)) + 8 * fingerprint + 4
                room = min(len(data), MAX_PADDED_RESPONSE) - unpadded
                if room >= 4:
                    response.add_padding(min(len(padding), room) // 4 * 4)
            out = encode(response, fingerprint=fingerprint)
        except StunError as e:
            # A request that decodes but whose attributes are malformed.
            self.stats.malformed += 1
            self.refused("badAttribute", now, f"{source.host}: {e}")
            try:
                response = request.error_response(400, "Bad Request")
                out = encode(response, fingerprint=fingerprint)
            except StunError:
                return None
            send_from, destination = local, source
        if response.message_class == MessageClass.ERROR:
            code = response.get_error_code()
            self.stats.errors[code[0] if code else 0] += 1
        self.stats.responses += 1
        return Reply(out, send_from, destination)

    def _respond(
        self, request: StunMessage, source: Address, local: Address, transport: str
    ) -> tuple[StunMessage, Address, Address]:
        if request.method != Method.BINDING:
            # The registered reason phrase: a longer one only adds amplification.
            return request.error_response(400), local, source
        unknown = request.unknown_comprehension_required(_UNDERSTOOD)
        change = request.get_change_request()
        response_port = request.get_response_port()
        not_served: list[int] = []
        if change is not None and any(change) and (not self.rfc5780 or transport != "udp"):
            not_served.append(Attr.CHANGE_REQUEST)
        if response_port is not None and transport != "udp":
            not_served.append(Attr.RESPONSE_PORT)
        if unknown or not_served:
            error = request.error_response(420, "Unknown Attribute")
            error.add_unknown_attributes(unknown + not_served)
            return error, local, source
        send_from = local
        if change is not None and any(change):
            send_from = self._other(local, change[0], change[1])
        destination = source
        if response_port is not None:
            if response_port == 0:
                return request.error_response(400, "RESPONSE-PORT 0"), local, source
            destination = Address(source.host, response_port)
        response = request.success_response()
        if request.is_rfc3489:
            response.add_address(Attr.MAPPED_ADDRESS, source)
            response.add_address(RFC3489_SOURCE_ADDRESS, send_from)
            if self.alternate is not None:
                response.add_address(RFC3489_CHANGED_ADDRESS, self._other(local, True, True))
            return response, send_from, destination
        response.add_address(Attr.XOR_MAPPED_ADDRESS, source)
        self._add_rfc5780(response, local, send_from)
        return response, send_from, destination

    def _add_rfc5780(self, response: StunMessage, local: Address, send_from: Address) -> None:
        """OTHER-ADDRESS and RESPONSE-ORIGIN, in RFC 5780 mode (section 6)."""
        if self.alternate is not None:
            response.add_address(Attr.OTHER_ADDRESS, self._other(local, True, True))
            response.add_address(Attr.RESPONSE_ORIGIN, send_from)


class StunDatagramProtocol(DatagramProtocol):
    """One UDP socket of the server; hands datagrams to the shared responder.

    A plain Binding request (most of the traffic) takes the responder's fast path
    (:meth:`StunResponder.answer_plain_binding`) and its answer goes straight to the
    socket's ``sendto``, back to the address it came from: Twisted's ``Port.write``
    would check again, at about 2 µs a datagram, that this address is an IP address.
    Everything else goes through :meth:`StunServerService.received`.
    """

    def __init__(self, server: StunServerService, local: Address) -> None:
        self.server = server
        self.local = local
        self._sendto: Callable[[bytes, Any], int] | None = None

    def startProtocol(self) -> None:
        get_handle = getattr(self.transport, "getHandle", None)
        self._sendto = get_handle().sendto if get_handle is not None else None

    def stopProtocol(self) -> None:
        self._sendto = None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        server = self.server
        host, port = addr[0], addr[1]
        now = server.clock.seconds()
        answer = server.responder.answer_plain_binding(datagram, host, port, self.local, now)
        if answer is None:
            server.received(datagram, Address(host, port), self.local, "udp")
        elif answer:
            if self._sendto is None:
                server.send(answer, self.local, Address(host, port))
                return
            try:
                self._sendto(answer, addr)
            except OSError as e:
                server.responder.refused("sendFailed", now, f"{format_address((host, port))}: {e}")


@implementer(IPushProducer)
class StunStreamProtocol(Protocol):
    """A STUN-over-TCP connection (RFC 8489 6.2.2): frames, answers on the same connection.

    Memory per connection is bounded both ways: an incomplete frame holds at most
    ``max_frame`` bytes (the framer refuses longer ones), and the protocol is the
    transport's streaming producer, so once more than the service's ``max_tcp_output``
    bytes of answers wait for a client that does not read, the transport pauses it and
    the connection is aborted (its buffered answers discarded) and counted
    (``tcpSlowReaders``). The kernel's send buffer for the socket is set to
    ``tcp_send_buffer`` too, so the kernel does not queue megabytes in its place.
    """

    max_frame = 4096

    def __init__(self, server: StunServerService, local: Address) -> None:
        self.server = server
        self.local = local
        self._framer = StreamFramer(max_size=self.max_frame)
        self._idle: Any = None
        self._dropped = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.server.tcp_connections += 1
        if self.server.tcp_connections > self.server.max_tcp_connections:
            self.server.responder.stats.ignored += 1
            self._refused("tcpFull", "too many connections")
            self.transport.loseConnection()
            return
        if hasattr(self.transport, "bufferSize"):
            # The point past which FileDescriptor.write pauses its producer: us.
            self.transport.bufferSize = self.server.max_tcp_output
        if self.server.tcp_send_buffer is not None and hasattr(self.transport, "getHandle"):
            sock = self.transport.getHandle()
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.server.tcp_send_buffer)
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._reset_idle()

    def _refused(self, reason: str, detail: str) -> None:
        self.server.responder.refused(reason, self.server.clock.seconds(), detail)

    def _reset_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = self.server.clock.callLater(self.server.tcp_idle_timeout, self._timeout)

    def _timeout(self) -> None:
        self._idle = None
        assert self.transport is not None
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self._dropped:
            return
        try:
            frames = self._framer.feed(data)
        except StunDecodeError as e:
            self.server.responder.stats.malformed += 1
            self._refused("tcpFraming", str(e))
            self.transport.loseConnection()
            return
        peer = self.transport.getPeer()
        source = Address(peer.host, peer.port)  # type: ignore[attr-defined]
        responder = self.server.responder
        now = self.server.clock.seconds()
        for frame in frames:
            if frame[0] & 0xC0:
                # ChannelData (RFC 8656 12.5) frames well, but this server is no TURN relay:
                # close rather than decode thousands of 4-byte frames one by one.
                self.server.responder.stats.malformed += 1
                self._refused("tcpFraming", "ChannelData on a STUN-only connection")
                self.transport.loseConnection()
                self._dropped = True
                return
            answer = responder.answer_plain_binding(
                frame, source.host, source.port, self.local, now, "tcp"
            )
            if answer is None:
                reply = responder.handle(frame, source, self.local, now, "tcp")
                answer = reply.data if reply is not None else None
            if answer:
                self.send_reply(answer)
            if self._dropped:
                return
        self._reset_idle()

    def send_reply(self, data: bytes) -> None:
        """Write one answer to the client (this may pause us: see `pauseProducing`)."""
        assert self.transport is not None
        self.transport.write(data)

    # -- IPushProducer: the transport tells us when too much waits to be sent --------

    def pauseProducing(self) -> None:
        """More than ``max_tcp_output`` bytes wait for the client: drop the connection."""
        if self._dropped:
            return
        self._dropped = True
        self.server.responder.stats.tcp_slow_readers += 1
        peer = self.transport.getPeer() if self.transport is not None else None
        self._refused("tcpSlowReader", str(getattr(peer, "host", "")))
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        """Nothing to do: a paused connection has been dropped."""

    def stopProducing(self) -> None:
        """Nothing to do: the connection is going away."""

    def connectionLost(self, reason: Any = None) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self.server.stream_closed(self)


class _StreamFactory(Factory):
    def __init__(self, server: StunServerService, local: Address) -> None:
        self.server = server
        self.local = local

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self.server.stream_protocol(self.server, self.local)


class StunServerService(MultiService):
    """Listens on every address of a :class:`StunResponder`, over UDP and optionally TCP.

    With port 0 the primary port is chosen by the kernel, and the alternate port too; the
    responder is updated with the ports actually bound, so tests can use ephemeral ports.

    Per STUN/TCP connection at most ``max_tcp_output`` bytes of answers are buffered (a
    client that lets more pile up is dropped) and the socket's kernel send buffer is
    ``tcp_send_buffer`` bytes (None: the kernel's default, which grows to megabytes).

    A child ``TimerService`` (``twisted.application.internet``) writes the
    responder's refusals summary every ``log_interval`` seconds (as the signaling
    server's sweeper runs), and stopping writes what is left.
    """

    name = "stun"
    stream_protocol: type[StunStreamProtocol] = StunStreamProtocol

    def __init__(
        self,
        responder: StunResponder,
        reactor: Any,
        tcp: bool = True,
        max_tcp_connections: int = 1000,
        tcp_idle_timeout: float = 30.0,
        reuse_port: bool = False,
        max_tcp_output: int = 65536,
        tcp_send_buffer: int | None = 16384,
    ) -> None:
        super().__init__()
        self.responder = responder
        self.reuse_port = reuse_port
        """Share the ports with other worker processes (``SO_REUSEPORT``)."""
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.tcp = tcp
        self.max_tcp_connections = max_tcp_connections
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_output = max_tcp_output
        self.tcp_send_buffer = tcp_send_buffer
        self.tcp_connections = 0
        self._udp: dict[Address, Any] = {}
        self._wildcard: list[str] = []
        self._ports: list[IListeningPort] = []
        self._summaries = TimerService(responder.log_interval, self._log_refusals)
        self._summaries.clock = self.clock
        self._summaries.setServiceParent(self)

    def stream_closed(self, protocol: StunStreamProtocol) -> None:
        """A STUN/TCP connection has gone (called by its protocol)."""
        self.tcp_connections -= 1

    def _interfaces(self, host: str) -> list[str]:
        """Where to listen for ``host``: both families for "" (every interface)."""
        return [host] if host else self._wildcard

    def _bind_ports(self) -> None:
        r = self.responder
        self._wildcard = listen_interfaces("", "STUN server") if not r.primary.host else []
        if r.primary.port == 0:
            port = self._listen_udp(Address(r.primary.host, 0))
            r.primary = Address(r.primary.host, port)
        if r.alternate is not None and r.alternate.port == 0:
            # The primary address's second socket picks the alternate port.
            port = self._listen_udp(Address(r.primary.host, 0))
            r.alternate = Address(r.alternate.host, port)
        if r.second_port == 0:
            r.second_port = self._listen_udp(Address(r.primary.host, 0))
        for local in r.local_addresses():
            interfaces = self._interfaces(local.host)
            if any(Address(i, local.port) not in self._udp for i in interfaces):
                self._listen_udp(local)
            if self.tcp:
                self._ports.extend(listen_on_each(self._listen_tcp, local.port, interfaces))

    def _listen_tcp(self, port: int, interface: str) -> IListeningPort:
        factory = _StreamFactory(self, Address(interface, port))
        return listen_tcp(self.reactor, port, factory, interface, reuse_port=self.reuse_port)

    def _listen_udp(self, local: Address) -> int:
        """Listen on UDP ``local`` (both families when its host is ""); the port bound."""

        def listen(port: int, interface: str) -> IListeningPort:
            proto = StunDatagramProtocol(self, Address(interface, port))
            reuse = self.reuse_port and port != 0
            listening: Any = listen_udp(self.reactor, port, proto, interface, reuse_port=reuse)
            proto.local = Address(interface, listening.getHost().port)
            return cast(IListeningPort, listening)

        ports = listen_on_each(listen, local.port, self._interfaces(local.host))
        for listening in ports:
            self._udp[listening.protocol.local] = listening  # type: ignore[attr-defined]
            self._ports.append(listening)
        return int(ports[0].getHost().port)  # type: ignore[attr-defined]

    def listening_on(self) -> list[Address]:
        """Every local UDP address listened on (both families for ""; after start)."""
        return list(self._udp)

    def startService(self) -> None:
        r = self.responder
        configured = (r.primary, r.alternate, r.second_port)
        # A port the kernel picks for UDP is then asked for TCP (and the other family),
        # where another socket may hold it: bind everything again on fresh ports.
        kernel_picks = 0 in (r.primary.port, r.second_port) or (
            r.alternate is not None and r.alternate.port == 0
        )
        attempts = 5 if kernel_picks else 1
        for attempt in range(attempts):
            try:
                self._bind_ports()
                break
            except Exception as e:
                for p in self._ports:
                    p.stopListening()
                self._ports.clear()
                self._udp.clear()
                r.primary, r.alternate, r.second_port = configured
                if not isinstance(e, CannotListenError) or attempt == attempts - 1:
                    raise
        super().startService()
        _log.info(
            "STUN server on {addresses} ({modes})",
            addresses=", ".join(format_address(a) for a in self._udp),
            modes="UDP+TCP" if self.tcp else "UDP",
        )

    def _log_refusals(self) -> None:
        """Write the refusals summary that is due (every ``log_interval``, and at stop)."""
        try:
            self.responder.log_refusals(self.clock.seconds())
        except Exception:
            _log.failure("logging the STUN refusals summary failed")

    def stopService(self) -> defer.Deferred[Any]:
        # A TimerService that never started cannot stop (startService may have raised).
        timer_stopped = super().stopService() if self.running else defer.succeed(None)
        self._log_refusals()
        ports, self._ports = self._ports, []
        self._udp.clear()
        return defer.gatherResults(
            [timer_stopped, *(defer.maybeDeferred(p.stopListening) for p in ports)],
            consumeErrors=True,
        )

    def received(self, datagram: bytes, source: Address, local: Address, transport: str) -> None:
        """Answer a datagram that arrived on ``local``."""
        reply = self.responder.handle(datagram, source, local, self.clock.seconds(), transport)
        if reply is not None:
            self.send(reply.data, reply.local, reply.destination)

    def send(self, data: bytes, local: Address, destination: Address) -> None:
        """Send ``data`` to ``destination`` from the UDP socket bound to ``local``."""
        port = self._udp.get(local)
        if port is None:
            return
        try:
            port.write(data, (destination.host, destination.port))
        except OSError as e:
            detail = f"{format_address(destination)}: {e}"
            self.responder.refused("sendFailed", self.clock.seconds(), detail)

    def addresses(self) -> Iterator[Address]:
        """The addresses listened on (after start)."""
        return iter(self.responder.local_addresses())


def _second_port(port: int, alternate_port: int) -> int | None:
    if port == 0:
        return 0  # ephemeral primary (tests): an ephemeral second port too
    return alternate_port if alternate_port not in (0, port) else None


def make_stun_service(
    interface: str = "",
    port: int = 3478,
    alternate_address: str | None = None,
    alternate_port: int = 3479,
    tcp: bool = True,
    reactor: Any = None,
    rate: float = 50.0,
    burst: float = 100.0,
    reuse_port: bool = False,
    software: str | None = None,
) -> MultiService:
    """The daemon's STUN service; RFC 5780 mode when ``alternate_address`` is given.

    Without it the server still listens on ``alternate_port`` of its one address (0 or
    the same port as ``port``: not at all), as a plain second destination; with ``port``
    0 both ports are chosen by the kernel. ``software``: the SOFTWARE attribute of every
    response (default none).
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    primary = Address(interface, port)
    alternate = Address(alternate_address, alternate_port) if alternate_address else None
    if alternate is not None and ip_version(alternate.host) != ip_version(interface):
        raise ValueError("the alternate STUN address must be of the same family as the primary")
    top = MultiService()
    top.setName("stun")
    StunServerService(
        StunResponder(
            primary,
            alternate,
            rate=rate,
            burst=burst,
            second_port=_second_port(port, alternate_port),
            software=software,
        ),
        reactor,
        tcp=tcp,
        reuse_port=reuse_port,
    ).setServiceParent(top)
    return top

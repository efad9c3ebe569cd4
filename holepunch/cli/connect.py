# -*- test-case-name: tests.integration.test_connect_cli -*-
"""``holepunch connect``: reach a peer through NATs, then carry bytes like ``nc``.

Both sides generate an identity for the run, exchange its fingerprint through
signaling, and talk QUIC (TLS 1.3) over the punched path; each side checks that the
other's certificate is the one it signaled.

By default the command carries one encrypted, reliable byte stream, binary-safe: stdin
goes to the peer, the peer's bytes go to stdout. End of stdin half-closes the stream
(the peer's output ends); the command exits 0 once both directions have ended: its own
input sent and acknowledged, the peer's input received and written out. Reading stdin
is paused while the peer is slow (the stream's send buffer is full), and the stream is
paused while stdout is backed up, so memory stays bounded.

With ``--datagram`` each line of stdin goes to the peer as one encrypted QUIC datagram
(unreliable, like ``nc -u``, and paced by ``--rate``); each datagram from the peer is
written to stdout as a line. End of stdin sends an end marker (an empty datagram) and
closes the connection; the peer's command exits too.

With ``--json`` the first line of stdout is ``{"method", "local", "remote",
"elapsed_ms", "rtt_ms", "probes_sent", "birthday_sockets", "security", "fingerprint",
"peer_fingerprint"}``. Later events are JSON lines too: ``{"event": "path-changed",
"method", "local", "remote", "reason"}`` when ICE moves the session to another path
(``reason``: ``upgrade`` from a relay, ``restart``, ``better-path``, ``recovery`` after a
lost relay), ``{"event": "relay-lost", "detail"}`` / ``{"event": "relay-reallocated",
"detail"}`` when the TURN server lost our relay and a new one replaced it, ``{"event":
"ice-restart", "state", "reason", "generation"}`` when an ICE restart starts (``state``
``started``; ``reason`` ``consent``, ``address-change``, ``peer`` or ``application``) and
ends (``completed`` or ``abandoned``, with ``elapsed_ms``), and at the end ``{"event":
"closed", "bytes_sent", "bytes_received", "dropped_unauthenticated", ...,
"ice_restarts", "ice_restarts_completed", "path_changes", "consent_failures"}`` (the
session's and the ICE agent's counters: ``dropped_unauthenticated`` counts datagrams that
came from the peer's address but did not authenticate). In the stream mode they go to
stderr, so that stdout carries the peer's bytes and nothing else; with ``--datagram`` to
stdout.

Exit status: 0 after a clean end, 1 with a one-line reason on stderr naming the stage
that failed (``signaling``, ``peer``, ``gathering``, ``candidates``,
``connectivity-checks``, ``nomination``, ``security``, ``connection``), 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from twisted.internet import defer, interfaces, protocol
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from holepunch.addresses import format_address
from holepunch.cli.peer import (
    SecurePeer,
    StageError,
    add_peer_arguments,
    carry_one_stream,
    with_secure_peer,
)

if TYPE_CHECKING:
    from holepunch.quic.session import QuicSession

__all__ = ["StageError", "add_arguments", "connect_command", "run"]

MAX_LINE = 60000
END_MARKER = b""
#: What the offerer writes first on the stream, so that the stream exists for the
#: acceptor even before the offerer has input (QUIC announces a stream with its
#: first byte), and so that a ``connect`` never talks to a ``send`` by mistake.
STREAM_PREAMBLE = b"holepunch-connect/1\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holepunch connect``."""
    add_peer_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the connection as JSON first")
    parser.add_argument(
        "--datagram",
        action="store_true",
        help="carry lines as encrypted datagrams (unreliable, like nc -u) instead of one "
        "reliable byte stream",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        metavar="N",
        help="with --datagram, send at most N lines a second (2000), so a burst does not "
        "overflow the peer",
    )


class _Lines(LineOnlyReceiver):
    """stdin lines to the session's datagrams (paced), the peer's datagrams to stdout.

    Lines are sent at most ``rate`` a second, in ticks of 10 ms, and stdin is paused
    while many wait: a burst of datagrams larger than the receiver's socket buffer would
    be lost on the way, as with any UDP tool, and pacing keeps every line arriving.
    """

    delimiter = b"\n"
    TICK = 0.01

    def __init__(
        self,
        reactor: Any,
        session: QuicSession,
        done: defer.Deferred[str],
        err: TextIO,
        rate: float,
    ) -> None:
        self.reactor = reactor
        self.session = session
        self.done = done
        self.err = err
        self.MAX_LENGTH = min(MAX_LINE, session.max_datagram_payload - 1)
        self.per_tick = max(1, int(rate * self.TICK))
        self.queue: list[bytes] = []
        self.ended = False
        self.paused = False
        self._timer: Any = None

    def lineReceived(self, line: bytes) -> None:
        self.queue.append(line + b"\n")  # never empty: an empty datagram is the end
        if len(self.queue) > 512 and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is None:
            self._timer = self.reactor.callLater(0, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.session.closed is not None:
            return
        batch, self.queue = self.queue[: self.per_tick], self.queue[self.per_tick :]
        for data in batch:
            self.session.send_datagram(data)
        if self.paused and len(self.queue) < 128 and self.transport is not None:
            self.paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        if self.queue:
            self._timer = self.reactor.callLater(self.TICK, self._tick)
        elif self.ended:
            self._finish()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.err.write(
            f"holepunch connect: line longer than {self.MAX_LENGTH} bytes dropped "
            "(a datagram's limit; without --datagram any length goes)\n"
        )
        self.err.flush()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.ended = True
        if not self.queue:
            self._finish()

    def _finish(self) -> None:
        # End of stdin and everything sent: tell the peer (three times: datagrams may
        # be lost; closing the session tells it too).
        if self.session.closed is None:
            for _ in range(3):
                self.session.send_datagram(END_MARKER)
        if not self.done.called:
            self.done.callback("end of input")

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class _StdinProducer:
    """stdin as the stream's producer: the stream pauses and resumes reading it.

    ``stopProducing`` only stops reading: the stream stops its producer when it ends,
    and stdout (the same ``StandardIO``) must still be flushed.
    """

    def __init__(self, stdio: Any) -> None:
        self.stdio = stdio

    def pauseProducing(self) -> None:
        self.stdio.pauseProducing()

    def resumeProducing(self) -> None:
        self.stdio.resumeProducing()

    def stopProducing(self) -> None:
        self.stdio.pauseProducing()


@implementer(interfaces.IHalfCloseableProtocol)
class _Terminal(protocol.Protocol):
    """Our side of stdio: stdin bytes to the stream, EOF to a half-close."""

    def __init__(self, bridge: _StreamBridge) -> None:
        self.bridge = bridge
        self.flushed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        stream = self.bridge.transport
        assert stream is not None and self.transport is not None
        stream.registerProducer(_StdinProducer(self.transport), True)  # type: ignore[attr-defined]
        # stdout backed up: the stream stops delivering, and the peer stops sending.
        self.transport.registerProducer(stream, True)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.bridge.transport is not None:
            self.bridge.transport.write(data)

    def readConnectionLost(self) -> None:
        stream = self.bridge.transport
        if stream is not None:
            stream.unregisterProducer()  # type: ignore[attr-defined]
            stream.loseWriteConnection()  # type: ignore[attr-defined]

    def writeConnectionLost(self) -> None:
        self.bridge.output_closed()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.flushed.called:
            self.flushed.callback(None)


@implementer(interfaces.IHalfCloseableProtocol)
class _StreamBridge(protocol.Protocol):
    """The stream's side: the peer's bytes to stdout; ``ended`` fires once both
    directions have ended (the peer's FIN received, ours sent), and fails with a
    :class:`StageError` if the stream breaks first."""

    def __init__(self, offerer: bool, start_stdio: Any, session: Any = None) -> None:
        self.offerer = offerer
        self.session = session
        self.start_stdio = start_stdio
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.preamble = b"" if offerer else STREAM_PREAMBLE
        self.pending = b""
        self.read_done = False
        self.write_done = False
        self.discard_output = False
        self.stdio: Any = None
        self.terminal: _Terminal | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.offerer:
            self.transport.write(STREAM_PREAMBLE)
        self.terminal = _Terminal(self)
        self.stdio = self.start_stdio(self.terminal)

    def dataReceived(self, data: bytes) -> None:
        if self.preamble:
            self.pending += data
            if len(self.pending) < len(self.preamble):
                if not self.preamble.startswith(self.pending):
                    self._fail("the peer is not a holepunch connect (stream preamble)")
                return
            if not self.pending.startswith(self.preamble):
                self._fail("the peer is not a holepunch connect (stream preamble)")
                return
            data, self.pending, self.preamble = self.pending[len(self.preamble) :], b"", b""
            if not data:
                return
        if self.stdio is not None and not self.discard_output:
            self.stdio.write(data)

    def output_closed(self) -> None:
        """stdout is gone (a closed pipe): what the peer sends is dropped."""
        self.discard_output = True

    def readConnectionLost(self) -> None:
        if self.preamble:
            self._fail("the peer ended before the stream preamble")
            return
        self.read_done = True
        self._check()

    def writeConnectionLost(self) -> None:
        self.write_done = True
        self._check()

    def _check(self) -> None:
        if self.read_done and self.write_done and not self.ended.called:
            self.ended.callback(None)

    def _fail(self, why: str) -> None:
        if not self.ended.called:
            self.ended.errback(StageError("connection", why))
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.ended.called:
            closed = getattr(self.session, "closed", None)
            if closed is not None:  # the session's reason says more than the stream's
                why = str(closed)
            else:
                why = reason.getErrorMessage() if reason is not None else "stream lost"
            self.ended.errback(StageError("connection", why))


async def connect_command(
    reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO, stdio: Any = None
) -> int:
    """Run the command; returns the exit status.

    ``stdio(protocol)`` connects a protocol to the terminal and returns its transport
    (``twisted.internet.stdio.StandardIO`` by default; tests pass their own).
    """

    async def body(peer: SecurePeer) -> int:
        if args.json:
            out.write(json.dumps(peer.describe()) + "\n")
            out.flush()
        try:
            if args.datagram:
                return await _carry_lines(reactor, peer, args, out, err, stdio)
            return await _carry_stream(reactor, peer, args, stdio, err)
        finally:
            if args.json:
                events = out if args.datagram else err
                events.write(json.dumps(_closing_event(peer)) + "\n")
                events.flush()

    return await with_secure_peer(reactor, args, err, "connect", body)


def _start_stdio(reactor: Any, stdio: Any) -> Any:
    from twisted.internet.stdio import StandardIO

    if stdio is not None:
        return stdio
    return lambda proto: StandardIO(proto, reactor=reactor)


def _closing_event(peer: SecurePeer) -> dict[str, Any]:
    """The ``{"event": "closed", ...}`` line: what the session carried and dropped."""
    stats = peer.session.stats
    event: dict[str, Any] = {
        "event": "closed",
        "bytes_sent": stats.bytes_sent,
        "bytes_received": stats.bytes_received,
        "datagrams_sent": stats.datagrams_sent,
        "datagrams_received": stats.datagrams_received,
        "dropped_unauthenticated": stats.dropped_unauthenticated,
        "dropped_not_quic": stats.dropped_not_quic,
    }
    path = peer.path
    ice = getattr(getattr(path, "agent", None), "stats", None)
    if ice is not None:
        event["ice_restarts"] = ice.restarts
        event["ice_restarts_completed"] = ice.restarts_completed
        event["path_changes"] = ice.path_changes
        event["consent_failures"] = ice.consent_failures
    return event


def _path_events(peer: SecurePeer, write: Any) -> None:
    """With ``--json``, a line for each change of path under the session."""

    def changed(c: Any) -> None:
        write(
            json.dumps(
                {
                    "event": "path-changed",
                    "method": c.method,
                    "local": format_address(c.local),
                    "remote": format_address(c.remote),
                    "reason": getattr(c, "path_change_reason", ""),
                }
            )
        )

    def restart(info: Any) -> None:
        line = {
            "event": "ice-restart",
            "state": info.state,
            "reason": info.reason,
            "generation": info.generation,
        }
        if info.state != "started":
            line["elapsed_ms"] = round(info.elapsed * 1000)
        write(json.dumps(line))

    if peer.path is not None and hasattr(peer.path, "on_path_changed"):
        peer.path.on_path_changed(changed)
    if peer.path is not None and hasattr(peer.path, "on_restart"):
        peer.path.on_restart(restart)
    agent = getattr(peer.path, "agent", None)
    if agent is not None and hasattr(agent, "on_relay_event"):
        agent.on_relay_event = lambda kind, detail: write(
            json.dumps({"event": kind, "detail": detail})
        )


async def _carry_stream(
    reactor: Any, peer: SecurePeer, args: argparse.Namespace, stdio: Any, err: TextIO
) -> int:
    session = peer.session
    bridge = _StreamBridge(peer.offerer, _start_stdio(reactor, stdio), session)
    if args.json:

        def event(line: str) -> None:
            err.write(line + "\n")
            err.flush()

        _path_events(peer, event)

    def closed(reason: Exception) -> None:
        if bridge.ended.called:
            return
        if getattr(reason, "error_code", 1) == 0 and bridge.transport is not None:
            # A clean close: the stream decides. Bytes that arrived before it (and the
            # peer's FIN) still reach stdout, or the stream's loss says what was cut.
            return
        bridge.ended.errback(StageError("connection", str(reason)))

    session.on_closed(closed)
    await carry_one_stream(peer, bridge)
    try:
        await bridge.ended
    finally:
        if bridge.stdio is not None:
            try:
                bridge.stdio.unregisterProducer()
            except Exception:
                pass  # stdout already gone
    assert bridge.transport is not None
    stream_id: int = bridge.transport.stream_id  # type: ignore[attr-defined]
    await session.when_acknowledged(stream_id)
    if session.closed is not None and session.closed.error_code != 0:
        raise StageError("connection", session.closed.reason)
    assert bridge.terminal is not None
    bridge.stdio.loseConnection()
    await bridge.terminal.flushed
    return 0


async def _carry_lines(
    reactor: Any,
    peer: SecurePeer,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    stdio: Any,
) -> int:
    from twisted.internet.task import deferLater

    session = peer.session
    done: defer.Deferred[str] = defer.Deferred()
    lines = _Lines(reactor, session, done, err, args.rate)
    output = sys.stdout.buffer if out is sys.stdout else None

    def write(text: str) -> None:
        received(text.encode() + b"\n")

    def received(data: bytes) -> None:
        if data == END_MARKER:
            if not done.called:
                done.callback("peer ended")
            return
        if not data.endswith(b"\n"):
            data += b"\n"
        if output is not None:
            output.write(data)
            output.flush()
        else:
            out.write(data.decode(errors="replace"))

    if args.json:
        _path_events(peer, write)
    session.on_datagram(received)

    def closed(reason: Any) -> None:
        if not done.called:
            # The peer closing cleanly is its end of input too (its end markers may be
            # lost, or still behind its CONNECTION_CLOSE).
            clean = getattr(reason, "by_peer", False) and getattr(reason, "error_code", 1) == 0
            done.callback("peer ended" if clean else str(reason))

    session.on_closed(closed)
    io = _start_stdio(reactor, stdio)(lines)
    how = await done
    lines.stop()
    _close_stdio(io)
    if how not in ("end of input", "peer ended"):
        raise StageError("connection", how)
    await deferLater(reactor, 0, lambda: None)  # the end markers leave before the close
    return 0


def _close_stdio(io: Any) -> None:
    try:
        io.loseConnection()
    except Exception:
        pass


def run(args: argparse.Namespace) -> int:
    """Entry point from :mod:`holepunch.cli`."""
    from holepunch.cli import react

    return react(lambda reactor: connect_command(reactor, args, sys.stdout, sys.stderr))

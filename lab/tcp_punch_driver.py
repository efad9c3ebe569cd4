# -*- test-case-name: tests.integration.test_tcp_punch -*-
"""A TCP hole-punching peer driven through stdin/stdout (lab tests, measurements).

Run in a lab host (``python -m lab.tcp_punch_driver --stun HOST:PORT``), it
reads one JSON command per line on stdin and writes one JSON event per line on stdout;
whoever drives it plays the signaling channel. Commands carry an ``id`` (a session: one
local port, one punch), so one driver can run several sessions at once:

- ``{"id": S, "op": "mapping"}``: learn a TCP mapping from a new port
  (:func:`holepunch.punch.tcp.tcp_mapping`) →
  ``{"id": S, "event": "mapping", "local": [h, p], "mapped": [h, p]}``.
- ``{"id": S, "op": "ping"}`` → ``{"id": S, "event": "pong"}`` (to measure the round trip).
- ``{"id": S, "op": "punch", "remote": [h, p], "start": T, "line": L}``: at ``T`` (an
  absolute ``time.time()``; lab namespaces share the machine's clock) or, with
  ``"delay": D`` instead, ``D`` seconds after reading the command (the DCUtR responder),
  run :func:`holepunch.punch.tcp.simultaneous_open` from the session's port, send ``L``
  and a newline, read one line back →
  ``{"id": S, "event": "result", "ok": true, "method": ..., "via": ..., "local": ...,
  "remote": ..., "attempts": [...], "connect_time": seconds after the moment,
  "peer_line": ...}``, or ``"ok": false`` with ``stage`` and ``error``.

Failures are events too: ``{"id": S, "event": "error", "stage": ..., "error": ...}`` for a
mapping. With ``--once`` it maps a port at start, takes the first line as the punch
(``{"remote": ..., "start": ...}``, no ``op`` needed), prints the result and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, stdio, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from holepunch.punch.tcp import (
    PunchedStream,
    TcpMapping,
    TcpPunchError,
    simultaneous_open,
    tcp_mapping,
)
from holepunch.stun.client import parse_server

LINE_TIMEOUT = 5.0


class _LineExchange(LineOnlyReceiver):
    """Sends one line on connect; ``line`` fires with the first line received."""

    delimiter = b"\n"
    MAX_LENGTH = 4096

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting
        self.line: Deferred[str] = Deferred()

    def connectionMade(self) -> None:
        self.sendLine(self.greeting.encode())

    def lineReceived(self, line: bytes) -> None:
        if not self.line.called:
            self.line.callback(line.decode(errors="replace"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.line.called:
            self.line.errback(reason or Failure(ConnectionError("closed")))


@implementer(IHalfCloseableProtocol)
class Driver(LineOnlyReceiver):
    """Reads commands from stdin, writes events to stdout; ends when stdin ends and all is done."""

    delimiter = b"\n"
    MAX_LENGTH = 65536

    def __init__(self, reactor: Any, options: argparse.Namespace) -> None:
        self.reactor = reactor
        self.options = options
        self.stun = parse_server(options.stun)
        self.mappings: dict[str, TcpMapping] = {}
        self.running: set[Deferred[None]] = set()
        self.finished: Deferred[None] = Deferred()
        self.input_done = False

    def emit(self, event: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(event).encode() + b"\n")

    def connectionMade(self) -> None:
        if self.options.once:
            self.start("", {"op": "mapping"})

    def lineReceived(self, line: bytes) -> None:
        try:
            command = json.loads(line)
            session = str(command.get("id", ""))
        except (ValueError, AttributeError):
            self.emit({"id": "", "event": "error", "stage": "input", "error": repr(line)})
            return
        if "op" not in command and "remote" in command:
            command["op"] = "punch"
        self.start(session, command)

    def start(self, session: str, command: dict[str, Any]) -> None:
        op = command.get("op")
        if op == "ping":
            self.emit({"id": session, "event": "pong"})
            return
        if op == "mapping":
            d = defer.ensureDeferred(self.mapping(session))
        elif op == "punch":
            d = defer.ensureDeferred(self.punch(session, command))
        else:
            self.emit({"id": session, "event": "error", "stage": "input", "error": f"op {op!r}"})
            return
        self.running.add(d)
        d.addErrback(self.crashed, session)
        d.addBoth(self.done, d)

    def crashed(self, failure: Failure, session: str) -> None:
        self.emit({"id": session, "event": "error", "stage": "driver", "error": str(failure)})

    def done(self, _: object, d: Deferred[None]) -> None:
        self.running.discard(d)
        if self.options.once and self.mappings == {} and not self.running:
            self.stop()
        elif self.input_done and not self.running:
            self.stop()

    def stop(self) -> None:
        if not self.finished.called:
            self.finished.callback(None)

    def readConnectionLost(self) -> None:
        self.input_done = True
        if not self.running:
            self.stop()

    def writeConnectionLost(self) -> None:
        self.stop()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.stop()

    async def mapping(self, session: str) -> None:
        try:
            mapping = await tcp_mapping(
                self.reactor, self.stun, interface=self.options.interface, timeout=5.0
            )
        except TcpPunchError as e:
            self.emit({"id": session, "event": "error", "stage": e.stage, "error": str(e)})
            return
        self.mappings[session] = mapping
        self.emit(
            {
                "id": session,
                "event": "mapping",
                "local": list(mapping.local),
                "mapped": list(mapping.mapped),
            }
        )

    async def punch(self, session: str, command: dict[str, Any]) -> None:
        mapping = self.mappings.pop(session, None)
        if mapping is None:
            self.emit({"id": session, "event": "error", "stage": "input", "error": "no mapping"})
            return
        now = self.reactor.seconds()
        if "start" in command:
            start_at = now + (float(command["start"]) - time.time())
        else:
            start_at = now + float(command.get("delay", 0.0))
        remote = (str(command["remote"][0]), int(command["remote"][1]))
        greeting = str(command.get("line", f"hello from {mapping.mapped[0]}:{mapping.mapped[1]}"))
        protocol_factory = Factory.forProtocol(lambda: _LineExchange(greeting))
        result: dict[str, Any] = {"id": session, "event": "result", "local_port": mapping.local[1]}
        try:
            stream: PunchedStream = await simultaneous_open(
                self.reactor,
                mapping.local[1],
                remote,
                start_at=start_at,
                attempts=self.options.attempts,
                interval=self.options.interval,
                connect_timeout=self.options.connect_timeout,
                interface=self.options.interface,
                listen=self.options.listen,
                protocol_factory=protocol_factory,
            )
        except TcpPunchError as e:
            result.update(
                ok=False,
                stage=e.stage,
                error=str(e),
                attempts=[o.result for o in e.attempts],
                elapsed=self.reactor.seconds() - start_at,
            )
            self.emit(result)
            return
        result.update(
            method=stream.method,
            via=stream.via,
            local=list(stream.local),
            remote=list(stream.remote),
            attempts=[o.result for o in stream.attempts],
            connect_time=stream.connected - start_at,
        )
        exchange = stream.protocol
        assert isinstance(exchange, _LineExchange)
        exchange.line.addTimeout(LINE_TIMEOUT, self.reactor)
        try:
            result["peer_line"] = await exchange.line
            result["ok"] = True
        except Exception as e:
            result.update(ok=False, stage="exchange", error=repr(e))
        stream.transport.loseConnection()
        self.emit(result)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.tcp_punch_driver")
    parser.add_argument("--stun", required=True, help="STUN server HOST:PORT (TCP)")
    parser.add_argument("--interface", default="", help="local address to bind")
    parser.add_argument("--attempts", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--connect-timeout", type=float, default=1.0)
    parser.add_argument(
        "--no-listen", dest="listen", action="store_false", help="do not accept on the port"
    )
    parser.add_argument("--once", action="store_true", help="one mapping, one punch, exit")
    return parser.parse_args(argv)


async def _main(reactor: Any, argv: Sequence[str]) -> None:
    options = parse_args(argv)
    driver = Driver(reactor, options)
    stdio.StandardIO(driver, reactor=reactor)
    await driver.finished
    # Let the last writes and closes go out before the reactor stops.
    await task.deferLater(reactor, 0.05, lambda: None)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    task.react(lambda reactor: defer.ensureDeferred(_main(reactor, args)))


if __name__ == "__main__":
    main()

# -*- test-case-name: tests.integration.test_connect_cli -*-
"""``holepunch connect``: reach a peer through NATs, then carry lines like ``nc -u``.

Each line of stdin goes to the peer as one datagram; each datagram from the peer is
written to stdout as a line. End of stdin sends an end marker (an empty datagram) and
closes the connection; the peer's command exits too. With ``--json`` the first line of
stdout is ``{"method", "local", "remote", "elapsed_ms", "rtt_ms"}``.

Exit status: 0 after a clean end, 1 with a one-line reason on stderr naming the stage
that failed (``signaling``, ``peer``, ``gathering``, ``candidates``,
``connectivity-checks``, ``nomination``, ``connection``), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from twisted.internet import defer
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from holepunch.ice.connection import Channel

MAX_LINE = 60000
END_MARKER = b""


class StageError(Exception):
    """A failure with the stage it happened in."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holepunch connect``."""
    parser.add_argument("--signaling", required=True, metavar="URL", help="ws:// or wss:// URL")
    parser.add_argument("--id", required=True, metavar="ME", help="this peer's id")
    parser.add_argument("--room", metavar="R", help="join this room first")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--to", metavar="PEER", help="offer a connection to PEER")
    who.add_argument("--accept", action="store_true", help="wait for a peer's offer")
    parser.add_argument(
        "--stun-server", action="append", default=[], metavar="HOST:PORT", help="repeatable"
    )
    parser.add_argument(
        "--turn-server",
        action="append",
        default=[],
        metavar="URI",
        help="TURN relay, repeatable, tried in order: turn:USER:PASS@HOST:PORT[?transport=tcp] "
        "or turns:USER:PASS@HOST:PORT (TLS)",
    )
    parser.add_argument(
        "--no-tcp", action="store_true", help="no TCP hole punching (UDP and TURN only)"
    )
    parser.add_argument(
        "--no-port-mapping",
        action="store_true",
        help="do not ask the router for a port mapping (PCP, NAT-PMP, UPnP)",
    )
    parser.add_argument(
        "--relay-wait",
        type=float,
        default=None,
        metavar="S",
        help="seconds a working relay waits for a direct path before it is used (default 2, "
        "12 while port prediction or birthday probing runs); a direct path found later "
        "still takes over",
    )
    parser.add_argument(
        "--host-address",
        action="append",
        default=None,
        metavar="IP",
        help="local address(es) to offer as host candidates (default: every interface)",
    )
    parser.add_argument("--token", default=os.environ.get("P2P_AUTH_TOKEN"), help="auth token")
    parser.add_argument("--json", action="store_true", help="print the connection as JSON first")
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds to connect (30)"
    )
    parser.add_argument("--retries", type=int, default=0, help="more ICE attempts on failure")
    parser.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        metavar="N",
        help="send at most N lines a second (2000), so a burst does not overflow the peer",
    )


class _Lines(LineOnlyReceiver):
    """stdin lines to the connection (paced), the connection's datagrams to stdout.

    Lines are sent at most ``rate`` a second, in ticks of 10 ms, and stdin is paused
    while many wait: a burst of datagrams larger than the receiver's socket buffer would
    be lost on the way, as with any UDP tool, and pacing keeps every line arriving.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    TICK = 0.01

    def __init__(
        self, reactor: Any, connection: Any, done: defer.Deferred[str], err: TextIO, rate: float
    ) -> None:
        self.reactor = reactor
        self.connection = connection
        self.done = done
        self.err = err
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
        if self.connection.closed:
            return
        batch, self.queue = self.queue[: self.per_tick], self.queue[self.per_tick :]
        for data in batch:
            self.connection.send(data)
        if self.paused and len(self.queue) < 128 and self.transport is not None:
            self.paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        if self.queue:
            self._timer = self.reactor.callLater(self.TICK, self._tick)
        elif self.ended:
            self._finish()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.err.write(f"holepunch connect: line longer than {MAX_LINE} bytes dropped\n")
        self.err.flush()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.ended = True
        if not self.queue:
            self._finish()

    def _finish(self) -> None:
        # End of stdin and everything sent: tell the peer (three times: it is UDP).
        if not self.connection.closed:
            for _ in range(3):
                self.connection.send(END_MARKER)
        if not self.done.called:
            self.done.callback("end of input")

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


async def connect_command(
    reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO, stdio: Any = None
) -> int:
    """Run the command; returns the exit status."""
    from holepunch.ice.config import (
        CheckConfig,
        GatheringConfig,
        IceConfig,
        RelayConfig,
        TcpConfig,
    )
    from holepunch.ice.events import IceError
    from holepunch.ice.negotiation import Negotiator
    from holepunch.signaling.client import SignalingClient
    from holepunch.stun.client import parse_server
    from holepunch.turn import parse_turn_uri

    try:
        stun_servers = [parse_server(s) for s in args.stun_server]
        turn_servers = [parse_turn_uri(uri) for uri in args.turn_server]
        if not turn_servers:
            turn_servers = _turn_from_environment()
    except ValueError as e:
        err.write(f"holepunch connect: {e}\n")
        return 2
    started = reactor.seconds()
    deadline = started + args.timeout
    client = SignalingClient(args.signaling, args.id, reactor=reactor, token=args.token)
    client.startService()
    negotiator: Negotiator | None = None
    connection: Any = None
    try:
        try:
            registering = client.register()
            registering.addTimeout(args.timeout, reactor)
            await registering
            if args.room:
                await client.join_room(args.room)
        except Exception as e:
            raise StageError("signaling", f"{args.signaling}: {_reason(e)}") from e
        relay = RelayConfig(servers=turn_servers)
        if args.relay_wait is not None:
            relay = RelayConfig(
                servers=turn_servers, wait=args.relay_wait, wait_hard=args.relay_wait
            )
        config = IceConfig(
            gathering=GatheringConfig(
                stun_servers=stun_servers,
                addresses=args.host_address,
                port_mapping=not args.no_port_mapping,
            ),
            checks=CheckConfig(connection_timeout=max(1.0, deadline - reactor.seconds())),
            relay=relay,
            tcp=TcpConfig(enabled=not args.no_tcp),
        )
        negotiator = Negotiator(reactor, client, config, max_retries=args.retries)
        attempt_started = reactor.seconds()
        if args.accept:
            waiting = negotiator.accept()
            waiting.addTimeout(max(0.1, deadline - reactor.seconds()), reactor)
            try:
                connection = await waiting
            except defer.TimeoutError:
                raise StageError("peer", "no offer arrived in time") from None
        else:
            connection = await negotiator.connect_when_present(
                args.to, max(0.1, deadline - reactor.seconds())
            )
        elapsed = reactor.seconds() - attempt_started
        if args.json:
            out.write(
                json.dumps(
                    {
                        "method": connection.method,
                        "local": f"{connection.local[0]}:{connection.local[1]}",
                        "remote": f"{connection.remote[0]}:{connection.remote[1]}",
                        "elapsed_ms": round(elapsed * 1000, 1),
                        "rtt_ms": round((connection.rtt or 0) * 1000, 2),
                        "probes_sent": _stat(connection, "probes_sent"),
                        "birthday_sockets": _stat(connection, "birthday_sockets"),
                    }
                )
                + "\n"
            )
            out.flush()

            def upgraded(c: Any) -> None:
                out.write(
                    json.dumps(
                        {
                            "event": "path-changed",
                            "method": c.method,
                            "local": f"{c.local[0]}:{c.local[1]}",
                            "remote": f"{c.remote[0]}:{c.remote[1]}",
                        }
                    )
                    + "\n"
                )
                out.flush()

            if hasattr(connection, "on_path_changed"):
                connection.on_path_changed(upgraded)
        return await _carry(reactor, connection, out, err, stdio, args.rate)
    except (StageError, IceError) as e:
        err.write(f"holepunch connect: {e}\n")
        return 1
    except Exception as e:
        err.write(f"holepunch connect: {type(e).__name__}: {e}\n")
        return 1
    finally:
        if connection is not None and not connection.closed:
            await connection.close()
        if negotiator is not None:
            await negotiator.stop()
        await client.stopService()


def _turn_from_environment() -> list[Any]:
    """TURN servers from ``P2P_TURN_SERVERS`` / ``P2P_TURN_USERNAME`` / ``P2P_TURN_PASSWORD``
    (used when no ``--turn-server`` is given); a bad value raises ValueError naming it."""
    from holepunch.config import environment_values

    servers: list[Any] = environment_values(os.environ).get("turn_servers", [])
    return servers


def _stat(connection: Channel, name: str) -> int:
    """One counter of the ICE agent under ``connection`` (0 for a TCP-punched
    connection, which has no agent, or an agent that keeps none)."""
    from holepunch.ice.connection import PeerConnection

    if not isinstance(connection, PeerConnection):
        return 0
    stats = getattr(connection.agent, "stats", None)
    return int(getattr(stats, name)) if stats is not None else 0


def _reason(e: BaseException) -> str:
    if isinstance(e, defer.TimeoutError):
        return "no answer from the signaling server"
    return str(e) or type(e).__name__


async def _carry(
    reactor: Any, connection: Any, out: TextIO, err: TextIO, stdio: Any, rate: float
) -> int:
    from twisted.internet.stdio import StandardIO

    done: defer.Deferred[str] = defer.Deferred()
    lines = _Lines(reactor, connection, done, err, rate)
    output = sys.stdout.buffer if out is sys.stdout else None

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

    connection.on_datagram(received)
    lost: list[str] = []

    def disconnected(reason: str) -> None:
        lost.append(reason)
        if not done.called:
            done.callback(reason)

    connection.on_disconnected(disconnected)
    io = stdio(lines) if stdio is not None else StandardIO(lines, reactor=reactor)
    how = await done
    lines.stop()
    if how not in ("end of input", "peer ended"):
        err.write(f"holepunch connect: connection: {how}\n")
        _close_stdio(io)
        return 1
    _close_stdio(io)
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

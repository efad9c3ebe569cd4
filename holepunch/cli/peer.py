# -*- test-case-name: tests.integration.test_connect_cli -*-
"""What ``holepunch connect``, ``send`` and ``receive`` share: the signaling options, and
reaching the peer as an encrypted, authenticated QUIC session.

:func:`add_peer_arguments` adds the options; :func:`with_secure_peer` registers with the
signaling server, runs ICE (the ``--to`` side offers and is the QUIC client, the
``--accept`` side answers), checks the peer's certificate against the fingerprint it
signaled, runs the command's body with a :class:`SecurePeer`, and cleans up. A failure
is one line on stderr naming its stage (``signaling``, ``peer``, ``gathering``,
``candidates``, ``connectivity-checks``, ``nomination``, ``security``, ``connection``)
and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from twisted.internet import defer, protocol

from holepunch.addresses import format_address

if TYPE_CHECKING:
    from holepunch.quic.identity import PeerIdentity
    from holepunch.quic.session import QuicSession

#: The ``security`` field of ``--json``: QUIC, whose handshake is TLS 1.3.
SECURITY = "quic-tls1.3"


class StageError(Exception):
    """A failure with the stage it happened in."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.detail = message


def add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that name the two peers and the servers that bring them together."""
    parser.add_argument(
        "--signaling",
        required=True,
        metavar="URL",
        help="ws:// or wss:// URL; several, comma-separated: nodes of one service, tried in turn",
    )
    parser.add_argument("--id", required=True, metavar="ME", help="this peer's id")
    parser.add_argument(
        "--room",
        metavar="R",
        help="join this room first (default: the acceptor's direct room, direct:<its id>)",
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--to", metavar="PEER", help="offer a connection to PEER")
    who.add_argument("--accept", action="store_true", help="wait for a peer's offer")
    parser.add_argument(
        "--from",
        dest="from_peer",
        metavar="PEER",
        help="with --accept, take an offer from PEER only (default: anyone's)",
    )
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
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds to connect (30)"
    )
    parser.add_argument("--retries", type=int, default=0, help="more ICE attempts on failure")


@dataclass
class SecurePeer:
    """The peer, reached: its QUIC session, the ICE path under it, our identity."""

    session: QuicSession
    path: Any
    """The :class:`holepunch.ice.connection.Channel` the session runs on (None if gone)."""
    identity: PeerIdentity
    offerer: bool
    """True on the ``--to`` side (the QUIC client, which opens the stream)."""
    elapsed: float
    """Seconds from the first offer or the start of waiting to the authenticated session."""

    def describe(self) -> dict[str, Any]:
        """The ``--json`` connection object: the path, its timing, and who is at each end."""
        path = self.path
        info: dict[str, Any] = {
            "method": getattr(path, "method", None),
            "local": format_address(path.local) if path is not None else None,
            "remote": format_address(path.remote) if path is not None else None,
            "elapsed_ms": round(self.elapsed * 1000, 1),
            "rtt_ms": round((getattr(path, "rtt", None) or 0) * 1000, 2),
            "probes_sent": agent_stat(path, "probes_sent"),
            "birthday_sockets": agent_stat(path, "birthday_sockets"),
            "security": SECURITY,
            "fingerprint": self.identity.fingerprint,
            "peer_fingerprint": self.session.peer_fingerprint,
        }
        return info


def agent_stat(path: Any, name: str) -> int:
    """One counter of the ICE agent under ``path`` (0 for a TCP-punched connection, which
    has no agent, or an agent that keeps none)."""
    from holepunch.ice.connection import PeerConnection

    if not isinstance(path, PeerConnection):
        return 0
    stats = getattr(path.agent, "stats", None)
    return int(getattr(stats, name)) if stats is not None else 0


def turn_from_environment() -> list[Any]:
    """TURN servers from ``P2P_TURN_SERVERS`` / ``P2P_TURN_USERNAME`` / ``P2P_TURN_PASSWORD``
    (used when no ``--turn-server`` is given); a bad value raises ValueError naming it."""
    from holepunch.config import environment_values

    servers: list[Any] = environment_values(os.environ).get("turn_servers", [])
    return servers


def signaling_reason(e: BaseException) -> str:
    """Why talking to the signaling server failed, in words."""
    if isinstance(e, defer.TimeoutError):
        return "no answer from the signaling server"
    return str(e) or type(e).__name__


async def with_secure_peer(
    reactor: Any,
    args: argparse.Namespace,
    err: TextIO,
    command: str,
    body: Callable[[SecurePeer], Awaitable[int]],
) -> int:
    """Reach the peer ``args`` names, run ``body`` with it, clean up; the exit status.

    ``body``'s status is returned; a :class:`StageError` it raises becomes one stderr
    line ``holepunch COMMAND: STAGE: REASON`` and status 1, as do failures to connect.
    Bad options (a STUN or TURN server that does not parse) give status 2.
    """
    from holepunch.ice.config import CheckConfig, GatheringConfig, IceConfig, RelayConfig, TcpConfig
    from holepunch.ice.events import IceError
    from holepunch.ice.negotiation import Negotiator
    from holepunch.quic.identity import PeerIdentity
    from holepunch.quic.session import PeerAuthenticationError, QuicOptions, SessionClosed
    from holepunch.signaling.client import SignalingClient, direct_room
    from holepunch.stun.client import parse_server
    from holepunch.turn import parse_turn_uri

    try:
        stun_servers = [parse_server(s) for s in args.stun_server]
        turn_servers = [parse_turn_uri(uri) for uri in args.turn_server]
        if not turn_servers:
            turn_servers = turn_from_environment()
    except ValueError as e:
        err.write(f"holepunch {command}: {e}\n")
        return 2
    if args.from_peer is not None and not args.accept:
        err.write(f"holepunch {command}: --from goes with --accept\n")
        return 2
    deadline = reactor.seconds() + args.timeout
    identity = PeerIdentity.generate()
    # A short WebSocket ping: when the path breaks (a new public address, say) the dead
    # signaling connection is noticed in seconds, so that the ICE restart's offer goes
    # out on a new one.
    client = SignalingClient(
        args.signaling.split(","),
        args.id,
        reactor=reactor,
        token=args.token,
        auto_ping_interval=5.0,
        auto_ping_timeout=5.0,
    )
    report_signaling_outages(client, args, err, command)
    client.startService()
    negotiator: Negotiator | None = None
    session: QuicSession | None = None
    try:
        try:
            registering = client.register()
            registering.addTimeout(args.timeout, reactor)
            await registering
        except Exception as e:
            raise StageError("signaling", f"{args.signaling}: {signaling_reason(e)}") from e
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
        negotiator = Negotiator(
            reactor, client, config, max_retries=args.retries, identity=identity
        )
        # The acceptor waits from the moment we are registered, in this same turn: a
        # server with --open-relay hands us offers before we have joined any room, and
        # an offer that found nobody waiting would be dropped (its sender, told it was
        # delivered, would wait for an answer until its timeout).
        started = reactor.seconds()
        waiting = negotiator.accept_secure(args.from_peer) if args.accept else None
        try:
            # Without --room, meet in the acceptor's direct room: the server relays only
            # between peers that share a room.
            await client.join_room(args.room or direct_room(args.id if args.accept else args.to))
        except Exception as e:
            if waiting is not None:
                waiting.addErrback(lambda _: None)
                waiting.cancel()
            raise StageError("signaling", f"{args.signaling}: {signaling_reason(e)}") from e
        try:
            if waiting is not None:
                waiting.addTimeout(max(0.1, deadline - reactor.seconds()), reactor)
                try:
                    session = await waiting
                except defer.TimeoutError:
                    raise StageError("peer", "no offer arrived in time") from None
            else:
                started = reactor.seconds()
                session = await negotiator.connect_secure(
                    args.to,
                    QuicOptions(peer_id=args.to),
                    wait_for_peer=max(0.1, deadline - reactor.seconds()),
                )
        except PeerAuthenticationError as e:
            raise StageError("security", e.reason) from e
        except SessionClosed as e:
            raise StageError("security", f"QUIC handshake failed: {e.reason}") from e
        assert session is not None
        peer = SecurePeer(
            session,
            negotiator.path_of(session),
            identity,
            offerer=not args.accept,
            elapsed=reactor.seconds() - started,
        )
        return await body(peer)
    except (StageError, IceError) as e:
        err.write(f"holepunch {command}: {e}\n")
        return 1
    except Exception as e:
        err.write(f"holepunch {command}: {type(e).__name__}: {e}\n")
        return 1
    finally:
        if session is not None and session.closed is None:
            session.close("done")
        if negotiator is not None:
            await negotiator.stop()
        await client.stopService()


def report_signaling_outages(
    client: Any, args: argparse.Namespace, err: TextIO, command: str
) -> None:
    """Say on ``err`` when the signaling server goes away and when the client is back.

    The session to the peer does not need signaling, so an outage ends nothing: the
    client reconnects with backoff in the background. With ``--json`` in the stream
    mode the lines are events, ``{"event": "signaling-disconnected", "reason"}`` and
    ``{"event": "signaling-reconnected", "attempt", "downtime_ms", "resumed",
    "rooms"}``; otherwise one line of text each.
    """
    from holepunch.signaling.client import RECONNECTED, REGISTRATION_LOST

    as_json = bool(getattr(args, "json", False)) and not getattr(args, "datagram", False)

    def write(event: dict[str, Any], text: str) -> None:
        try:
            err.write((json.dumps(event) if as_json else f"holepunch {command}: {text}") + "\n")
            err.flush()
        except (OSError, ValueError):
            pass  # stderr closed: nothing to tell

    def lost(message: dict[str, Any]) -> None:
        reason = message.get("reason") or "connection lost"
        write(
            {"event": "signaling-disconnected", "reason": reason},
            f"signaling server lost ({reason}); reconnecting, the connection carries on",
        )

    def back(message: dict[str, Any]) -> None:
        event = {"event": "signaling-reconnected", **message}
        seconds = float(message.get("downtime_ms", 0)) / 1000
        write(event, f"signaling server back after {seconds:.1f} s")

    client.on(REGISTRATION_LOST, lost)
    client.on(RECONNECTED, back)


class FirstStream(protocol.Factory):
    """Gives ``proto`` the first stream the peer opens, and refuses any other."""

    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto: protocol.Protocol | None = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol | None:
        """``proto`` the first time, None (refused) after."""
        proto, self.proto = self.proto, None
        return proto


def carry_one_stream(peer: SecurePeer, proto: protocol.Protocol) -> defer.Deferred[Any]:
    """The one stream of a command, for ``proto``: the offerer opens it, the acceptor
    takes the first stream the peer opens (``proto.connectionMade`` says when)."""
    if peer.offerer:
        return peer.session.open_stream(proto)
    peer.session.listen_streams(FirstStream(proto))
    return defer.succeed(proto)

# -*- test-case-name: tests.test_tap -*-
"""``twistd holepunch``: options and the service tree of the daemon.

The daemon runs, each part optional:

- the STUN server (UDP and TCP, port 3478 on every interface; RFC 5780 behaviour discovery
  when given an alternate address), see :mod:`holepunch.stun.server`;
- the WebSocket signaling server with its HTTP endpoints (``tcp:8080``), see
  :mod:`holepunch.signaling.server`.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return port


class Options(usage.Options):
    """Command-line options of ``twistd holepunch``."""

    optFlags = [
        ["no-stun", None, "Do not run the STUN server."],
        ["no-stun-tcp", None, "Run the STUN server over UDP only."],
        ["no-signaling", None, "Do not run the signaling server."],
    ]
    optParameters: list[list[Any]] = [
        ["stun-interface", None, "", "Address the STUN server binds (default: every interface)."],
        ["stun-port", None, 3478, "STUN port (UDP and TCP).", _port],
        [
            "stun-alternate-address",
            None,
            None,
            "A second address of this host: turns on RFC 5780 behaviour discovery "
            "(needs --stun-interface set to the primary address).",
        ],
        ["stun-alternate-port", None, 3479, "Second STUN port, used with RFC 5780.", _port],
        ["signaling", None, "tcp:8080", "Endpoint of the signaling server (strports)."],
        # Signaling server (holepunch.signaling.server.SignalingConfig has the defaults).
        [
            "auth-secret",
            None,
            None,
            "Require signaling tokens signed with this secret (default: $P2P_AUTH_SECRET; "
            "unset: no auth). Mint them with `holepunch token`.",
        ],
        ["peer-timeout", None, 300.0, "Evict peers silent for this many seconds.", float],
        ["cleanup-interval", None, 60.0, "Look for idle peers every so many seconds.", float],
        ["max-message-size", None, 65536, "Largest signaling message, bytes.", int],
        ["max-frame-size", None, 262144, "Larger WebSocket messages close the link.", int],
        ["message-rate", None, 20.0, "Signaling messages per second per connection.", float],
        ["message-burst", None, 60, "Signaling messages allowed at once per connection.", int],
        ["max-connections", None, 10000, "Signaling connections in total.", int],
        ["max-connections-per-address", None, 64, "Signaling connections per source IP.", int],
        ["max-peers", None, 10000, "Registered signaling peers in total.", int],
        ["max-peers-per-room", None, 100, "Peers in one room.", int],
        ["max-rooms-per-peer", None, 16, "Rooms one peer may join.", int],
        [
            "trust-x-forwarded-for",
            None,
            0,
            "Reverse proxies in front of the signaling server whose X-Forwarded-For to trust.",
            int,
        ],
    ]

    def postOptions(self) -> None:
        if self["stun-alternate-address"] and not self["stun-interface"]:
            raise usage.UsageError(
                "--stun-alternate-address needs --stun-interface: RFC 5780 answers name the "
                "primary address, so the server must bind it explicitly"
            )
        if self["stun-alternate-address"] and self["stun-port"] == self["stun-alternate-port"]:
            raise usage.UsageError("--stun-alternate-port must differ from --stun-port")


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the daemon's service tree from parsed options."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    top = MultiService()
    if not options["no-stun"]:
        from holepunch.stun.server import make_stun_service

        make_stun_service(
            interface=options["stun-interface"],
            port=options["stun-port"],
            alternate_address=options["stun-alternate-address"],
            alternate_port=options["stun-alternate-port"],
            tcp=not options["no-stun-tcp"],
            reactor=reactor,
        ).setServiceParent(top)
    if not options["no-signaling"]:
        from holepunch.signaling.server import config_from_options, make_signaling_service

        signaling = make_signaling_service(config_from_options(options), reactor)
        signaling.setName("signaling")
        signaling.setServiceParent(top)
    return top

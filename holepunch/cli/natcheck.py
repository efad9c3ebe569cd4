# -*- test-case-name: tests.integration.test_nat_discovery -*-
"""``holepunch nat-check``: what NAT am I behind, and what will work through it.

Human output by default (progress on stderr while the tests run); with ``--json``,
exactly one JSON object on stdout. Exit status 0 when a server answered, 1 with a
one-line reason on stderr otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

from holepunch.nat.model import NatInfo

DEFAULT_STUN_SERVERS = ("stun.l.google.com:19302", "stun.cloudflare.com:3478")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holepunch nat-check``."""
    parser.add_argument(
        "--stun-server",
        action="append",
        metavar="HOST:PORT",
        default=None,
        help="STUN server to ask (repeatable). Two servers, or one that also answers on "
        "its port + 1 (`twistd holepunch` does), measure mapping and port allocation; an "
        "RFC 5780 server (two addresses, like `twistd holepunch --stun-alternate-address` or "
        "coturn with two listening IPs) allows every test, filtering included. Default: "
        "$P2P_STUN_SERVERS, else " + ", ".join(DEFAULT_STUN_SERVERS),
    )
    parser.add_argument(
        "--no-port-mapping",
        action="store_true",
        help="do not ask the router which of PCP, NAT-PMP and UPnP IGD it speaks",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--interface", default="", metavar="ADDRESS", help="local address to bind (default: any)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long one test waits for an answer (default 5.5)",
    )


def _servers(args: argparse.Namespace) -> list[tuple[str, int]]:
    from holepunch.stun.client import parse_server

    specs: list[str] = args.stun_server or []
    if not specs:
        env = os.environ.get("P2P_STUN_SERVERS", "")
        specs = [s for s in env.split(",") if s.strip()] or list(DEFAULT_STUN_SERVERS)
    return [parse_server(spec) for spec in specs]


def format_report(info: NatInfo) -> str:
    """The human-readable report."""
    data = info.to_json()
    strategy = data["strategy"]

    def show(value: Any) -> str:
        if value is None:
            return "unknown"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)

    lines = [
        f"NAT type:         {info.type.value}",
        f"Public address:   {show(info.public_address)}:{show(info.public_port)}",
        f"Local address:    {show(info.local_address)}:{show(info.local_port)}",
        f"Mapping:          {info.mapping.value}",
        f"Filtering:        {info.filtering.value}",
        f"Port allocation:  {info.port_allocation.value}"
        + (f" (delta {info.port_delta})" if info.port_delta else ""),
        f"Hairpinning:      {show(info.hairpinning)}",
        f"Server:           {show(info.server)}" + (" (RFC 5780)" if info.rfc5780 else ""),
        f"Port mapping:     {_port_mapping(info)}",
        "",
        f"Strategy:         {strategy['strategy']} ({strategy['difficulty']})",
        f"                  {strategy['recommendation']}",
        f"Methods:          {', '.join(strategy['methods'])}",
    ]
    for evidence in info.evidence:
        lines.append(f"Evidence: {evidence}")
    for note in info.notes:
        lines.append(f"Note: {note}")
    return "\n".join(lines)


_PORT_MAPPING_NAMES = {"upnp": "UPnP", "natpmp": "NAT-PMP", "pcp": "PCP"}


def _port_mapping(info: NatInfo) -> str:
    if info.port_mapping is None:
        return "not asked"
    return ", ".join(
        f"{label} {'yes' if info.port_mapping.get(key) else 'no'}"
        for key, label in _PORT_MAPPING_NAMES.items()
    )


async def nat_check(reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the discovery and print the result; return the exit status."""
    from holepunch.nat.discovery import DiscoveryTimers, discover_nat
    from holepunch.stun.client import StunError

    try:
        servers = _servers(args)
    except ValueError as e:
        err.write(f"holepunch nat-check: {e}\n")
        return 2
    timers = DiscoveryTimers.scaled(args.timeout) if args.timeout else None

    def progress(text: str) -> None:
        if not args.json:
            err.write(f"... {text}\n")
            err.flush()

    try:
        info = await discover_nat(
            reactor,
            servers,
            interface=args.interface,
            timers=timers,
            progress=progress,
            port_mapping=not args.no_port_mapping,
        )
    except StunError as e:
        err.write(f"holepunch nat-check: {e}\n")
        return 1
    except Exception as e:  # DNS failures, bad interface: one line, not a traceback
        err.write(f"holepunch nat-check: {type(e).__name__}: {e}\n")
        return 1
    if args.json:
        out.write(json.dumps(info.to_json()) + "\n")
    else:
        out.write(format_report(info) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point from :mod:`holepunch.cli`."""
    from holepunch.cli import react

    return react(lambda reactor: nat_check(reactor, args, sys.stdout, sys.stderr))

# -*- test-case-name: tests.integration.test_nat_discovery -*-
"""``holepunch nat-check``: what NAT am I behind, and what will work through it.

Both address families are checked at once, each against the servers of its family (the
A and AAAA records of a name, or ``HOST:PORT`` / ``[V6]:PORT`` literals): IPv4 as ever,
and for IPv6 (where no NAT is expected) the public address, whether it is the local one
(no NAT66/NPTv6) and, with an RFC 5780 server, filtering. A family without a server or a
route says so in a line of its own.

Human output by default (progress on stderr while the tests run); with ``--json``,
exactly one JSON object on stdout: the IPv4 report's fields at the top level (the IPv6
one's when IPv4 got no answer), ``family`` naming which, and ``families`` with each
family's report or ``{"error": ...}``. Exit status 0 when a server of either family
answered, 1 with a one-line reason on stderr otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

from holepunch.addresses import format_address, ip_version
from holepunch.nat.model import (
    FamilyResult,
    NatInfo,
    families_json,
    main_report,
    no_report_reasons,
)

DEFAULT_STUN_SERVERS = ("stun.l.google.com:19302", "stun.cloudflare.com:3478")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``holepunch nat-check``."""
    parser.add_argument(
        "--stun-server",
        action="append",
        metavar="HOST:PORT",
        default=None,
        help="STUN server to ask (repeatable; [V6]:PORT for IPv6, a name for its A and AAAA "
        "records). Two servers, or one that also answers on "
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
        "--interface",
        default="",
        metavar="ADDRESS",
        help="local address to bind (default: any); checks that address's family only",
    )
    parser.add_argument(
        "--family",
        choices=("4", "6", "both"),
        default="both",
        help="check IPv4, IPv6 or both (default both)",
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

    def address(host: str | None, port: int | None) -> str:
        return format_address((show(host), port)) if port is not None else f"{show(host)}:unknown"

    lines = [
        f"NAT type:         {info.type.value}",
        f"Public address:   {address(info.public_address, info.public_port)}",
        f"Local address:    {address(info.local_address, info.local_port)}",
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
    from holepunch.nat.discovery import DiscoveryTimers, discover_families

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

    families = (4, 6) if args.family == "both" else (int(args.family),)
    try:
        if args.interface:
            families = (ip_version(args.interface),)
        results = await discover_families(
            reactor,
            servers,
            families=families,
            interface=args.interface,
            timers=timers,
            progress=progress,
            port_mapping=not args.no_port_mapping,
        )
    except Exception as e:  # DNS failures, bad interface: one line, not a traceback
        err.write(f"holepunch nat-check: {type(e).__name__}: {e}\n")
        return 1
    if main_report(results) is None:
        err.write(f"holepunch nat-check: {no_report_reasons(results)}\n")
        return 1
    if args.json:
        out.write(json.dumps(json_report(results)) + "\n")
    else:
        out.write(format_families(results) + "\n")
    return 0


def json_report(results: dict[int, FamilyResult]) -> dict[str, Any]:
    """The ``--json`` object: the main family's report (IPv4 when it answered) at the top
    level, as nat-check has always printed it, and every family's in ``families``."""
    families = families_json(results)
    main = main_report(results)
    assert main is not None
    return {**families[f"IPv{main[0]}"], "families": families}


def format_families(results: dict[int, FamilyResult]) -> str:
    """The human-readable report: one section per family."""
    sections = []
    for family, result in sorted(results.items()):
        body = format_report(result) if isinstance(result, NatInfo) else f"No result: {result}"
        sections.append(f"== IPv{family} ==\n{body}")
    return "\n\n".join(sections)


def run(args: argparse.Namespace) -> int:
    """Entry point from :mod:`holepunch.cli`."""
    from holepunch.cli import react

    return react(lambda reactor: nat_check(reactor, args, sys.stdout, sys.stderr))

# -*- test-case-name: tests.unit.test_signaling_client -*-
"""``holepunch token``: mint a signaling auth token for one peer id.

The secret is the one the server runs with (``twistd holepunch --auth-secret`` or
``P2P_AUTH_SECRET``); it comes from ``--secret`` or, better (process lists are public),
from the ``P2P_AUTH_SECRET`` environment variable. The token goes to stdout; give it to
the peer, which sends it as ``Authorization: Bearer <token>`` or ``?token=<token>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from holepunch.signaling.auth import mint_token


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``holepunch token``."""
    parser.add_argument("--peer-id", required=True, help="the peer id the token grants")
    parser.add_argument(
        "--ttl", type=float, default=3600.0, help="lifetime in seconds (default: 3600)"
    )
    parser.add_argument(
        "--secret", default=None, help="the server's secret (default: $P2P_AUTH_SECRET)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print {token, peerId, expires} as JSON"
    )


def run(
    args: argparse.Namespace,
    now: Callable[[], float] = time.time,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Mint the token; exit status 2 when there is no secret or the arguments are bad."""
    environ = os.environ if environ is None else environ
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    secret = args.secret or environ.get("P2P_AUTH_SECRET")
    if not secret:
        err.write("holepunch token: no secret: pass --secret or set P2P_AUTH_SECRET\n")
        return 2
    issued = now()
    try:
        token = mint_token(secret, args.peer_id, args.ttl, issued)
    except ValueError as e:
        err.write(f"holepunch token: {e}\n")
        return 2
    if args.json:
        expires = int(token.split(".")[2])
        out.write(json.dumps({"token": token, "peerId": args.peer_id, "expires": expires}) + "\n")
    else:
        out.write(token + "\n")
    return 0

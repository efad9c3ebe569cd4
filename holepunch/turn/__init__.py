# -*- test-case-name: tests.test_turn_client -*-
"""TURN (RFC 8656) client: allocations on a relay, over UDP, TCP or TLS.

- :mod:`holepunch.turn.config`: :class:`TurnServer`, :func:`parse_turn_uri` (RFC 7065 and
  ``turn:USER:PASS@HOST:PORT``), :func:`rest_api_credentials` (coturn's
  ``use-auth-secret``).
- :mod:`holepunch.turn.client`: :class:`TurnAllocation`, the protocol over a send
  function and a clock (so it can share the ICE agent's socket).
- :mod:`holepunch.turn.connect`: :func:`open_allocation` (its own UDP socket, TCP or TLS
  connection) and :func:`allocate_first` (several servers, in order, each with a timeout).

See ``docs/turn.md``.
"""

from holepunch.turn.client import (
    Allocated,
    AllocationState,
    NoTurnServerAvailable,
    TurnAllocation,
    TurnAuthError,
    TurnError,
    TurnRedirect,
    TurnStats,
    TurnTimeoutError,
    TurnTimers,
)
from holepunch.turn.config import TurnServer, parse_turn_uri, rest_api_credentials
from holepunch.turn.connect import allocate_first, open_allocation

__all__ = [
    "Allocated",
    "AllocationState",
    "NoTurnServerAvailable",
    "TurnAllocation",
    "TurnAuthError",
    "TurnError",
    "TurnRedirect",
    "TurnServer",
    "TurnStats",
    "TurnTimeoutError",
    "TurnTimers",
    "allocate_first",
    "open_allocation",
    "parse_turn_uri",
    "rest_api_credentials",
]

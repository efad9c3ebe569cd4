# -*- test-case-name: tests.test_turn_client -*-
"""TURN (RFC 8656) client: allocations on a relay, over UDP, TCP or TLS.

- :mod:`holepunch.turn.config`: :class:`TurnServer`, :func:`parse_turn_uri` (RFC 7065 and
  ``turn:USER:PASS@HOST:PORT``), :func:`rest_api_credentials` (coturn's
  ``use-auth-secret``).
- :mod:`holepunch.turn.model`: the errors, states, timers and results of an allocation;
  :mod:`holepunch.turn.credentials`: the long-term credential rules (RFC 8489 9.2).
- :mod:`holepunch.turn.families`: relayed address families (REQUESTED-ADDRESS-FAMILY,
  dual allocations with ADDITIONAL-ADDRESS-FAMILY, ADDRESS-ERROR-CODE).
- :mod:`holepunch.turn.client`: :class:`TurnAllocation`, the protocol over a send
  function and a clock (so it can share the ICE agent's socket).
- :mod:`holepunch.turn.connect`: :func:`open_allocation` (its own UDP socket, TCP or TLS
  connection) and :func:`allocate_first` (several servers, in order, each with a timeout).

See ``docs/turn.md``.
"""

from holepunch.turn.client import TurnAllocation
from holepunch.turn.config import TurnServer, parse_turn_uri, rest_api_credentials
from holepunch.turn.connect import allocate_first, open_allocation
from holepunch.turn.families import AddressFamily, FamilyRefused
from holepunch.turn.model import (
    AddressFamilyNotSupported,
    Allocated,
    AllocationState,
    NoTurnServerAvailable,
    PeerAddressFamilyMismatch,
    TurnAuthError,
    TurnError,
    TurnRedirect,
    TurnStats,
    TurnTimeoutError,
    TurnTimers,
)

__all__ = [
    "AddressFamily",
    "AddressFamilyNotSupported",
    "Allocated",
    "AllocationState",
    "FamilyRefused",
    "NoTurnServerAvailable",
    "PeerAddressFamilyMismatch",
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

# -*- test-case-name: tests.test_turn_client -*-
"""What a TURN allocation is made of, with no I/O: its errors, states, timers, results
and counters, the records of its permissions and channels, and the checks on a peer
address (RFC 8656). :class:`TurnAllocation <holepunch.turn.client.TurnAllocation>` drives
them."""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
from typing import TYPE_CHECKING

from holepunch.stun.message import StunMessage
from holepunch.stun.wire import Address, Method, StunError
from holepunch.turn.families import REMEMBERED_HOSTS, AddressFamily, FamilyRefused, family_of

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IDelayedCall

SOFTWARE = "holepunch"
DEFAULT_LIFETIME = 600
"""RFC 8656 7.2: the lifetime a server gives when the response has none."""
UDP_PROTOCOL = 17


class TurnError(StunError):
    """A TURN request failed.

    ``code`` is the server's error code, or 0 for a local failure (timeout, connection
    lost, a malformed answer); ``response`` the error response, when there is one.
    """

    def __init__(self, code: int, reason: str, response: StunMessage | None = None) -> None:
        super().__init__(f"TURN error {code}: {reason}" if code else reason)
        self.code = code
        self.reason = reason
        self.response = response


class TurnAuthError(TurnError):
    """The server refused our credentials (a second 401, or 441 Wrong Credentials)."""


class AddressFamilyNotSupported(TurnError):
    """440 Address Family not Supported: the server cannot allocate a relayed address of
    the family asked for (RFC 8656 7.2); ``families`` are the families that were asked."""

    def __init__(
        self,
        reason: str,
        families: tuple[AddressFamily, ...] = (),
        response: StunMessage | None = None,
    ) -> None:
        super().__init__(440, reason, response)
        self.families = families


class PeerAddressFamilyMismatch(TurnError):
    """A peer of a family the allocation has no relayed address for: the server said
    443 Peer Address Family Mismatch (``code`` 443), or the request was refused here
    before it was sent (``code`` 0)."""


class TurnTimeoutError(TurnError):
    """The server did not answer in time."""

    def __init__(self, reason: str) -> None:
        super().__init__(0, reason)


class TurnRedirect(TurnError):
    """300 Try Alternate over a stream: the caller must connect to ``alternate`` instead."""

    def __init__(self, alternate: Address, response: StunMessage | None = None) -> None:
        super().__init__(300, f"try alternate server {alternate.host}:{alternate.port}", response)
        self.alternate = alternate


class NoTurnServerAvailable(TurnError):
    """No server granted an allocation; ``failures`` maps each server to its reason."""

    def __init__(self, failures: dict[str, str]) -> None:
        detail = "; ".join(f"{server}: {why}" for server, why in failures.items())
        super().__init__(0, f"no TURN server granted an allocation ({detail or 'none given'})")
        self.failures = failures


class AllocationState(enum.Enum):
    """Where a :class:`TurnAllocation` is in its life."""

    NEW = "new"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class TurnTimers:
    """When an allocation refreshes what it holds, and how long it waits to deallocate.

    The defaults follow RFC 8656: the allocation at 5/6 of the lifetime the server
    granted, permissions every 240 s (they live 300 s), channel bindings every 540 s (they
    live 600 s). Tests against a server with shorter lifetimes shorten them.
    """

    refresh_fraction: float = 5 / 6
    permission_refresh: float = 240.0
    channel_refresh: float = 540.0
    close_timeout: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.refresh_fraction < 1:
            raise ValueError("refresh_fraction must be between 0 and 1")
        if min(self.permission_refresh, self.channel_refresh, self.close_timeout) <= 0:
            raise ValueError("refresh intervals and the close timeout must be positive")


DEFAULT_TIMERS = TurnTimers()


@dataclasses.dataclass(frozen=True)
class Allocated:
    """A granted allocation: the relayed addresses peers send to, our address as the
    server sees it (XOR-MAPPED-ADDRESS), the lifetime in seconds, and the server.

    A dual allocation (RFC 8656 7.1) has two relayed addresses, one per family:
    ``relayed_addresses`` lists every one in the order of preference the allocation was
    asked with, and :attr:`relayed` is the first. ``refused`` names each family asked
    for that the server did not allocate, and why.
    """

    relayed_addresses: tuple[Address, ...]
    mapped: Address | None
    lifetime: int
    server: Address
    refused: tuple[FamilyRefused, ...] = ()

    def __post_init__(self) -> None:
        if not self.relayed_addresses:
            raise ValueError("an allocation has at least one relayed address")

    @property
    def relayed(self) -> Address:
        """The preferred relayed address (the first of ``relayed_addresses``)."""
        return self.relayed_addresses[0]

    @property
    def families(self) -> tuple[AddressFamily, ...]:
        """The families of the relayed addresses."""
        return tuple(family_of(a.host) for a in self.relayed_addresses)

    def relayed_for(self, family: AddressFamily) -> Address | None:
        """The relayed address of ``family``, or None."""
        for address in self.relayed_addresses:
            if family_of(address.host) is family:
                return address
        return None


@dataclasses.dataclass
class TurnStats:
    """What an allocation did; for logs, metrics and tests."""

    requests: int = 0
    liveness_checks: int = 0
    stale_nonce_retries: int = 0
    redirects: int = 0
    refreshes: int = 0
    permissions_installed: int = 0
    permission_refreshes: int = 0
    channels_bound: int = 0
    channel_refreshes: int = 0
    indications_sent: int = 0
    channel_data_sent: int = 0
    data_received: int = 0
    dropped: int = 0


@dataclasses.dataclass(eq=False)
class Permission:
    """A permission for one peer IP: installed or being installed, with its refresh timer,
    who waits for it and the data queued until it is in place."""

    ip: str
    installed: bool = False
    pending: Deferred[StunMessage] | None = None
    timer: IDelayedCall | None = None
    waiters: list[Deferred[None]] = dataclasses.field(default_factory=list)
    queue: list[tuple[bytes, Address]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class ChannelBinding:
    """A channel bound (or being bound) to one peer address, with its refresh timer and
    who waits for it."""

    number: int
    peer: Address
    bound: bool = False
    pending: Deferred[StunMessage] | None = None
    timer: IDelayedCall | None = None
    waiters: list[Deferred[int]] = dataclasses.field(default_factory=list)


def peer_address(peer: tuple[str, int]) -> Address:
    """``peer`` as an :class:`Address <holepunch.stun.wire.Address>`, checked: TURN
    peers are IP addresses, never names.

    :raises ValueError: not an IP address, or the port is out of range.
    """
    host, port = peer
    try:
        ip = _canonical_ip(host)
    except ValueError:
        raise ValueError(f"a TURN peer must be an IP address, not {host!r}") from None
    if not 0 <= port < 65536:
        raise ValueError(f"peer port out of range: {port}")
    return Address(ip, int(port))


@functools.lru_cache(maxsize=REMEMBERED_HOSTS)
def _canonical_ip(host: str) -> str:
    """``host`` as ``ipaddress`` writes it; remembered, as every datagram sent to a
    peer names it."""
    return str(ipaddress.ip_address(host))


def method_name(method: int) -> str:
    """The STUN method's name (``ALLOCATE``...), for messages."""
    try:
        return Method(method).name
    except ValueError:
        return f"method 0x{method:03x}"


__all__ = [
    "DEFAULT_LIFETIME",
    "DEFAULT_TIMERS",
    "SOFTWARE",
    "UDP_PROTOCOL",
    "AddressFamilyNotSupported",
    "Allocated",
    "AllocationState",
    "ChannelBinding",
    "NoTurnServerAvailable",
    "PeerAddressFamilyMismatch",
    "Permission",
    "TurnAuthError",
    "TurnError",
    "TurnRedirect",
    "TurnStats",
    "TurnTimeoutError",
    "TurnTimers",
    "method_name",
    "peer_address",
]

# -*- test-case-name: tests.unit.test_ice_core -*-
"""What the sans-I/O ICE core tells its adapter (:meth:`IceCore.next_event
<holepunch.ice.core.IceCore.next_event>`).

Some events are news (a candidate, a selected pair, a failure), some are requests for I/O
the core cannot do itself: open or close a socket, allocate TURN relays, install a TURN
permission or channel. Sockets are named by ``via``: 0 is the agent's main socket, other
numbers are extra sockets and relays the core asked for or was given.
"""

from __future__ import annotations

from dataclasses import dataclass

from holepunch.ice.candidate import Candidate
from holepunch.ice.checklist import CandidatePair

MAIN = 0
"""The ``via`` of the agent's main socket."""


class IceError(Exception):
    """ICE could not connect; ``stage`` names where it stopped."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.detail = message


@dataclass(frozen=True)
class LocalCandidate:
    """A local candidate to signal (trickle ICE); None means end-of-candidates."""

    candidate: Candidate | None


@dataclass(frozen=True)
class StunSettled:
    """What a description carries is known: our mapping (every IPv4 Binding of the
    gathering answered or gave up) and whether UDP is blocked (a STUN server answered,
    or every one gave up). Other server-reflexive candidates (an IPv6 server's) and
    relayed ones may still come."""


@dataclass(frozen=True)
class RelaysWanted:
    """Allocate TURN relays now; answer with ``add_relay`` and then ``relays_done``."""


@dataclass(frozen=True)
class PortMappingWanted:
    """Ask the router (PCP, NAT-PMP, UPnP) to map UDP ``port`` of one of ``hosts``; answer
    with ``port_mapping_done`` (bounded by ``GatheringConfig.port_mapping_timeout``)."""

    port: int
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class SocketWanted:
    """Open one more UDP socket (birthday probing); answer with ``socket_opened``."""

    via: int


@dataclass(frozen=True)
class SocketReleased:
    """An extra socket is no longer needed: close it."""

    via: int


@dataclass(frozen=True)
class PermissionWanted:
    """Install a TURN permission for ``host`` on relay ``via`` (every relay when None)
    (RFC 8656 9)."""

    host: str
    via: int | None = None


@dataclass(frozen=True)
class ChannelWanted:
    """Bind a TURN channel on relay ``via`` toward ``peer`` (RFC 8656 12)."""

    via: int
    peer: tuple[str, int]


@dataclass(frozen=True)
class PairSelected:
    """ICE selected ``pair`` (sent from socket ``via``); ``method`` names how."""

    pair: CandidatePair
    via: int
    method: str
    elapsed: float


@dataclass(frozen=True)
class PathChanged:
    """The connection moved to ``pair``: a relayed connection upgraded to a direct one,
    a restart selected a new pair, a degraded path was replaced, or the selected pair
    was lost (its relay, say) and another took over; ``reason`` says which
    (``upgrade``, ``restart``, ``better-path``, ``recovery``)."""

    pair: CandidatePair
    via: int
    method: str
    reason: str = "upgrade"


@dataclass(frozen=True)
class Restarting:
    """An ICE restart began (RFC 8445 9): new local credentials ``ufrag``/``pwd`` and a
    new gathering; signal them to the peer in a new offer (or answer). The pair that was
    selected keeps carrying data until the new generation selects one."""

    generation: int
    reason: str
    ufrag: str
    pwd: str


@dataclass(frozen=True)
class RestartEnded:
    """The restart ``generation`` ended: ``ok`` when a new pair was selected (a
    :class:`PathChanged` came just before), else it was abandoned after ``elapsed``."""

    generation: int
    reason: str
    ok: bool
    elapsed: float


@dataclass(frozen=True)
class DatagramReceived:
    """Application data from the peer, for the connection."""

    data: bytes
    source: tuple[str, int]


@dataclass(frozen=True)
class ConsentLost:
    """No answer from the peer for ``seconds``: the connection is over."""

    seconds: float


@dataclass(frozen=True)
class Failed:
    """The attempt failed; the core is closed."""

    error: IceError


@dataclass(frozen=True)
class MappingMeasured:
    """Our mapping was measured (or measured again)."""


Event = (
    LocalCandidate
    | StunSettled
    | RelaysWanted
    | PortMappingWanted
    | SocketWanted
    | SocketReleased
    | PermissionWanted
    | ChannelWanted
    | PairSelected
    | PathChanged
    | Restarting
    | RestartEnded
    | DatagramReceived
    | ConsentLost
    | Failed
    | MappingMeasured
)

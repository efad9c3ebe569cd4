"""The faces the ICE core's parts show one another.

:class:`IceCore <holepunch.ice.core.IceCore>` splits its work by concern, one module
each (:mod:`holepunch.ice.gathering`, :mod:`holepunch.ice.checks`,
:mod:`holepunch.ice.nomination`, :mod:`holepunch.ice.probing`,
:mod:`holepunch.ice.consent`). Each part is given the core and reaches the others through
it. The parts see the core as :class:`Core`, which names exactly what they use of it,
and each other as the small protocols below, so they import this module and never the
core: the core imports them, and nothing imports back.

The protocols are structural: the core passes itself where a :class:`Core` is wanted, and
mypy checks there that :class:`IceCore <holepunch.ice.core.IceCore>` still has every
member. The parts read most of the core's state and change only a little of it: what
they assign is a plain attribute of :class:`Core`, the rest is a read-only property.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from holepunch.ice import events
from holepunch.ice.candidate import Candidate
from holepunch.ice.checklist import CandidatePair, CheckList
from holepunch.ice.config import IceConfig
from holepunch.ice.hardnat import MappingProfile, Technique
from holepunch.ice.timers import Timers
from holepunch.stun.message import StunMessage
from holepunch.stun.transactions import (
    ClientTransactions,
    RetransmissionPolicy,
    StunResponse,
    TransactionOutcome,
)
from holepunch.stun.wire import Address


@dataclass
class AgentStats:
    """What the agent did; for logs, /metrics and tests."""

    checks_sent: int = 0
    checks_received: int = 0
    responses_sent: int = 0
    unauthenticated: int = 0
    malformed: int = 0
    role_conflicts: int = 0
    data_dropped: int = 0
    consent_checks: int = 0
    keepalives: int = 0
    predicted_checks: int = 0
    birthday_sockets: int = 0
    probes_sent: int = 0
    relays_lost: int = 0
    """TURN allocations of ours the server lost (:meth:`IceCore.relay_lost
    <holepunch.ice.core.IceCore.relay_lost>`)."""
    relays_reallocated: int = 0
    """Relayed candidates that replaced a lost one."""
    remote_relays_replaced: int = 0
    """Relayed candidates of the peer replaced by a newer one (it allocated again)."""
    permissions_refused: int = 0
    """TURN permissions the server refused for a peer address (403)."""
    paths_recovered: int = 0
    """Times the connection moved off a lost selected pair to another one."""
    restarts: int = 0
    """ICE restarts begun (any reason)."""
    restarts_completed: int = 0
    """Restarts that selected a new pair."""
    restarts_abandoned: int = 0
    path_changes: int = 0
    """Moves of the connection to another pair (upgrades, restarts, better paths)."""
    consent_failures: int = 0
    """Consent checks that went unanswered."""
    better_path_checks: int = 0
    """Checks of other pairs while the selected one is relayed or degraded."""
    relay_only_ignored: int = 0
    """Checks that reached one of our host sockets while only relayed pairs may be
    used (``relay.only``): not answered, no pair made."""


class TransactionOwner(Protocol):
    """A component whose STUN transactions the core routes back to it."""

    def transaction_done(self, outcome: TransactionOutcome, payload: object) -> None: ...


class CheckRunner(Protocol):
    """What the other parts ask of the connectivity checks
    (:class:`holepunch.ice.checks.Checker`)."""

    def request(
        self, pair: CandidatePair, nominate: bool, usernames: tuple[str, str] | None = None
    ) -> StunMessage:
        """The Binding request that checks ``pair`` (with ``usernames``, the peer's and
        our ufrag, when not the current generation's)."""
        ...

    def schedule(self) -> None:
        """Make sure the pacing timer runs."""
        ...

    def pair_all(self) -> None:
        """Pair every remote candidate known so far."""
        ...

    def start_check(
        self, pair: CandidatePair, nominate: bool, policy: RetransmissionPolicy | None = None
    ) -> None:
        """Send a check on ``pair``."""
        ...

    def cancel_others(self, keep: CandidatePair) -> None:
        """Stop every running check but ``keep``'s."""
        ...

    def succeeded(
        self, response: StunResponse, pair: CandidatePair, nominate: bool, started: float
    ) -> None:
        """A check on ``pair`` was answered."""
        ...


class ProbePlanner(Protocol):
    """What the other parts ask of port prediction and birthday probing
    (:class:`holepunch.ice.probing.HardNatProbing`)."""

    @property
    def ordered(self) -> Sequence[CandidatePair]:
        """Predicted pairs still to check first, in order."""
        ...

    def next_ordered(self) -> CandidatePair | None:
        """The next predicted pair still to check, if any."""
        ...

    def plan(self) -> None:
        """Decide what to add, once both mappings and the peer's password are known."""
        ...

    def release_losers(self, keep: int | None) -> list[int]:
        """The birthday sockets other than ``keep``, forgotten."""
        ...

    def settle(self) -> None:
        """A direct pair is selected: no more predictions or probes."""
        ...


class ConsentKeeper(Protocol):
    """What the other parts ask of consent freshness
    (:class:`holepunch.ice.consent.Consent`)."""

    def start(self) -> None:
        """A pair was selected: consent is fresh now."""
        ...

    def refresh(self) -> None:
        """The peer answered on the selected pair."""
        ...

    def heard(self) -> None:
        """Application data came from the peer on the pair carrying data."""
        ...

    @property
    def degraded(self) -> bool:
        """The latest consent checks were slow or went unanswered too often."""
        ...


class PathSearcher(Protocol):
    """What the other parts ask of the better-path search
    (:class:`holepunch.ice.betterpath.PathSearch`)."""

    def start(self) -> None:
        """A pair was selected (or the path changed): schedule the first look."""
        ...


class PairSelector(Protocol):
    """What the other parts ask of nomination and selection
    (:class:`holepunch.ice.nomination.Selector`)."""

    def check_succeeded(self, pair: CandidatePair, nominate: bool) -> None:
        """A check of ours on ``pair`` was answered."""
        ...

    def consider(self) -> None:
        """Nominate if it is time (controlling only)."""
        ...

    def select(self, pair: CandidatePair) -> None:
        """``pair`` carries the connection from now on."""
        ...

    @property
    def recovering(self) -> bool:
        """The selected pair was lost and the connection waits for another."""
        ...

    def recover(self) -> None:
        """Nominate the best valid pair for a lost selected one (controlling only)."""
        ...

    def pairs_lost(self, pairs: Sequence[CandidatePair], reason: str) -> None:
        """``pairs`` can no longer work; if the selected pair is one, recover."""
        ...


class CandidateGatherer(Protocol):
    """What the other parts ask of gathering (:class:`holepunch.ice.gathering.Gatherer`)."""

    def peer_sample(self, destination: Address, mapped: Address) -> None:
        """A check from the main socket to ``destination`` was answered with ``mapped``."""
        ...


class Core(Protocol):
    """The core as its parts see it: exactly what they use of
    :class:`IceCore <holepunch.ice.core.IceCore>`."""

    # -- state the parts change --

    selected: CandidatePair | None
    """The pair carrying the connection, once one is selected."""
    nominating: CandidatePair | None
    """The pair whose USE-CANDIDATE check is in flight."""
    mapping: MappingProfile | None
    """Our NAT's mapping, once measured."""
    techniques: set[Technique]
    """The hard-NAT techniques planned for this session."""

    # -- state the parts read (containers they may fill) --

    @property
    def config(self) -> IceConfig:
        """The session's configuration."""
        ...

    @property
    def controlling(self) -> bool:
        """Our role."""
        ...

    @property
    def now(self) -> float:
        """The time of the latest input."""
        ...

    @property
    def closed(self) -> bool:
        """The core is closed."""
        ...

    @property
    def running(self) -> bool:
        """The checks were started and no outcome is known yet."""
        ...

    @property
    def started_at(self) -> float | None:
        """When the checks were started."""
        ...

    @property
    def last_sent(self) -> float:
        """When a datagram was last written."""
        ...

    @property
    def last_data_sent(self) -> float:
        """When application data was last sent."""
        ...

    @property
    def hold_checks(self) -> bool:
        """No check may be sent yet."""
        ...

    @property
    def patient(self) -> bool:
        """Another path carries the connection: check again rather than fail."""
        ...

    @property
    def checklist(self) -> CheckList:
        """The candidate pairs."""
        ...

    @property
    def stats(self) -> AgentStats:
        """Counters of what the agent did."""
        ...

    @property
    def timers(self) -> Timers:
        """The named timers of every part."""
        ...

    @property
    def transactions(self) -> ClientTransactions:
        """The STUN transactions in flight."""
        ...

    @property
    def remote_candidates(self) -> list[Candidate]:
        """The peer's candidates, signalled, peer-reflexive or predicted."""
        ...

    @property
    def remote_ufrag(self) -> str | None:
        """The peer's ufrag, once known."""
        ...

    @property
    def remote_pwd(self) -> str | None:
        """The peer's password, once known."""
        ...

    @property
    def local_ufrag(self) -> str:
        """Our ufrag."""
        ...

    @property
    def local_pwd(self) -> str:
        """Our password."""
        ...

    @property
    def tie_breaker(self) -> int:
        """Our tie-breaker for role conflicts."""
        ...

    @property
    def remote_mapping(self) -> MappingProfile | None:
        """The peer's mapping, once signalled."""
        ...

    @property
    def host_bases(self) -> dict[str, Candidate]:
        """Host candidates (all on the main socket), by address."""
        ...

    @property
    def socket_bases(self) -> dict[int, Candidate]:
        """Local candidates of the extra sockets and relays, by ``via``."""
        ...

    @property
    def mapping_complete(self) -> bool:
        """Every IPv4 Binding of the gathering answered or gave up."""
        ...

    @property
    def udp_blocked(self) -> bool:
        """No STUN server answered over UDP (every one gave up, or UDP is presumed
        blocked)."""
        ...

    @property
    def previous(self) -> CandidatePair | None:
        """During a restart, the pair selected before it (still carrying data)."""
        ...

    @property
    def previous_credentials(self) -> tuple[str, str] | None:
        """During a restart, our ufrag and password of the generation still carrying."""
        ...

    @property
    def carrying(self) -> CandidatePair | None:
        """The pair application data goes on (selected, or the previous one)."""
        ...

    @property
    def generation(self) -> int:
        """0, then one more for each restart."""
        ...

    # -- the other parts --

    @property
    def checker(self) -> CheckRunner:
        """The connectivity checks."""
        ...

    @property
    def probing(self) -> ProbePlanner:
        """Port prediction and birthday probing."""
        ...

    @property
    def consent(self) -> ConsentKeeper:
        """Consent freshness and keepalives."""
        ...

    @property
    def selector(self) -> PairSelector:
        """Nomination and selection for the current role."""
        ...

    @property
    def gatherer(self) -> CandidateGatherer:
        """Gathering of candidates and of our mapping."""
        ...

    @property
    def paths(self) -> PathSearcher:
        """The search for a better path while connected."""
        ...

    # -- what the parts ask of the core --

    def emit(self, event: events.Event) -> None:
        """Queue an event for the adapter."""
        ...

    def send(self, data: bytes, destination: tuple[str, int], via: int) -> None:
        """Queue a datagram."""
        ...

    def add_local(self, candidate: Candidate, announce: bool = True) -> bool:
        """Add a local candidate (announced unless ``announce`` is False); False if known."""
        ...

    def base_for(self, host: str, port: int) -> Candidate | None:
        """The host candidate the system sends from toward ``host:port`` (of its family;
        None when we have none of that family)."""
        ...

    def via_for(self, local: Candidate) -> int | None:
        """The socket a local candidate sends from."""
        ...

    def new_via(self) -> int:
        """A fresh socket number."""
        ...

    def release_socket(self, via: int) -> None:
        """An extra socket or relay is no longer used: forget it and ask to close it."""
        ...

    def settled(self) -> bool:
        """A pair is selected and it is direct."""
        ...

    def hard_nat_pending(self) -> bool:
        """Birthday probing is under way or about to start."""
        ...

    def check_failure(self) -> None:
        """Fail once nothing can succeed any more."""
        ...

    def set_role(self, controlling: bool) -> None:
        """Change role (a role conflict)."""
        ...

    def start_transaction(
        self,
        owner: TransactionOwner,
        payload: object,
        *,
        message: StunMessage,
        destination: Address,
        via: int,
        policy: RetransmissionPolicy,
        integrity_key: bytes | None = None,
    ) -> bytes:
        """Start a STUN transaction whose outcome goes to ``owner.transaction_done``."""
        ...

    def flush_early(self) -> None:
        """Deliver what arrived before the pair was selected."""
        ...

    def method(self, pair: CandidatePair) -> str:
        """How a pair connects, in the names the API reports."""
        ...

    def close(self, now: float) -> None:
        """Stop everything."""
        ...

    def restart(self, now: float, reason: str, hosts: Sequence[str] | None = None) -> bool:
        """ICE restart: new credentials and gathering; the selected pair goes on."""
        ...

    def restart_done(self, pair: CandidatePair) -> None:
        """The restart selected ``pair``: the old generation is released."""
        ...

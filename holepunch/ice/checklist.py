# -*- test-case-name: tests.unit.test_ice_core,tests.unit.test_ice_agent -*-
"""The ICE check list: candidate pairs, their states and order (RFC 8445 section 6.1.2).

Pure state: no sockets, no clock. The agent decides which pairs to form and when to
check; this module keeps them in priority order, says which pair to check next
(triggered checks first, then the highest-priority Waiting pair, unfreezing by
foundation as RFC 8445 6.1.2.6 and 6.1.4.2 say), and keeps the valid list.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from holepunch.ice.candidate import Candidate


class PairState(enum.Enum):
    """RFC 8445 6.1.2.6 pair states."""

    FROZEN = "frozen"
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 6.1.2.3: ``2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0)``."""
    return (
        (min(controlling, controlled) << 32)
        + 2 * max(controlling, controlled)
        + (1 if controlling > controlled else 0)
    )


@dataclass(eq=False)
class CandidatePair:
    """A local and a remote candidate, and what checking them has shown."""

    local: Candidate
    remote: Candidate
    state: PairState = PairState.FROZEN
    nominated: bool = False
    remote_nominated: bool = False
    valid: bool = False
    mapped: tuple[str, int] | None = None
    rtt: float | None = None
    checks_sent: int = 0
    tag: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def foundation(self) -> tuple[str, str]:
        """The pair foundation: both candidates' foundations."""
        return (self.local.foundation, self.remote.foundation)

    def priority(self, controlling: bool) -> int:
        """This pair's priority seen by an agent in the given role."""
        if controlling:
            return pair_priority(self.local.priority, self.remote.priority)
        return pair_priority(self.remote.priority, self.local.priority)

    def describe(self) -> str:
        """``local -> remote (types)`` for logs."""
        return (
            f"{self.local.host}:{self.local.port}({self.local.type}) -> "
            f"{self.remote.host}:{self.remote.port}({self.remote.type})"
        )


def on_ipv6(pair: CandidatePair) -> bool:
    """The pair's local candidate is an IPv6 one (so is the remote: pairs keep to one
    family)."""
    return ":" in pair.local.host


def relayed(pair: CandidatePair) -> bool:
    """Whether a pair goes through a TURN relay (either side's candidate is relayed)."""
    return pair.local.type == "relay" or pair.remote.type == "relay"


class CheckList:
    """The pairs of one component, in priority order, with the triggered-check queue."""

    def __init__(self, controlling: bool, max_pairs: int = 100) -> None:
        self.controlling = controlling
        self.max_pairs = max_pairs
        self.pairs: list[CandidatePair] = []
        self._triggered: deque[CandidatePair] = deque()

    def __iter__(self) -> Iterator[CandidatePair]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def set_role(self, controlling: bool) -> None:
        """Change role (a role conflict); priorities, and so the order, change."""
        self.controlling = controlling
        self._sort()

    def _sort(self) -> None:
        self.pairs.sort(key=lambda p: p.priority(self.controlling), reverse=True)

    def find(
        self, local: Candidate | None, remote_address: tuple[str, int], transport: str = "udp"
    ) -> CandidatePair | None:
        """The pair toward ``remote_address`` (from ``local`` if given)."""
        for pair in self.pairs:
            if (
                pair.remote.address == remote_address
                and pair.remote.transport == transport
                and (local is None or pair.local == local)
            ):
                return pair
        return None

    def add(self, local: Candidate, remote: Candidate, tag: str = "") -> CandidatePair | None:
        """Add a pair, unless the same local/remote pair exists or the list is full.

        A new pair is Waiting if no pair of its foundation is being checked yet, else
        Frozen (so one check per foundation goes first).
        """
        for pair in self.pairs:
            if (
                pair.local == local
                and pair.remote.address == remote.address
                and pair.remote.transport == remote.transport
            ):
                return None
        if len(self.pairs) >= self.max_pairs:
            return None
        pair = CandidatePair(local, remote, tag=tag)
        active = any(
            p.foundation == pair.foundation
            and p.state in (PairState.WAITING, PairState.IN_PROGRESS)
            for p in self.pairs
        )
        pair.state = PairState.FROZEN if active else PairState.WAITING
        self.pairs.append(pair)
        self._sort()
        return pair

    def trigger(self, pair: CandidatePair) -> None:
        """Queue a triggered check (RFC 8445 7.3.1.4); the pair becomes Waiting."""
        if pair.state == PairState.SUCCEEDED:
            return
        pair.state = PairState.WAITING
        if pair not in self._triggered:
            self._triggered.append(pair)

    def next_pair(
        self, only: Callable[[CandidatePair], bool] | None = None
    ) -> CandidatePair | None:
        """The next pair to check (of those ``only`` accepts, when given), or None when
        nothing is left to start.

        Triggered checks come first; then the highest-priority Waiting pair; when none
        is Waiting, the highest-priority Frozen pair is unfrozen and checked.
        """
        for pair in list(self._triggered):
            if only is None or only(pair):
                self._triggered.remove(pair)
                if pair.state == PairState.WAITING:
                    return pair
        candidates = self.pairs if only is None else [p for p in self.pairs if only(p)]
        for pair in candidates:
            if pair.state == PairState.WAITING:
                return pair
        for pair in candidates:
            if pair.state == PairState.FROZEN:
                pair.state = PairState.WAITING
                return pair
        return None

    def succeeded(
        self, pair: CandidatePair, mapped: tuple[str, int] | None, rtt: float | None
    ) -> None:
        """A check on ``pair`` succeeded: it is valid; its foundation's pairs unfreeze."""
        pair.state = PairState.SUCCEEDED
        pair.valid = True
        pair.mapped = mapped
        pair.rtt = rtt
        for other in self.pairs:
            if other.state == PairState.FROZEN and other.foundation == pair.foundation:
                other.state = PairState.WAITING

    def failed(self, pair: CandidatePair) -> None:
        """A check on ``pair`` failed (timeout, error, non-symmetric answer)."""
        if pair.state != PairState.SUCCEEDED:
            pair.state = PairState.FAILED

    def invalidate(self, pair: CandidatePair) -> None:
        """``pair`` can no longer work (its relay is gone): it fails, valid or not."""
        pair.state = PairState.FAILED
        pair.valid = False
        if pair in self._triggered:
            self._triggered.remove(pair)

    def valid_pairs(self) -> list[CandidatePair]:
        """The valid list, highest priority first."""
        return [p for p in self.pairs if p.valid]

    def best_valid(self) -> CandidatePair | None:
        """The highest-priority valid pair."""
        valid = self.valid_pairs()
        return valid[0] if valid else None

    def pending(self) -> list[CandidatePair]:
        """Pairs that may still succeed (Frozen, Waiting or In-Progress)."""
        return [
            p
            for p in self.pairs
            if p.state in (PairState.FROZEN, PairState.WAITING, PairState.IN_PROGRESS)
        ]

    def higher_pending(self, pair: CandidatePair) -> bool:
        """Whether a pair of higher priority than ``pair`` may still succeed."""
        mine = pair.priority(self.controlling)
        return any(p.priority(self.controlling) > mine for p in self.pending())

    def all_failed(self) -> bool:
        """Every pair failed (and there is at least one pair)."""
        return bool(self.pairs) and all(p.state == PairState.FAILED for p in self.pairs)

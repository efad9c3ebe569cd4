# -*- test-case-name: tests.unit.test_nat_model -*-
"""What we know about a NAT, and what follows from it (no sockets here).

RFC 4787 and RFC 5780 describe a NAT by its *mapping* behaviour (does the public port
depend on where we send?) and its *filtering* behaviour (who may send back through a
mapping?). The classic names of RFC 3489, which the seed's users know, are derived from
the two:

=================  ==============================  ============================
classic name       mapping                         filtering
=================  ==============================  ============================
open               no NAT (mapped == local)        any
full-cone          endpoint-independent            endpoint-independent
restricted-cone    endpoint-independent            address-dependent
port-restricted    endpoint-independent            address-and-port-dependent
symmetric          address(-and-port)-dependent    any
udp-blocked        no UDP answer at all            -
=================  ==============================  ============================

The port allocation pattern (preserving, sequential with a delta, random) decides
whether a symmetric NAT's next port can be predicted, and so which technique the
connection engine uses (:func:`recommended_strategy`).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class Behavior(enum.StrEnum):
    """RFC 4787 mapping or filtering behaviour."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNKNOWN = "unknown"


MappingBehavior = Behavior
FilteringBehavior = Behavior


class PortAllocation(enum.StrEnum):
    """How the NAT chooses the public port of a new mapping."""

    PRESERVING = "preserving"
    SEQUENTIAL = "sequential"
    RANDOM = "random"
    UNKNOWN = "unknown"


class NatType(enum.StrEnum):
    """The classic (RFC 3489 / seed) names."""

    OPEN = "open"
    FULL_CONE = "full-cone"
    RESTRICTED_CONE = "restricted-cone"
    PORT_RESTRICTED = "port-restricted"
    SYMMETRIC = "symmetric"
    UDP_BLOCKED = "udp-blocked"


def classify(
    udp_answered: bool, behind_nat: bool, mapping: Behavior, filtering: Behavior
) -> NatType:
    """The classic name for measured behaviour.

    When filtering could not be measured (no RFC 5780 server), an endpoint-independent
    mapping is reported as port-restricted: the strictest cone, so that the strategy
    never assumes more than was shown.
    """
    if not udp_answered:
        return NatType.UDP_BLOCKED
    if not behind_nat:
        return NatType.OPEN
    if mapping in (Behavior.ADDRESS_DEPENDENT, Behavior.ADDRESS_AND_PORT_DEPENDENT):
        return NatType.SYMMETRIC
    if filtering == Behavior.ENDPOINT_INDEPENDENT:
        return NatType.FULL_CONE
    if filtering == Behavior.ADDRESS_DEPENDENT:
        return NatType.RESTRICTED_CONE
    return NatType.PORT_RESTRICTED


def port_allocation(
    ports: list[int], local_port: int | None = None
) -> tuple[PortAllocation, int | None]:
    """The allocation pattern of successive new mappings' public ports, and the delta.

    ``ports`` are the public ports of mappings made one after another (fresh flows, in
    order). Preserving when every mapping kept its local port (only ``ports[0]`` can be
    checked against ``local_port``, so it is checked there); sequential when the steps are
    all equal and small (at most 16, allowing for none); random otherwise. Fewer than
    three ports cannot tell sequential from chance.
    """
    if not ports:
        return PortAllocation.UNKNOWN, None
    if local_port is not None and ports[0] == local_port and len(set(ports)) == 1:
        return PortAllocation.PRESERVING, 0
    if len(ports) < 3:
        return PortAllocation.UNKNOWN, None
    deltas = [b - a for a, b in itertools.pairwise(ports)]
    if len(set(deltas)) == 1 and 0 < abs(deltas[0]) <= 16:
        return PortAllocation.SEQUENTIAL, deltas[0]
    return PortAllocation.RANDOM, None


MAX_STEP = 16
"""The largest per-flow step still taken for a sequential allocator."""


def allocation_of_flows(
    samples: Sequence[tuple[int, int]], flows: int
) -> tuple[PortAllocation, int | None, int]:
    """The allocation pattern of one socket's new flows, numbered, some perhaps unanswered.

    ``samples`` are ``(flow, public port)`` for the answered flows, where ``flow`` numbers
    the new flows (each to a destination not used before) in the order they were made,
    and ``flows`` is how many were made in all. Returns the pattern, its delta, and the
    last port: for a sequential allocator where the line stands at the last flow made
    (unanswered flows still moved the counter), otherwise the last port seen. Sequential
    needs the ports on one line ``first + delta * flow`` with ``0 < |delta| <=``
    :data:`MAX_STEP`; from two samples that is a guess a random allocator passes by
    chance about once in two thousand. Needs two samples with different ports.
    """
    ordered = sorted(samples)
    if len(ordered) < 2 or len({port for _, port in ordered}) < 2:
        raise ValueError("needs two samples with different ports")
    (first_flow, first_port), (second_flow, second_port) = ordered[0], ordered[1]
    step, remainder = divmod(second_port - first_port, second_flow - first_flow)
    on_line = (
        remainder == 0
        and 0 < abs(step) <= MAX_STEP
        and all(port == first_port + step * (flow - first_flow) for flow, port in ordered)
    )
    if on_line:
        last = first_port + step * (max(flows, ordered[-1][0] + 1) - 1 - first_flow)
        return PortAllocation.SEQUENTIAL, step, last
    return PortAllocation.RANDOM, None, ordered[-1][1]


@dataclass
class NatInfo:
    """The result of NAT discovery: the seed's fields and RFC 5780's."""

    type: NatType
    mapping: Behavior = Behavior.UNKNOWN
    filtering: Behavior = Behavior.UNKNOWN
    public_address: str | None = None
    public_port: int | None = None
    local_address: str | None = None
    local_port: int | None = None
    port_allocation: PortAllocation = PortAllocation.UNKNOWN
    port_delta: int | None = None
    hairpinning: bool | None = None
    server: str | None = None
    rfc5780: bool = False
    notes: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    """What each finding rests on (``mapping: ...``, ``allocation: ...``), in words."""
    port_mapping: dict[str, bool] | None = None
    """Which of ``upnp``, ``natpmp`` and ``pcp`` the router answers (None: not asked)."""

    @property
    def port_predictable(self) -> bool:
        """Whether the next public port can be known in advance (the seed's field)."""
        if self.type in (NatType.OPEN, NatType.UDP_BLOCKED):
            return self.type == NatType.OPEN
        if self.mapping == Behavior.ENDPOINT_INDEPENDENT:
            return True
        return self.port_allocation in (PortAllocation.PRESERVING, PortAllocation.SEQUENTIAL)

    def to_json(self) -> dict[str, Any]:
        """The nat-check JSON object (also sent in offers as the ``nat`` field)."""
        return {
            "type": self.type.value,
            "mapping": self.mapping.value,
            "filtering": self.filtering.value,
            "publicAddress": self.public_address,
            "publicPort": self.public_port,
            "localAddress": self.local_address,
            "localPort": self.local_port,
            "portAllocation": self.port_allocation.value,
            "portDelta": self.port_delta,
            "hairpinning": self.hairpinning,
            "portPredictable": self.port_predictable,
            "rfc5780": self.rfc5780,
            "server": self.server,
            "notes": list(self.notes),
            "evidence": list(self.evidence),
            "portMapping": dict(self.port_mapping) if self.port_mapping is not None else None,
            "strategy": recommended_strategy(self),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NatInfo:
        """Read back what :meth:`to_json` wrote (e.g. a peer's offer); raises ValueError."""
        try:
            return cls(
                type=NatType(data["type"]),
                mapping=Behavior(data.get("mapping", "unknown")),
                filtering=Behavior(data.get("filtering", "unknown")),
                public_address=data.get("publicAddress"),
                public_port=data.get("publicPort"),
                local_address=data.get("localAddress"),
                local_port=data.get("localPort"),
                port_allocation=PortAllocation(data.get("portAllocation", "unknown")),
                port_delta=data.get("portDelta"),
                hairpinning=data.get("hairpinning"),
                rfc5780=bool(data.get("rfc5780", False)),
                server=data.get("server"),
                notes=list(data.get("notes", [])),
                evidence=[str(e) for e in data.get("evidence") or []],
                port_mapping=(
                    {str(k): bool(v) for k, v in data["portMapping"].items()}
                    if isinstance(data.get("portMapping"), dict)
                    else None
                ),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a NAT description: {e}") from None


_STRATEGIES: dict[NatType, dict[str, Any]] = {
    NatType.OPEN: {
        "strategy": "direct",
        "recommendation": "No NAT: peers can connect to this host directly.",
        "methods": ["direct", "udp-hole-punch", "tcp-hole-punch"],
        "difficulty": "easy",
        "successRate": 1.0,
    },
    NatType.FULL_CONE: {
        "strategy": "udp-hole-punch",
        "recommendation": "Simple UDP hole punching: any peer can reach the mapped address.",
        "methods": ["udp-hole-punch", "tcp-hole-punch", "turn-relay"],
        "difficulty": "easy",
        "successRate": 0.99,
    },
    NatType.RESTRICTED_CONE: {
        "strategy": "udp-hole-punch",
        "recommendation": "Standard UDP hole punching, coordinated through signaling.",
        "methods": ["udp-hole-punch", "tcp-hole-punch", "turn-relay"],
        "difficulty": "medium",
        "successRate": 0.95,
    },
    NatType.PORT_RESTRICTED: {
        "strategy": "udp-hole-punch",
        "recommendation": "Coordinated hole punching with simultaneous sends from both peers.",
        "methods": ["udp-hole-punch", "tcp-hole-punch", "turn-relay"],
        "difficulty": "medium",
        "successRate": 0.9,
    },
    NatType.UDP_BLOCKED: {
        "strategy": "tcp-hole-punch",
        "recommendation": "UDP is blocked: TCP simultaneous open, else a TURN relay over TCP.",
        "methods": ["tcp-hole-punch", "turn-relay"],
        "difficulty": "hard",
        "successRate": 0.6,
    },
}


def recommended_strategy(info: NatInfo) -> dict[str, Any]:
    """The seed's strategy object: strategy, recommendation, methods, difficulty, natType."""
    if info.type == NatType.SYMMETRIC:
        if info.port_allocation in (PortAllocation.SEQUENTIAL, PortAllocation.PRESERVING):
            base = {
                "strategy": "port-prediction",
                "recommendation": (
                    f"Symmetric NAT with sequential ports (delta {info.port_delta}): "
                    "predict the next mappings and punch to them."
                ),
                "methods": ["port-prediction", "udp-hole-punch", "tcp-hole-punch", "turn-relay"],
                "difficulty": "hard",
                "successRate": 0.8,
            }
        else:
            base = {
                "strategy": "birthday",
                "recommendation": (
                    "Symmetric NAT with random ports: birthday probing against an easier "
                    "peer, else a TURN relay."
                ),
                "methods": ["birthday", "tcp-hole-punch", "turn-relay"],
                "difficulty": "hard",
                "successRate": 0.6,
            }
    else:
        base = dict(_STRATEGIES[info.type])
    base["natType"] = info.type.value
    base["portPredictable"] = info.port_predictable
    return base


FamilyResult = NatInfo | str
"""One address family's discovery outcome: the report, or a sentence saying why there is
none (no server of that family, no route, no answer)."""


def main_report(results: Mapping[int, FamilyResult]) -> tuple[int, NatInfo] | None:
    """The report that stands for the host where one is shown, and its family: IPv4's
    when it answered, else IPv6's; None when no family answered."""
    return next(((f, r) for f, r in sorted(results.items()) if isinstance(r, NatInfo)), None)


def families_json(results: Mapping[int, FamilyResult]) -> dict[str, dict[str, Any]]:
    """Each family's report as JSON, keyed ``IPv4`` / ``IPv6``: ``{"family": "IPv6",
    ...NatInfo.to_json()}``, or ``{"family": "IPv6", "error": why}`` for a family with
    none (``families`` of ``holepunch nat-check --json`` and of ``/p2p/nat``)."""
    families: dict[str, dict[str, Any]] = {}
    for family, result in sorted(results.items()):
        name = f"IPv{family}"
        if isinstance(result, NatInfo):
            families[name] = {"family": name, **result.to_json()}
        else:
            families[name] = {"family": name, "error": result}
    return families


def no_report_reasons(results: Mapping[int, FamilyResult]) -> str:
    """Why the families without a report have none, in one line (``IPv4: ...; IPv6: ...``)."""
    return "; ".join(f"IPv{f}: {r}" for f, r in sorted(results.items()) if isinstance(r, str))

# -*- test-case-name: tests.unit.test_ice_hardnat -*-
"""Hard NATs: which extra technique a pair of peers needs, and its arithmetic.

Pure rules, no sockets. The agent measures its own mapping during gathering: Binding
requests from its one socket to destinations that differ in address or port (every
configured STUN server, a single server's second port, and a server's RFC 5780
OTHER-ADDRESS where it has one) are new flows, and their public ports say whether the
NAT maps per destination and how it allocates (:func:`profile_from_flows`). It sends the
result in its offer or answer as ``ice.mapping``. With both sides' profiles,
:func:`plan` says what to add to plain ICE:

- **Port prediction** when the peer's NAT allocates sequentially (delta ``d``): its next
  flows will leave from ``last + d``, ``last + 2d``, ... so we add those as predicted
  remote candidates. When *both* sides are sequential, each side's i-th new flow must go
  to the other's i-th predicted port, so the predicted checks go out first and in order,
  before any other new flow.
- **Birthday probing** when the peer's NAT allocates at random but ours maps
  endpoint-independently: the hard side opens many sockets (256) that each send a check
  to our public address, creating 256 random public ports that accept replies from us;
  we (the easy side) send checks to random ports of the hard side's public address until
  one lands. With ``n`` open ports out of ``N`` and ``k`` probes the chance of a hit is
  ``1 - prod_{i<k} (1 - n/(N-i))`` (:func:`birthday_success`).

Random against random (or against a sequential NAT) has no direct path: a relay (TURN).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from holepunch.nat.model import PortAllocation, allocation_of_flows

PORT_RANGE = (1024, 65535)


class Technique(enum.Enum):
    """What the agent adds to plain ICE for a pair."""

    PREDICT = "port-prediction"
    PREDICT_IN_ORDER = "port-prediction-in-order"
    BIRTHDAY_HARD = "birthday-hard-side"
    BIRTHDAY_EASY = "birthday-easy-side"


@dataclass(frozen=True)
class MappingProfile:
    """How one side's NAT maps its flows, as measured from the agent's own socket."""

    address: str
    last_port: int
    endpoint_independent: bool
    allocation: PortAllocation
    delta: int | None = None

    @property
    def sequential(self) -> bool:
        """Mapping varies per destination, in steps of ``delta``."""
        return (
            not self.endpoint_independent
            and self.allocation == PortAllocation.SEQUENTIAL
            and bool(self.delta)
        )

    @property
    def random(self) -> bool:
        """Mapping varies per destination, unpredictably."""
        return not self.endpoint_independent and not self.sequential

    def to_json(self) -> dict[str, Any]:
        """The ``ice.mapping`` object of an offer or answer."""
        return {
            "address": self.address,
            "port": self.last_port,
            "endpointIndependent": self.endpoint_independent,
            "allocation": self.allocation.value,
            "delta": self.delta,
        }

    @classmethod
    def from_json(cls, data: Any) -> MappingProfile:
        """Read ``ice.mapping``; raises ValueError on anything malformed."""
        import ipaddress

        if not isinstance(data, dict):
            raise ValueError("mapping is not an object")
        try:
            address = str(ipaddress.ip_address(data["address"]))
            port = int(data["port"])
            delta = data.get("delta")
            profile = cls(
                address,
                port,
                bool(data["endpointIndependent"]),
                PortAllocation(data["allocation"]),
                int(delta) if delta is not None else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad mapping: {e}") from None
        if not 0 < port < 65536 or (profile.delta is not None and abs(profile.delta) > 1000):
            raise ValueError("mapping port or delta out of range")
        return profile


def profile_from_flows(
    address: str, samples: Sequence[tuple[int, int]], flows: int
) -> MappingProfile | None:
    """Our mapping from the answered flows of one socket, or None when they cannot tell.

    ``samples`` are ``(flow, public port)`` for the flows that were answered, where
    ``flow`` numbers the socket's new flows (each to a destination it had not used) in
    the order they were made, and ``flows`` is how many were made in all (answered or
    not). Two destinations are enough: the same public port toward both means the NAT
    maps endpoint-independently; otherwise the pattern is
    :func:`holepunch.nat.model.allocation_of_flows`'s.
    """
    ordered = sorted(samples)
    if len({flow for flow, _ in ordered}) < 2:
        return None
    ports = [port for _, port in ordered]
    if len(set(ports)) == 1:
        return MappingProfile(address, ports[-1], True, PortAllocation.PRESERVING, 0)
    allocation, delta, last = allocation_of_flows(ordered, flows)
    return MappingProfile(address, last, False, allocation, delta)


def plan(local: MappingProfile | None, remote: MappingProfile | None) -> set[Technique]:
    """The techniques to add for this pair of mappings (empty: plain ICE will do)."""
    if local is None or remote is None:
        return set()
    techniques: set[Technique] = set()
    if remote.sequential and (local.endpoint_independent or local.sequential):
        techniques.add(Technique.PREDICT_IN_ORDER if local.sequential else Technique.PREDICT)
    if local.random and remote.endpoint_independent:
        techniques.add(Technique.BIRTHDAY_HARD)
    if remote.random and local.endpoint_independent:
        techniques.add(Technique.BIRTHDAY_EASY)
    return techniques


def predicted_ports(remote: MappingProfile, window: int) -> list[int]:
    """The peer's next ``window`` public ports, in the order its flows will take them."""
    if not remote.delta:
        return []
    ports = []
    for i in range(1, window + 1):
        port = remote.last_port + remote.delta * i
        if PORT_RANGE[0] <= port <= PORT_RANGE[1]:
            ports.append(port)
    return ports


def birthday_success(
    open_ports: int, probes: int, space: int = PORT_RANGE[1] - PORT_RANGE[0] + 1
) -> float:
    """Chance that ``probes`` distinct random ports hit one of ``open_ports`` in ``space``."""
    miss = 1.0
    for i in range(min(probes, space)):
        remaining = space - i
        if remaining <= open_ports:
            return 1.0
        miss *= 1 - open_ports / remaining
    return 1 - miss

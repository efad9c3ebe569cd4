# -*- test-case-name: tests.test_ice_core -*-
"""Gathering (RFC 8445 5.1.1): host, server-reflexive and relayed candidates, and our
NAT's mapping, for the sans-I/O :class:`IceCore <holepunch.ice.core.IceCore>`.

- Host candidates: one per local address, all on the main socket (RFC 8445 5.1.1.1).
- Server-reflexive candidates: a Binding request to each STUN server from the main
  socket, so the mapping learned is the one the checks will use (5.1.1.2).
- Our mapping (for :mod:`holepunch.ice.hardnat`): the public ports of several new flows
  from the same socket say whether the NAT maps per destination and how it allocates.
- Relayed candidates: the core asks its adapter for TURN allocations
  (:class:`RelaysWanted <holepunch.ice.events.RelaysWanted>`) once STUN is done; on a
  sequential NAT only after the predicted checks went out, since an allocation is one
  more flow that would move the NAT's counter.

Candidates are announced as they are found (trickle ICE), then end-of-candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from twisted.logger import Logger

from holepunch.ice import events
from holepunch.ice.candidate import make_candidate
from holepunch.ice.events import MAIN
from holepunch.ice.hardnat import MappingProfile
from holepunch.stun.client import parse_binding_response
from holepunch.stun.message import Address, StunDecodeError, StunMessage
from holepunch.stun.transactions import TransactionOutcome

if TYPE_CHECKING:
    from holepunch.ice.core import IceCore

_log = Logger()

_AFTER_PREDICTIONS = 4.0
"""The longest the relay allocation waits for the predicted checks to go out."""


@dataclass
class _Srflx:
    server: Address


@dataclass
class _Probe:
    server: Address
    other: Address
    host: str
    ports: list[int]
    targets: list[Address] = field(default_factory=list)


@dataclass
class _Remeasure:
    target: Address


class Gatherer:
    """The gathering of one core."""

    def __init__(self, core: IceCore) -> None:
        self.core = core
        self.stun_complete = False
        self.complete = False
        self.stun_answers = 0
        self._servers_pending = 0
        self._probe_targets: tuple[Address, Address] | None = None
        self._relay_deadline = 0.0

    @property
    def udp_blocked(self) -> bool:
        """STUN servers were asked over UDP and none answered (known once STUN is done)."""
        return (
            bool(self.core.config.gathering.stun_servers)
            and self.stun_complete
            and not self.stun_answers
        )

    def start(self, hosts: Sequence[str], port: int, servers: Sequence[Address]) -> None:
        """Host candidates now; a Binding to each STUN server."""
        core = self.core
        for preference, host in enumerate(hosts):
            candidate = make_candidate("host", host, port, local_preference=65535 - preference)
            core.host_bases[host] = candidate
            core.add_local(candidate)
        core.checker.pair_all()
        self._servers_pending = len(servers)
        for server in servers:
            self._binding(server, _Srflx(server))
        if not servers:
            self._stun_done()

    def _binding(self, target: Address, payload: object) -> None:
        """One STUN Binding from the main socket (a new flow toward ``target``)."""
        self.core.start_transaction(
            self,
            payload,
            message=StunMessage.request(),
            destination=target,
            via=MAIN,
            policy=self.core.config.gathering.policy,
        )

    def transaction_done(self, outcome: TransactionOutcome, payload: object) -> None:
        """A Binding to a STUN server ended."""
        mapped: Address | None = None
        result = None
        if outcome.response is not None:
            try:
                result = parse_binding_response(outcome.response)
                mapped = result.mapped
            except StunDecodeError as e:
                outcome = replace(outcome, response=None, error=e)
        if isinstance(payload, _Srflx):
            if result is None:
                _log.info(
                    "STUN server {server} gave no reflexive address: {err}",
                    server=(payload.server.host, payload.server.port),
                    err=outcome.error,
                )
                self._server_done()
                return
            self._reflexive(payload.server, result.mapped)
            other = result.other_address
            if self.core.config.gathering.probe_mapping and self.core.mapping is None:
                server = payload.server
                if other is not None and other.host != server.host and other.port != server.port:
                    probe = _Probe(server, other, result.mapped.host, [result.mapped.port])
                    probe.targets = [Address(other.host, server.port), other]
                    self._binding(probe.targets.pop(0), probe)
                    return
            self._server_done()
        elif isinstance(payload, _Probe):
            if mapped is None:
                _log.info(
                    "mapping probe to {t} failed: {err}", t=outcome.destination, err=outcome.error
                )
            else:
                payload.ports.append(mapped.port)
                if payload.targets:
                    self._binding(payload.targets.pop(0), payload)
                    return
            self._measured(payload)
            self._server_done()
        elif isinstance(payload, _Remeasure):
            core = self.core
            if mapped is None:
                _log.info("mapping re-measure failed: {err}", err=outcome.error)
            elif core.mapping is not None:
                core.mapping = replace(core.mapping, last_port=mapped.port)
                _log.info("our mapping's last port is now {port}", port=mapped.port)
            core.emit(events.MappingMeasured())

    def _reflexive(self, server: Address, mapped: Address) -> None:
        core = self.core
        self.stun_answers += 1
        base = core.base_for(server.host, server.port)
        if mapped != Address(base.host, base.port):
            srflx = make_candidate(
                "srflx",
                mapped.host,
                mapped.port,
                base=(base.host, base.port),
                server=f"{server.host}:{server.port}",
                local_preference=base.priority >> 8 & 0xFFFF,
            )
            if core.add_local(srflx):
                _log.debug("server-reflexive candidate {c}", c=srflx.to_sdp())

    def _measured(self, probe: _Probe) -> None:
        """Our mapping from the ports of the probe's flows (RFC 5780 OTHER-ADDRESS)."""
        ports = probe.ports
        if len(ports) < 3 and len(set(ports)) == 1:
            return  # one sample: say nothing rather than guess
        core = self.core
        self._probe_targets = (probe.server, probe.other)
        core.mapping = MappingProfile.from_ports(probe.host, ports)
        _log.info("our mapping: ports {ports} -> {profile}", ports=ports, profile=core.mapping)
        core.probing.plan()
        core.emit(events.MappingMeasured())

    def remeasure(self) -> bool:
        """One new flow to a destination the probe did not use, for the latest port."""
        core = self.core
        mapping = core.mapping
        if mapping is None or not mapping.sequential or self._probe_targets is None:
            return False
        if core.closed:
            return False
        server, other = self._probe_targets
        self._probe_targets = None  # used now; a second call would not be a new flow
        target = Address(server.host, other.port)
        self._binding(target, _Remeasure(target))
        return True

    def _server_done(self) -> None:
        self._servers_pending -= 1
        if self._servers_pending <= 0 and not self.stun_complete:
            self._stun_done()

    def _stun_done(self) -> None:
        core = self.core
        self.stun_complete = True
        core.emit(events.StunComplete())
        core.checker.schedule()
        if not core.config.relay.servers:
            self.finish()
        elif core.mapping is not None and core.mapping.sequential:
            self._relay_deadline = core.now + _AFTER_PREDICTIONS
            self.timer("relay-gather")
        else:
            core.emit(events.RelaysWanted())

    def timer(self, name: str) -> None:
        """Wait for the ordered predicted checks before asking for relays."""
        core = self.core
        if core.closed:
            return
        if core.now >= self._relay_deadline or (core.techniques and not core.probing.ordered):
            core.emit(events.RelaysWanted())
            return
        core.timers.set("relay-gather", core.now + core.config.checks.ta)

    def add_relay(
        self, via: int, relayed: tuple[str, int], mapped: tuple[str, int], server: str
    ) -> None:
        """A relayed candidate on relay ``via``; paired with every remote candidate."""
        core = self.core
        relay = make_candidate(
            "relay", relayed[0], relayed[1], base=mapped, server=f"turn:{server}"
        )
        core.socket_bases[via] = relay
        core.add_local(relay)
        _log.info("relayed candidate {c}", c=relay.to_sdp())
        for remote in core.remote_candidates:
            core.emit(events.PermissionWanted(remote.host, via))
            core.checklist.add(relay, remote)
        core.checker.schedule()

    def finish(self) -> None:
        """Every candidate is known: end-of-candidates."""
        if self.complete:
            return
        self.complete = True
        self.core.emit(events.LocalCandidate(None))
        self.core.checker.schedule()

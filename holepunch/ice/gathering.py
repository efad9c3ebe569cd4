# -*- test-case-name: tests.unit.test_ice_core -*-
"""Gathering (RFC 8445 5.1.1): host, server-reflexive and relayed candidates, and our
NAT's mapping, for the sans-I/O :class:`IceCore <holepunch.ice.core.IceCore>`.

- Host candidates: one per local address, all on the main socket (RFC 8445 5.1.1.1).
- Server-reflexive candidates: a Binding request to each STUN server from the main
  socket, so the mapping learned is the one the checks will use (5.1.1.2).
- Our mapping (for :mod:`holepunch.ice.hardnat`): every Binding from the main socket to a
  destination it had not used is a new flow, and the public ports of those flows say
  whether the NAT maps per destination and how it allocates
  (:func:`holepunch.ice.hardnat.profile_from_flows`). The flows are the ones gathering
  makes anyway (one per configured STUN server; the defaults are two servers), plus the
  second port of a lone server (port + 1: the daemon answers on 3478 and 3479), plus a
  server's RFC 5780 OTHER-ADDRESS where it has one. The answers of the peer's checks
  (our mapping toward the peer) are samples too.
- Relayed candidates: the core asks its adapter for TURN allocations
  (:class:`RelaysWanted <holepunch.ice.events.RelaysWanted>`) once STUN is done; on a
  sequential NAT only after the predicted checks went out, since an allocation is one
  more flow that would move the NAT's counter.

Candidates are announced as they are found (trickle ICE), then end-of-candidates.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace

from twisted.logger import Logger

from holepunch.addresses import ip_version
from holepunch.ice import events
from holepunch.ice.candidate import host_preferences, make_candidate
from holepunch.ice.events import MAIN
from holepunch.ice.hardnat import profile_from_flows
from holepunch.ice.parts import Core
from holepunch.stun.client import parse_binding_response
from holepunch.stun.message import StunMessage
from holepunch.stun.transactions import RetransmissionPolicy, TransactionOutcome
from holepunch.stun.wire import Address, StunDecodeError

_log = Logger()

_AFTER_PREDICTIONS = 4.0
"""The longest the relay allocation waits for the predicted checks to go out."""


PORT_MAPPING_EXTENSION = "x-port-mapping"
"""Candidate extension attribute (RFC 8839 ``extension-att-name``) naming how a
candidate's address was mapped by the router (``pcp``, ``natpmp``, ``upnp``); peers that
do not know it ignore it."""


def _mappable(host: str) -> bool:
    """A host address a router could map (not loopback or link-local)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_link_local)


_SECOND_PORT_POLICY = RetransmissionPolicy(rto=0.1, rc=2, rm=4)
"""A lone server's port + 1 may not answer (only some servers listen there): ~0.5 s."""


@dataclass
class _Flow:
    """A Binding from the main socket to a destination it had not used: a new flow."""

    index: int
    target: Address
    kind: str
    """``stun`` (a configured server: a server-reflexive candidate too), ``second-port``
    (a lone server's port + 1) or ``rfc5780`` (a server's OTHER-ADDRESS)."""


@dataclass
class _Remeasure:
    target: Address
    via: int


class Gatherer:
    """The gathering of one core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.stun_complete = False
        self.mapping_complete = False
        """Every IPv4 flow of the gathering (the STUN servers', a lone server's second
        port, RFC 5780's) answered or gave up: our mapping is known if it can be. IPv6
        Bindings do not count: IPv6 has no NAT to measure, and a broken IPv6 path (an
        address with no route, common) must not hold the description and the checks
        until its Binding times out."""
        self._settled_announced = False
        self.udp_presumed_blocked = False
        """No STUN server answered over UDP one retransmission interval after one
        answered over TCP (:meth:`tcp_answered`): UDP is taken as blocked before every
        Binding gave up."""
        self._relays_asked = False
        self._tcp_families: set[int] = set()
        """The families (4, 6) in which a STUN server answered over TCP."""
        self._families_asked: set[int] = set()
        """The families of the STUN servers our Bindings went to."""
        self._started = False
        self.complete = False
        self.stun_answers = 0
        self.samples: list[tuple[int, int]] = []
        """``(flow, public port)`` of the main socket's answered new flows, in order."""
        self.evidence: list[str] = []
        """Where each sample came from (``stun:host:port``, ``second-port:...``,
        ``rfc5780:...``, ``peer:...``)."""
        self._flows: dict[Address, int] = {}
        self._mapped_host: str | None = None
        self._pending = 0
        self._pending_v4 = 0
        self._rfc5780: tuple[Address, Address] | None = None
        self._servers: list[Address] = []
        self._remeasure: _Remeasure | None = None
        self._relay_deadline = 0.0
        self._port_mapping_pending = False
        self._finish_waiting = False
        self.port_mapped: list[tuple[str, int]] = []
        """External addresses the router mapped to our main socket."""

    @property
    def udp_blocked(self) -> bool:
        """STUN servers were asked over UDP and none answered (known once STUN is done,
        or presumed earlier: :attr:`udp_presumed_blocked`)."""
        return (
            bool(self.core.config.gathering.stun_servers)
            and (self.stun_complete or self.udp_presumed_blocked)
            and not self.stun_answers
        )

    def tcp_answered(self, family: int) -> None:
        """A STUN server answered over TCP in ``family`` (4, 6: the TCP track learnt its
        mapping). Once that holds for every family our Bindings go to, if no server has
        answered over UDP one retransmission interval later (the gathering policy's
        ``rto``: time for one lost Binding to be sent again and answered), UDP is
        presumed blocked (``TcpConfig.presume_udp_blocked``). A family without that
        evidence (an IPv6 server asked over UDP only, say) is waited for as before: its
        UDP may work where the other family's is blocked."""
        self._tcp_families.add(family)
        if self._started:  # else from when the Bindings go out
            self._await_udp()

    def _await_udp(self) -> None:
        core = self.core
        config = core.config
        if (
            config.tcp.presume_udp_blocked
            and config.gathering.stun_servers
            and not self.stun_answers
            and not self.stun_complete
            and not self.udp_presumed_blocked
            and not core.closed
            and self._families_asked <= self._tcp_families
        ):
            core.timers.set("udp-presumed", core.now + config.gathering.policy.rto)

    def _presume_udp_blocked(self) -> None:
        if self.stun_answers or self.stun_complete or self.udp_presumed_blocked:
            return
        self.udp_presumed_blocked = True
        _log.info(
            "no STUN server answered over UDP, one did over TCP: UDP taken as blocked "
            "(its Bindings go on; a late answer still counts)"
        )
        self._maybe_settled()
        self.core.checker.schedule()  # no mapping to wait for
        if self.core.config.relay.servers:
            self._want_relays()

    def _want_relays(self) -> None:
        """Ask for the relays, once (early when UDP is presumed blocked)."""
        if not self._relays_asked:
            self._relays_asked = True
            self.core.emit(events.RelaysWanted())

    def start(self, hosts: Sequence[str], port: int, servers: Sequence[Address]) -> None:
        """Host candidates now; a Binding to each STUN server (and a lone server's
        second port, for the mapping)."""
        core = self.core
        preferences = host_preferences(hosts)
        for host in hosts:
            candidate = make_candidate("host", host, port, local_preference=preferences[host])
            core.host_bases[host] = candidate
            core.add_local(candidate)
        core.checker.pair_all()
        mappable = tuple(h for h in hosts if _mappable(h))
        if core.config.gathering.port_mapping and mappable:
            self._port_mapping_pending = True
            core.emit(events.PortMappingWanted(port, mappable))
        families = {ip_version(h) for h in hosts}
        usable = [s for s in dict.fromkeys(servers) if ip_version(s.host) in families]
        # Our mapping (port prediction, birthday probing) is measured on IPv4 only: IPv6
        # has no NAT to predict, and its flows must not move the IPv4 flow count.
        self._servers = [s for s in usable if ip_version(s.host) == 4]
        for server in usable:
            self._new_flow(server, "stun")
        if self._measuring() and len(self._servers) == 1 and self._servers[0].port < 65535:
            lone = self._servers[0]
            self._new_flow(
                Address(lone.host, lone.port + 1), "second-port", policy=_SECOND_PORT_POLICY
            )
        self._started = True
        if not self._pending_v4:
            self._mapping_done()
        if not self._pending:
            self._stun_done()
        elif self._tcp_families:
            self._await_udp()

    def _measuring(self) -> bool:
        return self.core.config.gathering.probe_mapping and self.core.mapping is None

    def _new_flow(
        self,
        target: Address,
        kind: str,
        *,
        policy: RetransmissionPolicy | None = None,
    ) -> None:
        """One STUN Binding from the main socket to a destination it had not used; an
        IPv4 one is a numbered flow (a mapping sample), an IPv6 one is not (index -1)."""
        self._families_asked.add(ip_version(target.host))
        if ip_version(target.host) == 4:
            flow = _Flow(len(self._flows), target, kind)
            self._flows[target] = flow.index
            self._pending_v4 += 1
        else:
            flow = _Flow(-1, target, kind)
        self._pending += 1
        self.core.start_transaction(
            self,
            flow,
            message=StunMessage.request(),
            destination=target,
            via=MAIN,
            policy=policy or self.core.config.gathering.policy,
        )

    def transaction_done(self, outcome: TransactionOutcome, payload: object) -> None:
        """A Binding to a STUN server ended."""
        result = None
        if outcome.response is not None:
            try:
                result = parse_binding_response(outcome.response)
            except StunDecodeError as e:
                outcome = replace(outcome, response=None, error=e)
        if isinstance(payload, _Remeasure):
            self._remeasured(payload, result.mapped if result is not None else None, outcome)
            return
        assert isinstance(payload, _Flow)
        target = (payload.target.host, payload.target.port)
        if result is None:
            _log.info(
                "{what} {target} gave no reflexive address: {err}",
                what="STUN server" if payload.kind == "stun" else f"{payload.kind} probe to",
                target=target,
                err=outcome.error,
            )
        else:
            if payload.index >= 0:
                evidence = f"{payload.kind}:{target[0]}:{target[1]}"
                self._sample(payload.index, result.mapped, evidence)
            if payload.kind == "stun":
                self._reflexive(payload.target, result.mapped)
            other = result.other_address
            if (
                other is not None
                and payload.index >= 0
                and self._measuring()
                and self._rfc5780 is None
                and other.host != payload.target.host
                and other.port != payload.target.port
            ):
                # RFC 5780: two more destinations of the same server, both new flows.
                self._rfc5780 = (payload.target, other)
                for probe in (Address(other.host, payload.target.port), other):
                    if probe not in self._flows:
                        self._new_flow(probe, "rfc5780")
        self._pending -= 1
        if payload.index >= 0:
            self._pending_v4 -= 1
            if self._pending_v4 <= 0 and not self.mapping_complete:
                self._mapping_done()
        if self._pending <= 0 and not self.stun_complete:
            self._stun_done()
        self._maybe_settled()

    def _sample(self, index: int, mapped: Address, evidence: str) -> None:
        self.samples.append((index, mapped.port))
        self.evidence.append(evidence)
        if self._mapped_host is None:
            self._mapped_host = mapped.host

    def peer_sample(self, destination: Address, mapped: Address) -> None:
        """A check from the main socket to ``destination`` was answered: ``mapped`` is our
        mapping toward the peer. A new destination is one more sample; with no mapping
        measured yet (one STUN server, say), it may now be known."""
        if destination in self._flows or not self.mapping_complete or ":" in destination.host:
            return
        index = len(self._flows)
        self._flows[destination] = index
        self._sample(index, mapped, f"peer:{destination.host}:{destination.port}")
        if self._measuring():
            self._measure()

    def _measure(self) -> None:
        """Our mapping from the samples, when they tell."""
        core = self.core
        if self._mapped_host is None:
            return
        profile = profile_from_flows(self._mapped_host, self.samples, len(self._flows))
        if profile is None:
            return
        core.mapping = profile
        _log.info(
            "our mapping: {profile} (from {evidence})",
            profile=profile,
            evidence=", ".join(self.evidence),
        )
        core.probing.plan()
        core.emit(events.MappingMeasured())

    def _reflexive(self, server: Address, mapped: Address) -> None:
        core = self.core
        self.stun_answers += 1
        base = core.base_for(server.host, server.port)
        if base is not None and mapped != Address(base.host, base.port):
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

    def remeasure(self) -> bool:
        """One new flow, for the latest public port of a sequential NAT.

        To a destination of a server the socket has not used (RFC 5780's other port) when
        there is one; otherwise from a fresh socket to a server: a sequential NAT's counter
        is shared by all flows, so the port that flow gets is the latest one too.
        """
        core = self.core
        mapping = core.mapping
        if core.closed or mapping is None or not mapping.sequential or self._remeasure:
            return False
        fresh = sorted(self._rfc5780_destinations() - set(self._flows))
        if fresh:
            target = fresh[0]
            self._flows[target] = len(self._flows)
            self._remeasure = _Remeasure(target, MAIN)
            self._start_remeasure()
        elif self._servers:
            self._remeasure = _Remeasure(self._servers[0], core.new_via())
            core.emit(events.SocketWanted(self._remeasure.via))
        else:
            return False
        return True

    def _rfc5780_destinations(self) -> set[Address]:
        """Destinations known to answer: the RFC 5780 server's two addresses crossed
        with its two ports."""
        if self._rfc5780 is None:
            return set()
        server, other = self._rfc5780
        return {Address(h, p) for h in (server.host, other.host) for p in (server.port, other.port)}

    def owns_socket(self, via: int) -> bool:
        """``via`` is the re-measure's fresh socket."""
        return self._remeasure is not None and self._remeasure.via == via != MAIN

    def socket_opened(self, via: int) -> None:
        """The fresh socket for the re-measure is open."""
        self._start_remeasure()

    def socket_failed(self, via: int) -> None:
        """No fresh socket: the mapping stays as measured."""
        self._remeasure = None
        self.core.emit(events.MappingMeasured())

    def _start_remeasure(self) -> None:
        remeasure = self._remeasure
        assert remeasure is not None
        self.core.start_transaction(
            self,
            remeasure,
            message=StunMessage.request(),
            destination=remeasure.target,
            via=remeasure.via,
            policy=self.core.config.gathering.policy,
        )

    def _remeasured(
        self, remeasure: _Remeasure, mapped: Address | None, outcome: TransactionOutcome
    ) -> None:
        core = self.core
        self._remeasure = None
        if remeasure.via != MAIN:
            core.release_socket(remeasure.via)
        if mapped is None:
            _log.info("mapping re-measure failed: {err}", err=outcome.error)
        elif core.mapping is not None:
            core.mapping = replace(core.mapping, last_port=mapped.port)
            _log.info("our mapping's last port is now {port}", port=mapped.port)
        core.emit(events.MappingMeasured())

    def _mapping_done(self) -> None:
        core = self.core
        if self._measuring():
            self._measure()
        self.mapping_complete = True
        self._maybe_settled()
        core.checker.schedule()

    @property
    def settled(self) -> bool:
        """The mapping is complete and whether UDP is blocked is known (a server
        answered, or every one gave up), or UDP is presumed blocked: what a description
        carries is known. Every part only ever goes one way, so once true it stays true."""
        return self.udp_presumed_blocked or (  # presumed only while no server had answered
            self.mapping_complete and bool(self.stun_answers or self.stun_complete)
        )

    def _maybe_settled(self) -> None:
        """Emit StunSettled the first time :attr:`settled` holds."""
        if not self._settled_announced and self.settled:
            self._settled_announced = True
            self.core.emit(events.StunSettled())

    def _stun_done(self) -> None:
        core = self.core
        self.stun_complete = True
        self._maybe_settled()  # before end-of-candidates: the description goes out first
        core.checker.schedule()
        core.timers.cancel("udp-presumed")
        if self._relays_asked:  # asked when UDP was presumed blocked
            if self._finish_waiting:
                self.finish()
        elif not core.config.relay.servers:
            self.finish()
        elif core.mapping is not None and core.mapping.sequential:
            self._relay_deadline = core.now + _AFTER_PREDICTIONS
            self.timer("relay-gather")
        else:
            self._want_relays()

    def timer(self, name: str) -> None:
        """``udp-presumed``: see :meth:`tcp_answered`. ``relay-gather``: wait for the
        ordered predicted checks before asking for relays."""
        core = self.core
        if core.closed:
            return
        if name == "udp-presumed":
            self._presume_udp_blocked()
            return
        if core.now >= self._relay_deadline or (core.techniques and not core.probing.ordered):
            self._want_relays()
            return
        core.timers.set("relay-gather", core.now + core.config.checks.ta)

    def add_relay(
        self, via: int, relayed: tuple[str, int], mapped: tuple[str, int], server: str
    ) -> None:
        """A relayed candidate on relay ``via``; paired with every remote candidate of
        its family."""
        core = self.core
        relay = make_candidate(
            "relay", relayed[0], relayed[1], base=mapped, server=f"turn:{server}"
        )
        core.socket_bases[via] = relay
        core.add_local(relay)
        _log.info("relayed candidate {c}", c=relay.to_sdp())
        family = ip_version(relay.host)
        for remote in core.remote_candidates:
            if ip_version(remote.host) != family:
                continue  # a relayed address reaches peers of its own family only
            core.emit(events.PermissionWanted(remote.host, via))
            core.checklist.add(relay, remote)
        core.checker.schedule()

    def port_mapping_done(
        self, external: tuple[str, int] | None, internal_host: str | None, method: str
    ) -> None:
        """The router mapped ``external`` to our main socket (None: it did not)."""
        core = self.core
        self._port_mapping_pending = False
        if external is not None and not core.closed:
            base = core.host_bases.get(internal_host or "") or next(iter(core.host_bases.values()))
            candidate = replace(
                make_candidate(
                    "srflx",
                    external[0],
                    external[1],
                    base=(base.host, base.port),
                    server=f"port-mapping:{method}",
                ),
                extensions=((PORT_MAPPING_EXTENSION, method),),
            )
            self.port_mapped.append(external)
            if core.add_local(candidate):
                # Sent from the main socket like a STUN one, so nothing new to pair: the
                # peer's checks to it are what the mapping is for.
                _log.info("port-mapped candidate {c} ({m})", c=candidate.to_sdp(), m=method)
        if self._finish_waiting:
            self.finish()

    def finish(self) -> None:
        """Every candidate is known: end-of-candidates (once the router answered and every
        Binding answered or gave up)."""
        if self.complete:
            return
        if self._port_mapping_pending or not self.stun_complete:
            # The router's answer, or the Bindings (relays asked early, when UDP was
            # presumed blocked, may be done before them): finished when they are.
            self._finish_waiting = True
            return
        self.complete = True
        self.core.emit(events.LocalCandidate(None))
        self.core.checker.schedule()

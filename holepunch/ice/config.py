# -*- test-case-name: tests.unit.test_ice_agent -*-
"""Settings of the ICE engine, grouped by the part of the engine that reads them.

:class:`IceConfig` holds one sub-config per concern: :class:`GatheringConfig` (RFC 8445
5.1), :class:`CheckConfig` (6.1.4, 7.2, 8.1), :class:`ConsentConfig` (RFC 7675 and RFC
8445 11), :class:`HardNatConfig` (port prediction and birthday probing),
:class:`RelayConfig` (TURN, RFC 8656), :class:`TcpConfig` (RFC 6544 simultaneous
open) and :class:`RestartConfig` (ICE restart, better paths). Every wait is bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from holepunch.stun.transactions import RetransmissionPolicy


@dataclass
class GatheringConfig:
    """Where candidates come from."""

    stun_servers: Sequence[tuple[str, int]] = ()
    """STUN servers asked for server-reflexive candidates, from the agent's socket."""
    addresses: Sequence[str] | None = None
    """Local addresses for host candidates (None: every usable local IPv4 address)."""
    include_loopback: bool = False
    port: int = 0
    """The main socket's port (0: any)."""
    policy: RetransmissionPolicy = field(
        default_factory=lambda: RetransmissionPolicy(rto=0.2, rc=3, rm=4)
    )
    """Retransmissions of the Binding requests to STUN servers."""
    probe_mapping: bool = True
    """Measure our NAT's mapping from the agent's socket (for port prediction and
    birthday probing)."""
    port_mapping: bool = True
    """Ask the router for a mapping of the agent's socket (PCP, NAT-PMP, UPnP IGD) and
    offer it as a candidate; never for loopback or link-local addresses."""
    port_mapping_timeout: float = 1.0
    """The longest end-of-candidates waits for the router (in parallel with STUN)."""
    port_mapping_lifetime: int = 600
    """Seconds the router is asked to keep the mapping; renewed at half-life while the
    agent lives, deleted when it closes."""


@dataclass
class CheckConfig:
    """Connectivity checks and nomination."""

    ta: float = 0.02
    """Pacing: one new check every ``ta`` seconds (RFC 8445 14.2)."""
    policy: RetransmissionPolicy = field(
        default_factory=lambda: RetransmissionPolicy(rto=0.1, rc=7, rm=8)
    )
    """Retransmissions of one check."""
    nomination_delay: float = 0.15
    """How long the controlling agent waits for a better pair before nominating."""
    ipv6_wait: float = 0.5
    """How long it waits instead while only IPv4 pairs are valid and an IPv6 pair may
    still succeed (RFC 8421 prefers IPv6 where both work)."""
    connection_timeout: float = 30.0
    """The whole attempt fails after this long without a selected pair."""
    max_pairs: int = 100
    early_datagrams: int = 64
    """Application datagrams kept while the peer is selected before we are."""


@dataclass
class ConsentConfig:
    """Consent freshness (RFC 7675) and keepalives (RFC 8445 11) after selection."""

    interval: float = 5.0
    """A consent check every ``interval`` seconds, +/- 20 %."""
    timeout: float = 30.0
    """No answer for this long loses consent and closes the connection."""
    keepalive_interval: float = 25.0
    """A Binding indication whenever nothing else was sent for this long."""


@dataclass
class HardNatConfig:
    """Port prediction and birthday probing (:mod:`holepunch.ice.hardnat`)."""

    prediction_window: int = 10
    """How many of a sequential peer's next ports to try."""
    birthday_sockets: int = 256
    """Sockets the hard (random-port) side opens for birthday probing."""
    birthday_open_rate: float = 1000.0
    """Sockets a second the hard side opens (each sends one check to the peer)."""
    probe_rate: float = 100.0
    """Birthday probes a second from the easy side (all to the peer's address)."""
    max_probes: int = 2000
    max_probe_time: float = 20.0
    birthday_delay: float = 0.3
    """The easy side waits this long for a cheaper path before probing."""


@dataclass
class RelayConfig:
    """TURN relays (RFC 8656) as the last resort."""

    servers: Sequence[Any] = ()
    """:class:`holepunch.turn.TurnServer` s, tried in order for one relayed candidate."""
    timeout: float = 5.0
    """How long one TURN server may take to allocate before the next is tried."""
    wait: float = 2.0
    """A valid relayed pair is nominated only after this long without a direct one."""
    wait_hard: float = 12.0
    """The same wait while port prediction or birthday probing is under way."""
    only: bool = False
    """Check only pairs whose local candidate is relayed (WebRTC's ``relay`` policy);
    the peer's checks that reach a host socket are not answered."""
    check_delay: float = 0.3
    """Checks toward a peer's relayed candidate wait this long, so that the peer's TURN
    permission for us is in place first (a check that reaches a relay port before the
    permission is dropped, and coturn also spoils the allocation's nonce over it)."""
    families: str | Sequence[str] | None = "auto"
    """Relayed address families to ask for (RFC 8656 REQUESTED-ADDRESS-FAMILY and
    ADDITIONAL-ADDRESS-FAMILY): ``"auto"`` both, the one the server is reached over
    first; a list such as ``["ipv6"]``; None asks for nothing (the server's default,
    IPv4)."""
    liveness_interval: float = 5.0
    """While the connection is relayed (either side's candidate) our relay is checked this
    often (a TURN Refresh, given up after 3.5 s): a restarted or dead server is noticed
    within about this plus 3.5 s, well inside the 30 s consent and QUIC idle timeouts.
    0: not checked (a lost allocation is then noticed at the next refresh of a
    permission, channel or the allocation itself, minutes later)."""
    reallocate: bool = True
    """Allocate again when a relay of ours is lost (on the same server, then the next
    ones) and announce the new relayed candidate to the peer."""
    reallocate_retry: float = 2.0
    """Seconds between rounds of re-allocation while no server grants one (up to 10
    rounds)."""


@dataclass
class TcpConfig:
    """TCP hole punching (RFC 6544 simultaneous open, :mod:`holepunch.punch.tcp`)."""

    enabled: bool = True
    """Learn a TCP mapping and punch TCP when UDP is blocked on either side (needs a
    STUN server that speaks TCP)."""
    race: bool = False
    """Punch TCP alongside UDP even when UDP works; the first path wins."""
    presume_udp_blocked: bool = True
    """Once a STUN server has answered over TCP, give UDP one retransmission interval
    more (the gathering policy's ``rto``) to answer too; if it has not, take UDP as
    blocked at once (the description says so, TCP punching and TURN over TCP start)
    rather than wait for every Binding to give up (about 1.4 s). An answer over UDP
    that comes later still counts: its candidate is trickled and the checks go on."""


@dataclass
class RestartConfig:
    """ICE restart (RFC 8445 9) and the search for a better path while connected."""

    on_consent_loss: bool = True
    """Restart when consent checks go unanswered, instead of ending the connection at
    once; the connection still ends after ``ConsentConfig.timeout`` without consent."""
    consent_failures: int = 1
    """Consecutive unanswered consent checks (each retransmitted for 2.5 s) that start
    a restart."""
    silence: float = 2.0
    """Nothing from the peer for this long while we send: check consent at once rather
    than at the next interval (0: never)."""
    failed_check_interval: float = 1.0
    """After an unanswered consent check the next one goes after this long."""
    timeout: float = 20.0
    """A restart that has selected no new pair after this long is abandoned (the old
    pair goes on carrying data as long as it has consent)."""
    better_path: bool = True
    """While the selected pair is relayed (or degraded), check direct pairs again on an
    exponential schedule and move to one that works."""
    probe_min: float = 2.0
    """First wait before looking for a better path; doubled after each try..."""
    probe_max: float = 30.0
    """...up to this."""
    degraded_rtt: float = 1.0
    """A direct path whose consent checks take longer than this (seconds) is degraded."""
    degraded_loss: float = 0.5
    """A direct path that loses more than this share of its recent consent checks'
    requests is degraded."""
    watch_interfaces: float = 5.0
    """The adapter checks the local addresses this often (seconds; 0: never) and restarts
    when they change."""


@dataclass
class IceConfig:
    """Settings of an ICE agent, one sub-config per concern."""

    gathering: GatheringConfig = field(default_factory=GatheringConfig)
    checks: CheckConfig = field(default_factory=CheckConfig)
    consent: ConsentConfig = field(default_factory=ConsentConfig)
    hardnat: HardNatConfig = field(default_factory=HardNatConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    tcp: TcpConfig = field(default_factory=TcpConfig)
    restart: RestartConfig = field(default_factory=RestartConfig)

    def with_default_servers(
        self, stun_servers: Sequence[tuple[str, int]], turn_servers: Sequence[Any]
    ) -> IceConfig:
        """This config, with ``stun_servers`` and ``turn_servers`` where it names none
        (the signaling server's ``iceServers``: a client given only the signaling URL
        gets the daemon's STUN server on its two ports, and its TURN if it has one)."""
        config = self
        if stun_servers and not self.gathering.stun_servers:
            config = replace(
                config, gathering=replace(self.gathering, stun_servers=tuple(stun_servers))
            )
        if turn_servers and not self.relay.servers:
            config = replace(config, relay=replace(self.relay, servers=tuple(turn_servers)))
        return config

    @classmethod
    def on(cls, *addresses: str, **gathering: Any) -> IceConfig:
        """Defaults, with host candidates only on ``addresses`` and no router port
        mapping (tests, loopback demos: nothing leaves for the real gateway);
        ``gathering`` sets other :class:`GatheringConfig` fields."""
        gathering.setdefault("port_mapping", False)
        return cls(gathering=GatheringConfig(addresses=list(addresses), **gathering))

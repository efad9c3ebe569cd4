# -*- test-case-name: tests.test_ice_agent -*-
"""The ICE agent (RFC 8445): gathering, connectivity checks, nomination, consent.

One UDP socket per agent carries everything: STUN to the servers (so the
server-reflexive address it learns is the mapping the punch uses), connectivity checks
in both directions, and, once a pair is selected, application data; datagrams are told
apart by the STUN magic cookie.

- Gathering (RFC 8445 5.1.1): host candidates (every usable local IPv4 address, or the
  configured ones), server-reflexive candidates from each STUN server, sent from the
  same socket. Candidates are announced as they are found (trickle ICE), then
  end-of-candidates.
- Checks (6.1.4, 7.2): Binding requests with USERNAME ``remote:local``, PRIORITY,
  ICE-CONTROLLING / ICE-CONTROLLED with the tie-breaker, MESSAGE-INTEGRITY with the
  peer's password, FINGERPRINT; paced one per ``Ta``; triggered checks first. A
  response must come from where the request went (7.2.5.2.1).
- Answering checks (7.3): only requests whose USERNAME names our ufrag and whose
  MESSAGE-INTEGRITY verifies with our password count; anything else is dropped and
  counted. Role conflicts are settled by tie-breaker with 487 (7.3.1.1). An unknown
  source becomes a peer-reflexive remote candidate and gets a triggered check.
- Nomination (8.1): regular nomination when controlling (a USE-CANDIDATE check on the
  best valid pair once no better pair can still succeed, or after
  ``nomination_delay``); as controlled, a pair is selected when a USE-CANDIDATE request
  arrives on a valid pair (this also accepts aggressive nomination).
- After selection (RFC 7675): consent checks every 5 s +/- 20 %; no answer for 30 s
  loses consent and closes the connection. A Binding indication is sent whenever
  nothing else was sent for ``keepalive_interval`` (RFC 8445 11).
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from holepunch.ice.candidate import Candidate, candidate_priority, make_candidate
from holepunch.ice.checklist import CandidatePair, CheckList, PairState
from holepunch.ice.connection import PeerConnection
from holepunch.ice.hardnat import (
    PORT_RANGE,
    MappingProfile,
    Technique,
    plan,
    predicted_ports,
)
from holepunch.stun.client import (
    RetransmissionPolicy,
    StunErrorResponse,
    StunResponse,
    StunTimeout,
    TransactionTable,
)
from holepunch.stun.message import (
    Address,
    Attr,
    MessageClass,
    Method,
    StunDecodeError,
    StunError,
    StunMessage,
    decode,
    encode,
    is_stun,
)

_log = Logger()

_UFRAG_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"


def random_ice_string(length: int) -> str:
    """A random ice-char string (RFC 8839 5.4): ufrag >= 4, pwd >= 22 characters."""
    return "".join(secrets.choice(_UFRAG_CHARS) for _ in range(length))


class IceError(Exception):
    """ICE could not connect; ``stage`` names where it stopped."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.detail = message


@dataclass
class IceConfig:
    """Settings of an :class:`IceAgent`; every wait is bounded."""

    stun_servers: Sequence[tuple[str, int]] = ()
    addresses: Sequence[str] | None = None
    include_loopback: bool = False
    port: int = 0
    ta: float = 0.02
    check_policy: RetransmissionPolicy = field(
        default_factory=lambda: RetransmissionPolicy(rto=0.1, rc=7, rm=8)
    )
    gather_policy: RetransmissionPolicy = field(
        default_factory=lambda: RetransmissionPolicy(rto=0.2, rc=3, rm=4)
    )
    nomination_delay: float = 0.15
    connection_timeout: float = 30.0
    consent_interval: float = 5.0
    consent_timeout: float = 30.0
    keepalive_interval: float = 25.0
    max_pairs: int = 100
    early_datagrams: int = 64
    probe_mapping: bool = True
    """Measure our NAT's mapping from the agent's socket (needs an RFC 5780 server)."""
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
    tcp: bool = True
    """Learn a TCP mapping and punch TCP (RFC 6544 simultaneous open) when UDP is
    blocked on either side (needs a STUN server that speaks TCP)."""
    tcp_race: bool = False
    """Punch TCP alongside UDP even when UDP works; the first path wins."""
    turn_servers: Sequence[Any] = ()
    """:class:`holepunch.turn.TurnServer` s, tried in order for one relayed candidate."""
    turn_timeout: float = 5.0
    """How long one TURN server may take to allocate before the next is tried."""
    relay_wait: float = 2.0
    """A valid relayed pair is nominated only after this long without a direct one."""
    relay_wait_hard: float = 12.0
    """The same wait while port prediction or birthday probing is under way."""
    relay_only: bool = False
    """Check only pairs whose local candidate is relayed (WebRTC's ``relay`` policy)."""
    relay_check_delay: float = 0.3
    """Checks toward a peer's relayed candidate wait this long, so that the peer's TURN
    permission for us is in place first (a check that reaches a relay port before the
    permission is dropped, and coturn also spoils the allocation's nonce over it)."""
    """The easy side waits this long for a cheaper path before probing."""


def local_ipv4_addresses(include_loopback: bool = False) -> list[str]:
    """Usable local IPv4 addresses (ifaddr), loopback and link-local left out."""
    import ifaddr

    result: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue
            address = ipaddress.ip_address(ip.ip)
            if address.is_link_local or (address.is_loopback and not include_loopback):
                continue
            if str(address) not in result:
                result.append(str(address))
    return result


def route_source(remote: tuple[str, int]) -> str | None:
    """The local address the kernel would send from toward ``remote`` (no packet sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(remote)
            return str(s.getsockname()[0])
    except OSError:
        return None


def _relayed(pair: CandidatePair) -> bool:
    """Whether a pair goes through a TURN relay (either side's candidate is relayed)."""
    return pair.local.type == "relay" or pair.remote.type == "relay"


class IceSocket(DatagramProtocol):
    """One UDP socket of an agent, with its own STUN transactions.

    The agent's main socket carries everything; birthday probing (hard side) adds more,
    each with its own local candidate (``base``), and all but the winner are closed
    once a pair is selected.
    """

    def __init__(self, agent: IceAgent) -> None:
        self.agent = agent
        self.port: Any = None
        self.local: tuple[str, int] = ("", 0)
        self.base: Candidate | None = None
        self.transactions = TransactionTable(self._send_stun, agent.reactor)

    def _send_stun(self, data: bytes, address: Address) -> None:
        self.write(data, (address.host, address.port))

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        if self.port is None:
            raise OSError("socket closed")
        self.port.write(data, address)
        self.agent._last_sent = self.agent.reactor.seconds()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.agent.datagram_received(datagram, (addr[0], addr[1]), self)

    def close(self) -> defer.Deferred[None]:
        self.transactions.cancel_all()
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.maybeDeferred(port.stopListening)
        return d


class RelaySocket(IceSocket):
    """A TURN allocation seen as one more socket of the agent (its relayed candidate).

    Writes go through the allocation (Send indication, or ChannelData once bound);
    what the relay delivers comes back as datagrams from the peer's address.
    """

    def __init__(self, agent: IceAgent, allocation: Any, candidate: Candidate) -> None:
        super().__init__(agent)
        self.allocation = allocation
        self.base = candidate
        self.local = candidate.address
        self.port = allocation
        allocation.on_data(
            lambda data, peer: agent.datagram_received(data, (peer.host, peer.port), self)
        )

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        if self.port is None:
            raise OSError("relay closed")
        self.allocation.send(data, Address(*address))
        self.agent._last_sent = self.agent.reactor.seconds()

    def close(self) -> defer.Deferred[None]:
        self.transactions.cancel_all()
        allocation, self.port = self.port, None
        if allocation is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = allocation.close()
        return d


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


class IceAgent:
    """One side of one ICE session (one component, UDP)."""

    def __init__(
        self,
        reactor: Any,
        controlling: bool,
        config: IceConfig | None = None,
        *,
        ufrag: str | None = None,
        pwd: str | None = None,
        tie_breaker: int | None = None,
    ) -> None:
        self.reactor = reactor
        self.config = config or IceConfig()
        self.controlling = controlling
        self.local_ufrag = ufrag or random_ice_string(8)
        self.local_pwd = pwd or random_ice_string(24)
        self.tie_breaker = (
            tie_breaker if tie_breaker is not None else int.from_bytes(os.urandom(8), "big")
        )
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self.local_candidates: list[Candidate] = []
        self.remote_candidates: list[Candidate] = []
        self.remote_end_of_candidates = False
        self.gathering_complete = False
        self.checklist = CheckList(controlling, self.config.max_pairs)
        self.stats = AgentStats()
        self.on_local_candidate: Callable[[Candidate | None], None] | None = None
        self.selected: CandidatePair | None = None
        self.connection: PeerConnection | None = None
        self._main: IceSocket | None = None
        self._extra: dict[int, IceSocket] = {}
        self._relays: dict[tuple[str, int], RelaySocket] = {}
        self._main_allocations: list[Any] = []
        self._local: tuple[str, int] | None = None
        self.mapping: MappingProfile | None = None
        self._probe_targets: tuple[Address, Address] | None = None
        self.hold_checks = False
        """While True no check is sent (the negotiation sets it while other flows, TCP
        mapping for instance, still have to happen before our first check)."""
        self.remote_mapping: MappingProfile | None = None
        self.techniques: set[Technique] = set()
        self._ordered: list[CandidatePair] = []
        self.stun_answers = 0
        self.stun_complete = False
        self._stun_waiters: list[defer.Deferred[None]] = []
        self._probe_ports: list[int] = []
        self._probing = False
        self._probe_deadline = 0.0
        self._check_timer: IDelayedCall | None = None
        self._timers: dict[str, IDelayedCall] = {}
        self._connect_d: defer.Deferred[PeerConnection] | None = None
        self._running = False
        self._closed = False
        self._nominating: CandidatePair | None = None
        self._pending_triggers: list[tuple[Candidate, tuple[str, int]]] = []
        self._early: list[tuple[bytes, tuple[str, int]]] = []
        self._last_sent = 0.0
        self._last_consent = 0.0
        self._started_at: float | None = None
        self._host_bases: dict[str, Candidate] = {}
        self._pending_checks: dict[int, defer.Deferred[StunResponse]] = {}

    # -- socket --

    def listen(self) -> tuple[str, int]:
        """Bind the agent's main UDP socket (once); returns its local address."""
        if self._closed:
            raise IceError("closed", "the agent is closed")
        if self._local is not None:
            return self._local
        addresses = self.config.addresses
        interface = addresses[0] if addresses and len(addresses) == 1 else ""
        self._main = self._open_socket(interface, self.config.port)
        self._local = self._main.local
        return self._local

    def _open_socket(self, interface: str, port: int) -> IceSocket:
        sock = IceSocket(self)
        sock.port = self.reactor.listenUDP(port, sock, interface=interface)
        host = sock.port.getHost()
        sock.local = (host.host, host.port)
        return sock

    @property
    def local_port(self) -> int:
        """The main socket's port (bound on first use)."""
        if self._local is not None:
            return self._local[1]
        return self.listen()[1]

    @property
    def _port(self) -> Any:
        """The main socket's listening port, None once closed."""
        return self._main.port if self._main is not None else None

    def _socket_for(self, local: Candidate) -> IceSocket | None:
        """The socket a local candidate sends from (its base's port, or its relay)."""
        if local.type == "relay":
            return self._relays.get(local.address)
        port = local.port if local.type == "host" else local.related_port
        extra = self._extra.get(port or 0)
        if extra is not None:
            return extra
        return self._main

    def _write(self, data: bytes, address: tuple[str, int], sock: IceSocket | None = None) -> None:
        sock = sock or self._main
        if sock is None or self._closed:
            raise OSError("agent closed")
        sock.write(data, address)

    def send_data(self, data: bytes, address: tuple[str, int]) -> None:
        """Send an application datagram (used by :class:`PeerConnection`)."""
        sock = self._socket_for(self.selected.local) if self.selected is not None else None
        self._write(data, address, sock)

    # -- gathering --

    def _emit(self, candidate: Candidate | None) -> None:
        if self.on_local_candidate is not None:
            try:
                self.on_local_candidate(candidate)
            except Exception:
                _log.failure("on_local_candidate raised")

    def _add_local(self, candidate: Candidate) -> bool:
        if any(
            c.address == candidate.address and c.transport == candidate.transport
            for c in self.local_candidates
        ):
            return False
        self.local_candidates.append(candidate)
        self._emit(candidate)
        return True

    async def gather(self) -> list[Candidate]:
        """Gather host and server-reflexive candidates; returns them all.

        Each is announced through ``on_local_candidate`` as soon as it is known, then
        ``None`` (end of candidates). A STUN server that does not answer within the
        gather policy is skipped, with a log line.
        """
        _, port = self.listen()
        addresses = list(
            self.config.addresses or local_ipv4_addresses(self.config.include_loopback)
        )
        if not addresses:
            raise IceError("gathering", "no usable local IPv4 address")
        for preference, host in enumerate(addresses):
            candidate = make_candidate("host", host, port, local_preference=65535 - preference)
            self._host_bases[host] = candidate
            self._add_local(candidate)
        self._pair_all()
        stun = [
            defer.ensureDeferred(self._gather_srflx(server)) for server in self.config.stun_servers
        ]
        await defer.DeferredList(stun, consumeErrors=True)
        self.stun_complete = True
        waiters, self._stun_waiters = self._stun_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._schedule_checks()
        if self.config.turn_servers:
            if self.mapping is not None and self.mapping.sequential:
                # On a sequential NAT every new flow moves the counter: the TURN
                # allocation (a new flow) waits until the predicted checks have gone out,
                # so that the port we announced is still the last one.
                await self._after_predictions()
            await defer.ensureDeferred(self._gather_relay())
        self.gathering_complete = True
        self._emit(None)
        self._schedule_checks()
        return list(self.local_candidates)

    async def _binding(self, server: Address) -> Any:
        """One STUN Binding from the main socket (a new flow toward ``server``)."""
        from holepunch.stun.client import parse_binding_response

        assert self._main is not None
        response = await self._main.transactions.request(
            StunMessage.request(), server, policy=self.config.gather_policy
        )
        return parse_binding_response(response)

    async def _gather_srflx(self, server: tuple[str, int]) -> None:
        from holepunch.stun.client import resolve_server

        assert self._main is not None
        try:
            address = await resolve_server(self.reactor, server[0], server[1])
            result = await self._binding(address)
        except Exception as e:
            _log.info("STUN server {server} gave no reflexive address: {err}", server=server, err=e)
            return
        self.stun_answers += 1
        base = self._base_for(address.host, address.port)
        if result.mapped != Address(base.host, base.port):
            srflx = make_candidate(
                "srflx",
                result.mapped.host,
                result.mapped.port,
                base=(base.host, base.port),
                server=f"{address.host}:{address.port}",
                local_preference=base.priority >> 8 & 0xFFFF,
            )
            if self._add_local(srflx):
                _log.debug("server-reflexive candidate {c}", c=srflx.to_sdp())
        if self.config.probe_mapping and self.mapping is None:
            await self._probe_mapping(address, result)

    async def remeasure_mapping(self) -> None:
        """On a sequential NAT, learn the latest public port again (one new flow, to a
        destination the probe did not use) after other flows (TCP, say) moved it."""
        from dataclasses import replace

        if self.mapping is None or not self.mapping.sequential or self._probe_targets is None:
            return
        if self._main is None or self._closed:
            return
        server, other = self._probe_targets
        target = Address(server.host, other.port)
        self._probe_targets = None  # used now; a second call would not be a new flow
        try:
            result = await self._binding(target)
        except Exception as e:
            _log.info("mapping re-measure failed: {err}", err=e)
            return
        self.mapping = replace(self.mapping, last_port=result.mapped.port)
        _log.info("our mapping's last port is now {port}", port=result.mapped.port)

    async def _after_predictions(self, longest: float = 4.0) -> None:
        """Wait until the ordered predicted checks have been sent (at most ``longest``)."""
        deadline = self.reactor.seconds() + longest
        while self.reactor.seconds() < deadline and not self._closed:
            if self.techniques and not self._ordered:
                return
            d: defer.Deferred[None] = defer.Deferred()
            self.reactor.callLater(self.config.ta, d.callback, None)
            await d

    async def _gather_relay(self) -> None:
        """One relayed candidate from the first TURN server that allocates (RFC 8656).

        UDP servers are used from the agent's own socket; TCP and TLS ones over their
        own connection. A dead server is abandoned after ``turn_timeout``.
        """
        from holepunch.stun.client import resolve_server
        from holepunch.turn import TurnAllocation, allocate_first, open_allocation

        assert self._main is not None
        main = self._main

        def open_one(server: Any) -> defer.Deferred[Any]:
            async def attempt() -> Any:
                if server.transport != "udp":
                    return await open_allocation(
                        server, reactor=self.reactor, timeout=self.config.turn_timeout
                    )
                address = await resolve_server(self.reactor, server.host, server.port)
                allocation = TurnAllocation(
                    address,
                    main.write,
                    self.reactor,
                    username=server.username,
                    password=server.password,
                )
                self._main_allocations.append(allocation)
                try:
                    await allocation.allocate()
                except BaseException:
                    self._main_allocations.remove(allocation)
                    raise
                return allocation

            return defer.ensureDeferred(attempt())

        servers = list(self.config.turn_servers)
        if self.udp_blocked:
            # UDP got no STUN answer: a UDP relay would only cost its timeout.
            servers.sort(key=lambda server: server.transport == "udp")
        try:
            allocation = await allocate_first(
                servers,
                reactor=self.reactor,
                timeout=self.config.turn_timeout,
                open_one=open_one,
            )
        except Exception as e:
            _log.info("no relayed candidate: {err}", err=e)
            return
        if self._closed:
            allocation.close()
            return
        allocated = allocation.allocated
        if allocated is None or allocated.mapped is None:
            _log.info("TURN allocation without addresses; no relayed candidate")
            allocation.close()
            return
        relay = make_candidate(
            "relay",
            allocated.relayed.host,
            allocated.relayed.port,
            base=(allocated.mapped.host, allocated.mapped.port),
            server=f"turn:{allocated.server}",
        )
        sock = RelaySocket(self, allocation, relay)
        self._relays[relay.address] = sock
        self._add_local(relay)
        _log.info("relayed candidate {c}", c=relay.to_sdp())
        for remote in self.remote_candidates:
            self._permit(remote)
            self.checklist.add(relay, remote)
        self._schedule_checks()

    async def _probe_mapping(self, server: Address, first: Any) -> None:
        """Measure our own NAT's mapping from this socket (RFC 5780 OTHER-ADDRESS)."""

        assert self._main is not None
        ports = [first.mapped.port]
        other = first.other_address
        if other is not None and other.host != server.host and other.port != server.port:
            for target in (Address(other.host, server.port), other):
                try:
                    result = await self._binding(target)
                except Exception as e:
                    _log.info("mapping probe to {t} failed: {err}", t=target, err=e)
                    break
                ports.append(result.mapped.port)
        if len(ports) < 3 and len(set(ports)) == 1:
            # One sample, or a plain server: say nothing rather than guess.
            return
        self._probe_targets = (server, other) if other is not None else None
        self.mapping = MappingProfile.from_ports(first.mapped.host, ports)
        _log.info("our mapping: ports {ports} -> {profile}", ports=ports, profile=self.mapping)
        self._plan()

    @property
    def udp_blocked(self) -> bool:
        """STUN servers were asked over UDP and none answered (known once STUN is done)."""
        return bool(self.config.stun_servers) and self.stun_complete and not self.stun_answers

    def when_stun_complete(self) -> defer.Deferred[None]:
        """Fires once every STUN server answered or gave up (server-reflexive candidates
        and our mapping are known then; relayed candidates may still come)."""
        if self.stun_complete:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._stun_waiters.append(d)
        return d

    def _base_for(self, host: str, port: int) -> Candidate:
        """The host candidate the kernel sends from toward ``host:port``."""
        source = route_source((host, port))
        if source is not None and source in self._host_bases:
            return self._host_bases[source]
        return next(iter(self._host_bases.values()))

    # -- remote description --

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        """The peer's ufrag and password, from its offer or answer."""
        if not ufrag or not pwd:
            raise ValueError("remote ufrag and pwd must not be empty")
        self.remote_ufrag = ufrag
        self.remote_pwd = pwd
        for local, address in self._pending_triggers:
            pair = self.checklist.find(local, address)
            if pair is not None:
                self.checklist.trigger(pair)
        self._pending_triggers.clear()
        self._plan()
        self._schedule_checks()

    def add_remote_candidate(self, candidate: Candidate | None) -> None:
        """A candidate from the peer (trickled or in its offer); None ends them."""
        if candidate is None:
            self.remote_end_of_candidates = True
            self._check_failure()
            return
        if candidate.transport != "udp" or candidate.component != 1:
            return
        try:
            if ipaddress.ip_address(candidate.host).version != 4:
                return
        except ValueError:
            return
        known = next((c for c in self.remote_candidates if c.address == candidate.address), None)
        if known is not None:
            if known.type == "prflx" and candidate.type != "prflx":
                # The signalled candidate replaces the peer-reflexive one learnt from a
                # check (RFC 8445 7.3.1.3), so the pair reports what the peer said.
                self.remote_candidates[self.remote_candidates.index(known)] = candidate
                for pair in self.checklist:
                    if pair.remote is known:
                        pair.remote = candidate
            return
        self.remote_candidates.append(candidate)
        self._permit(candidate)
        if candidate.type == "relay" and self.config.relay_check_delay > 0:
            self.reactor.callLater(self.config.relay_check_delay, self._pair_later, candidate)
            return
        self._pair_with(candidate)
        self._schedule_checks()

    def _pair_later(self, candidate: Candidate) -> None:
        if self._closed or candidate not in self.remote_candidates:
            return
        self._pair_with(candidate)
        self._schedule_checks()

    def _permit(self, candidate: Candidate) -> None:
        """Install TURN permissions for a remote candidate's address at once (RFC 8656
        9), before any check needs them, as browsers do."""
        for relay in self._relays.values():
            d = relay.allocation.create_permission(candidate.host)
            d.addErrback(
                lambda f, h=candidate.host: _log.info(
                    "TURN permission for {host} refused: {err}", host=h, err=f.getErrorMessage()
                )
            )

    def _pair_all(self) -> None:
        for remote in self.remote_candidates:
            self._pair_with(remote)

    def _pair_with(self, remote: Candidate) -> CandidatePair | None:
        if not self._host_bases:
            return None
        local = self._base_for(remote.host, remote.port)
        pair = None if self.config.relay_only else self.checklist.add(local, remote)
        for relay in self._relays.values():
            if relay.base is not None:
                self.checklist.add(relay.base, remote)
        return pair

    # -- checks --

    def connect(self) -> defer.Deferred[PeerConnection]:
        """Start (or join) the connectivity checks; fires with the :class:`PeerConnection`.

        Fails with :class:`IceError` when every pair failed after the peer's
        end-of-candidates, or after ``connection_timeout``. Cancelling it closes the
        agent (socket and timers).
        """
        if self._connect_d is not None:
            return self._connect_d
        self.listen()

        def cancel(_: object) -> None:
            self.close()

        self._connect_d = defer.Deferred(cancel)
        self._running = True
        self._started_at = self.reactor.seconds()
        self._timers["timeout"] = self.reactor.callLater(
            self.config.connection_timeout, self._timed_out
        )
        self._plan()
        self._schedule_checks()
        return self._connect_d

    def _timed_out(self) -> None:
        self._timers.pop("timeout", None)
        if self.selected is None:
            tried = len(self.checklist)
            valid = len(self.checklist.valid_pairs())
            stage = "connectivity-checks" if tried else "candidates"
            if valid:
                stage = "nomination"
            detail = (
                f"no working path within {self.config.connection_timeout:g}s "
                f"({tried} pairs tried, {valid} valid, "
                f"{len(self.remote_candidates)} remote candidates)"
            )
            self._fail(IceError(stage, detail))

    def _fail(self, error: IceError) -> None:
        d, self._connect_d = self._connect_d, None
        _log.info("ICE failed: {err}", err=error)
        self.close()
        if d is not None and not d.called:
            d.errback(error)

    def _hard_nat_pending(self) -> bool:
        """Birthday probing is under way or about to start: not a failure yet."""
        return any(name in self._timers for name in ("probe", "probe-end", "birthday-open")) or (
            self._probing
        )

    def _check_failure(self) -> None:
        """Fail once nothing can succeed any more: every pair failed (or there were
        none), the peer ended its candidates, ours are gathered, no probing is left."""
        if (
            not self._running
            or self.selected is not None
            or not self.remote_end_of_candidates
            or not self.gathering_complete
            or self._hard_nat_pending()
        ):
            return
        probes = (
            f" and {self.stats.probes_sent} birthday probes went unanswered"
            if self.stats.probes_sent
            else ""
        )
        if not len(self.checklist):
            self._fail(IceError("candidates", f"no candidate pairs to check{probes}"))
        elif self.checklist.all_failed():
            self._fail(
                IceError(
                    "connectivity-checks",
                    f"all {len(self.checklist)} candidate pairs failed{probes}",
                )
            )

    def _schedule_checks(self) -> None:
        if not self._running or self._closed or self._check_timer is not None:
            return
        if self.remote_pwd is None:
            return
        self._check_timer = self.reactor.callLater(0, self._next_check)

    def _holding(self) -> bool:
        """Hold checks until our mapping is measured: a check is a new flow, and on a
        sequential NAT a flow before the probe would shift every prediction."""
        return self.hold_checks or bool(
            self.config.probe_mapping and self.config.stun_servers and not self.stun_complete
        )

    def release_checks(self) -> None:
        """End :attr:`hold_checks` and start checking."""
        self.hold_checks = False
        self._schedule_checks()

    def _next_check(self) -> None:
        self._check_timer = None
        if self._closed or self.remote_pwd is None or self._holding():
            return
        pair = None
        while self._ordered and pair is None:
            candidate = self._ordered.pop(0)
            if candidate.state in (PairState.WAITING, PairState.FROZEN):
                pair = candidate
                self.stats.predicted_checks += 1
        if pair is None:
            pair = self.checklist.next_pair()
        if pair is None:
            return
        self._start_check(pair, nominate=False)
        self._check_timer = self.reactor.callLater(self.config.ta, self._next_check)

    def _check_request(self, pair: CandidatePair, nominate: bool) -> StunMessage:
        assert self.remote_ufrag is not None
        request = StunMessage.request(Method.BINDING)
        request.add_string(Attr.USERNAME, f"{self.remote_ufrag}:{self.local_ufrag}")
        request.add_uint32(
            Attr.PRIORITY, candidate_priority("prflx", pair.local.priority >> 8 & 0xFFFF)
        )
        if self.controlling:
            request.add_uint64(Attr.ICE_CONTROLLING, self.tie_breaker)
            if nominate:
                request.add_flag(Attr.USE_CANDIDATE)
        else:
            request.add_uint64(Attr.ICE_CONTROLLED, self.tie_breaker)
        return request

    def _start_check(
        self,
        pair: CandidatePair,
        nominate: bool,
        policy: RetransmissionPolicy | None = None,
    ) -> None:
        assert self.remote_pwd is not None
        sock = self._socket_for(pair.local)
        if sock is None or sock.port is None:
            self.checklist.failed(pair)
            return
        if self._nominating is pair and not nominate:
            return  # the nomination check in flight answers for this pair too
        previous = self._pending_checks.pop(id(pair), None)
        if previous is not None:
            previous.cancel()
        if pair.state != PairState.SUCCEEDED:  # a valid pair stays valid while re-checked
            pair.state = PairState.IN_PROGRESS
        pair.checks_sent += 1
        self.stats.checks_sent += 1
        request = self._check_request(pair, nominate)
        started = self.reactor.seconds()
        destination = Address(pair.remote.host, pair.remote.port)
        _log.debug(
            "check {pair}{nom}", pair=pair.describe(), nom=" USE-CANDIDATE" if nominate else ""
        )
        d = sock.transactions.request(
            request,
            destination,
            policy=policy or self.config.check_policy,
            integrity_key=self.remote_pwd.encode(),
        )
        self._pending_checks[id(pair)] = d
        d.addCallbacks(
            self._check_succeeded,
            self._check_failed,
            callbackArgs=(pair, nominate, started, destination),
            errbackArgs=(pair, nominate, d),
        )

    def _check_succeeded(
        self,
        response: StunResponse,
        pair: CandidatePair,
        nominate: bool,
        started: float,
        destination: Address,
    ) -> None:
        self._pending_checks.pop(id(pair), None)
        if self._closed:
            return
        if response.source != destination:
            _log.debug(
                "non-symmetric answer for {pair} from {src}",
                pair=pair.describe(),
                src=response.source,
            )
            self.checklist.failed(pair)
            self._check_failure()
            return
        try:
            mapped = response.message.get_address(Attr.XOR_MAPPED_ADDRESS)
        except StunDecodeError:
            mapped = None
        rtt = self.reactor.seconds() - started
        first_success = pair.state != PairState.SUCCEEDED
        self.checklist.succeeded(pair, (mapped.host, mapped.port) if mapped else None, rtt)
        if mapped is not None and not any(
            c.address == tuple(mapped) for c in self.local_candidates
        ):
            # A peer-reflexive local candidate (RFC 8445 7.2.5.3.1); not signalled.
            prflx = make_candidate(
                "prflx", mapped.host, mapped.port, base=(pair.local.host, pair.local.port)
            )
            self.local_candidates.append(prflx)
        if first_success:
            _log.info("pair valid: {pair} (rtt {rtt:.1f} ms)", pair=pair.describe(), rtt=rtt * 1000)
        if self.selected is not None:
            if pair is self.selected:
                self._last_consent = self.reactor.seconds()
                return
            if not _relayed(self.selected) or _relayed(pair):
                return
            # A direct pair came through while we are on the relay: upgrade to it.
            if self.controlling:
                if nominate:
                    self._select(pair)
                elif self._nominating is None:
                    self._nominate(pair)
            elif pair.remote_nominated:
                self._select(pair)
            return
        if self.controlling:
            if nominate:
                pair.nominated = True
                self._select(pair)
            else:
                self._consider_nomination()
        elif pair.remote_nominated:
            pair.nominated = True
            self._select(pair)
        self._schedule_checks()

    def _check_failed(self, failure: Failure, pair: CandidatePair, nominate: bool, d: Any) -> None:
        if self._pending_checks.get(id(pair)) is d:
            del self._pending_checks[id(pair)]
        if failure.check(defer.CancelledError) or self._closed:
            return
        if failure.check(StunErrorResponse) and failure.value.code == 487:  # type: ignore[union-attr]
            # Role conflict (RFC 8445 7.2.5.1): switch role, check the pair again.
            self.stats.role_conflicts += 1
            self._set_role(not self.controlling)
            self.checklist.trigger(pair)
            self._schedule_checks()
            return
        reason = failure.getErrorMessage()
        if not failure.check(StunTimeout, StunError, OSError):
            _log.failure("unexpected check failure", failure)
        _log.debug("check failed {pair}: {reason}", pair=pair.describe(), reason=reason)
        if nominate and self._nominating is pair:
            self._nominating = None
        if pair is self.selected:
            return
        self.checklist.failed(pair)
        if self.controlling and self.selected is None:
            self._consider_nomination()
        self._check_failure()

    def _set_role(self, controlling: bool) -> None:
        _log.info("ICE role is now {role}", role="controlling" if controlling else "controlled")
        self.controlling = controlling
        self.checklist.set_role(controlling)

    # -- nomination --

    def _consider_nomination(self) -> None:
        if self.selected is not None or self._nominating is not None:
            return
        best = self.checklist.best_valid()
        if best is None:
            return
        if _relayed(best):
            direct_pending = self._hard_nat_pending() or any(
                not _relayed(p) for p in self.checklist.pending()
            )
            if not direct_pending:
                self._nominate(best)
            elif "relay" not in self._timers:
                wait = self.config.relay_wait_hard if self.techniques else self.config.relay_wait
                _log.info("relay works; waiting {s:g}s for a direct path", s=wait)
                self._timers["relay"] = self.reactor.callLater(wait, self._relay_wait_over)
            return
        if not self.checklist.higher_pending(best):
            self._nominate(best)
        elif "nominate" not in self._timers:
            self._timers["nominate"] = self.reactor.callLater(
                self.config.nomination_delay, self._nominate_best
            )

    def _settled(self) -> bool:
        """A pair is selected and it is direct: nothing else is worth trying."""
        return self.selected is not None and not _relayed(self.selected)

    def _relay_wait_over(self) -> None:
        self._timers.pop("relay", None)
        if self.selected is None and self._nominating is None:
            best = self.checklist.best_valid()
            if best is not None:
                self._nominate(best)

    def _nominate_best(self) -> None:
        self._timers.pop("nominate", None)
        best = self.checklist.best_valid()
        if best is not None and self.selected is None and self._nominating is None:
            self._nominate(best)

    def _nominate(self, pair: CandidatePair) -> None:
        timer = self._timers.pop("nominate", None)
        if timer is not None and timer.active():
            timer.cancel()
        self._nominating = pair
        _log.debug("nominating {pair}", pair=pair.describe())
        self._start_check(pair, nominate=True)

    def _method(self, pair: CandidatePair) -> str:
        if _relayed(pair):
            return "turn-relay"
        if pair.tag:
            return pair.tag
        mapped = pair.mapped
        no_nat_here = mapped is not None and mapped == (pair.local.host, pair.local.port)
        if pair.remote.type == "host" and no_nat_here:
            return "direct"
        return "udp-hole-punch"

    def _settle(self, pair: CandidatePair) -> None:
        """A direct pair is selected: stop everything still trying another path."""
        self._probing = False
        self._ordered.clear()
        for name in ("nominate", "probe", "probe-end", "birthday-open", "relay"):
            timer = self._timers.pop(name, None)
            if timer is not None and timer.active():
                timer.cancel()
        for other_id, d in list(self._pending_checks.items()):
            if other_id != id(pair):
                d.cancel()
        sock = self._socket_for(pair.local)
        # Birthday sockets that lost are closed now; the winner carries the connection.
        for port, extra in list(self._extra.items()):
            if extra is not sock:
                del self._extra[port]
                extra.close()

    def _local_address(self, pair: CandidatePair) -> tuple[str, int]:
        sock = self._socket_for(pair.local)
        assert sock is not None
        local = sock.local
        return (pair.local.host if local[0] in ("0.0.0.0", "") else local[0], local[1])

    def _select(self, pair: CandidatePair) -> None:
        if self.selected is not None:
            if pair is not self.selected and _relayed(self.selected) and not _relayed(pair):
                self._upgrade(pair)
            return
        self.selected = pair
        self._nominating = None
        timer = self._timers.pop("timeout", None)
        if timer is not None and timer.active():
            timer.cancel()
        if not _relayed(pair):
            self._settle(pair)
        self._bind_channel(pair)
        method = self._method(pair)
        elapsed = self.reactor.seconds() - (self._started_at or self.reactor.seconds())
        self.connection = PeerConnection(
            self,
            method,
            self._local_address(pair),
            pair.remote.address,
            pair.rtt,
            pair.local,
            pair.remote,
        )
        _log.info(
            "selected {pair} as {method} after {ms:.0f} ms",
            pair=pair.describe(),
            method=method,
            ms=elapsed * 1000,
        )
        self._last_consent = self.reactor.seconds()
        self._schedule_consent()
        self._schedule_keepalive()
        early, self._early = self._early, []
        for data, source in early:
            self._deliver(data, source)
        waiting, self._connect_d = self._connect_d, None
        if waiting is not None and not waiting.called:
            waiting.callback(self.connection)

    def _bind_channel(self, pair: CandidatePair) -> None:
        """Application data through our relay goes as ChannelData (4-byte header)
        rather than Send indications (36 bytes) once the pair is selected."""
        relay = self._relays.get(pair.local.address) if pair.local.type == "relay" else None
        if relay is None or relay.port is None:
            return
        d = relay.allocation.bind_channel(pair.remote.address)
        d.addErrback(lambda f: _log.info("TURN channel not bound: {err}", err=f.getErrorMessage()))

    def _upgrade(self, pair: CandidatePair) -> None:
        """Leave the relay for a direct pair that succeeded later (same connection)."""
        old = self.selected
        assert old is not None and self.connection is not None
        self.selected = pair
        self._nominating = None
        pair.nominated = True
        self._settle(pair)
        connection = self.connection
        connection.method = self._method(pair)
        connection.local = self._local_address(pair)
        connection.remote = pair.remote.address
        connection.rtt = pair.rtt
        connection.local_candidate = pair.local
        connection.remote_candidate = pair.remote
        self._last_consent = self.reactor.seconds()
        _log.info(
            "upgraded from the relay to {pair} ({method})",
            pair=pair.describe(),
            method=connection.method,
        )
        connection._path_changed()

    # -- hard NATs: port prediction and birthday probing --

    def set_remote_mapping(self, profile: MappingProfile | None) -> None:
        """The peer's measured mapping (``ice.mapping`` in its offer or answer)."""
        self.remote_mapping = profile
        self._plan()
        self._schedule_checks()

    def _plan(self) -> None:
        """Decide, once both mappings and the peer's password are known, what to add."""
        if (
            self.techniques
            or not self._running
            or self.remote_pwd is None
            or self.mapping is None
            or self.remote_mapping is None
            or self._settled()
        ):
            return
        self.techniques = plan(self.mapping, self.remote_mapping)
        if not self.techniques:
            return
        _log.info(
            "hard NAT plan: {t} (ours {ours}, theirs {theirs})",
            t=sorted(t.value for t in self.techniques),
            ours=self.mapping,
            theirs=self.remote_mapping,
        )
        if self.techniques & {Technique.PREDICT, Technique.PREDICT_IN_ORDER}:
            self._add_predictions()
        if Technique.BIRTHDAY_HARD in self.techniques:
            self._open_birthday_sockets()
        if Technique.BIRTHDAY_EASY in self.techniques:
            self._timers["probe"] = self.reactor.callLater(
                self.config.birthday_delay, self._start_probing
            )

    def _remote_at(self, host: str, port: int, tag: str) -> Candidate:
        """The remote candidate at ``host:port``, made (not signalled) if unknown."""
        known = next((c for c in self.remote_candidates if c.address == (host, port)), None)
        if known is not None:
            return known
        candidate = Candidate(
            foundation=tag.replace("-", "")[:8] or "x",
            component=1,
            transport="udp",
            priority=candidate_priority("srflx", 0),
            host=host,
            port=port,
            type="srflx",
            extensions=((tag, "1"),),
        )
        self.remote_candidates.append(candidate)
        return candidate

    def _add_predictions(self) -> None:
        """Predicted candidates of a sequential peer, checked first and in order."""
        assert self.remote_mapping is not None
        remote = self.remote_mapping
        for port in predicted_ports(remote, self.config.prediction_window):
            candidate = self._remote_at(remote.address, port, "predicted")
            local = self._base_for(remote.address, port)
            pair = self.checklist.find(local, candidate.address) or self.checklist.add(
                local, candidate, tag="port-prediction"
            )
            if pair is not None:
                pair.tag = "port-prediction"
                pair.state = PairState.WAITING
                self._ordered.append(pair)

    def _open_birthday_sockets(self) -> None:
        """Hard side: many sockets, each sending a check to the peer's public address."""
        assert self.remote_mapping is not None and self._main is not None
        target = self._remote_at(
            self.remote_mapping.address, self.remote_mapping.last_port, "mapped"
        )
        interface = self._main.local[0]
        policy = RetransmissionPolicy(
            rto=self.config.max_probe_time / 2, rc=2, rm=1
        )  # a second send keeps the NAT's unreplied entry alive past 30 s of probing
        interval = 1.0 / self.config.birthday_open_rate if self.config.birthday_open_rate else 0
        remaining = [self.config.birthday_sockets]

        def open_one() -> None:
            self._timers.pop("birthday-open", None)
            if self._closed or self._settled() or remaining[0] <= 0:
                return
            remaining[0] -= 1
            try:
                sock = self._open_socket(interface if interface != "0.0.0.0" else "", 0)
            except Exception as e:
                _log.info("birthday socket failed: {err}", err=e)
                return
            host = self._base_for(target.host, target.port).host
            sock.base = make_candidate("host", host, sock.local[1], local_preference=0)
            self._extra[sock.local[1]] = sock
            self.stats.birthday_sockets += 1
            pair = self.checklist.add(sock.base, target, tag="birthday")
            if pair is not None:
                self._start_check(pair, nominate=False, policy=policy)
            self._timers["birthday-open"] = self.reactor.callLater(interval, open_one)

        self.checklist.max_pairs += self.config.birthday_sockets
        open_one()

    def _probes_done(self) -> None:
        """The last probes' answers had time to arrive: judge the attempt."""
        self._timers.pop("probe-end", None)
        self._check_failure()

    def _start_probing(self) -> None:
        """Easy side: checks to random ports of the peer's public address, paced."""
        self._timers.pop("probe", None)
        if (
            self._closed
            or self._settled()
            or any(not _relayed(p) for p in self.checklist.valid_pairs())
        ):
            return
        assert self.remote_mapping is not None
        low, high = PORT_RANGE
        count = min(self.config.max_probes, high - low + 1)
        self._probe_ports = random.sample(range(low, high + 1), count)
        self._probing = True
        self._probe_deadline = self.reactor.seconds() + self.config.max_probe_time
        _log.info(
            "birthday probing {addr}: up to {n} probes at {rate}/s",
            addr=self.remote_mapping.address,
            n=count,
            rate=self.config.probe_rate,
        )
        self._probe_tick()

    def _probe_tick(self) -> None:
        self._timers.pop("probe", None)
        if (
            self._closed
            or not self._probing
            or self._settled()
            or self.reactor.seconds() > self._probe_deadline
            or not self._probe_ports
        ):
            if self._probing:
                self._probing = False
                _log.info("birthday probing ended after {n} probes", n=self.stats.probes_sent)
                self._timers["probe-end"] = self.reactor.callLater(2.5, self._probes_done)
            return
        assert self.remote_mapping is not None and self._main is not None
        assert self.remote_pwd is not None
        port = self._probe_ports.pop()
        address = self.remote_mapping.address  # only ever the peer's signalled address
        self.stats.probes_sent += 1
        local = self._base_for(address, port)
        probe_pair = CandidatePair(local, self._remote_at(address, port, "probe"), tag="birthday")
        request = self._check_request(probe_pair, nominate=False)
        d = self._main.transactions.request(
            request,
            Address(address, port),
            policy=RetransmissionPolicy(rto=2.0, rc=1, rm=1),
            integrity_key=self.remote_pwd.encode(),
        )
        started = self.reactor.seconds()

        def hit(response: StunResponse) -> None:
            if self._closed or response.source != Address(address, port):
                return
            _log.info("birthday probe hit {addr}:{port}", addr=address, port=port)
            self._probing = False
            pair = self.checklist.find(local, (address, port))
            if pair is None:
                self.checklist.max_pairs += 1
                pair = self.checklist.add(local, probe_pair.remote, tag="birthday")
            if pair is None:
                return
            pair.tag = "birthday"
            self._check_succeeded(response, pair, False, started, Address(address, port))

        def missed(_: Failure) -> None:
            # Probes to ports nobody opened are not kept as candidates.
            if probe_pair.remote in self.remote_candidates and not any(
                p.remote is probe_pair.remote for p in self.checklist
            ):
                self.remote_candidates.remove(probe_pair.remote)

        d.addCallbacks(hit, missed)
        interval = 1.0 / self.config.probe_rate if self.config.probe_rate > 0 else 0.01
        self._timers["probe"] = self.reactor.callLater(interval, self._probe_tick)

    # -- incoming --

    def datagram_received(
        self, data: bytes, source: tuple[str, int], sock: IceSocket | None = None
    ) -> None:
        """Demultiplex one datagram: STUN (checks, responses) or application data."""
        if self._closed:
            return
        sock = sock or self._main
        if sock is self._main and self._main_allocations:
            for allocation in self._main_allocations:
                if allocation.datagram_received(data, Address(*source)):
                    return
        if is_stun(data):
            try:
                message = decode(data)
            except StunDecodeError:
                message = None
            if message is not None and sock is not None:
                self._stun_received(message, source, sock)
                return
        self._deliver(data, source)

    def _deliver(self, data: bytes, source: tuple[str, int]) -> None:
        if self.connection is not None:
            if source == self.connection.remote or any(
                p.remote.address == source for p in self.checklist.valid_pairs()
            ):
                self.connection._datagram(data)
                return
        elif any(p.remote.address == source for p in self.checklist.valid_pairs()) or any(
            c.address == source for c in self.remote_candidates
        ):
            if len(self._early) < self.config.early_datagrams:
                self._early.append((data, source))
                return
        self.stats.data_dropped += 1

    def _stun_received(
        self, message: StunMessage, source: tuple[str, int], sock: IceSocket
    ) -> None:
        if message.message_class in (MessageClass.SUCCESS, MessageClass.ERROR):
            if not sock.transactions.handle(message, Address(*source)):
                self.stats.malformed += 1
            return
        if message.message_class == MessageClass.INDICATION:
            return  # keepalives
        if message.method != Method.BINDING:
            self.stats.malformed += 1
            return
        self._check_received(message, source, sock)

    def _check_received(
        self, request: StunMessage, source: tuple[str, int], sock: IceSocket
    ) -> None:
        self.stats.checks_received += 1
        try:
            username = request.get_string(Attr.USERNAME)
            priority = request.get_uint32(Attr.PRIORITY)
            controlling = request.get_uint64(Attr.ICE_CONTROLLING)
            controlled = request.get_uint64(Attr.ICE_CONTROLLED)
        except StunDecodeError:
            self.stats.malformed += 1
            return
        if (
            username is None
            or not username.startswith(self.local_ufrag + ":")
            or not request.check_integrity(self.local_pwd.encode())
        ):
            self.stats.unauthenticated += 1
            _log.debug("dropped unauthenticated check from {src}", src=source)
            return
        if priority is None:
            self._respond_error(request, source, 400, "PRIORITY missing", sock)
            return
        remote_ufrag = username.split(":", 1)[1]
        if self.remote_ufrag is not None and remote_ufrag != self.remote_ufrag:
            self.stats.unauthenticated += 1
            return
        # Role conflict (RFC 8445 7.3.1.1).
        if self.controlling and controlling is not None:
            self.stats.role_conflicts += 1
            if self.tie_breaker >= controlling:
                self._respond_error(request, source, 487, "Role Conflict", sock)
                return
            self._set_role(False)
        elif not self.controlling and controlled is not None:
            self.stats.role_conflicts += 1
            if self.tie_breaker >= controlled:
                self._set_role(True)
            else:
                self._respond_error(request, source, 487, "Role Conflict", sock)
                return
        response = request.success_response()
        response.add_address(Attr.XOR_MAPPED_ADDRESS, source)
        self._send_response(response, source, sock)

        remote = next((c for c in self.remote_candidates if c.address == source), None)
        if remote is None:
            # Peer-reflexive remote candidate (RFC 8445 7.3.1.3).
            remote = Candidate(
                foundation=str(random.getrandbits(31)),
                component=1,
                transport="udp",
                priority=priority,
                host=source[0],
                port=source[1],
                type="prflx",
            )
            self.remote_candidates.append(remote)
            _log.debug("peer-reflexive remote candidate {c}", c=remote.to_sdp())
        local = sock.base if sock.base is not None else self._base_for(*source)
        pair = self.checklist.find(local, source) or self.checklist.add(local, remote)
        if pair is None:
            return
        use_candidate = request.has(Attr.USE_CANDIDATE) and not self.controlling
        if use_candidate:
            pair.remote_nominated = True
        if pair.state == PairState.SUCCEEDED:
            if use_candidate and not self._settled():
                pair.nominated = True
                self._select(pair)  # selects, or upgrades from a relayed pair
            return
        if self._settled() and not use_candidate:
            return
        if self.remote_pwd is None:
            self._pending_triggers.append((local, source))
            return
        self.checklist.trigger(pair)
        self._schedule_checks()

    def _send_response(
        self, response: StunMessage, source: tuple[str, int], sock: IceSocket | None = None
    ) -> None:
        try:
            self._write(
                encode(response, integrity_key=self.local_pwd.encode(), fingerprint=True),
                source,
                sock,
            )
            self.stats.responses_sent += 1
        except OSError as e:
            _log.debug("could not answer {src}: {err}", src=source, err=e)

    def _respond_error(
        self,
        request: StunMessage,
        source: tuple[str, int],
        code: int,
        reason: str,
        sock: IceSocket | None = None,
    ) -> None:
        self._send_response(request.error_response(code, reason), source, sock)

    # -- consent freshness and keepalive --

    def _schedule_consent(self) -> None:
        if self._closed or self.config.consent_interval <= 0:
            return
        jitter = random.uniform(0.8, 1.2)
        self._timers["consent"] = self.reactor.callLater(
            self.config.consent_interval * jitter, self._consent_tick
        )

    def _consent_tick(self) -> None:
        self._timers.pop("consent", None)
        pair = self.selected
        if self._closed or pair is None or self.connection is None:
            return
        now = self.reactor.seconds()
        if now - self._last_consent > self.config.consent_timeout:
            self._lose_consent()
            return
        self.stats.consent_checks += 1
        sock = self._socket_for(pair.local)
        if sock is None or self.remote_pwd is None:
            return
        d = sock.transactions.request(
            self._check_request(pair, nominate=False),
            Address(*pair.remote.address),
            policy=RetransmissionPolicy(rto=0.5, rc=3, rm=2),
            integrity_key=self.remote_pwd.encode(),
        )

        def fresh(response: StunResponse) -> None:
            if response.source == Address(*pair.remote.address):
                self._last_consent = self.reactor.seconds()

        d.addCallbacks(fresh, lambda f: None)
        self._schedule_consent()

    def _lose_consent(self) -> None:
        elapsed = self.reactor.seconds() - self._last_consent
        _log.info("consent lost: no answer from the peer for {s:.0f}s", s=elapsed)
        if self.connection is not None:
            self.connection._closed(f"consent expired (no answer for {elapsed:.0f}s)")
        self.close()

    def _schedule_keepalive(self) -> None:
        if self._closed or self.config.keepalive_interval <= 0:
            return
        self._timers["keepalive"] = self.reactor.callLater(
            self.config.keepalive_interval, self._keepalive_tick
        )

    def _keepalive_tick(self) -> None:
        self._timers.pop("keepalive", None)
        if self._closed or self.connection is None:
            return
        idle = self.reactor.seconds() - self._last_sent
        if idle >= self.config.keepalive_interval * 0.99:
            self.stats.keepalives += 1
            try:
                self._write(
                    encode(StunMessage.indication(Method.BINDING), fingerprint=True),
                    self.connection.remote,
                    self._socket_for(self.selected.local) if self.selected else None,
                )
            except OSError as e:
                _log.debug("keepalive failed: {err}", err=e)
            self._schedule_keepalive()
        else:
            wait = self.config.keepalive_interval - idle
            self._timers["keepalive"] = self.reactor.callLater(wait, self._keepalive_tick)

    # -- shutdown --

    def close(self) -> defer.Deferred[None]:
        """Stop everything: checks, timers, the socket; the connection (if any) closes."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        self._running = False
        if self._check_timer is not None and self._check_timer.active():
            self._check_timer.cancel()
        self._check_timer = None
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self._probing = False
        self._pending_checks.clear()
        if self.connection is not None:
            self.connection._closed("closed locally")
        d, self._connect_d = self._connect_d, None
        if d is not None and not d.called:
            d.errback(IceError("cancelled", "the attempt was cancelled"))
        relays = list(self._relays.values())
        self._relays.clear()
        sockets = [s for s in [self._main, *self._extra.values()] if s is not None]
        self._extra.clear()
        # Deallocate first (through the main socket for UDP relays), then close sockets.
        deallocating = defer.gatherResults([r.close() for r in relays], consumeErrors=True)
        self._main_allocations.clear()
        if relays:
            closed: defer.Deferred[None] = defer.Deferred()

            def then_sockets(_: object) -> None:
                defer.gatherResults([sock.close() for sock in sockets], consumeErrors=True).addBoth(
                    lambda _: closed.callback(None)
                )

            deallocating.addBoth(then_sockets)
            return closed
        closing = [sock.close() for sock in sockets]
        result: defer.Deferred[None] = defer.gatherResults(closing, consumeErrors=True).addCallback(
            lambda _: None
        )
        return result

# -*- test-case-name: tests.unit.test_ice_core -*-
"""The ICE agent's state machine without I/O (RFC 8445, one component, UDP).

:class:`IceCore` takes datagrams and time in and gives datagrams, one timer and events
out, in the shape of aioquic's ``QuicConnection``:

- ``receive_datagram(data, source, via, now)``: a datagram that arrived on socket ``via``;
- ``datagrams_to_send(now)``: ``(data, destination, via)`` to write;
- ``get_timer()`` / ``handle_timer(now)``: when it next needs time, and that time;
- ``next_event()``: :mod:`holepunch.ice.events`, news and requests for I/O;
- commands, each with ``now``: ``start_gathering``, ``set_remote_credentials``,
  ``add_remote_candidate``, ``set_remote_mapping``, ``connect``, ``send_datagram``,
  ``tcp_stun_answered``, ``close``, and the answers to its requests (``socket_opened``,
  ``add_relay``, ``relays_done``); for TURN recovery ``relay_lost``, ``replace_relay``
  and ``permission_refused``.

The work is split by concern, one module each: :mod:`holepunch.ice.gathering`
(candidates and our mapping), :mod:`holepunch.ice.checks` (sending and answering
connectivity checks), :mod:`holepunch.ice.nomination` (one selector per role),
:mod:`holepunch.ice.probing` (port prediction and birthday probing),
:mod:`holepunch.ice.consent` (RFC 7675 consent and keepalives). This module keeps the
state they share and routes datagrams, transactions and timers to them. The Twisted
adapter is :class:`holepunch.ice.agent.IceAgent`.

One UDP socket (``via`` 0) carries everything: STUN to the servers (so the reflexive
address it learns is the mapping the punch uses), checks both ways, and application
data; datagrams are told apart by the STUN magic cookie (RFC 7983).
"""

from __future__ import annotations

import os
import secrets
from collections import deque
from collections.abc import Callable, Hashable, Sequence

from twisted.logger import Logger

from holepunch.addresses import ip_version
from holepunch.ice import events
from holepunch.ice.betterpath import PathSearch
from holepunch.ice.candidate import Candidate
from holepunch.ice.checklist import CandidatePair, CheckList, relayed
from holepunch.ice.checks import Checker
from holepunch.ice.config import IceConfig
from holepunch.ice.consent import Consent
from holepunch.ice.events import MAIN, IceError
from holepunch.ice.gathering import PORT_MAPPING_EXTENSION, Gatherer
from holepunch.ice.hardnat import MappingProfile, Technique
from holepunch.ice.nomination import Selector, selector_for
from holepunch.ice.parts import AgentStats, TransactionOwner
from holepunch.ice.probing import HardNatProbing
from holepunch.ice.timers import Timers
from holepunch.stun.framing import is_stun
from holepunch.stun.message import StunMessage, decode
from holepunch.stun.transactions import (
    ClientTransactions,
    RetransmissionPolicy,
    TransactionOutcome,
)
from holepunch.stun.wire import Address, MessageClass, Method, StunDecodeError

_log = Logger()

_CONNECTION_TIMERS = ("consent", "keepalive", "silence", "better")
"""The timers of the connection itself, which a restart keeps."""

_UFRAG_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"


def random_ice_string(length: int) -> str:
    """A random ice-char string (RFC 8839 5.4): ufrag >= 4, pwd >= 22 characters."""
    return "".join(secrets.choice(_UFRAG_CHARS) for _ in range(length))


Route = Callable[[tuple[str, int]], "str | None"]
"""The local address the system would send from toward a remote address."""


def _behind_v6_firewall(pair: CandidatePair) -> bool:
    """An IPv6 pair off loopback: IPv6 has no NAT, but home routers keep a stateful
    firewall in front of every host (RFC 6092), and it is the simultaneous checks that
    open it; the pair is a hole punch even though nothing is translated."""
    return ":" in pair.local.host and pair.local.host != "::1"


class IceCore:
    """One side of one ICE session, as a state machine (see the module docstring)."""

    def __init__(
        self,
        controlling: bool,
        config: IceConfig | None = None,
        *,
        ufrag: str | None = None,
        pwd: str | None = None,
        tie_breaker: int | None = None,
        route: Route | None = None,
    ) -> None:
        self.config = config or IceConfig()
        self.controlling = controlling
        self.local_ufrag = ufrag or random_ice_string(8)
        self.local_pwd = pwd or random_ice_string(24)
        self.tie_breaker = (
            tie_breaker if tie_breaker is not None else int.from_bytes(os.urandom(8), "big")
        )
        self.route = route
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self.local_candidates: list[Candidate] = []
        self.remote_candidates: list[Candidate] = []
        self.remote_end_of_candidates = False
        self.checklist = CheckList(controlling, self.config.checks.max_pairs)
        self.stats = AgentStats()
        self.selected: CandidatePair | None = None
        self.mapping: MappingProfile | None = None
        self.remote_mapping: MappingProfile | None = None
        self.techniques: set[Technique] = set()
        self.hold_checks = False
        """While True no check is sent (the negotiation sets it while other flows, TCP
        mapping for instance, still have to happen before our first check)."""
        self.patient = False
        """Another path (a punched TCP connection) carries the connection: no failure
        for want of a pair; the pairs are checked again (:meth:`keep_trying`)."""
        self.running = False
        self.closed = False
        self.now = 0.0
        self.started_at: float | None = None
        self.nominating: CandidatePair | None = None
        self.last_sent = 0.0
        self.last_data_sent = 0.0
        """When application data was last sent."""
        self.transactions = ClientTransactions()
        self.timers = Timers()
        self.host_bases: dict[str, Candidate] = {}
        self.socket_bases: dict[int, Candidate] = {}
        """Local candidates of the extra sockets and relays, by ``via``."""
        self.open_sockets: set[int] = set()
        self._next_via = MAIN + 1
        self._outgoing: list[tuple[bytes, tuple[str, int], int]] = []
        self._events: deque[events.Event] = deque()
        self._early: list[tuple[bytes, tuple[str, int]]] = []
        self.gatherer = Gatherer(self)
        self.checker = Checker(self)
        self.probing = HardNatProbing(self)
        self.consent = Consent(self)
        self.paths = PathSearch(self)
        self.selector: Selector = selector_for(self)
        self.generation = 0
        """The ICE generation: 0, then one more for each restart."""
        self.previous: CandidatePair | None = None
        """During a restart, the pair that was selected and still carries data."""
        self.previous_credentials: tuple[str, str] | None = None
        """Our ufrag and password of the generation whose pair carries data while a restart
        runs (the peer's consent checks on that pair still use them)."""
        self.restart_reason = ""
        self.restart_started = 0.0
        self._gathering: tuple[list[str], int, list[Address]] | None = None

    # -- the sans-I/O interface --

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int], int]]:
        """Datagrams to write now: ``(data, destination, via)``."""
        self.now = now
        for data, destination, via in self.transactions.datagrams_to_send():
            assert isinstance(via, int)
            self._outgoing.append((data, (destination.host, destination.port), via))
        outgoing, self._outgoing = self._outgoing, []
        if outgoing:
            self.last_sent = now
        return outgoing

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None: never)."""
        if self.closed:
            return None
        times = [
            t for t in (self.timers.get_timer(), self.transactions.get_timer()) if t is not None
        ]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Let time pass: retransmissions, timeouts and every component's timers."""
        self.now = now
        if self.closed:
            return
        for outcome in self.transactions.handle_timer(now):
            self._dispatch(outcome)
        for name in self.timers.due(now):
            if self.closed:
                return
            self._fire(name)

    def next_event(self) -> events.Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def receive_datagram(self, data: bytes, source: tuple[str, int], via: int, now: float) -> None:
        """One datagram from ``source`` on socket ``via``: STUN (checks, responses) or
        application data. Anything malformed is dropped and counted."""
        self.now = now
        if self.closed:
            return
        if is_stun(data):
            try:
                message = decode(data)
            except StunDecodeError:
                message = None
            if message is not None:
                self._stun_received(message, source, via)
                return
        self.deliver(data, source)

    # -- commands --

    def start_gathering(
        self, hosts: Sequence[str], port: int, stun_servers: Sequence[Address], now: float
    ) -> None:
        """Host candidates on ``hosts`` (all on the main socket's ``port``) and
        server-reflexive ones from ``stun_servers`` (resolved addresses)."""
        self.now = now
        self.open_sockets.add(MAIN)
        self._gathering = (list(hosts), port, list(stun_servers))
        self.gatherer.start(hosts, port, stun_servers)

    def set_remote_credentials(self, ufrag: str, pwd: str, now: float) -> None:
        """The peer's ufrag and password, from its offer or answer."""
        self.now = now
        if not ufrag or not pwd:
            raise ValueError("remote ufrag and pwd must not be empty")
        self.remote_ufrag = ufrag
        self.remote_pwd = pwd
        self.checker.release_triggers()
        self.probing.plan()
        self.checker.schedule()

    def add_remote_candidate(self, candidate: Candidate | None, now: float) -> None:
        """A candidate from the peer (trickled or in its offer); None ends them."""
        self.now = now
        if self.closed:
            return
        if candidate is None:
            self.remote_end_of_candidates = True
            self.check_failure()
            return
        if candidate.type == "relay" and self.remote_end_of_candidates:
            self._remote_relay_replaced(candidate)
        self.checker.add_remote(candidate)

    def set_remote_mapping(self, profile: MappingProfile | None, now: float) -> None:
        """The peer's measured mapping (``ice.mapping`` in its offer or answer)."""
        self.now = now
        self.remote_mapping = profile
        self.probing.plan()
        self.checker.schedule()

    def set_mapping(self, profile: MappingProfile | None, now: float) -> None:
        """Our own mapping, when it was measured elsewhere."""
        self.now = now
        self.mapping = profile
        self.probing.plan()

    def release_checks(self, now: float) -> None:
        """End :attr:`hold_checks` and start checking."""
        self.now = now
        self.hold_checks = False
        self.checker.schedule()

    def connect(self, now: float) -> None:
        """Start the connectivity checks; the outcome is a :class:`PairSelected
        <holepunch.ice.events.PairSelected>` or a :class:`Failed
        <holepunch.ice.events.Failed>` event."""
        self.now = now
        if self.running or self.closed:
            return
        self.running = True
        self.started_at = now
        self.timers.set("timeout", now + self.config.checks.connection_timeout)
        self.probing.plan()
        self.checker.schedule()

    def keep_trying(self, now: float) -> None:
        """Another path carries the connection (a punched TCP connection): from now on
        this core does not fail when every pair has failed or the connection timeout
        passes; its failed pairs are checked again on the better-path schedule
        (``RestartConfig.probe_min`` seconds, doubling up to ``probe_max``) until one is
        selected, when the connection can move here. :meth:`stop_trying` ends it."""
        self.now = now
        if self.closed or self.patient:
            return
        self.patient = True
        if self.selected is None:
            self.paths.keep_trying()

    def stop_trying(self, now: float) -> None:
        """The other path failed: fail as before once nothing can succeed, or at once if
        the connection timeout has passed."""
        self.now = now
        if not self.patient:
            return
        self.patient = False
        if self.closed or self.selected is not None or not self.running:
            return
        started = self.started_at if self.started_at is not None else now
        if now >= started + self.config.checks.connection_timeout:
            self._timed_out()
        else:
            self.check_failure()

    def remeasure_mapping(self, now: float) -> bool:
        """On a sequential NAT, learn the latest public port again (one new flow) after
        other flows moved it; a :class:`MappingMeasured` event says when it is done.
        False when there is nothing to measure."""
        self.now = now
        return self.gatherer.remeasure()

    def tcp_stun_answered(self, family: int, now: float) -> None:
        """A STUN server answered over TCP in ``family`` (the TCP track learnt its
        mapping): with that for every family asked over UDP, if no server answers over
        UDP within the gathering policy's ``rto``, UDP is taken as blocked
        (``TcpConfig.presume_udp_blocked``; see :meth:`Gatherer.tcp_answered`)."""
        self.now = now
        self.gatherer.tcp_answered(family)

    def socket_opened(self, via: int, local: tuple[str, int], now: float) -> None:
        """The socket asked for with :class:`SocketWanted` is bound at ``local``."""
        self.now = now
        self.open_sockets.add(via)
        if self.gatherer.owns_socket(via):
            self.gatherer.socket_opened(via)
        else:
            self.probing.socket_opened(via, local)

    def socket_failed(self, via: int, now: float) -> None:
        """The socket asked for could not be opened; probing goes on without it."""
        self.now = now
        if self.gatherer.owns_socket(via):
            self.gatherer.socket_failed(via)
        else:
            self.probing.socket_failed(via)

    def add_relay(
        self, relayed_address: tuple[str, int], mapped: tuple[str, int], server: str, now: float
    ) -> int:
        """A TURN allocation at ``relayed_address``; returns its ``via``."""
        self.now = now
        via = self.new_via()
        self.open_sockets.add(via)
        self.gatherer.add_relay(via, relayed_address, mapped, server)
        return via

    def relay_lost(self, via: int, reason: str, now: float) -> None:
        """Our relay ``via`` is gone (the TURN server lost the allocation; the adapter
        has forgotten it): its candidate and pairs are dropped. If it carried the
        connection, the connection moves to the next pair that works
        (:meth:`Selector.pairs_lost <holepunch.ice.nomination.Selector.pairs_lost>`);
        the adapter allocates again and hands the new relay to :meth:`replace_relay`."""
        self.now = now
        base = self.socket_bases.get(via)
        if self.closed or base is None or base.type != "relay":
            return
        self.stats.relays_lost += 1
        del self.socket_bases[via]
        self.open_sockets.discard(via)
        self.transactions.cancel_all(via)
        if base in self.local_candidates:
            self.local_candidates.remove(base)
        lost = [p for p in self.checklist if p.local == base]
        self.selector.pairs_lost(lost, f"relay {base.host}:{base.port} lost: {reason}")

    def replace_relay(
        self, relayed_address: tuple[str, int], mapped: tuple[str, int], server: str, now: float
    ) -> int:
        """A new TURN allocation after :meth:`relay_lost`: like :meth:`add_relay`, its
        candidate is announced (trickled to the peer, who replaces our old one with it)
        and paired with every remote candidate; returns its ``via``."""
        via = self.add_relay(relayed_address, mapped, server, now)
        self.stats.relays_reallocated += 1
        return via

    def permission_refused(self, via: int, host: str, reason: str, now: float) -> None:
        """Our relay ``via``'s server refused a permission for ``host`` (403 Forbidden,
        coturn's ``denied-peer-ip``): the pairs from that relay to ``host`` fail at once;
        the relay and its other pairs are untouched."""
        self.now = now
        self.stats.permissions_refused += 1
        base = self.socket_bases.get(via)
        if self.closed or base is None:
            return
        lost = [p for p in self.checklist if p.local == base and p.remote.host == host]
        self.selector.pairs_lost(lost, f"TURN permission for {host} refused: {reason}")
        self.check_failure()

    def _remote_relay_replaced(self, candidate: Candidate) -> None:
        """A relayed candidate trickled after the peer's end-of-candidates: the peer
        allocated again (its relay was lost), so its earlier relayed candidates and
        their pairs are dropped."""
        old = [
            c
            for c in self.remote_candidates
            if c.type == "relay" and c.address != candidate.address
        ]
        if not old:
            return
        self.stats.remote_relays_replaced += 1
        for c in old:
            self.remote_candidates.remove(c)
        lost = [p for p in self.checklist if p.remote in old]
        self.selector.pairs_lost(
            lost, f"the peer replaced its relayed candidate with {candidate.host}:{candidate.port}"
        )

    def port_mapping_done(
        self,
        external: tuple[str, int] | None,
        internal_host: str | None,
        method: str,
        now: float,
    ) -> None:
        """The answer to :class:`PortMappingWanted`: the external address the router
        mapped to our main socket from ``internal_host`` by ``method``, or None."""
        self.now = now
        self.gatherer.port_mapping_done(external, internal_host, method)

    def relays_done(self, now: float) -> None:
        """No more relayed candidates will come: gathering is complete."""
        self.now = now
        self.gatherer.finish()

    def send_datagram(self, data: bytes, destination: tuple[str, int], now: float) -> None:
        """An application datagram, from the selected pair's socket."""
        self.now = now
        if self.closed:
            raise OSError("agent closed")
        carrying = self.carrying
        via = self.via_for(carrying.local) if carrying is not None else MAIN
        if via is None and self.selector.recovering:
            self.stats.data_dropped += 1  # between a lost relay and the next pair
            return
        if via is None or via not in self.open_sockets:
            raise OSError("socket closed")
        self.last_data_sent = now
        self.send(data, destination, via)

    def restart(self, now: float, reason: str, hosts: Sequence[str] | None = None) -> bool:
        """ICE restart (RFC 8445 9): new local credentials and a new gathering (on
        ``hosts``, or the addresses gathered last time) while the selected pair keeps
        carrying data; the new generation's checks wait for the peer's new credentials
        (:meth:`set_remote_credentials`). A :class:`Restarting` event tells the adapter
        what to signal; a :class:`PathChanged` and a :class:`RestartEnded` follow when a
        new pair is selected. False (and nothing done) before the first selection."""
        self.now = now
        carrying = self.carrying
        if self.closed or carrying is None or self._gathering is None:
            return False
        if self.previous is None:
            self.previous = carrying
            self.previous_credentials = (self.local_ufrag, self.local_pwd)
        self.generation += 1
        self.stats.restarts += 1
        self.restart_reason = reason
        self.restart_started = now
        # The old generation's checks, gathering and probing end; consent goes on.
        owners = (self.checker, self.gatherer, self.probing)
        self.transactions.cancel_where(
            lambda context: isinstance(context, tuple) and any(context[0] is o for o in owners)
        )
        self.probing.stop()
        keep = self.via_for(carrying.local)
        for via in self.probing.release_losers(keep):
            self.release_socket(via)
        for via in [v for v in self.socket_bases if v != keep]:
            self.release_socket(via)
        self.timers.cancel_where(lambda name: name not in _CONNECTION_TIMERS)
        self.selected = None
        self.nominating = None
        self.local_ufrag = random_ice_string(8)
        self.local_pwd = random_ice_string(24)
        self.remote_ufrag = None
        self.remote_pwd = None
        self.local_candidates = []
        self.remote_candidates = []
        self.remote_end_of_candidates = False
        self.checklist = CheckList(self.controlling, self.config.checks.max_pairs)
        self.host_bases = {}
        self.mapping = None
        self.remote_mapping = None
        self.techniques = set()
        self._early = []
        self.gatherer = Gatherer(self)
        self.checker = Checker(self)
        self.probing = HardNatProbing(self)
        self.selector = selector_for(self)
        self.running = True
        self.started_at = now
        self.timers.set("restart-deadline", now + self.config.restart.timeout)
        _log.info(
            "ICE restart {g} ({reason}): new credentials, gathering again",
            g=self.generation,
            reason=reason,
        )
        self.emit(events.Restarting(self.generation, reason, self.local_ufrag, self.local_pwd))
        old_hosts, port, servers = self._gathering
        host_list = list(hosts) if hosts else old_hosts
        self._gathering = (host_list, port, servers)
        self.gatherer.start(host_list, port, servers)
        self.checker.schedule()
        return True

    def restart_done(self, pair: CandidatePair) -> None:
        """The restart selected ``pair``: the old generation is released."""
        old = self.previous
        self.previous = None
        self.previous_credentials = None
        self.timers.cancel("restart-deadline")
        self.stats.restarts_completed += 1
        if old is not None:
            old_via = self.via_for(old.local)
            if old_via is not None and old_via != MAIN and old_via != self.via_for(pair.local):
                self.release_socket(old_via)
        self.emit(
            events.RestartEnded(
                self.generation, self.restart_reason, True, self.now - self.restart_started
            )
        )

    def _restart_deadline(self) -> None:
        """The restart selected nothing in time: the old pair goes on alone."""
        if self.previous is None:
            return
        _log.info(
            "ICE restart {g} found no new pair in {s:g}s",
            g=self.generation,
            s=self.config.restart.timeout,
        )
        self.stats.restarts_abandoned += 1
        self.selected = self.previous
        self.previous = None
        self.running = False
        self.checker.clear()
        self.emit(
            events.RestartEnded(
                self.generation, self.restart_reason, False, self.now - self.restart_started
            )
        )

    @property
    def carrying(self) -> CandidatePair | None:
        """The pair application data goes on: the selected one, or during a restart the
        one selected before it."""
        return self.selected if self.selected is not None else self.previous

    def fail(self, error: IceError, now: float) -> None:
        """Give up: a :class:`Failed` event, and the core closes."""
        self.now = now
        if self.closed:
            return
        self.running = False
        self.emit(events.Failed(error))
        self.close(now)

    def close(self, now: float) -> None:
        """Stop everything: checks, timers, transactions. The adapter closes sockets."""
        self.now = now
        if self.closed:
            return
        self.closed = True
        self.running = False
        self.timers.clear()
        self.transactions.cancel_all()
        self.checker.clear()
        self.probing.stop()
        self._outgoing.clear()

    # -- shared by the components --

    @property
    def gathering_complete(self) -> bool:
        """Every local candidate, relayed ones too, is known."""
        return self.gatherer.complete

    @property
    def stun_complete(self) -> bool:
        """Every STUN server answered or gave up."""
        return self.gatherer.stun_complete

    @property
    def mapping_complete(self) -> bool:
        """Every IPv4 Binding of the gathering answered or gave up (see
        :attr:`Gatherer.mapping_complete`)."""
        return self.gatherer.mapping_complete

    @property
    def stun_settled(self) -> bool:
        """What a description carries is known (see :attr:`Gatherer.settled`)."""
        return self.gatherer.settled

    @property
    def udp_blocked(self) -> bool:
        """STUN servers were asked over UDP and none answered (known once STUN is done,
        or presumed earlier: see :meth:`tcp_stun_answered`)."""
        return self.gatherer.udp_blocked

    def new_via(self) -> int:
        """A fresh socket number."""
        via, self._next_via = self._next_via, self._next_via + 1
        return via

    def emit(self, event: events.Event) -> None:
        """Queue an event for the adapter."""
        self._events.append(event)

    def send(self, data: bytes, destination: tuple[str, int], via: int) -> None:
        """Queue a datagram."""
        self._outgoing.append((data, destination, via))

    def add_local(self, candidate: Candidate, announce: bool = True) -> bool:
        """Add a local candidate (announced unless ``announce`` is False); False if known."""
        if any(
            c.address == candidate.address and c.transport == candidate.transport
            for c in self.local_candidates
        ):
            return False
        self.local_candidates.append(candidate)
        if announce:
            self.emit(events.LocalCandidate(candidate))
        return True

    def base_for(self, host: str, port: int) -> Candidate | None:
        """The host candidate the system sends from toward ``host:port``: the route's
        source address, else the first host candidate of the same family (RFC 8445
        6.1.2.2 pairs only candidates of one family); None when we have none of it."""
        source = self.route((host, port)) if self.route is not None else None
        family = ip_version(host)
        if source is not None and source in self.host_bases and ip_version(source) == family:
            return self.host_bases[source]
        return next((c for h, c in self.host_bases.items() if ip_version(h) == family), None)

    def via_for(self, local: Candidate) -> int | None:
        """The socket a local candidate sends from (its base's socket, or its relay)."""
        for via, base in self.socket_bases.items():
            if base == local or (
                local.type != "relay"
                and base.type == "host"
                and base.port == (local.port if local.type == "host" else local.related_port)
            ):
                return via if via in self.open_sockets else None
        if local.type == "relay":
            return None
        return MAIN if MAIN in self.open_sockets else None

    def release_socket(self, via: int) -> None:
        """An extra socket or relay is no longer used: forget it and ask to close it."""
        self.socket_bases.pop(via, None)
        self.open_sockets.discard(via)
        self.transactions.cancel_all(via)
        self.emit(events.SocketReleased(via))

    def settled(self) -> bool:
        """A pair is selected and it is direct: nothing else is worth trying."""
        return self.selected is not None and not relayed(self.selected)

    def hard_nat_pending(self) -> bool:
        """Birthday probing is under way or about to start: not a failure yet."""
        return self.probing.pending()

    def check_failure(self) -> None:
        """Fail once nothing can succeed any more: every pair failed (or there were
        none), the peer ended its candidates, ours are gathered, no probing is left."""
        if (
            not self.running
            or self.selected is not None
            or self.previous is not None
            or not self.remote_end_of_candidates
            or not self.gathering_complete
            or self.hard_nat_pending()
        ):
            return
        if self.patient:
            return  # PathSearch checks the failed pairs again
        probes = (
            f" and {self.stats.probes_sent} birthday probes went unanswered"
            if self.stats.probes_sent
            else ""
        )
        if not len(self.checklist):
            self.fail(IceError("candidates", f"no candidate pairs to check{probes}"), self.now)
        elif self.checklist.all_failed():
            self.fail(
                IceError(
                    "connectivity-checks",
                    f"all {len(self.checklist)} candidate pairs failed{probes}",
                ),
                self.now,
            )

    def set_role(self, controlling: bool) -> None:
        """Change role (a role conflict, RFC 8445 7.2.5.1 and 7.3.1.1)."""
        self.controlling = controlling
        self.checklist.set_role(controlling)
        self.selector = selector_for(self)

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
        return self.transactions.start(
            message,
            destination,
            self.now,
            via=via,
            policy=policy,
            integrity_key=integrity_key,
            context=(owner, payload),
        )

    def deliver(self, data: bytes, source: tuple[str, int]) -> None:
        """Application data: to the connection once selected, kept a little before."""
        if self.previous is not None and source == self.previous.remote.address:
            self.consent.heard()
            self.emit(events.DatagramReceived(data, source))
            return
        if self.selected is not None:
            if source == self.selected.remote.address:
                self.consent.heard()
            if source == self.selected.remote.address or any(
                p.remote.address == source for p in self.checklist.valid_pairs()
            ):
                self.emit(events.DatagramReceived(data, source))
                return
        elif any(p.remote.address == source for p in self.checklist.valid_pairs()) or any(
            c.address == source for c in self.remote_candidates
        ):
            if len(self._early) < self.config.checks.early_datagrams:
                self._early.append((data, source))
                return
        self.stats.data_dropped += 1

    def flush_early(self) -> None:
        """Deliver what arrived before the pair was selected."""
        early, self._early = self._early, []
        for data, source in early:
            self.deliver(data, source)

    def method(self, pair: CandidatePair) -> str:
        """How a pair connects, in the names the API reports."""
        if relayed(pair):
            return "turn-relay"
        if pair.tag:
            return pair.tag
        if (
            any(name == PORT_MAPPING_EXTENSION for name, _ in pair.remote.extensions)
            or any(name == PORT_MAPPING_EXTENSION for name, _ in pair.local.extensions)
            or (pair.mapped is not None and pair.mapped in self.gatherer.port_mapped)
        ):
            return "port-mapping"
        mapped = pair.mapped
        no_nat_here = mapped is not None and mapped == (pair.local.host, pair.local.port)
        if pair.remote.type == "host" and no_nat_here and not _behind_v6_firewall(pair):
            return "direct"
        return "udp-hole-punch"

    # -- routing --

    def _stun_received(self, message: StunMessage, source: tuple[str, int], via: int) -> None:
        if message.message_class in (MessageClass.SUCCESS, MessageClass.ERROR):
            outcome = self.transactions.receive(message, Address(*source), via)
            if outcome is False:
                self.stats.malformed += 1
            elif isinstance(outcome, TransactionOutcome):
                self._dispatch(outcome)
            return
        if message.message_class == MessageClass.INDICATION:
            return  # keepalives
        if message.method != Method.BINDING:
            self.stats.malformed += 1
            return
        self.checker.request_received(message, source, via)

    def _dispatch(self, outcome: TransactionOutcome) -> None:
        context = outcome.context
        assert isinstance(context, tuple)
        owner: TransactionOwner = context[0]
        owner.transaction_done(outcome, context[1])

    def _fire(self, name: Hashable) -> None:
        key = name[0] if isinstance(name, tuple) else name
        if key == "timeout":
            self._timed_out()
        elif key in ("pace", "pair-later"):
            self.checker.timer(name)
        elif key in ("nominate", "relay"):
            self.selector.timer(key)
        elif key in ("probe", "probe-end", "birthday-open"):
            self.probing.timer(key)
        elif key in ("consent", "keepalive", "silence"):
            self.consent.timer(key)
        elif key in ("relay-gather", "udp-presumed"):
            self.gatherer.timer(key)
        elif key == "restart-deadline":
            self._restart_deadline()
        elif key == "better":
            self.paths.timer()

    def _timed_out(self) -> None:
        if self.selected is not None:
            return
        if self.patient:
            _log.info(
                "no UDP pair selected within {t:g}s; another path carries the connection, "
                "the pairs are checked again every {wait:g}s at most",
                t=self.config.checks.connection_timeout,
                wait=self.config.restart.probe_max,
            )
            return
        tried = len(self.checklist)
        valid = len(self.checklist.valid_pairs())
        stage = "connectivity-checks" if tried else "candidates"
        if valid:
            stage = "nomination"
        detail = (
            f"no working path within {self.config.checks.connection_timeout:g}s "
            f"({tried} pairs tried, {valid} valid, "
            f"{len(self.remote_candidates)} remote candidates)"
        )
        self.fail(IceError(stage, detail), self.now)

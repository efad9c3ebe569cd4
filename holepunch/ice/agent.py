# -*- test-case-name: tests.unit.test_ice_agent -*-
"""The ICE agent for Twisted: the sans-I/O :class:`IceCore <holepunch.ice.core.IceCore>`
with sockets, TURN relays and one timer around it.

:class:`IceAgent` owns what the core cannot: the main UDP socket (and, for birthday
probing, extra ones the core asks for), the TURN allocations (UDP ones on the main
socket, TCP/TLS ones on their own connections), name resolution, and a single
``callLater`` for the core's next deadline. After every input it writes what the core
wants sent and acts on its events; the result of :meth:`IceAgent.connect` is a
:class:`PeerConnection <holepunch.ice.connection.PeerConnection>`.

Everything ICE decides (gathering, checks, nomination, hard-NAT schedules, consent) is in
the core and its modules; see :mod:`holepunch.ice.core`.

TURN recovery is the adapter's part in it: a relay of ours that the server loses
(:class:`Relays <holepunch.ice.relays.Relays>` reports it) is handed to
``core.relay_lost``, allocated again (same server first) and given back with
``core.replace_relay``, which announces the new relayed candidate; a permission refused
for one address goes to ``core.permission_refused``. Each step is logged, counted in
:attr:`IceAgent.stats` and reported to :attr:`IceAgent.on_relay_event`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from holepunch.addresses import format_address
from holepunch.ice import events
from holepunch.ice.candidate import Candidate
from holepunch.ice.checklist import CheckList, relayed
from holepunch.ice.config import IceConfig
from holepunch.ice.connection import PeerConnection, RestartInfo
from holepunch.ice.core import IceCore
from holepunch.ice.events import MAIN, IceError
from holepunch.ice.hardnat import MappingProfile, Technique
from holepunch.ice.parts import AgentStats
from holepunch.ice.portmapping import AgentPortMapping
from holepunch.ice.relays import Relays
from holepunch.ice.sockets import (
    IceSocket,
    bind_interface,
    local_addresses,
    route_source,
)
from holepunch.nat.portmap import PortMapping
from holepunch.reuseport import ipv6_unavailable
from holepunch.stun.client import resolve_server
from holepunch.stun.wire import Address

_log = Logger()


class IceAgent:
    """One side of one ICE session (one component, UDP), on a Twisted reactor."""

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
        self.core = IceCore(
            controlling,
            config,
            ufrag=ufrag,
            pwd=pwd,
            tie_breaker=tie_breaker,
            route=route_source,
        )
        self.on_local_candidate: Callable[[Candidate | None], None] | None = None
        """Called with each local candidate as it is found, then None (trickle ICE)."""
        self.on_relay_event: Callable[[str, str], None] | None = None
        """Called with ``("relay-lost", reason)`` when the TURN server lost our relay,
        ``("relay-reallocated", "turn:SERVER relayed HOST:PORT")`` when a new one replaced
        it, ``("relay-unavailable", reason)`` when none could be allocated."""
        self.on_restart: Callable[[str], None] | None = None
        """Called with the reason when an ICE restart begins (ours, or one the peer asked
        for through :meth:`restart`): the new :attr:`local_ufrag` / :attr:`local_pwd` and
        candidates must go to the peer (the negotiation sends a new offer or answer)."""
        self.local_addresses: Callable[[], list[str]] = self._configured_addresses
        """The local addresses to gather on now: the configured ones, or every usable
        local address of the families the agent's socket serves (replaceable, for
        tests)."""
        self._addresses: list[str] = []
        self._watch: IDelayedCall | None = None
        self.connection: PeerConnection | None = None
        self._sockets: dict[int, IceSocket] = {}
        self.relays = Relays(reactor, self.core.config.relay)
        """The TURN allocations (:class:`holepunch.ice.relays.Relays`)."""
        self.port_mapping = AgentPortMapping(reactor, self.core.config.gathering)
        """The router's mapping of our socket (:mod:`holepunch.ice.portmapping`)."""
        self._local: tuple[str, int] | None = None
        self._interface = ""
        self._timer: IDelayedCall | None = None
        self._connect_d: defer.Deferred[PeerConnection] | None = None
        self._gathered: list[defer.Deferred[None]] = []
        self._settled_waiters: list[defer.Deferred[None]] = []
        self._measure_waiters: list[defer.Deferred[None]] = []
        self._pumping = False
        self._again = False
        self._closed = False

    # -- what the core knows --

    @property
    def config(self) -> IceConfig:
        """The agent's settings."""
        return self.core.config

    @property
    def controlling(self) -> bool:
        """Our current role (a role conflict may change it)."""
        return self.core.controlling

    @property
    def local_ufrag(self) -> str:
        """Our ICE username fragment."""
        return self.core.local_ufrag

    @property
    def local_pwd(self) -> str:
        """Our ICE password."""
        return self.core.local_pwd

    @property
    def local_candidates(self) -> list[Candidate]:
        """Our candidates so far."""
        return self.core.local_candidates

    @property
    def remote_candidates(self) -> list[Candidate]:
        """The peer's candidates so far (signalled, peer-reflexive and predicted)."""
        return self.core.remote_candidates

    @property
    def checklist(self) -> CheckList:
        """The candidate pairs."""
        return self.core.checklist

    @property
    def stats(self) -> AgentStats:
        """Counters."""
        return self.core.stats

    @property
    def mapping(self) -> MappingProfile | None:
        """Our NAT's mapping as measured from the agent's socket (None: unknown)."""
        return self.core.mapping

    @mapping.setter
    def mapping(self, profile: MappingProfile | None) -> None:
        self.core.set_mapping(profile, self.reactor.seconds())
        self._pump()

    @property
    def techniques(self) -> set[Technique]:
        """The hard-NAT techniques in use for this peer."""
        return self.core.techniques

    @property
    def gathering_complete(self) -> bool:
        """Every local candidate is known."""
        return self.core.gathering_complete

    @property
    def udp_blocked(self) -> bool:
        """STUN servers were asked over UDP and none answered."""
        return self.core.udp_blocked

    @property
    def hold_checks(self) -> bool:
        """While True no check is sent (see :meth:`release_checks`)."""
        return self.core.hold_checks

    @hold_checks.setter
    def hold_checks(self, hold: bool) -> None:
        self.core.hold_checks = hold

    @property
    def closed(self) -> bool:
        """The agent is closed."""
        return self._closed

    @property
    def relay_allocations(self) -> list[Any]:
        """The TURN allocations behind our relayed candidates."""
        return self.relays.allocations

    # -- sockets --

    def listen(self) -> tuple[str, int]:
        """Bind the agent's main UDP socket (once); returns its local address."""
        if self._closed:
            raise IceError("closed", "the agent is closed")
        if self._local is not None:
            return self._local
        interface = bind_interface(self._candidate_addresses())
        if interface == "::" and ipv6_unavailable() is not None:
            _log.info("IPv6 is not available on this host: gathering on IPv4 only")
            interface = ""
        self._interface = interface
        self._local = self._open_socket(MAIN, interface, self.config.gathering.port).local
        return self._local

    def _candidate_addresses(self) -> list[str]:
        """The configured addresses, or every usable local one (both families)."""
        gathering = self.config.gathering
        if gathering.addresses:
            # As sockets spell them (``2001:db8::1``, not ``2001:DB8:0::1``).
            return [str(ipaddress.ip_address(a)) for a in gathering.addresses]
        return local_addresses(gathering.include_loopback)

    def _served(self, addresses: list[str]) -> list[str]:
        """Those of ``addresses`` the main socket can send from: all of them on ``::``,
        the IPv4 ones on IPv4 any, the one it is bound to otherwise."""
        interface = self._interface
        if interface == "::":
            return addresses
        if interface == "":
            return [a for a in addresses if ":" not in a]
        return [a for a in addresses if a == interface] or [interface]

    def _open_socket(self, via: int, interface: str, port: int) -> IceSocket:
        sock = IceSocket.bind(self.reactor, via, interface, port, self.datagram_received)
        self._sockets[via] = sock
        return sock

    @property
    def local_port(self) -> int:
        """The main socket's port (bound on first use)."""
        if self._local is not None:
            return self._local[1]
        return self.listen()[1]

    @property
    def listening(self) -> bool:
        """The main socket is open."""
        main = self._sockets.get(MAIN)
        return main is not None and main.open

    def datagram_received(self, data: bytes, source: tuple[str, int], via: int = MAIN) -> None:
        """A datagram from one of our sockets or relays."""
        if self._closed:
            return
        if via == MAIN and self.relays.demultiplex(data, source):
            return
        self.core.receive_datagram(data, source, via, self.reactor.seconds())
        self._pump()

    def _write(self, data: bytes, destination: tuple[str, int], via: int) -> None:
        if self.relays.send(via, data, destination):
            return
        sock = self._sockets.get(via)
        if sock is None:
            raise OSError("socket closed")
        sock.write(data, destination)

    def send_data(self, data: bytes, destination: tuple[str, int]) -> None:
        """Send an application datagram from the selected pair's socket."""
        if self._closed:
            raise OSError("agent closed")
        self.core.send_datagram(data, destination, self.reactor.seconds())
        self._pump()

    # -- driving the core --

    def _pump(self) -> None:
        """Write what the core wants sent, act on its events, set its timer."""
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            while True:
                self._again = False
                for data, destination, via in self.core.datagrams_to_send(self.reactor.seconds()):
                    try:
                        self._write(data, destination, via)
                    except OSError as e:
                        _log.debug("send to {dest} failed: {err}", dest=destination, err=e)
                event = self.core.next_event()
                while event is not None:
                    self._handle(event)
                    event = self.core.next_event()
                if not self._again:
                    break
        finally:
            self._pumping = False
        self._set_timer()

    def _set_timer(self) -> None:
        at = None if self._closed else self.core.get_timer()
        if self._timer is not None and self._timer.active():
            if at is not None and self._timer.getTime() == at:
                return
            self._timer.cancel()
        self._timer = None
        if at is not None:
            delay = max(0.0, at - self.reactor.seconds())
            self._timer = self.reactor.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(self.reactor.seconds())
        self._pump()

    def _handle(self, event: events.Event) -> None:
        if isinstance(event, events.LocalCandidate):
            self._announce(event.candidate)
            if event.candidate is None:
                self._fire(self._gathered)
        elif isinstance(event, events.StunSettled):
            self._fire(self._settled_waiters)
        elif isinstance(event, events.MappingMeasured):
            self._fire(self._measure_waiters)
        elif isinstance(event, events.RelaysWanted):
            defer.ensureDeferred(self._gather_relays())
        elif isinstance(event, events.PortMappingWanted):
            self.port_mapping.start(event.port, event.hosts, self._port_mapped)
        elif isinstance(event, events.SocketWanted):
            self._open_extra(event.via)
        elif isinstance(event, events.SocketReleased):
            self._release(event.via)
        elif isinstance(event, events.PermissionWanted):
            self.relays.permit(event.host, event.via, self._permission_refused)
        elif isinstance(event, events.ChannelWanted):
            self.relays.bind_channel(event.via, event.peer)
        elif isinstance(event, events.PairSelected):
            self._selected(event)
        elif isinstance(event, events.PathChanged):
            self._path_changed(event)
        elif isinstance(event, (events.Restarting, events.RestartEnded)):
            self._restart_event(event)
        elif isinstance(event, events.DatagramReceived):
            if self.connection is not None:
                self.connection.deliver(event.data)
        elif isinstance(event, events.ConsentLost):
            if self.connection is not None:
                self.connection.mark_closed(f"consent expired (no answer for {event.seconds:.0f}s)")
            self.close()
        elif isinstance(event, events.Failed):
            d, self._connect_d = self._connect_d, None
            _log.info("ICE failed: {err}", err=event.error)
            self.close()
            if d is not None and not d.called:
                d.errback(event.error)

    @staticmethod
    def _fire(waiters: list[defer.Deferred[None]]) -> None:
        pending = list(waiters)
        waiters.clear()
        for d in pending:
            if not d.called:
                d.callback(None)

    def _announce(self, candidate: Candidate | None) -> None:
        if self.on_local_candidate is not None:
            try:
                self.on_local_candidate(candidate)
            except Exception:
                _log.failure("on_local_candidate raised")

    def _local_address(self, via: int, candidate: Candidate) -> tuple[str, int]:
        if via in self.relays:
            return candidate.address
        sock = self._sockets[via]
        host, port = sock.local
        return (candidate.host if host in ("0.0.0.0", "::", "") else host, port)

    def _selected(self, event: events.PairSelected) -> None:
        self.relays.watch(relayed(event.pair))
        pair = event.pair
        self.connection = PeerConnection(
            self,
            event.method,
            self._local_address(event.via, pair.local),
            pair.remote.address,
            pair.rtt,
            pair.local,
            pair.remote,
        )
        waiting, self._connect_d = self._connect_d, None
        if waiting is not None and not waiting.called:
            waiting.callback(self.connection)

    def _restart_event(self, event: events.Restarting | events.RestartEnded) -> None:
        if isinstance(event, events.Restarting):
            info = RestartInfo(event.generation, event.reason, "started")
            if self.on_restart is not None:
                try:
                    self.on_restart(event.reason)
                except Exception:
                    _log.failure("on_restart raised")
        else:
            info = RestartInfo(
                event.generation,
                event.reason,
                "completed" if event.ok else "abandoned",
                event.elapsed,
            )
        if self.connection is not None:
            self.connection.restart_news(info)

    def _path_changed(self, event: events.PathChanged) -> None:
        self.relays.watch(relayed(event.pair))
        if self.connection is None:
            return
        pair = event.pair
        self.connection.move_to(
            event.method,
            self._local_address(event.via, pair.local),
            pair.remote.address,
            pair.rtt,
            pair.local,
            pair.remote,
            event.reason,
        )

    def _open_extra(self, via: int) -> None:
        main = self._sockets.get(MAIN)
        interface = main.local[0] if main is not None else ""
        try:
            sock = self._open_socket(via, interface if interface != "0.0.0.0" else "", 0)
        except Exception as e:
            _log.info("birthday socket failed: {err}", err=e)
            self.core.socket_failed(via, self.reactor.seconds())
            return
        self.core.socket_opened(via, sock.local, self.reactor.seconds())

    def _release(self, via: int) -> None:
        if self.relays.release(via):
            return
        sock = self._sockets.pop(via, None)
        if sock is not None:
            sock.close()

    def _port_mapped(self, mapping: PortMapping | None) -> None:
        if self._closed:
            return
        self.core.port_mapping_done(
            mapping.external if mapping else None,
            mapping.internal_address if mapping else None,
            mapping.method.value if mapping else "",
            self.reactor.seconds(),
        )
        self._pump()

    # -- gathering --

    async def gather(self) -> list[Candidate]:
        """Gather host, server-reflexive and relayed candidates; returns them all.

        Each is announced through ``on_local_candidate`` as soon as it is known, then
        ``None`` (end of candidates). A STUN server that does not answer within the
        gather policy is skipped, with a log line.
        """
        _, port = self.listen()
        gathering = self.config.gathering
        addresses = self._configured_addresses()
        if not addresses:
            raise IceError("gathering", "no usable local address")
        done: defer.Deferred[None] = defer.Deferred()
        self._gathered.append(done)
        servers = await self._resolve(gathering.stun_servers)
        if self._closed:
            return list(self.local_candidates)
        self._addresses = list(addresses)
        self.core.start_gathering(addresses, port, servers, self.reactor.seconds())
        self._pump()
        self._start_watching()
        await done
        return list(self.local_candidates)

    async def _resolve(self, servers: Any) -> list[Address]:
        async def one(server: tuple[str, int]) -> Address | None:
            try:
                return await resolve_server(self.reactor, server[0], server[1])
            except Exception as e:
                _log.info(
                    "STUN server {server} gave no reflexive address: {err}", server=server, err=e
                )
                return None

        results = await defer.gatherResults([defer.ensureDeferred(one(s)) for s in servers])
        return [r for r in results if r is not None]

    def when_stun_settled(self) -> defer.Deferred[None]:
        """Fires once what a description carries is known: our mapping (every IPv4
        Binding answered or gave up) and whether UDP is blocked (a STUN server answered,
        or every one gave up). IPv6 server-reflexive and relayed candidates may still
        come, trickled."""
        if self.core.stun_settled:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._settled_waiters.append(d)
        return d

    def tcp_stun_answered(self, family: int) -> None:
        """A STUN server answered us over TCP in ``family`` (4, 6): once that holds for
        every family asked over UDP, if none answers over UDP one retransmission
        interval later, UDP is taken as blocked at once, without waiting for every
        Binding to give up (``TcpConfig.presume_udp_blocked``)."""
        if self._closed:
            return
        self.core.tcp_stun_answered(family, self.reactor.seconds())
        self._pump()

    async def remeasure_mapping(self) -> None:
        """On a sequential NAT, learn the latest public port again (one new flow, to a
        destination the probe did not use) after other flows (TCP, say) moved it."""
        if self._closed:
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._measure_waiters.append(d)
        if not self.core.remeasure_mapping(self.reactor.seconds()):
            self._measure_waiters.remove(d)
            return
        self._pump()
        await d

    async def _gather_relays(self) -> None:
        """Relayed candidates from the first TURN server that allocates (RFC 8656): one
        per relayed address, so one per family of a dual allocation."""
        main = self._sockets[MAIN]
        allocation = await self.relays.allocate(main.write, self.udp_blocked)
        if allocation is not None and not self._closed:
            self._add_relayed(allocation, replacing=False)
        elif allocation is not None:
            allocation.close()
        if not self._closed:
            self.core.relays_done(self.reactor.seconds())
            self._pump()

    # -- TURN recovery --

    def _relay_event(self, kind: str, detail: str) -> None:
        if self.on_relay_event is not None:
            try:
                self.on_relay_event(kind, detail)
            except Exception:
                _log.failure("on_relay_event raised")

    def _relay_lost(self, via: int, error: Exception) -> None:
        """The TURN server lost relay ``via``: tell the core, then allocate again."""
        if self._closed:
            return
        vias = [via, *self.relays.siblings(via)]  # a dual allocation is lost as a whole
        server = self.relays.lost(via)
        reason = str(error)
        _log.warn("relay {via} lost: {reason}", via=via, reason=reason)
        for lost in vias:
            self.core.relay_lost(lost, reason, self.reactor.seconds())
        self._relay_event("relay-lost", reason)
        self._pump()
        if self.config.relay.reallocate:
            defer.ensureDeferred(self._reallocate(server))

    async def _reallocate(self, server: Any) -> None:
        """Allocate again (``server`` first, then the others) until one grants, a few
        rounds ``reallocate_retry`` apart; the new relayed candidate is announced."""
        main = self._sockets.get(MAIN)
        for _ in range(10):
            if self._closed or main is None:
                return
            allocation = await self.relays.allocate(main.write, self.udp_blocked, first=server)
            if self._closed:
                if allocation is not None:
                    allocation.close()
                return
            if allocation is not None:
                allocated = allocation.allocated
                self._add_relayed(allocation, replacing=True)
                relayed_at = ", ".join(format_address(a) for a in allocated.relayed_addresses)
                detail = f"turn:{format_address(allocated.server)} relayed {relayed_at}"
                _log.info("relay reallocated: {detail}", detail=detail)
                self._relay_event("relay-reallocated", detail)
                self._pump()
                return
            await task.deferLater(self.reactor, self.config.relay.reallocate_retry, lambda: None)
        self._relay_event("relay-unavailable", "no TURN server granted a new allocation")

    def _add_relayed(self, allocation: Any, replacing: bool) -> None:
        """A candidate and a via for each relayed address of ``allocation`` (the first
        replaces the lost relay's candidate when ``replacing``)."""
        allocated = allocation.allocated
        mapped = (allocated.mapped.host, allocated.mapped.port)
        for index, granted in enumerate(allocated.relayed_addresses):
            add = self.core.replace_relay if replacing and index == 0 else self.core.add_relay
            address = (granted.host, granted.port)
            via = add(address, mapped, str(allocated.server), self.reactor.seconds())
            self.relays.add(
                via, allocation, self.datagram_received, self._relay_lost, relayed=address
            )

    def _permission_refused(self, via: int, host: str, reason: str) -> None:
        if self._closed:
            return
        self.core.permission_refused(via, host, reason, self.reactor.seconds())
        self._pump()

    # -- restarts --

    def restart(self, reason: str = "application") -> bool:
        """ICE restart (RFC 8445 9): new credentials and a new gathering while the
        selected pair keeps carrying data; ``on_restart`` hears of it, and the
        connection's path moves when the new generation selects a pair. False when there
        is no connection to restart (not connected yet, or closed)."""
        if self._closed:
            return False
        hosts = self.local_addresses()
        started = self.core.restart(self.reactor.seconds(), reason, hosts or None)
        if started and hosts:
            self._addresses = hosts
        self._pump()
        return started

    def _configured_addresses(self) -> list[str]:
        """The addresses to gather on now: configured or local, those the socket serves."""
        return self._served(self._candidate_addresses())

    def _start_watching(self) -> None:
        interval = self.config.restart.watch_interfaces
        if interval > 0 and not self._closed and self._watch is None:
            self._watch = self.reactor.callLater(interval, self._check_interfaces)

    def _check_interfaces(self) -> None:
        """Every ``watch_interfaces`` seconds: a local address came or went, restart."""
        self._watch = None
        if self._closed:
            return
        current = self.local_addresses()
        if self.core.carrying is not None and set(current) != set(self._addresses):
            _log.info(
                "local addresses changed ({old} -> {new}): ICE restart",
                old=",".join(self._addresses),
                new=",".join(current),
            )
            self._addresses = current
            self.restart("address-change")
        self._start_watching()

    # -- the peer --

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        """The peer's ufrag and password, from its offer or answer."""
        self.core.set_remote_credentials(ufrag, pwd, self.reactor.seconds())
        self._pump()

    def add_remote_candidate(self, candidate: Candidate | None) -> None:
        """A candidate from the peer (trickled or in its offer); None ends them."""
        self.core.add_remote_candidate(candidate, self.reactor.seconds())
        self._pump()

    def set_remote_mapping(self, profile: MappingProfile | None) -> None:
        """The peer's measured mapping (``ice.mapping`` in its offer or answer)."""
        self.core.set_remote_mapping(profile, self.reactor.seconds())
        self._pump()

    def release_checks(self) -> None:
        """End :attr:`hold_checks` and start checking."""
        self.core.release_checks(self.reactor.seconds())
        self._pump()

    def keep_trying(self) -> None:
        """Another path carries the connection: do not fail, check the failed pairs
        again on the better-path schedule (:meth:`IceCore.keep_trying
        <holepunch.ice.core.IceCore.keep_trying>`)."""
        self.core.keep_trying(self.reactor.seconds())
        self._pump()

    def stop_trying(self) -> None:
        """The other path failed: fail as before once nothing can succeed."""
        self.core.stop_trying(self.reactor.seconds())
        self._pump()

    def connect(self) -> defer.Deferred[PeerConnection]:
        """Start (or join) the connectivity checks; fires with the :class:`PeerConnection`.

        Fails with :class:`IceError` when every pair failed after the peer's
        end-of-candidates, or after the connection timeout. Cancelling it closes the
        agent (socket and timers).
        """
        if self._connect_d is not None:
            return self._connect_d
        self.listen()

        def cancel(_: object) -> None:
            self.close()

        self._connect_d = defer.Deferred(cancel)
        d = self._connect_d
        self.core.connect(self.reactor.seconds())
        self._pump()
        return d

    def fail(self, error: IceError) -> None:
        """Give up with ``error`` (for instance, gathering failed): the attempt fails."""
        self.core.fail(error, self.reactor.seconds())
        self._pump()

    # -- shutdown --

    def close(self) -> defer.Deferred[None]:
        """Stop everything: checks, timers, sockets, relays; the connection closes."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        self.core.close(self.reactor.seconds())
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        if self.connection is not None:
            self.connection.mark_closed("closed locally")
        d, self._connect_d = self._connect_d, None
        if d is not None and not d.called:
            d.errback(IceError("cancelled", "the attempt was cancelled"))
        for waiters in (self._gathered, self._settled_waiters, self._measure_waiters):
            self._fire(waiters)
        sockets = list(self._sockets.values())
        self._sockets.clear()
        # Deallocate first (through the main socket for UDP relays), then close sockets.
        deallocating = defer.gatherResults(
            [self.relays.close(), self.port_mapping.close()], consumeErrors=True
        )
        closed: defer.Deferred[None] = defer.Deferred()

        def then_sockets(_: object) -> None:
            defer.gatherResults([s.close() for s in sockets], consumeErrors=True).addBoth(
                lambda _: closed.callback(None)
            )

        deallocating.addBoth(then_sockets)
        return closed

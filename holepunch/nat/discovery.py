# -*- test-case-name: tests.integration.test_nat_discovery -*-
"""NAT behaviour discovery over real sockets (RFC 5780 section 4).

The tests, in the order they run:

1. **Binding** (RFC 5780 4.2, test I): one socket asks every server at once; no UDP answer
   at all means UDP is blocked (a Binding over TCP then tells the public address). The
   mapped address compared with the local one tells whether there is a NAT. The first
   server that answers with OTHER-ADDRESS is used for the rest (RFC 5780 mode).
2. **Mapping** (4.3): the same socket asks the alternate address (test II), then the
   alternate address and port (test III), comparing the mapped addresses.
3. **Hairpinning** (4.5): a second socket sends a Binding request to the first socket's
   mapped address; it is hairpinned if it arrives.
4. **Port allocation**: a fresh socket makes new flows one after another, to the four
   address/port combinations (symmetric NATs), or fresh sockets each make one flow
   (cone NATs); the public ports tell preserving, sequential (and the delta) or random.
   Nothing else is sent meanwhile, so a sequential NAT's counter moves by our flows only.
5. **Filtering** (4.4): *fresh sockets* ask for an answer from the other address and port,
   and from the other port only. A fresh socket per test means a filtered answer cannot
   leave state behind (in the NAT or its conntrack table) that changes the next test's
   mapping: the mistake that makes pystun3 and pynat call Linux's NAT "symmetric".

Without an RFC 5780 server, ordinary servers still tell a lot: every server given is asked
from the same socket, and a lone server on its second port too (port + 1: the daemon
answers on 3478 and 3479); mappings toward destinations that differ in address or port
tell mapping behaviour, and new flows from a fresh socket to those destinations tell the
port allocation. Filtering needs CHANGE-REQUEST and is reported ``unknown`` with a note.
``evidence`` says what each finding rests on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.error import DNSLookupError
from twisted.logger import Logger

from holepunch.addresses import format_address, ip_version
from holepunch.nat.model import (
    Behavior,
    FamilyResult,
    NatInfo,
    NatType,
    PortAllocation,
    allocation_of_flows,
    classify,
    port_allocation,
)
from holepunch.routes import source_address_toward
from holepunch.stun.client import (
    BindingResult,
    NoStunServerAnswered,
    RetransmissionPolicy,
    StunClientProtocol,
    StunError,
    binding_over_tcp,
    binding_request,
    listen_stun,
    resolve_addresses,
    resolve_server,
)
from holepunch.stun.message import decode, encode
from holepunch.stun.wire import Address, MessageClass, StunDecodeError

_log = Logger()

Progress = Callable[[str], None]


_ANSWERED = RetransmissionPolicy(rto=0.25, rc=5, rm=8)  # 5.5 s
_FILTERED = RetransmissionPolicy(rto=0.25, rc=4, rm=6)  # 3.25 s
_HAIRPIN = RetransmissionPolicy(rto=0.2, rc=3, rm=4)  # 1.4 s


@dataclass(frozen=True)
class DiscoveryTimers:
    """How long each kind of test waits. ``answered`` tests expect an answer; ``filtered``
    tests often get none, and their wait is the price of a negative result."""

    answered: RetransmissionPolicy = _ANSWERED
    filtered: RetransmissionPolicy = _FILTERED
    hairpin: RetransmissionPolicy = _HAIRPIN
    tcp_timeout: float = 5.0

    @classmethod
    def scaled(cls, seconds: float) -> DiscoveryTimers:
        """Timers whose longest test takes about ``seconds``."""
        base = cls()
        factor = seconds / base.answered.total
        return cls(
            answered=RetransmissionPolicy(
                base.answered.rto * factor, base.answered.rc, base.answered.rm
            ),
            filtered=RetransmissionPolicy(
                base.filtered.rto * factor, base.filtered.rc, base.filtered.rm
            ),
            hairpin=RetransmissionPolicy(
                base.hairpin.rto * factor, base.hairpin.rc, base.hairpin.rm
            ),
            tcp_timeout=max(1.0, seconds),
        )


class NatDiscovery:
    """One run of the discovery tests. Use :func:`discover_nat`."""

    def __init__(
        self,
        reactor: Any,
        servers: Sequence[Address],
        interface: str = "",
        timers: DiscoveryTimers | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.reactor = reactor
        self.servers = list(servers)
        self.interface = interface
        self.timers = timers or DiscoveryTimers()
        self.progress = progress or (lambda text: None)
        self._sockets: list[StunClientProtocol] = []

    @property
    def family(self) -> int:
        """4 or 6: the address family of the servers (and of every socket)."""
        return ip_version(self.servers[0].host) if self.servers else 4

    def _socket(self) -> StunClientProtocol:
        proto = listen_stun(self.reactor, interface=self.interface, family=self.family)
        self._sockets.append(proto)
        return proto

    async def _close(self) -> None:
        sockets, self._sockets = self._sockets, []
        await defer.gatherResults([s.close() for s in sockets], consumeErrors=True)

    async def _binding(
        self,
        sock: StunClientProtocol,
        server: Address,
        policy: RetransmissionPolicy,
        change_ip: bool = False,
        change_port: bool = False,
    ) -> BindingResult | None:
        try:
            return await sock.binding(
                server, change_ip=change_ip, change_port=change_port, policy=policy
            )
        except StunError as e:
            _log.debug("binding to {server} failed: {err}", server=server, err=e)
            return None

    async def run(self) -> NatInfo:
        """Run every test and return what was found; sockets are closed in any case."""
        try:
            return await self._run()
        finally:
            await self._close()

    async def _run(self) -> NatInfo:
        t = self.timers
        if not self.servers:
            raise NoStunServerAnswered({})
        main = self._socket()
        names = [format_address(s) for s in self.servers]
        self.progress(f"Binding test: asking {', '.join(names)} over UDP")
        answers = await defer.gatherResults(
            [defer.ensureDeferred(self._binding(main, s, t.answered)) for s in self.servers]
        )
        answered = [(s, a) for s, a in zip(self.servers, answers, strict=True) if a is not None]
        if not answered:
            return await self._udp_blocked(names)
        if all(a.other_address is None for _, a in answered) and len(self.servers) == 1:
            lone = self.servers[0]
            second = Address(lone.host, lone.port + 1)
            self.progress(f"One server: asking its second port {format_address(second)}")
            r = await self._binding(main, second, t.answered)
            if r is not None:
                answered.append((second, r))

        server, first = next(
            ((s, a) for s, a in answered if a.other_address is not None), answered[0]
        )
        local_ip = self.interface or source_address_toward(server.host, server.port)
        local_port = main.local.port
        info = NatInfo(
            type=NatType.PORT_RESTRICTED,
            public_address=first.mapped.host,
            public_port=first.mapped.port,
            local_address=local_ip,
            local_port=local_port,
            server=format_address(server),
        )
        behind_nat = first.mapped != Address(local_ip, local_port)
        self.progress(
            f"Public address {format_address(first.mapped)} "
            f"(local {format_address((local_ip, local_port))}): "
            + ("behind a NAT" if behind_nat else "no NAT")
        )
        if self.family == 6:
            self._note_nat66(info, first.mapped, Address(local_ip, local_port))
        other = first.other_address
        if other is not None and (other.host == server.host or other.port == server.port):
            info.notes.append(
                f"{info.server} sent OTHER-ADDRESS {other.host}:{other.port}, which does not "
                "differ in both address and port; RFC 5780 tests skipped"
            )
            other = None
        info.rfc5780 = other is not None

        if other is not None:
            info.mapping = await self._mapping_rfc5780(main, server, other, first)
            info.evidence.append(
                f"mapping: RFC 5780 tests against {info.server} and its other address "
                f"{other.host}:{other.port}"
            )
        else:
            info.mapping = self._mapping_from_servers(answered, info)

        info.hairpinning = await self._hairpinning(first.mapped)
        await self._allocation(server, other, info, [s for s, _ in answered])

        if other is not None:
            info.filtering = await self._filtering(server)
        else:
            info.notes.append(
                "filtering not measured: it needs a server that supports RFC 5780 "
                "(OTHER-ADDRESS and CHANGE-REQUEST)"
            )
        info.type = classify(True, behind_nat, info.mapping, info.filtering)
        if not behind_nat and info.mapping == Behavior.UNKNOWN:
            info.mapping = Behavior.ENDPOINT_INDEPENDENT
        self.progress(f"Result: {info.type.value}")
        return info

    @staticmethod
    def _note_nat66(info: NatInfo, public: Address, local: Address) -> None:
        """IPv6 has no NAT as a rule: say whether this host's address is its public one."""
        if public == local:
            info.evidence.append(
                "IPv6: the public address is the local one (no NAT66 or NPTv6); only a "
                "firewall can stand between this host and its peers"
            )
        elif public.host != local.host:
            info.notes.append(
                f"IPv6: translated (NAT66 or NPTv6): local {local.host} appears as {public.host}"
            )
        else:
            info.notes.append(
                f"IPv6: the address is the local one, but port {local.port} appears as "
                f"{public.port} (a firewall or NAT66 rewriting ports)"
            )

    async def _udp_blocked(self, names: list[str]) -> NatInfo:
        t = self.timers
        self.progress("No UDP answer; trying STUN over TCP")
        failures: dict[str, str] = {name: "no UDP response" for name in names}
        for server, name in zip(self.servers, names, strict=True):
            try:
                result = await binding_over_tcp(self.reactor, server, timeout=t.tcp_timeout)
            except Exception as e:  # any failure of this server: report it, try the next
                failures[name] = f"no UDP response; TCP: {e}"
                continue
            local_ip = self.interface or source_address_toward(server.host, server.port)
            info = NatInfo(
                type=NatType.UDP_BLOCKED,
                public_address=result.mapped.host,
                public_port=result.mapped.port,
                local_address=local_ip,
                server=name,
            )
            info.notes.append("UDP got no answer from any server; the public address is from TCP")
            return info
        raise NoStunServerAnswered(failures)

    async def _mapping_rfc5780(
        self, sock: StunClientProtocol, server: Address, other: Address, first: BindingResult
    ) -> Behavior:
        t = self.timers
        test2 = Address(other.host, server.port)
        self.progress(f"Mapping test II: {test2.host}:{test2.port}")
        r2 = await self._binding(sock, test2, t.answered)
        if r2 is None:
            return Behavior.UNKNOWN
        if r2.mapped == first.mapped:
            return Behavior.ENDPOINT_INDEPENDENT
        self.progress(f"Mapping test III: {other.host}:{other.port}")
        r3 = await self._binding(sock, other, t.answered)
        if r3 is None:
            return Behavior.UNKNOWN
        if r3.mapped == r2.mapped:
            return Behavior.ADDRESS_DEPENDENT
        return Behavior.ADDRESS_AND_PORT_DEPENDENT

    def _mapping_from_servers(
        self, answered: list[tuple[Address, BindingResult]], info: NatInfo
    ) -> Behavior:
        """Mapping behaviour from one socket's mappings toward several destinations."""
        names = ", ".join(f"{s.host}:{s.port}" for s, _ in answered)
        if len(answered) < 2:
            info.notes.append(
                "mapping not measured: it needs two destinations (two servers, a server's "
                "second port, or an RFC 5780 server); only one answered"
            )
            return Behavior.UNKNOWN
        info.evidence.append(f"mapping: one socket's mappings toward {names}")
        hosts = {s.host for s, _ in answered}
        if len({a.mapped for _, a in answered}) == 1:
            if len(hosts) < 2:
                info.notes.append(
                    "the same mapping toward two ports of one address: endpoint-independent, "
                    "or address-dependent (telling them apart needs a second address)"
                )
            return Behavior.ENDPOINT_INDEPENDENT
        by_host: dict[str, set[Address]] = {}
        for s, a in answered:
            by_host.setdefault(s.host, set()).add(a.mapped)
        if any(len(mapped) > 1 for mapped in by_host.values()):
            return Behavior.ADDRESS_AND_PORT_DEPENDENT  # another port alone, another mapping
        info.notes.append(
            "mapping differs between servers; telling address-dependent from "
            "address-and-port-dependent needs two ports of one server"
        )
        return Behavior.ADDRESS_DEPENDENT

    async def _hairpinning(self, target: Address) -> bool | None:
        """RFC 5780 4.5: a second socket sends to the main socket's public address."""
        self.progress("Hairpinning test")
        main = self._sockets[0]
        sender = self._socket()
        request = binding_request()
        data = encode(request, fingerprint=True)
        hit = False
        wake: defer.Deferred[None] | None = None

        def seen(datagram: bytes, source: Address) -> None:
            nonlocal hit
            try:
                message = decode(datagram)
            except StunDecodeError:
                return
            if (
                message.message_class == MessageClass.REQUEST
                and message.transaction_id == request.transaction_id
            ):
                hit = True
                if wake is not None and not wake.called:
                    wake.callback(None)

        previous, main.on_datagram = main.on_datagram, seen
        try:
            for wait in self.timers.hairpin.waits():
                assert sender.transport is not None
                sender.transport.write(data, (target.host, target.port))
                wake = defer.Deferred()
                timer = self.reactor.callLater(wait, wake.callback, None)
                await wake
                if timer.active():
                    timer.cancel()
                if hit:
                    return True
            return False
        except OSError as e:
            self.progress(f"Hairpinning test could not send: {e}")
            return None
        finally:
            main.on_datagram = previous

    async def _allocation(
        self,
        server: Address,
        other: Address | None,
        info: NatInfo,
        destinations: Sequence[Address] = (),
    ) -> None:
        t = self.timers
        ports: list[int] = []
        local_port: int | None = None
        dependent = info.mapping in (
            Behavior.ADDRESS_DEPENDENT,
            Behavior.ADDRESS_AND_PORT_DEPENDENT,
        )
        if dependent and not other and len(destinations) >= 2:
            # One fresh socket, a new flow to each destination that answered, in a row.
            sock = self._socket()
            self.progress(f"Port allocation: {len(destinations)} new flows from one socket")
            samples: list[tuple[int, int]] = []
            for flow, target in enumerate(destinations):
                r = await self._binding(sock, target, t.answered)
                if r is not None:
                    samples.append((flow, r.mapped.port))
            info.evidence.append(
                f"allocation: public ports {[p for _, p in samples]} of "
                f"{len(destinations)} new flows from one socket"
            )
            if len({p for _, p in samples}) >= 2:
                allocation, delta, _ = allocation_of_flows(samples, len(destinations))
                info.port_allocation, info.port_delta = allocation, delta
            return
        if dependent and other:
            # One fresh socket, four new flows in a row.
            sock = self._socket()
            local_port = sock.local.port
            targets = [
                server,
                Address(server.host, other.port),
                Address(other.host, server.port),
                other,
            ]
            self.progress("Port allocation: four new flows from one socket")
            for target in targets:
                r = await self._binding(sock, target, t.answered)
                if r is None:
                    break
                ports.append(r.mapped.port)
            info.evidence.append(
                f"allocation: public ports {ports} of four new flows from one socket"
            )
        else:
            # Fresh sockets, one flow each, toward the same server.
            self.progress("Port allocation: three fresh sockets")
            for _ in range(3):
                sock = self._socket()
                if local_port is None:
                    local_port = sock.local.port
                r = await self._binding(sock, server, t.answered)
                if r is None:
                    break
                ports.append(r.mapped.port)
            info.evidence.append(f"allocation: public ports {ports} of three fresh sockets")
            if ports and local_port is not None and ports[0] == local_port:
                # Every mapping preserved its port if each fresh socket's did.
                preserved = all(
                    p == s.local.port
                    for p, s in zip(ports, self._sockets[-len(ports) :], strict=True)
                )
                if preserved:
                    info.port_allocation, info.port_delta = PortAllocation.PRESERVING, 0
                    return
        info.port_allocation, info.port_delta = port_allocation(ports, None)

    async def _filtering(self, server: Address) -> Behavior:
        t = self.timers
        self.progress("Filtering tests: answers from the other address, and the other port")
        both, port_only = self._socket(), self._socket()
        r_both, r_port = await defer.gatherResults(
            [
                defer.ensureDeferred(
                    self._binding(both, server, t.filtered, change_ip=True, change_port=True)
                ),
                defer.ensureDeferred(
                    self._binding(port_only, server, t.filtered, change_port=True)
                ),
            ]
        )
        if r_both is not None:
            return Behavior.ENDPOINT_INDEPENDENT
        if r_port is not None:
            return Behavior.ADDRESS_DEPENDENT
        return Behavior.ADDRESS_AND_PORT_DEPENDENT


async def _resolve(
    reactor: Any, servers: Sequence[tuple[str, int] | Address], family: int | None
) -> tuple[list[Address], dict[str, str]]:
    """The servers' addresses of ``family`` (None: IPv4, else IPv6 for names without),
    and why each server that has none was left out."""
    resolved: list[Address] = []
    missing: dict[str, str] = {}
    for host, port in servers:
        try:
            resolved.append(await resolve_server(reactor, host, port, family))
        except DNSLookupError as e:
            missing[format_address((host, port))] = str(e)
    if family is None and resolved:
        first = ip_version(resolved[0].host)
        resolved = [a for a in resolved if ip_version(a.host) == first]
    return resolved, missing


async def resolve_families(
    reactor: Any, servers: Sequence[tuple[str, int] | Address], families: Sequence[int]
) -> dict[int, list[Address]]:
    """Each of ``families``' server addresses, every name looked up once for all of them
    (its A and AAAA records in one resolution): per server, its first address of each
    family. A name without an address of a family is left out of that family's list."""
    found = await defer.gatherResults(
        [
            defer.ensureDeferred(resolve_addresses(reactor, host, port, families))
            for host, port in servers
        ]
    )
    by_family: dict[int, list[Address]] = {family: [] for family in families}
    for addresses in found:
        for family, resolved in by_family.items():
            first = next((a for a in addresses if ip_version(a.host) == family), None)
            if first is not None:
                resolved.append(first)
    return by_family


async def discover_nat(
    reactor: Any,
    servers: Sequence[tuple[str, int] | Address],
    *,
    interface: str = "",
    family: int | None = None,
    timers: DiscoveryTimers | None = None,
    progress: Progress | None = None,
    port_mapping: bool = False,
    port_mapping_timeout: float = 1.0,
) -> NatInfo:
    """Find out what NAT this host is behind, by asking ``servers``, over one family.

    ``family`` (4 or 6) takes the servers of that family (a name's A or AAAA records);
    None: the family of ``interface`` if given, else IPv4, or IPv6 when no server has
    an IPv4 address. :func:`discover_families` runs both.

    With ``port_mapping``, also which of PCP, NAT-PMP and UPnP IGD the default gateway
    answers (asked at the same time, changing nothing on it; only when the servers are
    reached through that gateway, so a loopback test never asks the real router).

    Raises :class:`NoStunServerAnswered` when no server answered over UDP or TCP, or
    none has an address of the family.
    """
    if family is None and interface:
        family = ip_version(interface)
    resolved, missing = await _resolve(reactor, servers, family)
    if not resolved:
        raise NoStunServerAnswered(missing)
    return await _discover_resolved(
        reactor, resolved, interface, timers, progress, port_mapping, port_mapping_timeout
    )


async def _discover_resolved(
    reactor: Any,
    resolved: list[Address],
    interface: str,
    timers: DiscoveryTimers | None,
    progress: Progress | None,
    port_mapping: bool,
    port_mapping_timeout: float,
) -> NatInfo:
    """:func:`discover_nat` once the servers are addresses of one family."""
    probing = None
    if port_mapping and ip_version(resolved[0].host) == 4:
        probing = _probe_port_mapping(reactor, resolved[0], interface, port_mapping_timeout)
    try:
        info = await NatDiscovery(reactor, resolved, interface, timers, progress).run()
    except BaseException:
        if probing is not None:
            probing.cancel()
        raise
    if probing is not None:
        found = await probing
        if found is not None:
            info.port_mapping = {name: bool(r.get("available")) for name, r in found.items()}
            answered = [name for name, ok in info.port_mapping.items() if ok]
            info.evidence.append(
                "port mapping: the gateway answers "
                + (", ".join(answered) or "none of")
                + " (PCP, NAT-PMP, UPnP IGD asked)"
            )
    return info


async def _discover_family(
    reactor: Any,
    resolved: list[Address],
    family: int,
    interface: str,
    progress: Progress | None,
    timers: DiscoveryTimers | None,
    port_mapping: bool,
    port_mapping_timeout: float,
) -> FamilyResult:
    label = f"IPv{family}"
    if not resolved:
        return f"no {label} STUN server (none given, or no name has an {label} address)"
    try:
        source_address_toward(resolved[0].host, resolved[0].port)
    except OSError as e:
        return f"no {label} route to {resolved[0].host} ({e.strerror or e})"

    def tagged(text: str) -> None:
        if progress is not None:
            progress(f"{label}: {text}")

    try:
        return await _discover_resolved(
            reactor, resolved, interface, timers, tagged, port_mapping, port_mapping_timeout
        )
    except StunError as e:
        return str(e)
    except OSError as e:  # a socket of this family cannot be made or bound
        return f"{label}: {e.strerror or e}"


async def discover_families(
    reactor: Any,
    servers: Sequence[tuple[str, int] | Address],
    *,
    families: Sequence[int] = (4, 6),
    interface: str = "",
    timers: DiscoveryTimers | None = None,
    progress: Progress | None = None,
    port_mapping: bool = False,
    port_mapping_timeout: float = 1.0,
) -> dict[int, FamilyResult]:
    """:func:`discover_nat` over each of ``families`` at once (4 and 6 by default; only
    ``interface``'s when given), each with the servers (names' A or AAAA records) of its
    family, every name resolved once (:func:`resolve_families`); returns each family's
    :class:`NatInfo`, or a sentence saying why there is none (no server of that family,
    no route, no answer). Progress lines start with ``IPv4:`` or ``IPv6:``. The two never
    disturb each other's measurements: IPv6 flows do not pass through an IPv4 NAT."""
    if interface:
        families = [ip_version(interface)]
    resolved = await resolve_families(reactor, servers, families)
    runs = [
        defer.ensureDeferred(
            _discover_family(
                reactor,
                resolved[family],
                family,
                interface,
                progress,
                timers,
                port_mapping and family == 4,
                port_mapping_timeout,
            )
        )
        for family in families
    ]
    results = await defer.gatherResults(runs, consumeErrors=True)
    return dict(zip(families, results, strict=True))


def _probe_port_mapping(
    reactor: Any, server: Address, interface: str, timeout: float
) -> defer.Deferred[dict[str, dict[str, Any]] | None] | None:
    """Ask the default gateway which port-mapping protocols it speaks, or None when the
    STUN server is not reached through it (loopback, another interface)."""
    from holepunch.nat.portmap import PortMapper, default_gateway

    gateway = default_gateway()
    if gateway is None:
        return None
    try:
        local = source_address_toward(gateway)
        if local != (interface or source_address_toward(server.host, server.port)):
            return None
    except OSError:
        return None
    probing = PortMapper(reactor, gateway, local_address=local).probe(timeout)
    d: defer.Deferred[dict[str, dict[str, Any]] | None] = probing.addErrback(lambda f: None)
    return d


def discover_nat_deferred(
    reactor: Any, servers: Sequence[tuple[str, int]], **kw: Any
) -> defer.Deferred[NatInfo]:
    """:func:`discover_nat` as a Deferred, for callers that are not coroutines."""
    return defer.ensureDeferred(discover_nat(reactor, servers, **kw))

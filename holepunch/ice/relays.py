# -*- test-case-name: tests.unit.test_ice_agent -*-
"""The TURN side of an :class:`IceAgent <holepunch.ice.agent.IceAgent>`: its relay
allocations (RFC 8656), kept apart from the sockets and the core.

:class:`Relays` asks the configured TURN servers for one allocation (the first that
allocates: UDP servers from the agent's own socket, TCP and TLS ones over their own
connection), numbers it with the ``via`` the core gives it, and then does what the core
asks of it: send through it, install permissions and channels, release it, close all.
Datagrams that arrive on the agent's main socket from a UDP TURN server are taken out
here (:meth:`Relays.demultiplex`) before the core sees the rest.

Recovery: while the connection is relayed the relays are watched (:meth:`Relays.watch`,
a Refresh every ``RelayConfig.liveness_interval`` seconds); a relay lost for any reason
(that check, 437/438 on any request, a refresh refused, the TCP/TLS connection closed)
is reported through the ``on_lost`` given to :meth:`Relays.add`, and
:meth:`Relays.allocate` with ``first`` allocates again on the same server first, then on
the others in their order. A permission the server refuses for one peer address (403
Forbidden, coturn's ``denied-peer-ip``) is reported through ``on_refused`` of
:meth:`Relays.permit`; the relay is untouched.

Address families (RFC 8656 7.1): each allocation asks for ``families`` (by default
``"auto"``: a dual allocation, the family we reach the server over first, the other as
ADDITIONAL-ADDRESS-FAMILY), so one allocation on the agent's one socket can carry
relayed addresses of both families. Each relayed address is one relay ``via``
(:meth:`Relays.add` with ``relayed``); the vias of one allocation share it, data from a
peer is delivered to the via of the peer's family, and a permission, channel or send
toward a peer of another family than the via's is refused here (``on_refused``, or
``OSError`` for a send) without a request to the server.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from holepunch.addresses import format_address
from holepunch.ice.config import RelayConfig
from holepunch.stun.client import resolve_server
from holepunch.stun.message import Address
from holepunch.turn.families import AddressFamily, family_of

_log = Logger()


class Relays:
    """The TURN allocations of one agent."""

    def __init__(self, reactor: Any, config: RelayConfig) -> None:
        self.reactor = reactor
        self.config = config
        self._by_via: dict[int, Any] = {}
        self._relayed: dict[int, Address] = {}
        """The relayed address each via stands for."""
        self.dropped = 0
        """Data that came through an allocation from a peer of a family none of its vias
        stands for (the allocation only relays to permitted peers, so none is expected)."""
        self._origin: dict[int, Any] = {}
        """The configured server each allocation came from, by ``id(allocation)``."""
        self._on_main_socket: list[Any] = []
        self._watching = False
        self._closed = False

    @property
    def allocations(self) -> list[Any]:
        """The allocations behind our relayed candidates (each once)."""
        return list({id(a): a for a in self._by_via.values()}.values())

    def siblings(self, via: int) -> list[int]:
        """The other vias on relay ``via``'s allocation (the other family of a dual
        allocation), in the order they were added."""
        relay = self._by_via.get(via)
        return [v for v, a in self._by_via.items() if a is relay and v != via]

    def _family_mismatch(self, via: int, host: str) -> str | None:
        """Why relay ``via`` cannot reach ``host`` (another family), or None."""
        relayed = self._relayed.get(via)
        try:
            family = family_of(host)
        except ValueError:
            return f"{host!r} is not an IP address"
        if relayed is None or family_of(relayed.host) is family:
            return None
        return (
            f"relay {format_address(relayed)} is {family_of(relayed.host).label}, "
            f"the peer {host} is {family.label}"
        )

    def __contains__(self, via: object) -> bool:
        return via in self._by_via

    def demultiplex(self, data: bytes, source: tuple[str, int]) -> bool:
        """A datagram on the main socket: True when it was a UDP TURN server's."""
        return any(a.datagram_received(data, Address(*source)) for a in self._on_main_socket)

    def send(self, via: int, data: bytes, destination: tuple[str, int]) -> bool:
        """Send ``data`` to ``destination`` through relay ``via``; False if no such relay.

        :raise OSError: ``destination`` is of another family than the via's relayed
            address (``EAFNOSUPPORT``), or the allocation cannot send.
        """
        relay = self._by_via.get(via)
        if relay is None:
            return False
        mismatch = self._family_mismatch(via, destination[0])
        if mismatch is not None:
            raise OSError(errno.EAFNOSUPPORT, mismatch)
        relay.send(data, Address(*destination))
        return True

    def permit(
        self,
        host: str,
        via: int | None,
        on_refused: Callable[[int, str, str], None] | None = None,
    ) -> None:
        """A permission for ``host`` on relay ``via`` (None: on every relay);
        ``on_refused(via, host, reason)`` when the server refuses it (403 for a denied
        peer address, say) while the relay lives on, and at once, without asking the
        server, when the relay is of another family than ``host``."""
        if via is None:
            relays = list(self._by_via.items())
        else:
            relays = [(via, self._by_via[via])] if via in self._by_via else []
        for number, relay in relays:
            mismatch = self._family_mismatch(number, host)
            if mismatch is not None:
                _log.debug("no TURN permission for {host}: {why}", host=host, why=mismatch)
                if on_refused is not None:
                    on_refused(number, host, f"address family mismatch: {mismatch}")
                continue
            d = relay.create_permission(host)

            def refused(f: Any, h: str = host, v: int = number, r: Any = relay) -> None:
                reason = f.getErrorMessage()
                _log.info("TURN permission for {host} refused: {err}", host=h, err=reason)
                if on_refused is not None and self._by_via.get(v) is r:
                    on_refused(v, h, reason)

            d.addErrback(refused)

    def watch(self, on: bool) -> None:
        """Check every relay (and every relay added later) each ``liveness_interval``
        seconds while ``on``: the connection is relayed (through ours or the peer's,
        whose new relayed candidate is paired with ours)."""
        self._watching = on
        for relay in self.allocations:
            self._watch_one(relay)

    def _watch_one(self, relay: Any) -> None:
        interval = self.config.liveness_interval
        relay.watch(interval if self._watching and interval > 0 else None)

    def lost(self, via: int) -> Any | None:
        """Relay ``via`` was lost: forget it and its :meth:`siblings` (an allocation is
        lost as a whole; ask for them first); returns the configured server it came from
        (to allocate on it again first), or None."""
        relay = self._by_via.get(via)
        if relay is None:
            return None
        for number in [via, *self.siblings(via)]:
            del self._by_via[number]
            self._relayed.pop(number, None)
        if relay in self._on_main_socket:
            self._on_main_socket.remove(relay)
        return self._origin.pop(id(relay), None)

    def bind_channel(self, via: int, peer: tuple[str, int]) -> None:
        """A channel to ``peer`` on relay ``via`` (ChannelData once bound)."""
        relay = self._by_via.get(via)
        if relay is not None:
            mismatch = self._family_mismatch(via, peer[0])
            if mismatch is not None:
                _log.debug("no TURN channel to {peer}: {why}", peer=peer, why=mismatch)
                return
            d = relay.bind_channel(peer)
            d.addErrback(
                lambda f: _log.info("TURN channel not bound: {err}", err=f.getErrorMessage())
            )

    async def allocate(self, main_write: Callable[[bytes, tuple[str, int]], None],
                       udp_blocked: bool, first: Any = None) -> Any | None:  # fmt: skip
        """One allocation from the first TURN server that allocates, or None.

        UDP servers are used through ``main_write`` (the agent's own socket), so the
        relay's view of us is the mapping the checks use; TCP and TLS ones over their own
        connection. A dead server is abandoned after the relay timeout. ``first`` (one of
        the configured servers: the one a lost relay came from) is tried first, then the
        ones after it in the configured order, then those before.
        """
        from holepunch.turn import TurnAllocation, allocate_first, open_allocation

        config = self.config

        def open_one(server: Any) -> defer.Deferred[Any]:
            async def attempt() -> Any:
                if server.transport != "udp":
                    return await open_allocation(
                        server,
                        reactor=self.reactor,
                        timeout=config.timeout,
                        families=self.config.families,
                    )
                address = await resolve_server(self.reactor, server.host, server.port)
                allocation = TurnAllocation(
                    address,
                    main_write,
                    self.reactor,
                    username=server.username,
                    password=server.password,
                    families=self.config.families,
                )
                self._on_main_socket.append(allocation)
                try:
                    await allocation.allocate()
                except BaseException:
                    self._on_main_socket.remove(allocation)
                    raise
                return allocation

            async def remembered() -> Any:
                allocation = await attempt()
                self._origin[id(allocation)] = server
                return allocation

            return defer.ensureDeferred(remembered())

        servers = list(config.servers)
        if first is not None and first in servers:
            at = servers.index(first)
            servers = servers[at:] + servers[:at]
        elif udp_blocked:
            # UDP got no STUN answer: a UDP relay would only cost its timeout.
            servers.sort(key=lambda server: server.transport == "udp")
        try:
            allocation = await allocate_first(
                servers, reactor=self.reactor, timeout=config.timeout, open_one=open_one
            )
        except Exception as e:
            _log.info("no relayed candidate: {err}", err=e)
            return None
        allocated = allocation.allocated
        if self._closed:
            allocation.close()
            return None
        if allocated is None or allocated.mapped is None:
            _log.info("TURN allocation without addresses; no relayed candidate")
            allocation.close()
            return None
        for refusal in allocated.refused:
            _log.info("TURN server {s}: {refusal}", s=allocated.server, refusal=refusal)
        return allocation

    def add(self, via: int, allocation: Any,
            deliver: Callable[[bytes, tuple[str, int], int], None],
            on_lost: Callable[[int, Any], None] | None = None,
            relayed: tuple[str, int] | None = None) -> None:  # fmt: skip
        """Keep ``allocation`` as relay ``via``, standing for its relayed address
        ``relayed`` (by default the first: ``allocation.allocated.relayed``); add each
        relayed address of a dual allocation as a via of its own. What arrives through
        the allocation from a peer goes to ``deliver`` with the via of the peer's family;
        ``on_lost(via, error)`` once, with the via added first, if the server loses the
        allocation (its :meth:`siblings` are lost with it)."""
        if relayed is None:
            relayed = allocation.allocated.relayed
        first = not self._vias_of(allocation)
        self._by_via[via] = allocation
        self._relayed[via] = Address(relayed[0], relayed[1])
        if not first:
            return
        allocation.on_data(lambda data, peer: self._deliver(allocation, deliver, data, peer))
        self._watch_one(allocation)
        if on_lost is not None:

            def lost(error: Any) -> None:
                if self._by_via.get(via) is allocation and not self._closed:
                    on_lost(via, error)

            allocation.on_lost(lost)

    def _vias_of(self, allocation: Any) -> list[int]:
        """The vias that stand for ``allocation``'s relayed addresses."""
        return [v for v, a in self._by_via.items() if a is allocation]

    def _deliver(
        self,
        allocation: Any,
        deliver: Callable[[bytes, tuple[str, int], int], None],
        data: bytes,
        peer: Address,
    ) -> None:
        family: AddressFamily = family_of(peer.host)
        for via in self._vias_of(allocation):
            relayed = self._relayed[via]
            if family_of(relayed.host) is family:
                deliver(data, (peer.host, peer.port), via)
                return
        self.dropped += 1

    def release(self, via: int) -> bool:
        """Forget relay ``via``, and close its allocation unless a sibling still stands
        for it (then give the server back the relayed address ``via`` stood for, as the
        allocation's ``release_family`` does); False if there is none."""
        relay = self._by_via.pop(via, None)
        if relay is None:
            return False
        relayed = self._relayed.pop(via, None)
        if self._vias_of(relay):
            if relayed is not None:
                family = family_of(relayed.host)
                relay.release_family(family).addErrback(
                    lambda f: _log.info(
                        "relay {via}: {family} relayed address kept: {err}",
                        via=via,
                        family=family.label,
                        err=f.getErrorMessage(),
                    )
                )
            return True
        self._origin.pop(id(relay), None)
        relay.close()
        return True

    def close(self) -> defer.Deferred[Any]:
        """Deallocate every relay (UDP ones through the main socket, so close it after)."""
        self._closed = True
        relays = self.allocations
        self._by_via.clear()
        self._relayed.clear()
        self._origin.clear()
        deallocating = defer.gatherResults([r.close() for r in relays], consumeErrors=True)
        self._on_main_socket.clear()
        return deallocating

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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from holepunch.ice.config import RelayConfig
from holepunch.stun.client import resolve_server
from holepunch.stun.message import Address

_log = Logger()


class Relays:
    """The TURN allocations of one agent."""

    def __init__(self, reactor: Any, config: RelayConfig) -> None:
        self.reactor = reactor
        self.config = config
        self._by_via: dict[int, Any] = {}
        self._origin: dict[int, Any] = {}
        """The configured server each allocation came from, by ``id(allocation)``."""
        self._on_main_socket: list[Any] = []
        self._watching = False
        self._closed = False

    @property
    def allocations(self) -> list[Any]:
        """The allocations behind our relayed candidates."""
        return list(self._by_via.values())

    def __contains__(self, via: object) -> bool:
        return via in self._by_via

    def demultiplex(self, data: bytes, source: tuple[str, int]) -> bool:
        """A datagram on the main socket: True when it was a UDP TURN server's."""
        return any(a.datagram_received(data, Address(*source)) for a in self._on_main_socket)

    def send(self, via: int, data: bytes, destination: tuple[str, int]) -> bool:
        """Send ``data`` to ``destination`` through relay ``via``; False if no such relay."""
        relay = self._by_via.get(via)
        if relay is None:
            return False
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
        peer address, say) while the relay lives on."""
        if via is None:
            relays = list(self._by_via.items())
        else:
            relays = [(via, self._by_via[via])] if via in self._by_via else []
        for number, relay in relays:
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
        for relay in self._by_via.values():
            self._watch_one(relay)

    def _watch_one(self, relay: Any) -> None:
        interval = self.config.liveness_interval
        relay.watch(interval if self._watching and interval > 0 else None)

    def lost(self, via: int) -> Any | None:
        """Relay ``via`` was lost: forget it; returns the configured server it came
        from (to allocate on it again first), or None."""
        relay = self._by_via.pop(via, None)
        if relay is None:
            return None
        if relay in self._on_main_socket:
            self._on_main_socket.remove(relay)
        return self._origin.pop(id(relay), None)

    def bind_channel(self, via: int, peer: tuple[str, int]) -> None:
        """A channel to ``peer`` on relay ``via`` (ChannelData once bound)."""
        relay = self._by_via.get(via)
        if relay is not None:
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
                        server, reactor=self.reactor, timeout=config.timeout
                    )
                address = await resolve_server(self.reactor, server.host, server.port)
                allocation = TurnAllocation(
                    address,
                    main_write,
                    self.reactor,
                    username=server.username,
                    password=server.password,
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
        return allocation

    def add(self, via: int, allocation: Any,
            deliver: Callable[[bytes, tuple[str, int], int], None],
            on_lost: Callable[[int, Any], None] | None = None) -> None:  # fmt: skip
        """Keep ``allocation`` as relay ``via``; what arrives through it goes to
        ``deliver``; ``on_lost(via, error)`` once if the server loses it."""
        self._by_via[via] = allocation
        allocation.on_data(lambda data, peer: deliver(data, (peer.host, peer.port), via))
        self._watch_one(allocation)
        if on_lost is not None:

            def lost(error: Any) -> None:
                if self._by_via.get(via) is allocation and not self._closed:
                    on_lost(via, error)

            allocation.on_lost(lost)

    def release(self, via: int) -> bool:
        """Close relay ``via``; False if there is none."""
        relay = self._by_via.pop(via, None)
        if relay is None:
            return False
        self._origin.pop(id(relay), None)
        relay.close()
        return True

    def close(self) -> defer.Deferred[Any]:
        """Deallocate every relay (UDP ones through the main socket, so close it after)."""
        self._closed = True
        relays = list(self._by_via.values())
        self._by_via.clear()
        self._origin.clear()
        deallocating = defer.gatherResults([r.close() for r in relays], consumeErrors=True)
        self._on_main_socket.clear()
        return deallocating

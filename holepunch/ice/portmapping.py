# -*- test-case-name: tests.unit.test_ice_core,tests.lab.test_natlab_hardnat -*-
"""The router port mapping of an :class:`IceAgent <holepunch.ice.agent.IceAgent>`.

When the core asks (:class:`PortMappingWanted <holepunch.ice.events.PortMappingWanted>`),
:class:`AgentPortMapping` asks the default gateway for a mapping of the agent's UDP port
with :class:`holepunch.nat.portmap.PortMapper` (PCP, then NAT-PMP, then UPnP IGD, all
within ``port_mapping_timeout``), renews it at half-life while the agent lives, and
deletes it when the agent closes. It asks only for a socket the gateway can reach: the
host's address toward the gateway must be one of the agent's host addresses. Failure is
normal (most routers answer none of the three): it is logged, never raised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from holepunch.ice.config import GatheringConfig
from holepunch.nat.portmap import PortMapper, PortMapping, Renewal, default_gateway
from holepunch.routes import source_address_toward

_log = Logger()

Done = Callable[[PortMapping | None], None]


class AgentPortMapping:
    """One agent's mapping on its router."""

    def __init__(
        self,
        reactor: Any,
        config: GatheringConfig,
        mapper_factory: Callable[..., PortMapper] = PortMapper,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.mapper_factory = mapper_factory
        self.mapper: PortMapper | None = None
        self.mapping: PortMapping | None = None
        self._renewal: Renewal | None = None
        self._pending: defer.Deferred[PortMapping] | None = None
        self._closed = False

    def start(self, port: int, hosts: Sequence[str], done: Done) -> None:
        """Ask for a mapping of UDP ``port``; ``done`` gets it, or None (always called once)."""
        gateway = default_gateway()
        if gateway is None:
            _log.debug("no port mapping: no default gateway")
            done(None)
            return
        try:
            local = source_address_toward(gateway)
        except OSError as e:
            _log.debug("no port mapping: {err}", err=e)
            done(None)
            return
        if local not in hosts:
            _log.debug(
                "no port mapping: {local} (toward {gw}) is not ours", local=local, gw=gateway
            )
            done(None)
            return
        self.mapper = self.mapper_factory(self.reactor, gateway, local_address=local)
        self._pending = self.mapper.map_udp(
            port,
            lifetime=self.config.port_mapping_lifetime,
            timeout=self.config.port_mapping_timeout,
        )

        def mapped(mapping: PortMapping) -> None:
            self._pending = None
            if self._closed:
                done(None)
                return
            self.mapping = mapping
            _log.info(
                "router mapped {ext} to our port {port} by {method}",
                ext=f"{mapping.external_address}:{mapping.external_port}",
                port=port,
                method=mapping.method.value,
            )
            assert self.mapper is not None
            self._renewal = self.mapper.auto_renew(
                mapping, on_renewed=self._renewed, on_lost=self._lost
            )
            done(mapping)

        def failed(failure: Any) -> None:
            self._pending = None
            if not failure.check(defer.CancelledError):
                _log.info("no port mapping: {err}", err=failure.getErrorMessage())
            done(None)

        self._pending.addCallbacks(mapped, failed)

    def _renewed(self, mapping: PortMapping) -> None:
        if self.mapping is not None and mapping.external != self.mapping.external:
            _log.info("the router moved our mapping to {ext}", ext=mapping.external)
        self.mapping = mapping

    def _lost(self, error: Exception) -> None:
        _log.info("port mapping lost: {err}", err=error)
        self.mapping = None

    def close(self) -> defer.Deferred[None]:
        """Stop renewing and delete the mapping (best effort, bounded in time)."""
        self._closed = True
        if self._pending is not None:
            self._pending.cancel()
        if self._renewal is not None:
            self._renewal.stop()
        if self.mapper is None:
            return defer.succeed(None)
        return self.mapper.close(timeout=self.config.port_mapping_timeout)

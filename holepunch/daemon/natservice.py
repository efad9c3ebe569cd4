# -*- test-case-name: tests.unit.test_web -*-
"""``--discover-nat``: the daemon finds out, once at start-up, what NAT it is behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from holepunch.nat.model import NatInfo

_log = Logger()


class NatDiscoveryService(Service):
    """Finds out, once at start-up, what NAT the daemon is behind (``--discover-nat``).

    ``state`` is ``pending``, ``done`` or ``failed`` (``error`` says why); ``info`` the
    result. Stopping the service cancels a discovery still running.
    """

    name = "nat-discovery"

    def __init__(
        self,
        reactor: Any,
        servers: list[tuple[str, int]],
        discover: Callable[[Any, list[tuple[str, int]]], defer.Deferred[NatInfo]] | None = None,
    ) -> None:
        self.reactor = reactor
        self.servers = servers
        self._discover = discover
        self.state = "pending"
        self.error: str | None = None
        self.info: NatInfo | None = None
        self._running: defer.Deferred[NatInfo] | None = None

    def startService(self) -> None:
        super().startService()
        discover = self._discover
        if discover is None:
            from holepunch.nat.discovery import discover_nat_deferred

            def discover(reactor: Any, servers: list[tuple[str, int]]) -> defer.Deferred[NatInfo]:
                return discover_nat_deferred(reactor, servers, port_mapping=True)
        self.state, self.error = "pending", None
        d = self._running = discover(self.reactor, list(self.servers))
        d.addCallbacks(self._found, self._failed)

    def _found(self, info: NatInfo) -> None:
        self._running = None
        self.state, self.info = "done", info
        _log.info(
            "NAT discovery: {type}, public address {address}:{port}",
            type=info.type.value,
            address=info.public_address,
            port=info.public_port,
        )

    def _failed(self, reason: Failure) -> None:
        self._running = None
        if reason.check(defer.CancelledError):
            self.state, self.error = "failed", "cancelled"
            return
        self.state, self.error = "failed", reason.getErrorMessage()
        _log.warn("NAT discovery failed: {error}", error=self.error)

    def stopService(self) -> None:
        super().stopService()
        if self._running is not None:
            self._running.cancel()


__all__ = ["NatDiscoveryService"]

# -*- test-case-name: tests.unit.test_web -*-
"""``--discover-nat``: the daemon finds out, once at start-up, what NAT it is behind, over
IPv4 and IPv6 as ``holepunch nat-check`` does
(:func:`holepunch.nat.discovery.discover_families`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from holepunch.nat.model import FamilyResult, NatInfo, main_report, no_report_reasons

_log = Logger()

Discover = Callable[[Any, list[tuple[str, int]]], defer.Deferred[dict[int, FamilyResult]]]
"""Runs the discovery: ``(reactor, servers)`` to each family's report or why it has none."""


def discover_both_families(
    reactor: Any, servers: list[tuple[str, int]]
) -> defer.Deferred[dict[int, FamilyResult]]:
    """The daemon's discovery: both families, each against the servers of its family,
    and which port-mapping protocols the IPv4 gateway speaks."""
    from holepunch.nat.discovery import discover_families

    return defer.ensureDeferred(discover_families(reactor, servers, port_mapping=True))


class NatDiscoveryService(Service):
    """Finds out, once at start-up, what NAT the daemon is behind (``--discover-nat``).

    ``state`` is ``pending``, ``done`` (a family answered) or ``failed`` (``error`` says
    why); ``results`` each family's report or why it has none; ``info`` the main family's
    report (IPv4 when it answered, else IPv6). Stopping the service cancels a discovery
    still running.
    """

    name = "nat-discovery"

    def __init__(
        self,
        reactor: Any,
        servers: list[tuple[str, int]],
        discover: Discover = discover_both_families,
    ) -> None:
        self.reactor = reactor
        self.servers = servers
        self._discover = discover
        self.state = "pending"
        self.error: str | None = None
        self.results: dict[int, FamilyResult] = {}
        self.info: NatInfo | None = None
        self._running: defer.Deferred[dict[int, FamilyResult]] | None = None
        self._waiting: list[defer.Deferred[None]] = []

    def startService(self) -> None:
        super().startService()
        self.state, self.error = "pending", None
        d = self._running = self._discover(self.reactor, list(self.servers))
        d.addCallbacks(self._found, self._failed)
        d.addBoth(lambda _: self._finished())

    def when_finished(self) -> defer.Deferred[None]:
        """Fires once the discovery is over (``state`` is ``done`` or ``failed``)."""
        if self.state != "pending":
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(waiter)
        return waiter

    def _finished(self) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    def _found(self, results: dict[int, FamilyResult]) -> None:
        self._running = None
        self.results = results
        main = main_report(results)
        if main is None:
            self.state, self.error = "failed", no_report_reasons(results)
            _log.warn("NAT discovery failed: {error}", error=self.error)
            return
        self.state, self.info = "done", main[1]
        for family, result in sorted(results.items()):
            if isinstance(result, NatInfo):
                _log.info(
                    "NAT discovery, IPv{family}: {type}, public address {address} port {port}",
                    family=family,
                    type=result.type.value,
                    address=result.public_address,
                    port=result.public_port,
                )
            else:
                _log.info("NAT discovery, IPv{family}: {reason}", family=family, reason=result)

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


__all__ = ["Discover", "NatDiscoveryService", "discover_both_families"]

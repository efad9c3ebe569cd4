# -*- test-case-name: tests.unit.test_web -*-
"""The daemon's :class:`holepunch.interfaces.IStatusProvider`: what its HTTP pages and
``/metrics`` show of its signaling and STUN servers and its NAT discovery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from holepunch.daemon.metrics import Metrics
from holepunch.daemon.natservice import NatDiscoveryService
from holepunch.interfaces import IStatusProvider, JSONDict
from holepunch.nat.model import families_json, recommended_strategy

if TYPE_CHECKING:
    from holepunch.daemon.workers import WorkerStats
    from holepunch.signaling.server import SignalingService
    from holepunch.stun.server import StunServerService


@implementer(IStatusProvider)
class DaemonStatus:
    """The daemon's :class:`IStatusProvider`: its signaling and STUN servers.

    Each part is optional (``--no-signaling``, ``--no-stun``); ``clock`` gives the
    timestamps (``reactor`` in the daemon, a ``task.Clock`` in tests).
    """

    def __init__(
        self,
        clock: IReactorTime,
        signaling: SignalingService | None = None,
        stun: StunServerService | None = None,
        nat: NatDiscoveryService | None = None,
    ) -> None:
        self.clock = clock
        self.signaling = signaling
        self.stun = stun
        self.nat = nat
        self.workers: WorkerStats | None = None
        """With ``--workers``: the other workers' counters, added to this one's."""
        self.started_at = clock.seconds()

    def signaling_stats(self) -> JSONDict | None:
        """The signaling server's counters (of every worker, with ``--workers``)."""
        if self.signaling is None:
            return None
        if self.workers is not None:
            return self.workers.total("signaling")
        return self.signaling.stats()

    def own_stun_stats(self) -> JSONDict:
        """This process's STUN counters."""
        assert self.stun is not None
        return self.stun.responder.stats.as_dict()

    def stun_stats(self) -> JSONDict | None:
        """The STUN server's counters (of every worker, with ``--workers``)."""
        if self.stun is None:
            return None
        if self.workers is not None and "stun" in self.workers.sources:
            return self.workers.total("stun")
        return self.own_stun_stats()

    def _services(self) -> dict[str, str]:
        services: dict[str, str] = {}
        if self.signaling is not None:
            up = bool(self.signaling.running) and self.signaling.port is not None
            services["signaling"] = "up" if up else "down"
            shared = self.signaling.registry.stats().get("redis")
            if shared is not None:  # --redis: a node cut off from Redis is not healthy
                services["redis"] = "up" if shared.get("connected") else "down"
        if self.stun is not None:
            bound = all(a.port for a in self.stun.addresses())
            services["stun"] = "up" if self.stun.running and bound else "down"
        return services

    @property
    def initialized(self) -> bool:
        """Whether every enabled part has started."""
        parts: list[Any] = [p for p in (self.signaling, self.stun) if p is not None]
        return all(p.running for p in parts)

    def health_check(self) -> defer.Deferred[JSONDict]:
        services: dict[str, str] = self._services()
        healthy = self.initialized and all(state == "up" for state in services.values())
        if self.nat is not None:
            # Informative only: a daemon that cannot see the internet still serves peers.
            services["natDiscovery"] = self.nat.state
        return defer.succeed(
            {
                "status": "healthy" if healthy else "unhealthy",
                "initialized": self.initialized,
                "timestamp": int(self.clock.seconds() * 1000),
                "services": services,
            }
        )

    def get_stats(self) -> JSONDict:
        signaling = self.signaling_stats()
        stun: JSONDict | None = None
        if self.stun is not None:
            responder = self.stun.responder
            stun = {
                **(self.stun_stats() or {}),
                "addresses": [f"{a.host or '*'}:{a.port}" for a in responder.local_addresses()],
                "rfc5780": responder.rfc5780,
            }
        workers: JSONDict = {"count": 1, "reporting": 1}
        if self.workers is not None:
            workers = {
                "count": self.workers.count,
                "reporting": self.workers.reporting,
                "members": self.workers.members(),
            }
        return {
            "initialized": self.initialized,
            "natInfo": self.get_nat_info(),
            "activeConnections": signaling["connections"] if signaling is not None else 0,
            "signaling": signaling,
            "holePunching": {"enabled": False},
            "stun": stun,
            "uptime": round(self.clock.seconds() - self.started_at, 3),
            "workers": workers,
        }

    def get_nat_info(self) -> JSONDict | None:
        info = self.nat.info if self.nat is not None else None
        return info.to_json() if info is not None else None

    def get_recommended_strategy(self) -> JSONDict | None:
        info = self.nat.info if self.nat is not None else None
        return recommended_strategy(info) if info is not None else None

    def get_nat_families(self) -> JSONDict | None:
        results = self.nat.results if self.nat is not None else None
        return families_json(results) if results else None


def daemon_metrics(status: DaemonStatus, registry: CollectorRegistry | None = None) -> Metrics:
    """:class:`Metrics` reading the daemon's servers through ``status``."""
    metrics = Metrics(registry)
    if status.signaling is not None:
        metrics.watch_signaling(lambda: status.signaling_stats() or {})
    if status.stun is not None:
        metrics.watch_stun(lambda: status.stun_stats() or {})
    metrics.watch_provider(status)
    return metrics


__all__ = ["DaemonStatus", "daemon_metrics"]

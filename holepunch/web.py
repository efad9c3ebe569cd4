# -*- test-case-name: tests.test_web -*-
"""HTTP endpoints of the daemon and the coordinator: health, stats, NAT, Prometheus.

The seed's example 3 as twisted.web resources, plus ``/metrics``:

``GET /p2p/health``
    :meth:`IStatusProvider.health_check` as JSON: ``{status, initialized, timestamp,
    services}``. HTTP 200 when ``status`` is ``healthy``, 503 otherwise, so a load
    balancer or an orchestrator can probe it as it is.
``GET /p2p/stats``
    :meth:`IStatusProvider.get_stats` as JSON: ``{initialized, natInfo,
    activeConnections, signaling, holePunching}`` (the daemon adds ``stun``).
``GET /p2p/nat``
    ``{natInfo, strategy}``: :meth:`IStatusProvider.get_nat_info` and
    :meth:`IStatusProvider.get_recommended_strategy` (both null until the NAT is known).
``GET /metrics``
    The Prometheus text format (OpenMetrics when the scraper asks for it) of a
    :class:`Metrics`, which has its own ``CollectorRegistry``: counters kept by the
    signaling and STUN servers are read when scraped, not copied.

:func:`install_http` puts these pages under a twisted.web root, normally the signaling
server's (one port for WebSocket and HTTP); :func:`make_http_service` serves them on a
port of their own (``twistd holepunch --http tcp:9090``). :class:`DaemonStatus` is the
daemon's :class:`IStatusProvider`; ``P2PCoordinator`` is the library's. The metric names
and the JSON fields are listed in ``docs/operations.md``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.application import strports
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import Interface, implementer

from holepunch import __version__
from holepunch.nat.model import NatInfo, recommended_strategy

if TYPE_CHECKING:
    from holepunch.signaling.server import SignalingService
    from holepunch.stun.server import StunServerService

_log = Logger()

JSONDict = dict[str, Any]

CONNECT_TIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0)
"""Buckets (seconds) of ``holepunch_connect_time_seconds``: a LAN punch to a slow relay."""


class IStatusProvider(Interface):
    """What the HTTP endpoints show: implemented by ``P2PCoordinator`` and
    :class:`DaemonStatus`."""

    def health_check() -> defer.Deferred[JSONDict]:
        """Fires with ``{status, initialized, timestamp, services}``.

        ``status`` is ``healthy`` when everything enabled works (``/p2p/health`` answers
        200), anything else (``unhealthy``) otherwise (503); ``timestamp`` is in
        milliseconds since the epoch; ``services`` maps each part to its state.
        """

    def get_stats() -> JSONDict:
        """``{initialized, natInfo, activeConnections, signaling, holePunching}``."""

    def get_nat_info() -> JSONDict | None:
        """The NAT this side is behind (``NatInfo.to_json()``), or None when unknown."""

    def get_recommended_strategy() -> JSONDict | None:
        """``{strategy, recommendation, methods, difficulty, natType, ...}``, or None."""


# -- JSON pages -------------------------------------------------------------------------


def _json_default(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def encode_json(value: object) -> bytes:
    """The JSON body of a page: UTF-8, one trailing newline; unknown objects as strings."""
    return (json.dumps(value, default=_json_default) + "\n").encode("utf-8")


class JSONPage(Resource):
    """A GET (and HEAD) page whose body is what ``produce`` returns or fires with.

    ``produce`` returns ``(http_status, value)`` or a Deferred of it. If it raises or
    fails, the page answers ``failure_status`` with ``{"error": ...}`` (``/p2p/health``
    uses 503 and adds ``"status": "unhealthy"``).
    """

    isLeaf = True

    def __init__(
        self,
        produce: Callable[[], Any],
        failure_status: int = 500,
        failure_body: JSONDict | None = None,
    ) -> None:
        super().__init__()
        self._produce = produce
        self._failure_status = failure_status
        self._failure_body = dict(failure_body or {})

    def render_GET(self, request: Request) -> int:
        finished = [False]

        def gone(_: object) -> None:
            finished[0] = True
            if not d.called:
                d.cancel()

        def respond(result: tuple[int, object]) -> None:
            status, value = result
            self._write(request, finished, status, value)

        def failed(reason: Failure) -> None:
            if finished[0]:
                return
            _log.failure("{uri} failed", reason, uri=request.uri.decode("ascii", "replace"))
            body = {**self._failure_body, "error": reason.getErrorMessage()}
            self._write(request, finished, self._failure_status, body)

        d: defer.Deferred[Any] = defer.maybeDeferred(self._produce)
        request.notifyFinish().addBoth(gone)
        d.addCallback(respond).addErrback(failed)
        return NOT_DONE_YET

    @staticmethod
    def _write(request: Request, finished: list[bool], status: int, value: object) -> None:
        if finished[0]:
            return
        body = encode_json(value)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


def _health(provider: IStatusProvider) -> defer.Deferred[tuple[int, object]]:
    def status(health: JSONDict) -> tuple[int, object]:
        return (200 if health.get("status") == "healthy" else 503), health

    d: defer.Deferred[JSONDict] = defer.maybeDeferred(provider.health_check)
    return d.addCallback(status)


class StatusResource(Resource):
    """``/p2p``: the ``health``, ``stats`` and ``nat`` pages of one provider."""

    def __init__(self, provider: IStatusProvider) -> None:
        super().__init__()
        self.provider = provider
        self.putChild(
            b"health",
            JSONPage(
                lambda: _health(provider), failure_status=503, failure_body={"status": "unhealthy"}
            ),
        )
        self.putChild(b"stats", JSONPage(lambda: (200, provider.get_stats())))
        self.putChild(
            b"nat",
            JSONPage(
                lambda: (
                    200,
                    {
                        "natInfo": provider.get_nat_info(),
                        "strategy": provider.get_recommended_strategy(),
                    },
                )
            ),
        )


# -- Prometheus -------------------------------------------------------------------------

StatsSource = Callable[[], Mapping[str, Any]]


class Metrics:
    """The Prometheus metrics of one daemon or coordinator, in their own registry.

    The connection counters are kept here (:meth:`observe_connection`); everything else
    is read from the sources given to :meth:`watch_signaling`, :meth:`watch_stun` and
    :meth:`watch_provider` each time ``/metrics`` is scraped.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.connections = Counter(
            "holepunch_connections",
            "Peer connections established, by method.",
            ["method"],
            registry=self.registry,
        )
        self.connect_time = Histogram(
            "holepunch_connect_time_seconds",
            "Time to a working peer connection, by method.",
            ["method"],
            buckets=CONNECT_TIME_BUCKETS,
            registry=self.registry,
        )
        self.signaling: StatsSource | None = None
        self.stun: StatsSource | None = None
        self.provider: IStatusProvider | None = None
        self.registry.register(_StatsCollector(self))

    def observe_connection(self, method: str, seconds: float) -> None:
        """Count one connection made by ``method`` in ``seconds``."""
        self.connections.labels(method=method).inc()
        self.connect_time.labels(method=method).observe(seconds)

    def watch_signaling(self, stats: StatsSource) -> None:
        """Read signaling counters from ``stats()`` (``SignalingService.stats``)."""
        self.signaling = stats

    def watch_stun(self, stats: StatsSource) -> None:
        """Read STUN counters from ``stats()`` (``StunServerStats.as_dict``)."""
        self.stun = stats

    def watch_provider(self, provider: IStatusProvider) -> None:
        """Read active connections and the NAT type from ``provider``."""
        self.provider = provider

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header: body and content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _labelled(
    family: CounterMetricFamily | GaugeMetricFamily, values: object
) -> CounterMetricFamily | GaugeMetricFamily:
    if isinstance(values, Mapping):
        for label, value in sorted(values.items()):
            if isinstance(value, int | float) and not isinstance(value, bool):
                family.add_metric([str(label)], value)
    return family


def _number(stats: Mapping[str, Any], key: str) -> float | None:
    value = stats.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class _StatsCollector(Collector):
    """Reads the sources of a :class:`Metrics` at scrape time; never raises."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "holepunch_build_info", "The holepunch version running.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        for name, part in (
            ("signaling", self._signaling),
            ("stun", self._stun),
            ("provider", self._provider),
        ):
            try:
                yield from list(part())
            except Exception:
                _log.failure("reading {name} statistics for /metrics", name=name)

    def _signaling(self) -> Iterator[Metric]:
        if self.metrics.signaling is None:
            return
        stats = self.metrics.signaling()
        for key, name, text in (
            ("peers", "holepunch_signaling_peers", "Registered signaling peers."),
            ("rooms", "holepunch_signaling_rooms", "Rooms with at least one peer."),
            ("connections", "holepunch_signaling_open_connections", "Open WebSocket connections."),
        ):
            value = _number(stats, key)
            if value is not None:
                yield GaugeMetricFamily(name, text, value=value)
        for key, name, text in (
            (
                "connections_total",
                "holepunch_signaling_connections_accepted",
                "WebSocket connections accepted.",
            ),
            ("evicted", "holepunch_signaling_evicted", "Peers evicted for being idle."),
        ):
            value = _number(stats, key)
            if value is not None:
                yield CounterMetricFamily(name, text, value=value)
        for key, name, label, text in (
            (
                "messages",
                "holepunch_signaling_messages",
                "type",
                "Signaling requests received, by type.",
            ),
            (
                "relayed",
                "holepunch_signaling_relayed",
                "type",
                "Messages relayed between peers, by type.",
            ),
            ("errors", "holepunch_signaling_errors", "code", "Error messages sent, by code."),
            (
                "denied",
                "holepunch_signaling_connections_denied",
                "code",
                "WebSocket handshakes refused, by HTTP status.",
            ),
        ):
            yield _labelled(CounterMetricFamily(name, text, labels=[label]), stats.get(key))

    def _stun(self) -> Iterator[Metric]:
        if self.metrics.stun is None:
            return
        stats = self.metrics.stun()
        yield _labelled(
            CounterMetricFamily(
                "holepunch_stun_requests",
                "STUN requests answered or refused, by transport.",
                labels=["transport"],
            ),
            stats.get("byTransport"),
        )
        for key, name, text in (
            ("responses", "holepunch_stun_responses", "STUN responses sent."),
            ("malformed", "holepunch_stun_malformed", "Datagrams that were not valid STUN."),
            ("ignored", "holepunch_stun_ignored", "STUN indications and responses ignored."),
            (
                "rateLimited",
                "holepunch_stun_rate_limited",
                "STUN requests dropped by the per-address rate limit.",
            ),
        ):
            value = _number(stats, key)
            if value is not None:
                yield CounterMetricFamily(name, text, value=value)
        yield _labelled(
            CounterMetricFamily(
                "holepunch_stun_error_responses",
                "STUN error responses sent, by error code.",
                labels=["code"],
            ),
            stats.get("errors"),
        )

    def _provider(self) -> Iterator[Metric]:
        provider = self.metrics.provider
        if provider is None:
            return
        active = _number(provider.get_stats(), "activeConnections")
        if active is not None:
            yield GaugeMetricFamily(
                "holepunch_active_connections", "Open peer connections.", value=active
            )
        nat = provider.get_nat_info()
        if nat:
            family = GaugeMetricFamily(
                "holepunch_nat_info",
                "The NAT this side is behind (value 1).",
                labels=["type", "mapping", "filtering"],
            )
            family.add_metric(
                [str(nat.get("type")), str(nat.get("mapping")), str(nat.get("filtering"))], 1
            )
            yield family


class MetricsPage(Resource):
    """``/metrics``: the exposition of a :class:`Metrics`."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        body, content_type = self.metrics.render(accept)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body


# -- wiring -----------------------------------------------------------------------------


def install_http(root: Resource, provider: IStatusProvider, metrics: Metrics | None) -> None:
    """Serve ``/p2p/health``, ``/p2p/stats``, ``/p2p/nat`` and ``/metrics`` under ``root``.

    ``root`` is normally ``SignalingService.root``, so they share the signaling port;
    without ``metrics`` there is no ``/metrics``.
    """
    root.putChild(b"p2p", StatusResource(provider))
    if metrics is not None:
        root.putChild(b"metrics", MetricsPage(metrics))


_HTTP_INDEX = (
    "holepunch {version}\n\n"
    "/p2p/health   health as JSON (200 healthy, 503 otherwise)\n"
    "/p2p/stats    statistics as JSON\n"
    "/p2p/nat      the NAT and the recommended strategy as JSON\n"
    "/metrics      Prometheus metrics\n"
)


class _IndexPage(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return _HTTP_INDEX.format(version=__version__).encode("utf-8")


def make_http_service(
    endpoint: str, provider: IStatusProvider, metrics: Metrics | None, reactor: Any = None
) -> Service:
    """A service serving the same pages on an endpoint of their own (strports)."""
    root = Resource()
    root.putChild(b"", _IndexPage())
    install_http(root, provider, metrics)
    site = Site(root, reactor=reactor)
    site.noisy = False
    service = strports.service(endpoint, site, reactor=reactor)
    service.setName("http")
    return service


# -- the daemon's provider --------------------------------------------------------------


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

            discover = discover_nat_deferred
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
        self.started_at = clock.seconds()

    def _services(self) -> dict[str, str]:
        services: dict[str, str] = {}
        if self.signaling is not None:
            up = bool(self.signaling.running) and self.signaling.port is not None
            services["signaling"] = "up" if up else "down"
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
        signaling = self.signaling.stats() if self.signaling is not None else None
        stun: JSONDict | None = None
        if self.stun is not None:
            responder = self.stun.responder
            stun = {
                **responder.stats.as_dict(),
                "addresses": [f"{a.host or '*'}:{a.port}" for a in responder.local_addresses()],
                "rfc5780": responder.rfc5780,
            }
        return {
            "initialized": self.initialized,
            "natInfo": self.get_nat_info(),
            "activeConnections": signaling["connections"] if signaling is not None else 0,
            "signaling": signaling,
            "holePunching": {"enabled": False},
            "stun": stun,
            "uptime": round(self.clock.seconds() - self.started_at, 3),
        }

    def get_nat_info(self) -> JSONDict | None:
        info = self.nat.info if self.nat is not None else None
        return info.to_json() if info is not None else None

    def get_recommended_strategy(self) -> JSONDict | None:
        info = self.nat.info if self.nat is not None else None
        return recommended_strategy(info) if info is not None else None


def daemon_metrics(status: DaemonStatus, registry: CollectorRegistry | None = None) -> Metrics:
    """:class:`Metrics` reading the daemon's servers through ``status``."""
    metrics = Metrics(registry)
    signaling, stun = status.signaling, status.stun
    if signaling is not None:
        metrics.watch_signaling(signaling.stats)
    if stun is not None:
        responder = stun.responder
        metrics.watch_stun(lambda: responder.stats.as_dict())
    metrics.watch_provider(status)
    return metrics


__all__ = [
    "CONNECT_TIME_BUCKETS",
    "DaemonStatus",
    "IStatusProvider",
    "JSONPage",
    "Metrics",
    "MetricsPage",
    "NatDiscoveryService",
    "StatusResource",
    "daemon_metrics",
    "install_http",
    "make_http_service",
]

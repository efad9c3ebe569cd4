# -*- test-case-name: tests.unit.test_web -*-
"""Prometheus metrics of the daemon and the coordinator, served by ``/metrics``.

A :class:`Metrics` has its own ``CollectorRegistry``: the connection counters are kept
in it; the counters of the signaling and STUN servers are read when scraped, not copied.
The metric names are listed in ``docs/operations.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.logger import Logger

from holepunch.interfaces import IStatusProvider
from holepunch.version import __version__

_log = Logger()

CONNECT_TIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0)
"""Buckets (seconds) of ``holepunch_connect_time_seconds``: a LAN punch to a slow relay."""

RECONNECT_TIME_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
"""Buckets (seconds) of ``holepunch_signaling_downtime_seconds``: a blip to a long outage."""

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
        self.signaling_disconnects = Counter(
            "holepunch_signaling_disconnects",
            "Registrations on the signaling server lost (this side, as a client).",
            registry=self.registry,
        )
        self.signaling_reconnects = Counter(
            "holepunch_signaling_reconnects",
            "Registrations on the signaling server regained, rooms rejoined, by how: "
            "resumed (the reconnect token) or fresh (the server had restarted).",
            ["registration"],
            registry=self.registry,
        )
        self.signaling_downtime = Histogram(
            "holepunch_signaling_downtime_seconds",
            "Time from losing the signaling registration to having it and the rooms back.",
            buckets=RECONNECT_TIME_BUCKETS,
            registry=self.registry,
        )
        self.path_changes = Counter(
            "holepunch_path_changes",
            "Peer connections moved to another path, by reason: upgrade (off a relay), "
            "restart (an ICE restart's new pair), better-path, recovery (a lost relay).",
            ["reason"],
            registry=self.registry,
        )
        self.ice_restarts = Counter(
            "holepunch_ice_restarts",
            "ICE restarts begun, by reason: consent, address-change, peer, application.",
            ["reason"],
            registry=self.registry,
        )
        self.relay_events = Counter(
            "holepunch_relay_events",
            "TURN relays under connections: relay-lost, relay-reallocated, relay-unavailable.",
            ["event"],
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

    def observe_signaling_disconnect(self) -> None:
        """Count one loss of the registration on the signaling server."""
        self.signaling_disconnects.inc()

    def observe_signaling_reconnect(self, seconds: float, resumed: bool) -> None:
        """Count one reconnection to the signaling server after ``seconds`` offline,
        ``resumed`` with the reconnect token or registered afresh."""
        self.signaling_reconnects.labels(registration="resumed" if resumed else "fresh").inc()
        self.signaling_downtime.observe(seconds)

    def observe_path_change(self, reason: str) -> None:
        """Count one move of a connection to another path."""
        self.path_changes.labels(reason=reason).inc()

    def observe_ice_restart(self, reason: str) -> None:
        """Count one ICE restart begun."""
        self.ice_restarts.labels(reason=reason).inc()

    def observe_relay_event(self, kind: str) -> None:
        """Count one lost, replaced or unavailable TURN relay."""
        self.relay_events.labels(event=kind).inc()

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
            (
                "slow_readers_dropped",
                "holepunch_signaling_slow_readers_dropped",
                "Connections dropped for leaving too much unread (close 1013).",
            ),
            (
                "tokens_expired",
                "holepunch_signaling_tokens_expired",
                "Connections closed at their auth token's expiry (4002).",
            ),
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
            (
                "tooManyAttributes",
                "holepunch_stun_too_many_attributes",
                "STUN messages dropped for carrying more attributes than the cap.",
            ),
            (
                "tcpSlowReaders",
                "holepunch_stun_tcp_slow_readers",
                "STUN/TCP connections dropped for not reading their answers.",
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


__all__ = ["CONNECT_TIME_BUCKETS", "RECONNECT_TIME_BUCKETS", "Metrics", "StatsSource"]

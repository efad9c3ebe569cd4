# -*- test-case-name: tests.unit.test_web -*-
"""HTTP endpoints of the daemon and the coordinator: health, stats, NAT, Prometheus.

The seed's example 3 as twisted.web resources, plus ``/metrics``
(:mod:`holepunch.daemon.metrics`); ``provider`` below is an
:class:`holepunch.interfaces.IStatusProvider`:

``GET /p2p/health``
    ``provider.health_check()`` as JSON: ``{status, initialized, timestamp,
    services}``. HTTP 200 when ``status`` is ``healthy``, 503 otherwise, so a load
    balancer or an orchestrator can probe it as it is.
``GET /p2p/stats``
    ``provider.get_stats()`` as JSON: ``{initialized, natInfo,
    activeConnections, signaling, holePunching}`` (the daemon adds ``stun``).
``GET /p2p/nat``
    ``{natInfo, strategy, families}``: ``provider.get_nat_info()``,
    ``provider.get_recommended_strategy()`` (both null until the NAT is known) and
    ``provider.get_nat_families()`` (each family's report, null unless both were checked).
``GET /metrics``
    The Prometheus text format (OpenMetrics when the scraper asks for it) of a
    :class:`holepunch.daemon.metrics.Metrics`, which has its own
    ``CollectorRegistry``: counters kept by the signaling and STUN servers are read
    when scraped, not copied.

:func:`install_http` puts these pages under a twisted.web root, normally the signaling
server's (one port for WebSocket and HTTP); :func:`make_http_service` serves them on a
port of their own (``twistd holepunch --http tcp:9090``).
:class:`holepunch.daemon.status.DaemonStatus` is the daemon's provider;
``P2PCoordinator`` is the library's. The metric names and the JSON fields are listed in
``docs/operations.md``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from holepunch.daemon.metrics import Metrics
from holepunch.httpguard import DEFAULT_HEAD_TIMEOUT, GuardedSite
from holepunch.interfaces import IStatusProvider, JSONDict
from holepunch.reuseport import server_endpoint
from holepunch.signaling import auth
from holepunch.textpage import TextPage, index_text

_log = Logger()

DEFAULT_HTTP_CONNECTIONS_PER_ADDRESS = 64
"""Connections one address may hold open to ``--http`` (more are closed at once)."""


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
                        "families": provider.get_nat_families(),
                    },
                )
            ),
        )


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


class Unauthorized(Resource):
    """401 with a ``WWW-Authenticate: Bearer`` challenge."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", b'Bearer realm="holepunch"')
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"a valid signaling token is required (Authorization: Bearer, or ?token=)\n"


def _token_of(request: Request) -> str | None:
    params = {
        key.decode("latin-1"): [v.decode("latin-1") for v in values]
        for key, values in (request.args or {}).items()
    }
    authorization = request.getHeader(b"authorization")
    headers = {"authorization": authorization.decode("latin-1")} if authorization else {}
    return auth.token_from_request(params, headers)


class TokenRequired(Resource):
    """``resource`` (and everything under it) for requests with a valid signaling token
    (any peer's), 401 for the others; the children named in ``public`` stay open."""

    def __init__(
        self,
        resource: Resource,
        secret: str,
        clock: IReactorTime,
        public: frozenset[bytes] = frozenset(),
    ) -> None:
        super().__init__()
        self.resource = resource
        self.secret = secret
        self.clock = clock
        self.public = public

    def _allowed(self, request: Request) -> bool:
        token = _token_of(request)
        if token is None:
            return False
        try:
            auth.verify_token(self.secret, token, self.clock.seconds())
        except auth.InvalidToken:
            return False
        return True

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if path in self.public or self._allowed(request):
            return self.resource.getChildWithDefault(path, request)
        return Unauthorized()

    def render(self, request: Request) -> bytes | int:
        if self._allowed(request):
            result: bytes | int = self.resource.render(request)
            return result
        return Unauthorized().render(request)


class Exposure(enum.Enum):
    """How the status pages (``/p2p/stats``, ``/p2p/nat``, ``/metrics``) are served on a
    port; ``/p2p/health`` is always public."""

    PUBLIC = "public"
    TOKEN = "token"
    """Only to requests with a valid signaling token."""
    HEALTH_ONLY = "health-only"
    """Not at all: only ``/p2p/health``."""


def install_http(
    root: Resource,
    provider: IStatusProvider,
    metrics: Metrics | None,
    exposure: Exposure = Exposure.PUBLIC,
    secret: str | None = None,
    clock: IReactorTime | None = None,
) -> None:
    """Serve ``/p2p/health``, ``/p2p/stats``, ``/p2p/nat`` and ``/metrics`` under ``root``.

    ``root`` is normally ``SignalingService.root``, so they share the signaling port;
    without ``metrics`` there is no ``/metrics``. ``exposure`` says who gets the pages
    other than ``/p2p/health``: everyone, requests with a token signed with ``secret``
    (checked at ``clock``'s time), or nobody.
    """
    status: Resource = StatusResource(provider)
    metrics_page: Resource | None = MetricsPage(metrics) if metrics is not None else None
    if exposure is Exposure.TOKEN:
        if secret is None or clock is None:
            raise ValueError("Exposure.TOKEN needs the auth secret and a clock")
        status = TokenRequired(status, secret, clock, public=frozenset({b"health"}))
        if metrics_page is not None:
            metrics_page = TokenRequired(metrics_page, secret, clock)
    elif exposure is Exposure.HEALTH_ONLY:
        health = Resource()
        health.putChild(b"health", status.getStaticEntity(b"health"))
        status, metrics_page = health, None
    root.putChild(b"p2p", status)
    if metrics_page is not None:
        root.putChild(b"metrics", metrics_page)


_HTTP_INDEX = index_text(
    "holepunch",
    "/p2p/health   health as JSON (200 healthy, 503 otherwise)\n"
    "/p2p/stats    statistics as JSON\n"
    "/p2p/nat      the NAT and the recommended strategy as JSON\n"
    "/metrics      Prometheus metrics\n",
)


def make_http_service(
    endpoint: str, provider: IStatusProvider, metrics: Metrics | None, reactor: Any = None
) -> Service:
    """A service serving the same pages on an endpoint of their own (strports; a plain
    ``tcp:PORT`` listens on IPv4 and IPv6)."""
    root = Resource()
    root.putChild(b"", TextPage(_HTTP_INDEX))
    install_http(root, provider, metrics)
    site = GuardedSite(
        root,
        head_timeout=DEFAULT_HEAD_TIMEOUT,
        max_connections_per_address=DEFAULT_HTTP_CONNECTIONS_PER_ADDRESS,
        reactor=reactor,
    )
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    # ``tcp:PORT`` on both families, like the signaling port (holepunch.reuseport).
    service = StreamServerEndpointService(server_endpoint(reactor, endpoint), site)
    service.setName("http")
    return service


__all__ = [
    "Exposure",
    "JSONPage",
    "MetricsPage",
    "StatusResource",
    "TokenRequired",
    "Unauthorized",
    "encode_json",
    "install_http",
    "make_http_service",
]

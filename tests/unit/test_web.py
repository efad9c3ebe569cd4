"""Tests for holepunch.daemon (HTTP pages, metrics, status) and its wiring in holepunch.daemon.tap: HTTP pages, metrics, the daemon.

In memory first (DummyRequest, a fake provider, task.Clock), then on 127.0.0.1: the
service tree of ``makeService``, and the real ``twistd -n holepunch`` checked with
``curl`` as an operator would, including a bad environment variable, LOG_LEVEL and a
SIGTERM with a client connected.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from typing import Any, cast

from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import Application
from twisted.internet import defer, error, protocol, reactor, task, utils
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import ILogObserver, LogLevel
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer, provider
from zope.interface.verify import verifyObject

from holepunch.daemon.http import install_http
from holepunch.daemon.metrics import Metrics
from holepunch.daemon.natservice import NatDiscoveryService
from holepunch.daemon.status import DaemonStatus
from holepunch.daemon.tap import DaemonService, Options, level_filter, makeService
from holepunch.interfaces import IStatusProvider
from holepunch.nat.model import Behavior, FamilyResult, NatInfo, NatType, families_json
from holepunch.signaling import auth
from holepunch.stun.client import listen_stun
from holepunch.stun.wire import Address
from lab.coturn import free_port
from lab.natlab import TWISTD
from tests.signaling_helpers import RawClientProtocol, raw_client_factory, start_daemon

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NAT = NatInfo(
    type=NatType.PORT_RESTRICTED,
    mapping=Behavior.ENDPOINT_INDEPENDENT,
    filtering=Behavior.ADDRESS_AND_PORT_DEPENDENT,
    public_address="203.0.113.1",
    public_port=40000,
)
NAT6 = NatInfo(type=NatType.OPEN, public_address="2001:db8::7", public_port=40000)


@implementer(IStatusProvider)
class FakeProvider:
    """A provider whose answers the tests set."""

    def __init__(self) -> None:
        self.health: Any = {
            "status": "healthy",
            "initialized": True,
            "timestamp": 1,
            "services": {},
        }
        self.stats: dict[str, Any] = {
            "initialized": True,
            "natInfo": None,
            "activeConnections": 2,
            "signaling": {"peers": 3},
            "holePunching": {"enabled": True},
        }
        self.nat: NatInfo | None = None

    def health_check(self) -> defer.Deferred[dict[str, Any]]:
        if isinstance(self.health, defer.Deferred):
            return self.health
        if isinstance(self.health, Exception):
            return defer.fail(self.health)
        return defer.succeed(self.health)

    def get_stats(self) -> dict[str, Any]:
        if isinstance(self.stats, Exception):
            raise self.stats
        return self.stats

    def get_nat_info(self) -> dict[str, Any] | None:
        return self.nat.to_json() if self.nat is not None else None

    def get_recommended_strategy(self) -> dict[str, Any] | None:
        from holepunch.nat.model import recommended_strategy

        return recommended_strategy(self.nat) if self.nat is not None else None

    def get_nat_families(self) -> dict[str, Any] | None:
        return families_json({4: self.nat, 6: "no IPv6 route"}) if self.nat is not None else None


def render(root: Resource, path: bytes, method: bytes = b"GET") -> DummyRequest:
    """Render ``path`` under ``root`` synchronously (the providers here answer at once)."""
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = method
    resource = getChildForRequest(root, request)
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


def body_json(request: DummyRequest) -> Any:
    return json.loads(b"".join(request.written))


def header(request: DummyRequest, name: bytes) -> bytes | None:
    values = request.responseHeaders.getRawHeaders(name)
    return values[0] if values else None


class PagesTests(SynchronousTestCase):
    """The JSON pages of install_http, with a fake provider."""

    def setUp(self) -> None:
        self.provider = FakeProvider()
        self.metrics = Metrics()
        self.root = Resource()
        install_http(self.root, self.provider, self.metrics)

    def test_fake_provides_interface(self) -> None:
        """The test's provider really provides IStatusProvider."""
        verifyObject(IStatusProvider, self.provider)

    def test_health_healthy(self) -> None:
        """/p2p/health is the provider's health as JSON, with 200 when healthy."""
        request = render(self.root, b"/p2p/health")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(body_json(request), self.provider.health)
        self.assertEqual(header(request, b"content-type"), b"application/json; charset=utf-8")
        self.assertEqual(header(request, b"cache-control"), b"no-store")

    def test_health_unhealthy(self) -> None:
        """Any status but healthy answers 503, body unchanged."""
        self.provider.health = {"status": "unhealthy", "initialized": False}
        request = render(self.root, b"/p2p/health")
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(body_json(request)["status"], "unhealthy")

    def test_health_failure(self) -> None:
        """A failing health check answers 503 with status unhealthy and the error."""
        self.provider.health = RuntimeError("database on fire")
        request = render(self.root, b"/p2p/health")
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(body_json(request), {"status": "unhealthy", "error": "database on fire"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_health_later(self) -> None:
        """A health check that answers later is written when it does."""
        self.provider.health = defer.Deferred()
        request = render(self.root, b"/p2p/health")
        self.assertEqual(request.written, [])
        self.provider.health.callback({"status": "healthy"})
        self.assertEqual((request.responseCode, body_json(request)), (200, {"status": "healthy"}))

    def test_health_client_gone(self) -> None:
        """A client that leaves first cancels the check and nothing is written."""
        self.provider.health = defer.Deferred()
        request = render(self.root, b"/p2p/health")
        request.processingFailed(Failure(error.ConnectionLost()))
        self.assertTrue(self.provider.health.called)  # cancelled
        self.assertEqual(request.written, [])
        self.flushLoggedErrors(defer.CancelledError)

    def test_stats(self) -> None:
        """/p2p/stats is get_stats() as JSON."""
        request = render(self.root, b"/p2p/stats")
        self.assertEqual((request.responseCode, body_json(request)), (200, self.provider.stats))

    def test_stats_failure(self) -> None:
        """A failing get_stats answers 500 with the error."""
        self.provider.stats = KeyError("x")  # type: ignore[assignment]
        request = render(self.root, b"/p2p/stats")
        self.assertEqual(request.responseCode, 500)
        self.assertIn("error", body_json(request))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_nat_unknown(self) -> None:
        """/p2p/nat is {natInfo: null, strategy: null} before the NAT is known."""
        request = render(self.root, b"/p2p/nat")
        self.assertEqual(body_json(request), {"natInfo": None, "strategy": None, "families": None})

    def test_nat_known(self) -> None:
        """/p2p/nat is the seed's {natInfo, strategy} once the NAT is known, and each
        family's report in families."""
        self.provider.nat = NAT
        data = body_json(render(self.root, b"/p2p/nat"))
        self.assertEqual(data["natInfo"]["type"], "port-restricted")
        self.assertEqual(data["natInfo"]["publicAddress"], "203.0.113.1")
        self.assertEqual(data["strategy"]["natType"], "port-restricted")
        self.assertIn("methods", data["strategy"])
        self.assertEqual(data["families"]["IPv4"], {"family": "IPv4", **NAT.to_json()})
        self.assertEqual(data["families"]["IPv6"], {"family": "IPv6", "error": "no IPv6 route"})

    def test_head_and_post(self) -> None:
        """HEAD gets the headers without a body; POST is refused with 405."""
        request = render(self.root, b"/p2p/stats", b"HEAD")
        self.assertEqual(request.responseCode, 200)
        post = DummyRequest([b"p2p", b"stats"])
        post.method = b"POST"
        resource = getChildForRequest(self.root, post)
        from twisted.web.server import UnsupportedMethod

        self.assertRaises(UnsupportedMethod, resource.render, post)

    def test_metrics_page(self) -> None:
        """/metrics is the Prometheus text format of the Metrics' own registry."""
        self.metrics.observe_connection("udp-hole-punch", 0.3)
        request = render(self.root, b"/metrics")
        self.assertTrue(header(request, b"content-type").startswith(b"text/plain"))  # type: ignore[union-attr]
        text = b"".join(request.written).decode()
        self.assertIn('holepunch_connections_total{method="udp-hole-punch"} 1.0', text)

    def test_metrics_openmetrics(self) -> None:
        """A scraper asking for OpenMetrics gets it."""
        request = DummyRequest([b"metrics"])
        request.requestHeaders.addRawHeader(b"accept", b"application/openmetrics-text")
        resource = getChildForRequest(self.root, request)
        body = resource.render(request)
        self.assertTrue(header(request, b"content-type").startswith(b"application/openmetrics"))  # type: ignore[union-attr]
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_no_metrics(self) -> None:
        """Without a Metrics there is no /metrics page."""
        root = Resource()
        install_http(root, self.provider, None)
        self.assertEqual(render(root, b"/metrics").responseCode, 404)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    text, _ = metrics.render()
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsTests(SynchronousTestCase):
    """The Metrics object: its own counters and what it reads at scrape time."""

    def test_own_registry(self) -> None:
        """Each Metrics has its own registry: two of them do not clash."""
        a, b = Metrics(), Metrics()
        a.observe_connection("direct", 0.01)
        self.assertNotIn(("holepunch_connections_total", (("method", "direct"),)), samples(b))

    def test_observe_connection(self) -> None:
        """observe_connection counts by method and fills the connect-time histogram."""
        metrics = Metrics()
        metrics.observe_connection("udp-hole-punch", 0.3)
        metrics.observe_connection("udp-hole-punch", 4.0)
        metrics.observe_connection("turn-relay", 12.0)
        found = samples(metrics)
        self.assertEqual(found[("holepunch_connections_total", (("method", "udp-hole-punch"),))], 2)
        self.assertEqual(found[("holepunch_connections_total", (("method", "turn-relay"),))], 1)
        punch = (("le", "0.5"), ("method", "udp-hole-punch"))
        self.assertEqual(found[("holepunch_connect_time_seconds_bucket", punch)], 1)
        self.assertEqual(
            found[("holepunch_connect_time_seconds_count", (("method", "udp-hole-punch"),))], 2
        )
        self.assertEqual(
            found[("holepunch_connect_time_seconds_sum", (("method", "turn-relay"),))], 12.0
        )

    def test_sources_read_at_scrape(self) -> None:
        """Signaling and STUN counters are read from their sources when scraped."""
        signaling = {
            "peers": 3,
            "rooms": 1,
            "connections": 4,
            "connections_total": 9,
            "evicted": 1,
            "messages": {"register": 3, "offer": 2},
            "relayed": {"offer": 2},
            "errors": {"rate-limited": 5},
            "denied": {"401": 1},
        }
        stun = {
            "requests": 7,
            "responses": 6,
            "malformed": 2,
            "ignored": 1,
            "rateLimited": 3,
            "tooManyAttributes": 4,
            "tcpSlowReaders": 5,
            "errors": {"420": 1},
            "byTransport": {"udp": 6, "tcp": 1},
        }
        metrics = Metrics()
        metrics.watch_signaling(lambda: signaling)
        metrics.watch_stun(lambda: stun)
        found = samples(metrics)
        expected = {
            ("holepunch_signaling_peers", ()): 3,
            ("holepunch_signaling_rooms", ()): 1,
            ("holepunch_signaling_open_connections", ()): 4,
            ("holepunch_signaling_connections_accepted_total", ()): 9,
            ("holepunch_signaling_evicted_total", ()): 1,
            ("holepunch_signaling_messages_total", (("type", "offer"),)): 2,
            ("holepunch_signaling_relayed_total", (("type", "offer"),)): 2,
            ("holepunch_signaling_errors_total", (("code", "rate-limited"),)): 5,
            ("holepunch_signaling_connections_denied_total", (("code", "401"),)): 1,
            ("holepunch_stun_requests_total", (("transport", "udp"),)): 6,
            ("holepunch_stun_requests_total", (("transport", "tcp"),)): 1,
            ("holepunch_stun_responses_total", ()): 6,
            ("holepunch_stun_malformed_total", ()): 2,
            ("holepunch_stun_ignored_total", ()): 1,
            ("holepunch_stun_rate_limited_total", ()): 3,
            ("holepunch_stun_too_many_attributes_total", ()): 4,
            ("holepunch_stun_tcp_slow_readers_total", ()): 5,
            ("holepunch_stun_error_responses_total", (("code", "420"),)): 1,
        }
        for key, value in expected.items():
            self.assertEqual(found.get(key), value, key)
        signaling["peers"] = 10
        self.assertEqual(samples(metrics)[("holepunch_signaling_peers", ())], 10)

    def test_provider(self) -> None:
        """Active connections and the NAT type come from the provider."""
        provider = FakeProvider()
        provider.nat = NAT
        metrics = Metrics()
        metrics.watch_provider(provider)
        found = samples(metrics)
        self.assertEqual(found[("holepunch_active_connections", ())], 2)
        labels = (
            ("filtering", "address-and-port-dependent"),
            ("mapping", "endpoint-independent"),
            ("type", "port-restricted"),
        )
        self.assertEqual(found[("holepunch_nat_info", labels)], 1)

    def test_broken_source(self) -> None:
        """A source that raises is logged and left out; the rest of the scrape goes on."""
        metrics = Metrics()

        def broken() -> dict[str, Any]:
            raise RuntimeError("no stats today")

        metrics.watch_signaling(broken)
        metrics.watch_stun(lambda: {"responses": 1})
        found = samples(metrics)
        self.assertEqual(found[("holepunch_stun_responses_total", ())], 1)
        self.assertNotIn(("holepunch_signaling_peers", ()), found)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_build_info(self) -> None:
        """holepunch_build_info carries the version."""
        from holepunch.version import __version__

        self.assertEqual(
            samples(Metrics())[("holepunch_build_info", (("version", __version__),))], 1
        )


class NatDiscoveryServiceTests(SynchronousTestCase):
    """The daemon's optional start-up NAT discovery, with a fake discovery."""

    def start(self, results: dict[int, FamilyResult]) -> tuple[NatDiscoveryService, DaemonStatus]:
        nat = NatDiscoveryService(None, [], lambda r, s: defer.succeed(results))
        status = DaemonStatus(task.Clock(), nat=nat)
        nat.startService()
        return nat, status

    def test_found(self) -> None:
        """The result is kept and shown by DaemonStatus: IPv4's as natInfo, both in families."""
        calls: list[Any] = []

        def discover(
            reactor: Any, servers: list[tuple[str, int]]
        ) -> defer.Deferred[dict[int, FamilyResult]]:
            calls.append(servers)
            return defer.succeed({4: NAT, 6: NAT6})

        nat = NatDiscoveryService(None, [("stun.example", 3478)], discover)
        status = DaemonStatus(task.Clock(), nat=nat)
        self.assertIsNone(status.get_nat_info())
        self.assertIsNone(status.get_nat_families())
        nat.startService()
        self.assertEqual(calls, [[("stun.example", 3478)]])
        self.assertEqual((nat.state, status.get_nat_info()), ("done", NAT.to_json()))
        self.assertEqual(status.get_recommended_strategy()["natType"], "port-restricted")  # type: ignore[index]
        self.assertEqual(
            status.get_nat_families(),
            {
                "IPv4": {"family": "IPv4", **NAT.to_json()},
                "IPv6": {"family": "IPv6", **NAT6.to_json()},
            },
        )

    def test_ipv6_only(self) -> None:
        """When only IPv6 answered, natInfo is IPv6's and families says why IPv4 has none."""
        nat, status = self.start({4: "no IPv4 STUN server", 6: NAT6})
        self.assertEqual((nat.state, status.get_nat_info()), ("done", NAT6.to_json()))
        families = status.get_nat_families()
        assert families is not None
        self.assertEqual(families["IPv4"], {"family": "IPv4", "error": "no IPv4 STUN server"})

    def test_no_family_answered(self) -> None:
        """No family answered: failed, with each family's reason, and health stays healthy."""
        nat, status = self.start({4: "no answer", 6: "no IPv6 route"})
        self.assertEqual(nat.state, "failed")
        self.assertEqual(nat.error, "IPv4: no answer; IPv6: no IPv6 route")
        self.assertIsNone(status.get_nat_info())
        health = self.successResultOf(status.health_check())
        self.assertEqual(
            (health["status"], health["services"]["natDiscovery"]), ("healthy", "failed")
        )

    def test_failed(self) -> None:
        """A failed discovery is reported in health, which stays healthy."""
        nat = NatDiscoveryService(None, [], lambda r, s: defer.fail(OSError("no route to host")))
        status = DaemonStatus(task.Clock(), nat=nat)
        nat.startService()
        health = self.successResultOf(status.health_check())
        self.assertEqual(health["status"], "healthy")
        self.assertEqual(health["services"]["natDiscovery"], "failed")
        self.assertEqual(nat.error, "no route to host")

    def test_when_finished(self) -> None:
        """when_finished fires once the discovery is over, at once if it already is."""
        pending: defer.Deferred[dict[int, FamilyResult]] = defer.Deferred()
        nat = NatDiscoveryService(None, [], lambda r, s: pending)
        nat.startService()
        finished = nat.when_finished()
        self.assertNoResult(finished)
        pending.callback({4: NAT})
        self.successResultOf(finished)
        self.assertEqual(nat.state, "done")
        self.successResultOf(nat.when_finished())

    def test_stop_cancels(self) -> None:
        """Stopping the service cancels a discovery still running."""
        cancelled: list[object] = []
        pending: defer.Deferred[dict[int, FamilyResult]] = defer.Deferred(cancelled.append)
        nat = NatDiscoveryService(None, [], lambda r, s: pending)
        nat.startService()
        self.assertEqual(nat.state, "pending")
        finished = nat.when_finished()
        nat.stopService()
        self.assertEqual(cancelled, [pending])
        self.assertEqual((nat.state, nat.error), ("failed", "cancelled"))
        self.successResultOf(finished)


class OptionsTests(SynchronousTestCase):
    """twistd options and the environment."""

    def parse(self, args: list[str], environ: dict[str, str]) -> Options:
        options = Options(environ=environ)
        options.parseOptions(args)
        return options

    def test_environment_sets_daemon(self) -> None:
        """P2P_SIGNALING_PORT, P2P_PEER_TIMEOUT and LOG_LEVEL reach the daemon's options."""
        options = self.parse(
            [], {"P2P_SIGNALING_PORT": "9000", "P2P_PEER_TIMEOUT": "120000", "LOG_LEVEL": "warn"}
        )
        self.assertEqual(options["signaling"], "tcp:9000")
        self.assertEqual(options["peer-timeout"], 120.0)
        self.assertEqual(options["log-level"], "warn")
        self.assertEqual(options.config.signaling_port, 9000)

    def test_options_override_environment(self) -> None:
        """--signaling, --peer-timeout and --log-level win over the environment."""
        options = self.parse(
            ["--signaling", "tcp:7000", "--peer-timeout", "30", "--log-level", "debug"],
            {"P2P_SIGNALING_PORT": "9000", "P2P_PEER_TIMEOUT": "120000", "LOG_LEVEL": "warn"},
        )
        self.assertEqual(
            (options["signaling"], options["peer-timeout"], options["log-level"]),
            ("tcp:7000", 30.0, "debug"),
        )

    def test_signaling_disabled_by_environment(self) -> None:
        """P2P_SIGNALING_ENABLED=false is --no-signaling."""
        self.assertTrue(self.parse([], {"P2P_SIGNALING_ENABLED": "false"})["no-signaling"])

    def test_bad_environment_is_usage_error(self) -> None:
        """A bad variable is a usage error naming it."""
        e = self.assertRaises(usage.UsageError, self.parse, [], {"P2P_SIGNALING_PORT": "abc"})
        self.assertEqual(str(e), "P2P_SIGNALING_PORT: expected a port number 0-65535, got 'abc'")

    def test_bad_option_is_usage_error(self) -> None:
        """A bad --log-level is a usage error naming the option."""
        e = self.assertRaises(usage.UsageError, self.parse, ["--log-level", "loud"], {})
        self.assertTrue(str(e).startswith("--log-level: expected"), str(e))


class LogLevelTests(SynchronousTestCase):
    """LOG_LEVEL filtering."""

    def test_filter(self) -> None:
        """Events below the level are dropped, the rest pass."""
        seen: list[dict[str, Any]] = []

        @provider(ILogObserver)
        def record(event: dict[str, Any]) -> None:
            seen.append(event)

        observer = level_filter(record, "warn")
        for level in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error):
            observer({"log_level": level, "log_namespace": "test", "log_format": "x"})
        self.assertEqual([e["log_level"] for e in seen], [LogLevel.warn, LogLevel.error])

    def test_given_to_twistd(self) -> None:
        """The daemon's top service hands its log observer to twistd's application."""
        top = DaemonService()
        top.log_observer = level_filter(lambda event: None, "info")
        application = Application("holepunch")
        top.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), top.log_observer)

    def test_not_under_twistd(self) -> None:
        """Outside twistd (no parent options) there is no observer to hand over."""
        options = Options(environ={})
        options.parseOptions(["--no-stun", "--no-signaling"])
        self.assertIsNone(makeService(options, reactor).log_observer)  # type: ignore[attr-defined]


class DaemonServiceTests(TestCase):
    """makeService's tree on 127.0.0.1: DaemonStatus and the pages of both ports."""

    timeout = 30

    async def get(self, url: str, token: str | None = None) -> tuple[int, bytes]:
        from twisted.web.client import Agent, readBody
        from twisted.web.http_headers import Headers

        headers = Headers({b"authorization": [f"Bearer {token}".encode()]} if token else {})
        response = await Agent(reactor).request(b"GET", url.encode(), headers)
        return response.code, await readBody(response)

    async def start_daemon(self, *args: str) -> tuple[Any, int]:
        """The daemon (signaling on 127.0.0.1, no STUN) with ``args``; its signaling port."""
        top = start_daemon(self, "--signaling=tcp:0:interface=127.0.0.1", "--no-stun", *args)
        status: DaemonStatus = top.status  # type: ignore[attr-defined]
        assert status.signaling is not None
        port = (await status.signaling.when_listening()).getHost().port  # type: ignore[attr-defined]
        return top, port

    async def test_status_pages_need_a_token_when_auth_is_on(self) -> None:
        """With --auth-secret and no --http, /p2p/stats, /p2p/nat and /metrics on the
        public port answer 401 without a valid token and 200 with one; /p2p/health
        stays open for load balancers."""
        _, port = await self.start_daemon("--auth-secret=s3cret")
        base = f"http://127.0.0.1:{port}"
        good = auth.mint_token("s3cret", "monitor", 60, reactor.seconds())
        forged = auth.mint_token("other", "monitor", 60, reactor.seconds())
        for path in ("/p2p/stats", "/p2p/nat", "/metrics"):
            for token in (None, forged):
                code, _ = await self.get(base + path, token)
                self.assertEqual(code, 401, (path, token))
            code, body = await self.get(base + path, good)
            self.assertEqual(code, 200, path)
        code, _ = await self.get(f"{base}/p2p/stats?token={good}")
        self.assertEqual(code, 200)
        code, body = await self.get(base + "/p2p/health")
        self.assertEqual((code, json.loads(body)["status"]), (200, "healthy"))

    async def test_status_pages_public_without_auth(self) -> None:
        """Without auth and without --http, the pages stay public on the signaling port
        (local use, as the README runs it)."""
        _, port = await self.start_daemon()
        for path in ("/p2p/health", "/p2p/stats", "/p2p/nat", "/metrics"):
            code, _ = await self.get(f"http://127.0.0.1:{port}{path}")
            self.assertEqual(code, 200, path)

    async def test_daemon_pages(self) -> None:
        """Health, stats, NAT and metrics answer on --http; the signaling port then keeps
        /p2p/health only."""
        stun_port, http_port = free_port(), free_port()
        options = Options(environ={})
        options.parseOptions(
            [
                "--signaling=tcp:0:interface=127.0.0.1",
                "--stun-interface=127.0.0.1",
                f"--stun-port={stun_port}",
                "--stun-alternate-port=0",
                "--no-stun-tcp",
                f"--http=tcp:{http_port}:interface=127.0.0.1",
            ]
        )
        top = makeService(options, reactor)
        status: DaemonStatus = top.status  # type: ignore[attr-defined]
        verifyObject(IStatusProvider, status)
        health = self.successResultOf(status.health_check())
        self.assertEqual((health["status"], health["initialized"]), ("unhealthy", False))
        top.startService()
        self.addCleanup(top.stopService)
        assert status.signaling is not None
        port = (await status.signaling.when_listening()).getHost().port  # type: ignore[attr-defined]
        client = listen_stun(reactor, "127.0.0.1")
        self.addCleanup(client.close)
        await client.binding(Address("127.0.0.1", stun_port))
        for path in ("/p2p/stats", "/p2p/nat", "/metrics"):
            code, _ = await self.get(f"http://127.0.0.1:{port}{path}")
            self.assertEqual(code, 404, path)
        for base in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{http_port}"):
            code, body = await self.get(base + "/p2p/health")
            health = json.loads(body)
            self.assertEqual((code, health["status"]), (200, "healthy"))
            self.assertEqual(health["services"], {"signaling": "up", "stun": "up"})
            if base.endswith(str(port)):
                continue
            code, body = await self.get(base + "/p2p/stats")
            stats = json.loads(body)
            self.assertEqual(stats["stun"]["requests"], 1)
            self.assertEqual(stats["signaling"]["peers"], 0)
            code, body = await self.get(base + "/p2p/nat")
            self.assertEqual(
                json.loads(body), {"natInfo": None, "strategy": None, "families": None}
            )
            code, body = await self.get(base + "/metrics")
            self.assertIn(b'holepunch_stun_requests_total{transport="udp"} 1.0', body)
        await top.stopService()
        health = self.successResultOf(status.health_check())
        self.assertEqual(health["services"], {"signaling": "down", "stun": "down"})


# -- the real daemon -------------------------------------------------------------------------


class _Daemon(protocol.ProcessProtocol):
    """Collects a child's output and tells when it has exited."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.status: int | None = None
        self.signal: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        self.status = getattr(value, "exitCode", None)
        self.signal = getattr(value, "signal", None)
        self.ended.callback(self.status)


def daemon_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_") and k != "LOG_LEVEL"}
    env.update(extra)
    return env


class TwistdTests(TestCase):
    """``twistd -n holepunch`` checked from outside with curl."""

    timeout = 60

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            raise self.skipTest("curl is not installed (apt-get install curl)")

    def start(self, args: list[str], env: dict[str, str]) -> _Daemon:
        daemon = _Daemon()
        argv = [*TWISTD, "-n", "--pidfile=", "holepunch", *args]
        transport = reactor.spawnProcess(daemon, sys.executable, argv, env=env, path=ROOT)

        def stop() -> defer.Deferred[Any] | None:
            if daemon.ended.called:
                return None
            transport.signalProcess("KILL")
            return daemon.ended

        self.addCleanup(stop)
        return daemon

    async def curl(self, url: str) -> tuple[int, str, bytes]:
        """HTTP status, content type and body, as curl saw them (0 when it could not connect)."""
        out, err, code = await utils.getProcessOutputAndValue(
            "curl", ["-sS", "--max-time", "5", "-w", "\n%{http_code} %{content_type}", url]
        )
        body, _, trailer = out.rpartition(b"\n")
        status, _, content_type = trailer.decode().partition(" ")
        return int(status or 0), content_type, body

    async def wait_healthy(self, daemon: _Daemon, url: str) -> None:
        for _ in range(100):
            if daemon.ended.called:
                self.fail(f"twistd exited early:\n{daemon.output.decode()}")
            status, _, _ = await self.curl(url)
            if status == 200:
                return
            await task.deferLater(reactor, 0.1, lambda: None)
        self.fail(f"twistd never became healthy:\n{daemon.output.decode()}")

    async def test_endpoints_metrics_and_sigterm(self) -> None:
        """The JSON endpoints and /metrics answer as documented; SIGTERM closes clients with 1001 and stops twistd promptly."""
        port, stun_port = free_port(), free_port()
        env = daemon_env(P2P_SIGNALING_PORT=str(port), LOG_LEVEL="info")
        daemon = self.start(
            [
                "--stun-interface=127.0.0.1",
                f"--stun-port={stun_port}",
                "--stun-alternate-port=0",
                "--no-stun-tcp",
            ],
            env,
        )
        base = f"http://127.0.0.1:{port}"
        await self.wait_healthy(daemon, base + "/p2p/health")

        url = f"ws://127.0.0.1:{port}/"
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        alice = cast(RawClientProtocol, await endpoint.connect(raw_client_factory(url)))
        await alice.opened
        self.assertEqual((await alice.next())["type"], "welcome")
        reply = await alice.request({"type": "register", "peerId": "alice", "id": 1})
        self.assertEqual(reply["type"], "registered")
        reply = await alice.request({"type": "join-room", "roomId": "torrent-abc", "id": 2})
        self.assertEqual(reply["type"], "room-joined")

        status, content_type, body = await self.curl(base + "/p2p/health")
        health = json.loads(body)
        self.assertEqual((status, content_type), (200, "application/json; charset=utf-8"))
        self.assertEqual(set(health), {"status", "initialized", "timestamp", "services"})
        self.assertEqual(
            (health["status"], health["initialized"], health["services"]),
            ("healthy", True, {"signaling": "up", "stun": "up"}),
        )

        status, _, body = await self.curl(base + "/p2p/stats")
        stats = json.loads(body)
        self.assertEqual(status, 200)
        self.assertLessEqual(
            {"initialized", "natInfo", "activeConnections", "signaling", "holePunching"},
            set(stats),
        )
        self.assertEqual((stats["signaling"]["peers"], stats["signaling"]["rooms"]), (1, 1))
        self.assertEqual(stats["activeConnections"], 1)
        self.assertEqual(stats["stun"]["addresses"], [f"127.0.0.1:{stun_port}"])

        status, _, body = await self.curl(base + "/p2p/nat")
        self.assertEqual(
            (status, json.loads(body)), (200, {"natInfo": None, "strategy": None, "families": None})
        )

        status, content_type, body = await self.curl(base + "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(content_type.startswith("text/plain"), content_type)
        text = body.decode()
        for line in [
            "holepunch_signaling_peers 1.0",
            "holepunch_signaling_rooms 1.0",
            "holepunch_signaling_open_connections 1.0",
            'holepunch_signaling_messages_total{type="register"} 1.0',
            'holepunch_signaling_messages_total{type="join-room"} 1.0',
            "holepunch_stun_responses_total 0.0",
            "# TYPE holepunch_connect_time_seconds histogram",
        ]:
            self.assertIn(line, text.splitlines())

        started = reactor.seconds()
        daemon.transport.signalProcess("TERM")  # type: ignore[union-attr]
        clean, code, _ = await alice.lost
        self.assertEqual(code, 1001)
        await daemon.ended
        self.assertLess(reactor.seconds() - started, 5.0)
        # twistd re-raises the signal it stopped on, so a parent sees "killed by SIGTERM"
        # (what systemd and docker count as a clean stop), after the services stopped.
        self.assertEqual(daemon.signal, signal.SIGTERM, daemon.output.decode())
        output = daemon.output.decode()
        self.assertIn("Received SIGTERM, shutting down.", output)
        self.assertIn("Server Shut Down.", output)
        self.assertNotIn("Traceback", output)

    async def test_bad_environment_stops_startup(self) -> None:
        """P2P_SIGNALING_PORT=abc: twistd holepunch exits non-zero, naming the variable."""
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable,
            [*TWISTD[1:], "-n", "--pidfile=", "holepunch"],
            env=daemon_env(P2P_SIGNALING_PORT="abc"),
            path=ROOT,
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"P2P_SIGNALING_PORT: expected a port number 0-65535, got 'abc'", out + err)

    async def test_log_level(self) -> None:
        """LOG_LEVEL=warn hides twistd's and our info lines; info shows them."""
        outputs = {}
        for level in ("warn", "info"):
            port = free_port()
            daemon = self.start(
                ["--no-stun"],
                daemon_env(P2P_SIGNALING_PORT=str(port), LOG_LEVEL=level),
            )
            await self.wait_healthy(daemon, f"http://127.0.0.1:{port}/p2p/health")
            daemon.transport.signalProcess("TERM")  # type: ignore[union-attr]
            await daemon.ended
            outputs[level] = daemon.output.decode()
        self.assertIn("Site starting on", outputs["info"])
        self.assertIn("Server Shut Down.", outputs["info"])
        self.assertNotIn("Site starting on", outputs["warn"])
        self.assertNotIn("Server Shut Down.", outputs["warn"])

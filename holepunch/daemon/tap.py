# -*- test-case-name: tests.unit.test_tap,tests.unit.test_web -*-
"""``twistd holepunch``: options and the service tree of the daemon.

The daemon runs, each part optional:

- the STUN server (UDP and TCP, port 3478 on every interface of both families; RFC 5780
  behaviour discovery when given an alternate address), see :mod:`holepunch.stun.server`;
- the WebSocket signaling server (``tcp:8080``, IPv4 and IPv6), see
  :mod:`holepunch.signaling.server`,
  with the HTTP endpoints of :mod:`holepunch.daemon.http` (``/p2p/health``,
  ``/p2p/stats``, ``/p2p/nat``, ``/metrics``): on ``--http`` if given (the signaling
  port then keeps ``/p2p/health`` only), else on the signaling port, where with
  ``--auth-secret`` all but ``/p2p/health`` need a valid token (docs/operations.md,
  "Exposure and limits");
- with ``--discover-nat``, a NAT discovery at start-up, shown by ``/p2p/nat``;
- with ``--redis redis://HOST:PORT/DB``, signaling peers and rooms shared with the other
  daemons on that Redis (:mod:`holepunch.signaling.redisregistry`); an unreachable Redis
  stops start-up with one line naming the URL.

Options override the ``P2P_*`` environment variables of :mod:`holepunch.config`
(``P2P_SIGNALING_PORT``, ``P2P_SIGNALING_ENABLED``, ``P2P_PEER_TIMEOUT``,
``P2P_STUN_SERVERS``, ``LOG_LEVEL``, ...); a bad value stops start-up with a usage error
naming it. ``LOG_LEVEL`` (or ``--log-level``) filters what twistd logs. SIGTERM and
SIGINT stop every service: signaling clients are closed with 1001, listeners closed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
)
from twisted.python import usage
from twisted.python.components import Componentized

from holepunch.config import ConfigError, P2PConfig, build_config
from holepunch.signaling.iceservers import IceServerHints

if TYPE_CHECKING:
    from holepunch.daemon.metrics import Metrics
    from holepunch.daemon.status import DaemonStatus


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return port


class Options(usage.Options):
    """Command-line options of ``twistd holepunch``."""

    optFlags = [
        ["no-stun", None, "Do not run the STUN server."],
        ["no-stun-tcp", None, "Run the STUN server over UDP only."],
        [
            "stun-software",
            None,
            "Name this software and its version (SOFTWARE) in every STUN response; off by "
            "default, since it makes each answer 24 bytes larger.",
        ],
        ["no-signaling", None, "Do not run the signaling server (or P2P_SIGNALING_ENABLED=false)."],
        [
            "discover-nat",
            None,
            "At start-up, find out what NAT this host is behind, over IPv4 and IPv6 (shown "
            "by /p2p/nat).",
        ],
        [
            "no-ice-servers",
            None,
            "Do not name this daemon's STUN server (nor --turn-url) in welcome's iceServers.",
        ],
        [
            "open-relay",
            None,
            "Relay offers, answers and candidates between any two peers (default: only "
            "between peers that share a room).",
        ],
        [
            "token-single-use",
            None,
            "With --auth-secret: a token opens one signaling connection at a time.",
        ],
    ]
    optParameters: list[list[Any]] = [
        [
            "stun-interface",
            None,
            "",
            "Address the STUN server binds, IPv4 or IPv6 (default: every interface of both "
            "families; 0.0.0.0 or :: for one family only).",
        ],
        ["stun-port", None, 3478, "STUN port (UDP and TCP).", _port],
        [
            "stun-alternate-address",
            None,
            None,
            "A second address of this host: turns on RFC 5780 behaviour discovery "
            "(needs --stun-interface set to the primary address).",
        ],
        [
            "stun-alternate-port",
            None,
            3479,
            "Second STUN port (0: none): a second destination on one address, which lets "
            "clients measure their NAT's mapping; RFC 5780's alternate port with "
            "--stun-alternate-address.",
            _port,
        ],
        [
            "stun-rate",
            None,
            50.0,
            "STUN requests per second allowed from one source IP (0: unlimited).",
            float,
        ],
        ["stun-burst", None, 100.0, "STUN token-bucket burst per source IP.", float],
        [
            "signaling",
            None,
            None,
            "Endpoint of the signaling server and its HTTP pages (strports; default "
            "tcp:$P2P_SIGNALING_PORT, else tcp:8080). tcp:PORT listens on IPv4 and IPv6, "
            "tcp:PORT:interface=0.0.0.0 on IPv4 only, tcp6:PORT on IPv6 only.",
        ],
        [
            "http",
            None,
            None,
            "Serve /p2p/health, /p2p/stats, /p2p/nat and /metrics on this endpoint "
            "(strports, e.g. tcp:9090:interface=127.0.0.1); the signaling port then keeps "
            "/p2p/health only.",
        ],
        ["log-level", None, None, "debug, info, warn or error (default: $LOG_LEVEL, else info)."],
        [
            "nat-stun-servers",
            None,
            None,
            "STUN servers for --discover-nat, HOST:PORT,... (default: $P2P_STUN_SERVERS, "
            "else Google's and Cloudflare's).",
        ],
        [
            "ice-host",
            None,
            None,
            "Host named in the STUN URIs of welcome's iceServers (default: the host the "
            "client connected to).",
        ],
        [
            "turn-url",
            None,
            None,
            "TURN server(s) named in welcome's iceServers, comma-separated turn:/turns: URIs "
            "(default: $P2P_ADVERTISED_TURN_URLS).",
        ],
        [
            "turn-secret",
            None,
            None,
            "coturn's static-auth-secret: --turn-url entries get REST-API credentials minted "
            "per connection (default: $P2P_TURN_SECRET).",
        ],
        ["turn-ttl", None, 86400.0, "Lifetime of minted TURN credentials, seconds.", float],
        # Signaling server (holepunch.signaling.server.SignalingConfig has the defaults).
        [
            "auth-secret",
            None,
            None,
            "Require signaling tokens signed with this secret (default: $P2P_AUTH_SECRET; "
            "unset: no auth). Mint them with `holepunch token`.",
        ],
        [
            "peer-timeout",
            None,
            None,
            "Evict peers silent for this many seconds (default: $P2P_PEER_TIMEOUT ms, else 300).",
            float,
        ],
        [
            "cleanup-interval",
            None,
            None,
            "Look for idle peers every so many seconds (default 60).",
            float,
        ],
        ["max-message-size", None, 65536, "Largest signaling message, bytes.", int],
        ["max-frame-size", None, 262144, "Larger WebSocket messages close the link.", int],
        ["message-rate", None, 20.0, "Signaling messages per second per connection.", float],
        ["message-burst", None, 60, "Signaling messages allowed at once per connection.", int],
        ["max-connections", None, 10000, "Signaling connections in total.", int],
        ["max-connections-per-address", None, 64, "Signaling connections per source IP.", int],
        ["max-peers", None, 10000, "Registered signaling peers in total.", int],
        ["max-peers-per-room", None, 100, "Peers in one room.", int],
        ["max-rooms-per-peer", None, 16, "Rooms one peer may join.", int],
        [
            "send-buffer-limit",
            None,
            1048576,
            "Bytes queued for a signaling client that does not read (beyond 64 KiB) "
            "before it is dropped.",
            int,
        ],
        [
            "http-head-timeout",
            None,
            10.0,
            "Seconds a client has to send a whole HTTP request head (also the WebSocket "
            "handshake).",
            float,
        ],
        [
            "trust-x-forwarded-for",
            None,
            0,
            "Reverse proxies in front of the signaling server whose X-Forwarded-For to trust.",
            int,
        ],
        [
            "redis",
            None,
            None,
            "Share peers and rooms with the other daemons on this Redis, "
            "redis://[:PASSWORD@]HOST[:PORT][/DB] (default: $P2P_REDIS_URL; unset: in memory).",
        ],
        [
            "workers",
            None,
            1,
            "Processes serving the signaling and STUN ports together (SO_REUSEPORT), "
            "sharing peers and rooms over --redis (or a private redis-server).",
            int,
        ],
        ["worker-index", None, 0, "(internal) which worker this process is.", int],
        ["worker-group", None, None, "(internal) the daemon the worker belongs to."],
        ["worker-links", None, None, "(internal) where the workers' links listen."],
        [
            "presence-ttl",
            None,
            30.0,
            "With --redis: seconds after which the peers of a daemon that stopped "
            "refreshing its presence (crashed) are gone.",
            float,
        ],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        """Where the ``P2P_*`` variables are read (tests pass their own)."""
        self.config = P2PConfig()
        """The settings shared with the coordinator, after options and environment."""
        self.ice_servers: IceServerHints | None = None
        """What signaling's ``welcome`` advertises (see :mod:`holepunch.signaling.iceservers`)."""

    def parseOptions(self, options: Any = None) -> None:
        import sys

        self.argv: list[str] = list(sys.argv[1:] if options is None else options)
        """The arguments as given (the workers of ``--workers`` get them too)."""
        super().parseOptions(options)

    def postOptions(self) -> None:
        if not 1 <= self["workers"] <= 256:
            raise usage.UsageError("--workers must be between 1 and 256")
        if not 0 <= self["worker-index"] < self["workers"]:
            raise usage.UsageError("--worker-index must be below --workers")
        try:
            self.config = build_config(
                options={
                    "no-signaling": self["no-signaling"],
                    "peer-timeout": self["peer-timeout"],
                    "cleanup-interval": self["cleanup-interval"],
                    "log-level": self["log-level"],
                    "stun-servers": self["nat-stun-servers"],
                },
                environ=self.environ,
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        config = self.config
        # From here on the options hold the values in force, whichever source set them.
        if self["signaling"] is None:
            self["signaling"] = config.signaling_endpoint()
        self["no-signaling"] = int(not config.enable_signaling)
        self["peer-timeout"] = config.peer_timeout
        self["cleanup-interval"] = config.cleanup_interval
        self["log-level"] = config.log_level
        self._check_stun_addresses()
        if self["stun-alternate-address"] and not self["stun-interface"]:
            raise usage.UsageError(
                "--stun-alternate-address needs --stun-interface: RFC 5780 answers name the "
                "primary address, so the server must bind it explicitly"
            )
        if self["stun-alternate-address"] and self["stun-port"] == self["stun-alternate-port"]:
            raise usage.UsageError("--stun-alternate-port must differ from --stun-port")
        try:
            self.ice_servers = self._ice_server_hints()
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["redis"] = self["redis"] or self.environ.get("P2P_REDIS_URL") or None
        if self["redis"] is not None:
            from holepunch.signaling.redisstate import parse_redis_url

            try:
                parse_redis_url(self["redis"])
            except ValueError as e:
                raise usage.UsageError(f"--redis: {e}") from None
        if self["presence-ttl"] <= 0:
            raise usage.UsageError("--presence-ttl must be positive")
        for option in ("signaling", "http"):
            if self[option] and not (option == "signaling" and self["no-signaling"]):
                self._check_endpoint(option)
        if self["workers"] > 1 and not self["no-signaling"]:
            from holepunch.reuseport import check_shareable

            try:
                check_shareable(self["signaling"])
            except ValueError as e:
                raise usage.UsageError(f"--workers: {e}") from None

    def _check_endpoint(self, option: str) -> None:
        """The listener ``--option`` names can be made: a description that parses, and
        for ``ssl:`` certificate and key files that load (before anything starts)."""
        from holepunch.reuseport import server_endpoint

        try:
            server_endpoint(None, self[option])  # made, not listening: no reactor needed
        except Exception as e:
            raise usage.UsageError(f"--{option} {self[option]}: {e}") from None

    def _check_stun_addresses(self) -> None:
        """--stun-interface and --stun-alternate-address are IP addresses (in their normal
        form), and of one family."""
        versions = []
        for option in ("stun-interface", "stun-alternate-address"):
            value = self[option]
            if not value:
                continue
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                raise usage.UsageError(
                    f"--{option}: expected an IPv4 or IPv6 address, got {value!r}"
                ) from None
            self[option] = str(ip)
            versions.append(ip.version)
        if len(set(versions)) > 1:
            raise usage.UsageError(
                "--stun-alternate-address must be of the same family as --stun-interface"
            )

    def _ice_server_hints(self) -> IceServerHints | None:
        """What ``welcome`` names: our STUN ports and the configured TURN servers."""
        if self["no-ice-servers"]:
            return None
        from holepunch.turn.config import parse_turn_uri

        urls = self["turn-url"] or self.environ.get("P2P_ADVERTISED_TURN_URLS", "")
        turn = [parse_turn_uri(u) for u in urls.split(",") if u.strip()]
        secret = self["turn-secret"] or self.environ.get("P2P_TURN_SECRET") or None
        ports: list[int] = []
        if not self["no-stun"]:
            ports.append(self["stun-port"])
            if self["stun-alternate-port"] not in (0, self["stun-port"]):
                ports.append(self["stun-alternate-port"])
        if not ports and not turn:
            return None
        if self["stun-alternate-address"]:
            ports = ports[:1]  # RFC 5780 answers name the others
        return IceServerHints(
            stun_ports=tuple(p for p in ports if p),
            host=self["ice-host"] or None,
            turn_servers=tuple(turn),
            turn_secret=secret,
            turn_ttl=self["turn-ttl"],
        )


_LOG_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


def level_filter(observer: Any, level: str) -> ILogObserver:
    """``observer`` (new or legacy style) seeing only events at ``level`` or above."""
    if not ILogObserver.providedBy(observer):
        observer = LegacyLogObserverWrapper(observer)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LOG_LEVELS[level])
    return FilteringLogObserver(observer, [predicate])


def _twistd_log_observer(options: Options) -> ILogObserver | None:
    """twistd's own log observer (``--logfile``, ``--syslog``...) filtered at the level.

    None when not run by twistd, or when twistd was given its own ``--logger``.
    """
    twistd_options = getattr(options, "parent", None)
    if twistd_options is None or twistd_options.get("logger"):
        return None
    from twisted.scripts.twistd import _SomeApplicationRunner

    observer = _SomeApplicationRunner.loggerFactory(twistd_options)._getLogObserver()
    return level_filter(observer, options.config.log_level)


class DaemonService(MultiService):
    """The daemon's top service.

    Put in twistd's application, it sets the application's ``ILogObserver`` component
    (the hook twistd offers for a custom log observer) to ``log_observer``: the observer
    twistd would have made, behind the ``LOG_LEVEL`` filter.
    """

    log_observer: ILogObserver | None = None
    status: DaemonStatus | None = None
    """What the HTTP pages show."""
    metrics: Metrics | None = None
    """What ``/metrics`` shows."""

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if (
            self.log_observer is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver) is None
        ):
            parent.setComponent(ILogObserver, self.log_observer)


def check_redis_or_exit(url: str) -> None:
    """Stop start-up with one line naming ``url`` if that Redis cannot be used."""
    from holepunch.signaling.redisregistry import RedisUnavailable, check_redis
    from holepunch.signaling.redisstate import parse_redis_url

    try:
        check_redis(parse_redis_url(url))
    except RedisUnavailable as e:
        raise SystemExit(f"twistd holepunch: {e}") from None


def _worker_group() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _add_workers(
    top: MultiService, status: DaemonStatus, options: Options, reactor: Any, private: Any
) -> None:
    """``--workers``: counters shared between the workers and, in worker 0, the pool
    of the others (:mod:`holepunch.daemon.workers`)."""
    from holepunch.daemon.workers import WorkerPool, WorkerStats

    workers, index = options["workers"], options["worker-index"]
    share = getattr(status.signaling.registry, "share_stats", None) if status.signaling else None
    if share is not None:
        sources: dict[str, Any] = {"signaling": status.signaling.stats}  # type: ignore[union-attr]
        if status.stun is not None:
            sources["stun"] = status.own_stun_stats
        status.workers = WorkerStats(
            reactor, share, options["worker-group"], index, workers, sources
        )
        status.workers.setServiceParent(top)
    if index == 0:
        argv = [*options.argv, "--worker-group", options["worker-group"]]
        if private is not None:
            argv += ["--redis", private.url]
        if options["worker-links"] is not None:
            argv += ["--worker-links", options["worker-links"]]
        WorkerPool(reactor, workers, argv).setServiceParent(top)


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the daemon's service tree from parsed options."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    from holepunch.daemon.http import Exposure, install_http, make_http_service
    from holepunch.daemon.natservice import NatDiscoveryService
    from holepunch.daemon.status import DaemonStatus, daemon_metrics

    top = DaemonService()
    top.log_observer = _twistd_log_observer(options)
    status = DaemonStatus(reactor)
    workers, index = options["workers"], options["worker-index"]
    private_redis = None
    if workers > 1 and index == 0:
        options["worker-group"] = options["worker-group"] or _worker_group()
        if options["redis"] is None and not options["no-signaling"]:
            from holepunch.daemon.workers import PrivateRedis

            private_redis = PrivateRedis()
            private_redis.setServiceParent(top)  # first up, last down
            options["redis"] = private_redis.url
        if not options["no-signaling"]:
            from holepunch.daemon.workers import LinkDirectory

            links = LinkDirectory()
            links.setServiceParent(top)
            options["worker-links"] = links.path
    if not options["no-stun"]:
        from holepunch.stun.server import SOFTWARE, make_stun_service

        stun = make_stun_service(
            interface=options["stun-interface"],
            port=options["stun-port"],
            alternate_address=options["stun-alternate-address"],
            alternate_port=options["stun-alternate-port"],
            tcp=not options["no-stun-tcp"],
            reactor=reactor,
            rate=options["stun-rate"],
            burst=options["stun-burst"],
            reuse_port=workers > 1,
            software=SOFTWARE if options["stun-software"] else None,
        )
        stun.setServiceParent(top)
        status.stun = stun.getServiceNamed("stun")
    if not options["no-signaling"]:
        from holepunch.signaling.server import config_from_options, make_signaling_service

        config = dataclasses.replace(
            config_from_options(options), ice_servers=options.ice_servers, reuse_port=workers > 1
        )
        if config.redis_url is not None and private_redis is None:
            check_redis_or_exit(config.redis_url)
        signaling = make_signaling_service(config, reactor)
        signaling.setName("signaling")
        signaling.setServiceParent(top)
        status.signaling = signaling
    if options["discover-nat"]:
        status.nat = NatDiscoveryService(reactor, list(options.config.stun_servers))
        status.nat.setServiceParent(top)
    if workers > 1:
        _add_workers(top, status, options, reactor, private_redis)
    metrics = daemon_metrics(status)
    if status.signaling is not None:
        # The status pages on the public port: none when --http serves them; with auth,
        # only for requests carrying a valid token; else public, as for local use.
        secret = status.signaling.config.auth_secret
        if options["http"]:
            exposure = Exposure.HEALTH_ONLY
        elif secret:
            exposure = Exposure.TOKEN
        else:
            exposure = Exposure.PUBLIC
        install_http(status.signaling.root, status, metrics, exposure, secret, reactor)
    if options["http"]:
        make_http_service(options["http"], status, metrics, reactor).setServiceParent(top)
    top.status, top.metrics = status, metrics
    return top

# -*- test-case-name: tests.integration.test_coordinator -*-
"""``P2PCoordinator``: the one object the seed's users know, as a Twisted service.

It detects the NAT, hosts a signaling server and/or joins a remote one, and returns a
working connection to a peer by the best method that works (the ICE engine: direct, UDP
hole punching, port prediction, birthday probing; TURN when configured). The seed's API
in Python names, with its camelCase names as thin aliases::

    p2p = P2PCoordinator({"signaling_port": 8080, "enable_signaling": True}, peer_id="me")
    await p2p.initialize()
    p2p.on("peer-connected", lambda event: print(event["peerId"], event["method"]))
    connection = await p2p.connect_to_peer("peer-123")
    await p2p.shutdown()

Events (``on(name, callback)``, each callback gets one dict): ``initialized``,
``hole-punching-ready``, ``peer-registered``, ``peer-joined-room``, ``peer-left-room``,
``peer-connected``, ``peer-disconnected``, and (not the seed's) ``secure-session``,
``signaling-disconnected`` (``{url, code, reason, wasClean, rooms}``: the registration
on the signaling server was lost; the client reconnects with backoff and jitter) and
``signaling-reconnected`` (``{url, attempt, downtime_ms, resumed, rooms, failedRooms}``:
registered again, ``resumed`` by the reconnect token or afresh after a server restart,
and back in ``rooms``). Connections and secure sessions already made do not depend on
signaling: an outage leaves them alone. With a :class:`holepunch.daemon.metrics.Metrics`
as ``metrics``, both are counted on ``/metrics`` too. It
implements :class:`holepunch.interfaces.IStatusProvider`, so the daemon's HTTP endpoints
can serve it.

**What is encrypted.** :meth:`P2PCoordinator.connect_to_peer` gives the seed's
connection: raw datagrams on the punched path, *not* encrypted (ICE's own checks are
authenticated with the credentials exchanged over signaling, the application's
datagrams are not). :meth:`P2PCoordinator.open_stream` and
:meth:`P2PCoordinator.listen_streams` carry Twisted protocols over QUIC streams on a
separate path to the same peer: encrypted, and bound to the certificate fingerprint each
side signaled (the coordinator's ``identity``, from ``identity_dir``, else one per process).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from holepunch.config import DEFAULT_STUN_SERVERS
from holepunch.ice.config import IceConfig
from holepunch.ice.connection import PeerConnection
from holepunch.interfaces import IStatusProvider
from holepunch.nat.model import NatInfo, NatType, recommended_strategy
from holepunch.punch.udp import PunchTimeout, one_sided_punch
from holepunch.quic.identity import PeerIdentity
from holepunch.quic.session import QuicSession
from holepunch.subscription import Subscription

_log = Logger()

EVENTS = frozenset(
    {
        "initialized",
        "hole-punching-ready",
        "peer-registered",
        "peer-joined-room",
        "peer-left-room",
        "peer-connected",
        "peer-disconnected",
        "secure-session",
        "signaling-disconnected",
        "signaling-reconnected",
        "relay-lost",
        "relay-reallocated",
        "path-changed",
        "ice-restart",
    }
)

Callback = Callable[[dict[str, Any]], object]


_PROCESS_IDENTITY: list[PeerIdentity] = []


def process_identity() -> PeerIdentity:
    """This process's identity for coordinators given no ``identity_dir`` (made once,
    kept in memory only)."""
    if not _PROCESS_IDENTITY:
        _PROCESS_IDENTITY.append(PeerIdentity.generate())
    return _PROCESS_IDENTITY[0]


class CoordinatorError(Exception):
    """A coordinator call that cannot be served (not initialized, unknown peer, ...)."""


@dataclass
class RegisteredPeer:
    """A peer known out of band (a DHT, a tracker): its address and metadata."""

    peer_id: str
    address: str | None
    port: int | None
    metadata: dict[str, Any]


@dataclass
class Opening:
    """A secure session being negotiated, and the calls waiting for it."""

    attempt: defer.Deferred[QuicSession]
    waiters: list[defer.Deferred[QuicSession]] = field(default_factory=list)


@implementer(IStatusProvider)
class P2PCoordinator(MultiService):
    """NAT detection, signaling and connections to peers, as one service.

    :param config: a :class:`holepunch.config.P2PConfig`, or a mapping of its keys
        (snake_case, or the seed's camelCase in the seed's units).
    :param peer_id: this peer's id on signaling (default: a random one).
    :param metadata: sent with the registration.
    :param ice_config: override the ICE agents' settings (tests use it to keep agents on
        127.0.0.1).
    :param nat_detection: run NAT discovery in :meth:`initialize` (default True).
    :param accept_offer: ``accept_offer(peer_id, offer)`` says whether to answer a peer's
        offer (the offer's payload, a dict). An answered offer makes this host send ICE
        checks, and TURN permissions, to the addresses the offer names, so the default
        answers only peers of the rooms this coordinator joined
        (:meth:`shares_room_with`); pass ``lambda peer_id, offer: True`` to answer
        anyone the signaling server relays (it relays only between peers that share a
        room unless run with ``--open-relay``).
    """

    def __init__(
        self,
        config: Any = None,
        *,
        reactor: Any = None,
        peer_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ice_config: IceConfig | None = None,
        nat_detection: bool = True,
        environ: Mapping[str, str] | None = None,
        accept_offer: Callable[[str, dict[str, Any]], bool] | None = None,
        **explicit: Any,
    ) -> None:
        super().__init__()
        self.accept_offer: Callable[[str, dict[str, Any]], bool] = (
            accept_offer if accept_offer is not None else self._offer_from_room_peer
        )
        """The policy deciding which offers are answered (see the class doc)."""
        self.room_members: dict[str, set[str]] = {}
        """The other peers of each room joined through :meth:`join_room`, as signaled."""
        from holepunch.config import P2PConfig, build_config

        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        if isinstance(config, P2PConfig):
            self.config = config
            if explicit:
                from dataclasses import replace

                from holepunch.config import explicit_values

                self.config = replace(config, **explicit_values(explicit))
        else:
            self.config = build_config(
                {**dict(config or {}), **explicit}, environ=environ if environ is not None else None
            )
        self.config.validate()
        import secrets

        self.peer_id = peer_id or f"peer-{secrets.token_hex(6)}"
        self.metadata = dict(metadata or {})
        self.nat_detection = nat_detection
        self.initialized = False
        self.nat_info: NatInfo | None = None
        self.signaling_server: Any = None
        self.signaling_client: Any = None
        self.negotiator: Any = None
        self.connections: dict[str, PeerConnection] = {}
        self.registered_peers: dict[str, RegisteredPeer] = {}
        self.identity = (
            PeerIdentity.load_or_create(self.config.identity_dir)
            if self.config.identity_dir is not None
            else process_identity()
        )
        """Our key and certificate: its fingerprint is signaled, the streams bind to it."""
        self.sessions: dict[str, QuicSession] = {}
        """The secure session of each peer (the newest), for :meth:`open_stream`."""
        self._all_sessions: set[QuicSession] = set()
        self._opening: dict[str, Opening] = {}
        self._stream_factory: Any = None
        self.metrics: Any = None
        self._ice_config = ice_config
        self._subscribers: dict[str, list[Callback]] = {}
        self._init_d: defer.Deferred[dict[str, Any]] | None = None
        self.stats_counters: dict[str, int] = {"attempts": 0, "successes": 0, "failures": 0}
        self.by_method: dict[str, int] = {}

    # -- events -----------------------------------------------------------------------

    def on(self, event: str, callback: Callback) -> Subscription[Callback]:
        """Call ``callback(event_dict)`` for every ``event``; returns a :class:`Subscription`."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events are {sorted(EVENTS)}")
        callbacks = self._subscribers.setdefault(event, [])
        callbacks.append(callback)
        return Subscription(callbacks, callback)

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        for callback in list(self._subscribers.get(event, ())):
            try:
                callback(payload)
            except Exception:
                _log.failure("handler of {event!r} raised", event=event)

    # -- life cycle -------------------------------------------------------------------

    def initialize(self) -> defer.Deferred[dict[str, Any]]:
        """Start everything that is enabled; detect the NAT. Fires with the seed's
        ``initialized`` payload: ``{signaling, holePunching, natInfo}``. Calling it again
        gives the same result; after a failure it starts over."""
        if self._init_d is None:
            self._init_d = defer.ensureDeferred(self._initialize())
        shared = self._init_d
        forked: defer.Deferred[dict[str, Any]] = defer.Deferred()

        def both(result: Any) -> Any:
            if isinstance(result, Failure):
                if self._init_d is shared:
                    self._init_d = None
                forked.errback(result)
                return None
            forked.callback(result)
            return result

        shared.addBoth(both)
        return forked

    async def _initialize(self) -> dict[str, Any]:
        if not self.running:
            self.startService()
        config = self.config
        if config.enable_signaling:
            from holepunch.signaling.server import SignalingConfig, make_signaling_service

            interface = config.signaling_interface
            endpoint = f"tcp:{config.signaling_port}" + (
                f":interface={interface}" if interface else ""
            )
            self.signaling_server = make_signaling_service(
                SignalingConfig(
                    endpoint=endpoint,
                    peer_timeout=config.peer_timeout,
                    cleanup_interval=config.cleanup_interval,
                ),
                self.reactor,
            )
            self.signaling_server.setName("signaling-server")
            self.signaling_server.setServiceParent(self)
            port = await self.signaling_server.when_listening()
            _log.info("signaling server on port {port}", port=port.getHost().port)
        url = config.signaling_url
        if url is None and self.signaling_server is not None:
            port = self.signaling_server.port.getHost()
            host = config.signaling_interface or "127.0.0.1"
            url = f"ws://{host if host not in ('0.0.0.0', '') else '127.0.0.1'}:{port.port}/"
        if url is not None and config.enable_hole_punching:
            await self._join_signaling(url)
        if config.enable_hole_punching and self.nat_detection and config.stun_servers:
            await self._detect_nat()
        self.initialized = True
        payload = {
            "signaling": self.signaling_server is not None or self.signaling_client is not None,
            "holePunching": config.enable_hole_punching,
            "natInfo": self.get_nat_info(),
        }
        self._emit("initialized", payload)
        return payload

    async def _join_signaling(self, url: str) -> None:
        from holepunch.ice.negotiation import Negotiator
        from holepunch.signaling.client import RECONNECTED, REGISTRATION_LOST, SignalingClient

        urls = url.split(",")  # several: the nodes of one service, tried in turn
        client = SignalingClient(urls, self.peer_id, self.metadata, reactor=self.reactor)
        client.setName("signaling-client")
        client.setServiceParent(self)
        self.signaling_client = client
        client.on("peer-joined", self._peer_joined)
        client.on("peer-left", self._peer_left)
        client.on(REGISTRATION_LOST, self._signaling_lost)
        client.on(RECONNECTED, self._signaling_back)
        try:
            await client.register()
        except Exception as e:
            raise CoordinatorError(f"could not register on {url}: {e}") from e
        self.negotiator = Negotiator(
            self.reactor,
            client,
            self._ice(client.ice_servers.stun_servers),
            max_retries=self.config.max_retries,
            identity=self.identity,
            accept_offer=lambda peer_id, offer: self.accept_offer(peer_id, offer),
        )
        self.negotiator.on_connection = self._incoming
        self.negotiator.on_secure_session = self._secure_session

    async def _detect_nat(self) -> None:
        from holepunch.nat.discovery import discover_nat

        interface = ""
        if self._ice_config is not None and self._ice_config.gathering.addresses:
            interface = self._ice_config.gathering.addresses[0]
        try:
            self.nat_info = await discover_nat(
                self.reactor, list(self.config.stun_servers), interface=interface
            )
        except Exception as e:
            _log.warn("NAT detection failed: {err}", err=e)
            self.nat_info = None
            return
        if self.negotiator is not None:
            self.negotiator.nat = self.nat_info
        self._emit("hole-punching-ready", self.nat_info.to_json())

    def _ice(self, advertised_stun: Sequence[tuple[str, int]] = ()) -> IceConfig:
        """The agents' settings: ``ice_config``, then the coordinator's config. STUN
        servers the signaling server advertised replace the built-in defaults (Google's
        and Cloudflare's), not servers the user configured."""
        base = self._ice_config or IceConfig()
        from dataclasses import replace

        turn = list(base.relay.servers) or list(self.config.turn_servers)
        gathering = base.gathering
        stun = tuple(self.config.stun_servers)
        if advertised_stun and stun == tuple(DEFAULT_STUN_SERVERS):
            stun = tuple(advertised_stun)
        return replace(
            base,
            gathering=replace(
                gathering,
                stun_servers=gathering.stun_servers or stun,
                port=gathering.port or self.config.hole_punching_port,
            ),
            relay=replace(base.relay, servers=tuple(turn)),
            checks=replace(base.checks, connection_timeout=self.config.connection_timeout),
            consent=replace(base.consent, keepalive_interval=self.config.keep_alive_interval),
        )

    def stopService(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        for session in list(self._all_sessions):
            session.close("coordinator shut down")
        for opening in list(self._opening.values()):
            opening.attempt.cancel()
        for peer_id, connection in list(self.connections.items()):
            if not connection.closed:
                await connection.close()
            self.connections.pop(peer_id, None)
        if self.negotiator is not None:
            await self.negotiator.stop()
        if self.running:
            await MultiService.stopService(self)
        self.initialized = False

    def shutdown(self) -> defer.Deferred[None]:
        """Close every connection, socket and timer; stop the servers."""
        return self.stopService()

    # -- peers ------------------------------------------------------------------------

    def register_peer(self, peer_id: str, info: Mapping[str, Any] | None = None) -> RegisteredPeer:
        """Remember a peer known out of band: ``{address, port, metadata}``."""
        info = dict(info or {})
        port = info.get("port")
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise ValueError(f"port must be 1-65535, got {port!r}")
        peer = RegisteredPeer(peer_id, info.get("address"), port, dict(info.get("metadata") or {}))
        self.registered_peers[peer_id] = peer
        self._emit("peer-registered", {"peerId": peer_id, "metadata": peer.metadata})
        return peer

    def connect_to_peer(self, peer_id: str) -> defer.Deferred[PeerConnection]:
        """A connection to ``peer_id`` by the best method that works.

        A peer on signaling gets the full engine (with ``max_retries``). A peer only
        registered out of band (an address from a DHT or tracker) is tried directly
        (UDP, both sides sending: a one-sided punch). Fails with a clear error.
        """
        return defer.ensureDeferred(self._connect(peer_id))

    async def _connect(self, peer_id: str) -> PeerConnection:
        if not self.initialized:
            raise CoordinatorError("call initialize() first")
        existing = self.connections.get(peer_id)
        if existing is not None and not existing.closed:
            return existing
        self.stats_counters["attempts"] += 1
        started = self.reactor.seconds()
        try:
            if self.negotiator is not None:
                try:
                    connection = await self.negotiator.connect(peer_id)
                except Exception as e:
                    registered = self.registered_peers.get(peer_id)
                    if registered is None or registered.address is None:
                        raise
                    _log.info(
                        "signaling could not reach {peer} ({err}); trying its address",
                        peer=peer_id,
                        err=e,
                    )
                    connection = await self._direct(registered)
            else:
                registered = self.registered_peers.get(peer_id)
                if registered is None or registered.address is None:
                    raise CoordinatorError(
                        f"peer {peer_id!r} is neither on signaling nor registered with an address"
                    )
                connection = await self._direct(registered)
        except Exception:
            self.stats_counters["failures"] += 1
            raise
        self._connected(peer_id, connection, self.reactor.seconds() - started)
        return connection

    async def _direct(self, peer: RegisteredPeer) -> Any:
        assert peer.address is not None and peer.port is not None
        ice = self._ice()
        addresses = ice.gathering.addresses
        interface = addresses[0] if addresses and len(addresses) == 1 else ""
        try:
            return await one_sided_punch(
                self.reactor,
                (peer.address, peer.port),
                interface=interface,
                port=ice.gathering.port,
                timeout=self.config.connection_timeout,
            )
        except PunchTimeout as e:
            raise CoordinatorError(str(e)) from None

    def _incoming(self, peer_id: str, connection: PeerConnection) -> None:
        self._connected(peer_id, connection, None)

    def _connected(self, peer_id: str, connection: PeerConnection, seconds: float | None) -> None:
        self.connections[peer_id] = connection
        self.stats_counters["successes"] += 1
        self.by_method[connection.method] = self.by_method.get(connection.method, 0) + 1
        if self.metrics is not None and seconds is not None:
            self.metrics.observe_connection(connection.method, seconds)

        def gone(reason: str) -> None:
            if self.connections.get(peer_id) is connection:
                del self.connections[peer_id]
            self._emit("peer-disconnected", {"peerId": peer_id, "reason": reason})

        connection.on_disconnected(gone)
        self._watch_path(peer_id, connection)
        self._emit(
            "peer-connected",
            {"peerId": peer_id, "connection": connection, "method": connection.method},
        )

    def _watch_path(self, peer_id: str, connection: Any) -> None:
        """Events (and /metrics counters) for what happens under a connection: path
        changes, ICE restarts, a TURN relay lost and replaced."""
        metrics = self.metrics

        def moved(c: Any) -> None:
            reason = getattr(c, "path_change_reason", "upgrade")
            if metrics is not None:
                metrics.observe_path_change(reason)
            self._emit(
                "path-changed",
                {"peerId": peer_id, "method": c.method, "reason": reason,
                 "local": c.local, "remote": c.remote},
            )  # fmt: skip

        def restarting(info: Any) -> None:
            if metrics is not None and info.state == "started":
                metrics.observe_ice_restart(info.reason)
            self._emit(
                "ice-restart",
                {"peerId": peer_id, "state": info.state, "reason": info.reason,
                 "generation": info.generation, "elapsed_ms": round(info.elapsed * 1000, 1)},
            )  # fmt: skip

        def relay_event(kind: str, detail: str) -> None:
            if metrics is not None:
                metrics.observe_relay_event(kind)
            if kind in EVENTS:
                self._emit(kind, {"peerId": peer_id, "detail": detail})

        if hasattr(connection, "on_path_changed"):
            connection.on_path_changed(moved)
        if hasattr(connection, "on_restart"):
            connection.on_restart(restarting)
        agent = getattr(connection, "agent", None)
        if agent is not None and hasattr(agent, "on_relay_event"):
            agent.on_relay_event = relay_event

    def shares_room_with(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is in a room this coordinator joined."""
        return any(peer_id in members for members in self.room_members.values())

    def _offer_from_room_peer(self, peer_id: str, offer: dict[str, Any]) -> bool:
        return self.shares_room_with(peer_id)

    def _peer_joined(self, message: dict[str, Any]) -> None:
        room, peer = message.get("roomId"), message.get("peerId")
        if isinstance(room, str) and isinstance(peer, str) and room in self.room_members:
            self.room_members[room].add(peer)
        self._emit(
            "peer-joined-room",
            {
                "peerId": message.get("peerId"),
                "roomId": message.get("roomId"),
                "metadata": message.get("metadata", {}),
            },
        )

    def _signaling_lost(self, message: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.observe_signaling_disconnect()
        self._emit("signaling-disconnected", {"url": self.signaling_client.url, **message})

    def _signaling_back(self, message: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.observe_signaling_reconnect(
                message["downtime_ms"] / 1000.0, bool(message["resumed"])
            )
        self._emit("signaling-reconnected", {"url": self.signaling_client.url, **message})

    def _peer_left(self, message: dict[str, Any]) -> None:
        room, peer = message.get("roomId"), message.get("peerId")
        if isinstance(room, str) and room in self.room_members:
            self.room_members[room].discard(str(peer))
        self._emit(
            "peer-left-room", {"peerId": message.get("peerId"), "roomId": message.get("roomId")}
        )

    # -- encrypted streams ------------------------------------------------------------

    def open_stream(self, peer_id: str, protocol_or_factory: Any) -> defer.Deferred[Any]:
        """Open an encrypted stream to ``peer_id`` for a protocol (or one a factory
        builds); fires with the protocol once connected.

        The first stream to a peer negotiates a secure session (ICE, then QUIC, bound to
        the fingerprint the peer signaled); later streams reuse it. The peer must be on
        signaling, and its streams go to its :meth:`listen_streams` factory.
        """
        return defer.ensureDeferred(self._open_stream(peer_id, protocol_or_factory))

    async def _open_stream(self, peer_id: str, protocol_or_factory: Any) -> Any:
        session = await self.secure_session(peer_id)
        return await session.open_stream(protocol_or_factory)

    def secure_session(self, peer_id: str) -> defer.Deferred[QuicSession]:
        """The secure session to ``peer_id`` (made if there is none yet, or shared with
        a call under way). Cancelling stops waiting; the attempt goes on while others
        wait for it."""
        if not self.initialized:
            return defer.fail(CoordinatorError("call initialize() first"))
        if self.negotiator is None:
            return defer.fail(
                CoordinatorError(
                    "encrypted streams need signaling (signaling_url or enable_signaling)"
                )
            )
        existing = self.sessions.get(peer_id)
        if existing is not None and existing.closed is None:
            return defer.succeed(existing)
        waiters = self._opening.get(peer_id)

        def cancel(d: defer.Deferred[QuicSession]) -> None:
            current = self._opening.get(peer_id)
            if current is not None and d in current.waiters:
                current.waiters.remove(d)
                if not current.waiters:
                    current.attempt.cancel()

        waiter: defer.Deferred[QuicSession] = defer.Deferred(cancel)
        if waiters is None:
            attempt = self.negotiator.connect_secure(peer_id)
            waiters = Opening(attempt)
            self._opening[peer_id] = waiters
            attempt.addBoth(self._opened, peer_id, waiters)
        waiters.waiters.append(waiter)
        return waiter

    def _opened(self, result: Any, peer_id: str, opening: Opening) -> None:
        if self._opening.get(peer_id) is opening:
            del self._opening[peer_id]
        if isinstance(result, QuicSession):
            self._secure_session(peer_id, result)
        waiters, opening.waiters = opening.waiters, []
        for d in waiters:
            if d.called:
                continue
            if isinstance(result, QuicSession):
                d.callback(result)
            else:
                d.errback(result)

    def listen_streams(self, factory: Any) -> None:
        """Build a protocol with ``factory`` for each stream a peer opens (on every
        secure session, present and future); ``buildProtocol`` gets a
        :class:`holepunch.quic.streams.QuicStreamAddress` naming the peer's id and
        fingerprint. None refuses streams again."""
        self._stream_factory = factory
        for session in self._all_sessions:
            session.listen_streams(factory)

    def _secure_session(self, peer_id: str, session: QuicSession) -> None:
        if session in self._all_sessions:
            return
        self._all_sessions.add(session)
        self.sessions[peer_id] = session
        if self._stream_factory is not None:
            session.listen_streams(self._stream_factory)

        def closed(_reason: Exception) -> None:
            self._all_sessions.discard(session)
            if self.sessions.get(peer_id) is session:
                del self.sessions[peer_id]

        session.on_closed(closed)
        path = self.negotiator.path_of(session) if self.negotiator is not None else None
        if path is not None:
            self._watch_path(peer_id, path)
        self._emit(
            "secure-session",
            {"peerId": peer_id, "session": session, "fingerprint": session.peer_fingerprint},
        )

    # -- rooms ------------------------------------------------------------------------

    def join_room(self, room_id: str) -> defer.Deferred[list[dict[str, Any]]]:
        """Join a room on signaling; fires with its other peers."""
        d: defer.Deferred[list[dict[str, Any]]] = self._client().join_room(room_id)

        def joined(peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
            members = self.room_members.setdefault(room_id, set())
            members.update(str(p.get("peerId")) for p in peers if p.get("peerId") is not None)
            return peers

        return d.addCallback(joined)

    def leave_room(self, room_id: str) -> defer.Deferred[None]:
        """Leave a room."""
        self.room_members.pop(room_id, None)
        return self._client().leave_room(room_id)

    def get_room_peers(self, room_id: str) -> defer.Deferred[list[dict[str, Any]]]:
        """The other peers of a room this peer is in."""
        return self._client().get_room_peers(room_id)

    def _client(self) -> Any:
        if self.signaling_client is None:
            raise CoordinatorError(
                "no signaling: set enable_signaling or signaling_url and initialize()"
            )
        return self.signaling_client

    # -- information ------------------------------------------------------------------

    def get_nat_info(self) -> dict[str, Any] | None:
        """The seed's ``{type, publicAddress, localPort, hairpinning, portPredictable}``
        plus the RFC 5780 fields; None before detection (or when it failed)."""
        return self.nat_info.to_json() if self.nat_info is not None else None

    def get_recommended_strategy(self) -> dict[str, Any] | None:
        """``{strategy, recommendation, methods, difficulty, natType, ...}``."""
        return recommended_strategy(self.nat_info) if self.nat_info is not None else None

    def get_nat_families(self) -> dict[str, Any] | None:
        """None: the coordinator checks one family (``discover_nat``), shown by
        :meth:`get_nat_info`."""
        return None

    def get_stats(self) -> dict[str, Any]:
        """``{initialized, natInfo, activeConnections, signaling, holePunching}``."""
        active = [c for c in self.connections.values() if not c.closed]
        signaling: dict[str, Any] = {
            "server": self.signaling_server.stats() if self.signaling_server is not None else None,
            "client": {
                "connected": self.signaling_client.connected,
                "registered": self.signaling_client.registered,
                "rooms": list(self.signaling_client.rooms),
                "disconnects": self.signaling_client.disconnects,
                "reconnects": self.signaling_client.reconnects,
            }
            if self.signaling_client is not None
            else None,
        }
        if self.signaling_server is not None:
            signaling["peers"] = self.signaling_server.stats().get("peers")
        return {
            "initialized": self.initialized,
            "natInfo": self.get_nat_info(),
            "activeConnections": len(active),
            "signaling": signaling,
            "holePunching": {
                "enabled": self.config.enable_hole_punching,
                **self.stats_counters,
                "byMethod": dict(self.by_method),
                "connections": {
                    peer: {"method": c.method, "local": list(c.local), "remote": list(c.remote)}
                    for peer, c in self.connections.items()
                    if not c.closed
                },
            },
        }

    def health_check(self) -> defer.Deferred[dict[str, Any]]:
        """``{status, initialized, timestamp, services}``; status is ``healthy`` when
        everything enabled is up."""
        services: dict[str, Any] = {}
        healthy = self.initialized
        if self.config.enable_signaling:
            up = self.signaling_server is not None and self.signaling_server.port is not None
            services["signalingServer"] = "up" if up else "down"
            healthy = healthy and up
        if self.signaling_client is not None:
            services["signaling"] = (
                "registered" if self.signaling_client.registered else "disconnected"
            )
            healthy = healthy and self.signaling_client.registered
        services["holePunching"] = "enabled" if self.config.enable_hole_punching else "disabled"
        services["nat"] = self.nat_info.type.value if self.nat_info is not None else "unknown"
        return defer.succeed(
            {
                "status": "healthy" if healthy else "unhealthy",
                "initialized": self.initialized,
                "timestamp": int(self.reactor.seconds() * 1000),
                "services": services,
            }
        )

    # -- the seed's names -------------------------------------------------------------

    registerPeer = register_peer
    connectToPeer = connect_to_peer
    getNATInfo = get_nat_info
    getRecommendedStrategy = get_recommended_strategy
    getStats = get_stats
    healthCheck = health_check
    getRoomPeers = get_room_peers
    joinRoom = join_room
    openStream = open_stream
    listenStreams = listen_streams


__all__ = ["EVENTS", "CoordinatorError", "NatType", "P2PCoordinator", "RegisteredPeer"]

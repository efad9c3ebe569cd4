# -*- test-case-name: tests.integration.test_endpoints -*-
"""Twisted endpoints over hole-punched, encrypted QUIC streams.

:class:`HolepunchClientEndpoint` (``IStreamClientEndpoint``) reaches a peer by its id
on a signaling server: it registers our own id, runs ICE (hole punching, TURN as
configured) and QUIC over the path (:meth:`holepunch.ice.negotiation.Negotiator.connect_secure`),
and opens one stream for the factory's protocol. :class:`HolepunchServerEndpoint`
(``IStreamServerEndpoint``) registers an id and accepts secure sessions from any peer;
every stream a peer opens gets a protocol from the factory. Any Twisted protocol runs
unchanged: the stream is its transport (:class:`holepunch.quic.streams.QuicStreamTransport`).

Endpoint strings (Twisted's ``clientFromString`` and ``serverFromString``; the plugin
is ``twisted/plugins/holepunch_endpoints.py``)::

    holepunch:peer=bob:signaling=ws\\://127.0.0.1\\:8080/:id=alice
    holepunch:signaling=wss\\://signal.example.com/:id=bob:identity=/var/lib/bob

Their parsing is pure (:func:`parse_client_string`, :func:`parse_server_string`: no
reactor, no sockets); :class:`SignalingRegistry` shares one signaling client and one
negotiator per (reactor, URL, own id), so a client and a server endpoint of one peer
use the same registration (a second registration of the id would evict the first).

**The binding to the signaled identity.** Each side sends its certificate fingerprint
in the offer/answer it relays through the signaling server; the QUIC handshake checks
that the peer holds the key of a certificate with exactly that fingerprint. A stream
from a client endpoint is therefore encrypted end to end and reaches the holder of the
key that the peer registered as ``peer`` announced; it is as trustworthy as the
signaling server's word that ``peer`` is who you think (use ``wss://`` and a token).
:meth:`getPeer() <holepunch.quic.streams.QuicStreamTransport.getPeer>` gives the peer's
id and fingerprint, which an application can pin (a fingerprint stays the same while
the peer keeps its identity directory).
"""

from __future__ import annotations

import difflib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error, interfaces
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from holepunch.ice.config import IceConfig
from holepunch.ice.events import IceError
from holepunch.ice.negotiation import Negotiator
from holepunch.quic.identity import PeerIdentity
from holepunch.quic.session import PeerAuthenticationError, QuicSession, SessionClosed
from holepunch.signaling.client import SignalingClient, direct_room

_log = Logger()

DEFAULT_TIMEOUT = 30.0
"""Seconds a client endpoint's ``connect`` may take, signaling, ICE and QUIC together."""


# -- errors --------------------------------------------------------------------------


class HolepunchConnectError(error.ConnectError):
    """A client endpoint could not connect; ``stage`` says where it failed
    (``signaling``, ``ice``, ``authentication``, ``quic``, ``stream``, ``timeout``)."""

    stage = "connect"

    def __init__(self, peer_id: str, detail: str) -> None:
        super().__init__(string=f"holepunch to {peer_id!r}, {self.stage}: {detail}")
        self.peer_id = peer_id
        self.detail = detail


class SignalingFailed(HolepunchConnectError):
    """Registering on the signaling server, or reaching the peer through it, failed."""

    stage = "signaling"


class NegotiationFailed(HolepunchConnectError):
    """ICE found no path to the peer (``ice_stage`` is the ICE stage that failed)."""

    stage = "ice"

    def __init__(self, peer_id: str, detail: str, ice_stage: str = "") -> None:
        super().__init__(peer_id, detail)
        self.ice_stage = ice_stage


class AuthenticationFailed(HolepunchConnectError):
    """The peer's certificate is not the one whose fingerprint it signaled."""

    stage = "authentication"


class QuicFailed(HolepunchConnectError):
    """The QUIC session over the path failed or closed before the stream opened."""

    stage = "quic"


class StreamFailed(HolepunchConnectError):
    """The stream could not be opened (the factory built no protocol, say)."""

    stage = "stream"


class ConnectTimedOut(HolepunchConnectError, error.TimeoutError):
    """``connect`` took longer than the endpoint's ``timeout``."""

    stage = "timeout"


class ListenFailed(error.CannotListenError):
    """A server endpoint could not register (or is already listening as that id)."""

    def __init__(self, peer_id: str, detail: str) -> None:
        super().__init__(f"holepunch:{peer_id}", 0, Exception(detail))
        self.peer_id = peer_id
        self.detail = detail

    def __str__(self) -> str:
        return f"holepunch: cannot listen as {self.peer_id!r}: {self.detail}"


class EndpointStringError(ValueError):
    """A ``holepunch:`` endpoint string is missing an option or has a bad one."""


# -- options (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointOptions:
    """What a ``holepunch:`` endpoint needs, checked."""

    signaling: str
    """The signaling server's ``ws://`` or ``wss://`` URL."""
    peer_id: str
    """Our own id on it."""
    token: str | None = None
    """An auth token for the signaling server."""
    identity_dir: str | None = None
    """Where our key and certificate live (:meth:`PeerIdentity.load_or_create`); None: a
    fresh identity for the registration."""
    stun_servers: tuple[tuple[str, int], ...] = ()
    """STUN servers for server-reflexive candidates (none: those the signaling server
    advertises)."""
    hosts: tuple[str, ...] | None = None
    """Local addresses for host candidates (None: every usable one)."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds a connect may take (ICE's own limit too)."""
    wait: float = 0.0
    """Seconds a client waits for the peer to register (0: it must be there)."""

    def ice_config(self) -> IceConfig:
        """The ICE agents' settings these options ask for."""
        from dataclasses import replace

        config = IceConfig.on(*self.hosts) if self.hosts is not None else IceConfig()
        return replace(
            config,
            gathering=replace(config.gathering, stun_servers=self.stun_servers),
            checks=replace(config.checks, connection_timeout=self.timeout),
        )

    def registration_key(self) -> tuple[Any, ...]:
        """What must agree between endpoints that share one registration."""
        return (self.token, self.identity_dir, self.stun_servers, self.hosts)


_COMMON_KEYS = ("signaling", "id", "token", "identity", "stun", "host", "timeout")
CLIENT_KEYS = (*_COMMON_KEYS, "peer", "wait")
"""The options of a client endpoint string."""
SERVER_KEYS = _COMMON_KEYS
"""The options of a server endpoint string."""


def parse_client_string(
    args: Sequence[str], kwargs: Mapping[str, str]
) -> tuple[str, EndpointOptions]:
    """The peer to reach and the options, from ``clientFromString``'s arguments
    (``holepunch:bob:signaling=...`` or ``holepunch:peer=bob:signaling=...``).

    Without ``id`` a random one (``endpoint-...``) is registered.

    :raises EndpointStringError: naming the missing or bad option.
    """
    values = _keywords(args, kwargs, CLIENT_KEYS, "peer", "client")
    peer = values.pop("peer", None)
    if not peer:
        raise EndpointStringError("holepunch client endpoint: peer= is required (the peer's id)")
    wait = _seconds(values.pop("wait", "0"), "wait", allow_zero=True)
    values.setdefault("id", f"endpoint-{secrets.token_hex(6)}")
    options = _options(values)
    from dataclasses import replace

    return peer, replace(options, wait=wait)


def parse_server_string(args: Sequence[str], kwargs: Mapping[str, str]) -> EndpointOptions:
    """The options of ``serverFromString``'s arguments (``holepunch:signaling=...:id=bob``
    or ``holepunch:bob:signaling=...``).

    :raises EndpointStringError: naming the missing or bad option.
    """
    values = _keywords(args, kwargs, SERVER_KEYS, "id", "server")
    if not values.get("id"):
        raise EndpointStringError("holepunch server endpoint: id= is required (our id)")
    return _options(values)


def _keywords(
    args: Sequence[str], kwargs: Mapping[str, str], known: Sequence[str], positional: str, kind: str
) -> dict[str, str]:
    if len(args) > 1:
        raise EndpointStringError(
            f"holepunch {kind} endpoint: one positional argument at most (the {positional}), "
            f"got {list(args)!r}; options are key=value"
        )
    values = dict(kwargs)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise EndpointStringError(
                f"holepunch {kind} endpoint: unknown option {key!r}{hint}; "
                f"options are {', '.join(known)}"
            )
    if args:
        if positional in values:
            raise EndpointStringError(
                f"holepunch {kind} endpoint: {positional} given twice ({args[0]!r} and "
                f"{positional}={values[positional]!r})"
            )
        values[positional] = args[0]
    return values


def _options(values: dict[str, str]) -> EndpointOptions:
    from urllib.parse import urlsplit

    from holepunch.stun.client import parse_server

    url = values.get("signaling")
    if not url:
        raise EndpointStringError(
            "holepunch endpoint: signaling= is required (ws://host:port/, with its colons "
            "escaped: signaling=ws\\://host\\:8080/)"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise EndpointStringError(
            f"holepunch endpoint: signaling= must be a ws:// or wss:// URL, got {url!r} "
            "(escape its colons: ws\\://host\\:8080/)"
        )
    stun: list[tuple[str, int]] = []
    for spec in _list(values.get("stun")):
        try:
            stun.append(parse_server(spec))
        except ValueError as e:
            raise EndpointStringError(f"holepunch endpoint: stun=: {e}") from None
    hosts = _list(values.get("host"))
    return EndpointOptions(
        signaling=url,
        peer_id=values["id"],
        token=values.get("token") or None,
        identity_dir=values.get("identity") or None,
        stun_servers=tuple(stun),
        hosts=tuple(hosts) if hosts else None,
        timeout=_seconds(values.get("timeout", str(DEFAULT_TIMEOUT)), "timeout"),
    )


def _list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _seconds(text: str, name: str, allow_zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
        raise EndpointStringError(
            f"holepunch endpoint: {name}= must be a {'' if allow_zero else 'positive '}number "
            f"of seconds, got {text!r}"
        )
    return value


# -- shared registrations -------------------------------------------------------------


@dataclass
class Registration:
    """One signaling client and negotiator, shared by the endpoints of one peer id."""

    options: EndpointOptions
    client: SignalingClient
    negotiator: Negotiator
    users: int = 0
    listener: HolepunchListeningPort | None = None


@dataclass
class SignalingRegistry:
    """The registrations in use, one per (reactor, signaling URL, own id).

    A registration starts with its first user and stops (signaling client and
    negotiator, with the sessions it carries) when its last user releases it.
    """

    registrations: dict[tuple[Any, str, str], Registration] = field(default_factory=dict)
    stopping: list[defer.Deferred[None]] = field(default_factory=list)

    def acquire(self, reactor: Any, options: EndpointOptions) -> Registration:
        """The registration for ``options`` (started if new), with one more user.

        :raises ValueError: when the id is registered already with other options.
        """
        key = (reactor, options.signaling, options.peer_id)
        registration = self.registrations.get(key)
        if registration is not None:
            if registration.options.registration_key() != options.registration_key():
                raise ValueError(
                    f"{options.peer_id!r} is already registered on {options.signaling} "
                    "with other options (token, identity, stun, host)"
                )
        else:
            identity = (
                PeerIdentity.load_or_create(options.identity_dir)
                if options.identity_dir is not None
                else PeerIdentity.generate()
            )
            client = SignalingClient(
                options.signaling, options.peer_id, reactor=reactor, token=options.token
            )
            negotiator = Negotiator(reactor, client, options.ice_config(), identity=identity)
            client.startService()
            registration = Registration(options, client, negotiator)
            self.registrations[key] = registration
        registration.users += 1
        return registration

    def release(self, registration: Registration) -> defer.Deferred[None]:
        """One user less; the last one stops the registration (fires once stopped)."""
        registration.users -= 1
        if registration.users > 0:
            return defer.succeed(None)
        for key, value in list(self.registrations.items()):
            if value is registration:
                del self.registrations[key]
        d = defer.ensureDeferred(self._stop(registration))
        self.stopping.append(d)
        d.addBoth(lambda result: self._stopped(d, result))
        return d

    async def _stop(self, registration: Registration) -> None:
        await registration.negotiator.stop()
        await registration.client.stopService()

    def _stopped(self, d: defer.Deferred[None], result: Any) -> None:
        if d in self.stopping:
            self.stopping.remove(d)
        if isinstance(result, Failure):
            _log.failure("stopping a holepunch registration", result)

    def when_stopped(self) -> defer.Deferred[None]:
        """Fires once every registration released so far has stopped (tests wait for it)."""
        d = defer.DeferredList(list(self.stopping))
        return d.addCallback(lambda _: None)


DEFAULT_REGISTRY = SignalingRegistry()
"""The registry endpoints use unless given one."""


# -- the endpoints ---------------------------------------------------------------------


@implementer(interfaces.IAddress)
@dataclass(frozen=True)
class HolepunchAddress:
    """A peer on a signaling server: its id, the server, its certificate fingerprint."""

    peer_id: str
    signaling: str
    fingerprint: str | None = None


@implementer(interfaces.IStreamClientEndpoint)
class HolepunchClientEndpoint:
    """Connects to ``peer_id`` through the signaling server of ``options``: one encrypted,
    authenticated QUIC stream per ``connect``, carrying the factory's protocol.

    The session lives as long as its stream; when the stream ends, the session closes.
    Failures are :class:`HolepunchConnectError` subclasses naming the stage; cancelling
    the Deferred stops whatever stage is running and frees its sockets.
    """

    def __init__(
        self,
        reactor: Any,
        peer_id: str,
        options: EndpointOptions,
        registry: SignalingRegistry | None = None,
    ) -> None:
        self.reactor = reactor
        self.peer_id = peer_id
        self.options = options
        self.registry = registry or DEFAULT_REGISTRY

    def __repr__(self) -> str:
        return (
            f"<HolepunchClientEndpoint {self.options.peer_id} -> {self.peer_id} "
            f"via {self.options.signaling}>"
        )

    def connect(self, protocolFactory: interfaces.IProtocolFactory) -> defer.Deferred[Any]:
        """Fires with the protocol, connected over its stream."""
        try:
            registration = self.registry.acquire(self.reactor, self.options)
        except Exception as e:
            return defer.fail(SignalingFailed(self.peer_id, str(e)))
        handed_over: list[bool] = []  # the session's end releases the registration
        running = defer.ensureDeferred(self._connect(registration, protocolFactory, handed_over))
        stopped: list[str] = []  # "cancelled" or "timeout"

        def stop(why: str) -> None:
            if not stopped:
                stopped.append(why)
            running.cancel()

        result: defer.Deferred[Any] = defer.Deferred(lambda _: stop("cancelled"))
        deadline = self.reactor.callLater(self.options.timeout, stop, "timeout")

        def done(outcome: Any) -> None:
            if deadline.active():
                deadline.cancel()
            if isinstance(outcome, Failure):
                if not handed_over:
                    self.registry.release(registration)
                # A stage stopped by the cancel may report it its own way (ICE does).
                if stopped == ["timeout"]:
                    outcome = Failure(
                        ConnectTimedOut(self.peer_id, f"no stream after {self.options.timeout}s")
                    )
                elif stopped:
                    outcome = Failure(defer.CancelledError(f"connecting to {self.peer_id!r}"))
            elif result.called:  # cancelled just as it succeeded
                assert outcome.transport is not None
                outcome.transport.abortConnection()
                return
            if result.called:
                return
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

        running.addBoth(done)
        return result

    def _release(self, registration: Registration) -> None:
        self.registry.release(registration)

    async def _connect(
        self,
        registration: Registration,
        factory: interfaces.IProtocolFactory,
        handed_over: list[bool],
    ) -> Any:
        peer = self.peer_id
        try:
            await registration.client.register()
            await registration.client.join_room(direct_room(peer))  # where the peer listens
        except defer.CancelledError:
            raise
        except Exception as e:
            raise SignalingFailed(
                peer, f"could not register on {self.options.signaling}: {e}"
            ) from e
        try:
            session: QuicSession = await registration.negotiator.connect_secure(
                peer, wait_for_peer=self.options.wait or None
            )
        except defer.CancelledError:
            raise
        except PeerAuthenticationError as e:
            raise AuthenticationFailed(peer, str(e)) from e
        except SessionClosed as e:
            raise QuicFailed(peer, str(e)) from e
        except IceError as e:
            stage = str(getattr(e, "stage", ""))
            if stage in ("signaling", "peer"):
                raise SignalingFailed(peer, str(e)) from e
            raise NegotiationFailed(peer, str(e), stage) from e
        handed_over.append(True)
        session.on_closed(lambda _reason: self._release(registration))
        try:
            protocol = await session.open_stream(factory)
        except BaseException as e:
            session.close("the stream could not be opened")
            if isinstance(e, defer.CancelledError):
                raise
            raise StreamFailed(peer, str(e)) from e
        session.close_when_idle("stream closed")
        return protocol


@implementer(interfaces.IStreamServerEndpoint)
class HolepunchServerEndpoint:
    """Registers ``options.peer_id`` and accepts encrypted sessions from any peer; each
    stream a peer opens gets a protocol from the factory given to :meth:`listen`."""

    def __init__(
        self, reactor: Any, options: EndpointOptions, registry: SignalingRegistry | None = None
    ) -> None:
        self.reactor = reactor
        self.options = options
        self.registry = registry or DEFAULT_REGISTRY

    def __repr__(self) -> str:
        return f"<HolepunchServerEndpoint {self.options.peer_id} on {self.options.signaling}>"

    def listen(self, protocolFactory: interfaces.IProtocolFactory) -> defer.Deferred[Any]:
        """Fires with a :class:`HolepunchListeningPort` once registered; fails with
        :class:`ListenFailed`."""
        return defer.ensureDeferred(self._listen(protocolFactory))

    async def _listen(self, factory: interfaces.IProtocolFactory) -> HolepunchListeningPort:
        peer = self.options.peer_id
        try:
            registration = self.registry.acquire(self.reactor, self.options)
        except Exception as e:
            raise ListenFailed(peer, str(e)) from e
        if registration.listener is not None:
            await self.registry.release(registration)
            raise ListenFailed(peer, "a server endpoint already listens as this id")
        port = HolepunchListeningPort(self.registry, registration, factory)
        registration.listener = port
        try:
            await registration.client.register()
            # Accepting from the moment we are registered, in this same turn: a server
            # with --open-relay hands us offers before we have joined any room, and an
            # offer that found nobody accepting would be dropped.
            port.startListening()
            # Offers reach us in our direct room (the server relays only within rooms).
            await registration.client.join_room(direct_room(peer))
        except Exception as e:
            await port.stopListening()
            raise ListenFailed(peer, f"could not register on {self.options.signaling}: {e}") from e
        return port


@implementer(interfaces.IListeningPort)
class HolepunchListeningPort:
    """Accepts secure sessions for a :class:`HolepunchServerEndpoint`."""

    def __init__(
        self,
        registry: SignalingRegistry,
        registration: Registration,
        factory: interfaces.IProtocolFactory,
    ) -> None:
        self.registry = registry
        self.registration = registration
        self.factory = factory
        self.sessions: set[QuicSession] = set()
        self.listening = False
        self._stopped: defer.Deferred[None] | None = None

    def startListening(self) -> None:
        """Accept secure offers (``listen`` calls it)."""
        if self.listening or self._stopped is not None:
            return
        self.listening = True
        self.factory.doStart()
        self.registration.negotiator.on_secure_session = self._accepted

    def _accepted(self, peer_id: str, session: QuicSession) -> None:
        if not self.listening:
            session.close("not listening")
            return
        _log.info("secure session from {peer}", peer=peer_id)
        self.sessions.add(session)
        session.on_closed(lambda _reason: self.sessions.discard(session))
        session.listen_streams(self.factory)

    def stopListening(self) -> defer.Deferred[None]:
        """Stop accepting, close every session, release the registration."""
        if self._stopped is not None:
            return self._stopped
        negotiator = self.registration.negotiator
        if negotiator.on_secure_session == self._accepted:
            negotiator.on_secure_session = None
        if self.listening:
            self.listening = False
            self.factory.doStop()
        for session in list(self.sessions):
            session.close("server stopped listening")
        self.registration.listener = None
        self._stopped = self.registry.release(self.registration)
        return self._stopped

    def getHost(self) -> HolepunchAddress:
        """Our id, the signaling server and our certificate's fingerprint."""
        identity = self.registration.negotiator.identity
        return HolepunchAddress(
            self.registration.options.peer_id,
            self.registration.options.signaling,
            identity.fingerprint if identity is not None else None,
        )


def client_endpoint(reactor: Any, *args: str, **kwargs: str) -> HolepunchClientEndpoint:
    """A client endpoint from ``clientFromString``'s arguments (the plugin calls it)."""
    peer, options = parse_client_string(args, kwargs)
    return HolepunchClientEndpoint(reactor, peer, options)


def server_endpoint(reactor: Any, *args: str, **kwargs: str) -> HolepunchServerEndpoint:
    """A server endpoint from ``serverFromString``'s arguments (the plugin calls it)."""
    return HolepunchServerEndpoint(reactor, parse_server_string(args, kwargs))


__all__ = [
    "DEFAULT_REGISTRY",
    "AuthenticationFailed",
    "ConnectTimedOut",
    "EndpointOptions",
    "EndpointStringError",
    "HolepunchAddress",
    "HolepunchClientEndpoint",
    "HolepunchConnectError",
    "HolepunchListeningPort",
    "HolepunchServerEndpoint",
    "ListenFailed",
    "NegotiationFailed",
    "QuicFailed",
    "SignalingFailed",
    "SignalingRegistry",
    "StreamFailed",
    "client_endpoint",
    "parse_client_string",
    "parse_server_string",
    "server_endpoint",
]

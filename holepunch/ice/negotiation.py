# -*- test-case-name: tests.integration.test_ice_negotiation -*-
"""ICE negotiation over the signaling server: offers, answers, trickled candidates.

The messages are the ones a browser sends (``offer`` / ``answer`` / ``ice-candidate``),
with an ``ice`` object in place of SDP (see docs/protocol.md, "Native peers: ICE
negotiation")::

    {"type": "offer", "to": "bob",
     "offer": {"type": "offer", "session": "5f0c...",
               "ice": {"ufrag": "U", "pwd": "P", "candidates": ["candidate:..."]},
               "nat": {...nat-check fields...}}}
    {"type": "ice-candidate", "to": "bob",
     "candidate": {"candidate": "candidate:...", "sdpMid": "0", "session": "5f0c..."}}
    {"type": "ice-candidate", "to": "bob",
     "candidate": {"candidate": "", "sdpMid": "0", "session": "5f0c..."}}   (end)

The offerer is the controlling agent. The session id keeps parallel attempts between the
same two peers apart; a message for an unknown session is ignored (and counted).
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from holepunch.addresses import ip_version
from holepunch.ice.agent import IceAgent
from holepunch.ice.candidate import Candidate, CandidateError
from holepunch.ice.config import IceConfig
from holepunch.ice.connection import PeerConnection
from holepunch.ice.events import IceError
from holepunch.ice.hardnat import MappingProfile
from holepunch.ice.switching import SwitchingChannel
from holepunch.nat.model import NatInfo
from holepunch.punch.tcpsession import TcpTrack
from holepunch.quic.identity import PeerIdentity, parse_fingerprint
from holepunch.quic.session import QuicOptions, QuicSession, session_over_channel

_log = Logger()

JSON = dict[str, Any]

MAX_REMOTE_CANDIDATES = 64
"""Remote candidates one session takes (per ICE generation); more are dropped and counted."""

MAX_SESSIONS_PER_PEER = 8
"""Sessions one peer may have with us at once; further offers from it are ignored."""

_RESTART_SIGNAL_RETRIES = 10
"""Times a restart's offer or answer is sent again (a second apart) when signaling fails."""


class NegotiationError(IceError):
    """The peer's offer or answer was unusable, or signaling failed."""


def _NO_IDENTITY() -> NegotiationError:
    return NegotiationError("security", "no identity: give the Negotiator one")


@dataclass
class Session:
    """One negotiation with one peer."""

    session_id: str
    peer_id: str
    agent: IceAgent
    offerer: bool
    remote_nat: NatInfo | None = None
    result: defer.Deferred[PeerConnection] | None = None
    answered: bool = False
    sent: set[str] = field(default_factory=set)
    pending_candidates: list[JSON] = field(default_factory=list)
    tcp: TcpTrack | None = None
    remote_tcp: list[tuple[str, int]] = field(default_factory=list)
    remote_udp_blocked: bool = False
    remote_fingerprint: str | None = None
    """The certificate fingerprint the peer signaled (SDP's ``a=fingerprint``), if any."""
    quic: bool = False
    """The offerer runs QUIC streams on the path (:meth:`Negotiator.connect_secure`)."""
    remote_ufrag: str | None = None
    """The peer's current ufrag (its latest offer or answer)."""
    restart_pending: bool = False
    """We restarted ICE and the peer's new credentials have not come yet."""
    answering_restart: bool = False
    """The restart under way is the peer's: we answer it."""
    early_candidates: dict[str, list[JSON]] = field(default_factory=dict)
    """Trickled candidates of a generation whose offer or answer has not come yet."""
    restarts: int = 0
    """ICE restarts signaled in this session (ours and the peer's)."""
    remote_candidates: int = 0
    """Remote candidates given to the agent in this generation."""
    dropped_candidates: int = 0
    """Remote candidates beyond ``max_remote_candidates``, dropped."""


@dataclass
class Acceptor:
    """One waiting :meth:`Negotiator.accept` (``secure`` False) or
    :meth:`Negotiator.accept_secure` (True)."""

    peer_id: str | None
    secure: bool
    result: defer.Deferred[Any]
    options: QuicOptions | None = None
    running: defer.Deferred[Any] | None = None
    """The answer under way for it, once an offer was taken (cancelled with it)."""


def ice_description(
    agent: IceAgent,
    nat: NatInfo | None,
    kind: str,
    session_id: str,
    fingerprint: str | None = None,
    quic: bool = False,
) -> JSON:
    """The ``offer`` / ``answer`` payload for ``agent``; ``fingerprint`` is our
    certificate's, which binds the encrypted streams to this signaled identity;
    ``quic`` (offers only) says the offerer will run QUIC streams on the path."""
    description: JSON = {
        "type": kind,
        "session": session_id,
        "ice": {
            "ufrag": agent.local_ufrag,
            "pwd": agent.local_pwd,
            "candidates": [c.to_sdp() for c in agent.local_candidates if c.type != "prflx"],
        },
    }
    if agent.mapping is not None:
        description["ice"]["mapping"] = agent.mapping.to_json()
    if nat is not None:
        description["nat"] = nat.to_json()
    if fingerprint is not None:
        description["fingerprint"] = fingerprint
    if quic:
        description["quic"] = True
    return description


@dataclass
class Description:
    """A parsed offer or answer."""

    session_id: str
    ufrag: str
    pwd: str
    candidates: list[Candidate]
    nat: NatInfo | None
    mapping: MappingProfile | None
    udp_blocked: bool = False
    fingerprint: str | None = None
    """The peer's certificate fingerprint, validated (``"sha-256 AB:..."``)."""
    quic: bool = False
    """An offer for encrypted QUIC streams (the offerer's :meth:`Negotiator.connect_secure`)."""


def parse_description(payload: Any) -> Description:
    """Session id, credentials, candidates, NAT info and mapping of an offer/answer.

    Raises :class:`NegotiationError` naming what is wrong. Candidates that do not parse
    are skipped (a newer peer may send kinds we do not know).
    """
    if not isinstance(payload, dict):
        raise NegotiationError("negotiation", "description is not an object")
    ice = payload.get("ice")
    session_id = payload.get("session")
    if not isinstance(ice, dict) or not isinstance(session_id, str) or not session_id:
        raise NegotiationError("negotiation", "not a native ICE description (no ice/session)")
    ufrag, pwd = ice.get("ufrag"), ice.get("pwd")
    if not isinstance(ufrag, str) or not isinstance(pwd, str) or len(ufrag) < 4 or len(pwd) < 22:
        raise NegotiationError("negotiation", "ufrag/pwd missing or too short (RFC 8445 5.3)")
    candidates: list[Candidate] = []
    for line in ice.get("candidates") or []:
        try:
            candidates.append(Candidate.from_sdp(line))
        except CandidateError as e:
            _log.debug("skipping remote candidate {line!r}: {err}", line=line, err=e)
    nat: NatInfo | None = None
    if isinstance(payload.get("nat"), dict):
        try:
            nat = NatInfo.from_json(payload["nat"])
        except ValueError:
            nat = None
    mapping: MappingProfile | None = None
    if ice.get("mapping") is not None:
        try:
            mapping = MappingProfile.from_json(ice["mapping"])
        except ValueError as e:
            _log.debug("ignoring the peer's mapping: {err}", err=e)
    fingerprint: str | None = None
    if payload.get("fingerprint") is not None:
        try:
            fingerprint = str(parse_fingerprint(payload["fingerprint"]))
        except ValueError as e:
            raise NegotiationError("negotiation", f"bad fingerprint: {e}") from None
    return Description(
        session_id,
        ufrag,
        pwd,
        candidates,
        nat,
        mapping,
        ice.get("udpBlocked") is True,
        fingerprint,
        payload.get("quic") is True,
    )


class Negotiator:
    """Runs ICE sessions with peers through a signaling client.

    The client is a :class:`holepunch.signaling.client.SignalingClient`. An offer is
    answered by a waiting :meth:`accept`; when none waits, it is answered anyway if
    ``on_connection`` is set (called with the peer id and the connection once made), and
    ignored (counted in ``ignored``) otherwise.

    Offers made by :meth:`connect_secure` say so (``"quic": true``): they go to a waiting
    :meth:`accept_secure` first, then to ``on_secure_session`` (called with the peer id
    and the connected :class:`QuicSession`), and only then to a plain :meth:`accept`.
    Plain offers go to :meth:`accept`, then ``on_connection``, then (from a peer that does
    not flag its offers) :meth:`accept_secure`.

    :param agent_factory: makes the agent of each session (tests and the coordinator
        pass their own; the default uses ``config``).
    :param nat: this host's NAT description, sent in offers and answers.
    :param identity: our key and certificate (:class:`holepunch.quic.PeerIdentity`): its
        fingerprint is sent in offers and answers, and each session keeps the peer's
        (``remote_fingerprint``) for the encrypted streams that bind to it.
    :param accept_offer: ``accept_offer(peer_id, offer_payload)`` decides whether a new
        offer is answered at all (None: every offer is); refused ones are counted in
        ``refused``. An offer makes us send ICE checks (and TURN permissions) to the
        addresses it names, so an application should answer only peers it expects.

    Each session takes at most ``max_remote_candidates`` remote candidates per ICE
    generation (the rest are dropped, counted in ``dropped_candidates`` and logged once
    per session), and one peer has at most ``max_sessions_per_peer`` sessions at once.
    """

    def __init__(
        self,
        reactor: Any,
        signaling: Any,
        config: IceConfig | None = None,
        *,
        nat: NatInfo | None = None,
        agent_factory: Callable[[bool], IceAgent] | None = None,
        max_retries: int = 0,
        identity: PeerIdentity | None = None,
        accept_offer: Callable[[str, JSON], bool] | None = None,
        max_remote_candidates: int = MAX_REMOTE_CANDIDATES,
        max_sessions_per_peer: int = MAX_SESSIONS_PER_PEER,
    ) -> None:
        self.reactor = reactor
        self.accept_offer = accept_offer
        self.max_remote_candidates = max_remote_candidates
        self.max_sessions_per_peer = max_sessions_per_peer
        self.refused = 0
        """Offers ``accept_offer`` refused, or beyond ``max_sessions_per_peer``."""
        self.dropped_candidates = 0
        """Remote candidates dropped, beyond ``max_remote_candidates`` of their session."""
        self.signaling = signaling
        hints = getattr(signaling, "ice_servers", None)
        self.config = (config or IceConfig()).with_default_servers(
            hints.stun_servers if hints else (), hints.turn_servers if hints else ()
        )
        """The agents' settings; STUN and TURN servers the signaling server named in
        ``welcome`` fill in where ``config`` names none."""
        self.nat = nat
        self.identity = identity
        """Our key and certificate; its fingerprint goes in every offer and answer."""
        self.max_retries = max_retries
        self._agent_factory = agent_factory or (
            lambda controlling: IceAgent(reactor, controlling, self.config)
        )
        self.sessions: dict[str, Session] = {}
        self._secure_paths: dict[QuicSession, PeerConnection] = {}
        self._closing_paths: list[PeerConnection] = []
        self.ignored = 0
        self._acceptors: list[Acceptor] = []
        self._peer_of: weakref.WeakKeyDictionary[PeerConnection, str] = weakref.WeakKeyDictionary()
        self.on_connection: Callable[[str, PeerConnection], None] | None = None
        self.on_secure_session: Callable[[str, QuicSession], None] | None = None
        """Called with the peer id and the connected session of each secure offer that
        no :meth:`accept_secure` waited for (None: such offers are ignored)."""
        self.secure_options: QuicOptions | None = None
        """The :class:`QuicOptions` of the sessions given to ``on_secure_session``."""
        self._subscriptions = [
            signaling.on("offer", self._offer_received),
            signaling.on("answer", self._answer_received),
            signaling.on("ice-candidate", self._candidate_received),
        ]

    def stop(self) -> defer.Deferred[Any]:
        """Stop listening and close every session's agent that has not connected."""
        for subscription in self._subscriptions:
            subscription.cancel()
        self._subscriptions = []
        for acceptor in list(self._acceptors):
            acceptor.result.cancel()
        self._acceptors.clear()
        sessions = list(self.sessions.values())  # closing an agent ends its session too
        self.sessions.clear()
        closing: list[defer.Deferred[Any]] = [
            s.agent.close() for s in sessions if s.agent.connection is None
        ]
        for secure in list(self._secure_paths):
            secure.close("negotiator stopped")  # its path closes a turn later
        paths, self._closing_paths = self._closing_paths, []
        closing += [path.when_closed() for path in paths]
        return defer.DeferredList(closing)

    # -- outgoing --

    def connect(self, peer_id: str) -> defer.Deferred[PeerConnection]:
        """Offer a connection to ``peer_id``; retried up to ``max_retries`` times.

        Fails with :class:`IceError` (``stage`` says where) when every attempt failed.
        Cancelling stops the attempt and frees its socket and timers.
        """
        return self._connect(peer_id, quic=False)

    def _connect(self, peer_id: str, quic: bool) -> defer.Deferred[PeerConnection]:
        current: list[defer.Deferred[PeerConnection]] = []

        def cancel(_: object) -> None:
            for d in current:
                d.cancel()

        result: defer.Deferred[PeerConnection] = defer.Deferred(cancel)

        def attempt(number: int) -> None:
            d = self._offer(peer_id, quic)
            current[:] = [d]

            def failed(f: Failure) -> None:
                if result.called:
                    return
                if f.check(defer.CancelledError) or number >= self.max_retries:
                    result.errback(f)
                    return
                if f.check(NegotiationError) and f.value.stage == "signaling":  # type: ignore[union-attr]
                    result.errback(f)
                    return
                _log.info(
                    "attempt {n} to reach {peer} failed ({err}); retrying",
                    n=number + 1,
                    peer=peer_id,
                    err=f.getErrorMessage(),
                )
                attempt(number + 1)

            d.addCallbacks(lambda c: result.callback(c) if not result.called else None, failed)

        attempt(0)
        return result

    def connect_secure(
        self,
        peer_id: str,
        options: QuicOptions | None = None,
        *,
        wait_for_peer: float | None = None,
    ) -> defer.Deferred[QuicSession]:
        """:meth:`connect`, then encrypted, authenticated streams on the path (QUIC, the
        offerer as client): fires with the connected :class:`holepunch.quic.QuicSession`.

        With ``wait_for_peer`` the peer may register up to that many seconds later
        (:meth:`connect_when_present`). Needs an ``identity``; fails with
        :class:`holepunch.quic.PeerAuthenticationError` when the peer's certificate is not
        the one whose fingerprint it signaled.
        """
        if self.identity is None:
            return defer.fail(_NO_IDENTITY())
        connecting = (
            self._connect(peer_id, quic=True)
            if wait_for_peer is None
            else defer.ensureDeferred(self._connect_when_present(peer_id, wait_for_peer, quic=True))
        )
        return defer.ensureDeferred(self._secure(connecting, True, options, peer_id))

    def accept_secure(
        self, peer_id: str | None = None, options: QuicOptions | None = None
    ) -> defer.Deferred[QuicSession]:
        """:meth:`accept`, then the QUIC server side of :meth:`connect_secure`.

        Cancelling stops waiting, or the answer under way."""
        if self.identity is None:
            return defer.fail(_NO_IDENTITY())
        return self._wait_for_offer(peer_id, secure=True, options=options)

    async def _secure(
        self,
        connecting: defer.Deferred[PeerConnection],
        is_client: bool,
        options: QuicOptions | None,
        peer_id: str | None = None,
    ) -> QuicSession:
        assert self.identity is not None
        connection = await connecting
        fingerprint = connection.peer_fingerprint
        if fingerprint is None:
            await connection.close()
            raise NegotiationError("security", "the peer signaled no certificate fingerprint")
        peer_id = peer_id or self._peer_of.get(connection)
        if peer_id is not None and (options is None or options.peer_id is None):
            # The stream addresses name the signaled peer next to its fingerprint.
            options = replace(options or QuicOptions(), peer_id=peer_id)
        session = session_over_channel(
            self.reactor, connection, is_client, self.identity, fingerprint, options
        )
        # The secure session owns the path it runs on: when it ends, so does the path,
        # one reactor turn later, so that its last packets (CONNECTION_CLOSE) still leave.
        self._secure_paths[session] = connection
        session.on_closed(lambda _reason: self._end_path(session))
        return await session.when_connected()

    def path_of(self, session: QuicSession) -> PeerConnection | None:
        """The ICE connection under a secure session this negotiator made (its
        ``method``, addresses, ``rtt``, path-change observers), or None once it ended."""
        return self._secure_paths.get(session)

    def _end_path(self, session: QuicSession) -> None:
        connection = self._secure_paths.pop(session, None)
        if connection is not None:
            self._closing_paths.append(connection)
            connection.when_closed().addBoth(lambda _: self._forget_path(connection))
            self.reactor.callLater(0, connection.close)

    def _forget_path(self, connection: PeerConnection) -> None:
        if connection in self._closing_paths:
            self._closing_paths.remove(connection)

    def connect_when_present(self, peer_id: str, timeout: float) -> defer.Deferred[PeerConnection]:
        """Like :meth:`connect`, but wait (up to ``timeout``) for ``peer_id`` to register.

        Offers are retried every half second while the server says ``peer-not-found``
        or ``no-shared-room`` (the peer registered but has not joined the room the two
        meet in yet); then it fails with :class:`NegotiationError` at stage ``peer``.
        """
        return defer.ensureDeferred(self._connect_when_present(peer_id, timeout, quic=False))

    async def _connect_when_present(
        self, peer_id: str, timeout: float, quic: bool
    ) -> PeerConnection:
        from holepunch.signaling.client import SignalingRequestError

        deadline = self.reactor.seconds() + timeout
        while True:
            try:
                return await self._connect(peer_id, quic)
            except NegotiationError as e:
                cause = e.__cause__
                absent = isinstance(cause, SignalingRequestError) and cause.code in (
                    "peer-not-found",
                    "no-shared-room",
                )
                if not absent:
                    raise
                if self.reactor.seconds() + 0.5 > deadline:
                    raise NegotiationError(
                        "peer", f"{peer_id} did not come online (or into a shared room)"
                    ) from e
            d: defer.Deferred[None] = defer.Deferred()
            self.reactor.callLater(0.5, d.callback, None)
            await d

    def _offer(self, peer_id: str, quic: bool = False) -> defer.Deferred[PeerConnection]:
        session = self._new_session(peer_id, offerer=True, session_id=secrets.token_hex(8))
        session.quic = quic
        d = defer.ensureDeferred(self._run_offer(session))
        d.addErrback(self._session_failed, session)
        return self._with_cancel(d, session)

    def _with_cancel(
        self, d: defer.Deferred[PeerConnection], session: Session
    ) -> defer.Deferred[PeerConnection]:
        result: defer.Deferred[PeerConnection] = defer.Deferred(
            lambda _: self._cancel_session(session, d)
        )
        d.addCallbacks(
            lambda c: result.callback(c) if not result.called else None,
            lambda f: result.errback(f) if not result.called else None,
        )
        return result

    def _cancel_session(self, session: Session, inner: defer.Deferred[Any]) -> None:
        self.sessions.pop(session.session_id, None)
        session.agent.close()
        inner.cancel()

    async def _run_offer(self, session: Session) -> PeerConnection:
        return await self._run(session, "offer")

    async def _gather_hosts(self, session: Session) -> None:
        """Gather; return once the host candidates are known, or, when the agent
        measures its mapping (hard-NAT techniques), once its IPv4 Bindings are done and
        whether UDP is blocked is known, so that the description carries both. IPv6
        server-reflexive and relayed candidates are trickled: once a server answered, a
        broken IPv6 path does not hold the description until its Binding times out."""
        agent = session.agent
        gathered = defer.ensureDeferred(agent.gather())
        gathered.addErrback(self._gather_failed, session)
        if agent.config.gathering.probe_mapping and agent.config.gathering.stun_servers:
            mapped = agent.when_stun_settled()

            def gathering_failed(f: Failure) -> Failure:
                if not mapped.called:
                    mapped.callback(None)
                return f

            gathered.addErrback(gathering_failed)
            await mapped

    def _gather_failed(self, failure: Failure, session: Session) -> None:
        _log.info(
            "gathering for {peer} failed: {err}",
            peer=session.peer_id,
            err=failure.getErrorMessage(),
        )
        session.agent.fail(IceError("gathering", failure.getErrorMessage()))

    def _describe(self, session: Session, kind: str) -> JSON:
        fingerprint = self.identity.fingerprint if self.identity is not None else None
        description = ice_description(
            session.agent,
            self.nat,
            kind,
            session.session_id,
            fingerprint,
            quic=session.quic and kind == "offer",
        )
        if session.tcp is not None:
            for tcp_candidate in session.tcp.candidates():
                description["ice"]["candidates"].append(tcp_candidate.to_sdp())
        if session.agent.udp_blocked:
            description["ice"]["udpBlocked"] = True
        session.sent.update(description["ice"]["candidates"])
        return description

    def _start_trickle(self, session: Session) -> None:
        """Send candidates found after the offer/answer, then end-of-candidates."""
        agent = session.agent
        sent = session.sent

        def trickle(candidate: Candidate | None) -> None:
            if candidate is not None:
                line = candidate.to_sdp()
                if line in sent or candidate.type == "prflx":
                    return
                sent.add(line)
            payload = {
                "candidate": candidate.to_sdp() if candidate else "",
                "sdpMid": "0",
                "session": session.session_id,
                "usernameFragment": agent.local_ufrag,
            }
            d = self.signaling.send_ice_candidate(session.peer_id, payload)
            d.addErrback(lambda f: _log.debug("trickle failed: {err}", err=f.getErrorMessage()))

        agent.on_local_candidate = trickle
        for candidate in list(agent.local_candidates):  # found while the offer was in flight
            trickle(candidate)
        if agent.gathering_complete:
            trickle(None)

    # -- incoming --

    def accept(self, peer_id: str | None = None) -> defer.Deferred[PeerConnection]:
        """Wait for an offer (from ``peer_id``, or anyone) and answer it."""
        return self._wait_for_offer(peer_id, secure=False, options=None)

    def _wait_for_offer(
        self, peer_id: str | None, secure: bool, options: QuicOptions | None
    ) -> defer.Deferred[Any]:
        acceptor: Acceptor

        def cancel(_: defer.Deferred[Any]) -> None:
            if acceptor in self._acceptors:
                self._acceptors.remove(acceptor)
            if acceptor.running is not None:
                acceptor.running.cancel()

        acceptor = Acceptor(peer_id, secure, defer.Deferred(cancel), options)
        self._acceptors.append(acceptor)
        return acceptor.result

    def _acceptor_for(self, peer_id: str, secure: bool) -> Acceptor | None:
        return next(
            (a for a in self._acceptors if a.secure == secure and a.peer_id in (None, peer_id)),
            None,
        )

    def _offer_received(self, message: JSON) -> None:
        peer_id = message.get("from")
        payload = message.get("offer")
        if not isinstance(peer_id, str):
            return
        try:
            offer = parse_description(payload)
        except NegotiationError as e:
            self.ignored += 1
            _log.debug("ignored offer from {peer}: {err}", peer=peer_id, err=e)
            return
        if offer.session_id in self.sessions:
            self._restart_received(self.sessions[offer.session_id], offer, peer_id, "offer")
            return
        if self.accept_offer is not None and not self.accept_offer(peer_id, payload or {}):
            self.refused += 1
            _log.info("refused an offer from {peer}: not a peer we take offers from", peer=peer_id)
            return
        open_sessions = sum(
            1 for s in self.sessions.values() if s.peer_id == peer_id and not s.agent.closed
        )
        if open_sessions >= self.max_sessions_per_peer:
            self.refused += 1
            _log.info(
                "refused an offer from {peer}: it already has {n} sessions",
                peer=peer_id,
                n=open_sessions,
            )
            return
        # Who takes it: a waiting acceptor of its kind, the handler of its kind, then
        # an acceptor of the other kind (peers that do not flag their offers).
        secure_handler = self.on_secure_session if self.identity is not None else None
        acceptor = self._acceptor_for(peer_id, offer.quic)
        handler: Callable[[str, Any], None] | None = None
        if acceptor is None:
            handler = secure_handler if offer.quic else self.on_connection
        if acceptor is None and handler is None:
            acceptor = self._acceptor_for(peer_id, not offer.quic)
        if acceptor is None and handler is None:
            self.ignored += 1
            _log.info("ignored an offer from {peer}: nobody is accepting", peer=peer_id)
            return
        session = self._new_session(peer_id, offerer=False, session_id=offer.session_id)
        self._apply_description(session, offer)
        answering = defer.ensureDeferred(self._run_answer(session))
        answering.addErrback(self._session_failed, session)
        d: defer.Deferred[Any] = self._with_cancel(answering, session)
        secure = acceptor.secure if acceptor is not None else handler is secure_handler
        if secure:
            options = acceptor.options if acceptor is not None else self.secure_options
            d = defer.ensureDeferred(self._secure(d, False, options, peer_id))
        if acceptor is not None:
            self._acceptors.remove(acceptor)
            acceptor.running = d
            d.chainDeferred(acceptor.result)
        else:
            d.addCallback(lambda c: handler(peer_id, c) if handler is not None else None)
            d.addErrback(
                lambda f: _log.info(
                    "incoming from {peer} failed: {err}", peer=peer_id, err=f.getErrorMessage()
                )
            )

    async def _run_answer(self, session: Session) -> PeerConnection:
        return await self._run(session, "answer")

    async def _run(self, session: Session, kind: str) -> Any:
        """Start checks, gather, send the description, trickle; wait for the connection
        (over UDP, or over TCP when that track runs and wins)."""
        agent = session.agent
        agent.listen()
        connecting = agent.connect()
        learning: defer.Deferred[Any] | None = None
        if agent.config.tcp.enabled and agent.config.gathering.stun_servers:
            session.tcp = await self._tcp_track(agent)
            if session.tcp is not None:
                session.tcp.set_remotes(session.remote_tcp)
                # While TCP punches (and once it carries), UDP does not give up: its
                # failed pairs are checked again until one works, then the connection
                # moves to UDP (docs/ice.md, "From TCP to UDP").
                session.tcp.on_dial = agent.keep_trying
                # A STUN server answering over TCP while none answers over UDP says
                # UDP is blocked, long before the Bindings give up.
                session.tcp.on_mapping = agent.tcp_stun_answered
                agent.hold_checks = True  # until the TCP flow and the re-measure are done
                learning = defer.ensureDeferred(session.tcp.learn_mapping())
        await defer.ensureDeferred(self._gather_hosts(session))
        if learning is not None:
            await learning
            # The TCP flow moved a sequential NAT's counter too: measure the last port
            # again, so the mapping we announce is the one our next flow follows.
            try:
                await defer.ensureDeferred(agent.remeasure_mapping())
            finally:
                agent.release_checks()
        send = self.signaling.send_offer if kind == "offer" else self.signaling.send_answer
        try:
            await send(session.peer_id, self._describe(session, kind))
        except Exception as e:
            connecting.addErrback(lambda _: None)  # the agent's own failure is not the story
            agent.close()
            if session.tcp is not None:
                session.tcp.cancel()
            if isinstance(e, defer.CancelledError):
                raise
            raise NegotiationError("signaling", f"could not send the {kind}: {e}") from e
        self._start_trickle(session)
        if kind == "answer":
            self._maybe_start_tcp(session)
        return await self._race(session, connecting)

    async def _tcp_track(self, agent: IceAgent) -> TcpTrack | None:
        """The TCP track: an IPv4 mapping from the first IPv4 STUN server, an IPv6 one
        from the first IPv6 server or, with none, from our IPv6 address itself."""
        from holepunch.stun.client import resolve_server

        servers: dict[int, tuple[str, int]] = {}
        for host, port in agent.config.gathering.stun_servers:
            try:
                server = await resolve_server(self.reactor, host, port)
            except Exception as e:
                _log.info("no TCP track through {host}: {err}", host=host, err=e)
                continue
            servers.setdefault(ip_version(server.host), (server.host, server.port))
        addresses = agent.local_addresses()
        v4 = [a for a in addresses if ip_version(a) == 4]
        v6 = [a for a in addresses if ip_version(a) == 6]
        v6_host = v6[0] if v6 else None
        if not servers and v6_host is None:
            return None
        return TcpTrack(
            self.reactor,
            servers.get(4) if v4 else None,
            interface=v4[0] if len(v4) == 1 else "",
            ipv6_host=v6_host,
            ipv6_server=servers.get(6) if v6_host is not None else None,
        )

    def _maybe_start_tcp(self, session: Session) -> None:
        """The offerer starts the TCP sync once both descriptions are known, if UDP is
        blocked on either side (or racing is asked for)."""
        tcp = session.tcp
        if tcp is None or not session.offerer or tcp.remote is None or tcp.mapping is None:
            return
        config = session.agent.config
        if session.agent.udp_blocked or session.remote_udp_blocked or config.tcp.race:
            tcp.begin(lambda payload: self._send_sync(session, payload))

    def _send_sync(self, session: Session, payload: JSON) -> None:
        d = self.signaling.send_ice_candidate(
            session.peer_id, {**payload, "session": session.session_id}
        )
        d.addErrback(lambda f: _log.info("TCP sync failed: {err}", err=f.getErrorMessage()))

    async def _race(self, session: Session, connecting: defer.Deferred[PeerConnection]) -> Any:
        """The first path that works; fail only when every path that ran failed.

        When TCP wins, the connection is a :class:`SwitchingChannel` over it and the UDP
        track keeps going: once ICE selects a pair the connection moves there; when ICE
        fails it stays on TCP."""
        outcome: defer.Deferred[Any] = defer.Deferred()
        errors: dict[str, Failure] = {}
        tcp = session.tcp
        switching: list[SwitchingChannel] = []

        def won(connection: Any, track: str) -> None:
            if outcome.called:
                if track == "tcp":
                    connection.close("another path won")
                elif switching:
                    self._move_to_udp(session, switching[0], connection)
                return
            if track == "udp" and tcp is not None:
                tcp.cancel()
            elif track == "tcp":
                connection = self._keep_checking_udp(session, connection)
                switching.append(connection)
            connection.peer_fingerprint = session.remote_fingerprint
            self._peer_of[connection] = session.peer_id
            outcome.callback(connection)

        def lost(failure: Failure, track: str) -> None:
            errors[track] = failure
            if outcome.called:
                if track == "udp" and switching:
                    _log.info(
                        "no UDP path to {peer} ({err}); staying on TCP",
                        peer=session.peer_id,
                        err=failure.getErrorMessage(),
                    )
                    session.agent.close()
                return
            tcp_running = tcp is not None and tcp.started and "tcp" not in errors
            if track == "udp" and tcp_running:
                return  # TCP may still make it
            if track == "tcp" and "udp" not in errors:
                session.agent.stop_trying()  # UDP may still make it, or fail as usual
                return
            if "udp" in errors and "tcp" in errors:
                udp = getattr(errors["udp"].value, "detail", errors["udp"].getErrorMessage())
                message = f"{udp}; TCP: {errors['tcp'].getErrorMessage()}"
                stage = getattr(errors["udp"].value, "stage", "connectivity-checks")
                outcome.errback(IceError(stage, message))
            else:
                outcome.errback(failure)

        connecting.addCallbacks(won, lost, callbackArgs=("udp",), errbackArgs=("udp",))
        if tcp is not None:
            tcp.result.addCallbacks(won, lost, callbackArgs=("tcp",), errbackArgs=("tcp",))
        return await outcome

    def _keep_checking_udp(self, session: Session, stream: Any) -> SwitchingChannel:
        """TCP won: the connection, over ``stream`` until UDP works; closing it closes the
        agent still checking."""
        channel = SwitchingChannel(self.reactor, stream)

        def closed(_reason: str) -> None:
            session.agent.close()

        channel.on_disconnected(closed)
        return channel

    def _move_to_udp(
        self, session: Session, channel: SwitchingChannel, connection: PeerConnection
    ) -> None:
        """ICE selected a UDP pair after TCP won: move the connection there."""
        if channel.closed:
            connection.close(channel.close_reason or "closed")
            return
        previous = channel.method
        connection.peer_fingerprint = session.remote_fingerprint
        channel.switch_to(connection, "upgrade")
        _log.info(
            "connection to {peer} moved from {old} to {new}",
            peer=session.peer_id,
            old=previous,
            new=connection.method,
        )

    def _answer_received(self, message: JSON) -> None:
        try:
            answer = parse_description(message.get("answer"))
        except NegotiationError:
            self.ignored += 1
            return
        session = self.sessions.get(answer.session_id)
        if (
            session is not None
            and session.remote_ufrag is not None
            and (session.answered or not session.offerer)
            and message.get("from") == session.peer_id
            and answer.ufrag != session.remote_ufrag
        ):
            self._restart_received(session, answer, session.peer_id, "answer")
            return
        if (
            session is None
            or not session.offerer
            or session.answered
            or message.get("from") != session.peer_id
        ):
            self.ignored += 1
            return
        session.answered = True
        self._apply_description(session, answer)
        for payload in session.pending_candidates:
            self._apply_candidate(session, payload)
        session.pending_candidates.clear()

    def _candidate_received(self, message: JSON) -> None:
        payload = message.get("candidate")
        if not isinstance(payload, dict):
            self.ignored += 1
            return
        session = self.sessions.get(str(payload.get("session")))
        if session is None or message.get("from") != session.peer_id:
            self.ignored += 1
            return
        ufrag = payload.get("usernameFragment")
        if (
            isinstance(ufrag, str)
            and session.remote_ufrag is not None
            and ufrag != session.remote_ufrag
        ):
            # A restart's candidate ahead of its offer or answer (or a stale one).
            early = session.early_candidates.setdefault(ufrag, [])
            if len(session.early_candidates) <= 4 and len(early) < 100:
                early.append(payload)
            return
        sync = payload.get("tcpSync")
        if sync is not None:
            if session.tcp is not None and isinstance(sync, str):
                session.tcp.sync(lambda p: self._send_sync(session, p), sync)
            return
        if session.offerer and not session.answered:
            if len(session.pending_candidates) < 100:
                session.pending_candidates.append(payload)
            return
        self._apply_candidate(session, payload)

    def _apply_candidate(self, session: Session, payload: JSON) -> None:
        line = payload.get("candidate")
        if line == "" or line is None:
            session.agent.add_remote_candidate(None)
            return
        try:
            candidate = Candidate.from_sdp(line)
        except CandidateError as e:
            _log.debug("skipping trickled candidate {line!r}: {err}", line=line, err=e)
            return
        self._add_remote_candidate(session, candidate)

    def _add_remote_candidate(self, session: Session, candidate: Candidate) -> None:
        """Give the agent one more remote candidate, up to ``max_remote_candidates``."""
        if session.remote_candidates >= self.max_remote_candidates:
            session.dropped_candidates += 1
            self.dropped_candidates += 1
            if session.dropped_candidates == 1:
                _log.info(
                    "{peer} sent more than {cap} candidates: dropping the rest",
                    peer=session.peer_id,
                    cap=self.max_remote_candidates,
                )
            return
        session.remote_candidates += 1
        session.agent.add_remote_candidate(candidate)

    def _apply_description(self, session: Session, description: Description) -> None:
        agent = session.agent
        session.remote_nat = description.nat
        session.remote_udp_blocked = description.udp_blocked
        session.remote_fingerprint = description.fingerprint
        session.remote_ufrag = description.ufrag
        agent.set_remote_credentials(description.ufrag, description.pwd)
        for candidate in description.candidates:
            if candidate.transport == "tcp" and candidate.tcptype == "so":
                if len(session.remote_tcp) < 2:  # one per family is all a peer offers
                    session.remote_tcp.append(candidate.address)
                    if session.tcp is not None:
                        session.tcp.set_remotes(session.remote_tcp)
                continue
            self._add_remote_candidate(session, candidate)
        agent.set_remote_mapping(description.mapping)
        if session.offerer:
            self._maybe_start_tcp(session)

    # -- bookkeeping --

    def _new_session(self, peer_id: str, offerer: bool, session_id: str) -> Session:
        agent = self._agent_factory(offerer)
        session = Session(session_id, peer_id, agent, offerer)
        self.sessions[session_id] = session
        agent.on_restart = lambda reason: self._restarted(session, reason)
        return session

    # -- ICE restarts (RFC 8445 9, RFC 8839 4.4.1.1.1) --

    def restart(self, connection: PeerConnection | QuicSession) -> bool:
        """Restart ICE under ``connection`` (a connection this negotiator made, or a
        secure session on one): new credentials and candidates go to the peer in a new
        offer of the same session; the path moves when the new generation selects a
        pair. False when it is not ours or not connected."""
        if isinstance(connection, QuicSession):
            path = self._secure_paths.get(connection)
            if path is None:
                return False
            connection = path
        if isinstance(connection, SwitchingChannel):
            current = connection.current
            if not isinstance(current, PeerConnection):
                return False  # still on TCP
            connection = current
        session = next(
            (s for s in self.sessions.values() if s.agent.connection is connection), None
        )
        return session is not None and session.agent.restart("application")

    def _restarted(self, session: Session, reason: str) -> None:
        """Our agent began a restart: send the new credentials once its host candidates
        are known (this reactor turn), as an answer when the peer asked for it."""
        if self.sessions.get(session.session_id) is not session:
            return
        kind = "answer" if session.answering_restart else "offer"
        session.answering_restart = False
        session.restart_pending = kind == "offer"
        session.restarts += 1
        session.sent.clear()
        _log.info(
            "ICE restart with {peer} ({reason}): sending a new {kind}",
            peer=session.peer_id,
            reason=reason,
            kind=kind,
        )
        self.reactor.callLater(0, self._send_restart, session, kind)

    def _send_restart(self, session: Session, kind: str, attempt: int = 0) -> None:
        if self.sessions.get(session.session_id) is not session or session.agent.closed:
            return
        description = self._describe(session, kind)
        description["restart"] = True
        generation = session.agent.local_ufrag
        send = self.signaling.send_offer if kind == "offer" else self.signaling.send_answer
        d = defer.ensureDeferred(send(session.peer_id, description))

        def failed(f: Failure) -> None:
            # The signaling connection may be going down with the path (a new public
            # address breaks it too): send again once it is back, while this generation
            # is still the current one.
            _log.info("could not signal the ICE restart: {err}", err=f.getErrorMessage())
            if attempt < _RESTART_SIGNAL_RETRIES and session.agent.local_ufrag == generation:
                self.reactor.callLater(1.0, self._send_restart, session, kind, attempt + 1)

        d.addErrback(failed)

    def _restart_received(
        self, session: Session, description: Description, peer_id: str, kind: str
    ) -> None:
        """An offer or answer of a known session with new credentials: the peer's ICE
        restart (we restart too and answer), or the answer to ours (or a crossing offer:
        both restarted at once, each takes the other's offer as its answer)."""
        if peer_id != session.peer_id or session.agent.closed:
            self.ignored += 1
            return
        if description.ufrag == session.remote_ufrag:
            return  # the same generation again
        if not session.restart_pending:
            if kind == "answer":
                self.ignored += 1
                return
            session.answering_restart = True
            if not session.agent.restart("peer"):
                session.answering_restart = False
                self.ignored += 1
                return
        crossing = session.restart_pending and kind == "offer"
        session.restart_pending = False
        agent = session.agent
        session.remote_ufrag = description.ufrag
        agent.set_remote_credentials(description.ufrag, description.pwd)
        session.remote_candidates = 0  # a new generation
        for candidate in description.candidates:
            if candidate.transport == "udp":
                self._add_remote_candidate(session, candidate)
        agent.set_remote_mapping(description.mapping)
        for payload in session.early_candidates.pop(description.ufrag, []):
            self._apply_candidate(session, payload)
        session.early_candidates.clear()
        if crossing:
            # Both restarted: the peer takes our offer as its answer, if it got it; an
            # answer with the same credentials makes sure (it ignores a repeat).
            self.reactor.callLater(0, self._send_restart, session, "answer")

    def _session_failed(self, failure: Failure, session: Session) -> Failure:
        self.sessions.pop(session.session_id, None)
        session.agent.close()
        return failure

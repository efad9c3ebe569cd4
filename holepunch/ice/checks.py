# -*- test-case-name: tests.unit.test_ice_core -*-
"""Connectivity checks (RFC 8445 6.1.4, 7.2 and 7.3) for the sans-I/O
:class:`IceCore <holepunch.ice.core.IceCore>`.

- Sending (7.2): Binding requests with USERNAME ``remote:local``, PRIORITY,
  ICE-CONTROLLING / ICE-CONTROLLED with the tie-breaker, MESSAGE-INTEGRITY with the
  peer's password, FINGERPRINT; paced one per ``Ta``, triggered checks first (the order
  is the :class:`CheckList <holepunch.ice.checklist.CheckList>`'s). A response must come
  from where the request went (7.2.5.2.1); a 487 switches role (7.2.5.1).
- Answering (7.3): only requests whose USERNAME names our ufrag and whose
  MESSAGE-INTEGRITY verifies with our password count; anything else is dropped and
  counted. Role conflicts are settled by tie-breaker with 487 (7.3.1.1). An unknown
  source becomes a peer-reflexive remote candidate (7.3.1.3) and gets a triggered check
  (7.3.1.4).
- Remote candidates (5.3, trickled or not) are paired with the local base the system
  would send from, and with every relayed candidate.

What a successful check means for nomination is the selector's business
(:mod:`holepunch.ice.nomination`).
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass

from twisted.logger import Logger

from holepunch.addresses import ip_version
from holepunch.ice import events
from holepunch.ice.candidate import Candidate, candidate_priority, make_candidate
from holepunch.ice.checklist import CandidatePair, PairState, on_ipv6
from holepunch.ice.events import MAIN
from holepunch.ice.parts import Core
from holepunch.stun.message import StunMessage, encode
from holepunch.stun.transactions import (
    RetransmissionPolicy,
    StunErrorResponse,
    StunResponse,
    TransactionOutcome,
)
from holepunch.stun.wire import Address, Attr, Method, StunDecodeError

_log = Logger()


@dataclass
class _Check:
    pair: CandidatePair
    nominate: bool
    started: float
    destination: Address


class Checker:
    """Sends, paces and answers the connectivity checks of one core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._pending: dict[int, bytes] = {}
        self._pending_triggers: list[tuple[Candidate, tuple[str, int]]] = []

    # -- remote candidates and pairs --

    def add_remote(self, candidate: Candidate) -> None:
        """A signalled remote candidate: kept, paired and checked (UDP, either family)."""
        core = self.core
        if candidate.transport != "udp" or candidate.component != 1:
            return
        try:
            ip_version(candidate.host)
        except ValueError:
            return  # not an IP address: nothing to send checks to
        known = next((c for c in core.remote_candidates if c.address == candidate.address), None)
        if known is not None:
            if known.type == "prflx" and candidate.type != "prflx":
                # The signalled candidate replaces the peer-reflexive one learnt from a
                # check (RFC 8445 7.3.1.3), so the pair reports what the peer said.
                core.remote_candidates[core.remote_candidates.index(known)] = candidate
                for pair in core.checklist:
                    if pair.remote is known:
                        pair.remote = candidate
            return
        core.remote_candidates.append(candidate)
        self._permit(candidate)
        if candidate.type == "relay" and core.config.relay.check_delay > 0:
            core.timers.set(
                ("pair-later", candidate.address), core.now + core.config.relay.check_delay
            )
            return
        self.pair_with(candidate)
        self.schedule()

    def _permit(self, candidate: Candidate) -> None:
        """TURN permissions for a remote candidate's address at once (RFC 8656 9),
        before any check needs them, as browsers do."""
        family = ip_version(candidate.host)
        for via, base in self.core.socket_bases.items():
            if base.type == "relay" and ip_version(base.host) == family:
                self.core.emit(events.PermissionWanted(candidate.host, via))

    def pair_all(self) -> None:
        """Pair every remote candidate known so far."""
        for remote in self.core.remote_candidates:
            self.pair_with(remote)

    def pair_with(self, remote: Candidate) -> CandidatePair | None:
        """Pair ``remote`` with our base toward it and with every relayed candidate."""
        core = self.core
        if not core.host_bases:
            return None
        local = core.base_for(remote.host, remote.port)
        pair = None
        if local is not None and not core.config.relay.only:
            pair = core.checklist.add(local, remote)
        family = ip_version(remote.host)
        for base in core.socket_bases.values():
            if base.type == "relay" and ip_version(base.host) == family:
                core.checklist.add(base, remote)
        return pair

    def release_triggers(self) -> None:
        """Checks that arrived before the peer's password get their triggered checks."""
        for local, address in self._pending_triggers:
            pair = self.core.checklist.find(local, address)
            if pair is not None:
                self.core.checklist.trigger(pair)
        self._pending_triggers.clear()

    # -- pacing --

    def holding(self) -> bool:
        """Hold checks until our mapping is measured: a check is a new flow, and on a
        sequential NAT a flow before the probe would shift every prediction. With UDP
        taken as blocked there is no mapping to wait for."""
        core = self.core
        gathering = core.config.gathering
        return core.hold_checks or bool(
            gathering.probe_mapping
            and gathering.stun_servers
            and not core.mapping_complete
            and not core.udp_blocked
        )

    def schedule(self) -> None:
        """Make sure the pacing timer runs (when there is anything to check with)."""
        core = self.core
        if not core.running or core.closed or "pace" in core.timers or core.remote_pwd is None:
            return
        core.timers.set("pace", core.now)

    def timer(self, name: Hashable) -> None:
        """The pacing timer, or a delayed relayed remote candidate."""
        core = self.core
        if isinstance(name, tuple):
            address = name[1]
            candidate = next((c for c in core.remote_candidates if c.address == address), None)
            if candidate is not None and not core.closed:
                self.pair_with(candidate)
                self.schedule()
            return
        if core.closed or core.remote_pwd is None or self.holding():
            return
        # IPv6 pairs before the hard-NAT predictions (RFC 8421: IPv6 first where both
        # work): IPv6 has no NAT to guess at, so its pairs are the likeliest to work.
        pair = core.checklist.next_pair(on_ipv6) or core.probing.next_ordered()
        if pair is None:
            pair = core.checklist.next_pair()
        if pair is None:
            return
        self.start_check(pair, nominate=False)
        core.timers.set("pace", core.now + core.config.checks.ta)

    # -- sending --

    def request(
        self, pair: CandidatePair, nominate: bool, usernames: tuple[str, str] | None = None
    ) -> StunMessage:
        """The Binding request that checks ``pair`` (RFC 8445 7.2.2); ``usernames`` are
        the peer's and our ufrag when not the current generation's (consent on the pair
        a restart has not replaced yet)."""
        core = self.core
        if usernames is None:
            assert core.remote_ufrag is not None
            usernames = (core.remote_ufrag, core.local_ufrag)
        request = StunMessage.request(Method.BINDING)
        request.add_string(Attr.USERNAME, f"{usernames[0]}:{usernames[1]}")
        request.add_uint32(
            Attr.PRIORITY, candidate_priority("prflx", pair.local.priority >> 8 & 0xFFFF)
        )
        if core.controlling:
            request.add_uint64(Attr.ICE_CONTROLLING, core.tie_breaker)
            if nominate:
                request.add_flag(Attr.USE_CANDIDATE)
        else:
            request.add_uint64(Attr.ICE_CONTROLLED, core.tie_breaker)
        return request

    def start_check(
        self, pair: CandidatePair, nominate: bool, policy: RetransmissionPolicy | None = None
    ) -> None:
        """Send a check on ``pair`` (again, if one is running: the new one replaces it)."""
        core = self.core
        assert core.remote_pwd is not None
        via = core.via_for(pair.local)
        if via is None:
            core.checklist.failed(pair)
            return
        if core.nominating is pair and not nominate:
            return  # the nomination check in flight answers for this pair too
        previous = self._pending.pop(id(pair), None)
        if previous is not None:
            # Cancelled as RFC 8445 7.3.1.4 says: no more retransmissions, but its
            # answer still counts (on a path slower than the retransmission interval,
            # the peer's checks would otherwise replace ours before any answer is back).
            core.transactions.quiet(previous)
        if pair.state != PairState.SUCCEEDED:  # a valid pair stays valid while re-checked
            pair.state = PairState.IN_PROGRESS
        pair.checks_sent += 1
        core.stats.checks_sent += 1
        destination = Address(pair.remote.host, pair.remote.port)
        _log.debug(
            "check {pair}{nom}", pair=pair.describe(), nom=" USE-CANDIDATE" if nominate else ""
        )
        self._pending[id(pair)] = core.start_transaction(
            self,
            _Check(pair, nominate, core.now, destination),
            message=self.request(pair, nominate),
            destination=destination,
            via=via,
            policy=policy or core.config.checks.policy,
            integrity_key=core.remote_pwd.encode(),
        )

    def cancel_others(self, keep: CandidatePair) -> None:
        """Stop every running check but ``keep``'s."""
        for pair_id, tid in list(self._pending.items()):
            if pair_id != id(keep):
                del self._pending[pair_id]
                self.core.transactions.cancel(tid)

    def clear(self) -> None:
        """Forget every running check."""
        self._pending.clear()

    def transaction_done(self, outcome: TransactionOutcome, payload: object) -> None:
        """A check ended."""
        assert isinstance(payload, _Check)
        pair = payload.pair
        if self._pending.get(id(pair)) == outcome.transaction_id:
            del self._pending[id(pair)]
        if outcome.response is not None:
            self.succeeded(outcome.response, pair, payload.nominate, payload.started)
        else:
            self._failed(outcome, pair, payload.nominate)

    def succeeded(
        self, response: StunResponse, pair: CandidatePair, nominate: bool, started: float
    ) -> None:
        """A check on ``pair`` was answered (RFC 8445 7.2.5.2)."""
        core = self.core
        if core.closed:
            return
        destination = Address(pair.remote.host, pair.remote.port)
        if response.source != destination:
            _log.debug(
                "non-symmetric answer for {pair} from {src}",
                pair=pair.describe(),
                src=response.source,
            )
            core.checklist.failed(pair)
            core.check_failure()
            return
        try:
            mapped = response.message.get_address(Attr.XOR_MAPPED_ADDRESS)
        except StunDecodeError:
            mapped = None
        rtt = core.now - started
        first_success = pair.state != PairState.SUCCEEDED
        core.checklist.succeeded(pair, (mapped.host, mapped.port) if mapped else None, rtt)
        if mapped is not None:
            # A peer-reflexive local candidate (RFC 8445 7.2.5.3.1); not signalled.
            prflx = make_candidate(
                "prflx", mapped.host, mapped.port, base=(pair.local.host, pair.local.port)
            )
            core.add_local(prflx, announce=False)
            if core.via_for(pair.local) == MAIN:
                core.gatherer.peer_sample(destination, mapped)
        if first_success:
            _log.info("pair valid: {pair} (rtt {rtt:.1f} ms)", pair=pair.describe(), rtt=rtt * 1000)
        was_selected = core.selected is not None
        core.selector.check_succeeded(pair, nominate)
        if not was_selected:
            self.schedule()

    def _failed(self, outcome: TransactionOutcome, pair: CandidatePair, nominate: bool) -> None:
        core = self.core
        if core.closed:
            return
        error = outcome.error
        if isinstance(error, StunErrorResponse) and error.code == 487:
            # Role conflict (RFC 8445 7.2.5.1): switch role, check the pair again.
            core.stats.role_conflicts += 1
            _log.info(
                "ICE role is now {role}", role="controlled" if core.controlling else "controlling"
            )
            core.set_role(not core.controlling)
            core.checklist.trigger(pair)
            self.schedule()
            return
        _log.debug("check failed {pair}: {reason}", pair=pair.describe(), reason=error)
        if nominate and core.nominating is pair:
            core.nominating = None
        if pair is core.selected:
            return
        if nominate and core.selector.recovering:
            # A pair nominated to replace a lost one did not answer: try the next.
            core.checklist.invalidate(pair)
            core.selector.recover()
            return
        core.checklist.failed(pair)
        if core.controlling and core.selected is None:
            core.selector.consider()
        core.check_failure()

    # -- answering --

    def request_received(self, request: StunMessage, source: tuple[str, int], via: int) -> None:
        """A Binding request from the peer (RFC 8445 7.3)."""
        core = self.core
        core.stats.checks_received += 1
        try:
            username = request.get_string(Attr.USERNAME)
            priority = request.get_uint32(Attr.PRIORITY)
            controlling = request.get_uint64(Attr.ICE_CONTROLLING)
            controlled = request.get_uint64(Attr.ICE_CONTROLLED)
        except StunDecodeError:
            core.stats.malformed += 1
            return
        if self._previous_generation(request, username, source, via):
            return
        if (
            username is None
            or not username.startswith(core.local_ufrag + ":")
            or not request.check_integrity(core.local_pwd.encode())
        ):
            core.stats.unauthenticated += 1
            _log.debug("dropped unauthenticated check from {src}", src=source)
            return
        if priority is None:
            self._respond(request.error_response(400, "PRIORITY missing"), source, via)
            return
        remote_ufrag = username.split(":", 1)[1]
        if core.remote_ufrag is not None and remote_ufrag != core.remote_ufrag:
            core.stats.unauthenticated += 1
            return
        if core.config.relay.only:
            base = core.socket_bases.get(via)
            if base is None or base.type != "relay":
                # Only relayed pairs may be used: a check that reached a host socket
                # (the peer checking our host candidate, from wherever) is not answered
                # and makes no peer-reflexive pair, or the path would bypass the relay.
                core.stats.relay_only_ignored += 1
                return
        # Role conflict (RFC 8445 7.3.1.1).
        if core.controlling and controlling is not None:
            core.stats.role_conflicts += 1
            if core.tie_breaker >= controlling:
                self._respond(request.error_response(487, "Role Conflict"), source, via)
                return
            _log.info("ICE role is now controlled")
            core.set_role(False)
        elif not core.controlling and controlled is not None:
            core.stats.role_conflicts += 1
            if core.tie_breaker >= controlled:
                _log.info("ICE role is now controlling")
                core.set_role(True)
            else:
                self._respond(request.error_response(487, "Role Conflict"), source, via)
                return
        response = request.success_response()
        response.add_address(Attr.XOR_MAPPED_ADDRESS, source)
        self._respond(response, source, via)

        remote = next((c for c in core.remote_candidates if c.address == source), None)
        if remote is None:
            # Peer-reflexive remote candidate (RFC 8445 7.3.1.3).
            remote = Candidate(
                foundation=str(random.getrandbits(31)),
                component=1,
                transport="udp",
                priority=priority,
                host=source[0],
                port=source[1],
                type="prflx",
            )
            core.remote_candidates.append(remote)
            _log.debug("peer-reflexive remote candidate {c}", c=remote.to_sdp())
        local = core.socket_bases.get(via) or core.base_for(*source)
        if local is None:
            return  # from a family we have no host candidate of: nothing to pair
        pair = core.checklist.find(local, source) or core.checklist.add(local, remote)
        if pair is None:
            return
        use_candidate = request.has(Attr.USE_CANDIDATE) and not core.controlling
        if use_candidate:
            pair.remote_nominated = True
        if pair.state == PairState.SUCCEEDED:
            if use_candidate and (not core.settled() or pair is not core.selected):
                pair.nominated = True
                core.selector.select(pair)  # selects, or upgrades from a relayed pair
            return
        if core.settled() and not use_candidate:
            return
        if core.remote_pwd is None:
            self._pending_triggers.append((local, source))
            return
        core.checklist.trigger(pair)
        self.schedule()

    def _previous_generation(
        self, request: StunMessage, username: str | None, source: tuple[str, int], via: int
    ) -> bool:
        """While a restart runs, the peer's consent checks on the pair still carrying
        data use the old credentials: answered, and nothing else (True when it was one)."""
        core = self.core
        credentials = core.previous_credentials
        if credentials is None or username is None:
            return False
        ufrag, pwd = credentials
        if not username.startswith(ufrag + ":") or not request.check_integrity(pwd.encode()):
            return False
        response = request.success_response()
        response.add_address(Attr.XOR_MAPPED_ADDRESS, source)
        self._respond(response, source, via, pwd)
        return True

    def _respond(
        self,
        response: StunMessage,
        destination: tuple[str, int],
        via: int,
        pwd: str | None = None,
    ) -> None:
        core = self.core
        key = (pwd if pwd is not None else core.local_pwd).encode()
        core.send(
            encode(response, integrity_key=key, fingerprint=True),
            destination,
            via,
        )
        core.stats.responses_sent += 1

# -*- test-case-name: tests.unit.test_ice_core,tests.unit.test_ice_agent -*-
"""After selection: consent freshness (RFC 7675) and keepalives (RFC 8445 11) for the
sans-I/O :class:`IceCore <holepunch.ice.core.IceCore>`.

A consent check (an ordinary authenticated Binding request on the pair carrying data)
goes out every ``interval`` seconds +/- 20 %; an answer from the peer's address renews
consent. The checks use the credentials of the generation that selected the pair, so
they go on unchanged while an ICE restart runs.

When ``RestartConfig.consent_failures`` checks in a row go unanswered (the next one goes
after ``failed_check_interval`` once one failed), the core restarts ICE
(:meth:`IceCore.restart <holepunch.ice.core.IceCore.restart>`) instead of giving up: the
NAT may have dropped its mapping or changed its address. With no answer at all for
``timeout`` seconds, consent is lost: the core emits :class:`ConsentLost
<holepunch.ice.events.ConsentLost>` and closes.

The recent checks also tell whether a direct path is degraded (slow answers, or many
unanswered), for :mod:`holepunch.ice.betterpath`. A Binding indication is sent whenever
nothing else was sent for ``keepalive_interval``, so the NAT keeps the mapping.
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from dataclasses import dataclass

from twisted.logger import Logger

from holepunch.ice import events
from holepunch.ice.checklist import CandidatePair
from holepunch.ice.parts import Core
from holepunch.stun.message import StunMessage, encode
from holepunch.stun.transactions import RetransmissionPolicy, TransactionOutcome
from holepunch.stun.wire import Address, Method

_log = Logger()

_CONSENT_POLICY = RetransmissionPolicy(rto=0.5, rc=3, rm=2)

_SUSPECT_POLICY = RetransmissionPolicy(rto=0.25, rc=3, rm=2)
"""A consent check after the peer fell silent: the same three requests, twice as fast
(1.25 s in all), since silence is already a sign."""

_WINDOW = 4
"""Consent checks the degradation judgement looks back on."""


@dataclass(frozen=True)
class _ConsentCheck:
    pair: CandidatePair
    started: float


class Consent:
    """Consent and keepalive timers of one core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.last_consent = 0.0
        self.failures = 0
        """Consent checks unanswered in a row."""
        self.recent: deque[float | None] = deque(maxlen=_WINDOW)
        """Round-trip times of the latest consent checks (None: unanswered)."""
        self._usernames: tuple[str, str] | None = None
        self._remote_pwd: str | None = None
        self.last_heard = 0.0
        self._checking = False

    def start(self) -> None:
        """A pair was selected: consent is fresh now, under the current credentials."""
        core = self.core
        self.last_consent = core.now
        self.failures = 0
        self.recent.clear()
        if core.remote_ufrag is not None:
            self._usernames = (core.remote_ufrag, core.local_ufrag)
            self._remote_pwd = core.remote_pwd
        self.last_heard = core.now
        self._schedule_consent()
        self._schedule_keepalive()
        self._schedule_silence()

    def refresh(self) -> None:
        """The peer answered on the selected pair."""
        self.last_consent = self.core.now
        self.failures = 0

    def heard(self) -> None:
        """Application data came from the peer on the pair carrying data."""
        self.last_heard = self.core.now

    def _schedule_silence(self) -> None:
        core = self.core
        silence = core.config.restart.silence
        if not core.closed and silence > 0 and core.config.consent.interval > 0:
            core.timers.set("silence", core.now + silence / 2)

    def _silence_tick(self) -> None:
        """We send and hear nothing: the path may be gone; check consent now."""
        core = self.core
        if core.closed or core.carrying is None:
            return
        silence = core.config.restart.silence
        unanswered = core.last_data_sent > self.last_heard  # sent since we last heard
        if unanswered and not self._checking and core.now - self.last_heard > silence:
            _log.info("nothing from the peer for {s:.1f}s: checking consent", s=silence)
            self._consent_tick(_SUSPECT_POLICY)
        self._schedule_silence()

    @property
    def degraded(self) -> bool:
        """The latest consent checks were slow or went unanswered too often."""
        config = self.core.config.restart
        if len(self.recent) < 2:
            return False
        lost = sum(1 for rtt in self.recent if rtt is None or rtt > _CONSENT_POLICY.rto)
        answered = [rtt for rtt in self.recent if rtt is not None]
        slow = bool(answered) and statistics.median(answered) > config.degraded_rtt
        return slow or lost / len(self.recent) > config.degraded_loss

    def _schedule_consent(self, after: float | None = None) -> None:
        core = self.core
        interval = core.config.consent.interval
        if core.closed or interval <= 0:
            return
        wait = after if after is not None else interval * random.uniform(0.8, 1.2)
        core.timers.set("consent", core.now + wait)

    def _schedule_keepalive(self) -> None:
        core = self.core
        if core.closed or core.config.consent.keepalive_interval <= 0:
            return
        core.timers.set("keepalive", core.now + core.config.consent.keepalive_interval)

    def timer(self, name: str) -> None:
        """A consent check or a keepalive is due."""
        if name == "consent":
            self._consent_tick()
        elif name == "silence":
            self._silence_tick()
        else:
            self._keepalive_tick()

    def _consent_tick(self, policy: RetransmissionPolicy = _CONSENT_POLICY) -> None:
        core = self.core
        pair = core.carrying
        if core.closed or pair is None:
            return
        elapsed = core.now - self.last_consent
        if elapsed > core.config.consent.timeout:
            _log.info("consent lost: no answer from the peer for {s:.0f}s", s=elapsed)
            core.emit(events.ConsentLost(elapsed))
            core.close(core.now)
            return
        core.stats.consent_checks += 1
        via = core.via_for(pair.local)
        if via is None or self._remote_pwd is None or self._usernames is None:
            self._schedule_consent()  # its relay is lost, say: the timeout still runs
            return
        self._checking = True
        core.start_transaction(
            self,
            _ConsentCheck(pair, core.now),
            message=core.checker.request(pair, nominate=False, usernames=self._usernames),
            destination=Address(*pair.remote.address),
            via=via,
            integrity_key=self._remote_pwd.encode(),
            policy=policy,
        )
        self._schedule_consent()

    def transaction_done(self, outcome: TransactionOutcome, payload: object) -> None:
        """A consent check was answered (or not)."""
        assert isinstance(payload, _ConsentCheck)
        core = self.core
        self._checking = False
        if core.closed or payload.pair is not core.carrying:
            return
        if outcome.response is not None and outcome.response.source == Address(
            *payload.pair.remote.address
        ):
            self.last_consent = core.now
            self.last_heard = core.now
            self.failures = 0
            self.recent.append(core.now - payload.started)
            return
        self.failures += 1
        self.recent.append(None)
        core.stats.consent_failures += 1
        config = core.config.restart
        _log.info(
            "consent check {n} in a row unanswered on {pair}",
            n=self.failures,
            pair=payload.pair.describe(),
        )
        if (
            config.on_consent_loss
            and self.failures >= config.consent_failures
            and core.previous is None
        ):
            core.restart(core.now, "consent")
        else:
            self._schedule_consent(config.failed_check_interval)

    def _keepalive_tick(self) -> None:
        core = self.core
        pair = core.carrying
        if core.closed or pair is None:
            return
        interval = core.config.consent.keepalive_interval
        idle = core.now - core.last_sent
        if idle >= interval * 0.99:
            core.stats.keepalives += 1
            via = core.via_for(pair.local)
            if via is not None:
                indication = encode(StunMessage.indication(Method.BINDING), fingerprint=True)
                core.send(indication, pair.remote.address, via)
            self._schedule_keepalive()
        else:
            core.timers.set("keepalive", core.now + interval - idle)

# -*- test-case-name: tests.unit.test_ice_agent -*-
"""After selection: consent freshness (RFC 7675) and keepalives (RFC 8445 11) for the
sans-I/O :class:`IceCore <holepunch.ice.core.IceCore>`.

A consent check (an ordinary authenticated Binding request on the selected pair) goes
out every ``interval`` seconds +/- 20 %; an answer from the peer's address renews
consent. With no answer for ``timeout`` seconds consent is lost: the core emits
:class:`ConsentLost <holepunch.ice.events.ConsentLost>` and closes. A Binding indication
is sent whenever nothing else was sent for ``keepalive_interval``, so the NAT keeps the
mapping.
"""

from __future__ import annotations

import random

from twisted.logger import Logger

from holepunch.ice import events
from holepunch.ice.checklist import CandidatePair
from holepunch.ice.parts import Core
from holepunch.stun.message import StunMessage, encode
from holepunch.stun.transactions import RetransmissionPolicy, TransactionOutcome
from holepunch.stun.wire import Address, Method

_log = Logger()

_CONSENT_POLICY = RetransmissionPolicy(rto=0.5, rc=3, rm=2)


class Consent:
    """Consent and keepalive timers of one core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.last_consent = 0.0

    def start(self) -> None:
        """A pair was selected: consent is fresh now."""
        self.last_consent = self.core.now
        self._schedule_consent()
        self._schedule_keepalive()

    def refresh(self) -> None:
        """The peer answered on the selected pair."""
        self.last_consent = self.core.now

    def _schedule_consent(self) -> None:
        core = self.core
        interval = core.config.consent.interval
        if core.closed or interval <= 0:
            return
        core.timers.set("consent", core.now + interval * random.uniform(0.8, 1.2))

    def _schedule_keepalive(self) -> None:
        core = self.core
        if core.closed or core.config.consent.keepalive_interval <= 0:
            return
        core.timers.set("keepalive", core.now + core.config.consent.keepalive_interval)

    def timer(self, name: str) -> None:
        """A consent check or a keepalive is due."""
        if name == "consent":
            self._consent_tick()
        else:
            self._keepalive_tick()

    def _consent_tick(self) -> None:
        core = self.core
        pair = core.selected
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
        if via is None or core.remote_pwd is None:
            self._schedule_consent()  # its relay is lost: the timeout still runs
            return
        core.start_transaction(
            self,
            pair,
            message=core.checker.request(pair, nominate=False),
            destination=Address(*pair.remote.address),
            via=via,
            policy=_CONSENT_POLICY,
            integrity_key=core.remote_pwd.encode(),
        )
        self._schedule_consent()

    def transaction_done(self, outcome: TransactionOutcome, payload: object) -> None:
        """A consent check was answered (or not)."""
        assert isinstance(payload, CandidatePair)
        if outcome.response is not None and outcome.response.source == Address(
            *payload.remote.address
        ):
            self.last_consent = self.core.now

    def _keepalive_tick(self) -> None:
        core = self.core
        pair = core.selected
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

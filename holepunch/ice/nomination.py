# -*- test-case-name: tests.unit.test_ice_core -*-
"""Nomination and selection (RFC 8445 8.1), one selector per role, as pion/ice does.

- :class:`ControllingSelector`: regular nomination. Once a pair is valid and no pair of
  higher priority can still succeed (or after ``nomination_delay``), it checks that pair
  again with USE-CANDIDATE; the answer selects it. A relayed pair is nominated only after
  ``relay_wait`` without a direct one (longer while port prediction or birthday probing
  runs).
- :class:`ControlledSelector`: a pair is selected when a USE-CANDIDATE request arrives on
  a valid pair, or when the check of a pair the peer nominated succeeds (this also
  accepts aggressive nomination).

Both: a direct pair that succeeds after a relayed one was selected (or while the
selected direct one is degraded, :mod:`holepunch.ice.betterpath`) replaces it on the
same connection (:class:`PathChanged <holepunch.ice.events.PathChanged>`); the
controlled side follows any later USE-CANDIDATE of the controlling side. After an ICE
restart the new generation's selection moves the connection the same way. Once a direct
pair is selected, everything still trying another path stops (probing, other checks,
losing birthday sockets).

Recovery: when the selected pair can no longer work (our relay was lost, or the peer
replaced the relayed candidate it used: :meth:`Selector.pairs_lost`), the connection
moves to the next pair that works, with :class:`PathChanged
<holepunch.ice.events.PathChanged>`. The controlling agent nominates the best valid pair,
or the first pair whose check succeeds (the new relayed candidate's pairs, usually); the
controlled agent follows a USE-CANDIDATE on another pair while its selected pair is
relayed.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.logger import Logger

from holepunch.ice import events
from holepunch.ice.checklist import CandidatePair, on_ipv6, relayed
from holepunch.ice.parts import Core

_log = Logger()


class Selector:
    """What both roles do once a pair is chosen."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def check_succeeded(self, pair: CandidatePair, nominate: bool) -> None:
        """A check of ours on ``pair`` was answered."""
        raise NotImplementedError

    def consider(self) -> None:
        """Nominate if it is time (controlling only)."""

    def timer(self, name: str) -> None:
        """The nomination delay or the relay wait is over."""
        core = self.core
        if core.selected is not None or core.nominating is not None:
            return
        best = core.checklist.best_valid()
        if best is not None:
            self.nominate(best)

    def nominate(self, pair: CandidatePair) -> None:
        """Check ``pair`` again with USE-CANDIDATE."""
        core = self.core
        core.timers.cancel("nominate")
        core.nominating = pair
        _log.debug("nominating {pair}", pair=pair.describe())
        core.checker.start_check(pair, nominate=True)

    def select(self, pair: CandidatePair) -> None:
        """``pair`` carries the connection from now on."""
        core = self.core
        if core.selected is not None:
            if pair is core.selected:
                return
            if self.recovering and pair.valid:
                self.move(pair)
            elif self.better(pair) or not core.controlling:
                self._upgrade(pair)
            return
        if core.previous is not None:
            self._restarted(pair)
            return
        core.selected = pair
        core.nominating = None
        core.timers.cancel("timeout")
        if not relayed(pair):
            self._settle(pair)
        via = core.via_for(pair.local)
        assert via is not None
        if pair.local.type == "relay":
            # Application data through our relay goes as ChannelData (4-byte header)
            # rather than Send indications (36 bytes) once the pair is selected.
            core.emit(events.ChannelWanted(via, pair.remote.address))
        method = core.method(pair)
        elapsed = core.now - (core.started_at if core.started_at is not None else core.now)
        _log.info(
            "selected {pair} as {method} after {ms:.0f} ms",
            pair=pair.describe(),
            method=method,
            ms=elapsed * 1000,
        )
        core.emit(events.PairSelected(pair, via, method, elapsed))
        core.consent.start()
        core.paths.start()
        core.flush_early()

    def better(self, pair: CandidatePair) -> bool:
        """``pair`` (valid) is worth leaving the selected pair for: it is direct and the
        selected one is relayed, or degraded (:mod:`holepunch.ice.betterpath`)."""
        core = self.core
        selected = core.selected
        if selected is None or pair is selected or relayed(pair):
            return False
        return relayed(selected) or core.consent.degraded

    def _restarted(self, pair: CandidatePair) -> None:
        """The restart's generation selected ``pair``: the connection moves to it, and
        the old generation is released."""
        self.move(pair, "restart")
        self.core.restart_done(pair)
        self.core.flush_early()

    @property
    def recovering(self) -> bool:
        """The selected pair was lost (:meth:`pairs_lost`) and no other carries the
        connection yet."""
        selected = self.core.selected
        return selected is not None and not selected.valid

    def pairs_lost(self, pairs: Sequence[CandidatePair], reason: str) -> None:
        """``pairs`` can no longer work (their relay is gone, or the peer replaced its
        relayed candidate): they fail. If the selected pair is one of them the
        connection moves to the next pair that works (:meth:`recover`)."""
        core = self.core
        if not pairs:
            return
        for pair in pairs:
            core.checklist.invalidate(pair)
        if core.nominating is not None and core.nominating in pairs:
            core.nominating = None
        selected = core.selected
        if selected is not None and selected in pairs:
            _log.info(
                "selected pair {pair} lost ({reason}); moving to the next pair that works",
                pair=selected.describe(),
                reason=reason,
            )
            self.recover()
        core.checker.schedule()

    def recover(self) -> None:
        """The selected pair is lost: the controlling agent nominates the best valid
        pair left (if any; else the first new pair whose check succeeds)."""
        core = self.core
        if not core.controlling or not self.recovering or core.nominating is not None:
            return
        best = core.checklist.best_valid()
        if best is not None:
            self.nominate(best)

    def move(self, pair: CandidatePair, reason: str = "recovery") -> None:
        """The connection moves from its selected pair to ``pair`` (the same
        connection; a :class:`PathChanged <holepunch.ice.events.PathChanged>` says so):
        ``recovery`` (the selected pair was lost), ``upgrade`` (off a relay),
        ``better-path`` (off a degraded path)."""
        core = self.core
        via = core.via_for(pair.local)
        if via is None:
            core.checklist.invalidate(pair)
            self.recover()
            return
        old = core.selected
        core.selected = pair
        core.nominating = None
        pair.nominated = True
        if reason == "recovery":
            core.stats.paths_recovered += 1
        core.stats.path_changes += 1
        if not relayed(pair):
            self._settle(pair)
        core.consent.start()
        if pair.local.type == "relay":
            core.emit(events.ChannelWanted(via, pair.remote.address))
        method = core.method(pair)
        _log.info(
            "moved from {old} to {pair} ({method}, {reason})",
            old=old.describe() if old is not None else "nothing",
            pair=pair.describe(),
            method=method,
            reason=reason,
        )
        core.emit(events.PathChanged(pair, via, method, reason))
        core.paths.start()

    def _upgrade(self, pair: CandidatePair) -> None:
        """Leave the relay (or a degraded path) for a pair that succeeded later."""
        old = self.core.selected
        self.move(pair, "upgrade" if old is not None and relayed(old) else "better-path")

    def _settle(self, pair: CandidatePair) -> None:
        """A direct pair is selected: stop everything still trying another path."""
        core = self.core
        core.probing.settle()
        core.timers.cancel("nominate", "relay")
        core.checker.cancel_others(pair)
        keep = core.via_for(pair.local)
        # Birthday sockets that lost are closed now; the winner carries the connection.
        for via in core.probing.release_losers(keep):
            core.release_socket(via)


class ControllingSelector(Selector):
    """Regular nomination by the controlling agent."""

    def check_succeeded(self, pair: CandidatePair, nominate: bool) -> None:
        core = self.core
        if core.selected is not None:
            if pair is core.selected:
                core.consent.refresh()
            elif self.recovering:
                # The selected pair is lost: the first pair that works takes over.
                if nominate:
                    self.move(pair)
                elif core.nominating is None:
                    self.nominate(pair)
            elif self.better(pair):
                # A direct pair came through while we are on the relay (or a degraded
                # path): move to it.
                if nominate:
                    self.select(pair)
                elif core.nominating is None:
                    self.nominate(pair)
            return
        if nominate:
            pair.nominated = True
            self.select(pair)
        else:
            self.consider()

    def consider(self) -> None:
        core = self.core
        if core.selected is not None or core.nominating is not None:
            return
        best = core.checklist.best_valid()
        if best is None:
            return
        if relayed(best):
            direct_pending = core.hard_nat_pending() or any(
                not relayed(p) for p in core.checklist.pending()
            )
            if not direct_pending:
                self.nominate(best)
            elif "relay" not in core.timers:
                relay = core.config.relay
                wait = relay.wait_hard if core.techniques else relay.wait
                _log.info("relay works; waiting {s:g}s for a direct path", s=wait)
                core.timers.set("relay", core.now + wait)
            return
        if not core.checklist.higher_pending(best):
            self.nominate(best)
        elif "nominate" not in core.timers:
            checks = core.config.checks
            wait = checks.nomination_delay
            if not on_ipv6(best) and any(on_ipv6(p) for p in core.checklist.pending()):
                # Happy eyeballs (RFC 8421, RFC 8305): an IPv6 pair through two firewalls
                # answers only once the peer's own check has opened its side.
                wait = max(wait, checks.ipv6_wait)
            core.timers.set("nominate", core.now + wait)


class ControlledSelector(Selector):
    """The controlled agent follows the peer's USE-CANDIDATE."""

    def check_succeeded(self, pair: CandidatePair, nominate: bool) -> None:
        core = self.core
        if core.selected is not None:
            if pair is core.selected:
                core.consent.refresh()
            elif relayed(core.selected) and pair.remote_nominated:
                self.select(pair)  # an upgrade, or the peer moved off a lost relay
            return
        if pair.remote_nominated:
            pair.nominated = True
            self.select(pair)


def selector_for(core: Core) -> Selector:
    """The selector for the core's current role."""
    return ControllingSelector(core) if core.controlling else ControlledSelector(core)

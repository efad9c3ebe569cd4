# -*- test-case-name: tests.unit.test_ice_core -*-
"""Looking for a better path while connected, for the sans-I/O
:class:`IceCore <holepunch.ice.core.IceCore>`.

While the selected pair is relayed, or is direct but degraded (its consent checks are
slow or go unanswered, :attr:`Consent.degraded <holepunch.ice.consent.Consent.degraded>`),
the direct pairs of the check list are checked again on an exponential schedule:
``RestartConfig.probe_min`` seconds after selection, doubling up to ``probe_max``, as
Tailscale re-probes every few seconds while not direct. Checking both ways also opens
the NATs again (a firewall rule that blocked the direct path may be gone, a mapping may
have come back). A direct pair that answers is taken by the selectors' upgrade rule
(:mod:`holepunch.ice.nomination`): the controlling side nominates it, the connection
moves (:class:`PathChanged <holepunch.ice.events.PathChanged>`) and the search stops.

The same schedule serves a core with no pair selected while another path carries the
connection (a punched TCP connection, :meth:`IceCore.keep_trying
<holepunch.ice.core.IceCore.keep_trying>`): its failed pairs are checked again, round
after round, until one is selected and the connection moves to UDP.
"""

from __future__ import annotations

from twisted.logger import Logger

from holepunch.ice.checklist import CandidatePair, PairState, relayed
from holepunch.ice.parts import Core

_log = Logger()

_MAX_PAIRS = 8
"""Direct pairs checked again on each round, highest priority first."""


class PathSearch:
    """The better-path schedule of one core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.wait = 0.0
        self.rounds = 0

    def wanted(self) -> bool:
        """The selected pair is relayed, or direct and degraded."""
        core = self.core
        selected = core.selected
        if core.closed or selected is None or core.previous is not None:
            return False
        return relayed(selected) or core.consent.degraded

    def start(self) -> None:
        """A pair was selected (or the path changed): schedule the first look."""
        core = self.core
        config = core.config.restart
        self.wait = config.probe_min
        self.rounds = 0
        if config.better_path and config.probe_min > 0:
            core.timers.set("better", core.now + self.wait)
        else:
            core.timers.cancel("better")

    def keep_trying(self) -> None:
        """No pair is selected and another path carries the connection
        (:meth:`IceCore.keep_trying <holepunch.ice.core.IceCore.keep_trying>`): check
        the failed pairs again on the same schedule."""
        self.wait = self.core.config.restart.probe_min
        self.rounds = 0
        self.core.timers.set("better", self.core.now + self.wait)

    def retry(self) -> None:
        """One round while another path carries the connection: every failed pair is
        checked again (a triggered check), then the wait doubles."""
        core = self.core
        pairs = [p for p in core.checklist if p.state == PairState.FAILED] if core.running else []
        self.rounds += 1
        if pairs:
            _log.info(
                "checking {n} failed UDP pairs again (round {r}; another path carries "
                "the connection)",
                n=len(pairs),
                r=self.rounds,
            )
        for pair in pairs:
            core.checklist.trigger(pair)
        core.stats.better_path_checks += len(pairs)
        core.checker.schedule()
        self.wait = min(self.wait * 2, core.config.restart.probe_max)
        core.timers.set("better", core.now + self.wait)

    def candidates(self) -> list[CandidatePair]:
        """The direct pairs worth checking again."""
        core = self.core
        return [p for p in core.checklist if not relayed(p) and p is not core.selected][:_MAX_PAIRS]

    def timer(self) -> None:
        """Time to look: check the direct pairs again, then wait twice as long."""
        core = self.core
        config = core.config.restart
        if core.closed:
            return
        if core.selected is None:
            if core.patient:
                self.retry()
            return
        if self.wanted() and core.remote_pwd is not None:
            pairs = self.candidates()
            self.rounds += 1
            if pairs:
                _log.info(
                    "looking for a better path than {pair} ({n} pairs, round {r})",
                    pair=core.selected.describe(),
                    n=len(pairs),
                    r=self.rounds,
                )
            for pair in pairs:
                if core.nominating is pair:
                    continue
                core.stats.better_path_checks += 1
                core.checker.start_check(pair, nominate=False)
            self.wait = min(self.wait * 2, config.probe_max)
        else:
            # Direct and healthy: look again later, in case it degrades.
            self.wait = config.probe_min
        core.timers.set("better", core.now + self.wait)

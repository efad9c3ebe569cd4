# -*- test-case-name: tests.unit.test_ice_hardnat -*-
"""Port prediction and birthday probing as check schedules of the sans-I/O
:class:`IceCore <holepunch.ice.core.IceCore>`.

:mod:`holepunch.ice.hardnat` holds the rules (which technique a pair of mappings needs,
the predicted ports, the birthday odds); this module runs them:

- **Port prediction**: predicted remote candidates of a sequential peer, checked before
  anything else and in order (when both sides are sequential each side's i-th new flow
  must meet the other's i-th predicted port).
- **Birthday, hard side** (our NAT allocates at random): the core asks its adapter for
  up to ``birthday_sockets`` extra sockets, paced, and each sends one check to the peer's
  public address, opening that many random public ports that accept replies from it.
- **Birthday, easy side** (the peer's NAT allocates at random, ours does not): checks to
  distinct random ports of the peer's signalled public address, paced at ``probe_rate``,
  at most ``max_probes`` within ``max_probe_time``, never to any other address.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from twisted.logger import Logger

from holepunch.ice import events
from holepunch.ice.candidate import Candidate, candidate_priority, make_candidate
from holepunch.ice.checklist import CandidatePair, PairState, relayed
from holepunch.ice.events import MAIN
from holepunch.ice.hardnat import PORT_RANGE, Technique, plan, predicted_ports
from holepunch.ice.parts import Core
from holepunch.stun.transactions import RetransmissionPolicy, TransactionOutcome
from holepunch.stun.wire import Address

_log = Logger()

_PROBE_POLICY = RetransmissionPolicy(rto=2.0, rc=1, rm=1)
_PROBE_BURST = 10
"""At most this many probes at once when the timer was late (then ten times the rate
until the owed ones are out)."""
_PROBE_GRACE = 2.5
"""After the last probe, how long its answer may take before the attempt is judged."""


@dataclass
class _Probe:
    local: Candidate
    remote: Candidate
    started: float


class HardNatProbing:
    """The hard-NAT schedules of one core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.ordered: list[CandidatePair] = []
        """Predicted pairs, checked first and in this order."""
        self.probing = False
        self._probe_started = False
        self._probe_deadline = 0.0
        self._probe_epoch = 0.0
        """When probing started: probe ``n`` is due ``n / probe_rate`` after it."""
        self._probes_this_run = 0
        self._probe_ports: list[int] = []
        self._birthday_vias: set[int] = set()
        self._sockets_left = 0
        self._target: Candidate | None = None

    def pending(self) -> bool:
        """Birthday probing is under way or about to start."""
        timers = self.core.timers
        return any(name in timers for name in ("probe", "probe-end", "birthday-open")) or (
            self.probing
        )

    def plan(self) -> None:
        """Decide, once both mappings and the peer's password are known, what to add."""
        core = self.core
        if (
            core.techniques
            or not core.running
            or core.remote_pwd is None
            or core.mapping is None
            or core.remote_mapping is None
            or core.base_for(core.remote_mapping.address, 0) is None
            or core.settled()
        ):
            return
        core.techniques = plan(core.mapping, core.remote_mapping)
        if not core.techniques:
            return
        _log.info(
            "hard NAT plan: {t} (ours {ours}, theirs {theirs})",
            t=sorted(t.value for t in core.techniques),
            ours=core.mapping,
            theirs=core.remote_mapping,
        )
        if core.techniques & {Technique.PREDICT, Technique.PREDICT_IN_ORDER}:
            self._add_predictions()
        if Technique.BIRTHDAY_HARD in core.techniques:
            self._open_birthday_sockets()
        if Technique.BIRTHDAY_EASY in core.techniques:
            core.timers.set("probe", core.now + core.config.hardnat.birthday_delay)

    def next_ordered(self) -> CandidatePair | None:
        """The next predicted pair still to check, if any."""
        while self.ordered:
            pair = self.ordered.pop(0)
            if pair.state in (PairState.WAITING, PairState.FROZEN):
                self.core.stats.predicted_checks += 1
                return pair
        return None

    def remote_at(self, host: str, port: int, tag: str) -> Candidate:
        """The remote candidate at ``host:port``, made (not signalled) if unknown."""
        core = self.core
        known = next((c for c in core.remote_candidates if c.address == (host, port)), None)
        if known is not None:
            return known
        candidate = Candidate(
            foundation=tag.replace("-", "")[:8] or "x",
            component=1,
            transport="udp",
            priority=candidate_priority("srflx", 0),
            host=host,
            port=port,
            type="srflx",
            extensions=((tag, "1"),),
        )
        core.remote_candidates.append(candidate)
        return candidate

    def _add_predictions(self) -> None:
        """Predicted candidates of a sequential peer, checked first and in order."""
        core = self.core
        assert core.remote_mapping is not None
        remote = core.remote_mapping
        for port in predicted_ports(remote, core.config.hardnat.prediction_window):
            candidate = self.remote_at(remote.address, port, "predicted")
            local = core.base_for(remote.address, port)
            if local is None:
                return
            pair = core.checklist.find(local, candidate.address) or core.checklist.add(
                local, candidate, tag="port-prediction"
            )
            if pair is not None:
                pair.tag = "port-prediction"
                pair.state = PairState.WAITING
                self.ordered.append(pair)

    # -- birthday, hard side --

    def _open_birthday_sockets(self) -> None:
        core = self.core
        assert core.remote_mapping is not None
        self._target = self.remote_at(
            core.remote_mapping.address, core.remote_mapping.last_port, "mapped"
        )
        self._sockets_left = core.config.hardnat.birthday_sockets
        core.checklist.max_pairs += core.config.hardnat.birthday_sockets
        self._open_one()

    def _open_one(self) -> None:
        core = self.core
        core.timers.cancel("birthday-open")
        if core.closed or core.settled() or self._sockets_left <= 0:
            return
        self._sockets_left -= 1
        core.emit(events.SocketWanted(core.new_via()))

    def socket_opened(self, via: int, local: tuple[str, int]) -> None:
        """A birthday socket is open: one check from it to the peer's public address."""
        core = self.core
        target = self._target
        if target is None or core.closed:
            core.release_socket(via)
            return
        toward = core.base_for(target.host, target.port)
        if toward is None:
            core.release_socket(via)
            return
        base = make_candidate("host", toward.host, local[1], local_preference=0)
        core.socket_bases[via] = base
        self._birthday_vias.add(via)
        core.stats.birthday_sockets += 1
        hardnat = core.config.hardnat
        pair = core.checklist.add(base, target, tag="birthday")
        if pair is not None:
            # A second send keeps the NAT's unreplied entry alive past 30 s of probing.
            policy = RetransmissionPolicy(rto=hardnat.max_probe_time / 2, rc=2, rm=1)
            core.checker.start_check(pair, nominate=False, policy=policy)
        interval = 1.0 / hardnat.birthday_open_rate if hardnat.birthday_open_rate else 0
        core.timers.set("birthday-open", core.now + interval)

    def socket_failed(self, via: int) -> None:
        """A birthday socket could not be opened: no more are tried."""
        _log.info("birthday socket {via} could not be opened", via=via)

    def release_losers(self, keep: int | None) -> list[int]:
        """The birthday sockets other than ``keep``, forgotten here."""
        losers = [via for via in self._birthday_vias if via != keep]
        self._birthday_vias.difference_update(losers)
        return losers

    # -- birthday, easy side --

    def timer(self, name: str) -> None:
        """Pacing of socket opening and of probes; the end of probing."""
        if name == "birthday-open":
            self._open_one()
        elif name == "probe-end":
            self.core.check_failure()
        elif not self._probe_started:
            self._start_probing()
        else:
            self._probe_tick()

    def _start_probing(self) -> None:
        core = self.core
        if (
            core.closed
            or core.settled()
            or any(not relayed(p) for p in core.checklist.valid_pairs())
        ):
            return
        assert core.remote_mapping is not None
        hardnat = core.config.hardnat
        low, high = PORT_RANGE
        count = min(hardnat.max_probes, high - low + 1)
        self._probe_ports = random.sample(range(low, high + 1), count)
        self._probe_started = True
        self.probing = True
        self._probe_deadline = core.now + hardnat.max_probe_time
        self._probe_epoch = core.now
        self._probes_this_run = 0
        _log.info(
            "birthday probing {addr}: up to {n} probes at {rate}/s",
            addr=core.remote_mapping.address,
            n=count,
            rate=hardnat.probe_rate,
        )
        self._probe_tick()

    def _probe_tick(self) -> None:
        """Send the probes due by now, then wait for the next one's time.

        Probes are due on a fixed schedule from the start (``probe_rate`` a second), not
        one per timer: a reactor that is late (a loaded host) sends the ones it owes,
        up to :data:`_PROBE_BURST` per probe interval, so the probes planned within
        ``max_probe_time`` still go out.
        """
        core = self.core
        rate = core.config.hardnat.probe_rate
        due = 1
        if rate > 0:
            due = int((core.now - self._probe_epoch) * rate) + 1 - self._probes_this_run
        for _ in range(max(1, min(due, _PROBE_BURST))):
            if not self._send_probe():
                if self.probing:
                    self.probing = False
                    _log.info("birthday probing ended after {n} probes", n=self._probes_this_run)
                    core.timers.set("probe-end", core.now + _PROBE_GRACE)
                return
        interval = 1.0 / rate if rate > 0 else 0.01
        next_due = self._probe_epoch + self._probes_this_run * interval
        core.timers.set("probe", max(next_due, core.now + interval))

    def _send_probe(self) -> bool:
        """One probe to the next port; False when probing is over."""
        core = self.core
        if (
            core.closed
            or not self.probing
            or core.settled()
            or core.now > self._probe_deadline
            or not self._probe_ports
        ):
            return False
        assert core.remote_mapping is not None and core.remote_pwd is not None
        port = self._probe_ports.pop()
        address = core.remote_mapping.address  # only ever the peer's signalled address
        core.stats.probes_sent += 1
        self._probes_this_run += 1
        local = core.base_for(address, port)
        if local is None:
            return True
        probe = _Probe(local, self.remote_at(address, port, "probe"), core.now)
        core.start_transaction(
            self,
            probe,
            message=core.checker.request(CandidatePair(local, probe.remote), nominate=False),
            destination=Address(address, port),
            via=MAIN,
            policy=_PROBE_POLICY,
            integrity_key=core.remote_pwd.encode(),
        )
        return True

    def transaction_done(self, outcome: TransactionOutcome, payload: object) -> None:
        """A probe was answered (a hit) or not."""
        assert isinstance(payload, _Probe)
        core = self.core
        remote = payload.remote
        if outcome.response is None:
            # Probes to ports nobody opened are not kept as candidates.
            if remote in core.remote_candidates and not any(
                p.remote is remote for p in core.checklist
            ):
                core.remote_candidates.remove(remote)
            return
        if core.closed or outcome.response.source != Address(*remote.address):
            return
        _log.info("birthday probe hit {addr}:{port}", addr=remote.host, port=remote.port)
        self.probing = False
        pair = core.checklist.find(payload.local, remote.address)
        if pair is None:
            core.checklist.max_pairs += 1
            pair = core.checklist.add(payload.local, remote, tag="birthday")
        if pair is None:
            return
        pair.tag = "birthday"
        core.checker.succeeded(outcome.response, pair, False, payload.started)

    # -- stopping --

    def settle(self) -> None:
        """A direct pair is selected: no more predictions or probes."""
        self.probing = False
        self.ordered.clear()
        self.core.timers.cancel("probe", "probe-end", "birthday-open")

    def stop(self) -> None:
        """The core closes."""
        self.probing = False
        self.ordered.clear()

"""Tests for holepunch.ice.candidate and holepunch.ice.checklist (pure models)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from holepunch.ice.candidate import (
    Candidate,
    CandidateError,
    candidate_foundation,
    candidate_priority,
    make_candidate,
)
from holepunch.ice.checklist import CheckList, PairState, pair_priority


class PriorityTests(SynchronousTestCase):
    """RFC 8445 5.1.2 and 6.1.2.3 formulas."""

    def test_candidate_priority(self) -> None:
        """A host candidate with full local preference on component 1 is 2130706431."""
        self.assertEqual(candidate_priority("host"), 2130706431)
        self.assertEqual(candidate_priority("srflx", 65535), 1694498815)
        self.assertEqual(candidate_priority("relay", 0, 1), 255)
        self.assertRaises(ValueError, candidate_priority, "host", 70000)

    def test_pair_priority(self) -> None:
        """Pair priority is 2^32*min + 2*max + (G>D), so swapping roles changes the last bit."""
        self.assertEqual(pair_priority(10, 20), (10 << 32) + 40)
        self.assertEqual(pair_priority(20, 10), (10 << 32) + 40 + 1)

    def test_foundation(self) -> None:
        """Same type, base, transport and server give the same foundation; any difference changes it."""
        a = candidate_foundation("srflx", "10.0.0.2", "udp", "s:1")
        self.assertEqual(a, candidate_foundation("srflx", "10.0.0.2", "udp", "s:1"))
        self.assertNotEqual(a, candidate_foundation("srflx", "10.0.0.3", "udp", "s:1"))
        self.assertNotEqual(a, candidate_foundation("host", "10.0.0.2", "udp", "s:1"))


class GrammarTests(SynchronousTestCase):
    """The RFC 8839 candidate attribute."""

    def test_format_and_parse(self) -> None:
        """A srflx candidate is written as the RFC shows and parses back equal."""
        c = make_candidate("srflx", "192.0.2.1", 54400, base=("10.0.0.2", 54400))
        line = c.to_sdp()
        self.assertRegex(
            line,
            r"^candidate:\d+ 1 udp 1694498815 192\.0\.2\.1 54400 typ srflx raddr 10\.0\.0\.2 rport 54400$",
        )
        self.assertEqual(Candidate.from_sdp(line), c)
        self.assertEqual(Candidate.from_sdp("a=" + line), c)

    def test_browser_and_aioice_lines(self) -> None:
        """Lines as Chromium and aioice write them parse, extensions kept."""
        chrome = "candidate:842163049 1 udp 1677729535 203.0.113.7 61000 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag EsAw network-cost 999"
        c = Candidate.from_sdp(chrome)
        self.assertEqual((c.host, c.port, c.type), ("203.0.113.7", 61000, "srflx"))
        self.assertIn(("ufrag", "EsAw"), c.extensions)
        self.assertEqual(Candidate.from_sdp(c.to_sdp()).to_sdp(), c.to_sdp())
        tcp = Candidate.from_sdp("candidate:1 1 TCP 2105458943 10.0.0.1 9 typ host tcptype active")
        self.assertEqual((tcp.transport, tcp.tcptype), ("tcp", "active"))

    def test_raddr_and_rport_each_optional(self) -> None:
        """raddr without rport (and rport without raddr) survive to_sdp, as RFC 8839 allows (found by the fuzzer)."""
        for line in [
            "candidate:1 1 udp 2130706431 192.0.2.1 54400 typ srflx raddr 10.0.0.2",
            "candidate:1 1 udp 2130706431 192.0.2.1 54400 typ srflx rport 9",
        ]:
            c = Candidate.from_sdp(line)
            self.assertEqual(c.to_sdp(), line)
            self.assertEqual(Candidate.from_sdp(c.to_sdp()), c)

    def test_bad_lines(self) -> None:
        """Each grammar violation is a CandidateError naming the problem."""
        bad = {
            "": "start with",
            "candidate:1 1 udp 1 1.2.3.4 5": "fields",
            "candidate:1 1 udp 1 1.2.3.4 5 type host": "typ",
            "candidate:1 1 sctp 1 1.2.3.4 5 typ host": "transport",
            "candidate:1 1 udp 1 1.2.3.4 5 typ bogus": "type",
            "candidate:1 1 udp x 1.2.3.4 5 typ host": "integers",
            "candidate:1 1 udp 1 1.2.3.4 70000 typ host": "port",
            "candidate:1 1 udp 1 abcd.local 5 typ host": "IP address",
            "candidate:1 1 udp 1 1.2.3.4 5 typ host raddr": "pairs",
            "candidate:1 1 tcp 1 1.2.3.4 5 typ host": "tcptype",
            "candidate:1 0 udp 1 1.2.3.4 5 typ host": "component",
            "candidate:f!o 1 udp 1 1.2.3.4 5 typ host": "foundation",
        }
        for line, reason in bad.items():
            e = self.assertRaises(CandidateError, Candidate.from_sdp, line)
            self.assertIn(reason, str(e), line)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=120))
    def test_any_text_parses_or_raises_candidate_error(self, text: str) -> None:
        """Arbitrary text either parses or raises CandidateError, nothing else."""
        try:
            Candidate.from_sdp("candidate:" + text)
        except CandidateError:
            pass


def cand(host: str, port: int, typ: str = "host", priority: int | None = None) -> Candidate:
    c = make_candidate(typ, host, port, base=(host, port) if typ != "host" else None)
    return c.with_priority(priority) if priority else c


class CheckListTests(SynchronousTestCase):
    """Pair ordering, freezing and the triggered queue."""

    def test_order_by_priority(self) -> None:
        """Pairs are kept highest priority first, for the agent's role."""
        checklist = CheckList(controlling=True)
        local = cand("10.0.0.1", 1)
        low = checklist.add(local, cand("192.0.2.1", 1, "srflx"))
        high = checklist.add(local, cand("10.0.0.2", 1))
        self.assertEqual(list(checklist), [high, low])

    def test_duplicates_and_limit(self) -> None:
        """The same pair twice is refused, and so is one beyond max_pairs."""
        checklist = CheckList(True, max_pairs=1)
        local, remote = cand("10.0.0.1", 1), cand("10.0.0.2", 1)
        self.assertIsNotNone(checklist.add(local, remote))
        self.assertIsNone(checklist.add(local, remote))
        self.assertIsNone(checklist.add(local, cand("10.0.0.3", 1)))

    def test_foundation_freezing(self) -> None:
        """Only the first pair of a foundation is Waiting; success unfreezes the rest."""
        checklist = CheckList(True)
        local = cand("10.0.0.1", 1)
        first = checklist.add(local, make_candidate("host", "10.0.0.2", 1))
        second = checklist.add(local, make_candidate("host", "10.0.0.2", 2))
        assert first is not None and second is not None
        states = {p.remote.port: p.state for p in checklist}
        self.assertEqual(sorted(states.values(), key=str), [PairState.FROZEN, PairState.WAITING])
        waiting = next(p for p in checklist if p.state == PairState.WAITING)
        frozen = next(p for p in checklist if p.state == PairState.FROZEN)
        checklist.succeeded(waiting, ("10.0.0.1", 1), 0.01)
        self.assertEqual(frozen.state, PairState.WAITING)

    def test_triggered_first_then_unfreeze(self) -> None:
        """Triggered checks come before Waiting pairs; Frozen pairs are unfrozen last."""
        checklist = CheckList(True)
        local = cand("10.0.0.1", 1)
        a = checklist.add(local, make_candidate("host", "10.0.0.2", 1))
        b = checklist.add(local, make_candidate("host", "10.0.0.2", 2))
        assert a is not None and b is not None
        frozen = a if a.state == PairState.FROZEN else b
        waiting = b if frozen is a else a
        checklist.trigger(frozen)
        self.assertIs(checklist.next_pair(), frozen)
        frozen.state = PairState.IN_PROGRESS
        self.assertIs(checklist.next_pair(), waiting)
        waiting.state = PairState.IN_PROGRESS
        self.assertIsNone(checklist.next_pair())

    def test_all_failed_and_best_valid(self) -> None:
        """best_valid is the highest-priority valid pair; all_failed only when every pair failed."""
        checklist = CheckList(True)
        local = cand("10.0.0.1", 1)
        a = checklist.add(local, cand("10.0.0.2", 1))
        b = checklist.add(local, cand("192.0.2.2", 1, "srflx"))
        assert a is not None and b is not None
        self.assertFalse(checklist.all_failed())
        checklist.succeeded(b, None, 0.1)
        self.assertIs(checklist.best_valid(), b)
        self.assertTrue(checklist.higher_pending(b))
        checklist.failed(a)
        self.assertFalse(checklist.higher_pending(b))
        checklist.failed(b)  # a valid pair does not fail afterwards
        self.assertEqual(b.state, PairState.SUCCEEDED)
        self.assertFalse(checklist.all_failed())

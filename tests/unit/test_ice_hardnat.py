"""Tests for holepunch.ice.hardnat and the agent's probing discipline (fake clock)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from holepunch.ice.agent import IceAgent
from holepunch.ice.config import IceConfig
from holepunch.ice.events import IceError
from holepunch.ice.hardnat import (
    MappingProfile,
    Technique,
    birthday_success,
    plan,
    predicted_ports,
    profile_from_flows,
)
from holepunch.nat.model import PortAllocation
from holepunch.stun.message import decode
from holepunch.stun.wire import Attr
from holepunch.testing.fakenet import FakeNetwork

CONE = MappingProfile("203.0.113.1", 40000, True, PortAllocation.PRESERVING, 0)
SEQ = MappingProfile("203.0.113.2", 20003, False, PortAllocation.SEQUENTIAL, 1)
RANDOM = MappingProfile("203.0.113.3", 51234, False, PortAllocation.RANDOM, None)


class PlanTests(SynchronousTestCase):
    """Which technique each pair of mappings gets."""

    def test_table(self) -> None:
        """Prediction toward sequential peers, in order when both are; birthday only random vs cone."""
        self.assertEqual(plan(CONE, CONE), set())
        self.assertEqual(plan(CONE, SEQ), {Technique.PREDICT})
        self.assertEqual(plan(SEQ, CONE), set())
        self.assertEqual(plan(SEQ, SEQ), {Technique.PREDICT_IN_ORDER})
        self.assertEqual(plan(RANDOM, CONE), {Technique.BIRTHDAY_HARD})
        self.assertEqual(plan(CONE, RANDOM), {Technique.BIRTHDAY_EASY})
        self.assertEqual(plan(RANDOM, RANDOM), set())
        self.assertEqual(plan(RANDOM, SEQ), set())
        self.assertEqual(plan(None, SEQ), set())

    def test_predicted_ports(self) -> None:
        """The next ports by the delta, in flow order, within the port range."""
        self.assertEqual(predicted_ports(SEQ, 3), [20004, 20005, 20006])
        down = MappingProfile("203.0.113.2", 1026, False, PortAllocation.SEQUENTIAL, -1)
        self.assertEqual(predicted_ports(down, 5), [1025, 1024])
        self.assertEqual(predicted_ports(RANDOM, 5), [])

    def test_profile_from_flows(self) -> None:
        """Equal ports: endpoint-independent; on a small-step line: sequential (unanswered
        flows count toward the last port); otherwise random; one flow says nothing."""
        host = "192.0.2.1"
        self.assertTrue(profile_from_flows(host, [(0, 5), (1, 5)], 2).endpoint_independent)
        seq = profile_from_flows(host, [(0, 20000), (1, 20001), (2, 20002)], 3)
        assert seq is not None
        self.assertEqual((seq.sequential, seq.delta, seq.last_port), (True, 1, 20002))
        gap = profile_from_flows(host, [(0, 20000), (2, 20004)], 4)
        assert gap is not None
        self.assertEqual((gap.delta, gap.last_port), (2, 20006))
        two = profile_from_flows(host, [(1, 30000), (0, 30003)], 2)
        assert two is not None
        self.assertEqual((two.delta, two.last_port), (-3, 30000))
        for samples in ([(0, 40000), (1, 1234), (2, 60000)], [(0, 40000), (1, 40100)]):
            profile = profile_from_flows(host, samples, len(samples))
            assert profile is not None
            self.assertTrue(profile.random, samples)
        self.assertTrue(profile_from_flows(host, [(0, 20000), (1, 20001), (2, 20005)], 3).random)
        self.assertIsNone(profile_from_flows(host, [(0, 20000)], 2))

    def test_profile_json(self) -> None:
        """to_json/from_json round trip; garbage raises ValueError."""
        self.assertEqual(MappingProfile.from_json(SEQ.to_json()), SEQ)
        for bad in [
            None,
            {},
            {**SEQ.to_json(), "address": "nope"},
            {**SEQ.to_json(), "delta": 5000},
        ]:
            self.assertRaises(ValueError, MappingProfile.from_json, bad)


class BirthdayTheoryTests(SynchronousTestCase):
    """The birthday arithmetic the issue quotes, for 256 open ports."""

    def test_known_points(self) -> None:
        """About 175 probes for 50 %, 1,000 for 98 %, 2,000 for 99.9 %."""
        self.assertLess(abs(birthday_success(256, 175) - 0.5), 0.01)
        self.assertLess(abs(birthday_success(256, 1000) - 0.98), 0.005)
        self.assertGreater(birthday_success(256, 2000), 0.999)
        self.assertEqual(birthday_success(256, 0), 0.0)


class ProbingDisciplineTests(SynchronousTestCase):
    """The easy side's probes: paced, bounded, and only toward the peer's address."""

    def agent(self, **kw: object) -> tuple[FakeNetwork, IceAgent]:
        net = FakeNetwork()
        config = IceConfig.on("192.0.2.1")
        config.checks.connection_timeout = 60
        for name, value in kw.items():
            setattr(config.hardnat, name, value)
        agent = IceAgent(net, True, config)
        agent.set_remote_credentials("abcd", "p" * 22)
        agent.mapping = CONE
        defer.ensureDeferred(agent.gather())
        return net, agent

    def test_rate_cap_and_single_destination(self) -> None:
        """At 100/s, ten seconds of probing send about 1,000 checks, every one to the peer's address."""
        net, agent = self.agent(max_probe_time=10.0)
        d = agent.connect()
        agent.set_remote_mapping(RANDOM)
        net.pump([0.01] * 1200)
        port = net.ports[("192.0.2.1", agent.local_port)]
        probes = [(data, addr) for data, addr in port.sent]
        self.assertEqual({addr[0] for _, addr in probes}, {RANDOM.address})
        self.assertLessEqual(agent.stats.probes_sent, 100 * 10 + 1)
        self.assertGreaterEqual(agent.stats.probes_sent, 100 * 10 - 40)
        ports = [addr[1] for _, addr in probes]
        self.assertEqual(len(ports), len(set(ports)))  # each port probed once
        for data, _ in probes[:5]:
            message = decode(data)
            self.assertIsNotNone(message.get(Attr.MESSAGE_INTEGRITY))
        # Every second holds at most rate + 1 probes.
        agent.close()
        d.addErrback(lambda f: None)

    def test_late_timers_still_send_the_planned_probes(self) -> None:
        """A loaded reactor whose timers fire 50 ms late still sends about 100 probes a
        second (the ones owed go out together, at most ten at a time), never more."""
        net, agent = self.agent(max_probe_time=10.0)
        d = agent.connect()
        agent.set_remote_mapping(RANDOM)
        net.pump([0.05] * 240)
        port = net.ports[("192.0.2.1", agent.local_port)]
        self.assertLessEqual(agent.stats.probes_sent, 100 * 10 + 1)
        self.assertGreaterEqual(agent.stats.probes_sent, 100 * 10 - 40)
        self.assertEqual({addr[0] for _, addr in port.sent}, {RANDOM.address})
        agent.close()
        d.addErrback(lambda f: None)

    def test_a_long_stall_is_not_made_up_in_one_burst(self) -> None:
        """After the reactor stalls for two seconds, the owed probes go out ten per probe
        interval: ten at once, then ten each 10 ms until the schedule is met again."""
        net, agent = self.agent(max_probe_time=10.0)
        d = agent.connect()
        agent.set_remote_mapping(RANDOM)
        net.pump([0.01] * 50)
        before = agent.stats.probes_sent
        net.pump([2.0])
        self.assertEqual(agent.stats.probes_sent - before, 10)
        net.pump([0.01] * 10)
        self.assertEqual(agent.stats.probes_sent - before, 110)
        net.pump([0.01] * 30)  # caught up (about 250 owed after 2.4 s): back to 100/s
        self.assertLessEqual(abs(agent.stats.probes_sent - before - (2.4 * 100)), 12)
        agent.close()
        d.addErrback(lambda f: None)

    def test_probe_count_bound(self) -> None:
        """max_probes stops probing even with time left, and the attempt then fails cleanly."""
        net, agent = self.agent(max_probes=50, max_probe_time=100.0)
        d = agent.connect()
        agent.set_remote_mapping(RANDOM)
        agent.add_remote_candidate(None)
        net.pump([0.01] * 1500)
        self.assertEqual(agent.stats.probes_sent, 50)
        failure = self.failureResultOf(d, IceError)
        self.assertIn("50 birthday probes went unanswered", str(failure.value))
        self.assertEqual(net.getDelayedCalls(), [])

    def test_no_probing_when_a_path_exists(self) -> None:
        """Probing never starts when a cheaper pair became valid first."""
        net, agent = self.agent()
        agent.connect().addErrback(lambda f: None)
        from holepunch.ice.candidate import make_candidate

        remote = make_candidate("srflx", RANDOM.address, RANDOM.last_port, base=("10.0.0.2", 1))
        agent.add_remote_candidate(remote)
        pair = next(iter(agent.checklist))
        agent.checklist.succeeded(pair, ("203.0.113.1", 40000), 0.01)
        agent.set_remote_mapping(RANDOM)
        net.pump([0.01] * 100)
        self.assertEqual(agent.stats.probes_sent, 0)
        agent.close()


class StrategyAgreementTests(SynchronousTestCase):
    """get_recommended_strategy() names the techniques the engine actually uses."""

    def test_hard_nat_strategies_match_the_plan(self) -> None:
        """Sequential -> port-prediction, random -> birthday (against a cone), both in the strategy's methods."""
        from holepunch.nat.model import Behavior, NatInfo, NatType, recommended_strategy

        apd = Behavior.ADDRESS_AND_PORT_DEPENDENT
        sequential = NatInfo(
            NatType.SYMMETRIC, apd, apd, port_allocation=PortAllocation.SEQUENTIAL, port_delta=1
        )
        random_nat = NatInfo(NatType.SYMMETRIC, apd, apd, port_allocation=PortAllocation.RANDOM)
        self.assertEqual(recommended_strategy(sequential)["strategy"], "port-prediction")
        self.assertIn(Technique.PREDICT, plan(CONE, SEQ))
        self.assertEqual(recommended_strategy(random_nat)["strategy"], "birthday")
        self.assertIn(Technique.BIRTHDAY_HARD, plan(RANDOM, CONE))
        self.assertIn("turn-relay", recommended_strategy(random_nat)["methods"])
        self.assertEqual(plan(RANDOM, RANDOM), set())  # hence the relay in the methods
        blocked = recommended_strategy(NatInfo(NatType.UDP_BLOCKED))
        self.assertEqual(blocked["methods"], ["tcp-hole-punch", "turn-relay"])


class BirthdaySocketsTests(SynchronousTestCase):
    """The hard side's extra sockets exist only until a pair wins."""

    def test_losing_sockets_closed_when_a_pair_wins(self) -> None:
        """256 sockets are opened toward the peer; once connected only the winner stays open."""
        from holepunch.ice.candidate import make_candidate

        net = FakeNetwork()
        hard = IceAgent(net, True, IceConfig.on("192.0.2.1"))
        hard.config.hardnat.birthday_open_rate = 5000
        easy = IceAgent(net, False, IceConfig.on("192.0.2.2"))
        hard.set_remote_credentials(easy.local_ufrag, easy.local_pwd)
        easy.set_remote_credentials(hard.local_ufrag, hard.local_pwd)
        hard.mapping = RANDOM
        easy.mapping = CONE
        da, db = hard.connect(), easy.connect()
        defer.ensureDeferred(hard.gather())
        defer.ensureDeferred(easy.gather())
        # The peers know each other only by their public mappings (what STUN would say).
        easy_public = make_candidate(
            "srflx", "192.0.2.2", easy.local_port, base=("192.0.2.2", easy.local_port)
        )
        hard.set_remote_mapping(
            MappingProfile("192.0.2.2", easy.local_port, True, PortAllocation.PRESERVING, 0)
        )
        easy.set_remote_mapping(RANDOM)
        hard.add_remote_candidate(easy_public)
        net.advance(0.01)
        self.assertGreater(hard.stats.birthday_sockets, 1)
        net.pump([0.01] * 400)
        connection = self.successResultOf(da)
        self.successResultOf(db)
        hard_ports = [p for p in net.ports if p[0] == "192.0.2.1"]
        # The main socket and, if a birthday socket won, that one: never the losers.
        self.assertLessEqual(len(hard_ports), 2, hard_ports)
        self.assertIn(connection.local[1], [p[1] for p in hard_ports])
        hard.close()
        easy.close()

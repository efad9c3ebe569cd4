"""Tests for holepunch.nat.model: classification, port allocation, strategy, the
reports of both families; and how discovery resolves its servers (no sockets)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase

from holepunch.nat.discovery import resolve_families
from holepunch.nat.model import (
    Behavior,
    NatInfo,
    NatType,
    PortAllocation,
    classify,
    families_json,
    main_report,
    no_report_reasons,
    port_allocation,
    recommended_strategy,
)
from holepunch.stun.wire import Address
from tests.resolver_helpers import NameReactor

EI = Behavior.ENDPOINT_INDEPENDENT
AD = Behavior.ADDRESS_DEPENDENT
APD = Behavior.ADDRESS_AND_PORT_DEPENDENT
UNKNOWN = Behavior.UNKNOWN


class ClassifyTests(SynchronousTestCase):
    """RFC 4787 behaviour to the classic names."""

    def test_table(self) -> None:
        """Each mapping/filtering pair maps to its classic name."""
        cases = [
            ((False, True, UNKNOWN, UNKNOWN), NatType.UDP_BLOCKED),
            ((True, False, EI, APD), NatType.OPEN),
            ((True, True, EI, EI), NatType.FULL_CONE),
            ((True, True, EI, AD), NatType.RESTRICTED_CONE),
            ((True, True, EI, APD), NatType.PORT_RESTRICTED),
            ((True, True, AD, EI), NatType.SYMMETRIC),
            ((True, True, APD, APD), NatType.SYMMETRIC),
        ]
        for args, expected in cases:
            self.assertEqual(classify(*args), expected, args)

    def test_unknown_filtering_assumes_strictest_cone(self) -> None:
        """Unmeasured filtering is reported as port-restricted, never as an easier cone."""
        self.assertEqual(classify(True, True, EI, UNKNOWN), NatType.PORT_RESTRICTED)
        self.assertEqual(classify(True, True, UNKNOWN, UNKNOWN), NatType.PORT_RESTRICTED)


class PortAllocationTests(SynchronousTestCase):
    """Telling preserving, sequential and random allocation apart."""

    def test_preserving(self) -> None:
        """Public port equal to the local port: preserving."""
        self.assertEqual(port_allocation([5000], 5000), (PortAllocation.PRESERVING, 0))

    def test_sequential(self) -> None:
        """Equal small steps: sequential with that delta, also negative."""
        self.assertEqual(
            port_allocation([20000, 20001, 20002, 20003]), (PortAllocation.SEQUENTIAL, 1)
        )
        self.assertEqual(port_allocation([30010, 30008, 30006]), (PortAllocation.SEQUENTIAL, -2))

    def test_random(self) -> None:
        """Unequal or large steps: random."""
        self.assertEqual(port_allocation([40000, 51234, 33333]), (PortAllocation.RANDOM, None))
        self.assertEqual(port_allocation([1000, 1100, 1200]), (PortAllocation.RANDOM, None))

    def test_too_few(self) -> None:
        """Fewer than three ports (not preserving) cannot be judged."""
        self.assertEqual(port_allocation([]), (PortAllocation.UNKNOWN, None))
        self.assertEqual(port_allocation([1, 2]), (PortAllocation.UNKNOWN, None))


class NatInfoTests(SynchronousTestCase):
    """The result object and its JSON."""

    def info(self, **kw: object) -> NatInfo:
        base: dict[str, object] = {
            "type": NatType.SYMMETRIC,
            "mapping": APD,
            "filtering": APD,
            "public_address": "203.0.113.1",
            "public_port": 20001,
            "local_address": "10.0.0.2",
            "local_port": 5000,
            "port_allocation": PortAllocation.SEQUENTIAL,
            "port_delta": 1,
            "hairpinning": False,
        }
        base.update(kw)
        return NatInfo(**base)  # type: ignore[arg-type]

    def test_json_fields(self) -> None:
        """to_json has every nat-check field with the documented spellings."""
        data = self.info().to_json()
        self.assertEqual(data["type"], "symmetric")
        self.assertEqual(data["mapping"], "address-and-port-dependent")
        self.assertEqual(data["portAllocation"], "sequential")
        self.assertEqual(data["portDelta"], 1)
        self.assertEqual(data["publicAddress"], "203.0.113.1")
        self.assertIs(data["hairpinning"], False)
        self.assertEqual(data["strategy"]["strategy"], "port-prediction")
        self.assertTrue(data["portPredictable"])

    def test_round_trip(self) -> None:
        """from_json reads back to_json."""
        info = self.info(notes=["x"])
        self.assertEqual(NatInfo.from_json(info.to_json()), info)

    def test_from_json_rejects_garbage(self) -> None:
        """A peer's bad NAT description is a ValueError, not a crash."""
        for bad in [{}, {"type": "weird"}, {"type": "open", "mapping": 3}]:
            self.assertRaises(ValueError, NatInfo.from_json, bad)

    def test_port_predictable(self) -> None:
        """Random symmetric NATs are not predictable; cones and sequential ones are."""
        self.assertFalse(self.info(port_allocation=PortAllocation.RANDOM).port_predictable)
        self.assertTrue(self.info(type=NatType.FULL_CONE, mapping=EI).port_predictable)
        self.assertFalse(NatInfo(type=NatType.UDP_BLOCKED).port_predictable)


class StrategyTests(SynchronousTestCase):
    """The seed's strategy object follows from the NAT."""

    def test_every_type_has_a_strategy(self) -> None:
        """Every classic type gets strategy, recommendation, methods, difficulty and natType."""
        for nat_type in NatType:
            s = recommended_strategy(NatInfo(type=nat_type))
            self.assertEqual(
                {"strategy", "recommendation", "methods", "difficulty", "natType"} - set(s), set()
            )
            self.assertEqual(s["natType"], nat_type.value)
            self.assertTrue(s["methods"])

    def test_symmetric_random_uses_birthday(self) -> None:
        """A random symmetric NAT gets birthday probing, with TURN as fallback."""
        s = recommended_strategy(
            NatInfo(type=NatType.SYMMETRIC, mapping=APD, port_allocation=PortAllocation.RANDOM)
        )
        self.assertEqual(s["strategy"], "birthday")
        self.assertIn("turn-relay", s["methods"])

    def test_udp_blocked_uses_tcp(self) -> None:
        """UDP blocked: TCP hole punching, then a relay."""
        s = recommended_strategy(NatInfo(type=NatType.UDP_BLOCKED))
        self.assertEqual(s["methods"], ["tcp-hole-punch", "turn-relay"])


class FamiliesTests(SynchronousTestCase):
    """Both families' results: which report stands for the host, the JSON, the reasons."""

    V4 = NatInfo(type=NatType.PORT_RESTRICTED, public_address="203.0.113.1")
    V6 = NatInfo(type=NatType.OPEN, public_address="2001:db8::1")

    def test_main_report_prefers_ipv4(self) -> None:
        """IPv4's report when it answered, else IPv6's, else None."""
        self.assertEqual(main_report({6: self.V6, 4: self.V4}), (4, self.V4))
        self.assertEqual(main_report({4: "no answer", 6: self.V6}), (6, self.V6))
        self.assertIsNone(main_report({4: "no answer", 6: "no route"}))

    def test_families_json(self) -> None:
        """Each family keyed IPv4 / IPv6, named in "family": its report or its error."""
        self.assertEqual(
            families_json({6: "no IPv6 route", 4: self.V4}),
            {
                "IPv4": {"family": "IPv4", **self.V4.to_json()},
                "IPv6": {"family": "IPv6", "error": "no IPv6 route"},
            },
        )

    def test_no_report_reasons(self) -> None:
        """One line naming each family without a report, and why."""
        results = {6: "no IPv6 route", 4: "no answer"}
        self.assertEqual(no_report_reasons(results), "IPv4: no answer; IPv6: no IPv6 route")
        self.assertEqual(no_report_reasons({4: self.V4, 6: "no route"}), "IPv6: no route")


class ResolveFamiliesTests(SynchronousTestCase):
    """discovery.resolve_families: every server name looked up once for both families."""

    def test_one_lookup_per_name(self) -> None:
        """A name's A and AAAA come from one lookup; literals need none; each family gets
        each server's first address of that family, in the order given."""
        reactor = NameReactor(
            {
                "both.test": ["192.0.2.1", "192.0.2.2", "2001:db8::1"],
                "v6only.test": ["2001:db8::2"],
            }
        )
        servers = [("both.test", 3478), ("192.0.2.9", 3479), ("v6only.test", 3478)]
        found = self.successResultOf(
            defer.ensureDeferred(resolve_families(reactor, servers, (4, 6)))
        )
        self.assertEqual(
            found,
            {
                4: [Address("192.0.2.1", 3478), Address("192.0.2.9", 3479)],
                6: [Address("2001:db8::1", 3478), Address("2001:db8::2", 3478)],
            },
        )
        both = (IPv4Address, IPv6Address)
        self.assertEqual(reactor.nameResolver.asked, [("both.test", both), ("v6only.test", both)])

    def test_one_family(self) -> None:
        """Asked for one family, only that family is looked up; a name without it is left out."""
        reactor = NameReactor({"v6only.test": ["2001:db8::2"]})
        found = self.successResultOf(
            defer.ensureDeferred(resolve_families(reactor, [("v6only.test", 1)], (4,)))
        )
        self.assertEqual(found, {4: []})
        self.assertEqual(reactor.nameResolver.asked, [("v6only.test", (IPv4Address,))])

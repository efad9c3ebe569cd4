# -*- test-case-name: tests.lab.test_natlab_v6 -*-
"""Tests for the NAT lab's IPv6 internet (``NatLab(ipv6=True)``) with real namespaces.

Hosts get an IPv6 side beside (or instead of) their IPv4 NAT: ``v6-firewall`` (a stateful
RFC 6092 home router), ``v6-open`` or ``v6-blocked``. Reachability is measured with the
standalone ``lab.udpobserver`` (plain sockets), not with the project's own code. The tests
that build namespaces need root, ``ip`` and ``nft``; they skip with a one-line reason
elsewhere.
"""

from __future__ import annotations

import struct
import subprocess
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from lab.natlab import (
    PRESETS,
    PUBLIC_A,
    PUBLIC_A6,
    PUBLIC_B,
    PUBLIC_B6,
    V6_PRESETS,
    LabHost,
    NatLab,
    coturn_unavailable_reason,
    host_port,
    ipv6_ruleset,
    lab_fixture,
    router_ruleset,
    unavailable_reason,
)
from lab.udpobserver import format_address, parse_address, stun_mapped_address
from tests.lab.observer_runs import OBSERVER, OutputLines, observe, paired_run
from tests.lab.test_natlab import FILTERING

A1, A2, B1 = f"{PUBLIC_A}:5001", f"{PUBLIC_A}:5002", f"{PUBLIC_B}:5001"
A6_1, A6_2, B6_1 = f"[{PUBLIC_A6}]:5001", f"[{PUBLIC_A6}]:5002", f"[{PUBLIC_B6}]:5001"
TCP6 = f"[{PUBLIC_A6}]:5003"
LISTEN_PORT = 6000
"""Where a host under test runs its own observer, for inbound probes."""


class RulesetV6Tests(SynchronousTestCase):
    """The IPv6 rulesets and address formats (no root needed)."""

    def test_v4_rulesets_unchanged_without_v6(self):
        """Without a v6 side a router's ruleset has no IPv6 table and no family guard."""
        for preset in PRESETS[1:]:
            rules = router_ruleset(preset, "203.0.113.1")
            self.assertNotIn("lab_filter6", rules)
            self.assertNotIn("nfproto", rules)

    def test_v4_firewall_keeps_off_ipv6(self):
        """With a v6 side every IPv4 firewall rule matches IPv4 only (udp-blocked too)."""
        for preset in PRESETS[1:]:
            rules = router_ruleset(preset, "203.0.113.1", "v6-open")
            v4_filter = rules.split("table ip lab_nat")[0]
            drops = [line for line in v4_filter.splitlines() if line.endswith(("drop", "accept"))]
            self.assertTrue(drops)
            for line in drops:
                self.assertTrue(line.strip().startswith("meta nfproto ipv4 "), line)
            self.assertIn("table ip6 lab_filter6", rules)

    def test_firewall_lets_replies_in_and_nothing_new(self):
        """v6-firewall accepts established flows, then drops everything else from the WAN."""
        forward = ipv6_ruleset("v6-firewall").split("chain forward")[1]
        established = forward.index('iifname "wan0" ct state established,related accept')
        self.assertLess(established, forward.index('iifname "wan0" counter drop'))

    def test_only_router_ruleset_for_v6_only(self):
        """An IPv6-only router loads just the IPv6 table; no side at all is an error."""
        self.assertEqual(
            router_ruleset(None, "203.0.113.1", "v6-blocked"), ipv6_ruleset("v6-blocked")
        )
        self.assertRaises(ValueError, router_ruleset, None, "203.0.113.1")
        self.assertRaises(ValueError, ipv6_ruleset, "v6-nat")

    def test_ipv6_addresses_in_brackets(self):
        """IPv6 addresses are written and parsed as [IP]:PORT; bare IPv6 is refused."""
        self.assertEqual(host_port(PUBLIC_A6, 3478), "[2001:db8:ff::10]:3478")
        self.assertEqual(host_port(PUBLIC_A, 3478), "203.0.113.10:3478")
        self.assertEqual(format_address((PUBLIC_A6, 5001)), A6_1)
        self.assertEqual(parse_address(A6_1), (PUBLIC_A6, 5001))
        self.assertRaises(ValueError, parse_address, f"{PUBLIC_A6}:5001")

    def test_xor_mapped_ipv6_address(self):
        """An IPv6 XOR-MAPPED-ADDRESS decodes with the cookie and transaction id (RFC 8489 14.2)."""
        txid = bytes(range(12))
        raw = bytes.fromhex("20010db8000100000000000000000002")  # 2001:db8:1::2
        pad = struct.pack("!I", 0x2112A442) + txid
        value = struct.pack("!BBH", 0, 2, 40000 ^ 0x2112) + bytes(
            a ^ b for a, b in zip(raw, pad, strict=True)
        )
        message = struct.pack("!HHI", 0x0101, 24, 0x2112A442) + txid
        message += struct.pack("!HH", 0x0020, len(value)) + value
        self.assertEqual(stun_mapped_address(message), "[2001:db8:1::2]:40000")


class _V6LabTestCase(TestCase):
    """A fresh IPv6 lab per test with the observer in ``pub`` on both families."""

    def setUp(self) -> None:
        self.lab = lab_fixture(self, ipv6=True)
        argv = ["--tcp", TCP6, "--tcp", f"{PUBLIC_A}:5003"]
        for address in (A6_1, A6_2, B6_1, A1, A2, B1):
            argv += ["--bind", address]
        proc = self.lab.public.popen(
            self.lab.public.python_argv(OBSERVER, *argv), stdout=subprocess.PIPE
        )
        self.assertEqual(OutputLines(proc).json(10.0)["ready"][-1], f"{PUBLIC_A}:5003")

    def seen(self, host: LabHost, target: str, *args: str) -> dict[str, Any]:
        """One probe from a fresh socket in ``host`` to ``target``: its result."""
        result = observe(host, "--probe", target, *args)
        probe = result["results"][0]
        assert isinstance(probe, dict)
        probe["local"] = result["local"]
        return probe

    def listen(self, host: LabHost) -> str:
        """Run an observer in ``host`` on its IPv6 address; returns ``[IP]:PORT``."""
        assert host.address6 is not None
        address = host_port(host.address6, LISTEN_PORT)
        proc = host.popen(host.python_argv(OBSERVER, "--bind", address), stdout=subprocess.PIPE)
        self.assertEqual(OutputLines(proc).json(10.0)["ready"], [address])
        return address

    def dropped(self, host: LabHost) -> int:
        """Packets ``host``'s router dropped in its IPv6 forward chain so far."""
        return host.ipv6_dropped()


class V6ReachabilityTests(_V6LabTestCase):
    """What gets in and out of each IPv6 preset."""

    def test_firewall_host_reaches_pub(self):
        """Behind v6-firewall a host reaches pub over UDP and TCP at its own address and port."""
        host = self.lab.add_host("h", "symmetric-random", v6="v6-firewall")
        self.assertEqual(host.addresses6, ("2001:db8:1::2",))
        probe = self.seen(host, A6_1)
        self.assertEqual(
            parse_address(probe["seen"]), (host.address6, parse_address(probe["local"])[1])
        )
        tcp = observe(host, "--connect", TCP6)
        self.assertTrue(tcp["connected"], tcp)
        self.assertEqual(parse_address(tcp["seen"])[0], host.address6)

    def test_firewall_filters_by_address_and_port(self):
        """v6-firewall lets in only the address and port a socket sent to (like port-restricted)."""
        host = self.lab.add_host("h", "port-restricted", v6="v6-firewall")
        for alt in (A6_2, B6_1):
            probe = self.seen(host, A6_1, "--reply-from", alt)
            self.assertIsNotNone(probe["seen"])
            self.assertFalse(probe["alt_received"], alt)

    def test_unsolicited_datagrams_are_dropped(self):
        """Nothing new gets in through v6-firewall: not from pub, nor from another site."""
        host = self.lab.add_host("h", "port-restricted", v6="v6-firewall")
        other_firewalled = self.lab.add_host("f", "port-restricted", v6="v6-firewall")
        other_open = self.lab.add_host("o", None, v6="v6-open")
        target = self.listen(host)
        for prober in (self.lab.public, other_firewalled, other_open):
            before = self.dropped(host)
            probe = self.seen(prober, target, "--timeout", "1")
            self.assertIsNone(probe["seen"], prober)
            self.assertNotIn("error", probe)
            self.assertGreater(self.dropped(host), before, prober)

    def test_open_accepts_inbound(self):
        """v6-open lets in new flows from pub and from a host behind another site's firewall."""
        host = self.lab.add_host("h", "symmetric-random", v6="v6-open")
        other = self.lab.add_host("f", "port-restricted", v6="v6-firewall")
        target = self.listen(host)
        for prober, source in ((self.lab.public, PUBLIC_A6), (other, other.address6)):
            probe = self.seen(prober, target)
            self.assertEqual(parse_address(probe["seen"])[0], source)
        probe = self.seen(host, A6_1, "--reply-from", B6_1)
        self.assertTrue(probe["alt_received"])

    def test_open_host_on_the_bridge(self):
        """An open host has 2001:db8:ff::N beside 203.0.113.N; v6-firewall on it drops new flows."""
        open_host = self.lab.add_host("o", "open", v6="v6-open")
        guarded = self.lab.add_host("g", "open", v6="v6-firewall")
        self.assertEqual(open_host.address6, "2001:db8:ff::1")
        for host in (open_host, guarded):
            self.assertEqual(parse_address(self.seen(host, A6_1)["seen"])[0], host.address6)
            self.assertEqual(parse_address(self.seen(host, A1)["seen"])[0], host.address)
        self.assertIsNotNone(self.seen(self.lab.public, self.listen(open_host))["seen"])
        self.assertIsNone(
            self.seen(self.lab.public, self.listen(guarded), "--timeout", "1")["seen"]
        )

    def test_blocked_and_v4_only_hosts_have_no_v6_path(self):
        """v6-blocked has an address that leads nowhere; a v4-only host has no IPv6 at all."""
        blocked = self.lab.add_host("b", "port-restricted", v6="v6-blocked")
        v4_only = self.lab.add_host("n", "port-restricted")
        before = self.dropped(blocked)
        probe = self.seen(blocked, A6_1, "--timeout", "1")
        self.assertIsNone(probe["seen"])
        self.assertGreater(self.dropped(blocked), before)
        self.assertIsNone(v4_only.address6)
        self.assertEqual(v4_only.addresses6, ())
        self.assertEqual(self.ip(v4_only, "-6", "route"), "")
        self.assertEqual(self.ip(v4_only, "-6", "addr"), "")
        probe = self.seen(v4_only, A6_1, "--timeout", "1")
        self.assertIsNone(probe["seen"])
        self.assertIn("error", probe)
        for host in (blocked, v4_only):
            self.assertEqual(parse_address(self.seen(host, A1)["seen"])[0], host.public_address)

    def test_v6_only_host_has_no_v4_route(self):
        """A v6-only host has no IPv4 address or route, and reaches pub over IPv6."""
        host = self.lab.add_host("s", None, v6="v6-firewall")
        self.assertIsNone(host.preset)
        self.assertEqual(host.address, host.address6)
        self.assertEqual(host.public_address, host.address6)
        self.assertEqual(self.ip(host, "-4", "route"), "")
        self.assertNotIn("eth0", self.ip(host, "-4", "addr"))
        probe = self.seen(host, A1, "--timeout", "1")
        self.assertIn("Network is unreachable", probe["error"])
        self.assertEqual(parse_address(self.seen(host, A6_1)["seen"])[0], host.address6)

    def ip(self, host: LabHost, *args: str) -> str:
        """``ip -brief ARGS`` in ``host``, without loopback lines."""
        out = host.run(["ip", "-brief", *args], timeout=5, check=True).stdout.decode()
        return "".join(
            line for line in out.splitlines(keepends=True) if not line.startswith(("lo ", "::1"))
        )

    def test_egress_counter_takes_ipv6_addresses(self):
        """An egress counter allowing pub's first IPv6 address counts IPv6 packets to others."""
        host = self.lab.add_host("h", "port-restricted", v6="v6-firewall")
        counter = host.add_egress_counter("stray", [PUBLIC_A, PUBLIC_A6])
        self.seen(host, A6_1)
        self.seen(host, A1)
        self.assertEqual(counter.read().packets, 0)
        self.seen(host, B6_1)
        self.assertGreaterEqual(counter.read().packets, 1)


class V6PunchTests(_V6LabTestCase):
    """Two hosts behind stateful IPv6 firewalls punch through by sending at the same time."""

    def test_simultaneous_udp_send(self):
        """Behind v6-firewall (and symmetric v4 NATs) two hosts reach each other over IPv6."""
        hosts = [
            self.lab.add_host("a", "symmetric-random", v6="v6-firewall"),
            self.lab.add_host("b", "symmetric-random", v6="v6-firewall"),
        ]
        argv = ["--punch", A6_1, "--timeout", "5"]
        mapped, results = paired_run(hosts, [argv, argv], "mapped", 5.0)
        for host, address in zip(hosts, mapped, strict=True):
            self.assertEqual(parse_address(address)[0], host.address6)
        for result, peer in zip(results, reversed(mapped), strict=True):
            self.assertEqual(result["received_from"], peer)
            self.assertTrue(result["peer_heard_us"])
            self.assertEqual(result["exit_status"], 0)

    def test_simultaneous_tcp_open(self):
        """Behind v6-firewall two hosts connect by TCP simultaneous open."""
        hosts = [
            self.lab.add_host("a", "port-restricted", v6="v6-firewall"),
            self.lab.add_host("b", None, v6="v6-firewall"),
        ]
        argvs = [["--tcp-punch", host_port(h.address6 or "", 0), "--timeout", "5"] for h in hosts]
        local, results = paired_run(hosts, argvs, "local", 5.0)
        for result, peer in zip(results, reversed(local), strict=True):
            self.assertTrue(result["connected"], result)
            self.assertEqual(result["remote"], peer)
            self.assertEqual(result["peer_line"], {"from": peer})

    def test_unsolicited_punch_fails_one_sided(self):
        """If only one side sends, its packets die at the other's v6-firewall."""
        hosts = [
            self.lab.add_host("a", "port-restricted", v6="v6-firewall"),
            self.lab.add_host("b", "port-restricted", v6="v6-firewall"),
        ]
        target = self.listen(hosts[1])
        before = self.dropped(hosts[1])
        self.assertIsNone(self.seen(hosts[0], target, "--timeout", "1")["seen"])
        self.assertGreater(self.dropped(hosts[1]), before)


class V4BesideV6Tests(_V6LabTestCase):
    """The IPv4 presets behave as before with an IPv6 side beside them."""

    def test_v4_mapping_and_filtering_unchanged(self):
        """Every NAT preset maps and filters IPv4 as in a v4-only lab, its v6 side working."""
        for i, preset in enumerate(FILTERING):
            host = self.lab.add_host(f"h{i}", preset, v6="v6-firewall")
            mapped = observe(host, "--probe", A1, "--probe", A2, "--probe", B1)
            ports = [parse_address(r["seen"])[1] for r in mapped["results"]]
            for r in mapped["results"]:
                self.assertEqual(parse_address(r["seen"])[0], host.public_address, preset)
            if preset.startswith("symmetric"):
                self.assertEqual(len(set(ports)), 3, (preset, ports))
                if preset == "symmetric-sequential":
                    self.assertEqual(ports, [ports[0], ports[0] + 1, ports[0] + 2])
            else:
                self.assertEqual(ports, [parse_address(mapped["local"])[1]] * 3, preset)
            filtering = tuple(
                self.seen(host, A1, "--reply-from", alt)["alt_received"] for alt in (A2, B1)
            )
            self.assertEqual(filtering, FILTERING[preset], preset)
            self.assertEqual(parse_address(self.seen(host, A6_1)["seen"])[0], host.address6, preset)

    def test_udp_blocked_v4_while_v6_works(self):
        """udp-blocked drops IPv4 UDP only: IPv6 UDP to pub gets answers."""
        host = self.lab.add_host("h", "udp-blocked", v6="v6-firewall")
        self.assertIsNone(self.seen(host, A1, "--timeout", "1")["seen"])
        self.assertEqual(parse_address(self.seen(host, A6_1)["seen"])[0], host.address6)
        tcp = observe(host, "--connect", f"{PUBLIC_A}:5003")
        self.assertEqual(parse_address(tcp["seen"])[0], host.public_address)

    def test_coturn_on_both_families(self):
        """coturn in an IPv6 lab answers STUN on all four addresses with each client's address."""
        reason = coturn_unavailable_reason()
        if reason is not None:
            raise SkipTest(reason)
        info = self.lab.start_coturn(port=3478, alt_port=3479)
        self.assertEqual(info.stun_server6, "[2001:db8:ff::10]:3478")
        self.assertEqual(info.alt_address6, PUBLIC_B6)
        self.assertEqual(info.turn_uri6, "turn:[2001:db8:ff::10]:3478?transport=udp")
        dual = self.lab.add_host("d", "port-restricted", v6="v6-firewall")
        v6_only = self.lab.add_host("s", None, v6="v6-firewall")
        targets = [host_port(a, p) for a in info.addresses for p in (3478, 3479)]
        mapped = observe(dual, *(arg for t in targets for arg in ("--stun", t)))["mapped"]
        for target, address in mapped.items():
            expected = dual.address6 if target.startswith("[") else dual.public_address
            self.assertEqual(parse_address(address)[0], expected, target)
        mapped = observe(
            v6_only, "--stun", info.stun_server6, "--stun", host_port(PUBLIC_B6, 3479)
        )["mapped"]
        self.assertEqual({parse_address(a)[0] for a in mapped.values()}, {v6_only.address6})


class V6LabLifecycleTests(TestCase):
    """Arguments are checked, and an IPv6 lab leaves nothing behind."""

    def setUp(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise SkipTest(reason)

    def test_v6_arguments_are_checked(self):
        """v6 sides need an IPv6 lab and a known preset; a host needs one family at least."""
        lab = lab_fixture(self)
        self.assertRaises(ValueError, lab.add_host, "a", "port-restricted", v6="v6-firewall")
        self.assertEqual(lab.public.addresses6, ())
        lab6 = lab_fixture(self, ipv6=True)
        self.assertEqual(lab6.public.addresses6, (PUBLIC_A6, PUBLIC_B6))
        self.assertRaises(ValueError, lab6.add_host, "a", "port-restricted", v6="v6-nat")
        self.assertRaises(ValueError, lab6.add_host, "a", None)
        self.assertEqual(lab6.hosts, {})
        for i, v6 in enumerate(V6_PRESETS):
            self.assertEqual(lab6.add_host(f"h{i}", None, v6=v6).v6, v6)

    def test_close_removes_everything(self):
        """Closing an IPv6 lab deletes every namespace it made."""
        lab = NatLab(ipv6=True)
        self.addCleanup(lab.close)
        with lab:
            lab.add_host("a", "full-cone", v6="v6-firewall")
            lab.add_host("b", None, v6="v6-open")
            lab.add_host("c", "open", v6="v6-blocked")
            self.assertEqual(len(lab.namespaces), 7)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
        self.assertNotIn(f"{lab.prefix}-", listed.stdout)

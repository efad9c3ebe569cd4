# -*- test-case-name: tests.lab.test_natlab -*-
"""Tests for the NAT lab (lab.natlab) with real kernel NATs.

Every preset's mapping and filtering behaviour is measured with the standalone
``lab.udpobserver``, not with the project's STUN code. The tests that build
namespaces need root, ``ip`` and ``nft``; they skip with a one-line reason elsewhere.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from lab import natlab
from lab.natlab import (
    PRESETS,
    PUBLIC_A,
    PUBLIC_B,
    SEQUENTIAL_PORT_BASE,
    SEQUENTIAL_PORT_COUNT,
    LabHost,
    NatLab,
    lab_fixture,
    router_ruleset,
    unavailable_reason,
)
from lab.udpobserver import format_address, parse_address, stun_mapped_address
from tests.lab.observer_runs import OBSERVER, OutputLines, observe, paired_run

A1, A2 = f"{PUBLIC_A}:5001", f"{PUBLIC_A}:5002"
B1, B2 = f"{PUBLIC_B}:5001", f"{PUBLIC_B}:5002"
TCP = f"{PUBLIC_A}:5003"

# preset -> (answer from same IP, other port gets in; answer from other IP gets in)
FILTERING = {
    "open": (True, True),
    "full-cone": (True, True),
    "restricted-cone": (True, False),
    "port-restricted": (False, False),
    "symmetric-sequential": (False, False),
    "symmetric-random": (False, False),
}


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _lab_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(f"{prefix}-")]


class RulesetTests(SynchronousTestCase):
    """The nftables rulesets the presets load (no root needed)."""

    def test_every_router_has_the_home_router_firewall(self):
        """Each NAT preset drops new inbound flows to the router and to the LAN."""
        for preset in PRESETS[1:]:
            rules = router_ruleset(preset, "203.0.113.1")
            self.assertIn('iifname "wan0" ct state new drop', rules.split("chain forward")[0])
            self.assertIn('iifname "wan0" ct state new ct status dnat accept', rules)

    def test_only_udp_blocked_drops_udp(self):
        """Only the udp-blocked preset drops forwarded UDP."""
        for preset in PRESETS[1:]:
            blocked = "meta l4proto udp drop" in router_ruleset(preset, "203.0.113.1")
            self.assertEqual(blocked, preset == "udp-blocked", preset)

    def test_sequential_map_covers_its_port_range(self):
        """symmetric-sequential maps counter 0..N-1 onto consecutive WAN ports."""
        rules = router_ruleset("symmetric-sequential", "203.0.113.7")
        last = SEQUENTIAL_PORT_COUNT - 1
        self.assertIn(f"0 : {SEQUENTIAL_PORT_BASE},", rules)
        self.assertIn(f"{last} : {SEQUENTIAL_PORT_BASE + last} }}", rules)
        self.assertIn("snat ip to 203.0.113.7 : numgen inc mod", rules)

    def test_open_has_no_router(self):
        """Asking for the open preset's router ruleset is an error."""
        self.assertRaises(ValueError, router_ruleset, "open", "203.0.113.1")

    def test_prefix_is_validated(self):
        """A prefix that would make unsafe or overlong names is refused."""
        self.assertRaises(ValueError, NatLab, "Bad-Prefix")
        self.assertRaises(ValueError, NatLab, "x" * 17)


class ObserverCodecTests(SynchronousTestCase):
    """The observer's small parsers (no root needed)."""

    def test_address_round_trip(self):
        """IP:PORT text parses to a tuple and formats back."""
        self.assertEqual(parse_address("203.0.113.10:5001"), ("203.0.113.10", 5001))
        self.assertEqual(format_address(("203.0.113.10", 5001)), "203.0.113.10:5001")

    def test_xor_mapped_address(self):
        """A STUN XOR-MAPPED-ADDRESS decodes to the plain address (RFC 8489 14.2)."""
        port = 40000 ^ 0x2112
        raw = (0xCB007104 ^ 0x2112A442).to_bytes(4, "big")  # 203.0.113.4
        attribute = bytes.fromhex("0020 0008 0001".replace(" ", "")) + port.to_bytes(2, "big")
        message = bytes(20) + attribute + raw
        self.assertEqual(stun_mapped_address(message), "203.0.113.4:40000")


class _LabTestCase(TestCase):
    """A fresh lab per test, with helpers to run the observer and its probes."""

    def setUp(self) -> None:
        self.lab = lab_fixture(self)

    def start_observer(self) -> None:
        """Run the observer in ``pub`` on both addresses, two UDP ports each, plus TCP."""
        argv = self.lab.public.python_argv(OBSERVER, "--tcp", TCP)
        for address in (A1, A2, B1, B2):
            argv += ["--bind", address]
        proc = self.lab.public.popen(argv, stdout=subprocess.PIPE)
        self.assertEqual(OutputLines(proc).json(10.0)["ready"][-1], TCP)

    def mapped(self, host: LabHost, *targets: str) -> list[tuple[str, int]]:
        """The mapped addresses one socket in ``host`` gets toward each target in turn."""
        args = [arg for target in targets for arg in ("--probe", target)]
        results = observe(host, *args)["results"]
        seen = [r["seen"] for r in results]
        self.assertNotIn(None, seen, f"{host}: no answer from some of {targets}")
        return [parse_address(s) for s in seen]

    def alt_gets_in(self, host: LabHost, alt: str) -> bool:
        """Whether an answer from ``alt`` reaches a fresh socket that only talked to A1."""
        result = observe(host, "--probe", A1, "--reply-from", alt)["results"][0]
        self.assertEqual(parse_address(result["seen"])[0], host.public_address)
        if result["alt_received"]:
            self.assertEqual(result["alt_source"], alt)
        return bool(result["alt_received"])


class MappingTests(_LabTestCase):
    """Mapping behaviour (RFC 4787 section 4.1) of each preset, toward A1, A2 and B1."""

    def check_endpoint_independent(self, preset: str) -> None:
        self.start_observer()
        host = self.lab.add_host("h", preset)
        mapped = self.mapped(host, A1, A2, B1)
        self.assertEqual({ip for ip, _ in mapped}, {host.public_address})
        self.assertEqual(len({port for _, port in mapped}), 1, f"{preset}: {mapped}")

    def test_open(self):
        """An open host is seen at its own address and port by everyone."""
        self.check_endpoint_independent("open")

    def test_full_cone(self):
        """full-cone keeps one mapping for all destinations."""
        self.check_endpoint_independent("full-cone")

    def test_restricted_cone(self):
        """restricted-cone keeps one mapping for all destinations."""
        self.check_endpoint_independent("restricted-cone")

    def test_port_restricted(self):
        """port-restricted (masquerade) keeps one mapping for all destinations."""
        self.check_endpoint_independent("port-restricted")

    def test_port_preserving(self):
        """The masquerading presets keep the host's own source port."""
        self.start_observer()
        for i, preset in enumerate(("open", "full-cone", "restricted-cone", "port-restricted")):
            host = self.lab.add_host(f"h{i}", preset)
            result = observe(host, "--probe", A1)
            local_port = parse_address(result["local"])[1]
            self.assertEqual(parse_address(result["results"][0]["seen"])[1], local_port, preset)

    def test_symmetric_sequential(self):
        """symmetric-sequential gives each new destination the next port, +1 each."""
        self.start_observer()
        host = self.lab.add_host("h", "symmetric-sequential")
        ports = [port for _, port in self.mapped(host, A1, A2, B1)]
        self.assertEqual(ports, [ports[0], ports[0] + 1, ports[0] + 2])
        self.assertTrue(SEQUENTIAL_PORT_BASE <= ports[0] < 30000, ports)

    def test_symmetric_random(self):
        """symmetric-random gives each destination a different, non-sequential port."""
        self.start_observer()
        host = self.lab.add_host("h", "symmetric-random")
        ports = [port for _, port in self.mapped(host, A1, A2, B1)]
        self.assertEqual(len(set(ports)), 3, ports)
        self.assertNotEqual([b - a for a, b in itertools.pairwise(ports)], [1, 1], ports)


class FilteringTests(_LabTestCase):
    """Filtering behaviour (RFC 4787 section 5) of each preset, with fresh sockets."""

    def check_filtering(self, preset: str) -> None:
        self.start_observer()
        host = self.lab.add_host("h", preset)
        measured = (self.alt_gets_in(host, A2), self.alt_gets_in(host, B1))
        self.assertEqual(measured, FILTERING[preset], preset)

    def test_open(self):
        """An open host hears answers from any address and port."""
        self.check_filtering("open")

    def test_full_cone(self):
        """full-cone lets in answers from any address and port (endpoint-independent)."""
        self.check_filtering("full-cone")

    def test_restricted_cone(self):
        """restricted-cone lets in another port of the same IP but not another IP."""
        self.check_filtering("restricted-cone")

    def test_port_restricted(self):
        """port-restricted lets in only the exact address and port it sent to."""
        self.check_filtering("port-restricted")

    def test_symmetric_sequential(self):
        """symmetric-sequential filters by address and port."""
        self.check_filtering("symmetric-sequential")

    def test_symmetric_random(self):
        """symmetric-random filters by address and port."""
        self.check_filtering("symmetric-random")


class LabTests(_LabTestCase):
    """Blocked UDP, hole punching, coturn, counters and several hosts in one lab."""

    def test_udp_blocked_passes_tcp_only(self):
        """udp-blocked answers no UDP probe, but TCP to pub connects via the router."""
        self.start_observer()
        host = self.lab.add_host("h", "udp-blocked")
        result = observe(host, "--probe", A1, "--probe", B1, "--timeout", "1")
        self.assertEqual([r["seen"] for r in result["results"]], [None, None])
        tcp = observe(host, "--connect", TCP)
        self.assertTrue(tcp["connected"], tcp)
        self.assertEqual(parse_address(tcp["seen"])[0], host.public_address)

    def punch(self, preset_a: str, preset_b: str, timeout: float) -> list[dict[str, Any]]:
        """Naive simultaneous punch between new hosts behind ``preset_a`` and ``preset_b``."""
        self.start_observer()
        hosts = [self.lab.add_host("a", preset_a), self.lab.add_host("b", preset_b)]
        argv = ["--punch", A1, "--timeout", str(timeout)]
        mapped, results = paired_run(hosts, [argv, argv], "mapped", timeout)
        for host, address in zip(hosts, mapped, strict=True):
            self.assertEqual(parse_address(address)[0], host.public_address)
        for result in results:
            self.assertEqual(result["exit_status"], 0 if result["received_from"] else 1)
        for result, peer in zip(results, reversed(mapped), strict=True):
            self.assertEqual(result["peer"], peer)
        return results

    def test_punch_between_port_restricted(self):
        """Two port-restricted hosts reach each other by sending to each other at once."""
        results = self.punch("port-restricted", "port-restricted", timeout=5.0)
        for result in results:
            self.assertEqual(result["received_from"], result["peer"])

    def test_naive_punch_fails_against_symmetric(self):
        """The same naive punch fails between port-restricted and symmetric-random."""
        results = self.punch("port-restricted", "symmetric-random", timeout=1.5)
        self.assertIsNone(results[1]["received_from"])

    def test_coturn_reports_the_router_address(self):
        """coturn answers turnutils_stunclient behind a NAT with the router's WAN address."""
        reason = natlab.coturn_unavailable_reason()
        if reason is not None:
            raise SkipTest(reason)
        info = self.lab.start_coturn()
        self.assertEqual(info.stun_server, f"{PUBLIC_A}:3478")
        host = self.lab.add_host("h", "port-restricted")
        # After its first answer the tool runs RFC 5780 tests whose answers a NAT drops,
        # and it waits for them forever: read up to the first answer, then stop it.
        proc = host.popen(
            ["turnutils_stunclient", "-p", "3478", PUBLIC_A],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, lines = OutputLines(proc), []
        while not any("reflexive" in x for x in lines):
            line = output.next(10.0)
            if line is None:
                break
            lines.append(line)
        proc.kill()
        proc.wait()
        reflexive = [x for x in lines if "UDP reflexive addr" in x]
        self.assertTrue(reflexive, "".join(lines))
        self.assertIn(f"{host.public_address}:", reflexive[0])
        self.assertIn(f"Other addr: : {PUBLIC_B}:3479", "".join(lines))

    def test_egress_counter_counts_only_other_destinations(self):
        """The router counter ignores packets to allowed addresses and counts the rest."""
        self.start_observer()
        host = self.lab.add_host("h", "port-restricted")
        counter = host.add_egress_counter("stray", [PUBLIC_A])
        self.mapped(host, A1, A2)
        self.assertEqual(counter.read().packets, 0)
        self.mapped(host, B1)
        self.assertGreaterEqual(counter.read().packets, 1)

    def test_many_hosts_each_behind_its_own_router(self):
        """A host per preset, each reaching pub over TCP from its own public address."""
        self.start_observer()
        hosts = [self.lab.add_host(f"h{i}", preset) for i, preset in enumerate(PRESETS)]
        self.assertEqual(len({h.public_address for h in hosts}), len(PRESETS))
        for host in hosts:
            seen = observe(host, "--connect", TCP)["seen"]
            self.assertEqual(parse_address(seen)[0], host.public_address, host)
            if host.preset == "open":
                self.assertIsNone(host.router_namespace)
                self.assertEqual(host.address, host.public_address)
            else:
                self.assertTrue(host.address.startswith("10.") and host.address.endswith(".0.2"))

    def test_two_labs_coexist(self):
        """A second lab with the same host names runs beside the first without clashing."""
        other = lab_fixture(self)
        self.assertNotEqual(other.prefix, self.lab.prefix)
        for lab in (self.lab, other):
            host = lab.add_host("same", "port-restricted")
            self.assertEqual(
                host.run(
                    ["ip", "-brief", "addr", "show", "eth0"], timeout=5, check=True
                ).stdout.split()[2],
                f"{host.address}/24".encode(),
            )
        self.assertFalse(set(self.lab.namespaces) & set(other.namespaces))

    def test_hosts_inherit_the_environment(self):
        """Commands in a host see our environment and can import the project."""
        host = self.lab.add_host("h", "full-cone")
        code = "import os, holepunch; print(os.environ['HP_NATLAB_MARK'])"
        os.environ["HP_NATLAB_MARK"] = "42"
        self.addCleanup(os.environ.pop, "HP_NATLAB_MARK", None)
        result = host.run([sys.executable, "-c", code], timeout=10, check=True)
        self.assertEqual(result.stdout.strip(), b"42")


class CleanupTests(TestCase):
    """close() removes every namespace and process, however the lab ends."""

    def setUp(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise SkipTest(reason)

    def test_exception_inside_with_leaves_nothing(self):
        """An exception inside ``with NatLab()`` still kills its processes and namespaces."""
        lab = NatLab()
        self.addCleanup(lab.close)

        class Boom(Exception):
            pass

        with self.assertRaises(Boom):
            with lab:
                host = lab.add_host("a", "full-cone")
                lab.add_host("b", "open")
                tracked = host.popen(["sleep", "600"])
                # A process the lab did not start itself, left behind by a command:
                out = host.run(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"], timeout=5)
                stray = int(out.stdout)
                self.assertEqual(len(_lab_namespaces(lab.prefix)), 5)
                raise Boom()
        self.assertEqual(_lab_namespaces(lab.prefix), [])
        self.assertIsNotNone(tracked.poll())
        deadline = time.monotonic() + 5.0
        while not _gone(stray) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertTrue(_gone(stray))

    def test_close_is_idempotent(self):
        """close() may be called before start, twice, and after a context exit."""
        NatLab().close()
        lab = NatLab()
        with lab:
            lab.add_host("a", "port-restricted")
        lab.close()
        lab.close()
        self.assertEqual(_lab_namespaces(lab.prefix), [])
        self.assertRaises(RuntimeError, lab.start)

    def test_remove_stale_labs(self):
        """Namespaces named for a lab whose process is gone are swept up."""
        dead = subprocess.Popen(["true"])
        dead.wait()
        name = f"hp{dead.pid}x0000-wan"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "delete", name], capture_output=True)
        self.assertIn(name, natlab.remove_stale_labs())
        self.assertEqual(_lab_namespaces(f"hp{dead.pid}x0000"), [])

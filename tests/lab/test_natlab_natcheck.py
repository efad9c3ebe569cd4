"""``holepunch nat-check`` behind every NAT preset of the lab, against our server and coturn.

Real kernel NATs (nftables in network namespaces, see docs/natlab.md); our daemon and
coturn run in the lab's public namespace with two addresses each, so every RFC 5780
test runs. The hosts run nat-check at the same time (they sit behind separate routers).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from twisted.trial.unittest import TestCase

from lab.miniupnpd import miniupnpd_unavailable_reason
from lab.natlab import (
    PRESETS,
    PUBLIC_A,
    PUBLIC_A6,
    PUBLIC_B,
    LabHost,
    NatLab,
    coturn_unavailable_reason,
    lab_fixture,
)
from lab.peers import start_lab_servers, start_port_mapping

EI = "endpoint-independent"
APD = "address-and-port-dependent"
AD = "address-dependent"

# preset: (type, mapping, filtering, portAllocation, portDelta)
EXPECTED: dict[str, tuple[str, str, str, str, int | None]] = {
    "open": ("open", EI, EI, "preserving", 0),
    "full-cone": ("full-cone", EI, EI, "preserving", 0),
    "restricted-cone": ("restricted-cone", EI, AD, "preserving", 0),
    "port-restricted": ("port-restricted", EI, APD, "preserving", 0),
    "symmetric-sequential": ("symmetric", APD, APD, "sequential", 1),
    "symmetric-random": ("symmetric", APD, APD, "random", None),
    "udp-blocked": ("udp-blocked", "unknown", "unknown", "unknown", None),
}


# Two one-address servers without RFC 5780: filtering cannot be measured (so every cone is
# reported port-restricted, the strictest), mapping differs between the two addresses on a
# symmetric NAT, and the allocation comes from two new flows of one socket.
EXPECTED_ORDINARY: dict[str, tuple[str, str, str, str, int | None]] = {
    "open": ("open", EI, "unknown", "preserving", 0),
    "full-cone": ("port-restricted", EI, "unknown", "preserving", 0),
    "restricted-cone": ("port-restricted", EI, "unknown", "preserving", 0),
    "port-restricted": ("port-restricted", EI, "unknown", "preserving", 0),
    "symmetric-sequential": ("symmetric", AD, "unknown", "sequential", 1),
    "symmetric-random": ("symmetric", AD, "unknown", "random", None),
    "udp-blocked": ("udp-blocked", "unknown", "unknown", "unknown", None),
}


def run_everywhere(
    hosts: dict[str, LabHost], *servers: str
) -> dict[str, tuple[dict[str, Any] | None, str]]:
    """Run nat-check --json in every host at once; preset -> (parsed JSON or None, stderr)."""
    procs = {}
    stun = [arg for server in servers for arg in ("--stun-server", server)]
    for preset, host in hosts.items():
        argv = host.python_argv("holepunch", "nat-check", "--json", *stun)
        procs[preset] = host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results: dict[str, tuple[dict[str, Any] | None, str]] = {}
    for preset, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            results[preset] = (None, "timed out: " + err.decode(errors="replace"))
            continue
        lines = out.decode().splitlines()
        data = json.loads(lines[0]) if proc.returncode == 0 and len(lines) == 1 else None
        results[preset] = (data, f"exit {proc.returncode}: {err.decode(errors='replace')}")
    return results


class NatCheckInLabTests(TestCase):
    """nat-check classifies every preset correctly."""

    def lab(self) -> tuple[NatLab, dict[str, LabHost]]:
        lab = lab_fixture(self)
        hosts = {preset: lab.add_host(f"h{i}", preset) for i, preset in enumerate(PRESETS)}
        return lab, hosts

    def check(
        self,
        hosts: dict[str, LabHost],
        *servers: str,
        expected_by_preset: dict[str, tuple[str, str, str, str, int | None]] = EXPECTED,
    ) -> dict[str, tuple[dict[str, Any] | None, str]]:
        results = run_everywhere(hosts, *servers)
        problems = []
        for preset, expected in expected_by_preset.items():
            data, err = results[preset]
            if data is None:
                problems.append(f"{preset}: no JSON ({err.strip()})")
                continue
            got = (
                data["type"],
                data["mapping"],
                data["filtering"],
                data["portAllocation"],
                data["portDelta"],
            )
            if got != expected:
                problems.append(f"{preset}: expected {expected}, got {got} (notes {data['notes']})")
            if data["publicAddress"] != hosts[preset].public_address:
                problems.append(
                    f"{preset}: public address {data['publicAddress']}, "
                    f"expected {hosts[preset].public_address}"
                )
        self.assertEqual(problems, [], "\n".join(problems))
        return results

    def test_against_our_daemon(self) -> None:
        """Behind each preset, nat-check against `twistd holepunch` (RFC 5780 mode) prints the right type, mapping, filtering and port allocation."""
        lab, hosts = self.lab()
        lab.start_holepunch_daemon(stun_port=3480, stun_alt_port=3481)
        self.check(hosts, "203.0.113.10:3480")

    def test_against_coturn(self) -> None:
        """The same verdicts against coturn, an independent RFC 5780 server."""
        reason = coturn_unavailable_reason()
        if reason:
            raise self.skipTest(reason)
        lab, hosts = self.lab()
        coturn = lab.start_coturn()
        self.check(hosts, coturn.stun_server)

    def test_against_two_ordinary_servers(self) -> None:
        """Two one-address servers without RFC 5780 (the daemon and coturn, one address
        each), as public STUN servers are: mapping and port allocation still measured,
        with the evidence named; filtering unknown, with a note."""
        reason = coturn_unavailable_reason()
        if reason:
            raise self.skipTest(reason)
        lab, hosts = self.lab()
        lab.start_holepunch_daemon(
            stun_port=3478,
            rfc5780=False,
            extra_args=["--stun-interface", PUBLIC_A, "--stun-alternate-port=0"],
        )
        coturn = lab.start_coturn(addresses=(PUBLIC_B,))
        results = self.check(
            hosts,
            f"{PUBLIC_A}:3478",
            coturn.stun_server,
            expected_by_preset=EXPECTED_ORDINARY,
        )
        data, _ = results["symmetric-sequential"]
        assert data is not None
        self.assertFalse(data["rfc5780"])
        self.assertTrue(any(e.startswith("mapping: ") for e in data["evidence"]), data)
        self.assertTrue(any(e.startswith("allocation: ") for e in data["evidence"]), data)
        self.assertTrue(any("filtering not measured" in n for n in data["notes"]), data)

    def test_readme_daemon_and_port_mapping(self) -> None:
        """Against the daemon as the README starts it (one address, 3478 and 3479):
        mapping and allocation from its two ports; which of UPnP, NAT-PMP and PCP the
        router speaks (miniupnpd on one router, nothing on the other)."""
        reason = coturn_unavailable_reason() or miniupnpd_unavailable_reason()
        if reason:
            raise self.skipTest(reason)
        lab = lab_fixture(self)
        hosts = {
            "with-router": lab.add_host("m0", "symmetric-random"),
            "without": lab.add_host("m1", "symmetric-random"),
        }
        start_lab_servers(lab, "one-address")
        start_port_mapping(lab, [hosts["with-router"]])
        results = run_everywhere(hosts, f"{PUBLIC_A}:3478")
        for name, (data, err) in results.items():
            assert data is not None, f"{name}: {err}"
            self.assertEqual((data["mapping"], data["portAllocation"], data["portDelta"]),
                             (APD, "random", None), data)  # fmt: skip
            self.assertTrue(any(e.startswith("port mapping: ") for e in data["evidence"]), data)
        with_router, _ = results["with-router"]
        without, _ = results["without"]
        assert with_router is not None and without is not None
        self.assertEqual(with_router["portMapping"], {"pcp": True, "natpmp": True, "upnp": True})
        self.assertEqual(without["portMapping"], {"pcp": False, "natpmp": False, "upnp": False})


class NatCheckIpv6InLabTests(TestCase):
    """nat-check reports both families: behind a v4 NAT and a v6 firewall, against the
    README's daemon (both families by default) given as one server of each family."""

    def test_both_families_behind_nat_and_firewall(self) -> None:
        lab = lab_fixture(self, ipv6=True)
        dual = lab.add_host("dual", "port-restricted", v6="v6-firewall")
        only6 = lab.add_host("only6", None, v6="v6-firewall")
        lab.start_holepunch_daemon(stun_port=3478, rfc5780=False)
        results = run_everywhere(
            {"dual": dual, "only6": only6}, f"{PUBLIC_A}:3478", f"[{PUBLIC_A6}]:3478"
        )
        data, err = results["dual"]
        assert data is not None, err
        v4, v6 = data["families"]["IPv4"], data["families"]["IPv6"]
        self.assertEqual(
            (v4["type"], v4["publicAddress"]), ("port-restricted", dual.public_address)
        )
        self.assertEqual(v6["publicAddress"], dual.address6)
        self.assertTrue(any("no NAT66" in e for e in v6["evidence"]), v6)
        data, err = results["only6"]
        assert data is not None, err
        self.assertEqual(data["family"], "IPv6")
        self.assertEqual(data["families"]["IPv6"]["publicAddress"], only6.address6)
        self.assertIn("error", data["families"]["IPv4"])

"""Hard NATs in the lab: port prediction, birthday probing, and clean failures.

Real kernel NATs (docs/natlab.md); the daemon runs in the public namespace; each peer runs
``holepunch connect`` behind its router.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

from twisted.trial.unittest import TestCase

from lab.miniupnpd import miniupnpd_unavailable_reason
from lab.natlab import PUBLIC_A, PUBLIC_B, LabHost, coturn_unavailable_reason, lab_fixture
from lab.peers import run_connect, start_lab_daemon, start_lab_servers, start_port_mapping

CONES = ("open", "full-cone", "restricted-cone", "port-restricted")


def run_connect_args(
    a: LabHost, b: LabHost, url: str, names: tuple[str, str], timeout: float
) -> dict[str, Any]:
    return run_connect(a, b, url, names=names, timeout=timeout)


class HardNatLabTests(TestCase):
    """Symmetric NATs connect directly where theory allows."""

    def test_sequential_connects_to_every_cone_and_itself(self) -> None:
        """symmetric-sequential connects by port prediction to every cone type and to itself, both orders."""
        lab = lab_fixture(self)
        # A sequential NAT's counter is shared by everything behind it, so each case gets
        # its own sequential host: cases run five at a time.
        hosts = {f"s{i}": lab.add_host(f"s{i}", "symmetric-sequential") for i in range(10)}
        hosts |= {c: lab.add_host(f"c{i}", c) for i, c in enumerate(CONES)}
        url = start_lab_daemon(lab)
        cases = [("s0", "s1")]
        cases += [(f"s{i + 2}", c) for i, c in enumerate(CONES)]
        cases += [(c, f"s{i + 6}") for i, c in enumerate(CONES)]
        direct = {"direct", "udp-hole-punch", "port-prediction"}
        problems: list[str] = []
        predicted = 0
        numbered = list(enumerate(cases))
        for batch in (numbered[:5], numbered[5:]):
            with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
                futures = [
                    (
                        (x, y),
                        pool.submit(
                            run_connect_args, hosts[x], hosts[y], url, (f"q{k}o", f"q{k}a"), 15
                        ),
                    )
                    for k, (x, y) in batch
                ]
                results = [(xy, f.result()) for xy, f in futures]
            for (x, y), result in results:
                if not result["ok"]:
                    problems.append(f"{x} -> {y}: {result['reason']}")
                    continue
                methods = {result["method"], result["other"]["method"]}
                if not methods <= direct:
                    problems.append(f"{x} -> {y}: methods {methods}")
                predicted += "port-prediction" in methods
        self.assertEqual(problems, [], "\n".join(problems))
        # Port-restricted cones and the sequential NAT itself need prediction (natlab-notes).
        self.assertGreaterEqual(predicted, 3)

    def test_random_connects_to_cones_19_of_20(self) -> None:
        """symmetric-random connects directly to each cone type in at least 19 of 20 runs within 15 s, probes only the peer, at the capped rate."""
        lab = lab_fixture(self)
        hard = {c: lab.add_host(f"h{i}", "symmetric-random") for i, c in enumerate(CONES)}
        easy = {c: lab.add_host(f"e{i}", c) for i, c in enumerate(CONES)}
        counters = {
            c: easy[c].add_egress_counter(
                "stray", [hard[c].public_address, PUBLIC_A, PUBLIC_B], l4proto=None
            )
            for c in CONES
        }
        url = start_lab_daemon(lab)
        wins = {c: 0 for c in CONES}
        notes: dict[str, list[str]] = {c: [] for c in CONES}
        for run in range(20):
            jobs = []
            for c in CONES:
                # Alternate who offers, so both orders are covered.
                pair = (hard[c], easy[c]) if run % 2 == 0 else (easy[c], hard[c])
                jobs.append((c, pair))
            with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
                futures = {
                    c: pool.submit(
                        run_connect_args, a, b, url, (f"{c[:4]}{run}o", f"{c[:4]}{run}a"), 15
                    )
                    for c, (a, b) in jobs
                }
                for c, future in futures.items():
                    result = future.result()
                    if result["ok"] and result["elapsed_ms"] <= 15000:
                        wins[c] += 1
                        probes = max(result["probes_sent"], result["other"]["probes_sent"])
                        elapsed = max(result["elapsed_ms"], result["other"]["elapsed_ms"]) / 1000
                        if probes > 100 * elapsed + 2:
                            notes[c].append(f"run {run}: {probes} probes in {elapsed:.1f} s")
                    else:
                        notes[c].append(f"run {run}: {result.get('reason', result)}")
        report = {c: (wins[c], notes[c][:3]) for c in CONES}
        for c in CONES:
            self.assertGreaterEqual(wins[c], 19, report)
            self.assertFalse([n for n in notes[c] if "probes in" in n], report)
            self.assertEqual(counters[c].read().packets, 0, f"{c}: a packet left toward a stranger")

    def test_relay_only_cells_fail_cleanly(self) -> None:
        """Random against random has no direct path: both sides exit 1 quickly, naming the stage."""
        lab = lab_fixture(self)
        a = lab.add_host("ra", "symmetric-random")
        b = lab.add_host("rb", "symmetric-random")
        url = start_lab_daemon(lab)
        result = run_connect(a, b, url, names=("ra", "rb"), timeout=20)
        self.assertFalse(result["ok"])
        self.assertIn("holepunch connect: connectivity-checks:", result["reason"])
        self.assertLess(result["seconds"], 20)

    def test_udp_blocked_connects_by_tcp(self) -> None:
        """A host whose UDP is blocked connects by TCP hole punching to every cone type, both orders."""
        lab = lab_fixture(self)
        blocked = {c: lab.add_host(f"u{i}", "udp-blocked") for i, c in enumerate(CONES)}
        cones = {c: lab.add_host(f"k{i}", c) for i, c in enumerate(CONES)}
        url = start_lab_daemon(lab)
        problems: list[str] = []
        for order in ("blocked-offers", "cone-offers"):
            with concurrent.futures.ThreadPoolExecutor(len(CONES)) as pool:
                futures = {}
                for i, c in enumerate(CONES):
                    a, b = (
                        (blocked[c], cones[c])
                        if order == "blocked-offers"
                        else (cones[c], blocked[c])
                    )
                    futures[c] = pool.submit(
                        run_connect_args, a, b, url, (f"t{order[0]}{i}o", f"t{order[0]}{i}a"), 20
                    )
                for c, future in futures.items():
                    result = future.result()
                    if not result["ok"]:
                        problems.append(f"{order} {c}: {result['reason']}")
                    elif {result["method"], result["other"]["method"]} != {"tcp-hole-punch"}:
                        problems.append(
                            f"{order} {c}: methods {result['method']}/{result['other']['method']}"
                        )
        self.assertEqual(problems, [], "\n".join(problems))


class WhereUsersAreTests(TestCase):
    """The hard-NAT techniques with the servers users have, not only an RFC 5780 server."""

    def hard_cells(self, setup: str) -> None:
        """port-restricted against both symmetric kinds (both orders) and sequential
        against itself connect directly, by prediction or birthday probing."""
        lab = lab_fixture(self)
        cases = [
            ("port-restricted", "symmetric-sequential", "port-prediction"),
            ("symmetric-sequential", "port-restricted", "port-prediction"),
            ("symmetric-sequential", "symmetric-sequential", "port-prediction"),
            ("port-restricted", "symmetric-random", "birthday"),
            ("symmetric-random", "port-restricted", "birthday"),
        ]
        hosts = [
            (lab.add_host(f"o{k}", row), lab.add_host(f"a{k}", col), method)
            for k, (row, col, method) in enumerate(cases)
        ]
        servers = start_lab_servers(lab, setup)
        with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
            futures = [
                pool.submit(
                    run_connect,
                    a,
                    b,
                    servers.url,
                    names=(f"w{k}o", f"w{k}a"),
                    # The CLI's default. Birthday probing's time to success has a long
                    # tail: 13-15 s seen with these five connects sharing two cores.
                    timeout=30,
                    stun_servers=servers.stun_servers,
                )
                for k, (a, b, _) in enumerate(hosts)
            ]
            results = [f.result() for f in futures]
        problems = []
        for (a, b, method), result in zip(hosts, results, strict=True):
            if not result["ok"]:
                problems.append(f"{a.preset} -> {b.preset}: {result['reason']}")
                continue
            methods = {result["method"], result["other"]["method"]}
            if method not in methods:
                problems.append(f"{a.preset} -> {b.preset}: methods {methods}, not {method}")
        self.assertEqual(problems, [], "\n".join(problems))

    def test_one_address_daemon_and_only_the_signaling_url(self) -> None:
        """The daemon as the README starts it (one address, defaults); clients given only
        the signaling URL (they learn STUN from welcome's iceServers)."""
        self.hard_cells("one-address")

    def test_public_style_stun_servers(self) -> None:
        """Two one-address STUN servers without RFC 5780 (the daemon and coturn), no hints."""
        reason = coturn_unavailable_reason()
        if reason:
            raise self.skipTest(reason)
        self.hard_cells("public-style")


class PortMappingLabTests(TestCase):
    """miniupnpd (UPnP IGD, NAT-PMP, PCP) on the routers, with the README's daemon."""

    def test_random_against_random_by_port_mapping(self) -> None:
        """symmetric-random against symmetric-random (no direct path otherwise) connects
        directly once both routers map ports, and names the method ``port-mapping``."""
        reason = coturn_unavailable_reason() or miniupnpd_unavailable_reason()
        if reason:
            raise self.skipTest(reason)
        lab = lab_fixture(self)
        a = lab.add_host("ra", "symmetric-random")
        b = lab.add_host("rb", "symmetric-random")
        servers = start_lab_servers(lab, "one-address")
        start_port_mapping(lab, [a, b])
        result = run_connect(
            a, b, servers.url, names=("pma", "pmb"), timeout=15, stun_servers=servers.stun_servers
        )
        self.assertTrue(result["ok"], result.get("reason"))
        self.assertIn("port-mapping", {result["method"], result["other"]["method"]}, result)

    def test_without_a_router_cones_still_connect(self) -> None:
        """With no port-mapping router (miniupnpd not running), a cone pair connects by
        UDP hole punching as before: the router's silence only delays end-of-candidates
        (the connect times are in docs/nat-matrix.md, not asserted here)."""
        lab = lab_fixture(self)
        a = lab.add_host("ca", "port-restricted")
        b = lab.add_host("cb", "port-restricted")
        servers = start_lab_servers(lab, "one-address")
        result = run_connect(
            a, b, servers.url, names=("nra", "nrb"), timeout=15, stun_servers=servers.stun_servers
        )
        self.assertTrue(result["ok"], result.get("reason"))
        self.assertEqual(result["method"], "udp-hole-punch")
        self.assertEqual(result["other"]["method"], "udp-hole-punch")

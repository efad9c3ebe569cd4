"""Hard NATs in the lab: port prediction, birthday probing, and clean failures.

Real kernel NATs (docs/natlab.md); the daemon runs in the public namespace; each peer runs
``holepunch connect`` behind its router.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

from twisted.trial.unittest import TestCase

from holepunch.testing.natlab import PUBLIC_A, PUBLIC_B, LabHost, lab_fixture
from holepunch.testing.peers import PeerProcessError, connect_pair, start_lab_daemon

CONES = ("open", "full-cone", "restricted-cone", "port-restricted")


def attempt(
    a: LabHost, b: LabHost, url: str, names: tuple[str, str], timeout: float
) -> dict[str, Any]:
    """One connect and one line across; the offerer's JSON (plus ok / reason / seconds)."""
    started = time.monotonic()
    pa, pb = connect_pair(a, b, url, names=names, timeout=timeout)
    try:
        info = pa.info(timeout + 10)
        other = pb.info(10)
        pa.send_lines(["ping"])
        if pb.read_lines(1, 5) != ["ping"]:
            raise PeerProcessError("no data")
        pa.end_input()
        pa.wait(10)
        pb.wait(10)
        return {**info, "other": other, "ok": True, "seconds": time.monotonic() - started}
    except PeerProcessError as e:
        pa.kill()
        pb.kill()
        reason = (pa.stderr + pb.stderr).strip() or str(e)
        return {"ok": False, "reason": reason, "seconds": time.monotonic() - started}
    finally:
        pa.kill()
        pb.kill()


class HardNatLabTests(TestCase):
    """Symmetric NATs connect directly where theory allows."""

    def test_sequential_connects_to_every_cone_and_itself(self) -> None:
        """symmetric-sequential connects by port prediction to every cone type and to itself, both orders."""
        lab = lab_fixture(self)
        hosts = {f"s{i}": lab.add_host(f"s{i}", "symmetric-sequential") for i in range(2)}
        hosts |= {c: lab.add_host(f"c{i}", c) for i, c in enumerate(CONES)}
        url = start_lab_daemon(lab)
        cases = [("s0", "s1")] + [("s0", c) for c in CONES] + [(c, "s1") for c in CONES]
        problems = []
        for batch in (cases[:5], cases[5:]):
            with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
                results = list(
                    pool.map(
                        lambda ab: (
                            ab,
                            attempt(
                                hosts[ab[0]], hosts[ab[1]], url, (f"{ab[0]}o", f"{ab[1]}a"), 15
                            ),
                        ),
                        batch,
                    )
                )
            for (x, y), result in results:
                if not result["ok"]:
                    problems.append(f"{x} -> {y}: {result['reason']}")
                    continue
                methods = {result["method"], result["other"]["method"]}
                if "port-prediction" not in methods and "open" not in (x, y):
                    problems.append(f"{x} -> {y}: methods {methods}, no port prediction")

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
                    c: pool.submit(attempt, a, b, url, (f"{c[:4]}{run}o", f"{c[:4]}{run}a"), 15)
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
        result = attempt(a, b, url, ("ra", "rb"), 20)
        self.assertFalse(result["ok"])
        self.assertIn("holepunch connect: connectivity-checks:", result["reason"])
        self.assertLess(result["seconds"], 20)

"""``holepunch connect`` between lab hosts behind real kernel NATs.

The daemon (signaling + RFC 5780 STUN) runs in the lab's public namespace; each peer runs
the command in its own host namespace behind its router.
"""

from __future__ import annotations

import itertools
import time

from twisted.trial.unittest import TestCase

from lab.natlab import LabHost, NatLab, lab_fixture
from lab.peers import ConnectProcess, connect_pair, start_lab_daemon

CONES = ("open", "full-cone", "restricted-cone", "port-restricted")


def expected_method(a: str, b: str) -> str:
    return "direct" if a == b == "open" else "udp-hole-punch"


class ConnectInLabTests(TestCase):
    """UDP hole punching between every pair of cone NATs, both orders."""

    def setup_lab(self, presets: dict[str, str]) -> tuple[NatLab, dict[str, LabHost], str]:
        lab = lab_fixture(self)
        hosts = {name: lab.add_host(name, preset) for name, preset in presets.items()}
        url = start_lab_daemon(lab)
        return lab, hosts, url

    def run_pair(
        self, offerer: LabHost, answerer: LabHost, url: str, names: tuple[str, str]
    ) -> tuple[ConnectProcess, ConnectProcess]:
        a, b = connect_pair(offerer, answerer, url, names=names)
        self.addCleanup(a.kill)
        self.addCleanup(b.kill)
        return a, b

    def exchange(self, a: ConnectProcess, b: ConnectProcess, count: int, timeout: float) -> None:
        """Send ``count`` lines each way and check every one arrived, in order."""
        a.send_lines([f"a{i}" for i in range(count)])
        b.send_lines([f"b{i}" for i in range(count)])
        got_b = b.read_lines(count, timeout)
        got_a = a.read_lines(count, timeout)
        self.assertEqual(got_b, [f"a{i}" for i in range(count)], b.stderr)
        self.assertEqual(got_a, [f"b{i}" for i in range(count)], a.stderr)

    def finish(self, a: ConnectProcess, b: ConnectProcess) -> None:
        """End input on both sides: both commands exit 0."""
        a.end_input()
        b.end_input()
        self.assertEqual(a.wait(15), 0, a.stderr)
        self.assertEqual(b.wait(15), 0, b.stderr)

    def test_cone_pairs_both_orders(self) -> None:
        """Every ordered pair of open, full-cone, restricted-cone and port-restricted connects, by the right method, and carries data."""
        presets = {f"a{i}": p for i, p in enumerate(CONES)} | {
            f"b{i}": p for i, p in enumerate(CONES)
        }
        lab, hosts, url = self.setup_lab(presets)
        cells = list(itertools.product(range(len(CONES)), repeat=2))
        problems: list[str] = []
        for batch_start in range(0, len(cells), 4):
            batch = cells[batch_start : batch_start + 4]
            running = []
            for i, j in batch:
                names = (f"p{i}{j}a", f"p{i}{j}b")
                a, b = self.run_pair(hosts[f"a{i}"], hosts[f"b{j}"], url, names)
                running.append((CONES[i], CONES[j], a, b))
            for pa, pb, a, b in running:
                try:
                    info_a, info_b = a.info(30), b.info(30)
                    want = expected_method(pa, pb)
                    if (info_a["method"], info_b["method"]) != (want, want):
                        problems.append(
                            f"{pa} -> {pb}: methods {info_a['method']}/{info_b['method']}, want {want}"
                        )
                    self.exchange(a, b, 3, 10)
                    self.finish(a, b)
                except AssertionError as e:
                    problems.append(f"{pa} -> {pb}: {e}")
        self.assertEqual(problems, [], "\n".join(problems))

    def test_500_lines_each_way(self) -> None:
        """Between two port-restricted NATs, 500 lines each way all arrive."""
        lab, hosts, url = self.setup_lab({"left": "port-restricted", "right": "port-restricted"})
        a, b = self.run_pair(hosts["left"], hosts["right"], url, ("left", "right"))
        self.assertEqual(a.info(30)["method"], "udp-hole-punch", a.stderr)
        self.assertEqual(b.info(30)["method"], "udp-hole-punch", b.stderr)
        self.exchange(a, b, 500, 30)
        self.finish(a, b)

    def test_idle_connection_survives_conntrack_timeout(self) -> None:
        """An idle punched connection still works after 40 s, longer than conntrack's 30 s UDP timeout."""
        lab, hosts, url = self.setup_lab({"left": "port-restricted", "right": "restricted-cone"})
        a, b = self.run_pair(hosts["left"], hosts["right"], url, ("left", "right"))
        a.info(30)
        b.info(30)
        time.sleep(40)  # the behaviour under test is what 40 idle seconds do to the NAT
        self.exchange(a, b, 5, 10)
        self.finish(a, b)

"""TURN in the lab: coturn in the public namespace relays what cannot be punched."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from lab.natlab import NatLab, coturn_unavailable_reason, lab_fixture
from lab.peers import connect_pair, run_connect, start_lab_daemon


class TurnLabTests(TestCase):
    """Relayed connections through coturn, over UDP and TCP."""

    def lab(self) -> tuple[NatLab, str, str]:
        reason = coturn_unavailable_reason()
        if reason:
            raise self.skipTest(reason)
        lab = lab_fixture(self)
        url = start_lab_daemon(lab)
        coturn = lab.start_coturn()
        return lab, url, f"turn:u:p@{coturn.address}:{coturn.port}"

    def test_random_against_random_relays_500_lines(self) -> None:
        """Two symmetric-random NATs connect through coturn (turn-relay) and carry 500 lines each way."""
        lab, url, turn = self.lab()
        a = lab.add_host("ra", "symmetric-random")
        b = lab.add_host("rb", "symmetric-random")
        pa, pb = connect_pair(a, b, url, names=("ra", "rb"), extra_args=["--turn-server", turn])
        self.addCleanup(pa.kill)
        self.addCleanup(pb.kill)
        self.assertEqual(pa.info(30)["method"], "turn-relay", pa.stderr)
        self.assertEqual(pb.info(30)["method"], "turn-relay", pb.stderr)
        pa.send_lines([f"a{i}" for i in range(500)])
        pb.send_lines([f"b{i}" for i in range(500)])
        self.assertEqual(pb.read_lines(500, 30), [f"a{i}" for i in range(500)])
        self.assertEqual(pa.read_lines(500, 30), [f"b{i}" for i in range(500)])
        pa.end_input()
        pb.end_input()
        self.assertEqual(pa.wait(15), 0, pa.stderr)
        self.assertEqual(pb.wait(15), 0, pb.stderr)

    def test_udp_blocked_both_sides_relay_over_tcp(self) -> None:
        """With UDP blocked on both sides (and TCP punching off), TURN over TCP carries the connection."""
        lab, url, turn = self.lab()
        a = lab.add_host("ua", "udp-blocked")
        b = lab.add_host("ub", "udp-blocked")
        extra = ["--turn-server", turn + "?transport=tcp", "--no-tcp"]
        result = run_connect(a, b, url, names=("ua", "ub"), timeout=20, extra_args=extra)
        self.assertTrue(result["ok"], result.get("reason"))
        self.assertEqual({result["method"], result["other"]["method"]}, {"turn-relay"})

    def test_dead_first_server_costs_only_its_timeout(self) -> None:
        """A TURN server that never answers, listed first, delays the relay by its 5 s timeout and no more."""
        lab, url, turn = self.lab()
        a = lab.add_host("da", "symmetric-random")
        b = lab.add_host("db", "symmetric-random")
        dead = "turn:u:p@203.0.113.250:3478"  # nobody there; the packets are lost
        extra = ["--turn-server", dead, "--turn-server", turn]
        result = run_connect(a, b, url, names=("da", "db"), timeout=25, extra_args=extra)
        self.assertTrue(result["ok"], result.get("reason"))
        self.assertEqual(result["method"], "turn-relay")
        # turn_timeout (5 s) + relay_wait (2 s) + the normal allocation and checks.
        self.assertGreater(result["elapsed_ms"], 5000)
        self.assertLess(result["elapsed_ms"], 5000 + 2000 + 1500)

    def test_relay_upgrades_to_direct(self) -> None:
        """A relayed connection moves to a direct path found later (birthday probing), on the same connection."""
        lab, url, turn = self.lab()
        hard = lab.add_host("hh", "symmetric-random")
        easy = lab.add_host("he", "port-restricted")
        extra = ["--turn-server", turn, "--relay-wait", "0.2"]
        pa, pb = connect_pair(hard, easy, url, names=("hh", "he"), timeout=20, extra_args=extra)
        self.addCleanup(pa.kill)
        self.addCleanup(pb.kill)
        self.assertEqual(pa.info(30)["method"], "turn-relay", pa.stderr)
        pb.info(30)
        changed = pa.next_event(30)  # birthday probing lands within seconds
        self.assertEqual(changed["event"], "path-changed")
        self.assertEqual(changed["method"], "birthday")
        self.assertNotIn("203.0.113.1", changed["remote"])  # no longer the relay's address
        pa.send_lines(["after the upgrade"])
        self.assertEqual(pb.read_lines(2, 10)[-1], "after the upgrade")
        pa.end_input()
        pb.end_input()
        self.assertEqual(pa.wait(15), 0, pa.stderr)

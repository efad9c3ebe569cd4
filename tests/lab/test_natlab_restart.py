"""ICE restart and better paths in the lab, under a running ``holepunch connect``
transfer: a router that forgets its connections, a NAT that changes its public address,
a relayed connection whose direct path opens (see :mod:`lab.recovery`)."""

from __future__ import annotations

from typing import Any

from lab.recovery import disrupted_transfer
from tests.lab.transfers import TransferLabCase

SIZE = 6_000_000
RATE = 500_000.0


class RestartLabTests(TransferLabCase):
    """Each test: 6 MB each way at 0.5 MB/s through ``holepunch connect``, disrupted one
    second into the flow; both files must arrive byte-exact."""

    size = SIZE

    def setUp(self) -> None:
        self.start_lab()

    def run_disrupted(self, disruption: str, presets: tuple[str, str]) -> dict[str, Any]:
        a = self.lab.add_host("ra", presets[0])
        b = self.lab.add_host("rb", presets[1])
        result = disrupted_transfer(
            self.lab, self.servers, a, b, disruption, size=SIZE, rate=RATE,
            payloads=self.payloads,
        )  # fmt: skip
        self.assertByteExact(result)
        return result

    def test_conntrack_flush_recovers(self) -> None:
        """The offerer's router flushes its conntrack table mid-transfer: the stream
        goes on by itself, no byte lost, and the stall is short."""
        result = self.run_disrupted("flush", ("port-restricted", "port-restricted"))
        print(f"conntrack flush: longest stall {result['stall']:.2f}s")
        self.assertLess(result["stall"], 20.0)

    def test_public_address_change_restarts_ice(self) -> None:
        """The offerer's NAT gets a new public address mid-transfer (the old one is gone,
        and so are its mappings): consent fails, ICE restarts over the signaling, the
        path moves to the new address, and the stream finishes byte-exact."""
        result = self.run_disrupted("renumber", ("port-restricted", "port-restricted"))
        print(f"public address change: longest stall {result['stall']:.2f}s")
        restarts_a, restarts_b = result["restarts"]
        completed = [e for e in restarts_a + restarts_b if e["state"] == "completed"]
        self.assertTrue(completed, result["stderr"])
        changes = [e for side in result["path_changes"] for e in side]
        self.assertTrue([e for e in changes if e.get("reason") == "restart"], result["stderr"])
        new_address = self.lab.hosts["ra"].public_address
        b_changes = [e for e in result["path_changes"][1] if e.get("reason") == "restart"]
        self.assertTrue(b_changes, result["stderr"][1])
        self.assertIn(new_address, b_changes[-1]["remote"])

    def test_relay_moves_to_direct_once_unblocked(self) -> None:
        """Direct UDP between the two hosts is blocked on a router, so the transfer
        starts on the relay; the rule goes, and the better-path search moves the
        connection to a direct path before the transfer ends, byte-exact."""
        result = self.run_disrupted("unblock", ("port-restricted", "port-restricted"))
        self.assertEqual(result["connection"]["method"], "turn-relay")
        changes = result["path_changes"][0]
        self.assertTrue(changes, result["stderr"][0])
        self.assertNotEqual(changes[-1]["method"], "turn-relay")
        self.assertEqual(changes[-1]["reason"], "upgrade")
        first_byte, last_byte = result["bytes_window"]
        self.assertLess(result["disrupted_at"], changes[-1]["at"])
        self.assertLess(changes[-1]["at"], last_byte)
        print(
            f"relay to direct: {changes[-1]['at'] - result['disrupted_at']:.2f}s after unblocking"
        )
